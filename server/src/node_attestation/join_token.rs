//! The `join_token` node attestor: a single-use, short-lived token created by
//! `sigil-server token generate`.

use futures::future::BoxFuture;
use sigil_common::time::unix_now;
use sigil_proto::TrustDomain;

use super::{AttestationError, AttestationResult, NodeAttestor, join_token_agent_id};
use crate::datastore::Datastore;

#[derive(Debug)]
pub struct JoinTokenAttestor {
    trust_domain: TrustDomain,
    datastore: Datastore,
}

impl JoinTokenAttestor {
    pub fn new(trust_domain: TrustDomain, datastore: Datastore) -> Self {
        Self {
            trust_domain,
            datastore,
        }
    }
}

impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &'static str {
        "join_token"
    }

    fn attest<'a>(
        &'a self,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<AttestationResult, AttestationError>> {
        Box::pin(async move {
            let token = std::str::from_utf8(payload)
                .ok()
                .filter(|t| !t.is_empty() && t.len() <= 256)
                .ok_or_else(|| {
                    AttestationError::InvalidPayload("join token is empty or malformed".into())
                })?;
            let agent_id = join_token_agent_id(&self.trust_domain, token)
                .map_err(|_| AttestationError::InvalidPayload("join token is malformed".into()))?;
            let now = unix_now();
            // The datastore looks the token up by its SHA-256 and deletes it in the same
            // transaction: single use, and no timing signal about the secret itself.
            let taken = self
                .datastore
                .take_join_token(token, now)
                .await
                .map_err(|e| AttestationError::Internal(e.to_string()))?;
            match taken {
                Some(_) => Ok(AttestationResult {
                    agent_id,
                    selectors: Vec::new(),
                    can_reattest: false,
                }),
                None => Err(AttestationError::Denied(
                    "join token does not exist, was already used or has expired".into(),
                )),
            }
        })
    }
}
