//! Agent-side node attestation: an attestor produces the payload that proves this node to the
//! server; [`attest`] sends it with a CSR for a fresh agent key and returns the agent's
//! X509-SVID and the trust bundle.
//!
//! An attestor also says whether attesting again can work ([`NodeAttestor::can_attest`]): a
//! `k8s_psat` token is re-read and re-issued by the kubelet, so always; a join token is single
//! use, so only until the server has accepted or refused it once.

pub mod join_token;
pub mod k8s_psat;

use std::fmt::Debug;

use futures::future::BoxFuture;
use sigil_proto::Bundle;
use sigil_proto::sigil::agent::v1::AttestAgentRequest;
use zeroize::Zeroizing;

pub use join_token::{JoinToken, JoinTokenAttestor};
pub use k8s_psat::{K8sPsatAttestor, K8sPsatConfig};

use crate::csr::{CsrError, KeyType, new_key_and_csr};
use crate::server_client::{ServerConnection, is_connection_failure};
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
    /// Whether another attestation may be accepted. Default: always.
    fn can_attest(&self) -> bool {
        true
    }
    /// Told once the server has answered an attestation with this attestor's payload:
    /// `accepted`, or refused it. Not told when the server could not be reached.
    fn answered(&self, _accepted: bool) {}
}

/// Whether a failed `AttestAgent` call means the server never judged the payload (it could not
/// be reached, or asked to come back later), as opposed to refusing it.
fn not_judged(code: tonic::Code) -> bool {
    is_connection_failure(code) || code == tonic::Code::ResourceExhausted
}

/// Attests this node: a new P-256 key, its CSR and the attestor's payload go to `AttestAgent`.
pub async fn attest(
    connection: &ServerConnection,
    attestor: &dyn NodeAttestor,
) -> Result<(AgentSvid, Bundle), NodeAttestationError> {
    let payload = attestor.payload().await?;
    let (key, csr) = new_key_and_csr(KeyType::EcP256)?;
    let request = AttestAgentRequest {
        attestation_type: attestor.attestation_type().into(),
        payload: payload.to_vec(),
        csr,
    };
    let attested = crate::server_client::bounded(connection.client().attest_agent(request)).await;
    let response = match attested {
        Ok(response) => {
            attestor.answered(true);
            response.into_inner()
        }
        Err(status) => {
            if !not_judged(status.code()) {
                attestor.answered(false);
            }
            return Err(NodeAttestationError::Rpc(status));
        }
    };
    let bundle = response
        .bundle
        .as_ref()
        .ok_or(NodeAttestationError::NoBundle)?;
    let bundle =
        Bundle::try_from(bundle).map_err(|e| NodeAttestationError::InvalidBundle(e.to_string()))?;
    let svid = AgentSvid::new(response.svid_chain, key)?;
    Ok((svid, bundle))
}
