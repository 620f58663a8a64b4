//! Demand for X509-SVIDs of identity-template entries. A template entry's SPIFFE ID depends
//! on the workload, so its SVIDs are not pre-minted: the Workload API records here which
//! (entry, rendered ID) pairs workloads ask for, rotation mints and refreshes those, and pairs
//! nobody asked for in [`IDLE`] are dropped so the set stays bounded by live workloads.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sigil_proto::SpiffeId;
use tokio::sync::Notify;

/// A rendered SVID nobody asked for in this long is dropped (streams re-ask on every update).
pub const IDLE: Duration = Duration::from_secs(3600);

/// One template entry rendered for one workload's selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RenderedKey {
    pub entry_id: String,
    pub spiffe_id: SpiffeId,
}

/// What workloads asked for, with when they last asked (Unix seconds).
#[derive(Debug, Default)]
pub struct TemplateDemand {
    wanted: Mutex<HashMap<RenderedKey, i64>>,
    added: Notify,
}

impl TemplateDemand {
    /// Records that a workload wants `key` at `now`; wakes rotation when it is new.
    pub fn want(&self, key: RenderedKey, now: i64) {
        if self.lock().insert(key, now).is_none() {
            self.added.notify_one();
        }
    }

    /// Everything currently wanted.
    pub fn keys(&self) -> Vec<RenderedKey> {
        self.lock().keys().cloned().collect()
    }

    /// Forgets and returns the keys last asked for before `now - idle`.
    pub fn forget_idle(&self, now: i64, idle: Duration) -> Vec<RenderedKey> {
        let cutoff = now - idle.as_secs() as i64;
        let mut wanted = self.lock();
        let gone: Vec<RenderedKey> = wanted
            .iter()
            .filter(|(_, at)| **at < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            wanted.remove(k);
        }
        gone
    }

    /// Resolves when a new key was wanted since the last call (a permit is kept if nobody
    /// was waiting, so no wake-up is lost).
    pub async fn added(&self) {
        self.added.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RenderedKey, i64>> {
        // The map stays consistent under a panic in another holder: every write is one call.
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(e: &str, id: &str) -> RenderedKey {
        RenderedKey {
            entry_id: e.into(),
            spiffe_id: SpiffeId::new(id).unwrap(),
        }
    }

    #[test]
    fn idle_keys_are_forgotten_and_asking_again_refreshes() {
        let d = TemplateDemand::default();
        d.want(key("t", "spiffe://td/a"), 100);
        d.want(key("t", "spiffe://td/b"), 100);
        d.want(key("t", "spiffe://td/a"), 3000);
        let gone = d.forget_idle(3800, IDLE);
        assert_eq!(gone, [key("t", "spiffe://td/b")]);
        assert_eq!(d.keys(), [key("t", "spiffe://td/a")]);
    }
}
