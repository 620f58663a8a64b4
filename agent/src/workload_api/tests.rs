//! The Workload API served on a temp socket, checked with our tonic client, the Rust `spiffe`
//! crate and py-spiffe. The caller is this test process, attested by the real unix attestor.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use sigil_proto::{RegistrationEntry, Selector, TrustDomain};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::client::{WorkloadApiClient, channel, connect};
use super::*;
use crate::cache::testing::{TestCa, TestJwtKey, TestMinter, entry, federated};
use crate::cache::{Cache, JwtSvidMinter};
use crate::workload_attestation::{
    AttestationError, UnixAttestor, UnixAttestorConfig, WorkloadAttestor,
};

/// Guards every wait so a broken server fails the test instead of hanging it.
pub(crate) async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out waiting")
}

/// The selector this test process gets from the unix attestor.
pub(crate) fn me() -> String {
    format!("unix:uid:{}", nix::unistd::geteuid())
}

pub(crate) fn web_entry() -> RegistrationEntry {
    entry("web", "spiffe://example.org/web", &[&me()], 1)
}

#[derive(Debug)]
struct FailingAttestor;

impl WorkloadAttestor for FailingAttestor {
    fn attest(
        &self,
        pid: i32,
    ) -> futures::future::BoxFuture<'_, Result<Vec<Selector>, AttestationError>> {
        Box::pin(async move { Err(AttestationError::NoProcess { pid }) })
    }
}

pub(crate) struct Options {
    pub(crate) allow_unauthenticated_verifiers: bool,
    pub(crate) svid_wait: Duration,
    pub(crate) attestor: Box<dyn WorkloadAttestor>,
    pub(crate) failing_minter: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            allow_unauthenticated_verifiers: false,
            svid_wait: Duration::from_secs(10),
            attestor: Box::new(UnixAttestor::new(UnixAttestorConfig::default())),
            failing_minter: false,
        }
    }
}

pub(crate) struct Harness {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) ca: TestCa,
    pub(crate) cache: Arc<Cache>,
    /// Signs tokens with the same key the minter uses (for ValidateJWTSVID cases).
    pub(crate) jwt_kid: String,
    /// The minter behind FetchJWTSVID.
    pub(crate) minter: Arc<TestMinter>,
    pub(crate) cancel: CancellationToken,
    pub(crate) server: JoinHandle<Result<(), WorkloadApiError>>,
}

impl Harness {
    pub(crate) async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("public").join("api.sock");
        let ca = TestCa::new("example.org");
        let mut minter = TestMinter::new(TestJwtKey::new("jwt-1"));
        minter.fail = options.failing_minter;
        let cache = Arc::new(Cache::new(ca.bundle(Some(&minter.key))));
        let jwt_kid = minter.key.kid.clone();
        let minter = Arc::new(minter);
        let config = WorkloadApiConfig {
            socket_path: socket.clone(),
            allow_unauthenticated_verifiers: options.allow_unauthenticated_verifiers,
            allowed_foreign_jwt_claims: Vec::new(),
            svid_wait: options.svid_wait,
            ..WorkloadApiConfig::default()
        };
        let listener = bind(&socket).unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_listener(
            listener,
            config,
            cache.subscribe(),
            Arc::new(vec![options.attestor]),
            minter.clone() as Arc<dyn JwtSvidMinter>,
            cancel.clone(),
        ));
        Self {
            _dir: dir,
            socket,
            ca,
            cache,
            jwt_kid,
            minter,
            cancel,
            server,
        }
    }

    pub(crate) async fn client(&self) -> WorkloadApiClient {
        connect(&self.socket).await.unwrap()
    }

    /// The `web` entry with a minted SVID.
    pub(crate) fn add_web(&self) {
        self.cache.upsert_entries(vec![web_entry()]);
        self.cache
            .set_svid("web", self.ca.svid("spiffe://example.org/web"))
            .unwrap();
    }

    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        bounded(self.server).await.unwrap().unwrap();
        assert!(!self.socket.exists(), "socket removed on shutdown");
    }
}

