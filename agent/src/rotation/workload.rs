//! The one rotation loop for workload X509-SVIDs, generic over the key being rotated (see
//! [`Target`]: a fixed entry by its ID, a template entry's instance by its rendered ID). Each
//! turn asks the target which SVIDs are due, mints them in batches of [`MAX_BATCH`] under the
//! agent's [`Pace`], then sleeps until the earliest refresh or retry, or until the target sees
//! new work. It logs and retries and never returns before cancellation; while the agent's own
//! SVID has expired it waits for a new one instead of asking the server, which would refuse
//! every call.
//!
//! A batch that fails is, by the server's answer:
//! - `ResourceExhausted`, its signing limit: the [`Pace`] engages and the turn ends; the rest is
//!   asked for after [`RATE_LIMITED_RETRY`], through the pace.
//! - A refusal, `PermissionDenied` (an entry gone or no longer authorized for this agent, an ID
//!   the entry does not give) or `InvalidArgument` (an entry the server cannot sign): the
//!   server judged that batch's SVIDs, it is not down. They are asked for again after
//!   [`ENTRY_RETRY`], and the other batches of the turn go on, so one stale or unsignable
//!   entry never holds back the others.
//! - Anything else, the server unreachable or failing: the turn ends and the loop backs off,
//!   without waking on cache changes meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pacing::Pace;
use super::schedule::{Backoff, next_wake};
use crate::cache::expiry::rfc3339;
use crate::identity::AgentIdentity;
use crate::ops::Metrics;

/// Largest `BatchMintX509SVID` batch.
pub const MAX_BATCH: usize = 500;
/// How long an SVID the server would not sign waits before it is asked for again.
pub(crate) const ENTRY_RETRY: Duration = Duration::from_secs(10);
/// How long a batch the server refused for its rate limit waits before it is sent again,
/// through the pace the refusal engaged.
const RATE_LIMITED_RETRY: Duration = Duration::from_secs(1);

/// What the loop remembers about an SVID it installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Minted {
    /// The entry revision it was minted for.
    pub(crate) revision: i64,
    /// Its NotAfter (Unix seconds).
    pub(crate) expires_at: i64,
    /// When to renew it (Unix seconds).
    pub(crate) refresh_at: i64,
}

/// What the loop remembers between turns, by key.
#[derive(Debug)]
pub(crate) struct Ledger<K> {
    /// The SVIDs this loop installed.
    pub(crate) minted: HashMap<K, Minted>,
    /// SVIDs the server would not sign, and when to ask again (Unix seconds).
    pub(crate) retry_at: HashMap<K, i64>,
}

impl<K> Default for Ledger<K> {
    fn default() -> Self {
        Self {
            minted: HashMap::new(),
            retry_at: HashMap::new(),
        }
    }
}

/// What one batch gave: the SVIDs installed, and the keys to ask for again later.
#[derive(Debug)]
pub(crate) struct Outcome<K> {
    pub(crate) minted: Vec<(K, Minted)>,
    pub(crate) failed: Vec<K>,
}

/// One kind of workload X509-SVID the loop keeps fresh.
pub(crate) trait Target: Send + Sync {
    /// What names one SVID.
    type Key: Clone + Eq + Hash + Send + Sync;
    /// One SVID due, with what minting it needs.
    type Due: Send + Sync;
    /// What the loop mints, for log lines ("X509-SVIDs").
    const WHAT: &'static str;

    /// The key of a due SVID.
    fn key(due: &Self::Due) -> &Self::Key;

    /// Starts a turn at `now` (Unix seconds): forgets in `ledger` what left the cache, and
    /// returns the SVIDs due, skipping those waiting for a retry.
    fn due(&mut self, ledger: &mut Ledger<Self::Key>, now: i64) -> Vec<Self::Due>;

    /// Mints one batch and installs what the server signed.
    fn mint(
        &self,
        batch: &[Self::Due],
    ) -> impl Future<Output = Result<Outcome<Self::Key>, tonic::Status>> + Send;

    /// Resolves when there may be new work; false once there never will be.
    fn changed(&mut self) -> impl Future<Output = bool> + Send;
}

/// What the loop reads besides its target: the agent's identity (minting waits while it has
/// expired), the shared pace, the metrics and the clock (Unix seconds).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Turns<'a> {
    pub(crate) identity: &'a AgentIdentity,
    pub(crate) pace: &'a Pace,
    pub(crate) metrics: &'a Metrics,
    pub(crate) clock: fn() -> i64,
}

/// Why a batch failed, as the loop treats it (see the module doc).
fn refused(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
    )
}

