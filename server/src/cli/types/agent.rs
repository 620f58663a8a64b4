//! `spire.api.types.Agent` and `ListAgentsResponse`, as SPIRE's `agent list|show -output
//! json` prints them, and `agent purge`'s result.

use serde::Serialize;
use sigil_proto::sigil::common::v1 as pb;

use super::{Selector, SpiffeId, int64};

/// `spire.api.types.Agent`. Fields in alphabetical order: the order SPIRE prints them in.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct Agent {
    /// Sigil does not record the agent's version: always empty.
    pub agent_version: String,
    pub attestation_type: String,
    pub banned: bool,
    pub can_reattest: bool,
    pub id: SpiffeId,
    pub selectors: Vec<Selector>,
    #[serde(with = "int64")]
    pub x509svid_expires_at: i64,
    pub x509svid_serial_number: String,
}

impl From<&pb::AttestedNode> for Agent {
    fn from(n: &pb::AttestedNode) -> Self {
        Self {
            agent_version: String::new(),
            attestation_type: n.attestation_type.clone(),
            banned: n.banned,
            can_reattest: crate::datastore::can_reattest(&n.attestation_type),
            id: SpiffeId::from_text(&n.spiffe_id),
            selectors: n.selectors.iter().map(Selector::from).collect(),
            x509svid_expires_at: n.cert_expires_at,
            x509svid_serial_number: n.cert_serial.clone(),
        }
    }
}

/// `ListAgentsResponse`: every agent, in one page.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct ListAgentsResponse {
    pub agents: Vec<Agent>,
    pub next_page_token: String,
}

/// `agent purge -output json`: SPIRE's own struct (not a proto), fields in declaration order.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct ExpiredAgents {
    pub expired_agents: Vec<ExpiredAgent>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct ExpiredAgent {
    /// The agent's SPIFFE ID as a string (go-spiffe's `spiffeid.ID` marshals as text).
    pub agent_id: String,
    pub deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_prints_as_spire_does() {
        let node = pb::AttestedNode {
            spiffe_id: "spiffe://td/spire/agent/join_token/t".into(),
            attestation_type: "join_token".into(),
            cert_serial: "1234".into(),
            cert_expires_at: 99,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&Agent::from(&node)).unwrap(),
            r#"{"agent_version":"","attestation_type":"join_token","banned":false,"can_reattest":false,"id":{"path":"/spire/agent/join_token/t","trust_domain":"td"},"selectors":[],"x509svid_expires_at":"99","x509svid_serial_number":"1234"}"#
        );
    }
}
