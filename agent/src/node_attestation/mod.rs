//! Agent-side node attestation: an attestor produces the payload that proves this node to the
//! server; [`attest`] sends it with a CSR for a fresh agent key and returns the agent's
//! X509-SVID and the trust bundle.

pub mod join_token;
pub mod k8s_psat;

use std::fmt::Debug;

use futures::future::BoxFuture;
use sigil_proto::Bundle;
use sigil_proto::sigil::agent::v1::AttestAgentRequest;
use zeroize::Zeroizing;

pub use join_token::JoinTokenAttestor;
pub use k8s_psat::K8sPsatAttestor;

use crate::rotation::{CsrError, new_key_and_csr};
use crate::server_client::ServerConnection;
use crate::svid_store::{AgentSvid, SvidStoreError};

/// Why node attestation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeAttestationError {
    #[error("reading the attestation payload: {0}")]
    Payload(String),
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The server refused or could not be reached; the status says which.
    #[error("the server refused attestation: {} ({:?})", .0.message(), .0.code())]
    Rpc(tonic::Status),
    #[error("the server returned no bundle")]
    NoBundle,
    #[error("the server returned an invalid bundle: {0}")]
    InvalidBundle(String),
    #[error(transparent)]
    InvalidSvid(#[from] SvidStoreError),
}

/// Produces the node attestation payload (the join token; a PSAT).
pub trait NodeAttestor: Send + Sync + Debug {
    /// The attestor name the server knows, e.g. `join_token`.
    fn attestation_type(&self) -> &'static str;
    /// The payload; secret, so it is wiped after use.
    fn payload(&self) -> BoxFuture<'_, Result<Zeroizing<Vec<u8>>, NodeAttestationError>>;
}

/// Attests this node: a new P-256 key, its CSR and the attestor's payload go to `AttestAgent`.
pub async fn attest(
    connection: &ServerConnection,
    attestor: &dyn NodeAttestor,
) -> Result<(AgentSvid, Bundle), NodeAttestationError> {
    let payload = attestor.payload().await?;
    let (key, csr) = new_key_and_csr()?;
    let request = AttestAgentRequest {
        attestation_type: attestor.attestation_type().into(),
        payload: payload.to_vec(),
        csr,
    };
    let response = connection
        .client()
        .attest_agent(request)
        .await
        .map_err(NodeAttestationError::Rpc)?
        .into_inner();
    let bundle = response
        .bundle
        .as_ref()
        .ok_or(NodeAttestationError::NoBundle)?;
    let bundle =
        Bundle::try_from(bundle).map_err(|e| NodeAttestationError::InvalidBundle(e.to_string()))?;
    let svid = AgentSvid::new(response.svid_chain, key)?;
    Ok((svid, bundle))
}
