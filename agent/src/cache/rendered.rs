//! Demand for X509-SVIDs of identity-template entries. A template entry's SPIFFE ID depends
//! on the workload, so its SVIDs are not pre-minted: the Workload API records here which
//! (entry, rendered ID) pairs workloads ask for, rotation mints and refreshes those, and pairs
//! nobody asked for in [`IDLE`] are dropped so the set stays bounded by live workloads.
//!
//! Each pair also remembers the pods that asked for it (their `k8s:pod-uid` selector), with
//! when each last asked: the server signs an instance reached through a node alias only for a
//! pod the Kubernetes API binds to this node, so each mint names the pod that asked most
//! recently ([`TemplateDemand::pod_for`]). Several pods may render one ID (replicas of a
//! service account on one node): when the server says a pod is gone, only the pairs no other
//! pod wants are dropped, and a gone pod is never asked for again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sigil_proto::{Selector, SpiffeId};
use tokio::sync::Notify;

/// A rendered SVID nobody asked for in this long is dropped (streams re-ask on every update).
pub const IDLE: Duration = Duration::from_secs(3600);

/// One template entry rendered for one workload's selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RenderedKey {
    pub entry_id: String,
    pub spiffe_id: SpiffeId,
}

/// The UID of the pod a workload runs in: its `k8s:pod-uid:<uid>` selector, if it has one.
pub fn pod_uid(selectors: &[Selector]) -> Option<&str> {
    selectors
        .iter()
        .filter(|s| s.kind() == "k8s")
        .find_map(|s| s.value().strip_prefix("pod-uid:"))
        .filter(|uid| !uid.is_empty())
}

/// Who wants one rendered ID.
#[derive(Debug, Default)]
struct Wanted {
    /// When anyone last asked (Unix seconds).
    at: i64,
    /// The pods that asked, by UID, with when each last asked.
    pods: HashMap<String, i64>,
}

#[derive(Debug, Default)]
struct State {
    wanted: HashMap<RenderedKey, Wanted>,
    /// Pods the server said are gone, with when it said so: never wanted again (pod UIDs are
    /// not reused), forgotten after [`IDLE`].
    gone: HashMap<String, i64>,
}

/// What workloads asked for, with when they last asked (Unix seconds) and from which pods.
#[derive(Debug, Default)]
pub struct TemplateDemand {
    state: Mutex<State>,
    added: Notify,
}

impl TemplateDemand {
    /// Records that a workload, in pod `pod_uid` if it runs in one, wants `key` at `now`;
    /// wakes rotation when the key is new. A pod the server said is gone wants nothing.
    pub fn want(&self, key: RenderedKey, pod_uid: Option<&str>, now: i64) {
        let mut state = self.lock();
        if pod_uid.is_some_and(|uid| state.gone.contains_key(uid)) {
            return;
        }
        let mut added = false;
        let wanted = state.wanted.entry(key).or_insert_with(|| {
            added = true;
            Wanted::default()
        });
        wanted.at = now;
        if let Some(uid) = pod_uid {
            wanted.pods.insert(uid.to_owned(), now);
        }
        drop(state);
        if added {
            self.added.notify_one();
        }
    }

    /// Everything currently wanted.
    pub fn keys(&self) -> Vec<RenderedKey> {
        self.lock().wanted.keys().cloned().collect()
    }

    /// The pod to mint `key` for: of the pods that want it, the one that asked last (ties
    /// broken by UID, so the choice is stable). `None` when no pod asked for it.
    pub fn pod_for(&self, key: &RenderedKey) -> Option<String> {
        self.pods_for(key).into_iter().next()
    }

    /// Every pod that wants `key`, the one that asked last first.
    pub fn pods_for(&self, key: &RenderedKey) -> Vec<String> {
        let state = self.lock();
        let Some(wanted) = state.wanted.get(key) else {
            return Vec::new();
        };
        let mut pods: Vec<(&String, i64)> = wanted.pods.iter().map(|(u, &at)| (u, at)).collect();
        pods.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        pods.into_iter().map(|(uid, _)| uid.clone()).collect()
    }

    /// Forgets that pod `pod_uid` wants `key` (the server would not sign it for that pod);
    /// the pod is asked for again if its workload asks again.
    pub fn refused_for(&self, key: &RenderedKey, pod_uid: &str) {
        if let Some(wanted) = self.lock().wanted.get_mut(key) {
            wanted.pods.remove(pod_uid);
        }
    }

    /// Forgets the pods in `uids`, which the server says left this node, at `now`; returns the
    /// keys that only those pods wanted, now forgotten too. Keys no pod asked for (a workload
    /// outside Kubernetes) stay.
    pub fn forget_pods(&self, uids: &[String], now: i64) -> Vec<RenderedKey> {
        let mut state = self.lock();
        for uid in uids {
            state.gone.insert(uid.clone(), now);
        }
        let mut orphaned = Vec::new();
        for (key, wanted) in &mut state.wanted {
            let before = wanted.pods.len();
            wanted.pods.retain(|uid, _| !uids.contains(uid));
            if wanted.pods.is_empty() && before > 0 {
                orphaned.push(key.clone());
            }
        }
        for key in &orphaned {
            state.wanted.remove(key);
        }
        orphaned
    }

