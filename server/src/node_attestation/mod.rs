//! Server-side node attestation: an agent presents a payload, an attestor turns it into the
//! agent's SPIFFE ID and node selectors.

pub mod join_token;
pub mod k8s_psat;

use std::fmt::Debug;

use futures::future::BoxFuture;
use sigil_proto::{Selector, SpiffeId, SpiffeIdError, TrustDomain};

/// What a successful attestation proves about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationResult {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// Whether the same node may attest again with fresh evidence (PSAT yes, join token no).
    pub can_reattest: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// The payload is malformed; the agent is told why.
    #[error("{0}")]
    InvalidPayload(String),
    /// The evidence does not prove the node's identity; the agent is told why.
    #[error("{0}")]
    Denied(String),
    /// The attestor could not check the evidence with its authority (e.g. the Kubernetes API
    /// refused the server); the agent is told this message, the attestor logged the detail.
    #[error("{0}")]
    Unverifiable(String),
    /// The attestor could not decide (datastore or API failure); details go to the log.
    #[error("attestation could not be completed: {0}")]
    Internal(String),
}

/// A node attestor plugin: payload in; agent ID and selectors out.
pub trait NodeAttestor: Send + Sync + Debug {
    /// The name agents send, e.g. `join_token`.
    fn name(&self) -> &'static str;
    fn attest<'a>(
        &'a self,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<AttestationResult, AttestationError>>;
}

/// `spiffe://<td>/spire/agent/join_token/<token>`, SPIRE's agent ID for join-token agents.
pub fn join_token_agent_id(td: &TrustDomain, token: &str) -> Result<SpiffeId, SpiffeIdError> {
    sigil_proto::spiffe_id::validate_segment(token)?;
    SpiffeId::from_path(td, &format!("/spire/agent/join_token/{token}"))
}
