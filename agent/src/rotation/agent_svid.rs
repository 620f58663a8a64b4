//! The agent's own SVID, from the start to its loss.
//!
//! - Renewed through `RenewAgent` at its refresh point, or at once when a new bundle says the
//!   authority that signed it is tainted.
//! - Replaced by attesting again when it expired before it could be renewed (a server outage
//!   longer than the rest of its life) or the server no longer accepts it (evicted), where the
//!   attestor allows: `k8s_psat` always (the kubelet keeps the token fresh), a join token only
//!   while it has not been presented (single use). While the server is down this is retried
//!   with backoff until it answers.
//! - Otherwise lost for good: the agent logs at ERROR what the operator must do, `/ready`
//!   turns 503, and after `exit_delay` (`lost_identity_exit_delay`, default 1 min) the loop
//!   returns [`IdentityLost`], which stops the agent with a non-zero exit. Workload SVIDs that
//!   are still valid are served until then; expired ones never are (see
//!   [`crate::cache::expiry`]).
//!
//! SPIRE's agent exits as soon as a rotation fails with its SVID expired and relies on a
//! restart to attest again; here a re-attestable agent recovers in place and only an agent
//! that cannot recover exits.

use std::sync::Arc;
use std::time::Duration;

use sigil_proto::SpiffeId;
use sigil_proto::sigil::agent::v1::RenewAgentRequest;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::schedule::{Backoff, MAX_SLEEP, random_jitter, refresh_at};
use crate::cache::Cache;
use crate::cache::expiry::{is_expired, rfc3339};
use crate::csr::{KeyType, new_key_and_csr};
use crate::identity::AgentIdentity;
use crate::node_attestation::{self, NodeAttestationError, NodeAttestor};
use crate::ops::{Metrics, Readiness};
use crate::server_client::{ServerConnection, check_trust_anchors, is_connection_failure};
use crate::svid_store::{AgentSvid, SvidStore};
use crate::taint::TaintedAuthorities;
use sigil_common::time::unix_now;

/// `lost_identity_exit_delay` unless configured.
pub(crate) const DEFAULT_EXIT_DELAY: Duration = Duration::from_secs(60);

/// The agent can no longer obtain an identity by itself: an operator must act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum IdentityLost {
    #[error(
        "the agent SVID {spiffe_id} expired at {expired_at} before it could be renewed, and this agent cannot attest again: {action}"
    )]
    Expired {
        spiffe_id: SpiffeId,
        expired_at: String,
        action: &'static str,
    },
    #[error(
        "the server no longer accepts agent {spiffe_id} (evicted or banned) and this agent cannot attest again: {action}"
    )]
    Refused {
        spiffe_id: SpiffeId,
        action: &'static str,
    },
}

/// What the operator must do for an agent that cannot attest again.
fn operator_action(attestor: Option<&dyn NodeAttestor>) -> &'static str {
    match attestor.map(|a| a.attestation_type()) {
        Some("join_token") => {
            "its join token was already presented and join tokens are single use; generate a new one with `sigil-server token generate` and restart the agent with -joinToken <token>"
        }
        _ => {
            "generate a join token with `sigil-server token generate` and restart the agent with -joinToken <token>"
        }
    }
}

/// Everything the renewal loop works with.
#[derive(Debug)]
pub(crate) struct AgentSvidRenewal {
    pub(crate) connection: Arc<ServerConnection>,
    /// Where the agent SVID is held; this loop writes it.
    pub(crate) identity: Arc<AgentIdentity>,
    /// Where the trust bundle is held: read for tainted authorities, written after re-attesting.
    pub(crate) cache: Arc<Cache>,
    pub(crate) store: Option<SvidStore>,
    /// The node attestor, when one is configured (a join token, `k8s_psat`).
    pub(crate) attestor: Option<Arc<dyn NodeAttestor>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) readiness: Arc<Readiness>,
    /// How long a lost agent keeps serving valid workload SVIDs before it exits.
    pub(crate) exit_delay: Duration,
}

