//! The Workload API clients of the command line: `api fetch x509|jwt|jwtbundle`,
//! `api validate jwt`, `api watch` and `healthcheck`. Each dials the socket named by
//! `-socketPath`, else `SPIFFE_ENDPOINT_SOCKET`, else the default, bounds its call by
//! `-timeout`, and leaves the output to [`super::render`].

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sigil_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};

use super::commands::{
    CallArgs, FetchJwtArgs, FetchJwtBundleArgs, FetchX509Args, HealthcheckArgs, OutputFormat,
    SocketArgs, ValidateJwtArgs,
};
use super::{CliError, render};
use crate::workload_api::DEFAULT_SOCKET_PATH;
use crate::workload_api::client::{WorkloadApiClient, connect};

/// The socket to dial: `-socketPath`, else `SPIFFE_ENDPOINT_SOCKET`, else the default.
fn socket_path(args: &SocketArgs, env_socket: Option<&str>) -> Result<PathBuf, CliError> {
    if let Some(path) = &args.socket_path {
        return Ok(path.clone());
    }
    match env_socket.filter(|s| !s.is_empty()) {
        None => Ok(PathBuf::from(DEFAULT_SOCKET_PATH)),
        Some(uri) => {
            let path = uri
                .strip_prefix("unix://")
                .or_else(|| uri.strip_prefix("unix:"))
                .filter(|p| p.starts_with('/'))
                .ok_or_else(|| CliError::BadEndpoint(uri.to_owned()))?;
            Ok(PathBuf::from(path))
        }
    }
}

async fn client(args: &CallArgs, env_socket: Option<&str>) -> Result<WorkloadApiClient, CliError> {
    let path = socket_path(&args.socket, env_socket)?;
    within(args.timeout, "connecting to the Workload API", async {
        Ok(connect(&path).await?)
    })
    .await
}

/// Bounds a call by the command's `-timeout`.
async fn within<T>(
    after: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::time::timeout(after, f)
        .await
        .map_err(|_| CliError::Timeout { what, after })?
}

fn rpc(what: &'static str) -> impl Fn(tonic::Status) -> CliError {
    move |status| CliError::Rpc { what, status }
}

/// The answer of a unary Workload API call.
async fn answer<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    what: &'static str,
) -> Result<T, CliError> {
    Ok(call.await.map_err(rpc(what))?.into_inner())
}

/// The first message of a Workload API stream: what the one-shot `fetch` commands print.
async fn first_message<T>(
    call: impl Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
    what: &'static str,
) -> Result<T, CliError> {
    let mut stream = call.await.map_err(rpc(what))?.into_inner();
    stream
        .message()
        .await
        .map_err(rpc(what))?
        .ok_or(CliError::EmptyStream(what))
}

pub(super) async fn fetch_x509(
    args: FetchX509Args,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "fetching X509-SVID";
    let mut client = client(&args.call, env_socket).await?;
    let started = Instant::now();
    let response = within(
        args.call.timeout,
        WHAT,
        first_message(client.fetch_x509svid(X509svidRequest {}), WHAT),
    )
    .await?;
    let elapsed = started.elapsed();
    render::x509(&response, elapsed, args.output, out)?;
    if let Some(dir) = &args.write {
        render::write_x509_files(&response, dir)?;
        if args.output != Some(OutputFormat::Json) {
            writeln!(
                out,
                "Writing SVID #0 to file {}.",
                dir.join("svid.0.pem").display()
            )?;
        }
    }
    Ok(())
}

pub(super) async fn fetch_jwt(
    args: FetchJwtArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    // As SPIRE's: the JWT bundles first, then the JWT-SVID, and both are printed.
    const BUNDLES: &str = "fetching JWT bundles";
    const WHAT: &str = "fetching JWT-SVID";
    let mut client = client(&args.call, env_socket).await?;
    let bundles = within(
        args.call.timeout,
        BUNDLES,
        first_message(client.fetch_jwt_bundles(JwtBundlesRequest {}), BUNDLES),
    )
    .await?;
    let request = JwtsvidRequest {
        audience: args.audience,
        spiffe_id: args.spiffe_id.unwrap_or_default(),
    };
    let svids = within(
        args.call.timeout,
        WHAT,
        answer(client.fetch_jwtsvid(request), WHAT),
    )
    .await?;
    render::jwt_svids(&svids, &bundles, args.output, out)
}

pub(super) async fn fetch_jwt_bundles(
    args: FetchJwtBundleArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "fetching JWT bundles";
    let mut client = client(&args.call, env_socket).await?;
    let response = within(
        args.call.timeout,
        WHAT,
        first_message(client.fetch_jwt_bundles(JwtBundlesRequest {}), WHAT),
    )
    .await?;
    render::jwt_bundles(&response, args.output, out)
}

pub(super) async fn validate_jwt(
    args: ValidateJwtArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "validating JWT-SVID";
    let mut client = client(&args.call, env_socket).await?;
    let request = ValidateJwtsvidRequest {
        audience: args.audience,
        svid: args.svid,
    };
    let response = within(
        args.call.timeout,
        WHAT,
        answer(client.validate_jwtsvid(request), WHAT),
    )
    .await?;
    render::validated_jwt(&response, args.output, out)
}

