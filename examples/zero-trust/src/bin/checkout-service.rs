//! `checkout-service`: calls `payment-processor` over SPIFFE mTLS with its SVID and bundle from
//! the Workload API (`SPIFFE_ENDPOINT_SOCKET`), and talks only to a server presenting
//! `spiffe://<td>/ns/payments/sa/payment-processor`. Each call is a new connection (a new
//! handshake), so `--repeat` shows rotations being picked up live. `--jwt`: each call also
//! carries a JWT-SVID from the Workload API (audience: the server's SPIFFE ID, or
//! `--jwt-audience`) as `Authorization: Bearer`.
//!
//! Prints one line per call. Exit status: 0 when every call got a 2xx, 3 when the server
//! refused at least one (HTTP 403) and none failed otherwise, 1 on any other failure (TLS,
//! wrong server identity, connection).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use spiffe::SpiffeId;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use sigil_example_zero_trust::jwt::Jwts;
use sigil_example_zero_trust::policy::{
    CHECKOUT_SERVICE_PATH, PAYMENTS_PATH, payment_processor_id,
};
use sigil_example_zero_trust::tls::{
    PeerSvid, Pick, client_config, peer_svid, unauthorized_server, x509_source,
};

#[derive(Debug, Parser)]
#[command(about = "Calls payment-processor over SPIFFE mTLS")]
struct Args {
    /// payment-processor's address (host:port).
    #[arg(long, default_value = "127.0.0.1:8443")]
    server: String,
    /// The only server identity to talk to
    /// (default: spiffe://<our trust domain>/ns/payments/sa/payment-processor).
    #[arg(long)]
    server_id: Option<SpiffeId>,
    /// Our SVID when entitled to several (default: the one whose path is
    /// /ns/payments/sa/checkout-service, else the Workload API's default SVID).
    #[arg(long)]
    spiffe_id: Option<SpiffeId>,
    /// HTTP method.
    #[arg(long, default_value = "POST")]
    method: Method,
    /// Route to call (another route shows the server refusing it).
    #[arg(long, default_value = PAYMENTS_PATH)]
    path: String,
    /// Number of calls.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Pause between calls.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Send a JWT-SVID (`Authorization: Bearer`) with each call.
    #[arg(long)]
    jwt: bool,
    /// The JWT-SVID's audience (default: the server's SPIFFE ID).
    #[arg(long, requires = "jwt")]
    jwt_audience: Option<String>,
    /// How long to wait for a first SVID from the Workload API.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    startup_timeout: Duration,
}

/// What each call carries besides the mTLS identity.
struct Bearer {
    jwts: Jwts,
    audience: String,
    subject: SpiffeId,
}

/// How one call ended.
enum Outcome {
    Success,
    Refused,
    Failed,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();

    let pick = match &args.spiffe_id {
        Some(id) => Pick::Exact(id.clone()),
        None => Pick::PreferPath(CHECKOUT_SERVICE_PATH),
    };
    let source = x509_source(pick, args.startup_timeout).await?;
    let own = source
        .svid()
        .context("reading the current SVID")?
        .spiffe_id()
        .clone();
    let server_id = args
        .server_id
        .clone()
        .unwrap_or_else(|| payment_processor_id(own.trust_domain()));
    let connector = TlsConnector::from(Arc::new(client_config(source.clone(), &server_id)?));
    let bearer = match args.jwt {
        false => None,
        true => Some(Bearer {
            jwts: Jwts::connect().await?,
            audience: args
                .jwt_audience
                .clone()
                .unwrap_or_else(|| server_id.to_string()),
            subject: own.clone(),
        }),
    };
    println!(
        "checkout-service as {own}, calling {} expecting {server_id}",
        args.server
    );

    let (mut refused, mut failed) = (false, false);
    for i in 1..=args.repeat {
        if i > 1 {
            tokio::time::sleep(args.interval).await;
        }
        let prefix = format!("[{i}] {} {}", args.method, args.path);
        match call(&connector, bearer.as_ref(), &args, i).await {
            Ok((status, body, server, handshakes)) => {
                let outcome = if status.is_success() {
                    Outcome::Success
                } else if status == StatusCode::FORBIDDEN {
                    Outcome::Refused
                } else {
                    Outcome::Failed
                };
                let label = match outcome {
                    Outcome::Success => "allowed",
                    Outcome::Refused => {
                        refused = true;
                        "refused"
                    }
                    Outcome::Failed => {
                        failed = true;
                        "failed"
                    }
                };
                let retried = if handshakes > 1 {
                    format!(" ({handshakes} handshakes)")
                } else {
                    String::new()
                };
                println!(
                    "{prefix} -> {} {label}: {} [server {server}]{retried}",
                    status.as_u16(),
                    String::from_utf8_lossy(&body).trim_end()
                );
            }
            Err(CallError::WrongServer(id)) => {
                failed = true;
                println!(
                    "{prefix} -> refused server identity: it presented {id}, expected {server_id}"
                );
            }
            Err(CallError::Other(e)) => {
                failed = true;
                println!("{prefix} -> failed: {e:#}");
            }
        }
    }
    source.shutdown().await;
    Ok(std::process::ExitCode::from(match (failed, refused) {
        (true, _) => 1,
        (false, true) => 3,
        (false, false) => 0,
    }))
}

enum CallError {
    /// The server's SVID verified, but carries another SPIFFE ID than the one we talk to.
    WrongServer(SpiffeId),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for CallError {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

/// Handshakes tried per call before giving up.
const HANDSHAKE_ATTEMPTS: u32 = 3;

/// One call on a fresh connection: returns the status, the body, the server's SVID and the
/// number of handshakes it took.
async fn call(
    connector: &TlsConnector,
    bearer: Option<&Bearer>,
    args: &Args,
    n: u32,
) -> Result<(StatusCode, Bytes, PeerSvid, u32), CallError> {
    // Fetched per call, as a client whose token may expire does; the agent caches it.
    let token = match bearer {
        Some(b) => Some(b.jwts.fetch(&b.audience, &b.subject).await?),
        None => None,
    };
    // The server is identified by the SPIFFE ID in its SVID, not by a DNS name; rustls needs a
    // name for SNI only.
    let host = args
        .server
        .rsplit_once(':')
        .map_or(args.server.as_str(), |(h, _)| h);
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .with_context(|| format!("{host} is neither a DNS name nor an IP address"))?;
    // spiffe-rustls fails closed for the instant between the Workload API delivering new
    // material and its conversion (either side's handshake then fails): a rotation may cost a
    // handshake, which is retried. Nothing has been sent yet, so a retry cannot pay twice.
    let mut attempt = 1;
    let tls = loop {
        let tcp = TcpStream::connect(&args.server)
            .await
            .with_context(|| format!("connecting to {}", args.server))?;
        match connector.connect(name.clone(), tcp).await {
            Ok(tls) => break tls,
            Err(e) => {
                if let Some(id) = unauthorized_server(&e) {
                    return Err(CallError::WrongServer(id));
                }
                if attempt == HANDSHAKE_ATTEMPTS {
                    return Err(CallError::Other(
                        anyhow::Error::new(e)
                            .context(format!("mTLS handshake, {attempt} attempts")),
                    ));
                }
                tracing::warn!(attempt, error = %e, "mTLS handshake failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let server = peer_svid(tls.get_ref().1)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let order = format!("{{\"order\":\"order-{n}\",\"amount_cents\":4200}}");
    let mut request = Request::builder()
        .method(args.method.clone())
        .uri(&args.path)
        .header(header::HOST, "payment-processor")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(order)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body, server, attempt))
}
