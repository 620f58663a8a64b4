//! When to renew and when to retry: pure functions of the certificate's validity and of `now`
//! (so they are tested without sleeping), and the backoff every agent loop uses against the
//! server.

use std::time::Duration;

use rand::Rng;

/// The refresh point moves by up to this fraction of the half-life either way, so SVIDs
/// minted together do not all come back together.
pub(crate) const JITTER: f64 = 0.1;

/// Upper bound on a rotation loop's sleep, so a clock jump is noticed.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Unix seconds at which a just-minted SVID is renewed. Its life is counted from `now`, not
/// from NotBefore: the server backdates NotBefore to absorb clock skew, and with short TTLs
/// half of the backdated window may already be over, which would re-mint in a tight loop.
pub(crate) fn fresh_refresh_at(not_before: i64, not_after: i64, now: i64, jitter: f64) -> i64 {
    refresh_at(not_before.max(now), not_after, jitter)
}

/// Unix seconds at which an SVID valid from `not_before` to `not_after` is renewed: at half of
/// its lifetime, moved by `jitter` (clamped to ±[`JITTER`]) times the half-life.
pub(crate) fn refresh_at(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let half = (not_after - not_before).max(0) as f64 / 2.0;
    let jitter = jitter.clamp(-JITTER, JITTER);
    not_before + (half + half * jitter).round() as i64
}

/// A random jitter in ±[`JITTER`].
pub(crate) fn random_jitter() -> f64 {
    rand::rng().random_range(-JITTER..=JITTER)
}

/// How long to sleep until the earliest refresh or retry (unix seconds), at most [`MAX_SLEEP`].
pub(crate) fn next_wake(
    refresh_at: impl Iterator<Item = i64>,
    retry_at: impl Iterator<Item = i64>,
    now: i64,
) -> Duration {
    refresh_at
        .chain(retry_at)
        .min()
        .map(|at| Duration::from_secs((at - now).max(0) as u64))
        .unwrap_or(MAX_SLEEP)
        .min(MAX_SLEEP)
}

/// Exponential backoff with ±20 % jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// 1 s doubling up to 30 s: what every agent loop uses against the server.
    pub(crate) fn server() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// 1 s doubling up to 4 s: the sync loop's after the server said it is shutting down
    /// (it is expected back within seconds; SPIRE's agent retries its sync every 5 s).
    pub(crate) fn server_restart() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(4))
    }

    /// The next delay (the un-jittered delays double from `min` up to `max`).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_is_half_life_with_bounded_jitter() {
        // (not_before, not_after, jitter, expected)
        let table = [
            (1000, 4600, 0.0, 2800),   // 1 h SVID: half-life 1800 s
            (1000, 4600, 0.1, 2980),   // +10 % of the half-life
            (1000, 4600, -0.1, 2620),  // -10 %
            (1000, 4600, 0.5, 2980),   // clamped to +10 %
            (1000, 4600, -7.0, 2620),  // clamped to -10 %
            (0, 86_400, 0.05, 45_360), // 24 h
            (500, 500, 0.1, 500),      // zero lifetime: now
            (500, 400, 0.0, 500),      // inverted window: treated as zero
        ];
        for (nb, na, jitter, want) in table {
            assert_eq!(refresh_at(nb, na, jitter), want, "{nb} {na} {jitter}");
        }
    }

    #[test]
    fn a_fresh_svid_lives_from_now_not_from_its_backdated_not_before() {
        // A 6 s SVID whose NotBefore the server backdated by 10 s: renewed 3 s from now, not
        // "2 s ago" (which would re-mint at once, again and again).
        assert_eq!(fresh_refresh_at(990, 1006, 1000, 0.0), 1003);
        // Not backdated (or clocks ahead): the same as refresh_at.
        assert_eq!(
            fresh_refresh_at(1000, 4600, 990, 0.0),
            refresh_at(1000, 4600, 0.0)
        );
    }

    #[test]
    fn next_wake_is_the_earliest_deadline_capped() {
        let secs = |refresh: &[i64], retry: &[i64]| {
            next_wake(refresh.iter().copied(), retry.iter().copied(), 1000).as_secs()
        };
        assert_eq!(secs(&[1030, 1010], &[1020]), 10);
        assert_eq!(secs(&[1030], &[1005]), 5);
        assert_eq!(secs(&[900], &[]), 0, "overdue: now");
        assert_eq!(secs(&[], &[]), MAX_SLEEP.as_secs(), "nothing to do");
        assert_eq!(secs(&[100_000], &[]), MAX_SLEEP.as_secs(), "capped");
    }

    #[test]
    fn random_jitter_stays_in_bounds() {
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-JITTER..=JITTER).contains(&j));
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let delays: Vec<f64> = (0..8).map(|_| b.next_delay().as_secs_f64()).collect();
        let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for (d, base) in delays.iter().zip(bases) {
            assert!(
                *d >= base * 0.8 - 1e-9 && *d <= base * 1.2 + 1e-9,
                "{d} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
