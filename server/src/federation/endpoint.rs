//! The SPIFFE bundle endpoint (SPIFFE Federation §4–5): `GET /` serves our own trust domain's
//! bundle as a SPIFFE bundle document, with `spiffe_sequence` (bumped by the CA on every
//! change) and `spiffe_refresh_hint` (the configured `refresh_hint`, in seconds). The body is
//! rebuilt from the CA's bundle on every request, so a rotation is served at once.
//!
//! Profiles: `https_spiffe` presents the server's own X509-SVID (`spiffe://<td>/spire/server`,
//! re-issued at half-life and on every bundle change by [`ServerTls::refresh_forever`]);
//! `https_web` presents a Web PKI certificate read from files at start-up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sigil_common::listener::{ConnectionLimiter, Listener, TlsSource, serve_http};
use sigil_proto::Bundle;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::config::{BundleEndpointConfig, ServingProfile};
use crate::api::tls::{ServerTls, TlsError};
use crate::ca::Ca;
use crate::oidc_discovery::{OidcError, TlsFiles, tls_acceptor};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("bundle endpoint: {0}")]
    Svid(#[from] TlsError),
    #[error("bundle endpoint serving certificate: {0}")]
    Files(#[from] OidcError),
    #[error("cannot bind the bundle endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// What `GET /` serves.
#[derive(Clone)]
struct Served {
    bundles: watch::Receiver<Arc<Bundle>>,
    refresh_hint: u64,
}

/// The SPIFFE bundle document for `bundle`, carrying `refresh_hint` seconds.
pub fn document(
    bundle: &Bundle,
    refresh_hint: u64,
) -> Result<String, sigil_proto::bundle::BundleError> {
    let mut b = bundle.clone();
    b.refresh_hint = Some(refresh_hint);
    b.to_spiffe_json()
}

pub fn router(bundles: watch::Receiver<Arc<Bundle>>, refresh_hint: Duration) -> Router {
    Router::new()
        .route("/", get(serve_bundle))
        .with_state(Served {
            bundles,
            refresh_hint: refresh_hint.as_secs().max(1),
        })
}

async fn serve_bundle(State(s): State<Served>) -> Response {
    let bundle = s.bundles.borrow().clone();
    match document(&bundle, s.refresh_hint) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the bundle for the bundle endpoint");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Where each handshake's TLS config comes from.
#[derive(Clone)]
enum Acceptor {
    Spiffe(Arc<ServerTls>),
    Web(TlsAcceptor),
}

impl Acceptor {
    fn current(&self) -> TlsAcceptor {
        match self {
            Self::Web(a) => a.clone(),
            Self::Spiffe(tls) => {
                // The agent API's config offers only h2; this endpoint speaks HTTP/1.1.
                let mut config = (*tls.config()).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                TlsAcceptor::from(Arc::new(config))
            }
        }
    }
}

/// Binds the endpoint (a bad serving certificate or a taken port fails start-up) and returns
/// the future that serves it until `cancel` fires. `limiter` holds the listener's caps.
pub async fn bind(
    config: &BundleEndpointConfig,
    ca: Arc<Ca>,
    limiter: Arc<ConnectionLimiter>,
    cancel: CancellationToken,
) -> Result<impl Future<Output = io::Result<()>> + use<>, EndpointError> {
    let acceptor = match &config.profile {
        ServingProfile::HttpsSpiffe => {
            let tls = Arc::new(ServerTls::new(ca.clone())?);
            let span = tracing::info_span!("task", name = "bundle endpoint SVID refresh");
            let refresh = tls.clone().refresh_forever(cancel.clone());
            tokio::spawn(tracing::Instrument::instrument(refresh, span));
            Acceptor::Spiffe(tls)
        }
        ServingProfile::HttpsWeb {
            cert_file,
            key_file,
        } => Acceptor::Web(tls_acceptor(&TlsFiles {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        })?),
    };
    let bind_error = |source| EndpointError::Bind {
        addr: config.bind,
        source,
    };
    let listener = Listener::bind(config.bind, limiter)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let profile = match config.profile {
        ServingProfile::HttpsSpiffe => "https_spiffe",
        ServingProfile::HttpsWeb { .. } => "https_web",
    };
    tracing::info!(address = %local, profile, "bundle endpoint listening");
    let app = router(ca.subscribe(), config.refresh_hint);
    let tls: TlsSource = Arc::new(move || acceptor.current());
    Ok(serve_http(listener, Some(tls), app, cancel))
}

#[cfg(test)]
mod tests {
    use sigil_proto::TrustDomain;

    use super::*;

    fn bundle(sequence: u64) -> Bundle {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let mut b = Bundle::new(TrustDomain::new("a.test").unwrap());
        b.x509_authorities = vec![cert.der().to_vec()];
        b.sequence = sequence;
        b
    }

    async fn get(app: Router) -> (StatusCode, String, String) {
        use tower::ServiceExt;
        let req = axum::http::Request::get("/")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_current_bundle_with_sequence_and_hint() {
        let first = bundle(3);
        let (tx, rx) = watch::channel(Arc::new(first.clone()));
        let app = router(rx, Duration::from_secs(300));
        let (status, ctype, body) = get(app.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["spiffe_sequence"], 3);
        assert_eq!(json["spiffe_refresh_hint"], 300);
        let parsed = Bundle::from_spiffe_json(first.trust_domain.clone(), &body).unwrap();
        assert_eq!(parsed.x509_authorities, first.x509_authorities);

        // A CA change is served on the next request.
        let next = bundle(4);
        tx.send(Arc::new(next.clone())).unwrap();
        let (_, _, body) = get(app).await;
        let parsed = Bundle::from_spiffe_json(next.trust_domain.clone(), &body).unwrap();
        assert_eq!(parsed.sequence, 4);
        assert_eq!(parsed.x509_authorities, next.x509_authorities);
    }
}
