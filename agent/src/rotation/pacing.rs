//! The agent's X509-SVID minting pace under the server's per-agent signing limit (500 SVIDs/s,
//! bursts of 1000 by default): full speed until the server first refuses a batch for that
//! limit, then [`PACE_PER_SEC`], so the rest of a start-up or rotation wave of thousands of
//! entries is spread out rather than refused again. A server with the limit raised or off is
//! never held back. One [`Pace`] per agent: the server's budget is per agent (its SPIFFE ID), and
//! both minting loops draw from it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The pace once the server has refused: under its 500/s, the margin absorbing the gap between
/// when a batch is paced here and when it reaches the server.
pub(crate) const PACE_PER_SEC: f64 = 400.0;
/// The burst allowed at that pace.
pub(crate) const PACE_BURST: f64 = 1000.0;

/// A token bucket that may go into debt: [`reserve`](Self::reserve) always succeeds and says
/// how long to wait first. A pure function of `now`. Hand-written: a dozen lines, and the
/// workspace has no rate-limiting crate.
#[derive(Debug)]
pub(crate) struct SigningPace {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
    /// False until the server first refuses: no wait at all before that.
    engaged: bool,
}

impl SigningPace {
    /// A pace in force from the start, with a full burst.
    pub(crate) fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec,
            burst,
            tokens: burst,
            at: None,
            engaged: true,
        }
    }

    /// A pace that waits for nothing until [`refused`](Self::refused) is called.
    pub(crate) fn after_first_refusal(per_sec: f64, burst: f64) -> Self {
        Self {
            engaged: false,
            ..Self::new(per_sec, burst)
        }
    }

    /// The server refused a batch for its rate limit at `now`: its budget for this agent is
    /// spent, so pace from an empty bucket on.
    pub(crate) fn refused(&mut self, now: Instant) {
        self.engaged = true;
        self.tokens = self.tokens.min(0.0);
        self.at = Some(now);
    }

    /// Reserves `n` signings at `now`; returns how long to wait before asking for them.
    pub(crate) fn reserve(&mut self, n: usize, now: Instant) -> Duration {
        if !self.engaged {
            return Duration::ZERO;
        }
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst) - n as f64;
        self.at = Some(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

/// The agent's one [`SigningPace`], shared by both minting loops: at full speed until the
/// server first refuses.
#[derive(Debug)]
pub(crate) struct Pace(Mutex<SigningPace>);

impl Default for Pace {
    fn default() -> Self {
        Self(Mutex::new(SigningPace::after_first_refusal(
            PACE_PER_SEC,
            PACE_BURST,
        )))
    }
}

impl Pace {
    /// Tells the pace the server refused a batch for its signing rate limit.
    pub(crate) fn refused(&self) {
        // Each method updates the bucket in one step, so a poisoned lock still holds a valid one.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refused(Instant::now());
    }

    /// Waits until `n` more signings fit the pace; false if `cancel` fired meanwhile.
    pub(crate) async fn wait(&self, n: usize, cancel: &CancellationToken) -> bool {
        let wait = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(n, Instant::now());
        if wait.is_zero() {
            return true;
        }
        debug!(
            count = n,
            wait_ms = wait.as_millis() as u64,
            "pacing X509-SVID minting under the server's signing limit"
        );
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_pace_stays_under_the_servers_limit() {
        let mut pace = SigningPace::new(PACE_PER_SEC, PACE_BURST);
        let t0 = Instant::now();
        // The burst goes at once, then 400/s: a 10k-entry start-up takes 22.5 s.
        assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        assert_eq!(pace.reserve(500, t0), Duration::from_millis(1250));
        // Asked again once that wait is over: the debt is paid, the next batch waits its own.
        let t1 = t0 + Duration::from_millis(1250);
        assert_eq!(pace.reserve(500, t1), Duration::from_millis(1250));
        // Idle for long: refill stops at the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(pace.reserve(1000, t2), Duration::ZERO);
        assert!(pace.reserve(1, t2) > Duration::ZERO);
        // Never faster than the server's 500/s after its burst of 1000, even with no waits.
        let mut pace = SigningPace::new(PACE_PER_SEC, PACE_BURST);
        let mut at = t0;
        let mut sent = 0usize;
        for _ in 0..40 {
            at += pace.reserve(500, at);
            sent += 500;
            let allowed = 1000.0 + 500.0 * at.duration_since(t0).as_secs_f64();
            assert!(sent as f64 <= allowed, "{sent} sent by {at:?}");
        }
    }

    #[test]
    fn signing_pace_waits_for_nothing_until_the_server_refuses() {
        let mut pace = SigningPace::after_first_refusal(PACE_PER_SEC, PACE_BURST);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        }
        // Refused: the server's bucket is empty, so the next batch waits its own refill.
        pace.refused(t0);
        assert_eq!(pace.reserve(400, t0), Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(pace.reserve(200, t1), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_pace_sleeps_only_once_refused() {
        let pace = Pace::default();
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        assert!(pace.wait(5000, &cancel).await);
        assert_eq!(Instant::now(), t0, "full speed before any refusal");
        pace.refused();
        assert!(pace.wait(400, &cancel).await);
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        cancel.cancel();
        assert!(!pace.wait(400, &cancel).await, "cancelled while waiting");
    }
}