async fn first_x509(client: &mut WorkloadApiClient) -> Result<X509svidResponse, tonic::Status> {
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await?
        .into_inner();
    Ok(bounded(stream.message()).await?.expect("one message"))
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test]
async fn security_header_is_required() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    let mut bare = SpiffeWorkloadApiClient::new(channel(&h.socket).await.unwrap());
    let missing = "security header missing from request";
    assert_status(
        bare.fetch_x509svid(X509svidRequest {}).await,
        Code::InvalidArgument,
        missing,
    );
    assert_status(
        bare.fetch_x509_bundles(X509BundlesRequest {}).await,
        Code::InvalidArgument,
        missing,
    );
    assert_status(
        bare.fetch_jwt_bundles(JwtBundlesRequest {}).await,
        Code::InvalidArgument,
        missing,
    );
    let jwt_req = JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    };
    assert_status(
        bare.fetch_jwtsvid(jwt_req).await,
        Code::InvalidArgument,
        missing,
    );
    let validate = ValidateJwtsvidRequest {
        audience: "a".into(),
        svid: "x.y.z".into(),
    };
    assert_status(
        bare.validate_jwtsvid(validate).await,
        Code::InvalidArgument,
        missing,
    );

    // A wrong value, or the value twice, is not the header either.
    for values in [vec!["false"], vec!["true", "true"]] {
        let mut req = tonic::Request::new(X509svidRequest {});
        for v in values {
            req.metadata_mut()
                .append(SECURITY_HEADER, v.parse().unwrap());
        }
        assert_status(
            bare.fetch_x509svid(req).await,
            Code::InvalidArgument,
            missing,
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn no_identity_is_permission_denied() {
    let h = Harness::start(Options::default()).await;
    h.cache.upsert_entries(vec![entry(
        "other",
        "spiffe://example.org/o",
        &["unix:uid:4294967294"],
        1,
    )]);
    let mut c = h.client().await;
    let denied = "no identity issued";
    assert_status(first_x509(&mut c).await, Code::PermissionDenied, denied);
    let bundles = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_status(bundles, Code::PermissionDenied, denied);
    let jwt_bundles = c
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_status(jwt_bundles, Code::PermissionDenied, denied);
    let jwt_req = JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    };
    assert_status(
        c.fetch_jwtsvid(jwt_req).await,
        Code::PermissionDenied,
        denied,
    );
    h.stop().await;
}

#[tokio::test]
async fn attestation_failure_is_unavailable() {
    let h = Harness::start(Options {
        attestor: Box::new(FailingAttestor),
        ..Options::default()
    })
    .await;
    h.add_web();
    let mut c = h.client().await;
    assert_status(
        first_x509(&mut c).await,
        Code::Unavailable,
        "workload attestation failed",
    );
    h.stop().await;
}

#[tokio::test]
async fn x509_svid_message_carries_the_full_state() {
    let h = Harness::start(Options::default()).await;
    let other = TestCa::new("other.org");
    let unrelated = TestCa::new("unrelated.org");
    h.cache
        .set_federated_bundles(federated(&[&other, &unrelated]));
    let mut web = web_entry();
    web.hint = "internal".into();
    web.federates_with = vec![other.td.clone()];
    let mut second = entry("api", "spiffe://example.org/api", &[&me()], 2);
    second.hint = "external".into();
    h.cache.upsert_entries(vec![second, web]);
    let web_svid = h.ca.svid("spiffe://example.org/web");
    let (chain, key) = (web_svid.chain.concat(), web_svid.private_key_pkcs8.to_vec());
    h.cache.set_svid("web", web_svid).unwrap();
    h.cache
        .set_svid("api", h.ca.svid("spiffe://example.org/api"))
        .unwrap();

    let msg = first_x509(&mut h.client().await).await.unwrap();
    let ids: Vec<&str> = msg.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/web", "spiffe://example.org/api"],
        "created_at order"
    );
    let svid = &msg.svids[0];
    assert_eq!(svid.x509_svid, chain);
    assert_eq!(svid.x509_svid_key, key);
    assert_eq!(svid.bundle, h.ca.der());
    assert_eq!(svid.hint, "internal");
    let keys: Vec<&str> = msg.federated_bundles.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["spiffe://other.org"],
        "only federates_with trust domains"
    );
    assert_eq!(msg.federated_bundles["spiffe://other.org"], other.der());
    h.stop().await;
}

#[tokio::test]
async fn x509_stream_pushes_rotation_and_ends_when_identity_goes() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    let mut c = h.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = bounded(stream.message()).await.unwrap().unwrap();

    // An entry update that does not change the response sends nothing; the rotation that
    // follows must be the next message.
    let mut touched = web_entry();
    touched.revision = 2;
    h.cache.upsert_entries(vec![touched]);
    let rotated = h.ca.svid("spiffe://example.org/web");
    let rotated_chain = rotated.chain.concat();
    h.cache.set_svid("web", rotated).unwrap();
    let second = bounded(stream.message()).await.unwrap().unwrap();
    assert_ne!(first.svids[0].x509_svid, second.svids[0].x509_svid);
    assert_eq!(second.svids[0].x509_svid, rotated_chain);

    // A bundle change is pushed too.
    let new_ca = TestCa::new("example.org");
    let mut bundle = h.ca.bundle(None);
    bundle.x509_authorities.push(new_ca.der());
    h.cache.set_bundle(bundle);
    let third = bounded(stream.message()).await.unwrap().unwrap();
    assert_eq!(third.svids[0].bundle, [h.ca.der(), new_ca.der()].concat());

    h.cache.remove_entries(["web"]);
    let end = bounded(stream.message()).await;
    assert_status(end, Code::PermissionDenied, "no identity issued");
    h.stop().await;
}

