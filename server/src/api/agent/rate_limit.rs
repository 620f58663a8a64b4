//! Token buckets for the agent API: node attestation per source IP (SPIRE: 1/s) and signing
//! per calling agent (SPIRE: 500/s). Hand-written: the workspace has no rate-limiting crate
//! and this is a dozen lines; every decision is a pure function of `now`, so it is tested
//! without sleeping.

use std::hash::Hash;

use super::*;

/// A token bucket per key (a source IP, an agent's SPIFFE ID).
pub(super) struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

/// Past this many tracked keys, the full (idle) buckets are dropped.
const MAX_TRACKED_KEYS: usize = 10_000;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub(super) fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`.
    pub(super) fn allow(&self, key: &K, now: Instant) -> bool {
        self.take(key, 1, now).is_ok()
    }

    /// Takes `n` tokens for `key`, all or none. When the bucket holds fewer, nothing is taken
    /// and the error says how long until it holds `n` (never, for `n` above the burst: the
    /// caller bounds `n`).
    pub(super) fn take(&self, key: &K, n: usize, now: Instant) -> Result<(), Duration> {
        let n = n as f64;
        // Each call updates one bucket in one step, so a poisoned map is still consistent.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_KEYS {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = now;
        if *tokens >= n {
            *tokens -= n;
            Ok(())
        } else if n > self.burst {
            Err(Duration::MAX)
        } else {
            Err(Duration::from_secs_f64((n - *tokens) / self.per_sec))
        }
    }
}
