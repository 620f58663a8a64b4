//! SPIRE's Delegated Identity API on the agent's admin socket (issue 19), end to end: the real
//! `sigil-server` and `sigil-agent`, and as the delegate this test process (uid 0) through
//! rust-spiffe's `spire-api` crate, an independent client of SPIRE's published API: its
//! high-level `DelegatedIdentityClient` (which parses SVIDs and bundles with the `spiffe`
//! crate) and its generated gRPC client for exact status codes and raw messages.
//!
//! The caller is authorized only while one of its own entries is listed in
//! `authorized_delegates`; it then gets the identities of workloads named by selectors
//! (`unix:uid:4242`, a user nobody runs as) or by PID (a `sleep` run as uid 65534 through
//! `setpriv`), checked with x509-parser against the server's bundle and, for JWT-SVIDs, with
//! jsonwebtoken against the JWKS the API streams.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sigil_testkit::admin::uds_channel;
use sigil_testkit::verify::self_signed_p256;
use sigil_testkit::workload::uri_sans;
use sigil_testkit::{
    Agent, Server, ServerOptions, multi_thread_rt, pem_certs, register, register_uid,
};
use spire_api::pb::spire::api::agent::delegatedidentity::v1::delegated_identity_client::DelegatedIdentityClient as RawClient;
use spire_api::pb::spire::api::agent::delegatedidentity::v1::{
    FetchJwtsviDsRequest, SubscribeToJwtBundlesRequest, SubscribeToX509BundlesRequest,
    SubscribeToX509sviDsRequest, SubscribeToX509sviDsResponse,
};
use spire_api::pb::spire::api::types::Selector as RawSelector;
use spire_api::selectors::{Selector, Unix, UnixId};
use spire_api::{DelegateAttestationRequest, DelegatedIdentityClient};
use tonic::Code;
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer, X509Certificate};

const DELEGATE: &str = "spiffe://example.org/delegate";
const NOT_A_DELEGATE: &str = "spiffe://example.org/not-a-delegate";
const BY_SELECTORS: &str = "spiffe://example.org/by-selectors";
const BY_PID: &str = "spiffe://example.org/by-pid";
const LATER: &str = "spiffe://example.org/later";
/// The uid of the workload named by selectors (no process runs as it).
const TARGET_UID: u32 = 4242;
/// The uid of a workload that has no entry until the test adds one.
const LATER_UID: u32 = 4343;
/// The uid the workload named by PID runs as.
const NOBODY: u32 = 65534;
const PUSH: Duration = Duration::from_secs(30);
const OTHER_TD: &str = "spiffe://other.org";

/// Gives the server a bundle for `other.org` (a fresh self-signed CA, `bundle set`); returns
/// the CA's DER.
fn federate_with_other_org(server: &Server) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    self_signed_p256(
        &cert,
        &key,
        "/CN=other.org",
        1,
        &["basicConstraints=critical,CA:true"],
    );
    let out = server.cli_ok(&[
        "bundle",
        "set",
        "-id",
        OTHER_TD,
        "-path",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "bundle set.");
    pem_certs(&std::fs::read_to_string(&cert).unwrap()).concat()
}

/// A server and an agent serving the admin socket in its own directory, with `DELEGATE` as
/// the one authorized delegate; returns them with the agent's SPIFFE ID and the admin socket.
fn setup() -> (Server, Agent, String, PathBuf) {
    let server = Server::start(ServerOptions::default());
    let token = server.join_token();
    let mut agent = Agent::configure(&server);
    let admin = agent.dir.path().join("admin").join("api.sock");
    agent.configure_agent_block(&format!("admin_socket_path = \"{}\"", admin.display()));
    agent.configure_agent_block(&format!("authorized_delegates = [\"{DELEGATE}\"]"));
    agent.spawn(Some(&token));
    let agent_id = server.join_token_agent_id(&token);
    (server, agent, agent_id, admin)
}

fn uid_selector(uid: u32) -> RawSelector {
    RawSelector {
        r#type: "unix".into(),
        value: format!("uid:{uid}"),
    }
}

async fn raw(admin: &Path) -> RawClient<Channel> {
    RawClient::new(uds_channel(admin).await.expect("admin socket"))
}

async fn client(admin: &Path) -> DelegatedIdentityClient {
    DelegatedIdentityClient::connect_to(format!("unix://{}", admin.display()))
        .await
        .expect("spire-api client")
}

