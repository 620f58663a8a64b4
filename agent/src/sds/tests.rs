//! SDS served on a temp socket beside the Workload API (the Workload API's test harness),
//! called with our generated client as Envoy calls it. The caller is this test process,
//! attested by the real unix attestor. The independent client (go-control-plane) is in
//! tests/tests/sds_envoy.rs.

use std::time::Duration;

use prost::Message as _;
use prost_types::{Struct, Value, value::Kind};
use sigil_proto::envoy::config::core::v3::{BuildVersion, Node, data_source, node};
use sigil_proto::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use sigil_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use sigil_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use sigil_proto::envoy::r#type::v3::SemanticVersion;
use sigil_proto::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::cache::testing::{TestCa, entry, federated};
use crate::workload_api::client::channel;
use crate::workload_api::tests::{Harness, Options, bounded, me, web_entry};

const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

async fn client(h: &Harness) -> SecretDiscoveryServiceClient<Channel> {
    // No `workload.spiffe.io` header: Envoy sends none, and SDS does not require it.
    SecretDiscoveryServiceClient::new(channel(&h.socket).await.unwrap())
}

fn envoy_node(major: u32, minor: u32) -> Node {
    Node {
        id: "sidecar~10.0.0.1~web".into(),
        cluster: "web".into(),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(node::UserAgentVersionType::UserAgentBuildVersion(
            BuildVersion {
                version: Some(SemanticVersion {
                    major_number: major,
                    minor_number: minor,
                    patch: 0,
                }),
                metadata: None,
            },
        )),
        ..Node::default()
    }
}

fn subscribe(names: &[&str], node: Option<Node>) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET.into(),
        ..DiscoveryRequest::default()
    }
}

fn ack(names: &[&str], last: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: last.version_info.clone(),
        response_nonce: last.nonce.clone(),
        ..subscribe(names, None)
    }
}

/// An Envoy-like stream: requests go in through `tx`.
struct SdsStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl SdsStream {
    async fn open(h: &Harness, first: DiscoveryRequest) -> Result<Self, tonic::Status> {
        let (tx, requests) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = client(h)
            .await
            .stream_secrets(ReceiverStream::new(requests))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        Ok(bounded(self.rx.message()).await?.expect("a response"))
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(600), self.rx.message()).await;
        assert!(got.is_err(), "expected no response, got {got:?}");
    }
}

fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, SECRET);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    secrets(response).into_iter().map(|s| s.name).collect()
}

fn inline(source: &Option<sigil_proto::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(bytes)) => bytes.clone(),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// The leaf's URI SAN, its serial, and whether the PKCS#8 key is the leaf's.
fn tls_certificate(secret: &Secret) -> (String, Vec<u8>, bool) {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("{} is not a TLS certificate", secret.name);
    };
    let chain = pem::parse_many(inline(&tls.certificate_chain)).unwrap();
    assert!(chain.iter().all(|p| p.tag() == "CERTIFICATE"));
    let key = pem::parse(inline(&tls.private_key)).unwrap();
    assert_eq!(key.tag(), "PRIVATE KEY", "PKCS#8");
    let (_, leaf) = X509Certificate::from_der(chain[0].contents()).unwrap();
    let uri = leaf
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                san.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
            }
            _ => None,
        })
        .unwrap();
    let key_pair = rcgen::KeyPair::try_from(key.contents()).unwrap();
    let spki = pem::parse(key_pair.public_key_pem()).unwrap();
    let matches = spki.contents() == leaf.public_key().raw;
    (uri, leaf.raw_serial().to_vec(), matches)
}

/// The SPIFFE validator's trust domains and their PEM bundles.
fn spiffe_validator(secret: &Secret) -> Vec<(String, Vec<u8>)> {
    let Some(secret::Type::ValidationContext(vc)) = &secret.r#type else {
        panic!("{} is not a validation context", secret.name);
    };
    assert!(vc.trusted_ca.is_none());
    let custom = vc
        .custom_validator_config
        .as_ref()
        .expect("custom validator");
    assert_eq!(custom.name, "envoy.tls.cert_validator.spiffe");
    let any = custom.typed_config.as_ref().unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let config = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    config
        .trust_domains
        .into_iter()
        .map(|td| (td.name, inline(&td.trust_bundle)))
        .collect()
}

fn trusted_ca(secret: &Secret) -> Vec<u8> {
    let Some(secret::Type::ValidationContext(vc)) = &secret.r#type else {
        panic!("{} is not a validation context", secret.name);
    };
    assert!(vc.custom_validator_config.is_none());
    inline(&vc.trusted_ca)
}

fn pem_of(ca: &TestCa) -> Vec<u8> {
    sigil_proto::bundle::pem_encode("CERTIFICATE", &ca.der()).into_bytes()
}

