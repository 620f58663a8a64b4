//! The `DelegatedIdentity` service with SPIRE's authorization
//! (`pkg/agent/api/delegatedidentity/v1`): the caller is attested like a workload and served
//! only while one of its own entries names an authorized delegate (checked on every call and
//! again before every stream update); it then names the workload it acts for by selectors or by
//! PID, and gets what that workload would get from the entries this agent holds.

use std::collections::BTreeSet;
use std::sync::Arc;

use sigil_common::time::unix_now;
use sigil_proto::selector::SelectorError;
use sigil_proto::spire::api::agent::delegatedidentity::v1::delegated_identity_server::DelegatedIdentity;
use sigil_proto::spire::api::agent::delegatedidentity::v1::{
    FetchJwtsviDsRequest, FetchJwtsviDsResponse, SubscribeToJwtBundlesRequest,
    SubscribeToJwtBundlesResponse, SubscribeToX509BundlesRequest, SubscribeToX509BundlesResponse,
    SubscribeToX509sviDsRequest, SubscribeToX509sviDsResponse,
};
use sigil_proto::spire::api::types;
use sigil_proto::{Selector, SpiffeId};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use super::responses::{jwt_bundles, jwt_svid, x509_bundles, x509_svids};
use crate::cache::{Identity, JwtSvidCache, Snapshot, pod_uid};
use crate::endpoints::{BoundProcess, Caller, LatestStream, PeerError, caller};
use crate::taint::TaintedAuthorities;
use crate::workload_api::stream::{self, StreamSource};
use crate::workload_api::{RequestError, error_chain};
use crate::workload_attestation::{AttestationError, WorkloadAttestor, attest_all};

