//! Who is calling: the process bound to the connection ([`super::peer`]), attested into
//! selectors. Every service on the agent's public socket (the Workload API and SDS) identifies
//! its caller here, the same way.

use sigil_proto::Selector;
use tonic::Request;

use super::{Peer, PeerError};
use crate::workload_attestation::{AttestationError, WorkloadAttestor, attest_all};

/// An attested caller.
#[derive(Debug)]
pub struct Caller {
    pub pid: i32,
    pub selectors: Vec<Selector>,
    /// The connection's peer, checked again before each stream update.
    pub peer: Peer,
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The request did not come through [`super::serve`].
    #[error("workload attestation failed: no peer credentials")]
    NoPeerCredentials,
    /// The connection's process is gone or changed (SPIRE's wording, with the reason).
    #[error("could not verify existence of the original caller: {0}")]
    Peer(#[source] PeerError),
    #[error("workload attestation failed")]
    Attestation(#[source] AttestationError),
}

/// The selectors of the process that opened the request's connection.
pub async fn attest<T>(
    request: &Request<T>,
    attestors: &[Box<dyn WorkloadAttestor>],
) -> Result<Caller, CallerError> {
    let peer = request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or(CallerError::NoPeerCredentials)?;
    let pid = peer.pid().map_err(CallerError::Peer)?;
    let pinned = peer.credentials().map_err(CallerError::Peer)?;
    let selectors = attest_all(attestors, pid, pinned).await;
    // Whatever attestation read under the PID was the connecting process's only if that
    // process is still there, unchanged, now (SPIRE checks after attesting, too).
    peer.verify().map_err(CallerError::Peer)?;
    let selectors = selectors.map_err(|e| {
        // The caller only learns that attestation failed; the operator learns why (SPIRE logs
        // "Failed to collect all selectors for PID" the same way).
        tracing::warn!(pid, error = %e, "workload attestation failed");
        CallerError::Attestation(e)
    })?;
    Ok(Caller {
        pid,
        selectors,
        peer,
    })
}