#[tokio::test]
async fn x509_stream_waits_for_the_first_svid() {
    let h = Harness::start(Options::default()).await;
    h.cache.upsert_entries(vec![web_entry()]);
    let mut c = h.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    h.cache
        .set_svid("web", h.ca.svid("spiffe://example.org/web"))
        .unwrap();
    let msg = bounded(stream.message()).await.unwrap().unwrap();
    assert_eq!(msg.svids[0].spiffe_id, "spiffe://example.org/web");
    h.stop().await;
}

#[tokio::test]
async fn x509_svid_not_minted_in_time_is_unavailable() {
    let h = Harness::start(Options {
        svid_wait: Duration::ZERO,
        ..Options::default()
    })
    .await;
    h.cache.upsert_entries(vec![web_entry()]);
    let result = first_x509(&mut h.client().await).await;
    assert_status(result, Code::Unavailable, "X509-SVID not yet available");
    h.stop().await;
}

#[tokio::test]
async fn bundle_streams_and_change_suppression() {
    let h = Harness::start(Options::default()).await;
    let other = TestCa::new("other.org");
    h.cache.set_federated_bundles(federated(&[&other]));
    let mut web = web_entry();
    web.federates_with = vec![other.td.clone()];
    h.cache.upsert_entries(vec![web]);
    let mut c = h.client().await;

    let mut x509 = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg = bounded(x509.message()).await.unwrap().unwrap();
    assert_eq!(msg.bundles["spiffe://example.org"], h.ca.der());
    assert_eq!(msg.bundles["spiffe://other.org"], other.der());
    assert_eq!(msg.bundles.len(), 2);

    let mut jwt = c
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg = bounded(jwt.message()).await.unwrap().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&msg.bundles["spiffe://example.org"]).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], h.jwt_kid.as_str());
    assert!(jwks["keys"][0].get("use").is_none(), "plain JWKS");
    let other_jwks: serde_json::Value =
        serde_json::from_slice(&msg.bundles["spiffe://other.org"]).unwrap();
    assert_eq!(other_jwks["keys"], serde_json::json!([]));

    // Same content again sends nothing; the next X.509 message is the real change.
    h.cache.set_bundle(h.ca.bundle(None));
    let new_ca = TestCa::new("example.org");
    h.cache.set_bundle(new_ca.bundle(None));
    let msg = bounded(x509.message()).await.unwrap().unwrap();
    assert_eq!(msg.bundles["spiffe://example.org"], new_ca.der());
    // The JWT stream saw its key disappear with the first change, not the second.
    let msg = bounded(jwt.message()).await.unwrap().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&msg.bundles["spiffe://example.org"]).unwrap();
    assert_eq!(jwks["keys"], serde_json::json!([]));
    h.stop().await;
}

#[tokio::test]
async fn unauthenticated_verifiers_get_only_our_bundle() {
    let options = Options {
        allow_unauthenticated_verifiers: true,
        ..Options::default()
    };
    let h = Harness::start(options).await;
    h.cache
        .set_federated_bundles(federated(&[&TestCa::new("other.org")]));
    let mut c = h.client().await;
    let mut x509 = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg = bounded(x509.message()).await.unwrap().unwrap();
    let keys: Vec<&str> = msg.bundles.keys().map(String::as_str).collect();
    assert_eq!(keys, ["spiffe://example.org"]);
    h.stop().await;
}

