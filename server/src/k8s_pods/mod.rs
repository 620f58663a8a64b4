//! The server's own view of the pods of each `k8s_psat` cluster, so that a template instance
//! (or a fixed entry naming a pod) is signed for an agent only for a pod the Kubernetes API binds
//! to that agent's node, without an API call per mint (issue 17).
//!
//! One [`PodCache`] per cluster, fed by a watch on every namespace's pods bound to a node
//! ([`watch_pods`], through the cluster's own client and kubeconfig: the same identity as its
//! TokenReviews, which needs `list` and `watch` on pods). It keeps [`PodFacts`], indexed by UID
//! and by node, and publishes each pod that leaves a node ([`GonePod`]: deleted, terminated,
//! bound elsewhere) so that the agent API can tell that node's agent.
//!
//! Freshness: until the first list completes, and from [`STALE_AFTER`] after the watch broke
//! until a list succeeds again, the cache refuses to answer ([`CacheError`]), so no instance is
//! signed from data older than that bound. A watch that hangs without an error is ended by its
//! own timeout (`watch::WATCH_TIMEOUT_SECS`, plus kube's 5 s idle margin) and then counts as
//! broken when it cannot be re-established.

mod facts;
mod store;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

pub use facts::{PodFacts, PodPhase, is_vouched};
pub use store::GonePod;
pub use watch::watch_pods;

use store::Store;

/// How long the pod watch may stay broken before the cache refuses to vouch for any pod. Half a
/// minute covers an API server restart or a leader change without refusing mints, and bounds
/// how long a pod deleted during an outage can still get SVIDs.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Removals a slow sync stream may fall behind by before it misses some (it then logs it; the
/// server still refuses to mint for those pods).
const GONE_BACKLOG: usize = 4096;

/// Why the cache cannot vouch for pods now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("the pod cache of cluster {cluster:?} has not yet listed the Kubernetes API's pods")]
    NotSynced { cluster: String },
    #[error(
        "the pod cache of cluster {cluster:?} is stale since {since} (the Kubernetes API watch has been broken for more than {}s)",
        STALE_AFTER.as_secs()
    )]
    Stale { cluster: String, since: String },
}

#[derive(Debug, Default)]
struct State {
    store: Store,
    /// A list has completed since start-up.
    synced: bool,
    /// When the watch broke, if it has not listed successfully since.
    broken_since: Option<SystemTime>,
}

/// The pods of one cluster, as the API last said (see the module docs).
pub struct PodCache {
    cluster: String,
    state: RwLock<State>,
    gone: broadcast::Sender<GonePod>,
}

impl fmt::Debug for PodCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodCache")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl PodCache {
    /// An empty cache that answers nothing until its first list.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            state: RwLock::default(),
            gone: broadcast::channel(GONE_BACKLOG).0,
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The pods, if the cache is fresh at `now`.
    pub fn view(&self, now: SystemTime) -> Result<PodView<'_>, CacheError> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if !state.synced {
            return Err(CacheError::NotSynced {
                cluster: self.cluster.clone(),
            });
        }
        if let Some(since) = state.broken_since
            && now.duration_since(since).unwrap_or_default() > STALE_AFTER
        {
            return Err(CacheError::Stale {
                cluster: self.cluster.clone(),
                since: humantime::format_rfc3339_seconds(since).to_string(),
            });
        }
        Ok(PodView(state))
    }

    /// Every pod that leaves a node from now on.
    pub fn subscribe_gone(&self) -> broadcast::Receiver<GonePod> {
        self.gone.subscribe()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, gone: impl IntoIterator<Item = GonePod>) {
        for g in gone {
            tracing::debug!(node = %g.node, pod_uid = %g.uid, "pod left its node");
            // No receiver (no agent of that cluster connected) is fine.
            let _ = self.gone.send(g);
        }
    }

    /// A pod added or changed; one no longer bound to a node is dropped.
    pub(crate) fn apply(&self, facts: Option<PodFacts>, uid: &str) {
        let gone = {
            let mut state = self.write();
            match facts {
                Some(f) => state.store.upsert(f),
                None => state.store.remove(uid),
            }
        };
        self.publish(gone);
    }

    /// A pod deleted.
    pub(crate) fn delete(&self, uid: &str) {
        let gone = self.write().store.remove(uid);
        self.publish(gone);
    }

    /// A complete list replaces the cache, which is fresh again.
    pub(crate) fn relisted(&self, listed: HashMap<String, PodFacts>) -> Relisted {
        let (gone, relisted) = {
            let mut state = self.write();
            let gone = state.store.replace(listed);
            let relisted = if !state.synced {
                Relisted::First
            } else if state.broken_since.is_some() {
                Relisted::Recovered
            } else {
                Relisted::Again
            };
            state.synced = true;
            state.broken_since = None;
            (gone, relisted)
        };
        self.publish(gone);
        relisted
    }

    /// The watch broke at `now`. Returns whether it was fine until then (the first failure of
    /// an outage).
    pub(crate) fn broken(&self, now: SystemTime) -> bool {
        let mut state = self.write();
        let first = state.broken_since.is_none();
        state.broken_since.get_or_insert(now);
        first
    }

    /// How many pods are kept.
    pub fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .store
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a completed list ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relisted {
    /// The first list since start-up.
    First,
    /// The first list after the watch broke.
    Recovered,
    /// A list while all was well (the watcher started over after a clean end).
    Again,
}