fn by_uid(uid: u32) -> DelegateAttestationRequest {
    DelegateAttestationRequest::for_selectors(vec![Selector::Unix(Unix::Uid(UnixId::new(uid)))])
        .unwrap()
}

/// Retries `f` until it succeeds (the agent learns of a new entry a moment after the CLI
/// returns, and mints its SVID after that).
async fn eventually<T, E: std::fmt::Debug, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + PUSH;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The error code and message of the first answer to each RPC, for a caller refused.
async fn refusals(admin: &Path) -> Vec<(Code, String)> {
    let mut raw = raw(admin).await;
    let mut out = Vec::new();
    let x509 = raw
        .subscribe_to_x509svi_ds(SubscribeToX509sviDsRequest {
            selectors: vec![uid_selector(TARGET_UID)],
            pid: 0,
        })
        .await;
    out.push(first_error(x509.map(|r| r.into_inner())).await);
    let bundles = raw
        .subscribe_to_x509_bundles(SubscribeToX509BundlesRequest {})
        .await;
    out.push(first_error(bundles.map(|r| r.into_inner())).await);
    let jwt = raw
        .fetch_jwtsvi_ds(FetchJwtsviDsRequest {
            audience: vec!["db".into()],
            selectors: vec![uid_selector(TARGET_UID)],
            pid: 0,
        })
        .await;
    out.push(
        jwt.map(|_| ())
            .map_err(|s| (s.code(), s.message().to_owned()))
            .unwrap_err(),
    );
    let jwt_bundles = raw
        .subscribe_to_jwt_bundles(SubscribeToJwtBundlesRequest {})
        .await;
    out.push(first_error(jwt_bundles.map(|r| r.into_inner())).await);
    out
}

/// The status a server stream fails with: at the call or as its first message.
async fn first_error<T: std::fmt::Debug>(
    stream: Result<tonic::codec::Streaming<T>, tonic::Status>,
) -> (Code, String) {
    let status = match stream {
        Err(status) => status,
        Ok(mut stream) => stream
            .message()
            .await
            .expect_err("a refusal, not a message"),
    };
    (status.code(), status.message().to_owned())
}

/// The leaf of `chain` verified against the server's CA (`bundle_pem`, as `bundle show`
/// prints it) with x509-parser; returns its URI SAN.
fn verified_leaf_uri(chain: &[u8], bundle_pem: &str) -> String {
    let (_, leaf) = X509Certificate::from_der(chain).expect("leaf DER");
    let cas = pem_certs(bundle_pem);
    let verified = cas.iter().any(|ca| {
        let (_, ca) = X509Certificate::from_der(ca).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    });
    assert!(verified, "the leaf is signed by the server's CA");
    let uris = uri_sans(chain);
    assert_eq!(uris.len(), 1, "one URI SAN");
    uris[0].clone()
}

/// Checks `token` against the JWKS of `example.org` from the JWT bundle stream, with
/// jsonwebtoken: signature, audience; returns `sub`.
fn validated_sub(token: &str, jwks: &[u8], audience: &str) -> String {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(jwks).expect("a JWKS");
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.expect("a kid");
    let jwk = set.find(&kid).expect("the token's key in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .expect("a valid JWT-SVID");
    data.claims["sub"].as_str().unwrap().to_owned()
}

/// A `sleep` run as uid 65534: the workload a delegate names by PID.
fn nobody_sleeps() -> Child {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sleep",
            "300",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("setpriv")
}

fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Command::new("setpriv").arg("--version").output().is_ok();
    if !ok {
        eprintln!("NOTICE: the delegated identity test needs root and setpriv; skipped");
    }
    ok
}