#[tokio::test]
async fn fetch_jwt_svid_rules() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    h.cache
        .upsert_entries(vec![entry("api", "spiffe://example.org/api", &[&me()], 2)]);
    let mut c = h.client().await;
    let req = |aud: &[&str], id: &str| JwtsvidRequest {
        audience: aud.iter().map(|s| s.to_string()).collect(),
        spiffe_id: id.into(),
    };
    assert_status(
        c.fetch_jwtsvid(req(&[], "")).await,
        Code::InvalidArgument,
        "audience must be specified",
    );
    let bad = c.fetch_jwtsvid(req(&["a"], "not-an-id")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // One token per matching entry, whether or not its X509-SVID is minted.
    let all = c
        .fetch_jwtsvid(req(&["a", "b"], ""))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/web", "spiffe://example.org/api"]
    );
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&all.svids[0].svid).unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["a", "b"]));
    assert_eq!(claims["sub"], "spiffe://example.org/web");

    let one = c
        .fetch_jwtsvid(req(&["a"], "spiffe://example.org/api"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(one.svids[0].spiffe_id, "spiffe://example.org/api");
    let none = c
        .fetch_jwtsvid(req(&["a"], "spiffe://example.org/nope"))
        .await;
    assert_status(none, Code::PermissionDenied, "no identity issued");
    h.stop().await;
}

#[tokio::test]
async fn minter_failure_is_unavailable() {
    let h = Harness::start(Options {
        failing_minter: true,
        ..Options::default()
    })
    .await;
    h.add_web();
    let req = JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    };
    let result = h.client().await.fetch_jwtsvid(req).await;
    assert_status(result, Code::Unavailable, "could not fetch JWT-SVID");
    h.stop().await;
}

#[tokio::test]
async fn validate_jwt_svid_rules() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    let mut c = h.client().await;
    let req = JwtsvidRequest {
        audience: vec!["db".into()],
        spiffe_id: String::new(),
    };
    let token = c
        .fetch_jwtsvid(req)
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;

    let validate = |aud: &str, svid: &str| ValidateJwtsvidRequest {
        audience: aud.into(),
        svid: svid.into(),
    };
    let ok = c
        .validate_jwtsvid(validate("db", &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://example.org/web");
    let claims = ok.claims.unwrap();
    use prost_types::value::Kind;
    let Some(Kind::ListValue(aud)) = &claims.fields["aud"].kind else {
        panic!("aud not a list")
    };
    assert_eq!(aud.values[0].kind, Some(Kind::StringValue("db".into())));

    assert_status(
        c.validate_jwtsvid(validate("", &token)).await,
        Code::InvalidArgument,
        "audience must be specified",
    );
    assert_status(
        c.validate_jwtsvid(validate("db", "")).await,
        Code::InvalidArgument,
        "svid must be specified",
    );
    assert_status(
        c.validate_jwtsvid(validate("other", &token)).await,
        Code::InvalidArgument,
        "expected audience in [\"other\"] (audience=[\"db\"])",
    );
    let forged = TestJwtKey::new(&h.jwt_kid).sign(&serde_json::json!({
        "sub": "spiffe://example.org/web", "aud": "db", "exp": crate::cache::testing::now() + 60,
    }));
    assert_status(
        c.validate_jwtsvid(validate("db", &forged)).await,
        Code::InvalidArgument,
        "token signature is invalid",
    );

    // A caller with no identity may still validate.
    h.cache.remove_entries(["web"]);
    assert!(c.validate_jwtsvid(validate("db", &token)).await.is_ok());
    h.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    let mut c = h.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    bounded(stream.message()).await.unwrap().unwrap();
    h.cancel.cancel();
    let end = bounded(stream.message()).await;
    assert_status(end, Code::Unavailable, "agent is shutting down");
    bounded(h.server).await.unwrap().unwrap();
}

#[tokio::test]
async fn one_shot_clients_cancel_quietly() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    // Drop streams after one message many times; the server must keep serving.
    for _ in 0..20 {
        first_x509(&mut h.client().await).await.unwrap();
    }
    h.cache
        .set_svid("web", h.ca.svid("spiffe://example.org/web"))
        .unwrap();
    first_x509(&mut h.client().await).await.unwrap();
    h.stop().await;
}

#[test]
fn bind_prepares_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a/b/api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let listener = bind(&socket).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o666);
    assert_eq!(mode(socket.parent().unwrap()), 0o755);
    assert!(
        matches!(bind(&socket), Err(WorkloadApiError::InUse(_))),
        "live socket kept"
    );

    // A stale socket (nobody listening) is replaced.
    drop(listener);
    assert!(socket.exists());
    drop(bind(&socket).unwrap());

    let file = dir.path().join("regular");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(bind(&file), Err(WorkloadApiError::NotASocket(_))));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test]
