//! Tests of the agent API over real TLS, a real SQLite datastore and a real CA.

use std::time::SystemTime;

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sigil_common::listener::ConnectionLimiter;
use sigil_common::tls::{Roots, SpiffeServerVerifier};
use sigil_proto::sigil::agent::v1::agent_client::AgentClient;
use sigil_proto::{RegistrationEntry, Selector};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::authentication::PresentedSvid;
use super::*;
use crate::key_manager::MemoryKeyManager;

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

fn serial(der: &[u8]) -> String {
    PresentedSvid::parse(der).unwrap().serial
}

/// A key and a CSR for it, as the agent makes them.
fn key_and_csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    (key, csr)
}

struct Harness {
    _dir: tempfile::TempDir,
    ds: Datastore,
    ca: Arc<Ca>,
    td: TrustDomain,
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An attested agent: its ID, SVID and key, and a client presenting them.
struct TestAgent {
    id: SpiffeId,
    chain: Vec<Vec<u8>>,
    key: KeyPair,
    client: AgentClient<Channel>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(RateLimitConfig::default()).await
    }

    async fn start_with(limits: RateLimitConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("datastore.sqlite3", dir.path())
            .await
            .unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let (ca, _) = Ca::new(
            crate::ca::CaConfig::new(td.clone()),
            Arc::new(MemoryKeyManager::new()),
            None,
            SystemTime::now(),
        )
        .unwrap();
        let ca = Arc::new(ca);
        let metrics = Metrics::new();
        let mut api = AgentApi::new(ds.clone(), ca.clone(), td.clone(), metrics.clone())
            .with_rate_limits(limits);
        // Far beyond any test: a change that arrives was pushed, not polled.
        api.sync_fallback = Duration::from_secs(3600);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let limiter = ConnectionLimiter::new(
            "agent_api",
            crate::listener::Endpoint::AgentApi.default_limits(),
            metrics.connections.clone(),
        );
        let listener = Listener::new(listener, limiter);
        tokio::spawn(serve(listener, api, cancel.clone()));
        Self {
            _dir: dir,
            ds,
            ca,
            td,
            addr,
            metrics,
            cancel,
        }
    }