#[tokio::test]
async fn envoy_subscription_ack_nack_and_pushes() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    let wanted = ["default", "ROOTCA"];
    let mut s = SdsStream::open(&h, subscribe(&wanted, Some(envoy_node(1, 40))))
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    assert_eq!(first.version_info, "1");
    assert_eq!(first.nonce.len(), 16);
    let got = secrets(&first);
    assert_eq!(names_of(&got), ["ROOTCA", "default"]);
    let (uri, serial, key_matches) = tls_certificate(&got[1]);
    assert_eq!(uri, "spiffe://example.org/web");
    assert!(key_matches, "the private key is the leaf's");
    assert_eq!(
        spiffe_validator(&got[0]),
        [("example.org".to_owned(), pem_of(&h.ca))]
    );

    // ACK: nothing new. NACK of that version: logged, nothing re-sent.
    s.send(ack(&wanted, &first)).await;
    s.quiet().await;
    let mut nack = ack(&wanted, &first);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad secret".into(),
        details: vec![],
    });
    s.send(nack.clone()).await;
    s.send(nack).await;
    s.quiet().await;

    // Rotation: a new version with a new certificate.
    h.cache
        .set_svid("web", h.ca.svid("spiffe://example.org/web"))
        .unwrap();
    let rotated = s.next().await.unwrap();
    assert_eq!(rotated.version_info, "2");
    assert_ne!(rotated.nonce, first.nonce);
    let (_, new_serial, key_matches) = tls_certificate(&secrets(&rotated)[1]);
    assert_ne!(new_serial, serial);
    assert!(key_matches);

    // A request for a stale nonce is ignored, even with new names.
    s.send(DiscoveryRequest {
        response_nonce: first.nonce.clone(),
        ..subscribe(&["spiffe://example.org/web"], None)
    })
    .await;
    s.quiet().await;

    // New names on the stream: answered at once, same version.
    s.send(DiscoveryRequest {
        response_nonce: rotated.nonce.clone(),
        version_info: rotated.version_info.clone(),
        ..subscribe(&["spiffe://example.org/web", "spiffe://example.org"], None)
    })
    .await;
    let renamed = s.next().await.unwrap();
    assert_eq!(renamed.version_info, "2");
    assert_eq!(
        names(&renamed),
        ["spiffe://example.org", "spiffe://example.org/web"]
    );

    // A second entry, then the default one deleted: `default` becomes the other SVID.
    s.send(ack(&["default"], &renamed)).await;
    let only_default = s.next().await.unwrap();
    h.cache
        .upsert_entries(vec![entry("api", "spiffe://example.org/api", &[&me()], 2)]);
    h.cache
        .set_svid("api", h.ca.svid("spiffe://example.org/api"))
        .unwrap();
    // (An entry whose SVID is not minted yet changes nothing the caller is served.)
    let with_api = s.next().await.unwrap();
    assert_eq!(only_default.version_info, "2");
    assert_eq!(with_api.version_info, "3");
    h.cache.remove_entries(["web"]);
    let after_delete = s.next().await.unwrap();
    assert_eq!(after_delete.version_info, "4");
    let (uri, _, _) = tls_certificate(&secrets(&after_delete)[0]);
    assert_eq!(uri, "spiffe://example.org/api");

    // The last entry gone: `default` can no longer be served, and the stream ends as SPIRE's.
    h.cache.remove_entries(["api"]);
    let end = s.next().await.unwrap_err();
    assert_eq!(end.code(), Code::InvalidArgument);
    assert_eq!(
        end.message(),
        "workload is not authorized for the requested identities [\"default\"]"
    );
    h.stop().await;
}

fn names_of(secrets: &[Secret]) -> Vec<&str> {
    secrets.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test]
