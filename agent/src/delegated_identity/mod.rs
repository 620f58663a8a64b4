//! SPIRE's Delegated Identity API (`spire.api.agent.delegatedidentity.v1`) on the agent's
//! admin socket (`admin_socket_path`): a trusted delegate (Cilium's mutual authentication,
//! Istio's ztunnel), whose own entry's SPIFFE ID is listed in `authorized_delegates`, obtains
//! the X509-SVIDs, JWT-SVIDs and bundles of the workloads it acts for, named by selectors or
//! by PID.
//!
//! - [`config`]: the two config keys and SPIRE's rules on them;
//! - `handler`: the gRPC service and its authorization;
//! - `responses`: its messages, from a cache snapshot.
//!
//! The socket is served through the same accept loop as the Workload API
//! ([`crate::endpoints`]): each caller is bound to its process and attested with the agent's
//! workload attestors; streams follow the cache as the Workload API's do
//! ([`crate::workload_api::stream`]).

mod config;
mod handler;
mod responses;

use std::path::Path;
use std::sync::Arc;

use sigil_common::fs_checks::FsCheckError;
use sigil_common::logging::LogControl;
use sigil_common::private_socket;
use sigil_proto::spire::api::agent::delegatedidentity::v1::delegated_identity_server::DelegatedIdentityServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tracing::info;

pub use config::DelegatedIdentityConfig;

use crate::cache::{JwtSvidCache, JwtSvidMinter, Snapshot};
use crate::endpoints::{self, ServeConfig};
use crate::workload_api::stream::StreamSource;
use crate::workload_api::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, WorkloadApiConfig};
use crate::workload_attestation::WorkloadAttestor;

/// Binds the admin socket as the server binds its own ([`private_socket::bind`]): in a 0700
/// directory no other user controls, 0600, so that only the agent's user (and root) may
/// connect; a socket file is replaced only when nothing answers on it.
pub fn bind(socket_path: &Path) -> Result<UnixListener, FsCheckError> {
    private_socket::bind(socket_path, "admin socket directory")
}

/// Serves the Delegated Identity API and SPIRE's agent logger API ([`crate::logger_api`], the
/// agent's log level through `log_control`) on `listener` (from [`bind`]) until `cancel` fires;
/// open streams end with `Unavailable` then, and the socket file is removed.
pub async fn serve_listener(
    listener: UnixListener,
    config: DelegatedIdentityConfig,
    cache_rx: watch::Receiver<Arc<Snapshot>>,
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    minter: Arc<dyn JwtSvidMinter>,
    log_control: LogControl,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let handler = handler::Handler {
        source: StreamSource {
            cache_rx,
            cancel: cancel.clone(),
            svid_wait: WorkloadApiConfig::default().svid_wait,
        },
        attestors,
        jwt_svids: JwtSvidCache::new(minter),
        delegates: Arc::new(config.authorized_delegates.clone()),
    };
    let routes = Routes::default()
        .add_service(
            DelegatedIdentityServer::new(handler)
                .max_encoding_message_size(MAX_RESPONSE_BYTES)
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(crate::logger_api::service(log_control));
    info!(
        socket = %config.socket_path.display(),
        authorized_delegates = config.authorized_delegates.len(),
        "Delegated Identity API listening"
    );
    let result = endpoints::serve(listener, routes, ServeConfig::default(), cancel).await;
    // Best effort: a leftover socket is removed by the next start anyway.
    let _ = std::fs::remove_file(&config.socket_path);
    info!("Delegated Identity API stopped");
    result
}

#[cfg(test)]
mod tests;
