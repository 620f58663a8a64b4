//! Join tokens (SPIRE's `agent/v1` CreateJoinToken): a single-use token for node attestation,
//! optionally with an entry that gives the agent using it a SPIFFE ID of the operator's choice.

use sigil_common::time::unix_now;
use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::{RegistrationEntry, Selector, TrustDomain};
use tonic::Status;

use super::parse_workload_id;
use crate::api::{audit, datastore_status};
use crate::datastore::Datastore;

/// A token's lifetime when the caller gives none, in seconds.
const DEFAULT_JOIN_TOKEN_TTL: u32 = 600;

pub(super) struct JoinTokens {
    datastore: Datastore,
    trust_domain: TrustDomain,
}

impl JoinTokens {
    pub(super) fn new(datastore: Datastore, trust_domain: TrustDomain) -> Self {
        Self {
            datastore,
            trust_domain,
        }
    }

    pub(super) async fn create(
        &self,
        req: pb::CreateJoinTokenRequest,
    ) -> Result<pb::CreateJoinTokenResponse, Status> {
        let ttl = if req.ttl == 0 {
            DEFAULT_JOIN_TOKEN_TTL
        } else {
            req.ttl
        };
        // Never the token itself, nor the agent ID that embeds it (as SPIRE: TTL and SPIFFE ID).
        audit::record(|t| {
            t.ttl = Some(ttl.into());
            t.spiffe_id = (!req.spiffe_id.is_empty()).then(|| req.spiffe_id.clone());
        });
        let alias = (!req.spiffe_id.is_empty())
            .then(|| parse_workload_id(&self.trust_domain, "spiffe_id", &req.spiffe_id))
            .transpose()?;
        let token = uuid::Uuid::new_v4().to_string();
        let expires_at = unix_now() + i64::from(ttl);
        audit::record(|t| t.expires_at = Some(expires_at));
        if let Some(spiffe_id) = alias {
            // SPIRE's `token generate -spiffeID`: an entry parented to the agent ID the token
            // will produce, selecting that agent by its own ID.
            let agent_id = crate::node_attestation::join_token_agent_id(&self.trust_domain, &token)
                .map_err(|e| Status::internal(e.to_string()))?;
            let selector = Selector::from_parts("spiffe_id", &agent_id.to_string())
                .map_err(|e| Status::internal(e.to_string()))?;
            let entry = RegistrationEntry::new(spiffe_id, agent_id, vec![selector]);
            let created = self
                .datastore
                .create_entries(vec![entry])
                .await
                .map_err(datastore_status)?;
            audit::record(|t| t.entry_id = Some(audit::list(created.iter().map(|e| &e.id))));
        }
        self.datastore
            .create_join_token(&token, expires_at)
            .await
            .map_err(datastore_status)?;
        tracing::info!(expires_at, "join token created");
        Ok(pb::CreateJoinTokenResponse { token, expires_at })
    }
}
