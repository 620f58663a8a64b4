//! Per-source-IP token bucket for node attestation (SPIRE: 1/s). Hand-written: the workspace
//! has no rate-limiting crate and this is a dozen lines.

use super::*;

/// A token bucket per source IP. Hand-written: the workspace has no rate-limiting crate and
/// this is a dozen lines; `allow` is a pure function of `now`, so it is tested without sleeping.
pub(super) struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Past this many tracked addresses, the full (idle) buckets are dropped.
const MAX_TRACKED_IPS: usize = 10_000;

impl RateLimiter {
    pub(super) fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        // Each call updates one bucket in one step, so a poisoned map is still consistent.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_IPS {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