    async fn client(&self, identity: Option<(&[Vec<u8>], &KeyPair)>) -> AgentClient<Channel> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // As an agent checks the server: chained to the bundle, named the server's SPIFFE ID.
        let mut roots = RootCertStore::empty();
        for der in &self.ca.bundle().x509_authorities {
            roots.add(CertificateDer::from(der.clone())).unwrap();
        }
        let verifier = Arc::new(SpiffeServerVerifier::new(
            Roots::Fixed(Arc::new(roots)),
            self.td.server_id(),
        ));
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(
                    chain
                        .iter()
                        .map(|c| CertificateDer::from(c.clone()))
                        .collect(),
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let addr = self.addr;
        let channel = Endpoint::from_static("http://sigil-server")
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                async move {
                    let tcp = TcpStream::connect(addr).await?;
                    let name = ServerName::try_from("sigil-server").unwrap();
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .unwrap();
        AgentClient::new(channel)
    }

    async fn join_token(&self) -> String {
        let token = uuid::Uuid::new_v4().to_string();
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 600;
        self.ds.create_join_token(&token, exp).await.unwrap();
        token
    }

    async fn attest(&self) -> TestAgent {
        let token = self.join_token().await;
        let (key, csr) = key_and_csr();
        let resp = self
            .client(None)
            .await
            .attest_agent(pb::AttestAgentRequest {
                attestation_type: "join_token".into(),
                payload: token.into_bytes(),
                csr,
            })
            .await
            .unwrap()
            .into_inner();
        let chain = resp.svid_chain;
        let client = self.client(Some((&chain, &key))).await;
        TestAgent {
            id: SpiffeId::new(&resp.spiffe_id).unwrap(),
            chain,
            key,
            client,
        }
    }

    fn id(&self, path: &str) -> SpiffeId {
        SpiffeId::from_path(&self.td, path).unwrap()
    }

    async fn create(&self, path: &str, parent: &SpiffeId, selectors: &[&str]) -> RegistrationEntry {
        let selectors = selectors
            .iter()
            .map(|s| {
                let (t, v) = s.split_once(':').unwrap();
                Selector::from_parts(t, v).unwrap()
            })
            .collect();
        let entry = RegistrationEntry {
            dns_names: vec!["svc.example.org".into()],
            ..RegistrationEntry::new(self.id(path), parent.clone(), selectors)
        };
        self.ds.create_entries(vec![entry]).await.unwrap().remove(0)
    }

    /// What the admin API's EvictAgent does.
    async fn evict(&self, id: &SpiffeId) {
        self.ds.delete_attested_node(id).await.unwrap();
    }

    /// What the admin API's BanAgent does.
    async fn ban(&self, id: &SpiffeId) {
        self.ds.set_attested_node_banned(id, true).await.unwrap();
    }
}

async fn next(stream: &mut tonic::Streaming<pb::SyncEntriesResponse>) -> pb::SyncEntriesResponse {
    // A hang guard only: the 1 h fallback tick is far beyond it.
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("no sync message")
        .unwrap()
        .expect("stream ended")
}

/// Reads a whole snapshot; returns the SPIFFE ID paths and the revision.
async fn snapshot(stream: &mut tonic::Streaming<pb::SyncEntriesResponse>) -> (Vec<String>, i64) {
    let first = next(stream).await;
    assert!(first.snapshot_start);
    assert!(
        first.bundle.is_some(),
        "the bundle comes in the first message"
    );
    let mut msg = first;
    let mut paths = Vec::new();
    loop {
        paths.extend(
            msg.upserts
                .iter()
                .map(|e| SpiffeId::new(&e.spiffe_id).unwrap().path().to_owned()),
        );
        if msg.snapshot_end {
            paths.sort();
            return (paths, msg.revision);
        }
        msg = next(stream).await;
    }
}

#[tokio::test]
async fn attestation_issues_an_agent_svid_and_records_the_node() {
    let h = Harness::start().await;
    let token = h.join_token().await;
    let (_key, csr) = key_and_csr();
    let mut anon = h.client(None).await;
    let resp = anon
        .attest_agent(pb::AttestAgentRequest {
            attestation_type: "join_token".into(),
            payload: token.clone().into_bytes(),
            csr: csr.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let want = format!("spiffe://example.org/spire/agent/join_token/{token}");
    assert_eq!(resp.spiffe_id, want);
    assert_eq!(uri_sans(&resp.svid_chain[0]), std::slice::from_ref(&want));
    assert!(!resp.bundle.unwrap().x509_authorities.is_empty());
    let node =
        h.ds.fetch_attested_node(&SpiffeId::new(&want).unwrap())
            .await
            .unwrap()
            .expect("node recorded");
    assert_eq!(node.attestation_type, "join_token");
    assert_eq!(node.cert_serial, serial(&resp.svid_chain[0]));

    let reuse = anon
        .attest_agent(pb::AttestAgentRequest {
            attestation_type: "join_token".into(),
            payload: token.into_bytes(),
            csr: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::PermissionDenied);
    assert!(
        reuse.message().contains("already used"),
        "{}",
        reuse.message()
    );

    let unknown = anon
        .attest_agent(pb::AttestAgentRequest {
            attestation_type: "x509pop".into(),
            payload: b"x".to_vec(),
            csr,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_node_that_cannot_reattest_is_refused_while_attested() {
    let h = Harness::start().await;
    let token = h.join_token().await;
    let id = crate::node_attestation::join_token_agent_id(&h.td, &token).unwrap();
    h.ds.create_attested_node(AttestedNode {
        spiffe_id: id,
        attestation_type: "join_token".into(),
        selectors: vec![],
        cert_serial: "01".into(),
        cert_expires_at: i64::MAX,
        new_cert_serial: None,
        banned: false,
        created_at: 0,
        updated_at: 0,
    })
    .await
    .unwrap();
    let (_, csr) = key_and_csr();
    let status = h
        .client(None)
        .await
        .attest_agent(pb::AttestAgentRequest {
            attestation_type: "join_token".into(),
            payload: token.into_bytes(),
            csr,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("evict"), "{status:?}");
}

#[tokio::test]
async fn calls_without_an_agent_svid_are_refused() {
    let h = Harness::start().await;
    let mut anon = h.client(None).await;
    let err = anon
        .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anon
        .renew_agent(pb::RenewAgentRequest {
            csr: key_and_csr().1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// The middleware counts every call, refused ones included, under the RPC's name.
#[tokio::test]
async fn every_call_is_counted_by_method_and_outcome() {
    let h = Harness::start().await;
    let count = |method, result| {
        h.metrics
            .agent_requests
            .get_or_create(&crate::metrics::RpcLabels { method, result })
            .get()
    };
    let mut agent = h.attest().await;
    assert_eq!(count("AttestAgent", "ok"), 1);
    let mut anon = h.client(None).await;
    anon.renew_agent(pb::RenewAgentRequest {
        csr: key_and_csr().1,
    })
    .await
    .unwrap_err();
    assert_eq!(count("RenewAgent", "unauthenticated"), 1);
    agent
        .client
        .renew_agent(pb::RenewAgentRequest {
            csr: key_and_csr().1,
        })
        .await
        .unwrap();
    assert_eq!(count("RenewAgent", "ok"), 1);
    agent
        .client
        .mint_jwtsvid(pb::MintJwtsvidRequest {
            entry_id: "none".into(),
            audience: vec!["a".into()],
            spiffe_id: String::new(),
            pod_uid: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(count("MintJWTSVID", "permission_denied"), 1);
}

/// The metric's method labels are the wire contract's RPC names, every one of them.
#[test]
fn methods_are_the_rpcs_of_the_proto() {
    let proto = include_str!("../../../../proto/proto/sigil/agent/v1/agent.proto");
    assert_eq!(METHODS, crate::api::middleware::proto_rpcs(proto));
}

/// A misspelt name would leave its RPC audited (the safe side) and the list wrong.
#[test]
fn read_only_rpcs_are_rpcs() {
    for m in READ_ONLY {
        assert!(METHODS.contains(m), "{m} is not an RPC of the agent API");
    }
}

#[tokio::test]
async fn sync_sends_the_authorized_snapshot_then_pushes_changes() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    let other = h.attest().await;
    // Give the node a selector so a node alias applies.
    let mut node = h.ds.fetch_attested_node(&agent.id).await.unwrap().unwrap();
    node.selectors = vec![Selector::from_parts("k8s_psat", "cluster:c1").unwrap()];
    h.ds.create_attested_node(node).await.unwrap();
    let server = h.td.server_id();
    h.create("/own", &agent.id, &["unix:uid:1"]).await;
    h.create("/alias", &server, &["k8s_psat:cluster:c1"]).await;
    h.create("/other-alias", &server, &["k8s_psat:cluster:c2"])
        .await;
    h.create("/under-alias", &h.id("/alias"), &["unix:uid:2"])
        .await;
    h.create("/theirs", &other.id, &["unix:uid:1"]).await;

    let mut stream = agent
        .client
        .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let (paths, revision) = snapshot(&mut stream).await;
    assert_eq!(paths, ["/alias", "/own", "/under-alias"]);
    assert_eq!(revision, h.ds.latest_entry_revision().await.unwrap());

    // Someone else's entry is not pushed; ours is.
    h.create("/theirs-too", &other.id, &["unix:uid:3"]).await;
    let created = h.create("/new", &agent.id, &["unix:uid:3"]).await;
    let mut msg = next(&mut stream).await;
    if msg.upserts.is_empty() {
        msg = next(&mut stream).await;
    }
    let ids: Vec<_> = msg.upserts.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, std::slice::from_ref(&created.id));
    assert!(msg.deleted_ids.is_empty());

    h.ds.delete_entries(std::slice::from_ref(&created.id))
        .await
        .unwrap();
    let msg = next(&mut stream).await;
    assert_eq!(msg.deleted_ids, std::slice::from_ref(&created.id));
    // The stream reads the revision before the entries, so a wake-up racing the delete may
    // report an earlier revision than the one it already reflects: safe (a resume from it
    // replays, never skips), but never ahead of the datastore.
    let latest = h.ds.latest_entry_revision().await.unwrap();
    assert!(
        msg.revision >= created.revision && msg.revision <= latest,
        "{} not in {}..={latest}",
        msg.revision,
        created.revision
    );

    // Resuming from that revision sends no snapshot, only what changed after it.
    let resumed_at = msg.revision;
    let later = h.create("/later", &agent.id, &["unix:uid:4"]).await;
    let mut resumed = agent
        .client
        .sync_entries(pb::SyncEntriesRequest {
            since_revision: resumed_at,
        })
        .await
        .unwrap()
        .into_inner();
    let mut msg = next(&mut resumed).await;
    assert!(!msg.snapshot_start);
    assert!(msg.bundle.is_some());
    // Upserts and deletions go in separate messages, and the deletion of `/new` comes too when
    // the revision resumed from was read before it; the last message carries the digest.
    let mut upserts: Vec<String> = msg.upserts.iter().map(|e| e.id.clone()).collect();
    while msg.entries_digest.is_empty() {
        msg = next(&mut resumed).await;
        assert!(!msg.snapshot_start);
        upserts.extend(msg.upserts.iter().map(|e| e.id.clone()));
    }
    assert_eq!(upserts, [later.id]);
    // That digest is of the agent's whole set, as a full snapshot has it.
    let mut fresh = agent
        .client
        .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut held = Vec::new();
    loop {
        let page = next(&mut fresh).await;
        held.extend(page.upserts.into_iter().map(|e| (e.id, e.revision)));
        if page.snapshot_end {
            break;
        }
    }
    assert_eq!(held.len(), 4, "{held:?}");
    assert_eq!(
        msg.entries_digest,
        sigil_proto::entry::entries_digest(held.iter().map(|(id, r)| (id.as_str(), *r))).to_vec()
    );

    // An evicted agent's open stream ends at the next wake-up.
    h.ds.delete_attested_node(&agent.id).await.unwrap();
    h.create("/wake", &other.id, &["unix:uid:5"]).await;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("stream not ended")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(end.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn mint_signs_authorized_entries_only() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    let other = h.attest().await;
    let mine = h.create("/web", &agent.id, &["unix:uid:1"]).await;
    let theirs = h.create("/db", &other.id, &["unix:uid:1"]).await;

    let (_k, csr) = key_and_csr();
    let resp = agent
        .client
        .batch_mint_x509svid(x509_batch(&[&mine.id], &csr))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.svids.len(), 1);
    let chain = &resp.svids[0].svid_chain;
    assert_eq!(uri_sans(&chain[0]), ["spiffe://example.org/web"]);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let bundle = h.ca.bundle();
    let (_, root) = X509Certificate::from_der(&bundle.x509_authorities[0]).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();

    // A forged request for another agent's entry, in an otherwise valid batch.
    let err = agent
        .client
        .batch_mint_x509svid(x509_batch(&[&mine.id, &theirs.id], &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains(&theirs.id), "{}", err.message());

    let jwt = agent
        .client
        .mint_jwtsvid(pb::MintJwtsvidRequest {
            entry_id: mine.id.clone(),
            audience: vec!["db".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!jwt.token.is_empty());
    let err = agent
        .client
        .mint_jwtsvid(pb::MintJwtsvidRequest {
            entry_id: theirs.id,
            audience: vec!["db".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = agent
        .client
        .mint_jwtsvid(pb::MintJwtsvidRequest {
            entry_id: mine.id,
            audience: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn mint_checks_the_requested_id_against_the_entry() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    let fixed = h.create("/web", &agent.id, &["unix:uid:1"]).await;
    let template = RegistrationEntry {
        spiffe_id: EntrySpiffeId::Template(
            "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}"
                .parse()
                .unwrap(),
        ),
        selectors: vec![Selector::new("k8s:ns").unwrap()],
        ..fixed.clone()
    };
    let template =
        h.ds.create_entries(vec![RegistrationEntry {
            id: String::new(),
            ..template
        }])
        .await
        .unwrap()
        .remove(0);

    let x509 = |entry_id: &str, spiffe_id: &str| pb::BatchMintX509svidRequest {
        requests: vec![pb::X509svidRequest {
            entry_id: entry_id.to_owned(),
            csr: key_and_csr().1,
            spiffe_id: spiffe_id.to_owned(),
            pod_uid: String::new(),
        }],
    };
    let jwt = |entry_id: &str, spiffe_id: &str| pb::MintJwtsvidRequest {
        entry_id: entry_id.to_owned(),
        audience: vec!["db".into()],
        spiffe_id: spiffe_id.to_owned(),
        pod_uid: String::new(),
    };

    // An instance of the template: the SVID carries the requested ID.
    let ok = "spiffe://example.org/ns/payments/sa/checkout";
    let resp = agent
        .client
        .batch_mint_x509svid(x509(&template.id, ok))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(uri_sans(&resp.svids[0].svid_chain[0]), [ok]);
    let token = agent
        .client
        .mint_jwtsvid(jwt(&template.id, ok))
        .await
        .unwrap()
        .into_inner()
        .token;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], ok);

    // Not instances: refused for both kinds, naming the entry.
    for bad in [
        "",
        "spiffe://example.org/ns/x/sa/../y",
        "spiffe://example.org/ns/x/sa/y/z",
        "spiffe://example.org/ns/x/xx/y",
        "spiffe://example.org/web",
        "spiffe://other.org/ns/x/sa/y",
        "spiffe://example.org",
        "not an id",
    ] {
        let err = agent
            .client
            .batch_mint_x509svid(x509(&template.id, bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{bad}");
        assert!(err.message().contains(&template.id), "{}", err.message());
        let err = agent
            .client
            .mint_jwtsvid(jwt(&template.id, bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{bad}");
    }

    // A fixed entry: empty or its own ID only.
    for good in ["", "spiffe://example.org/web"] {
        let resp = agent
            .client
            .batch_mint_x509svid(x509(&fixed.id, good))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            uri_sans(&resp.svids[0].svid_chain[0]),
            ["spiffe://example.org/web"]
        );
    }
    for bad in ["spiffe://example.org/db", ok] {
        let err = agent
            .client
            .batch_mint_x509svid(x509(&fixed.id, bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{bad}");
        let err = agent
            .client
            .mint_jwtsvid(jwt(&fixed.id, bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{bad}");
    }
}

/// No agent API mint signs an ID in `/spire/*`: not a template instance a selector value
/// steers there, not an entry stored before such entries were refused (which is not synced
/// either). Nothing is signed for any of these calls.
#[tokio::test]
async fn mints_refuse_reserved_ids() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    // Written straight to the datastore, as a server from before the check did.
    let stale = h.create("/spire/server", &agent.id, &["unix:uid:1"]).await;
    let template = RegistrationEntry {
        id: String::new(),
        spiffe_id: EntrySpiffeId::Template("spiffe://example.org/{k8s:ns}/server".parse().unwrap()),
        selectors: vec![Selector::new("k8s:ns").unwrap()],
        ..stale.clone()
    };
    let template = h.ds.create_entries(vec![template]).await.unwrap().remove(0);

    let mut stream = agent
        .client
        .sync_entries(full())
        .await
        .unwrap()
        .into_inner();
    let mut synced = Vec::new();
    loop {
        let msg = next(&mut stream).await;
        synced.extend(msg.upserts.into_iter().map(|e| e.id));
        if msg.snapshot_end {
            break;
        }
    }
    assert_eq!(
        synced,
        [template.id.as_str()],
        "the reserved entry is not synced"
    );

    let signed = |result| {
        h.metrics
            .jwt_svids_signed
            .get_or_create(&ResultLabel { result })
            .get()
            + h.metrics
                .x509_svids_signed
                .get_or_create(&ResultLabel { result })
                .get()
    };
    let before = (signed("ok"), signed("error"));
    let server = "spiffe://example.org/spire/server";
    let x509 = |entry_id: &str, spiffe_id: &str| pb::BatchMintX509svidRequest {
        requests: vec![pb::X509svidRequest {
            entry_id: entry_id.to_owned(),
            csr: key_and_csr().1,
            spiffe_id: spiffe_id.to_owned(),
            pod_uid: String::new(),
        }],
    };
    for (entry_id, spiffe_id, why) in [
        (template.id.as_str(), server, "reserved"),
        (stale.id.as_str(), server, "not authorized"),
        (stale.id.as_str(), "", "not authorized"),
    ] {
        let errs = [
            agent
                .client
                .batch_mint_x509svid(x509(entry_id, spiffe_id))
                .await
                .unwrap_err(),
            agent
                .client
                .mint_jwtsvid(pb::MintJwtsvidRequest {
                    spiffe_id: spiffe_id.to_owned(),
                    ..jwt_request(entry_id, &["db"])
                })
                .await
                .unwrap_err(),
            agent
                .client
                .batch_mint_jwtsvid(pb::BatchMintJwtsvidRequest {
                    requests: vec![pb::MintJwtsvidRequest {
                        spiffe_id: spiffe_id.to_owned(),
                        ..jwt_request(entry_id, &["db"])
                    }],
                })
                .await
                .unwrap_err(),
        ];
        for err in errs {
            assert_eq!(err.code(), Code::PermissionDenied, "{entry_id} {spiffe_id}");
            assert!(err.message().contains(why), "{}", err.message());
        }
    }
    assert_eq!((signed("ok"), signed("error")), before, "nothing signed");

    // Any other instance of the template is signed.
    let ok = "spiffe://example.org/payments/server";
    let resp = agent
        .client
        .batch_mint_x509svid(x509(&template.id, ok))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(uri_sans(&resp.svids[0].svid_chain[0]), [ok]);
}

#[tokio::test]
async fn evicted_and_banned_agents_are_refused() {
    let h = Harness::start().await;
    let mut evicted = h.attest().await;
    h.ds.delete_attested_node(&evicted.id).await.unwrap();
    let err = evicted
        .client
        .renew_agent(pb::RenewAgentRequest {
            csr: key_and_csr().1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("evicted"), "{}", err.message());
    let err = evicted
        .client
        .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut banned = h.attest().await;
    h.ds.set_attested_node_banned(&banned.id, true)
        .await
        .unwrap();
    let err = banned
        .client
        .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("banned"), "{}", err.message());
}

#[tokio::test]
async fn renewal_replaces_the_svid_after_first_use() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    let old_serial = serial(&agent.chain[0]);
    let (new_key, csr) = key_and_csr();
    let renewed = agent
        .client
        .renew_agent(pb::RenewAgentRequest { csr })
        .await
        .unwrap()
        .into_inner()
        .svid_chain;
    assert_eq!(uri_sans(&renewed[0]), [agent.id.to_string()]);
    assert_ne!(serial(&renewed[0]), old_serial);

    // Until the new SVID is used, the old one still works (a lost response must not lock
    // the agent out).
    agent.client.sync_entries(full()).await.unwrap();
    let mut renewed_client = h.client(Some((&renewed, &new_key))).await;
    renewed_client.sync_entries(full()).await.unwrap();
    let node = h.ds.fetch_attested_node(&agent.id).await.unwrap().unwrap();
    assert_eq!(node.cert_serial, serial(&renewed[0]));
    assert_eq!(node.new_cert_serial, None);

    let mut old_client = h.client(Some((&agent.chain, &agent.key))).await;
    let err = old_client.sync_entries(full()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

fn full() -> pb::SyncEntriesRequest {
    pb::SyncEntriesRequest { since_revision: 0 }
}

#[test]
fn attestation_rate_limit_per_address() {
    let limiter = RateLimiter::new(1.0, 3.0);
    let t0 = Instant::now();
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    assert!((0..3).all(|_| limiter.allow(&a, t0)), "burst allowed");
    assert!(!limiter.allow(&a, t0));
    assert!(limiter.allow(&b, t0), "other addresses are unaffected");
    assert!(!limiter.allow(&a, t0 + Duration::from_millis(500)));
    assert!(limiter.allow(&a, t0 + Duration::from_millis(1600)));
}

#[test]
fn signing_rate_limit_counts_every_item_all_or_nothing() {
    let limiter = RateLimiter::new(SIGN_RATE_PER_SEC, SIGN_BURST);
    let t0 = Instant::now();
    let td = TrustDomain::new("example.org").unwrap();
    let a = SpiffeId::from_path(&td, "/spire/agent/join_token/a").unwrap();
    let b = SpiffeId::from_path(&td, "/spire/agent/join_token/b").unwrap();
    // A full bucket takes the largest batch.
    assert_eq!(limiter.take(&a, MAX_MINT_BATCH, t0), Ok(()));
    // Empty now: a batch of 500 needs one second of refill, and taking nothing meanwhile.
    assert_eq!(limiter.take(&a, 500, t0), Err(Duration::from_secs(1)));
    let half = t0 + Duration::from_millis(500);
    assert_eq!(limiter.take(&a, 500, half), Err(Duration::from_millis(500)));
    assert_eq!(limiter.take(&a, 250, half), Ok(()), "250 refilled in 0.5 s");
    assert!(limiter.take(&a, 1, half).is_err());
    assert_eq!(
        limiter.take(&b, 1000, half),
        Ok(()),
        "other agents are unaffected"
    );
    // Refill stops at the burst: a long pause does not bank more than one full bucket.
    let later = t0 + Duration::from_secs(3600);
    assert_eq!(limiter.take(&a, 1000, later), Ok(()));
    assert!(limiter.take(&a, 1, later).is_err());
    assert_eq!(
        limiter.take(&a, 1001, later + Duration::from_secs(10)),
        Err(Duration::MAX)
    );
}

#[tokio::test]
async fn signing_beyond_the_rate_limit_is_refused_and_nothing_signed() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    let other = h.attest().await;
    let entry = h.create("/web", &agent.id, &["unix:uid:1"]).await;
    let mine = h.create("/db", &other.id, &["unix:uid:1"]).await;
    let csr = key_and_csr().1;
    let batch = |n: usize| x509_batch(&vec![entry.id.as_str(); n], &csr);
    let signed = || {
        h.metrics
            .x509_svids_signed
            .get_or_create(&ResultLabel { result: "ok" })
            .get()
    };
    // The burst: one full batch goes through.
    let resp = agent
        .client
        .batch_mint_x509svid(batch(MAX_MINT_BATCH))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.svids.len(), MAX_MINT_BATCH);
    let after_burst = signed();
    // Beyond it, within the same second: refused as a whole, nothing signed.
    let err = agent
        .client
        .batch_mint_x509svid(batch(400))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("signing rate limit") && err.message().contains("retry"),
        "{}",
        err.message()
    );
    assert_eq!(signed(), after_burst, "a refused batch signs nothing");
    // JWT-SVIDs draw from the same budget.
    let err = agent
        .client
        .batch_mint_jwtsvid(pb::BatchMintJwtsvidRequest {
            requests: (0..400).map(|_| jwt_request(&entry.id, &["db"])).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Another agent's budget is its own.
    let mut other_client = other.client;
    let jwt = other_client
        .mint_jwtsvid(jwt_request(&mine.id, &["db"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!jwt.token.is_empty());
}

#[tokio::test]
async fn signing_limit_can_be_turned_off() {
    let h = Harness::start_with(RateLimitConfig {
        attestation: true,
        signing: false,
    })
    .await;
    let mut agent = h.attest().await;
    let entry = h.create("/web", &agent.id, &["unix:uid:1"]).await;
    // Three full batches at once: beyond the burst, refused if the limit were on.
    for _ in 0..3 {
        let resp = agent
            .client
            .batch_mint_jwtsvid(pb::BatchMintJwtsvidRequest {
                requests: (0..MAX_MINT_BATCH)
                    .map(|_| jwt_request(&entry.id, &["db"]))
                    .collect(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.svids.len(), MAX_MINT_BATCH);
    }
}

#[derive(Debug, serde::Deserialize)]
struct JwtClaims {
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
}

/// Validates `token` with jsonwebtoken (an implementation independent of the CA's ring
/// signer) against the key of the bundle's JWKS its `kid` names.
fn validate_jwt(bundle: &sigil_proto::Bundle, token: &str, audience: &str) -> JwtClaims {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwks: JwkSet = serde_json::from_str(&bundle.to_jwks_json().unwrap()).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.leeway = 0;
    jsonwebtoken::decode::<JwtClaims>(token, &key, &validation)
        .unwrap()
        .claims
}

/// One X.509-SVID request per entry of `entry_ids`, all for the same CSR.
fn x509_batch(entry_ids: &[&str], csr: &[u8]) -> pb::BatchMintX509svidRequest {
    pb::BatchMintX509svidRequest {
        requests: entry_ids
            .iter()
            .map(|id| pb::X509svidRequest {
                entry_id: (*id).to_owned(),
                csr: csr.to_vec(),
                spiffe_id: String::new(),
                pod_uid: String::new(),
            })
            .collect(),
    }
}

fn jwt_request(entry_id: &str, audience: &[&str]) -> pb::MintJwtsvidRequest {
    pb::MintJwtsvidRequest {
        entry_id: entry_id.into(),
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        spiffe_id: String::new(),
        pod_uid: String::new(),
    }
}

#[tokio::test]
async fn batch_jwt_mint_answers_in_request_order_with_valid_tokens() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    let web = h.create("/web", &agent.id, &["unix:uid:1"]).await;
    let db = h.create("/db", &agent.id, &["unix:uid:2"]).await;
    // An entry with its own JWT-SVID TTL.
    let mut short = web.clone();
    short.id = String::new();
    short.spiffe_id = h.id("/short").into();
    short.jwt_svid_ttl = Some(Duration::from_secs(60));
    let short = h.ds.create_entries(vec![short]).await.unwrap().remove(0);

    let asked = [
        (&db, "spiffe://example.org/db", vec!["a", "b"], 300),
        (&web, "spiffe://example.org/web", vec!["c"], 300),
        (&short, "spiffe://example.org/short", vec!["d"], 60),
        (&db, "spiffe://example.org/db", vec!["e"], 300),
    ];
    let resp = agent
        .client
        .batch_mint_jwtsvid(pb::BatchMintJwtsvidRequest {
            requests: asked
                .iter()
                .map(|(e, _, aud, _)| jwt_request(&e.id, aud))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.svids.len(), asked.len());
    let bundle = h.ca.bundle();
    for ((_, sub, aud, ttl), svid) in asked.iter().zip(&resp.svids) {
        let claims = validate_jwt(&bundle, &svid.token, aud[0]);
        assert_eq!(claims.sub, *sub);
        assert_eq!(claims.aud, *aud);
        assert_eq!(claims.exp, svid.expires_at);
        assert_eq!(claims.exp - claims.iat, *ttl, "{sub}");
    }

    let empty = agent
        .client
        .batch_mint_jwtsvid(pb::BatchMintJwtsvidRequest { requests: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.svids.is_empty());
}

#[tokio::test]
async fn batch_jwt_mint_refuses_the_whole_call_for_one_bad_item() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    let other = h.attest().await;
    let mine = h.create("/web", &agent.id, &["unix:uid:1"]).await;
    let theirs = h.create("/db", &other.id, &["unix:uid:1"]).await;
    let batch =
        |items: Vec<pb::MintJwtsvidRequest>| pb::BatchMintJwtsvidRequest { requests: items };

    // Another agent's entry, after an authorized one.
    let err = agent
        .client
        .batch_mint_jwtsvid(batch(vec![
            jwt_request(&mine.id, &["x"]),
            jwt_request(&theirs.id, &["x"]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains(&theirs.id), "{}", err.message());

    // An entry that does not exist.
    let err = agent
        .client
        .batch_mint_jwtsvid(batch(vec![jwt_request("no-such-entry", &["x"])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("no-such-entry"), "{}", err.message());

    // A SPIFFE ID the entry does not give.
    let mut wrong_id = jwt_request(&mine.id, &["x"]);
    wrong_id.spiffe_id = "spiffe://example.org/db".into();
    let err = agent
        .client
        .batch_mint_jwtsvid(batch(vec![jwt_request(&mine.id, &["x"]), wrong_id]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // No audience, or an empty one.
    for audience in [&[][..], &[""][..]] {
        let err = agent
            .client
            .batch_mint_jwtsvid(batch(vec![
                jwt_request(&mine.id, &["x"]),
                jwt_request(&mine.id, audience),
            ]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{audience:?}");
        assert!(err.message().contains(&mine.id), "{}", err.message());
    }

    // One item over the bound.
    let err = agent
        .client
        .batch_mint_jwtsvid(batch(vec![
            jwt_request(&mine.id, &["x"]);
            MAX_MINT_BATCH + 1
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most"), "{}", err.message());

    // Nothing was signed for any refused call.
    let signed = |result| {
        h.metrics
            .jwt_svids_signed
            .get_or_create(&ResultLabel { result })
            .get()
    };
    assert_eq!((signed("ok"), signed("error")), (0, 0));
}

#[tokio::test]
async fn evicted_or_banned_agent_is_refused_batch_jwt_on_its_next_call() {
    let h = Harness::start().await;
    for ban in [false, true] {
        let mut agent = h.attest().await;
        let web = h.create("/web", &agent.id, &["unix:uid:1"]).await;
        let request = || pb::BatchMintJwtsvidRequest {
            requests: vec![jwt_request(&web.id, &["x"])],
        };
        // Warm: the node is known to the server when the ban or eviction lands.
        agent.client.batch_mint_jwtsvid(request()).await.unwrap();
        agent
            .client
            .mint_jwtsvid(jwt_request(&web.id, &["x"]))
            .await
            .unwrap();
        if ban {
            h.ban(&agent.id).await;
        } else {
            h.evict(&agent.id).await;
        }
        let err = agent
            .client
            .batch_mint_jwtsvid(request())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "ban: {ban}");
        let why = if ban { "banned" } else { "evicted" };
        assert!(err.message().contains(why), "{}", err.message());
        let err = agent
            .client
            .mint_jwtsvid(jwt_request(&web.id, &["x"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "ban: {ban}");
    }
}

/// An agent resuming from a revision whose later events were pruned (see
/// [`crate::pruning`]) gets a full snapshot, including the entries changed meanwhile.
#[tokio::test]
async fn resume_after_pruned_events_gets_a_full_snapshot() {
    let h = Harness::start().await;
    let mut agent = h.attest().await;
    h.create("/first", &agent.id, &["unix:uid:1"]).await;
    let resumed_at = h.ds.latest_entry_revision().await.unwrap();
    h.create("/second", &agent.id, &["unix:uid:2"]).await;
    h.create("/third", &agent.id, &["unix:uid:3"]).await;
    let latest = h.ds.latest_entry_revision().await.unwrap();
    // What the pruner does once `resumed_at + 1` is old enough.
    assert!(h.ds.prune_entry_events(latest).await.unwrap() > 0);
    let mut stream = agent
        .client
        .sync_entries(pb::SyncEntriesRequest {
            since_revision: resumed_at,
        })
        .await
        .unwrap()
        .into_inner();
    let (paths, revision) = snapshot(&mut stream).await;
    assert_eq!(paths, ["/first", "/second", "/third"]);
    assert_eq!(revision, latest);
}
