//! The agent's own identity, its X509-SVID, held in this one place: attestation and renewal
//! write it ([`AgentIdentity::set`]); the server link presents it in each handshake, and sync
//! and rotation read whether it has expired and wait for a new one. Persisting it to disk is
//! [`crate::svid_store`]'s job, not this holder's.
//!
//! The trust bundle is held once too, by the cache (see [`crate::cache::TrustBundle`]).

use std::fmt;
use std::sync::Arc;

use tokio::sync::{Notify, watch};

use sigil_common::time::unix_now;

use crate::cache::expiry::is_expired;
use crate::svid_store::AgentSvid;

/// The agent's current X509-SVID: none until the first attestation. Shared as `Arc`.
pub struct AgentIdentity {
    svid: watch::Sender<Option<Arc<AgentSvid>>>,
    /// Raised by sync when the server answers PermissionDenied (agent evicted or banned).
    evicted: Notify,
}

impl fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("svid", &*self.svid.borrow())
            .finish_non_exhaustive()
    }
}

impl AgentIdentity {
    /// Holds `svid` (a stored one), or nothing until the first attestation.
    pub fn new(svid: Option<AgentSvid>) -> Self {
        Self {
            svid: watch::Sender::new(svid.map(Arc::new)),
            evicted: Notify::new(),
        }
    }

    /// The current SVID, if the agent has one.
    pub fn current(&self) -> Option<Arc<AgentSvid>> {
        self.svid.borrow().clone()
    }

    /// Makes `svid` the agent's identity: presented from the next handshake on (on a fresh
    /// channel), and the end of any wait in [`AgentIdentity::renewed`].
    pub fn set(&self, svid: AgentSvid) {
        self.svid.send_replace(Some(Arc::new(svid)));
    }

    /// A receiver that sees every new SVID.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<AgentSvid>>> {
        self.svid.subscribe()
    }

    /// When the agent SVID expired, if it has by `now` (Unix seconds; from the start of its
    /// NotAfter second, as workload SVIDs are withdrawn).
    pub fn expired_at(&self, now: i64) -> Option<i64> {
        self.svid
            .borrow()
            .as_ref()
            .map(|svid| svid.not_after)
            .filter(|&not_after| is_expired(not_after, now))
    }

    /// Resolves once the agent has an SVID that has not expired, or none at all (at once if
    /// so already).
    pub async fn renewed(&self) {
        let mut rx = self.svid.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx
            .wait_for(|svid| {
                svid.as_ref()
                    .is_none_or(|svid| !is_expired(svid.not_after, unix_now()))
            })
            .await;
    }

    /// Tells the renewal loop the server no longer accepts this agent.
    pub fn report_evicted(&self) {
        self.evicted.notify_one();
    }

    /// Resolves when sync reported the agent evicted (see [`AgentIdentity::report_evicted`]).
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use sigil_proto::SpiffeId;

    use super::*;

    /// An agent SVID with the given NotAfter (the chain is a self-signed stand-in).
    pub(crate) fn agent_svid(not_after: i64) -> AgentSvid {
        let (cert, key) = crate::svid_store::tests::self_signed("spiffe://td/spire/agent/x");
        AgentSvid {
            spiffe_id: SpiffeId::new("spiffe://td/spire/agent/x").unwrap(),
            chain: vec![cert],
            key_pkcs8: key,
            not_before: 0,
            not_after,
        }
    }

    #[test]
    fn expiry_is_read_from_the_current_svid() {
        let identity = AgentIdentity::new(None);
        assert!(identity.current().is_none());
        assert_eq!(
            identity.expired_at(unix_now()),
            None,
            "none yet: not expired"
        );
        let now = unix_now();
        identity.set(agent_svid(now + 60));
        assert_eq!(identity.expired_at(now), None);
        identity.set(agent_svid(now));
        assert_eq!(identity.expired_at(now), Some(now));
    }

    #[tokio::test]
    async fn waiting_for_a_renewed_identity_ends_when_one_is_set() {
        let identity = Arc::new(AgentIdentity::new(Some(agent_svid(unix_now() - 1))));
        let waiter = tokio::spawn({
            let identity = identity.clone();
            async move { identity.renewed().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        identity.set(agent_svid(unix_now() + 60));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the new identity")
            .unwrap();
    }
}
