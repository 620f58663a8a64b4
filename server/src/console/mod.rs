//! The web console: a read-only view of the server for operators, served over HTTP(S) from
//! the `server { console { ... } }` block (off when absent).
//!
//! - **Auth.** Every request, whatever its path or method, needs the token of `token_file`, or
//!   over TLS a client X.509-SVID of the trust domain whose SPIFFE ID is in `admin_ids`
//!   ([`auth`], [`tls`]); without either: 401 with an empty body.
//! - **Pages.** Server-rendered HTML ([`pages`]): overview, entries, agents, activity. The
//!   live parts (the open entries page, the activity charts) poll small JSON endpoints from
//!   one embedded script; CSS and script are served by the console itself ([`assets`]), never
//!   from a CDN, under a strict Content-Security-Policy.
//! - **Read-only.** `GET` (and `HEAD`) only; any other method is 405.
//! - **No secret.** No page or endpoint shows a private key, a join token or a JWT: they read
//!   entries, nodes, authorities' IDs and dates, bundles' sequence numbers and metrics.

pub mod assets;
pub mod auth;
pub mod config;
pub mod pages;
pub mod samples;
pub mod tls;

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use sigil_common::fs_checks::FsCheckError;
use sigil_common::listener::{ConnectionLimiter, Listener, serve_http};
use sigil_proto::TrustDomain;
use tokio_util::sync::CancellationToken;

pub use self::auth::{Credentials, Token};
pub use self::config::ConsoleConfig;
use self::samples::Samples;
use self::tls::AdminTls;
use crate::activity::Activity;
use crate::api::tls::TlsError;
use crate::ca::Ca;
use crate::datastore::Datastore;
use crate::federation::FederatedBundles;
use crate::federation::status::PeerStatuses;
use crate::oidc_discovery::{OidcError, tls_source};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    #[error("console token_file: {0}")]
    TokenFile(#[from] FsCheckError),
    #[error("console token_file {path}: {message}")]
    Token { path: String, message: String },
    #[error("console TLS: {0}")]
    Tls(#[from] OidcError),
    #[error("console TLS for client SVIDs: {0}")]
    ClientSvids(#[from] TlsError),
    #[error("cannot bind the console on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

/// What the pages read: shared handles to the server's components.
#[derive(Clone, Debug)]
pub struct Sources {
    pub trust_domain: TrustDomain,
    pub datastore: Datastore,
    pub ca: Arc<Ca>,
    pub federation: Arc<FederatedBundles>,
    /// The poll status of every federation relationship, the config file's and the
    /// datastore's.
    pub peer_statuses: Arc<PeerStatuses>,
    pub activity: Arc<Activity>,
    pub samples: Arc<Samples>,
}

/// Binds the console (the token file is read and checked first) and returns the server to
/// run until `cancel` fires. With `admin_ids`, its TLS asks clients for an X.509-SVID.
pub async fn bind(
    config: &ConsoleConfig,
    sources: Sources,
    limiter: Arc<ConnectionLimiter>,
    cancel: CancellationToken,
) -> Result<impl Future<Output = io::Result<()>> + use<>, ConsoleError> {
    let token = Token::load(&config.token_file)?;
    let tls = match &config.tls {
        Some(files) if !config.admin_ids.is_empty() => {
            Some(AdminTls::new(files, sources.ca.clone())?.source())
        }
        files => tls_source(files.as_ref())?,
    };
    let credentials = Credentials::new(token, config.admin_ids.clone());
    let bind_error = |source| ConsoleError::Bind {
        addr: config.bind,
        source,
    };
    let listener = Listener::bind(config.bind, limiter)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    tracing::info!(
        address = %local,
        tls = tls.is_some(),
        admin_ids = config.admin_ids.len(),
        "web console listening"
    );
    Ok(serve_http(
        listener,
        tls,
        router(sources, credentials),
        cancel,
    ))
}

/// Every route, behind the credentials check and the security headers.
pub fn router(sources: Sources, credentials: Credentials) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/entries", get(pages::entries::page))
        .route("/entries/rows", get(pages::entries::rows))
        .route("/agents", get(pages::agents::page))
        .route("/activity", get(pages::activity::page))
        .route("/api/revision", get(pages::entries::revision))
        .route("/api/samples", get(samples::json))
        .route(assets::CSS_PATH, get(assets::css))
        .route(assets::JS_PATH, get(assets::js))
        .route(assets::ICON_PATH, get(assets::icon))
        // Browsers ask for it whatever the page says.
        .route("/favicon.ico", get(assets::icon))
        .with_state(Arc::new(sources))
        .layer(middleware::from_fn_with_state(
            Arc::new(credentials),
            auth::require_credentials,
        ))
        .layer(middleware::from_fn(security_headers))
}

/// Sent with every response, a 401 included.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}