/// Keeps the agent SVID valid until `cancel` fires (then `Ok`), or returns [`IdentityLost`]
/// `exit_delay` after the agent lost it for good (see the module doc). The agent holds an SVID
/// before this loop starts.
pub(crate) async fn renew_agent_svid(
    r: AgentSvidRenewal,
    cancel: CancellationToken,
) -> Result<(), IdentityLost> {
    let mut snapshots = r.cache.subscribe();
    let mut backoff = Backoff::server();
    let mut evicted = false;
    let mut retry: Option<Duration> = None;
    let mut jitter = random_jitter();
    // Whether the current trouble (expiry, eviction) was logged at WARN already.
    let mut announced = false;
    // When the current SVID arrived (see `fresh_refresh_at`); for one loaded from disk at start,
    // its NotBefore is all we know.
    let first = held(&r.identity).await;
    let mut arrived_at = first.not_before;
    r.publish(&first);
    loop {
        let svid = held(&r.identity).await;
        let expired = is_expired(svid.not_after, unix_now());
        if expired || evicted {
            let Some(attestor) = r.attestor.as_ref().filter(|a| a.can_attest()) else {
                return r.lose(&svid, expired, &cancel).await;
            };
            if !announced {
                announced = true;
                if expired {
                    warn!(spiffe_id = %svid.spiffe_id, expired_at = %rfc3339(svid.not_after), attestation_type = attestor.attestation_type(), "agent SVID expired before it could be renewed; attesting again");
                } else {
                    warn!(spiffe_id = %svid.spiffe_id, attestation_type = attestor.attestation_type(), "the server no longer accepts this agent (evicted); attesting again");
                }
            }
            match reattest(&r.connection, attestor.as_ref(), r.store.as_ref(), &r.cache).await {
                Ok(new) => {
                    let after = if expired {
                        "its SVID expired"
                    } else {
                        "eviction"
                    };
                    info!(previous = %svid.spiffe_id, spiffe_id = %new.spiffe_id, not_after = %rfc3339(new.not_after), "re-attested after {after}; agent SVID replaced");
                    r.install(new);
                    arrived_at = unix_now();
                    (evicted, announced, jitter) = (false, false, random_jitter());
                    backoff.reset();
                    continue;
                }
                Err(NodeAttestationError::Rpc(status))
                    if is_connection_failure(status.code())
                        || status.code() == tonic::Code::ResourceExhausted =>
                {
                    debug!(code = ?status.code(), error = %status.message(), "server unreachable for re-attestation; will retry");
                }
                Err(e) if attestor.can_attest() => {
                    error!(error = %e, attestation_type = attestor.attestation_type(), "re-attestation refused; will retry");
                }
                // The attestor is spent (a join token the server refused): the next turn
                // gives up.
                Err(e) => warn!(error = %e, "re-attestation refused"),
            }
            r.metrics.agent_renewal(false);
            if !attestor.can_attest() {
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff.next_delay()) => continue,
            }
        }

        // Until the refresh point (after a failure: the retry delay), but never past NotAfter.
        let wait = retry
            .take()
            .unwrap_or_else(|| {
                let at = refresh_at(arrived_at.max(svid.not_before), svid.not_after, jitter);
                until(at)
            })
            .min(until(svid.not_after));
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = r.identity.evicted() => {
                evicted = true;
                continue;
            }
            changed = snapshots.changed() => {
                if changed.is_err() { return Ok(()); }
                let bundle = snapshots.borrow_and_update().bundle.clone();
                if !TaintedAuthorities::from_bundle(&bundle).affects_chain(&svid.chain) {
                    continue;
                }
                info!(spiffe_id = %svid.spiffe_id, "agent SVID signed by a tainted authority; renewing now");
            }
            () = tokio::time::sleep(wait.min(MAX_SLEEP)) => {
                // A capped sleep that has not reached the refresh point just loops.
                if wait > MAX_SLEEP { continue; }
            }
        }
        if is_expired(svid.not_after, unix_now()) {
            // Too late for RenewAgent: the top of the loop attests again or gives up.
            continue;
        }
        match renew(&r.connection, r.store.as_ref()).await {
            Ok(new) => {
                debug!(spiffe_id = %new.spiffe_id, not_after = %rfc3339(new.not_after), "agent SVID renewed");
                r.install(new);
                arrived_at = unix_now();
                jitter = random_jitter();
                backoff.reset();
            }
            Err(status) => {
                r.metrics.agent_renewal(false);
                if status.code() == tonic::Code::PermissionDenied {
                    warn!(spiffe_id = %svid.spiffe_id, error = %status.message(), "server refused to renew the agent SVID: agent evicted or banned");
                    evicted = true;
                } else {
                    warn!(code = ?status.code(), error = %status.message(), expires_at = %rfc3339(svid.not_after), "cannot renew the agent SVID; will retry");
                    retry = Some(backoff.next_delay());
                }
            }
        }
    }
}

/// The agent SVID `identity` holds (waiting for one if it holds none yet).
async fn held(identity: &AgentIdentity) -> Arc<AgentSvid> {
    let mut changes = identity.subscribe();
    loop {
        if let Some(svid) = changes.borrow_and_update().clone() {
            return svid;
        }
        if changes.changed().await.is_err() {
            // The sender lives in `identity`, which outlives this wait.
            return std::future::pending().await;
        }
    }
}