/// A read of a fresh [`PodCache`]: hold it only for one check (it blocks the watch's writes).
pub struct PodView<'a>(RwLockReadGuard<'a, State>);

impl PodView<'_> {
    pub fn pod(&self, uid: &str) -> Option<&PodFacts> {
        self.0.store.pod(uid)
    }

    /// The pods bound to `node`.
    pub fn pods_on<'b>(&'b self, node: &str) -> impl Iterator<Item = &'b PodFacts> + 'b {
        self.0.store.pods_on(node)
    }
}

/// The pod cache of each `k8s_psat` cluster, by cluster name; empty when the server has no
/// `k8s_psat` attestor.
#[derive(Debug, Clone, Default)]
pub struct PodCaches(Arc<HashMap<String, Arc<PodCache>>>);

impl PodCaches {
    pub fn new(caches: impl IntoIterator<Item = Arc<PodCache>>) -> Self {
        Self(Arc::new(
            caches
                .into_iter()
                .map(|c| (c.cluster().to_owned(), c))
                .collect(),
        ))
    }

    pub fn get(&self, cluster: &str) -> Option<&Arc<PodCache>> {
        self.0.get(cluster)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::facts::tests::facts;
    use super::*;

    fn listed(pods: &[PodFacts]) -> HashMap<String, PodFacts> {
        pods.iter().map(|f| (f.uid.clone(), f.clone())).collect()
    }

    #[test]
    fn answers_only_after_the_first_list() {
        let cache = PodCache::new("demo");
        let now = SystemTime::now();
        assert!(matches!(
            cache.view(now),
            Err(CacheError::NotSynced { cluster }) if cluster == "demo"
        ));
        assert_eq!(
            cache.relisted(listed(&[facts("ns", "a", "u1", "node-a")])),
            Relisted::First
        );
        let view = cache.view(now).unwrap();
        assert_eq!(view.pod("u1").unwrap().name, "a");
        assert_eq!(view.pods_on("node-a").count(), 1);
    }

    #[test]
    fn a_broken_watch_goes_stale_after_the_bound_until_a_relist() {
        let cache = PodCache::new("demo");
        cache.relisted(HashMap::new());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(cache.broken(t0));
        assert!(!cache.broken(t0 + Duration::from_secs(10)), "one outage");
        // Within the bound: still answers.
        assert!(cache.view(t0 + STALE_AFTER).is_ok());
        let err = cache
            .view(t0 + STALE_AFTER + Duration::from_secs(1))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "the pod cache of cluster \"demo\" is stale since 2027-01-15T08:00:00Z (the \
             Kubernetes API watch has been broken for more than 30s)"
        );
        assert_eq!(cache.relisted(HashMap::new()), Relisted::Recovered);
        assert_eq!(cache.relisted(HashMap::new()), Relisted::Again);
        assert!(cache.view(t0 + STALE_AFTER * 10).is_ok());
    }

    #[test]
    fn removals_are_published_to_subscribers() {
        let cache = PodCache::new("demo");
        let mut gone = cache.subscribe_gone();
        cache.relisted(listed(&[
            facts("ns", "a", "u1", "node-a"),
            facts("ns", "b", "u2", "node-b"),
        ]));
        cache.delete("u1");
        cache.apply(None, "u2");
        cache.apply(Some(facts("ns", "c", "u3", "node-a")), "u3");
        cache.relisted(HashMap::new());
        let got: Vec<(String, String)> = std::iter::from_fn(|| gone.try_recv().ok())
            .map(|g| (g.node, g.uid))
            .collect();
        assert_eq!(
            got,
            [
                ("node-a".to_owned(), "u1".to_owned()),
                ("node-b".to_owned(), "u2".to_owned()),
                ("node-a".to_owned(), "u3".to_owned()),
            ]
        );
        assert!(cache.is_empty());
    }
}
