//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket, as SPIRE's agent
//! serves it (`pkg/agent/endpoints/sdsv3`, `doc/spire_agent.md`): Envoy, Istio's proxies and
//! other xDS clients take their certificates and trust bundles from the agent as `Secret`
//! resources named `default` (the caller's default X509-SVID), `ROOTCA` (our bundle), `ALL`
//! (every bundle the caller may use, for Envoy's SPIFFE validator), a SPIFFE ID (that SVID) or
//! a trust domain ID (that bundle), and get a new response whenever one of them changes.
//!
//! - [`view`]: what a caller is served, from one cache snapshot;
//! - [`resources`]: the requested resources, built from a view;
//! - [`stream`]: the xDS protocol of one stream (versions, nonces, ACK and NACK);
//! - [`handler`]: the gRPC service, attesting each caller.

mod config;
mod handler;
mod resources;
mod stream;
mod view;

use std::sync::Arc;
use std::time::Duration;

use sigil_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::SdsConfig;

use crate::cache::Snapshot;
use crate::workload_api::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use crate::workload_attestation::WorkloadAttestor;

/// The SDS service for the Workload API socket's router.
pub(crate) fn service(
    config: SdsConfig,
    cache_rx: watch::Receiver<Arc<Snapshot>>,
    attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    svid_wait: Duration,
    cancel: CancellationToken,
) -> SecretDiscoveryServiceServer<handler::Handler> {
    SecretDiscoveryServiceServer::new(handler::Handler {
        cache_rx,
        attestors,
        config: Arc::new(config),
        svid_wait,
        cancel,
    })
    .max_encoding_message_size(MAX_RESPONSE_BYTES)
    .max_decoding_message_size(MAX_REQUEST_BYTES)
}

#[cfg(test)]
mod tests;