pub(super) async fn watch(
    args: SocketArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "watching X509-SVIDs";
    let path = socket_path(&args, env_socket)?;
    let mut client = connect(&path).await?;
    let mut started = Instant::now();
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(rpc(WHAT))?
        .into_inner();
    while let Some(response) = stream.message().await.map_err(rpc(WHAT))? {
        render::x509(&response, started.elapsed(), None, out)?;
        writeln!(out)?;
        out.flush()?;
        started = Instant::now();
    }
    Err(CliError::EmptyStream(WHAT))
}

pub(super) async fn healthcheck(
    args: HealthcheckArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "Agent is unavailable";
    if args.shallow {
        return Err(CliError::Unsupported("shallow"));
    }
    let mut client = client(&args.call, env_socket).await?;
    let answer = within(args.call.timeout, WHAT, async {
        Ok(client
            .fetch_x509_bundles(X509BundlesRequest {})
            .await
            .map(|_| ()))
    })
    .await?;
    match answer {
        // Any answer from the handler (PermissionDenied for a caller without identity
        // included) means the Workload API is serving.
        Err(status)
            if status.code() == tonic::Code::Unavailable
                || status.code() == tonic::Code::Unknown =>
        {
            Err(CliError::Rpc { what: WHAT, status })
        }
        Ok(()) | Err(_) => {
            writeln!(out, "Agent is healthy.")?;
            if args.verbose {
                writeln!(
                    out,
                    "Workload API answered on {}",
                    socket_path(&args.call.socket, env_socket)?.display()
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use sigil_proto::bundle::pem_encode;
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    use super::*;
    use crate::cache::testing::entry;
    use crate::cli::run;
    use crate::cli::tests::{parse, run_args};
    use crate::workload_api::tests::{Harness, Options, web_entry};

    #[test]
    fn socket_path_precedence() {
        let none = SocketArgs { socket_path: None };
        let flag = SocketArgs {
            socket_path: Some("/flag.sock".into()),
        };
        assert_eq!(
            socket_path(&flag, Some("unix:///env.sock")).unwrap(),
            PathBuf::from("/flag.sock")
        );
        assert_eq!(
            socket_path(&none, Some("unix:///env.sock")).unwrap(),
            PathBuf::from("/env.sock")
        );
        assert_eq!(
            socket_path(&none, Some("unix:/env.sock")).unwrap(),
            PathBuf::from("/env.sock")
        );
        assert_eq!(
            socket_path(&none, None).unwrap(),
            PathBuf::from(DEFAULT_SOCKET_PATH)
        );
        for bad in ["tcp://127.0.0.1:1", "unix://host/x", "/bare/path"] {
            assert!(
                matches!(socket_path(&none, Some(bad)), Err(CliError::BadEndpoint(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn fetch_x509_prints_and_writes_files() {
        let h = Harness::start(Options::default()).await;
        let mut web = web_entry();
        web.hint = "internal".into();
        h.cache.upsert_entries(vec![web]);
        h.cache
            .set_svid("web", h.ca.svid("spiffe://example.org/web"))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = h.socket.to_str().unwrap().to_owned();
        let write = dir.path().to_str().unwrap().to_owned();

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            &socket,
            "-write",
            &write,
        ])
        .await;
        result.unwrap();
        assert!(out.starts_with("Received 1 svid after "), "{out}");
        assert!(
            out.contains("SPIFFE ID:\t\tspiffe://example.org/web"),
            "{out}"
        );
        assert!(out.contains("Hint:\t\t\tinternal"), "{out}");
        assert!(out.contains("SVID Valid Until:"), "{out}");
        assert!(out.contains("CA #1 Valid After:"), "{out}");

        let key = dir.path().join("svid.0.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            std::fs::read_to_string(&key)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let pem = std::fs::read_to_string(dir.path().join("svid.0.pem")).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
        let bundle = std::fs::read_to_string(dir.path().join("bundle.0.pem")).unwrap();
        assert_eq!(bundle, pem_encode("CERTIFICATE", &h.ca.der()));

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            &socket,
            "-output",
            "json",
        ])
        .await;
        result.unwrap();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["svids"][0]["spiffe_id"], "spiffe://example.org/web");
        // SPIRE's protobuf-JSON of X509SVIDResponse: every field, bytes as base64.
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["crl", "federated_bundles", "svids"], "{json}");
        let leaf = STANDARD
            .decode(json["svids"][0]["x509_svid"].as_str().unwrap())
            .unwrap();
        assert!(X509Certificate::from_der(&leaf).is_ok(), "{json}");
        h.stop().await;
    }

    #[tokio::test]
    async fn jwt_fetch_bundle_and_validate() {
        let h = Harness::start(Options::default()).await;
        h.cache.upsert_entries(vec![web_entry()]);
        let socket = h.socket.to_str().unwrap().to_owned();

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "jwt",
            "-audience",
            "db",
            "-socketPath",
            &socket,
        ])
        .await;
        result.unwrap();
        let token = out.lines().nth(1).unwrap().trim().to_owned();
        assert_eq!(out.lines().next(), Some("token(spiffe://example.org/web):"));
        // SPIRE prints the JWT bundles after the tokens.
        assert_eq!(out.lines().nth(2), Some("bundle(spiffe://example.org):"));
        assert!(
            out.lines().nth(3).unwrap().starts_with("\t{\"keys\":[{"),
            "{out}"
        );

        // -output json: SPIRE's two protobuf-JSON messages, the JWKS as base64 bytes.
        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "jwt",
            "-audience",
            "db",
            "-output",
            "json",
            "-socketPath",
            &socket,
        ])
        .await;
        result.unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v[0]["svids"][0]["spiffe_id"], "spiffe://example.org/web",
            "{v}"
        );
        assert_eq!(v[0]["svids"][0]["hint"], "", "{v}");
        let jwks = STANDARD
            .decode(v[1]["bundles"]["spiffe://example.org"].as_str().unwrap())
            .unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&jwks).unwrap();
        assert!(
            jwks["keys"].as_array().is_some_and(|k| !k.is_empty()),
            "{jwks}"
        );

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "validate",
            "jwt",
            "-audience",
            "db",
            "-svid",
            &token,
            "-socketPath",
            &socket,
        ])
        .await;
        result.unwrap();
        assert!(
            out.starts_with("SVID is valid.\nSPIFFE ID : spiffe://example.org/web\n"),
            "{out}"
        );
        assert!(out.contains("\"aud\":[\"db\"]"), "{out}");

        let (result, _) = run_args(&[
            "sigil-agent",
            "api",
            "validate",
            "jwt",
            "-audience",
            "x",
            "-svid",
            &token,
            "-socketPath",
            &socket,
        ])
        .await;
        let err = result.unwrap_err().to_string();
        assert!(
            err.starts_with("validating JWT-SVID: expected audience"),
            "{err}"
        );

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "jwtbundle",
            "-socketPath",
            &socket,
        ])
        .await;
        result.unwrap();
        assert!(
            out.starts_with("bundle(spiffe://example.org):\n\t{\"keys\":[{"),
            "{out}"
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn no_identity_is_a_clear_error() {
        let h = Harness::start(Options::default()).await;
        h.cache.upsert_entries(vec![entry(
            "x",
            "spiffe://example.org/x",
            &["unix:uid:4294967294"],
            1,
        )]);
        let socket = h.socket.to_str().unwrap().to_owned();
        let (result, _) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            &socket,
        ])
        .await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "fetching X509-SVID: no identity issued (PermissionDenied)"
        );
        // The agent still counts as healthy: it answered.
        let (result, out) = run_args(&["sigil-agent", "healthcheck", "-socketPath", &socket]).await;
        result.unwrap();
        assert_eq!(out, "Agent is healthy.\n");
        h.stop().await;

        let (result, _) = run_args(&["sigil-agent", "healthcheck", "-socketPath", &socket]).await;
        assert!(result.is_err(), "nothing listening");
    }

    /// A flag that would be ignored is refused before anything is dialled.
    #[tokio::test]
    async fn healthcheck_shallow_is_refused() {
        let (result, out) = run_args(&[
            "sigil-agent",
            "healthcheck",
            "-shallow",
            "-socketPath",
            "/nonexistent/api.sock",
        ])
        .await;
        let err = result.unwrap_err().to_string();
        assert!(err.starts_with("-shallow is not supported"), "{err}");
        assert_eq!(out, "");
    }

    #[tokio::test]
    async fn watch_prints_each_update() {
        let h = Harness::start(Options::default()).await;
        h.cache.upsert_entries(vec![web_entry()]);
        h.cache
            .set_svid("web", h.ca.svid("spiffe://example.org/web"))
            .unwrap();
        let socket = h.socket.to_str().unwrap().to_owned();
        let cli = parse(&["sigil-agent", "api", "watch", "-socketPath", &socket]);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(async move {
            let mut out = ChannelWriter(tx, Vec::new());
            run(cli, None, &mut out).await
        });
        let first = rx.recv().await.unwrap();
        assert!(first.starts_with("Received 1 svid after"), "{first}");
        h.cache
            .set_svid("web", h.ca.svid("spiffe://example.org/web"))
            .unwrap();
        let second = rx.recv().await.unwrap();
        assert!(second.starts_with("Received 1 svid after"), "{second}");
        h.cache.remove_entries(["web"]);
        let err = watcher.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "watching X509-SVIDs: no identity issued (PermissionDenied)"
        );
        h.stop().await;
    }

    /// Sends each flushed chunk of output (one watch update) to the test.
    struct ChannelWriter(tokio::sync::mpsc::UnboundedSender<String>, Vec<u8>);

    impl Write for ChannelWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let chunk = String::from_utf8_lossy(&std::mem::take(&mut self.1)).into_owned();
            let _ = self.0.send(chunk);
            Ok(())
        }
    }
}
