//! OIDC discovery built into the server (SPIRE ships it as a separate binary):
//! `GET /.well-known/openid-configuration` and `GET /keys`, so a relying party that knows only
//! the discovery URL can validate JWT-SVIDs.
//!
//! **Issuer.** The document's `issuer` is `jwt_issuer` when the server sets one (it is then also
//! the `iss` of every JWT-SVID, so the two always agree), else `https://<Host>` of the request,
//! port included, as SPIRE's provider does (`http://` only with `allow_insecure_scheme` on a
//! plain-HTTP listener). `jwks_uri` is `<issuer>/keys`.
//!
//! **Domains.** When `domains` is non-empty, a request whose `Host` (port stripped) is not
//! listed gets 404, as SPIRE's provider does; when empty, any `Host` is served.
//!
//! **Caching.** Bodies depend only on the bundle (and the `Host` when it names the issuer) and
//! are serialised deterministically, so every replica serving the same bundle returns the same
//! bytes and `ETag`. The JWKS body is rebuilt only when the CA publishes a new bundle.
//! `max-age` stays well under the JWT key rotation lead time (see [`max_age`]), so a cache
//! always holds the next key before it signs.

pub mod config;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use sigil_common::listener::{ConnectionLimiter, Listener, TlsSource, serve_http};
use sigil_proto::bundle::Bundle;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::{OidcDiscoveryConfig, TlsFiles};

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const KEYS_PATH: &str = "/keys";

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("invalid TLS certificate or key: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot build the JWKS: {0}")]
    Jwks(#[from] sigil_proto::bundle::BundleError),
}

/// `Cache-Control: max-age` for a given `ca_ttl`: a sixth of the key lifetime, at most 5 min.
/// The next JWT key is published a third of its predecessor's lifetime before it signs (SPIRE's
/// rule, see `ca::rotation`), so a cached JWKS always contains it by then.
pub fn max_age(ca_ttl: Duration) -> u64 {
    (ca_ttl.as_secs() / 6).clamp(1, 300)
}

/// The JWKS derived from one bundle, serialised once.
struct Published {
    bundle: Arc<Bundle>,
    jwks: String,
    jwks_etag: String,
    /// JWS algorithms of the published keys, sorted.
    algs: Vec<String>,
}

impl Published {
    fn build(bundle: Arc<Bundle>) -> Result<Self, OidcError> {
        let jwks = bundle.to_oidc_jwks_json()?;
        let value: serde_json::Value = serde_json::from_str(&jwks).unwrap_or_default();
        let mut algs: Vec<String> = value["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["alg"].as_str().map(str::to_owned))
            .collect();
        algs.sort();
        algs.dedup();
        if algs.is_empty() {
            // No key yet: still name the algorithm the default CA key type signs with.
            algs.push("ES256".to_owned());
        }
        Ok(Self {
            jwks_etag: etag(&jwks),
            jwks,
            algs,
            bundle,
        })
    }
}

/// Serves the discovery document and JWKS for the bundles published on `bundles`.
pub struct Discovery {
    bundles: watch::Receiver<Arc<Bundle>>,
    cache: Mutex<Option<Arc<Published>>>,
    jwt_issuer: Option<String>,
    domains: Vec<String>,
    scheme: &'static str,
    max_age: u64,
}

impl Discovery {
    pub fn new(
        config: &OidcDiscoveryConfig,
        bundles: watch::Receiver<Arc<Bundle>>,
        jwt_issuer: Option<String>,
        ca_ttl: Duration,
    ) -> Self {
        let scheme = if config.tls.is_none() && config.allow_insecure_scheme {
            "http"
        } else {
            "https"
        };
        Self {
            bundles,
            cache: Mutex::new(None),
            jwt_issuer: jwt_issuer.map(|i| i.trim_end_matches('/').to_owned()),
            domains: config.domains.clone(),
            scheme,
            max_age: max_age(ca_ttl),
        }
    }

    /// The JWKS for the current bundle, rebuilt only when the CA published a new one.
    fn published(&self) -> Result<Arc<Published>, OidcError> {
        let bundle = self.bundles.borrow().clone();
        // A poisoned lock only means a panic mid-rebuild; the cache is rebuilt below anyway.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.as_ref().filter(|p| Arc::ptr_eq(&p.bundle, &bundle)) {
            return Ok(p.clone());
        }
        let p = Arc::new(Published::build(bundle)?);
        *cache = Some(p.clone());
        Ok(p)
    }