    /// Forgets and returns the keys last asked for before `now - idle`; forgets pods that
    /// stopped asking for a key, and gone pods, on the same cutoff.
    pub fn forget_idle(&self, now: i64, idle: Duration) -> Vec<RenderedKey> {
        let cutoff = now - idle.as_secs() as i64;
        let mut state = self.lock();
        let gone: Vec<RenderedKey> = state
            .wanted
            .iter()
            .filter(|(_, w)| w.at < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            state.wanted.remove(k);
        }
        for wanted in state.wanted.values_mut() {
            wanted.pods.retain(|_, at| *at >= cutoff);
        }
        state.gone.retain(|_, at| *at >= cutoff);
        gone
    }

    /// Resolves when a new key was wanted since the last call (a permit is kept if nobody
    /// was waiting, so no wake-up is lost).
    pub async fn added(&self) {
        self.added.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under a panic in another holder: every write is one call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
        d.want(key("t", "spiffe://td/a"), None, 100);
        d.want(key("t", "spiffe://td/b"), None, 100);
        d.want(key("t", "spiffe://td/a"), None, 3000);
        let gone = d.forget_idle(3800, IDLE);
        assert_eq!(gone, [key("t", "spiffe://td/b")]);
        assert_eq!(d.keys(), [key("t", "spiffe://td/a")]);
    }

    #[test]
    fn the_pod_that_asked_last_is_minted_for() {
        let d = TemplateDemand::default();
        let k = key("t", "spiffe://td/ns/a/sa/api");
        assert_eq!(d.pod_for(&k), None);
        d.want(k.clone(), Some("pod-1"), 100);
        d.want(k.clone(), Some("pod-2"), 200);
        assert_eq!(d.pod_for(&k).as_deref(), Some("pod-2"));
        d.want(k.clone(), Some("pod-1"), 300);
        assert_eq!(d.pods_for(&k), ["pod-1", "pod-2"]);
        // A workload outside a pod keeps the key wanted but names no pod.
        d.want(k.clone(), None, 400);
        assert_eq!(d.pod_for(&k).as_deref(), Some("pod-1"));
        // A pod the server would not sign for is skipped until it asks again.
        d.refused_for(&k, "pod-1");
        assert_eq!(d.pod_for(&k).as_deref(), Some("pod-2"));
        // A pod that stopped asking is forgotten with the idle cutoff, the key stays.
        d.want(k.clone(), Some("pod-3"), 4000);
        assert!(
            d.forget_idle(200 + IDLE.as_secs() as i64 + 1, IDLE)
                .is_empty()
        );
        assert_eq!(d.pods_for(&k), ["pod-3"]);
    }

    #[test]
    fn gone_pods_drop_only_keys_no_other_pod_wants() {
        let d = TemplateDemand::default();
        let shared = key("t", "spiffe://td/ns/a/sa/api");
        let alone = key("t", "spiffe://td/ns/a/sa/batch");
        let no_pod = key("t", "spiffe://td/uid/1");
        d.want(shared.clone(), Some("pod-1"), 100);
        d.want(shared.clone(), Some("pod-2"), 110);
        d.want(alone.clone(), Some("pod-2"), 120);
        d.want(no_pod.clone(), None, 130);

        let dropped = d.forget_pods(&["pod-2".into(), "pod-9".into()], 200);
        assert_eq!(dropped, std::slice::from_ref(&alone));
        let mut keys = d.keys();
        keys.sort();
        assert_eq!(keys, [shared.clone(), no_pod]);
        // The live pod is minted for, even though the gone one asked last.
        assert_eq!(d.pod_for(&shared).as_deref(), Some("pod-1"));

        // A gone pod's workload asking again (it may run until killed) wants nothing.
        d.want(alone.clone(), Some("pod-2"), 210);
        d.want(shared.clone(), Some("pod-2"), 210);
        assert!(!d.keys().contains(&alone));
        assert_eq!(d.pods_for(&shared), ["pod-1"]);

        // The last pod gone: the key goes too.
        assert_eq!(d.forget_pods(&["pod-1".into()], 220), [shared]);
    }

    #[test]
    fn pod_uid_is_read_from_the_k8s_selector() {
        let s =
            |v: &[&str]| -> Vec<Selector> { v.iter().map(|s| Selector::new(s).unwrap()).collect() };
        assert_eq!(
            pod_uid(&s(&["k8s:ns:a", "k8s:pod-uid:1234-ab", "unix:uid:0"])),
            Some("1234-ab")
        );
        assert_eq!(pod_uid(&s(&["k8s:ns:a", "unix:uid:0"])), None);
        assert_eq!(pod_uid(&s(&["docker:pod-uid:1"])), None);
    }
}