/// How long until Unix time `at` (zero if past).
fn until(at: i64) -> Duration {
    Duration::from_secs((at - unix_now()).max(0) as u64)
}

impl AgentSvidRenewal {
    /// Makes `new` the agent's SVID: presented from the next handshake, shown in readiness and
    /// metrics.
    fn install(&self, new: AgentSvid) {
        self.metrics.agent_renewal(true);
        self.publish(&new);
        self.readiness.set_identity_lost(false);
        self.identity.set(new);
    }

    fn publish(&self, svid: &AgentSvid) {
        self.readiness.set_agent_svid_not_after(svid.not_after);
        self.metrics.agent_svid_expiry.set(svid.not_after);
    }

    /// The agent cannot obtain an identity by itself: say what to do, turn `/ready` to 503,
    /// wait `exit_delay` (still serving valid workload SVIDs), then fail.
    async fn lose(
        &self,
        svid: &AgentSvid,
        expired: bool,
        cancel: &CancellationToken,
    ) -> Result<(), IdentityLost> {
        let action = operator_action(self.attestor.as_deref());
        let lost = if expired {
            IdentityLost::Expired {
                spiffe_id: svid.spiffe_id.clone(),
                expired_at: rfc3339(svid.not_after),
                action,
            }
        } else {
            IdentityLost::Refused {
                spiffe_id: svid.spiffe_id.clone(),
                action,
            }
        };
        self.readiness.set_identity_lost(true);
        error!(
            exit_in = %humantime::format_duration(self.exit_delay),
            "{lost}; the agent exits after lost_identity_exit_delay"
        );
        tokio::select! {
            () = cancel.cancelled() => Ok(()),
            () = tokio::time::sleep(self.exit_delay) => {
                error!("{lost}; exiting");
                Err(lost)
            }
        }
    }
}

async fn renew(
    connection: &ServerConnection,
    store: Option<&SvidStore>,
) -> Result<AgentSvid, tonic::Status> {
    let (key, csr) =
        new_key_and_csr(KeyType::EcP256).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let response =
        crate::server_client::bounded(connection.client().renew_agent(RenewAgentRequest { csr }))
            .await?
            .into_inner();
    let svid = AgentSvid::new(response.svid_chain, key)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    if let Some(Err(e)) = store.map(|s| s.save_svid(&svid)) {
        error!(error = %e, "cannot persist the renewed agent SVID; a restart may need a new join token");
    }
    Ok(svid)
}

async fn reattest(
    connection: &ServerConnection,
    attestor: &dyn NodeAttestor,
    store: Option<&SvidStore>,
    cache: &Cache,
) -> Result<AgentSvid, NodeAttestationError> {
    let (svid, bundle) = node_attestation::attest(connection, attestor).await?;
    if let Some(store) = store {
        let saved = store
            .save_svid(&svid)
            .and_then(|()| store.save_bundle(&bundle));
        if let Err(e) = saved {
            error!(error = %e, "cannot persist the agent SVID after re-attestation");
        }
    }
    // Trusted from the next handshake on, as sync would install it.
    match check_trust_anchors(&bundle) {
        Err(e) => warn!(error = %e, "bundle from re-attestation not usable"),
        Ok(()) if *cache.snapshot().bundle != bundle => cache.set_bundle(bundle),
        Ok(()) => {}
    }
    Ok(svid)
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;
    use zeroize::Zeroizing;

    use super::*;
    use crate::node_attestation::{JoinToken, JoinTokenAttestor};

    #[derive(Debug)]
    struct Psat;

    impl NodeAttestor for Psat {
        fn attestation_type(&self) -> &'static str {
            "k8s_psat"
        }

        fn payload(&self) -> BoxFuture<'_, Result<Zeroizing<Vec<u8>>, NodeAttestationError>> {
            Box::pin(async { Ok(Zeroizing::new(b"{}".to_vec())) })
        }
    }

    #[test]
    fn the_operator_is_told_what_to_do() {
        let token = JoinTokenAttestor::new(JoinToken::new("t"));
        let lost = IdentityLost::Expired {
            spiffe_id: SpiffeId::new("spiffe://example.org/spire/agent/join_token/t").unwrap(),
            expired_at: rfc3339(0),
            action: operator_action(Some(&token)),
        };
        let text = lost.to_string();
        assert!(text.contains("expired at 1970-01-01T00:00:00Z"), "{text}");
        assert!(
            text.contains("generate a new one with `sigil-server token generate` and restart the agent with -joinToken"),
            "{text}"
        );
        assert!(operator_action(None).contains("-joinToken"));
        assert!(operator_action(Some(&Psat)).contains("-joinToken"));
    }
}