    /// Whether the request's `Host` (port stripped) is one of `domains`; any when none listed.
    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        if self.domains.is_empty() {
            return true;
        }
        host(headers).is_some_and(|h| self.domains.iter().any(|d| *d == strip_port(&h)))
    }

    /// The issuer for an allowed request; `None` when it must name the issuer after a `Host`
    /// that is missing or not a URL authority.
    fn issuer(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(issuer) = &self.jwt_issuer {
            return Some(issuer.clone());
        }
        // Reflected into the document: accept only what a URL authority may hold.
        let host = host(headers).filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })?;
        Some(format!("{}://{host}", self.scheme))
    }

    fn discovery_document(&self, issuer: &str, published: &Published) -> String {
        serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}{KEYS_PATH}"),
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": published.algs,
        })
        .to_string()
    }

    fn respond(&self, headers: &HeaderMap, body: String, tag: String) -> Response {
        let cache_control = format!("public, max-age={}", self.max_age);
        let mut response = if matches_etag(headers, &tag) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        };
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&tag) {
            h.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(&cache_control) {
            h.insert(header::CACHE_CONTROL, v);
        }
        response
    }
}

fn host(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]:8443`.
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// A strong ETag: the first 128 bits of the body's SHA-256.
fn etag(body: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    format!("\"{}\"", hex::encode(&digest.as_ref()[..16]))
}

/// `If-None-Match` (RFC 9110 13.1.2: weak comparison, `*` matches anything).
fn matches_etag(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

pub fn router(discovery: Arc<Discovery>) -> Router {
    Router::new()
        .route(DISCOVERY_PATH, get(discovery_handler))
        .route(KEYS_PATH, get(keys_handler))
        .with_state(discovery)
}

async fn discovery_handler(State(d): State<Arc<Discovery>>, headers: HeaderMap) -> Response {
    if !d.host_allowed(&headers) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(issuer) = d.issuer(&headers) else {
        return (StatusCode::BAD_REQUEST, "missing or invalid Host\n").into_response();
    };
    match d.published() {
        Ok(p) => {
            let body = d.discovery_document(&issuer, &p);
            let tag = etag(&body);
            d.respond(&headers, body, tag)
        }
        Err(e) => internal_error(&e),
    }
}

async fn keys_handler(State(d): State<Arc<Discovery>>, headers: HeaderMap) -> Response {
    if !d.host_allowed(&headers) {
        return StatusCode::NOT_FOUND.into_response();
    }
    match d.published() {
        Ok(p) => d.respond(&headers, p.jwks.clone(), p.jwks_etag.clone()),
        Err(e) => internal_error(&e),
    }
}

fn internal_error(e: &OidcError) -> Response {
    tracing::error!(error = %e, "cannot serve OIDC discovery");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// Binds the listener (and loads the TLS files) now, so a bad port or certificate fails
/// start-up, and returns the serving future. `limiter` holds the listener's connection caps.
pub async fn bind(
    config: &OidcDiscoveryConfig,
    discovery: Arc<Discovery>,
    limiter: Arc<ConnectionLimiter>,
    cancel: CancellationToken,
) -> Result<impl Future<Output = io::Result<()>> + use<>, OidcError> {
    let tls = tls_source(config.tls.as_ref())?;
    let bind_error = |source| OidcError::Bind {
        addr: config.bind,
        source,
    };
    let listener = Listener::bind(config.bind, limiter)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    tracing::info!(address = %local, tls = tls.is_some(), "OIDC discovery endpoint listening");
    let app = router(discovery);
    Ok(serve_http(listener, tls, app, cancel))
}

/// An HTTPS listener's acceptor from `files`, the same for every connection; `None`: plain
/// HTTP.
pub(crate) fn tls_source(files: Option<&TlsFiles>) -> Result<Option<TlsSource>, OidcError> {
    let Some(files) = files else {
        return Ok(None);
    };
    let acceptor = tls_acceptor(files)?;
    Ok(Some(Arc::new(move || acceptor.clone())))
}

pub(crate) fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, OidcError> {
    let identity = TlsIdentity::read(files)?;
    let config = identity.server_config(WebPkiClientVerifier::no_client_auth())?;
    Ok(TlsAcceptor::from(config))
}

/// The certificate chain and private key of a listener's [`TlsFiles`], read once.
pub(crate) struct TlsIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    pub(crate) fn read(files: &TlsFiles) -> Result<Self, OidcError> {
        let certs: Vec<CertificateDer<'static>> = read_pem(&files.cert_file)?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect();
        if certs.is_empty() {
            return Err(OidcError::Pem {
                path: files.cert_file.clone(),
                message: "no CERTIFICATE block".to_owned(),
            });
        }
        let key = read_pem(&files.key_file)?
            .into_iter()
            .find_map(|p| {
                let tag = p.tag().to_owned();
                let der = p.into_contents();
                match tag.as_str() {
                    "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(der.into())),
                    "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(der.into())),
                    "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(der.into())),
                    _ => None,
                }
            })
            .ok_or_else(|| OidcError::Pem {
                path: files.key_file.clone(),
                message: "no PRIVATE KEY block".to_owned(),
            })?;
        Ok(Self { certs, key })
    }

    /// An HTTP/1.1 server config presenting this identity, with `client` deciding on client
    /// certificates.
    pub(crate) fn server_config(
        &self,
        client: Arc<dyn ClientCertVerifier>,
    ) -> Result<Arc<rustls::ServerConfig>, OidcError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client)
        .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read_pem(path: &Path) -> Result<Vec<pem::Pem>, OidcError> {
    let text = std::fs::read(path).map_err(|source| OidcError::Read {
        path: path.to_owned(),
        source,
    })?;
    pem::parse_many(text).map_err(|e| OidcError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use sigil_proto::TrustDomain;
    use sigil_proto::bundle::JwtAuthority;

    use super::*;

    fn key(alg: &'static rcgen::SignatureAlgorithm, kid: &str) -> JwtAuthority {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        JwtAuthority {
            key_id: kid.to_owned(),
            public_key: rcgen::PublicKeyData::subject_public_key_info(&pair),
            expires_at: 0,
            tainted: false,
        }
    }

    fn bundle(keys: Vec<JwtAuthority>) -> Arc<Bundle> {
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        b.jwt_authorities = keys;
        Arc::new(b)
    }

    fn config(domains: &[&str], insecure: bool) -> OidcDiscoveryConfig {
        OidcDiscoveryConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            tls: None,
            allow_insecure_scheme: insecure,
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    async fn get(d: &Arc<Discovery>, path: &str, h: HeaderMap) -> (StatusCode, HeaderMap, String) {
        use tower::ServiceExt;
        let mut req = axum::http::Request::get(path);
        for (k, v) in &h {
            req = req.header(k, v);
        }
        let resp = router(d.clone())
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn max_age_stays_under_the_rotation_lead_time() {
        // ca_ttl 60 s: the next key is published 20 s before it signs.
        assert_eq!(max_age(Duration::from_secs(60)), 10);
        assert_eq!(max_age(Duration::from_secs(24 * 3600)), 300);
        assert_eq!(max_age(Duration::from_secs(3)), 1);
    }

    #[tokio::test]
    async fn document_and_jwks_list_every_published_key() {
        let (_tx, rx) = watch::channel(bundle(vec![
            key(&rcgen::PKCS_ECDSA_P256_SHA256, "k1"),
            key(&rcgen::PKCS_ECDSA_P384_SHA384, "k2"),
        ]));
        let d = Arc::new(Discovery::new(
            &config(&[], false),
            rx,
            None,
            Duration::from_secs(60),
        ));
        let (status, h, body) = get(
            &d,
            DISCOVERY_PATH,
            headers(&[(header::HOST, "oidc.example.org:8443")]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::CACHE_CONTROL], "public, max-age=10");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "issuer": "https://oidc.example.org:8443",
                "jwks_uri": "https://oidc.example.org:8443/keys",
                "authorization_endpoint": "",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256", "ES384"],
            })
        );

        let (status, _, body) = get(&d, KEYS_PATH, HeaderMap::new()).await;
        assert_eq!(status, StatusCode::OK);
        let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for (k, (kid, crv, alg, len)) in keys
            .iter()
            .zip([("k1", "P-256", "ES256", 43), ("k2", "P-384", "ES384", 64)])
        {
            assert_eq!(k["kid"], kid);
            assert_eq!(k["kty"], "EC");
            assert_eq!(k["crv"], crv);
            assert_eq!(k["alg"], alg);
            assert_eq!(k["use"], "sig");
            assert_eq!(k["x"].as_str().unwrap().len(), len);
            assert_eq!(k["y"].as_str().unwrap().len(), len);
        }
    }

    #[tokio::test]
    async fn configured_issuer_and_insecure_scheme() {
        let (_tx, rx) = watch::channel(bundle(vec![]));
        let d = Arc::new(Discovery::new(
            &config(&[], false),
            rx.clone(),
            Some("https://issuer.example.org/".into()),
            Duration::from_secs(3600),
        ));
        let (_, _, body) = get(&d, DISCOVERY_PATH, headers(&[(header::HOST, "other")])).await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["issuer"], "https://issuer.example.org");
        assert_eq!(doc["jwks_uri"], "https://issuer.example.org/keys");
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256"])
        );

        let d = Arc::new(Discovery::new(
            &config(&[], true),
            rx,
            None,
            Duration::from_secs(60),
        ));
        let (_, _, body) = get(
            &d,
            DISCOVERY_PATH,
            headers(&[(header::HOST, "127.0.0.1:80")]),
        )
        .await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["jwks_uri"], "http://127.0.0.1:80/keys");
        // A Host that is not a URL authority is not reflected.
        let (status, _, _) = get(&d, DISCOVERY_PATH, headers(&[(header::HOST, "a/b\"c")])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn unlisted_hosts_get_404() {
        let (_tx, rx) = watch::channel(bundle(vec![key(&rcgen::PKCS_ECDSA_P256_SHA256, "k1")]));
        let d = Arc::new(Discovery::new(
            &config(&["oidc.example.org", "::1"], false),
            rx,
            None,
            Duration::from_secs(60),
        ));
        for path in [DISCOVERY_PATH, KEYS_PATH] {
            for (host, want) in [
                (Some("oidc.example.org"), StatusCode::OK),
                (Some("OIDC.example.org:443"), StatusCode::OK),
                (Some("[::1]:8443"), StatusCode::OK),
                (Some("evil.example.org"), StatusCode::NOT_FOUND),
                (Some("oidc.example.org.evil"), StatusCode::NOT_FOUND),
                (None, StatusCode::NOT_FOUND),
            ] {
                let h = host.map_or_else(HeaderMap::new, |v| headers(&[(header::HOST, v)]));
                assert_eq!(get(&d, path, h).await.0, want, "{path} {host:?}");
            }
        }
        let (status, _, _) =
            get(&d, "/other", headers(&[(header::HOST, "oidc.example.org")])).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn etag_follows_the_bundle_and_if_none_match_gives_304() {
        let (tx, rx) = watch::channel(bundle(vec![key(&rcgen::PKCS_ECDSA_P256_SHA256, "k1")]));
        let d = Arc::new(Discovery::new(
            &config(&[], false),
            rx,
            None,
            Duration::from_secs(60),
        ));
        let (_, h, body) = get(&d, KEYS_PATH, HeaderMap::new()).await;
        let tag = h[header::ETAG].to_str().unwrap().to_owned();
        assert_eq!(tag, etag(&body));

        let (status, h304, body304) =
            get(&d, KEYS_PATH, headers(&[(header::IF_NONE_MATCH, &tag)])).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body304.is_empty());
        assert_eq!(h304[header::ETAG], tag.as_str());
        assert_eq!(h304[header::CACHE_CONTROL], "public, max-age=10");
        let weak_list = format!("\"nope\", W/{tag}");
        let (status, _, _) = get(
            &d,
            KEYS_PATH,
            headers(&[(header::IF_NONE_MATCH, &weak_list)]),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        let (status, _, _) = get(
            &d,
            KEYS_PATH,
            headers(&[(header::IF_NONE_MATCH, "\"nope\"")]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        // Same bundle, same bytes: what another replica would serve.
        let same = bundle(d.published().unwrap().bundle.jwt_authorities.clone());
        assert_eq!(Published::build(same).unwrap().jwks_etag, tag);

        // A rotation publishes a new key: the body and ETag change, the old tag no longer matches.
        let mut keys = d.published().unwrap().bundle.jwt_authorities.clone();
        keys.push(key(&rcgen::PKCS_ECDSA_P256_SHA256, "k2"));
        tx.send(bundle(keys)).unwrap();
        let (status, h, body) = get(&d, KEYS_PATH, headers(&[(header::IF_NONE_MATCH, &tag)])).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(h[header::ETAG].to_str().unwrap(), tag);
        assert!(body.contains("\"k2\""));
    }

    #[test]
    fn tls_files_load_or_name_the_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["oidc.example.org".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let files = TlsFiles {
            cert_file: cert_file.clone(),
            key_file,
        };
        assert!(tls_acceptor(&files).is_ok());

        let missing = TlsFiles {
            key_file: dir.path().join("nope.pem"),
            ..files
        };
        let err = tls_acceptor(&missing).err().unwrap().to_string();
        assert!(
            err.starts_with("cannot read ") && err.contains("nope.pem"),
            "{err}"
        );
        // A certificate where the key should be.
        let swapped = TlsFiles {
            cert_file: cert_file.clone(),
            key_file: cert_file,
        };
        let err = tls_acceptor(&swapped).err().unwrap().to_string();
        assert!(err.ends_with("cert.pem: no PRIVATE KEY block"), "{err}");
    }
}