/// Keeps `target`'s SVIDs fresh until `cancel` fires.
pub(crate) async fn rotate<T: Target>(mut target: T, turns: Turns<'_>, cancel: &CancellationToken) {
    let mut ledger = Ledger::default();
    let mut backoff = Backoff::server();
    loop {
        if !agent_svid_usable(&turns, cancel).await {
            return;
        }
        let now = (turns.clock)();
        let due = target.due(&mut ledger, now);
        let retry_at = now + ENTRY_RETRY.as_secs() as i64;
        let mut server_down = false;
        let mut rate_limited = false;
        for batch in due.chunks(MAX_BATCH) {
            if !turns.pace.wait(batch.len(), cancel).await {
                return;
            }
            match target.mint(batch).await {
                Ok(outcome) => {
                    backoff.reset();
                    ledger.minted.extend(outcome.minted);
                    for key in outcome.failed {
                        ledger.retry_at.insert(key, retry_at);
                    }
                }
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    info!(error = %status.message(), count = batch.len(), "server's signing rate limit reached; pacing the rest");
                    turns.pace.refused();
                    rate_limited = true;
                    break;
                }
                Err(status) if refused(status.code()) => {
                    turns.metrics.svid_mint(false, batch.len());
                    warn!(code = ?status.code(), error = %status.message(), count = batch.len(), "server refused to mint {}; will retry them", T::WHAT);
                    for due in batch {
                        ledger.retry_at.insert(T::key(due).clone(), retry_at);
                    }
                }
                Err(status) => {
                    turns.metrics.svid_mint(false, batch.len());
                    warn!(code = ?status.code(), error = %status.message(), count = batch.len(), "cannot mint {}; server unreachable or failing, will retry", T::WHAT);
                    server_down = true;
                    break;
                }
            }
        }

        let wait = if rate_limited {
            RATE_LIMITED_RETRY
        } else if server_down {
            backoff.next_delay()
        } else {
            next_wake(
                ledger.minted.values().map(|m| m.refresh_at),
                ledger.retry_at.values().copied(),
                (turns.clock)(),
            )
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            // While the server is down new work does not cut the backoff short.
            more = target.changed(), if !server_down => {
                if !more { return; }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Waits while the agent's own SVID has expired (the server would refuse every mint) until a
/// new one is in place; false if `cancel` fired meanwhile.
async fn agent_svid_usable(turns: &Turns<'_>, cancel: &CancellationToken) -> bool {
    let Some(expired_at) = turns.identity.expired_at((turns.clock)()) else {
        return true;
    };
    debug!(
        expired_at = %rfc3339(expired_at),
        "agent SVID expired; X509-SVID minting waits for a new one"
    );
    tokio::select! {
        () = cancel.cancelled() => false,
        () = turns.identity.renewed() => true,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;
    use crate::identity::tests::agent_svid;

    /// Unix seconds at the paused clock's start in every test.
    const START: i64 = 1_000_000;

    thread_local! {
        /// The paused clock's start in this test's (single-threaded) runtime.
        static ORIGIN: Cell<Option<Instant>> = const { Cell::new(None) };
    }

    /// Unix seconds by tokio's paused clock.
    fn paused_clock() -> i64 {
        let origin = ORIGIN.with(|o| {
            let origin = o.get().unwrap_or_else(Instant::now);
            o.set(Some(origin));
            origin
        });
        START + Instant::now().duration_since(origin).as_secs() as i64
    }

    /// A batch the target was asked to mint: when (seconds into the test) and its keys.
    type Call = (f64, Vec<u32>);

    /// Keys `0..n`, all due until minted; the server refuses with `code` every batch that
    /// holds a key in `refuse`, and signs the others (renewed in a day).
    struct Scripted {
        n: u32,
        refuse: Vec<u32>,
        code: tonic::Code,
        calls: Arc<Mutex<Vec<Call>>>,
        start: Instant,
    }

    impl Target for Scripted {
        type Key = u32;
        type Due = u32;
        const WHAT: &'static str = "test SVIDs";

        fn key(due: &u32) -> &u32 {
            due
        }

        fn due(&mut self, ledger: &mut Ledger<u32>, now: i64) -> Vec<u32> {
            ledger.retry_at.retain(|_, &mut at| now < at);
            (0..self.n)
                .filter(|k| !ledger.minted.contains_key(k) && !ledger.retry_at.contains_key(k))
                .collect()
        }

        async fn mint(&self, batch: &[u32]) -> Result<Outcome<u32>, tonic::Status> {
            let at = self.start.elapsed().as_secs_f64();
            self.calls.lock().unwrap().push((at, batch.to_vec()));
            if batch.iter().any(|k| self.refuse.contains(k)) {
                return Err(tonic::Status::new(self.code, "scripted"));
            }
            let minted = Minted {
                revision: 1,
                expires_at: paused_clock() + 172_800,
                refresh_at: paused_clock() + 86_400,
            };
            Ok(Outcome {
                minted: batch.iter().map(|&k| (k, minted)).collect(),
                failed: vec![],
            })
        }

        async fn changed(&mut self) -> bool {
            std::future::pending().await
        }
    }

    /// Runs the loop over `n` keys until `until` is done, the server answering `code` to every
    /// batch holding a key of `refuse` and the agent's SVID held in `identity`; returns the
    /// batches it was asked for.
    async fn rotate_until(
        n: u32,
        (refuse, code): (&[u32], tonic::Code),
        identity: &AgentIdentity,
        until: impl Future<Output = ()>,
    ) -> Vec<Call> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let target = Scripted {
            n,
            refuse: refuse.to_vec(),
            code,
            calls: calls.clone(),
            start: Instant::now(),
        };
        let (pace, metrics) = (Pace::default(), Metrics::new());
        let turns = Turns {
            identity,
            pace: &pace,
            metrics: &metrics,
            clock: paused_clock,
        };
        let cancel = CancellationToken::new();
        tokio::select! {
            () = rotate(target, turns, &cancel) => {
                panic!("the loop returned before cancellation")
            }
            () = until => {}
        }
        calls.lock().unwrap().clone()
    }

    /// [`rotate_until`] `secs` have passed, the agent's SVID valid all along.
    async fn run(n: u32, refuse: &[u32], code: tonic::Code, secs: u64) -> Vec<Call> {
        let identity = AgentIdentity::new(Some(agent_svid(paused_clock() + 365 * 86_400)));
        let until = tokio::time::sleep(Duration::from_secs(secs));
        rotate_until(n, (refuse, code), &identity, until).await
    }

    fn keys(calls: &[Call]) -> Vec<Vec<u32>> {
        calls.iter().map(|(_, k)| k.clone()).collect()
    }

    fn times(calls: &[Call]) -> Vec<f64> {
        calls.iter().map(|(at, _)| *at).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_is_retried_after_entry_retry_and_the_others_go_on() {
        let first: Vec<u32> = (0..MAX_BATCH as u32).collect();
        for code in [tonic::Code::PermissionDenied, tonic::Code::InvalidArgument] {
            let calls = run(MAX_BATCH as u32 + 1, &[7], code, 25).await;
            // The second batch is minted in the same turn as the refused first one; the
            // refused keys come back every ENTRY_RETRY, not sooner.
            assert_eq!(
                keys(&calls),
                [first.clone(), vec![500], first.clone(), first.clone()],
                "{code:?}"
            );
            assert_eq!(times(&calls), [0.0, 0.0, 10.0, 20.0], "{code:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_server_ends_the_turn_and_backs_off() {
        let first: Vec<u32> = (0..MAX_BATCH as u32).collect();
        let calls = run(MAX_BATCH as u32 + 1, &[7], tonic::Code::Unavailable, 4).await;
        // Only the first batch each time: backoff of 1 s, then 2 s (±20 %).
        assert_eq!(keys(&calls), [first.clone(), first.clone(), first]);
        let t = times(&calls);
        assert_eq!(t[0], 0.0);
        assert!((0.8..=1.21).contains(&t[1]), "{t:?}");
        assert!((2.4..=3.62).contains(&t[2]), "{t:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_signing_limit_engages_the_pace() {
        let calls = run(MAX_BATCH as u32, &[0], tonic::Code::ResourceExhausted, 2).await;
        // Refused for the limit: asked again after 1 s, through the pace that the refusal
        // engaged from an empty bucket (400 of the 500 signings refilled by then).
        assert_eq!(times(&calls), [0.0, 1.25]);
    }

    #[tokio::test(start_paused = true)]
    async fn minting_waits_while_the_agent_svid_has_expired() {
        let identity = AgentIdentity::new(Some(agent_svid(paused_clock())));
        let waited = rotate_until(1, (&[], tonic::Code::Ok), &identity, async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            identity.set(agent_svid(sigil_common::time::unix_now() + 60));
            tokio::time::sleep(Duration::from_secs(1)).await;
        })
        .await;
        // Nothing in the 5 s the agent SVID had expired; minted once a new one was in place.
        assert_eq!(keys(&waited), [vec![0]]);
        assert_eq!(times(&waited), [5.0]);
    }
}