async fn rust_spiffe_crate_client() {
    use spiffe::{SpiffeId, WorkloadApiClient as RustClient};

    let h = Harness::start(Options::default()).await;
    let other = TestCa::new("other.org");
    h.cache.set_federated_bundles(federated(&[&other]));
    let mut web = web_entry();
    web.federates_with = vec![other.td.clone()];
    h.cache.upsert_entries(vec![web]);
    h.cache
        .set_svid("web", h.ca.svid("spiffe://example.org/web"))
        .unwrap();

    let client = RustClient::connect_to(format!("unix://{}", h.socket.display()))
        .await
        .unwrap();
    let svid = bounded(client.fetch_x509_svid()).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(svid.cert_chain().len(), 1);

    let bundles = bounded(client.fetch_x509_bundles()).await.unwrap();
    let own = spiffe::TrustDomain::new("example.org").unwrap();
    let fed = spiffe::TrustDomain::new("other.org").unwrap();
    assert_eq!(bundles.get(&own).unwrap().authorities().len(), 1);
    assert!(bundles.get(&fed).is_some());

    let jwt_bundles = bounded(client.fetch_jwt_bundles()).await.unwrap();
    assert!(
        jwt_bundles
            .get(&own)
            .unwrap()
            .find_jwt_authority(&h.jwt_kid)
            .is_some()
    );

    let jwt = bounded(client.fetch_jwt_svid(["db"], None)).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(jwt.audience(), ["db".to_string()]);
    let wanted = SpiffeId::new("spiffe://example.org/web").unwrap();
    let by_id = bounded(client.fetch_jwt_svid(["db"], Some(&wanted)))
        .await
        .unwrap();
    let validated = bounded(client.validate_jwt_token("db", by_id.token()))
        .await
        .unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/web"
    );
    assert!(
        bounded(client.validate_jwt_token("nope", by_id.token()))
            .await
            .is_err()
    );

    // Watch a rotation through the crate's context stream.
    let mut contexts = Box::pin(bounded(client.stream_x509_contexts()).await.unwrap());
    let first = bounded(contexts.next()).await.unwrap().unwrap();
    let first_leaf = first.default_svid().unwrap().leaf().as_bytes().to_vec();
    h.cache
        .set_svid("web", h.ca.svid("spiffe://example.org/web"))
        .unwrap();
    let second = bounded(contexts.next()).await.unwrap().unwrap();
    assert_ne!(
        second.default_svid().unwrap().leaf().as_bytes(),
        first_leaf.as_slice()
    );
    assert_eq!(
        second.default_svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/web"
    );
    drop(contexts);

    // The crate recognises our "no identity issued".
    h.cache.remove_entries(["web"]);
    let err = bounded(client.fetch_x509_svid()).await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_spiffe_client() {
    // CI (and scripts/test with a .venv) sets SIGIL_PYTHON: then a missing py-spiffe is a
    // failure, not a skip. Without it, a developer's bare `cargo test` skips with a notice.
    let explicit = std::env::var("SIGIL_PYTHON").ok();
    let python = explicit.clone().unwrap_or_else(|| "python3".into());
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import spiffe"])
        .output()
        .await;
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            explicit.is_none(),
            "SIGIL_PYTHON={python} cannot import spiffe"
        );
        println!(
            "NOTICE: skipping py-spiffe test: {python} cannot import spiffe (set SIGIL_PYTHON)"
        );
        return;
    }
    let h = Harness::start(Options::default()).await;
    let other = TestCa::new("other.org");
    h.cache.set_federated_bundles(federated(&[&other]));
    let mut web = web_entry();
    web.federates_with = vec![TrustDomain::new("other.org").unwrap()];
    h.cache.upsert_entries(vec![web]);
    h.cache
        .set_svid("web", h.ca.svid("spiffe://example.org/web"))
        .unwrap();

    let script = h._dir.path().join("py_client.py");
    std::fs::write(&script, include_str!("testdata/py_client.py")).unwrap();
    let out = bounded(
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(&h.socket)
            .arg("db")
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "py-spiffe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web_id = "spiffe://example.org/web";
    assert_eq!(got["x509_spiffe_id"], web_id);
    assert_eq!(got["x509_chain_len"], 1);
    assert_eq!(got["context_svids"], serde_json::json!([web_id]));
    assert_eq!(
        got["x509_bundle_tds"],
        serde_json::json!(["example.org", "other.org"])
    );
    assert_eq!(got["x509_own_authorities"], 1);
    assert_eq!(got["jwt_spiffe_id"], web_id);
    assert_eq!(got["jwt_audience"], serde_json::json!(["db"]));
    assert_eq!(
        got["jwt_bundle_tds"],
        serde_json::json!(["example.org", "other.org"])
    );
    assert_eq!(got["jwt_kids"], serde_json::json!([h.jwt_kid]));
    assert_eq!(got["local_validation_sub"], web_id);
    assert_eq!(got["validated_sub"], web_id);
    assert_eq!(got["wrong_audience"], "ValidateJwtSvidError");
    h.stop().await;
}