#[test]
fn a_delegate_gets_the_identities_of_the_workloads_it_acts_for() {
    if !can_run() {
        return;
    }
    let (server, agent, agent_id, admin) = setup();
    let bundle_pem = server.cli_ok(&["bundle", "show"]);

    // The admin socket is the agent user's alone, in its own directory.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(admin.parent().unwrap()), 0o700);
    assert_eq!(mode(&admin), 0o600);

    let rt = multi_thread_rt();
    rt.block_on(async {
        // No entry for this process: no identity, nothing served (SPIRE's PermissionDenied).
        for (code, message) in refusals(&admin).await {
            assert_eq!(
                (code, message.as_str()),
                (Code::PermissionDenied, "no identity issued")
            );
        }
        // An identity that is not a listed delegate: refused, every RPC.
        register_uid(&server, NOT_A_DELEGATE, &agent_id, 0, &[]);
        agent.wait_for_ids("the caller's first entry", &[NOT_A_DELEGATE], PUSH);
        for (code, message) in refusals(&admin).await {
            assert_eq!(
                (code, message.as_str()),
                (
                    Code::PermissionDenied,
                    "caller not configured as an authorized delegate"
                )
            );
        }
        assert!(agent.log().contains("delegated identity request refused"));

        // Listed: the caller is a delegate from now on.
        let delegate_entry = register_uid(&server, DELEGATE, &agent_id, 0, &[]);
        agent.wait_for_ids("the delegate's entry", &[NOT_A_DELEGATE, DELEGATE], PUSH);

        // A bundle stream opened now sees our bundle, then a federated one as the agent gets it.
        let mut raw_client = raw(&admin).await;
        let mut bundle_updates = raw_client
            .subscribe_to_x509_bundles(SubscribeToX509BundlesRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = bundle_updates.message().await.unwrap().unwrap();
        let domains: Vec<&String> = first.ca_certificates.keys().collect();
        assert_eq!(domains, ["spiffe://example.org"]);
        assert_eq!(
            first.ca_certificates["spiffe://example.org"],
            pem_certs(&bundle_pem).concat()
        );
        let foreign_ca = federate_with_other_org(&server);
        register_uid(
            &server,
            BY_SELECTORS,
            &agent_id,
            TARGET_UID,
            &["-hint", "internal", "-federatesWith", OTHER_TD],
        );
        let pushed = tokio::time::timeout(PUSH, async {
            loop {
                let message = bundle_updates.message().await.unwrap().expect("open");
                if message.ca_certificates.contains_key(OTHER_TD) {
                    return message;
                }
            }
        })
        .await
        .expect("the federated bundle within 30 s");
        assert_eq!(pushed.ca_certificates[OTHER_TD], foreign_ca);
        let client = client(&admin).await;

        // SubscribeToX509SVIDs by selectors, parsed by the spiffe crate (key matches leaf).
        let svid = eventually("the X509-SVID by selectors", || {
            client.fetch_x509_svid(by_uid(TARGET_UID))
        })
        .await;
        assert_eq!(svid.spiffe_id().to_string(), BY_SELECTORS);
        assert_eq!(svid.hint(), Some("internal"));
        let leaf = svid.cert_chain()[0].as_bytes();
        assert_eq!(verified_leaf_uri(leaf, &bundle_pem), BY_SELECTORS);

        // SubscribeToX509Bundles: our bundle, as `bundle show` prints it.
        let bundles = client.fetch_x509_bundles().await.unwrap();
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let ours: Vec<Vec<u8>> = bundles
            .get(&td)
            .expect("our bundle")
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        assert_eq!(ours, pem_certs(&bundle_pem));

        let other = spiffe::TrustDomain::new("other.org").unwrap();
        assert!(bundles.get(&other).is_some(), "the federated bundle too");
        // The SVID's entry federates with other.org.
        let mut by_selectors = raw_client
            .subscribe_to_x509svi_ds(SubscribeToX509sviDsRequest {
                selectors: vec![uid_selector(TARGET_UID)],
                pid: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let message = by_selectors.message().await.unwrap().unwrap();
        assert_eq!(message.federates_with, [OTHER_TD]);
        drop(by_selectors);

        // FetchJWTSVIDs, validated against SubscribeToJWTBundles' JWKS.
        let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
        assert!(
            jwt_bundles.get(&td).is_some(),
            "the spiffe crate reads our JWKS"
        );
        let jwks = raw_client
            .subscribe_to_jwt_bundles(SubscribeToJwtBundlesRequest {})
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap()
            .bundles
            .remove("spiffe://example.org")
            .expect("our JWKS");
        let svids = client
            .fetch_jwt_svids(&["db"], by_uid(TARGET_UID))
            .await
            .unwrap();
        assert_eq!(svids.len(), 1);
        assert_eq!(svids[0].spiffe_id().to_string(), BY_SELECTORS);
        assert_eq!(validated_sub(svids[0].token(), &jwks, "db"), BY_SELECTORS);
        let raw_jwt = raw_client
            .fetch_jwtsvi_ds(FetchJwtsviDsRequest {
                audience: vec!["db".into()],
                selectors: vec![uid_selector(TARGET_UID)],
                pid: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let times = &raw_jwt.svids[0];
        assert!(times.issued_at > 0 && times.expires_at > times.issued_at);
        assert_eq!(times.hint, "internal");

        // Selectors no entry matches: an empty X.509 message (SPIRE's answer), no JWT-SVID.
        let mut empty = raw_client
            .subscribe_to_x509svi_ds(SubscribeToX509sviDsRequest {
                selectors: vec![uid_selector(LATER_UID)],
                pid: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let first: SubscribeToX509sviDsResponse = empty.message().await.unwrap().unwrap();
        assert!(first.x509_svids.is_empty() && first.federates_with.is_empty());
        let none = raw_client
            .fetch_jwtsvi_ds(FetchJwtsviDsRequest {
                audience: vec!["db".into()],
                selectors: vec![uid_selector(LATER_UID)],
                pid: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (none.code(), none.message()),
            (Code::PermissionDenied, "no identity issued")
        );

        // The same stream is pushed the SVID once an entry for those selectors is added.
        register_uid(&server, LATER, &agent_id, LATER_UID, &[]);
        let pushed = tokio::time::timeout(PUSH, async {
            loop {
                let message = empty
                    .message()
                    .await
                    .unwrap()
                    .expect("the stream stays open");
                if !message.x509_svids.is_empty() {
                    return message;
                }
            }
        })
        .await
        .expect("an update within 30 s");
        let pushed = &pushed.x509_svids[0];
        let chain = &pushed.x509_svid.as_ref().unwrap().cert_chain;
        assert_eq!(verified_leaf_uri(&chain[0], &bundle_pem), LATER);
        assert!(!pushed.x509_svid_key.is_empty());

        // By PID: the agent attests the process the delegate names.
        let mut sleeper = nobody_sleeps();
        let pid = sleeper.id();
        register(
            &server,
            BY_PID,
            &agent_id,
            &format!("unix:uid:{NOBODY}"),
            &[],
        );
        let svid = eventually("the X509-SVID by PID", || {
            client.fetch_x509_svid(DelegateAttestationRequest::for_pid(pid).unwrap())
        })
        .await;
        assert_eq!(svid.spiffe_id().to_string(), BY_PID);
        let svids = client
            .fetch_jwt_svids(&["db"], DelegateAttestationRequest::for_pid(pid).unwrap())
            .await
            .unwrap();
        assert_eq!(validated_sub(svids[0].token(), &jwks, "db"), BY_PID);
        // A PID whose process has exited is refused.
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        let gone = raw_client
            .fetch_jwtsvi_ds(FetchJwtsviDsRequest {
                audience: vec!["db".into()],
                selectors: vec![],
                pid: pid as i32,
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::Unavailable, "{gone:?}");
        assert!(
            gone.message().starts_with("workload attestation failed"),
            "{gone:?}"
        );

        // Malformed requests, as SPIRE answers them.
        for (selectors, pid) in [(vec![], 0), (vec![uid_selector(TARGET_UID)], 1)] {
            let status = raw_client
                .fetch_jwtsvi_ds(FetchJwtsviDsRequest {
                    audience: vec!["db".into()],
                    selectors,
                    pid,
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
        let status = raw_client
            .fetch_jwtsvi_ds(FetchJwtsviDsRequest {
                audience: vec![],
                selectors: vec![uid_selector(TARGET_UID)],
                pid: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "audience must be specified")
        );

        // A delegate whose entry is deleted is refused from its streams' next update on.
        let mut bundle_stream = raw_client
            .subscribe_to_x509_bundles(SubscribeToX509BundlesRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = bundle_stream.message().await.unwrap().unwrap();
        assert_eq!(
            first.ca_certificates["spiffe://example.org"],
            pem_certs(&bundle_pem).concat()
        );
        server.cli_ok(&["entry", "delete", "-entryID", &delegate_entry]);
        let ended = tokio::time::timeout(PUSH, async {
            loop {
                match bundle_stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended without a status"),
                    Err(status) => return status,
                }
            }
        })
        .await
        .expect("the stream ends within 30 s");
        assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    });

    // No key, no token in the log.
    let log = agent.log();
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains("eyJ"),
        "secrets in the log"
    );
}

#[test]
fn the_admin_socket_may_not_share_the_workload_api_directory() {
    let server = Server::start(ServerOptions::default());
    let mut agent = Agent::configure(&server);
    let beside = agent.socket.parent().unwrap().join("admin.sock");
    agent.configure_agent_block(&format!("admin_socket_path = \"{}\"", beside.display()));
    let status = agent.run_to_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(64), "bad config exits 64");
    assert!(
        agent.log().contains("admin_socket_path") && agent.log().contains("same directory"),
        "{}",
        agent.log()
    );
    assert!(!beside.exists());
}
