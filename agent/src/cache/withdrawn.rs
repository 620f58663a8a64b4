//! Template instances the server no longer signs, withdrawn from the cache so that no workload
//! keeps being served them (issue 17: an agent holds only the identities of its own node's
//! pods).
//!
//! - A pod that left this node (deleted, terminated, bound elsewhere), as the server says on
//!   the sync stream: its demand is forgotten, every instance no other pod wants is dropped,
//!   and its workloads are given no template instance from then on
//!   ([`Snapshot::matching_templates`]); their streams get an update without it, or "no
//!   identity issued" when nothing is left, as when an entry is deleted.
//! - An instance the server refused (`PermissionDenied`): dropped and recorded in
//!   [`Snapshot::refused`] until the server signs it again, so streams stop sending it.

use std::sync::Arc;

use super::rendered::IDLE;
use super::{Cache, RenderedKey, Snapshot};

impl Cache {
    /// Forgets the pods `uids` at `now` (Unix seconds): drops the template instances no other
    /// pod wants and gives those pods' workloads none from now on. Returns what was dropped.
    pub fn forget_pods(&self, uids: &[String], now: i64) -> Vec<RenderedKey> {
        if uids.is_empty() {
            return Vec::new();
        }
        let demand = self.demand();
        let orphaned = demand.forget_pods(uids, now);
        let cutoff = now - IDLE.as_secs() as i64;
        self.tx.send_modify(|current| {
            let mut gone_pods = (*current.gone_pods).clone();
            // A pod gone this long has no process left to ask.
            gone_pods.retain(|_, at| *at >= cutoff);
            gone_pods.extend(uids.iter().map(|uid| (uid.clone(), now)));
            let mut rendered = (*current.rendered).clone();
            let mut expired = (*current.expired).clone();
            let mut refused = (*current.refused).clone();
            for key in &orphaned {
                rendered.remove(key);
                expired.remove(key);
                refused.remove(key);
            }
            *current = Arc::new(Snapshot {
                rendered: Arc::new(rendered),
                expired: Arc::new(expired),
                refused: Arc::new(refused),
                gone_pods: Arc::new(gone_pods),
                ..Snapshot::clone(current)
            });
        });
        orphaned
    }

    /// Withdraws the instance `key`, which the server refused to sign: its SVID is no longer
    /// served until the server signs it again. Returns whether it was not already refused
    /// (for one log line per refusal, not one per retry).
    pub fn refuse_rendered(&self, key: &RenderedKey) -> bool {
        let mut newly = false;
        self.tx.send_if_modified(|current| {
            let still_instance = current.identity(&key.entry_id).is_some_and(|i| {
                i.entry
                    .spiffe_id
                    .template()
                    .is_some_and(|t| t.matches(&key.spiffe_id))
            });
            newly = !current.refused.contains(key);
            if !still_instance || !newly {
                return false;
            }
            let mut rendered = (*current.rendered).clone();
            let mut expired = (*current.expired).clone();
            let mut refused = (*current.refused).clone();
            rendered.remove(key);
            expired.remove(key);
            refused.insert(key.clone());
            *current = Arc::new(Snapshot {
                rendered: Arc::new(rendered),
                expired: Arc::new(expired),
                refused: Arc::new(refused),
                ..Snapshot::clone(current)
            });
            true
        });
        newly
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::testing::{TestCa, selectors, template_entry};
    use crate::cache::{Cache, RenderedKey};
    use sigil_proto::SpiffeId;

    const NS_SA: &str = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";

    fn key(id: &str) -> RenderedKey {
        RenderedKey {
            entry_id: "t".into(),
            spiffe_id: SpiffeId::new(id).unwrap(),
        }
    }

    fn rendered(cache: &Cache) -> Vec<String> {
        let snapshot = cache.snapshot();
        snapshot
            .rendered
            .keys()
            .map(|k| k.spiffe_id.to_string())
            .collect()
    }

    /// Two replicas of one service account and a lone pod on this node: the lone pod gone, its
    /// instance goes; one replica gone, theirs stays for the other, and only the gone pod's
    /// workloads are given no template instance.
    #[test]
    fn gone_pods_drop_only_svids_no_other_pod_wants() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![template_entry("t", NS_SA, &["k8s:ns"], 1)]);
        let api = "spiffe://example.org/ns/a/sa/api";
        let batch = "spiffe://example.org/ns/a/sa/batch";
        let demand = cache.demand();
        demand.want(key(api), Some("replica-1"), 100);
        demand.want(key(api), Some("replica-2"), 100);
        demand.want(key(batch), Some("lone"), 100);
        assert!(
            cache
                .set_rendered_svids(vec![(key(api), ca.svid(api)), (key(batch), ca.svid(batch))])
                .is_empty()
        );

        assert_eq!(cache.forget_pods(&["lone".into()], 200), [key(batch)]);
        assert_eq!(rendered(&cache), [api]);
        assert_eq!(cache.forget_pods(&["replica-1".into()], 210), []);
        assert_eq!(rendered(&cache), [api]);
        assert_eq!(demand.pod_for(&key(api)).as_deref(), Some("replica-2"));

        let pod = |uid: &str| selectors(&["k8s:ns:a", "k8s:sa:api", &format!("k8s:pod-uid:{uid}")]);
        let snapshot = cache.snapshot();
        assert!(snapshot.matching_templates(&pod("replica-1")).is_empty());
        assert_eq!(snapshot.matching_templates(&pod("replica-2")).len(), 1);
        // A workload outside Kubernetes is not a pod: unaffected.
        assert_eq!(
            snapshot
                .matching_templates(&selectors(&["k8s:ns:a", "k8s:sa:api"]))
                .len(),
            1
        );

        assert_eq!(cache.forget_pods(&["replica-2".into()], 220), [key(api)]);
        assert!(rendered(&cache).is_empty());
    }

    #[test]
    fn a_refused_instance_is_withdrawn_until_signed_again() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![template_entry("t", NS_SA, &["k8s:ns"], 1)]);
        let api = "spiffe://example.org/ns/a/sa/api";
        assert!(
            cache
                .set_rendered_svids(vec![(key(api), ca.svid(api))])
                .is_empty()
        );
        assert!(cache.refuse_rendered(&key(api)));
        assert!(!cache.refuse_rendered(&key(api)), "said once");
        let snapshot = cache.snapshot();
        assert!(snapshot.rendered.is_empty());
        assert!(snapshot.refused.contains(&key(api)));
        // Signed again: served again.
        assert!(
            cache
                .set_rendered_svids(vec![(key(api), ca.svid(api))])
                .is_empty()
        );
        assert!(cache.snapshot().refused.is_empty());
        assert_eq!(rendered(&cache), [api]);
        // The entry deleted: nothing left to record.
        assert!(cache.refuse_rendered(&key(api)));
        cache.remove_entries(["t"]);
        assert!(cache.snapshot().refused.is_empty());
    }
}
