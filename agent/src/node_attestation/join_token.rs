//! The `join_token` node attestor: the payload is the one-time token itself. Once the server
//! has accepted or refused it, it is spent: the agent never presents it again.
//!
//! The plugin takes no settings; the token comes from the `agent` block's `join_token` or the
//! `-joinToken` flag ([`JoinToken::from_agent_block`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use sigil_common::hcl::{Block, ConfigError};
use zeroize::Zeroizing;

use super::{NodeAttestationError, NodeAttestor};

/// A join token: a one-time secret, so its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The secret itself, for the attestation request only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `join_token` of the `agent` block, replaced by `-joinToken` when that is given. An
    /// empty token in the file is "not set", as in SPIRE; an empty flag is an error. The value
    /// never goes into a message.
    pub(crate) fn from_agent_block(
        agent: &mut Block<'_>,
        flag: Option<&Self>,
    ) -> Result<Option<Self>, ConfigError> {
        if let Some(token) = flag {
            agent.skip("join_token");
            if token.expose().is_empty() {
                return Err(ConfigError::flag("-joinToken", "must not be empty"));
            }
            return Ok(Some(token.clone()));
        }
        Ok(agent
            .string("join_token")?
            .filter(|t| !t.is_empty())
            .map(Self::new))
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

#[derive(Debug)]
pub struct JoinTokenAttestor {
    token: JoinToken,
    spent: AtomicBool,
}

impl JoinTokenAttestor {
    pub fn new(token: JoinToken) -> Self {
        Self {
            token,
            spent: AtomicBool::new(false),
        }
    }
}

impl NodeAttestor for JoinTokenAttestor {
    fn attestation_type(&self) -> &'static str {
        "join_token"
    }

    fn payload(&self) -> BoxFuture<'_, Result<Zeroizing<Vec<u8>>, NodeAttestationError>> {
        let payload = Zeroizing::new(self.token.expose().as_bytes().to_vec());
        Box::pin(async move { Ok(payload) })
    }

    fn can_attest(&self) -> bool {
        !self.spent.load(Ordering::Acquire)
    }

    fn answered(&self, _accepted: bool) {
        self.spent.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn payload_is_the_token_and_debug_hides_it() {
        let attestor = JoinTokenAttestor::new(JoinToken::new("s3cret-token"));
        assert_eq!(attestor.attestation_type(), "join_token");
        assert_eq!(&*attestor.payload().await.unwrap(), b"s3cret-token");
        assert!(!format!("{attestor:?}").contains("s3cret"));
    }

    #[test]
    fn a_token_is_spent_once_the_server_answered() {
        for accepted in [true, false] {
            let attestor = JoinTokenAttestor::new(JoinToken::new("t"));
            assert!(attestor.can_attest());
            attestor.answered(accepted);
            assert!(!attestor.can_attest(), "accepted: {accepted}");
        }
    }
}