async fn all_bundles_and_federation_pushes() {
    let h = Harness::start(Options::default()).await;
    let other = TestCa::new("other.org");
    let unrelated = TestCa::new("unrelated.org");
    let mut web = web_entry();
    web.federates_with = vec![other.td.clone()];
    h.cache.upsert_entries(vec![web]);
    h.cache
        .set_svid("web", h.ca.svid("spiffe://example.org/web"))
        .unwrap();
    let mut s = SdsStream::open(&h, subscribe(&["ALL"], Some(envoy_node(1, 40))))
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    assert_eq!(
        spiffe_validator(&secrets(&first)[0]),
        [("example.org".to_owned(), pem_of(&h.ca))]
    );
    s.send(ack(&["ALL"], &first)).await;

    // A federated bundle arrives: pushed, with one trust domain per bundle, sorted; the
    // trust domain the entry does not federate with is not there.
    h.cache
        .set_federated_bundles(federated(&[&other, &unrelated]));
    let pushed = s.next().await.unwrap();
    assert_eq!(pushed.version_info, "2");
    assert_eq!(
        spiffe_validator(&secrets(&pushed)[0]),
        [
            ("example.org".to_owned(), pem_of(&h.ca)),
            ("other.org".to_owned(), pem_of(&other)),
        ]
    );

    // Everything (no names): each SVID and each bundle under its own name, no defaults.
    let mut all = SdsStream::open(&h, subscribe(&[], None)).await.unwrap();
    let everything = all.next().await.unwrap();
    assert_eq!(
        names(&everything),
        [
            "spiffe://example.org",
            "spiffe://other.org",
            "spiffe://example.org/web"
        ]
    );
    // A trust domain not federated with is not this caller's.
    let refused = SdsStream::open(&h, subscribe(&["spiffe://unrelated.org"], None))
        .await
        .unwrap()
        .next()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn plain_ca_certificates_when_spiffe_validation_is_off() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    // Node metadata turns SPIFFE validation off (a string, as Istio sends it).
    let mut node = envoy_node(1, 40);
    node.metadata = Some(Struct {
        fields: [(
            "disable_spiffe_cert_validation".to_owned(),
            Value {
                kind: Some(Kind::StringValue("true".into())),
            },
        )]
        .into(),
    });
    let mut s = SdsStream::open(&h, subscribe(&["ROOTCA"], Some(node)))
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    assert_eq!(trusted_ca(&secrets(&first)[0]), pem_of(&h.ca));
    // ALL needs the SPIFFE validator.
    s.send(DiscoveryRequest {
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..subscribe(&["ALL"], None)
    })
    .await;
    let err = s.next().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("SPIFFE certificate validator"),
        "{err:?}"
    );

    // An Envoy before 1.18 has no SPIFFE validator.
    let mut old = SdsStream::open(&h, subscribe(&["ROOTCA"], Some(envoy_node(1, 17))))
        .await
        .unwrap();
    assert_eq!(
        trusted_ca(&secrets(&old.next().await.unwrap())[0]),
        pem_of(&h.ca)
    );
    h.stop().await;
}

#[tokio::test]
async fn a_caller_without_an_entry_gets_only_our_bundle() {
    let h = Harness::start(Options::default()).await;
    let mut s = SdsStream::open(&h, subscribe(&["ROOTCA"], None))
        .await
        .unwrap();
    assert_eq!(names(&s.next().await.unwrap()), ["ROOTCA"]);
    for name in ["default", "spiffe://example.org/web", "not a spiffe id"] {
        let err = SdsStream::open(&h, subscribe(&[name], None))
            .await
            .unwrap()
            .next()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            format!("workload is not authorized for the requested identities [{name:?}]")
        );
    }
    // An entry created later is pushed to the open stream's subscription (bundle unchanged:
    // a new version, same resources).
    let mut all = SdsStream::open(&h, subscribe(&[], None)).await.unwrap();
    assert_eq!(names(&all.next().await.unwrap()), ["spiffe://example.org"]);
    h.add_web();
    assert_eq!(
        names(&all.next().await.unwrap()),
        ["spiffe://example.org", "spiffe://example.org/web"]
    );
    h.stop().await;
}

#[tokio::test]
async fn fetch_delta_and_bad_requests() {
    let h = Harness::start(Options::default()).await;
    h.add_web();
    let mut c = client(&h).await;
    let fetched = c
        .fetch_secrets(subscribe(&["default"], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&fetched), ["default"]);
    assert_eq!(fetched.version_info.len(), 16);
    let again = c
        .fetch_secrets(subscribe(&["default"], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version_info, fetched.version_info, "same content");

    let delta = c
        .delta_secrets(futures::stream::iter([DeltaDiscoveryRequest::default()]))
        .await
        .unwrap_err();
    assert_eq!(delta.code(), Code::Unimplemented);
    assert_eq!(delta.message(), "Method is not implemented");

    // Another resource type: refused on Fetch and on a stream.
    let mut wrong = subscribe(&["default"], None);
    wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    let err = c.fetch_secrets(wrong.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("unsupported type_url"), "{err:?}");
    let err = SdsStream::open(&h, wrong)
        .await
        .unwrap()
        .next()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Bytes that are not a DiscoveryRequest: a clear error, and the agent still serves.
    let garbage = fetch_raw(&h, Bogus { version_info: 7 }).await.unwrap_err();
    assert_eq!(garbage.code(), Code::Internal);
    assert!(garbage.message().contains("decode"), "{garbage:?}");
    let still = c.fetch_secrets(subscribe(&[], None)).await.unwrap();
    assert_eq!(names(still.get_ref()).len(), 2);
    h.stop().await;
}

/// Field 1 as a number where DiscoveryRequest has a string: not a DiscoveryRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct Bogus {
    #[prost(uint64, tag = "1")]
    version_info: u64,
}

/// FetchSecrets called with any message.
async fn fetch_raw(h: &Harness, message: Bogus) -> Result<DiscoveryResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel(&h.socket).await.unwrap());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
    );
    let codec = tonic_prost::ProstCodec::<Bogus, DiscoveryResponse>::default();
    grpc.unary(tonic::Request::new(message), path, codec)
        .await
        .map(tonic::Response::into_inner)
}
