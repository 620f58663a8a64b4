//! Attested agents: list, get, evict and ban (SPIRE's `agent/v1`). An evicted agent must
//! attest again; a banned one cannot until it is evicted.

use std::sync::Arc;

use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{TrustDomain, convert};
use tonic::Status;

use super::{page_size, parse_our_id, selector_match};
use crate::activity::Activity;
use crate::api::{audit, datastore_status};
use crate::datastore::{AttestedNode, Datastore, NodeFilter};

pub(super) struct Agents {
    datastore: Datastore,
    trust_domain: TrustDomain,
    /// Where evictions are recorded for the web console.
    activity: Option<Arc<Activity>>,
}

impl Agents {
    pub(super) fn new(datastore: Datastore, trust_domain: TrustDomain) -> Self {
        Self {
            datastore,
            trust_domain,
            activity: None,
        }
    }

    pub(super) fn set_activity(&mut self, activity: Arc<Activity>) {
        self.activity = Some(activity);
    }

    pub(super) async fn list(
        &self,
        req: pb::ListAgentsRequest,
    ) -> Result<pb::ListAgentsResponse, Status> {
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let (nodes, next) = self
            .datastore
            .list_attested_nodes(&filter(req.filter)?, page_size(req.page_size), token)
            .await
            .map_err(datastore_status)?;
        Ok(pb::ListAgentsResponse {
            agents: nodes.iter().map(node_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    pub(super) async fn count(
        &self,
        req: pb::CountAgentsRequest,
    ) -> Result<pb::CountAgentsResponse, Status> {
        let count = self
            .datastore
            .count_attested_nodes(&filter(req.filter)?)
            .await
            .map_err(datastore_status)?;
        Ok(pb::CountAgentsResponse { count })
    }

    pub(super) async fn get(
        &self,
        req: pb::GetAgentRequest,
    ) -> Result<common::AttestedNode, Status> {
        let id = parse_our_id(&self.trust_domain, "spiffe_id", &req.spiffe_id)?;
        match self
            .datastore
            .fetch_attested_node(&id)
            .await
            .map_err(datastore_status)?
        {
            Some(n) => Ok(node_pb(&n)),
            None => Err(Status::not_found(format!("no attested agent {id}"))),
        }
    }

    pub(super) async fn evict(
        &self,
        req: pb::EvictAgentRequest,
    ) -> Result<pb::EvictAgentResponse, Status> {
        audit::record(|t| t.spiffe_id = Some(req.spiffe_id.clone()));
        let id = parse_our_id(&self.trust_domain, "spiffe_id", &req.spiffe_id)?;
        self.datastore
            .delete_attested_node(&id)
            .await
            .map_err(datastore_status)?;
        if let Some(activity) = &self.activity {
            activity.agent_evicted(&id);
        }
        tracing::info!(agent_id = %id, "agent evicted");
        Ok(pb::EvictAgentResponse {})
    }

    pub(super) async fn ban(
        &self,
        req: pb::BanAgentRequest,
    ) -> Result<pb::BanAgentResponse, Status> {
        audit::record(|t| t.spiffe_id = Some(req.spiffe_id.clone()));
        let id = parse_our_id(&self.trust_domain, "spiffe_id", &req.spiffe_id)?;
        self.datastore
            .set_attested_node_banned(&id, true)
            .await
            .map_err(datastore_status)?;
        tracing::info!(agent_id = %id, "agent banned");
        Ok(pb::BanAgentResponse {})
    }
}

/// A datastore filter from SPIRE's agent filter; no filter lists every agent.
fn filter(f: Option<pb::AgentFilter>) -> Result<NodeFilter, Status> {
    let f = f.unwrap_or_default();
    let selectors = if f.by_selectors.is_empty() {
        None
    } else {
        let set = convert::selectors_from_pb(&f.by_selectors)
            .map_err(|e| Status::invalid_argument(format!("invalid by_selectors: {e}")))?;
        Some((set, selector_match(f.selector_match)?))
    };
    Ok(NodeFilter {
        attestation_type: (!f.by_attestation_type.is_empty()).then_some(f.by_attestation_type),
        banned: f.by_banned,
        can_reattest: f.by_can_reattest,
        expires_before: (f.by_expires_before != 0).then_some(f.by_expires_before),
        selectors,
    })
}

fn node_pb(n: &AttestedNode) -> common::AttestedNode {
    common::AttestedNode {
        spiffe_id: n.spiffe_id.to_string(),
        attestation_type: n.attestation_type.clone(),
        selectors: convert::selectors_to_pb(&n.selectors),
        cert_serial: n.cert_serial.clone(),
        cert_expires_at: n.cert_expires_at,
        banned: n.banned,
        created_at: n.created_at,
        updated_at: n.updated_at,
    }
}