/// Why a request failed. Converted to a gRPC status in exactly one place
/// (`From<DelegatedError> for Status`); the caller sees the short message, the log the detail.
#[derive(Debug, thiserror::Error)]
pub(super) enum DelegatedError {
    /// What the Workload API would answer: the caller's own attestation, no identity at all,
    /// stream limits, SVIDs not ready, JWT minting.
    #[error("{0}")]
    Workload(#[from] RequestError),
    #[error("caller not configured as an authorized delegate")]
    NotADelegate,
    #[error("must provide either selectors or non-zero PID, but not both")]
    BadTarget,
    #[error("could not parse provided selectors")]
    BadSelectors(#[source] SelectorError),
    /// The PID names no process, or the process exited or changed while it was attested.
    #[error("workload attestation failed: no process with PID {pid}, or it changed")]
    TargetGone {
        pid: i32,
        #[source]
        source: PeerError,
    },
    #[error("workload attestation failed")]
    TargetAttestation(#[source] AttestationError),
}

impl From<DelegatedError> for Status {
    fn from(err: DelegatedError) -> Self {
        use DelegatedError as E;
        let message = err.to_string();
        match err {
            E::Workload(e) => e.into(),
            E::NotADelegate => Self::permission_denied(message),
            E::BadTarget | E::BadSelectors(_) => Self::invalid_argument(message),
            E::TargetGone { .. } | E::TargetAttestation(_) => Self::unavailable(message),
        }
    }
}

pub(super) struct Handler {
    pub source: StreamSource,
    pub attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    pub jwt_svids: JwtSvidCache,
    /// `authorized_delegates`.
    pub delegates: Arc<BTreeSet<SpiffeId>>,
}

/// Whether a caller with `selectors` may use the API under `snapshot`: one of the entries it
/// matches must name an authorized delegate (SPIRE's `isCallerAuthorized`).
pub(super) fn authorize(
    snapshot: &Snapshot,
    selectors: &[Selector],
    delegates: &BTreeSet<SpiffeId>,
) -> Result<(), DelegatedError> {
    let ids = own_ids(snapshot, selectors);
    if ids.is_empty() {
        return Err(RequestError::NoIdentity.into());
    }
    if ids.iter().any(|id| delegates.contains(id)) {
        Ok(())
    } else {
        Err(DelegatedError::NotADelegate)
    }
}

/// The SPIFFE IDs of the entries `selectors` match, template entries under their rendered ID.
fn own_ids(snapshot: &Snapshot, selectors: &[Selector]) -> Vec<SpiffeId> {
    snapshot
        .matching(selectors)
        .into_iter()
        .filter_map(|i| i.entry.spiffe_id.fixed().cloned())
        .chain(
            snapshot
                .matching_templates(selectors)
                .into_iter()
                .map(|(_, id)| id),
        )
        .collect()
}

/// The identities a workload with `selectors` is issued JWT-SVIDs for: its fixed entries under
/// their own ID, then its template entries under the rendered ID; never SPIRE's admin or
/// downstream entries, which SPIRE keeps from delegates.
fn jwt_identities<'a>(
    snapshot: &'a Snapshot,
    selectors: &[Selector],
) -> Vec<(&'a Arc<Identity>, SpiffeId)> {
    snapshot
        .matching(selectors)
        .into_iter()
        .filter_map(|i| Some((i, i.entry.spiffe_id.fixed()?.clone())))
        .chain(snapshot.matching_templates(selectors))
        .filter(|(i, _)| !i.entry.admin && !i.entry.downstream)
        .collect()
}

impl Handler {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.source.cache_rx.borrow().clone()
    }

    /// Attests the caller and checks that it is an authorized delegate, logging why not.
    async fn delegate<T>(&self, request: &Request<T>, method: &str) -> Result<Caller, Status> {
        let caller = caller::attest(request, &self.attestors)
            .await
            .map_err(|e| {
                let err = DelegatedError::from(RequestError::from(e));
                debug!(method, error = %error_chain(&err), "delegated identity request refused");
                Status::from(err)
            })?;
        if let Err(err) = authorize(&self.snapshot(), &caller.selectors, &self.delegates) {
            // An operator may want to know: some local process knocks on the admin socket.
            warn!(
                method,
                pid = caller.pid,
                selectors = ?caller.selectors,
                error = %err,
                "delegated identity request refused"
            );
            return Err(err.into());
        }
        debug!(method, pid = caller.pid, "caller authorized as a delegate");
        Ok(caller)
    }

    /// The selectors of the workload the delegate acts for: those it gives (trusted as
    /// attested, as in SPIRE), or those of the process it names, attested here with the
    /// agent's workload attestors. Exactly one of the two.
    async fn target(
        &self,
        pid: i32,
        selectors: &[types::Selector],
        method: &str,
    ) -> Result<Vec<Selector>, Status> {
        self.target_selectors(pid, selectors).await.map_err(|err| {
            debug!(method, target_pid = pid, error = %error_chain(&err), "delegated identity request refused");
            err.into()
        })
    }

    async fn target_selectors(
        &self,
        pid: i32,
        selectors: &[types::Selector],
    ) -> Result<Vec<Selector>, DelegatedError> {
        match (selectors.is_empty(), pid) {
            (false, 0) => {
                let mut parsed = selectors
                    .iter()
                    .map(|s| Selector::from_parts(&s.r#type, &s.value))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(DelegatedError::BadSelectors)?;
                sigil_proto::selector::canonicalize(&mut parsed);
                Ok(parsed)
            }
            (true, pid) if pid != 0 => {
                let gone = |source| DelegatedError::TargetGone { pid, source };
                // Pinned first, checked after: what attestation read under the PID belonged to
                // the process the PID named when the call came in.
                let process = BoundProcess::open(pid).map_err(gone)?;
                let attested = attest_all(&self.attestors, pid, process.credentials()).await;
                process.verify().map_err(gone)?;
                attested.map_err(DelegatedError::TargetAttestation)
            }
            _ => Err(DelegatedError::BadTarget),
        }
    }

    /// A bundle stream for an authorized delegate: `build` makes each message from a
    /// snapshot; the delegate's authorization is checked again on each change.
    fn bundle_stream<T, F>(
        &self,
        delegate: Caller,
        method: &'static str,
        build: F,
    ) -> Result<LatestStream<T>, Status>
    where
        T: Clone + PartialEq + Send + Sync + 'static,
        F: Fn(&Snapshot) -> Result<T, DelegatedError> + Send + 'static,
    {
        let delegates = self.delegates.clone();
        stream::spawn(
            &self.source,
            delegate,
            method,
            move |snapshot: &Arc<Snapshot>, selectors: &[Selector]| {
                authorize(snapshot, selectors, &delegates)?;
                Ok::<_, DelegatedError>(Some(Arc::new(build(snapshot)?)))
            },
        )
        .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl DelegatedIdentity for Handler {
    type SubscribeToX509SVIDsStream = LatestStream<SubscribeToX509sviDsResponse>;
    type SubscribeToX509BundlesStream = LatestStream<SubscribeToX509BundlesResponse>;
    type SubscribeToJWTBundlesStream = LatestStream<SubscribeToJwtBundlesResponse>;

    async fn subscribe_to_x509svi_ds(
        &self,
        request: Request<SubscribeToX509sviDsRequest>,
    ) -> Result<Response<Self::SubscribeToX509SVIDsStream>, Status> {
        const METHOD: &str = "SubscribeToX509SVIDs";
        let delegate = self.delegate(&request, METHOD).await?;
        let req = request.get_ref();
        let target = self.target(req.pid, &req.selectors, METHOD).await?;
        debug!(pid = delegate.pid, target_pid = req.pid, selectors = ?target, "{METHOD}");
        // The stream is the target's; the delegate's own selectors authorize each update.
        let delegate_selectors = delegate.selectors;
        let stream_caller = Caller {
            pid: delegate.pid,
            selectors: target,
            peer: delegate.peer,
        };
        let delegates = self.delegates.clone();
        let build = move |snapshot: &Arc<Snapshot>, target: &[Selector]| {
            authorize(snapshot, &delegate_selectors, &delegates)?;
            Ok::<_, DelegatedError>(x509_svids(snapshot, target)?.map(Arc::new))
        };
        let stream =
            stream::spawn(&self.source, stream_caller, METHOD, build).map_err(Status::from)?;
        Ok(Response::new(stream))
    }

    async fn subscribe_to_x509_bundles(
        &self,
        request: Request<SubscribeToX509BundlesRequest>,
    ) -> Result<Response<Self::SubscribeToX509BundlesStream>, Status> {
        const METHOD: &str = "SubscribeToX509Bundles";
        let delegate = self.delegate(&request, METHOD).await?;
        let stream = self.bundle_stream(delegate, METHOD, |snapshot| Ok(x509_bundles(snapshot)))?;
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvi_ds(
        &self,
        request: Request<FetchJwtsviDsRequest>,
    ) -> Result<Response<FetchJwtsviDsResponse>, Status> {
        const METHOD: &str = "FetchJWTSVIDs";
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(DelegatedError::from(RequestError::MissingAudience).into());
        }
        let delegate = self.delegate(&request, METHOD).await?;
        let target = self.target(req.pid, &req.selectors, METHOD).await?;
        let snapshot = self.snapshot();
        let now = unix_now();
        // The server checks an entry that names a pod against the workload's pod.
        let pod = pod_uid(&target);
        self.jwt_svids
            .drop_tainted(&TaintedAuthorities::from_bundle(&snapshot.bundle));
        let mut svids = Vec::new();
        for (identity, spiffe_id) in jwt_identities(&snapshot, &target) {
            let token = self
                .jwt_svids
                .fetch(&identity.entry, &spiffe_id, pod, &req.audience, now)
                .await
                .map_err(|e| {
                    debug!(pid = delegate.pid, %spiffe_id, error = %e, "JWT-SVID mint failed");
                    Status::from(DelegatedError::from(RequestError::from(e)))
                })?;
            debug!(pid = delegate.pid, %spiffe_id, "{METHOD}");
            svids.push(jwt_svid(token, &spiffe_id, &identity.entry.hint));
        }
        if svids.is_empty() {
            debug!(pid = delegate.pid, selectors = ?target, "{METHOD}: no identity issued");
            return Err(DelegatedError::from(RequestError::NoIdentity).into());
        }
        Ok(Response::new(FetchJwtsviDsResponse { svids }))
    }

    async fn subscribe_to_jwt_bundles(
        &self,
        request: Request<SubscribeToJwtBundlesRequest>,
    ) -> Result<Response<Self::SubscribeToJWTBundlesStream>, Status> {
        const METHOD: &str = "SubscribeToJWTBundles";
        let delegate = self.delegate(&request, METHOD).await?;
        let stream = self.bundle_stream(delegate, METHOD, jwt_bundles)?;
        Ok(Response::new(stream))
    }
}
