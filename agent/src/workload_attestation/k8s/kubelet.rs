//! A minimal kubelet client: `GET /pods` on the read-only or the secure port, decoded into
//! only the fields the attestor needs, and cached briefly so that a burst of workloads
//! starting together costs one kubelet call.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use sigil_common::tls::SpiffeServerVerifier;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

/// A pod list of a busy node is a few MiB; this only stops a runaway response.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// One kubelet call must not hold every waiting workload forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletEndpoint {
    pub host: String,
    pub port: u16,
    /// `None`: plain HTTP (the read-only port).
    pub tls: Option<KubeletTls>,
    /// Service account token sent as `Authorization: Bearer`; re-read on every call so that
    /// a rotated token is picked up.
    pub token_path: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeletTls {
    /// Verify the kubelet's certificate against this CA bundle (PEM), re-read on every call.
    Verify { ca_path: PathBuf },
    /// SPIRE's `skip_kubelet_verification`.
    SkipVerification,
}

impl KubeletEndpoint {
    /// `http://127.0.0.1:<port>`, no authentication.
    pub fn read_only(port: u16) -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port,
            tls: None,
            token_path: None,
        }
    }

    /// `https://<node name>:<port>` (`127.0.0.1` without a node name) with a bearer token.
    pub fn secure(
        node_name: Option<String>,
        port: u16,
        token_path: PathBuf,
        ca_path: PathBuf,
        skip_verification: bool,
    ) -> Self {
        Self {
            host: node_name.unwrap_or_else(|| "127.0.0.1".to_owned()),
            port,
            tls: Some(if skip_verification {
                KubeletTls::SkipVerification
            } else {
                KubeletTls::Verify { ca_path }
            }),
            token_path: Some(token_path),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid kubelet CA {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("invalid kubelet host name {0:?}")]
    HostName(String),
    #[error("connecting to kubelet at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("HTTP exchange with kubelet: {0}")]
    Http(String),
    #[error("kubelet answered {0}")]
    Status(StatusCode),
    #[error("kubelet did not answer within {0:?}")]
    Timeout(Duration),
    #[error("decoding kubelet pod list: {0}")]
    Decode(#[from] serde_json::Error),
    /// The fetch this caller waited for failed.
    #[error("{0}")]
    SharedFailure(String),
}

/// The pods of a `PodList`, with only the fields the attestor uses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct PodList {
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Pod {
    pub metadata: PodMetadata,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: String,
    pub node_name: String,
    pub containers: Vec<ContainerSpec>,
    pub init_containers: Vec<ContainerSpec>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    pub container_statuses: Vec<ContainerStatus>,
    pub init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    #[serde(rename = "imageID")]
    pub image_id: String,
    /// `<runtime>://<id>`; empty while the container is being created.
    #[serde(rename = "containerID")]
    pub container_id: String,
}

/// One fetched pod list and when it arrived.
#[derive(Clone, Debug)]
pub struct PodListSnapshot {
    pub fetched_at: Instant,
    pub pods: Arc<Vec<Pod>>,
}

/// Fetches and caches the kubelet's pod list.
pub struct KubeletClient {
    endpoint: KubeletEndpoint,
    cache_ttl: Duration,
    /// Holding the lock across the fetch makes concurrent callers wait for the one request in
    /// flight and then share its result, instead of each calling the kubelet.
    cache: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    snapshot: Option<PodListSnapshot>,
    /// The last failed fetch, shared with callers that were already waiting for it: with the
    /// kubelet down, a burst of callers must not queue one timeout each.
    failure: Option<(Instant, String)>,
}

impl fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletClient")
            .field("endpoint", &self.endpoint)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    pub fn new(endpoint: KubeletEndpoint, cache_ttl: Duration) -> Self {
        Self {
            endpoint,
            cache_ttl,
            cache: Mutex::new(CacheState::default()),
        }
    }

    /// The pod list: the cached one if younger than the TTL (or, with `newer_than`, if
    /// fetched after that instant, so a retry does not see the list it already searched).
    pub async fn pods(&self, newer_than: Option<Instant>) -> Result<PodListSnapshot, KubeletError> {
        let asked_at = Instant::now();
        let mut cache = self.cache.lock().await;
        if let Some(snapshot) = cache.snapshot.as_ref() {
            let usable = match newer_than {
                Some(seen) => snapshot.fetched_at > seen,
                None => snapshot.fetched_at.elapsed() < self.cache_ttl,
            };
            if usable {
                return Ok(snapshot.clone());
            }
        }
        if let Some((failed_at, reason)) = &cache.failure
            && *failed_at > asked_at
        {
            return Err(KubeletError::SharedFailure(reason.clone()));
        }
        let fetched = tokio::time::timeout(REQUEST_TIMEOUT, self.fetch())
            .await
            .map_err(|_| KubeletError::Timeout(REQUEST_TIMEOUT))
            .and_then(|r| r);
        match fetched {
            Ok(list) => {
                let snapshot = PodListSnapshot {
                    fetched_at: Instant::now(),
                    pods: Arc::new(list.items),
                };
                cache.snapshot = Some(snapshot.clone());
                cache.failure = None;
                Ok(snapshot)
            }
            Err(e) => {
                cache.failure = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<PodList, KubeletError> {
        let KubeletEndpoint {
            host,
            port,
            tls,
            token_path,
        } = &self.endpoint;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = Request::get("/pods").header(header::HOST, &authority);
        if let Some(path) = token_path {
            let token = Zeroizing::new(read_to_string(path)?);
            let bearer = Zeroizing::new(format!("Bearer {}", token.trim()));
            let mut value = HeaderValue::from_str(&bearer)
                .map_err(|_| KubeletError::Http("token is not a valid header value".into()))?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(String::new())
            .map_err(|e| KubeletError::Http(e.to_string()))?;

        let tcp = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(|source| KubeletError::Connect {
                addr: authority.clone(),
                source,
            })?;
        let body =
            match tls {
                None => exchange(TokioIo::new(tcp), request).await?,
                Some(tls) => {
                    let name = ServerName::try_from(host.clone())
                        .map_err(|_| KubeletError::HostName(host.clone()))?;
                    let connector = TlsConnector::from(Arc::new(client_config(tls)?));
                    let stream = connector.connect(name, tcp).await.map_err(|source| {
                        KubeletError::Connect {
                            addr: authority.clone(),
                            source,
                        }
                    })?;
                    exchange(TokioIo::new(stream), request).await?
                }
            };
        Ok(serde_json::from_slice(&body)?)
    }
}

/// One HTTP/1.1 request on a fresh connection: at most one call per cache period, so pooling
/// connections is not worth its complexity.
async fn exchange<S>(io: S, request: Request<String>) -> Result<axum::body::Bytes, KubeletError>
where
    S: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let http = |e: hyper::Error| KubeletError::Http(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() != StatusCode::OK {
            return Err(KubeletError::Status(response.status()));
        }
        axum::body::to_bytes(axum::body::Body::new(response.into_body()), MAX_BODY)
            .await
            .map_err(|e| KubeletError::Http(e.to_string()))
    }
    .await;
    driver.abort();
    result
}

fn read_to_string(path: &Path) -> Result<String, KubeletError> {
    std::fs::read_to_string(path).map_err(|source| KubeletError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn client_config(tls: &KubeletTls) -> Result<rustls::ClientConfig, KubeletError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeletError::Tls(e.to_string()))?;
    Ok(match tls {
        KubeletTls::Verify { ca_path } => {
            let ca_error = |reason: String| KubeletError::Ca {
                path: ca_path.display().to_string(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            let certs =
                CertificateDer::pem_file_iter(ca_path).map_err(|e| ca_error(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| ca_error(e.to_string()))?;
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_error("no certificate".to_owned()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // Any certificate is accepted, but the handshake signatures are still checked so that
        // the session is at least bound to the presented key.
        KubeletTls::SkipVerification => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::any_certificate()))
            .with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_kubelet::TestKubelet;
    use super::*;

    #[tokio::test]
    async fn fetches_and_decodes_the_pod_list() {
        let kubelet = TestKubelet::start().await;
        let client = KubeletClient::new(kubelet.endpoint(), Duration::from_secs(60));
        let snapshot = client.pods(None).await.unwrap();
        let names: Vec<_> = snapshot
            .pods
            .iter()
            .map(|p| (p.metadata.namespace.as_str(), p.metadata.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("payments", "checkout-service-7d9f8"),
                ("other", "web-5c6b7")
            ]
        );
        let checkout = &snapshot.pods[0];
        assert_eq!(checkout.spec.service_account_name, "checkout-service");
        assert_eq!(checkout.metadata.owner_references[0].kind, "ReplicaSet");
        assert_eq!(
            checkout.status.container_statuses[0].image_id,
            "docker.io/library/checkout@sha256:1111"
        );
        assert!(
            checkout.status.init_container_statuses[0]
                .container_id
                .starts_with("containerd://")
        );
        assert_eq!(kubelet.requests(), 1);
        assert_eq!(kubelet.last_authorization(), None);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request() {
        let kubelet = TestKubelet::start().await;
        let client = Arc::new(KubeletClient::new(
            kubelet.endpoint(),
            Duration::from_secs(60),
        ));
        let calls = (0..100).map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.pods(None).await.map(|s| s.pods.len()) })
        });
        for call in futures::future::join_all(calls).await {
            assert_eq!(call.unwrap().unwrap(), 2);
        }
        assert_eq!(kubelet.requests(), 1);
    }

    #[tokio::test]
    async fn newer_than_bypasses_the_cache() {
        let kubelet = TestKubelet::start().await;
        let client = KubeletClient::new(kubelet.endpoint(), Duration::from_secs(60));
        let first = client.pods(None).await.unwrap();
        client.pods(None).await.unwrap();
        assert_eq!(kubelet.requests(), 1);
        let second = client.pods(Some(first.fetched_at)).await.unwrap();
        assert!(second.fetched_at > first.fetched_at);
        assert_eq!(kubelet.requests(), 2);
        // A zero TTL means every plain call fetches.
        let uncached = KubeletClient::new(kubelet.endpoint(), Duration::ZERO);
        uncached.pods(None).await.unwrap();
        uncached.pods(None).await.unwrap();
        assert_eq!(kubelet.requests(), 4);
    }

    #[tokio::test]
    async fn sends_the_token_as_bearer_and_rereads_it() {
        let kubelet = TestKubelet::start().await;
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "first-token\n").unwrap();
        let endpoint = KubeletEndpoint {
            token_path: Some(token_path.clone()),
            ..kubelet.endpoint()
        };
        let client = KubeletClient::new(endpoint, Duration::ZERO);
        client.pods(None).await.unwrap();
        assert_eq!(
            kubelet.last_authorization().as_deref(),
            Some("Bearer first-token")
        );
        std::fs::write(&token_path, "second-token").unwrap();
        client.pods(None).await.unwrap();
        assert_eq!(
            kubelet.last_authorization().as_deref(),
            Some("Bearer second-token")
        );
    }

    #[tokio::test]
    async fn errors_are_reported() {
        let kubelet = TestKubelet::start().await;
        kubelet.set_body("{not json");
        let client = KubeletClient::new(kubelet.endpoint(), Duration::ZERO);
        assert!(matches!(
            client.pods(None).await,
            Err(KubeletError::Decode(_))
        ));
        kubelet.set_status(StatusCode::UNAUTHORIZED);
        assert!(matches!(
            client.pods(None).await,
            Err(KubeletError::Status(StatusCode::UNAUTHORIZED))
        ));
        let missing_ca = KubeletEndpoint {
            tls: Some(KubeletTls::Verify {
                ca_path: "/nonexistent/ca.crt".into(),
            }),
            ..kubelet.endpoint()
        };
        assert!(matches!(
            KubeletClient::new(missing_ca, Duration::ZERO)
                .pods(None)
                .await,
            Err(KubeletError::Ca { .. })
        ));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_failure() {
        let kubelet = TestKubelet::start().await;
        kubelet.set_status(StatusCode::INTERNAL_SERVER_ERROR);
        let client = Arc::new(KubeletClient::new(
            kubelet.endpoint(),
            Duration::from_secs(60),
        ));
        // The test runtime is single-threaded: every caller is waiting before the one fetch
        // completes, so all of them share its failure.
        let calls = (0..50).map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.pods(None).await.map(|_| ()) })
        });
        for call in futures::future::join_all(calls).await {
            let err = call.unwrap().unwrap_err();
            assert!(err.to_string().contains("500"), "{err}");
        }
        assert_eq!(kubelet.requests(), 1);
        // A later caller tries again.
        assert!(client.pods(None).await.is_err());
        assert_eq!(kubelet.requests(), 2);
    }

    #[test]
    fn endpoints_follow_spire_config() {
        let ro = KubeletEndpoint::read_only(10255);
        assert_eq!(
            (ro.host.as_str(), ro.port, &ro.tls),
            ("127.0.0.1", 10255, &None)
        );
        let secure = KubeletEndpoint::secure(
            Some("node-1".into()),
            10250,
            "/t".into(),
            "/ca".into(),
            false,
        );
        assert_eq!(secure.host, "node-1");
        assert_eq!(
            secure.tls,
            Some(KubeletTls::Verify {
                ca_path: "/ca".into()
            })
        );
        let skip = KubeletEndpoint::secure(None, 10250, "/t".into(), "/ca".into(), true);
        assert_eq!(skip.host, "127.0.0.1");
        assert_eq!(skip.tls, Some(KubeletTls::SkipVerification));
    }

    /// A TLS kubelet on 127.0.0.1 with a self-signed certificate for that IP: answers every
    /// connection with the test pod list and records each request head.
    async fn tls_kubelet() -> (u16, String, Arc<std::sync::Mutex<Vec<String>>>) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // A failed handshake (client refusing our certificate) just ends this one.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = tls.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                recorded
                    .lock()
                    .unwrap()
                    .push(String::from_utf8(head).unwrap());
                let body = super::super::test_kubelet::PODS;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.write_all(response.as_bytes()).await.unwrap();
                tls.shutdown().await.ok();
            }
        });
        (port, key.cert.pem(), heads)
    }

    #[tokio::test]
    async fn secure_port_verifies_the_kubelet_certificate() {
        let (port, ca_pem, heads) = tls_kubelet().await;
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "sa-token").unwrap();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let wrong_ca_path = dir.path().join("wrong.crt");
        std::fs::write(&wrong_ca_path, other_ca.cert.pem()).unwrap();

        let secure = |ca: &Path, skip: bool| {
            KubeletClient::new(
                KubeletEndpoint::secure(
                    Some("127.0.0.1".to_owned()),
                    port,
                    token_path.clone(),
                    ca.to_owned(),
                    skip,
                ),
                Duration::ZERO,
            )
        };

        let snapshot = secure(&ca_path, false).pods(None).await.unwrap();
        assert_eq!(snapshot.pods.len(), 2);
        let head = heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(head.starts_with("get /pods http/1.1"), "{head}");
        assert!(head.contains("authorization: bearer sa-token"), "{head}");

        let err = secure(&wrong_ca_path, false).pods(None).await.unwrap_err();
        assert!(matches!(err, KubeletError::Connect { .. }), "{err}");

        let skipped = secure(&wrong_ca_path, true).pods(None).await.unwrap();
        assert_eq!(skipped.pods.len(), 2);
        assert_eq!(heads.lock().unwrap().len(), 2);
    }
}
