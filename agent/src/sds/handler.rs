//! The `SecretDiscoveryService`: each call's caller attested like a Workload API caller (but
//! without the `workload.spiffe.io` header, which SPIRE requires of Workload API calls only:
//! Envoy does not send it), then answered from the latest cache snapshot.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use ring::digest;
use sigil_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sigil_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::config::SdsConfig;
use super::resources::{resources, secret_type_url};
use super::stream::{StreamState, check_type_url, validation};
use super::view::WorkloadView;
use crate::cache::Snapshot;
use crate::endpoints::{Caller, LatestStream, caller};
use crate::workload_api::RequestError;
use crate::workload_attestation::WorkloadAttestor;

pub(crate) struct Handler {
    pub cache_rx: watch::Receiver<Arc<Snapshot>>,
    pub attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    pub config: Arc<SdsConfig>,
    /// How long FetchSecrets waits for a matching entry's first SVID.
    pub svid_wait: Duration,
    pub cancel: CancellationToken,
}

impl Handler {
    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Caller, Status> {
        caller::attest(request, &self.attestors)
            .await
            .map_err(|err| {
                let err = RequestError::from(err);
                debug!(method, error = %err, "SDS request refused");
                err.into()
            })
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Handler {
    type DeltaSecretsStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;
    type StreamSecretsStream = LatestStream<DiscoveryResponse>;

    /// SPIRE answers the incremental protocol with `Unimplemented`; Envoy then uses
    /// StreamSecrets.
    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("Method is not implemented"))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let caller = self.caller(&request, "StreamSecrets").await?;
        let (publisher, stream) = caller
            .peer
            .open_stream()
            .map_err(|e| Status::from(RequestError::TooManyStreams(e)))?;
        let mut requests = request.into_inner();
        let mut cache_rx = self.cache_rx.clone();
        let config = self.config.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let Caller {
                pid,
                selectors,
                peer,
            } = caller;
            let mut state = StreamState::default();
            let mut view: Option<Arc<WorkloadView>> = None;
            let mut snapshot_changed = true;
            let end: Option<Status> = loop {
                let mut due = false;
                if snapshot_changed {
                    snapshot_changed = false;
                    let snapshot = cache_rx.borrow_and_update().clone();
                    match WorkloadView::build(&snapshot, &selectors) {
                        Err(err) => break Some(err.into()),
                        Ok(Some(new)) if view.as_deref() != Some(&*new) => {
                            view = Some(new);
                            due = state.on_new_view();
                        }
                        Ok(_) => {}
                    }
                } else {
                    tokio::select! {
                        changed = cache_rx.changed() => {
                            if changed.is_err() {
                                break Some(RequestError::ShuttingDown.into());
                            }
                            snapshot_changed = true;
                            continue;
                        }
                        next = requests.message() => match next {
                            Ok(Some(request)) => match state.on_request(request) {
                                Ok(answer) => due = answer,
                                Err(status) => break Some(status),
                            },
                            // The client closed its side or went away.
                            Ok(None) => break None,
                            Err(status) => {
                                debug!(pid, error = %status, "SDS stream read failed");
                                break None;
                            }
                        },
                        _ = publisher.closed() => break None,
                        _ = cancel.cancelled() => break Some(RequestError::ShuttingDown.into()),
                    }
                }
                let Some(current) = view.as_deref().filter(|_| due) else {
                    continue;
                };
                // Each push is for the process that opened the connection, still there.
                if let Err(e) = peer.verify() {
                    break Some(RequestError::Peer(e).into());
                }
                let response = match state.response(current, &config) {
                    Ok(response) => response,
                    Err(status) => break Some(status),
                };
                debug!(
                    pid,
                    version = %response.version_info,
                    resources = response.resources.len(),
                    "SDS stream update"
                );
                if publisher.publish(Arc::new(response)).is_err() {
                    break Some(RequestError::SlowReader(publisher.slow_after()).into());
                }
            };
            if let Some(status) = end {
                debug!(pid, error = %status, "SDS stream ended");
                publisher.fail(status);
            }
        });
        Ok(Response::new(stream))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        check_type_url(&request.get_ref().type_url)?;
        let caller = self.caller(&request, "FetchSecrets").await?;
        let view = self.wait_for_view(&caller).await?;
        let req = request.into_inner();
        let validation = validation(req.node.as_ref(), &self.config);
        let resources = resources(&view, &req.resource_names, &self.config, validation)?;
        debug!(
            pid = caller.pid,
            resources = resources.len(),
            "FetchSecrets"
        );
        Ok(Response::new(DiscoveryResponse {
            version_info: content_version(&resources),
            resources,
            type_url: secret_type_url(),
            nonce: String::new(),
        }))
    }
}

impl Handler {
    /// The caller's view, waiting up to `svid_wait` for SVIDs still being minted.
    async fn wait_for_view(&self, caller: &Caller) -> Result<Arc<WorkloadView>, Status> {
        let mut cache_rx = self.cache_rx.clone();
        let deadline = Instant::now() + self.svid_wait;
        loop {
            let snapshot = cache_rx.borrow_and_update().clone();
            if let Some(view) = WorkloadView::build(&snapshot, &caller.selectors)? {
                return Ok(view);
            }
            tokio::select! {
                changed = cache_rx.changed() => {
                    if changed.is_err() {
                        return Err(RequestError::ShuttingDown.into());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(RequestError::SvidNotReady.into());
                }
            }
        }
    }
}

/// FetchSecrets' `version_info`: a digest of the resources, so that a poller can tell
/// whether anything changed (SPIRE sends none).
fn content_version(resources: &[prost_types::Any]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for any in resources {
        ctx.update(any.type_url.as_bytes());
        ctx.update(&(any.value.len() as u64).to_be_bytes());
        ctx.update(&any.value);
    }
    hex::encode(&ctx.finish().as_ref()[..8])
}
