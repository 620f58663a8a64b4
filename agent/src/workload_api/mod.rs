//! The SPIFFE Workload API on a Unix socket (digest §5), with Envoy's SDS beside it
//! ([`crate::sds`]) as in SPIRE. Each call must carry the
//! `workload.spiffe.io: true` header; the caller is identified out of band by the PID in the
//! socket's peer credentials, attested into selectors, and served the identities of the
//! matching registration entries from the latest cache snapshot. Streams push a new message
//! whenever a snapshot change alters what the caller would receive.

pub mod client;
mod handler;
pub(crate) mod issued;
pub mod jwt;
mod responses;
pub(crate) mod stream;

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tracing::info;

use crate::cache::{JwtSvidCache, JwtSvidMinter, Snapshot};
use crate::endpoints::{self, ServeConfig};
use crate::sds::{self, SdsConfig};
use crate::workload_attestation::WorkloadAttestor;
use handler::{Handler, HandlerConfig};

pub use handler::SECURITY_HEADER;
pub(crate) use handler::{RequestError, error_chain};

/// Where the agent listens, and its CLI dials, unless configured otherwise: SPIRE's default,
/// which SPIFFE clients and their tests hard-code.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-agent/public/api.sock";

/// Largest response we send: a workload with hundreds of identities gets well under 1 MiB
/// per message, so 16 MiB leaves room without letting one stream hog memory.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Largest request we accept: requests are tiny (a JWT to validate is the biggest, a few KiB),
/// and every stream may hold one request's worth while it arrives, so this bounds memory too.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why the Workload API could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    #[error("creating socket directory {path}: {source}")]
    SocketDir { path: PathBuf, source: io::Error },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("another process is already serving on {0}")]
    InUse(PathBuf),
    #[error("binding {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("serving the Workload API: {0}")]
    Serve(#[source] io::Error),
}

/// Workload API settings from the agent config.
#[derive(Clone, Debug)]
pub struct WorkloadApiConfig {
    pub socket_path: PathBuf,
    /// SPIRE's `allow_unauthenticated_verifiers`: callers with no identity may fetch our own
    /// trust domain's bundles.
    pub allow_unauthenticated_verifiers: bool,
    /// SPIRE's `allowed_foreign_jwt_claims`: claims returned by ValidateJWTSVID for tokens of
    /// federated trust domains, besides `sub`, `exp` and `aud`.
    pub allowed_foreign_jwt_claims: Vec<String>,
    /// How long FetchX509SVID waits for a matching entry's first SVID to be minted before
    /// answering `Unavailable` (a workload may start together with its entry).
    pub svid_wait: Duration,
    /// Connection and stream limits of the socket.
    pub serve: ServeConfig,
    /// Envoy SDS on the same socket (SPIRE's `sds` block); `None`: SPIRE's
    /// `disable_sds_api`.
    pub sds: Option<SdsConfig>,
    /// `false`: SPIRE's `disable_workload_api`, the socket serves SDS only.
    pub workload_api: bool,
}

impl Default for WorkloadApiConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
            allow_unauthenticated_verifiers: false,
            allowed_foreign_jwt_claims: Vec::new(),
            svid_wait: Duration::from_secs(10),
            serve: ServeConfig::default(),
            sds: Some(SdsConfig::default()),
            workload_api: true,
        }
    }
}

/// Creates the socket's directory (0755: only the agent writes there) if missing, removes a
/// stale socket left by a previous run, and binds a world-connectable (0666) socket: any
/// local process may ask, attestation decides what it gets.
pub fn bind(socket_path: &Path) -> Result<UnixListener, WorkloadApiError> {
    // An existing directory is left as it is (it may be /tmp itself).
    let missing_dir = socket_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists());
    if let Some(dir) = missing_dir {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| WorkloadApiError::SocketDir {
                path: dir.into(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(socket_path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket_path).is_ok() {
                return Err(WorkloadApiError::InUse(socket_path.into()));
            }
            std::fs::remove_file(socket_path).map_err(|source| WorkloadApiError::Bind {
                path: socket_path.into(),
                source,
            })?;
        }
        Ok(_) => return Err(WorkloadApiError::NotASocket(socket_path.into())),
        Err(_) => {}
    }
    let bind_err = |source| WorkloadApiError::Bind {
        path: socket_path.into(),
        source,
    };
    let listener = UnixListener::bind(socket_path).map_err(bind_err)?;
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o666))
        .map_err(bind_err)?;
    Ok(listener)
}

/// Serves the Workload API on `config.socket_path` until `cancel` fires; open streams end
/// with `Unavailable` then, and the socket file is removed.
pub async fn serve(
    config: WorkloadApiConfig,
    cache_rx: watch::Receiver<Arc<Snapshot>>,
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    minter: Arc<dyn JwtSvidMinter>,
    cancel: CancellationToken,
) -> Result<(), WorkloadApiError> {
    let listener = bind(&config.socket_path)?;
    serve_listener(listener, config, cache_rx, attestors, minter, cancel).await
}

/// [`serve`] on a listener already made by [`bind`] (lets a caller know the socket is ready
/// before serving starts).
pub async fn serve_listener(
    listener: UnixListener,
    config: WorkloadApiConfig,
    cache_rx: watch::Receiver<Arc<Snapshot>>,
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    minter: Arc<dyn JwtSvidMinter>,
    cancel: CancellationToken,
) -> Result<(), WorkloadApiError> {
    let mut routes = Routes::default();
    if let Some(sds_config) = config.sds.clone() {
        routes = routes.add_service(sds::service(
            sds_config,
            cache_rx.clone(),
            attestors.clone(),
            config.svid_wait,
            cancel.clone(),
        ));
    }
    if config.workload_api {
        let handler = Handler {
            cache_rx,
            attestors,
            jwt_svids: JwtSvidCache::new(minter),
            config: Arc::new(HandlerConfig {
                allow_unauthenticated_verifiers: config.allow_unauthenticated_verifiers,
                allowed_foreign_jwt_claims: config.allowed_foreign_jwt_claims.clone(),
                svid_wait: config.svid_wait,
            }),
            cancel: cancel.clone(),
            x509_responses: Arc::default(),
        };
        routes = routes.add_service(
            SpiffeWorkloadApiServer::new(handler)
                .max_encoding_message_size(MAX_RESPONSE_BYTES)
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    }
    info!(
        socket = %config.socket_path.display(),
        workload_api = config.workload_api,
        sds = config.sds.is_some(),
        "Workload API listening"
    );
    let result = endpoints::serve(listener, routes, config.serve, cancel).await;
    // Best effort: a leftover socket is removed by the next start anyway.
    let _ = std::fs::remove_file(&config.socket_path);
    info!("Workload API stopped");
    result.map_err(WorkloadApiError::Serve)
}

#[cfg(test)]
mod pod_tests;
#[cfg(test)]
pub(crate) mod tests;
