//! Which registration entries an agent may have, by SPIRE's rule:
//! (a) entries whose parent is the agent's own ID;
//! (b) node-alias entries (parent `spiffe://<td>/spire/server`) whose selectors are a subset of
//!     the agent's node selectors;
//! (c) recursively, entries whose parent is the SPIFFE ID of an entry it may have.
//!
//! The set is computed with the datastore's indexed queries, iterating to a fixed point, and
//! cached per agent keyed by the datastore's latest entry revision, so the mint calls that follow
//! a sync do not recompute it.
//!
//! An entry in the reserved namespace ([`RegistrationEntry::is_reserved`]), which create and
//! update refuse but a datastore from before that check may hold, is left out with a WARN:
//! never synced, never minted, and never a parent (an old entry for another agent's ID would
//! otherwise pull that agent's entries in through rule (c)).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use sigil_proto::{RegistrationEntry, Selector, SpiffeId, TrustDomain};

use crate::datastore::{Datastore, DatastoreError, EntryFilter, SelectorMatch};

/// Page size for the node-alias query.
const ALIAS_PAGE: u32 = 1000;
/// Past this many cached agents the cache starts over, bounding memory; a miss only costs a
/// recomputation.
const MAX_CACHED_AGENTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// The entries one agent may have, as of `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedEntries {
    /// Every change up to this entry revision is reflected.
    pub revision: i64,
    entries: HashMap<String, RegistrationEntry>,
}

impl AuthorizedEntries {
    /// A set as [`AuthorizationCache::authorized`] would return it.
    #[cfg(test)]
    pub(crate) fn new(revision: i64, entries: impl IntoIterator<Item = RegistrationEntry>) -> Self {
        Self {
            revision,
            entries: entries.into_iter().map(|e| (e.id.clone(), e)).collect(),
        }
    }

    pub fn get(&self, entry_id: &str) -> Option<&RegistrationEntry> {
        self.entries.get(entry_id)
    }

    pub fn contains(&self, entry_id: &str) -> bool {
        self.entries.contains_key(entry_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in ID order (stable pages for the sync stream).
    pub fn sorted(&self) -> Vec<&RegistrationEntry> {
        let mut v: Vec<_> = self.entries.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// Computes the authorized set for an agent from the datastore.
pub async fn authorized_entries(
    datastore: &Datastore,
    trust_domain: &TrustDomain,
    agent_id: &SpiffeId,
    node_selectors: &[Selector],
) -> Result<HashMap<String, RegistrationEntry>, AuthorizationError> {
    let mut entries: HashMap<String, RegistrationEntry> = HashMap::new();
    // Parents already expanded: guards against cycles (an entry parented to its own
    // descendant) and repeated work when several entries share a SPIFFE ID.
    let mut expanded: HashSet<SpiffeId> = HashSet::new();
    expanded.insert(agent_id.clone());
    let mut found = datastore
        .list_entries_by_parents(std::slice::from_ref(agent_id))
        .await?;
    if !node_selectors.is_empty() {
        let filter = EntryFilter {
            parent_id: Some(trust_domain.server_id()),
            selectors: Some((node_selectors.to_vec(), SelectorMatch::Subset)),
            ..EntryFilter::default()
        };
        let mut token: Option<String> = None;
        loop {
            let (page, next) = datastore
                .list_entries(&filter, ALIAS_PAGE, token.as_deref())
                .await?;
            found.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
    }
    loop {
        let mut frontier = Vec::new();
        for e in found {
            if e.is_reserved() {
                tracing::warn!(
                    entry_id = %e.id,
                    spiffe_id = %e.spiffe_id,
                    parent_id = %e.parent_id,
                    agent_id = %agent_id,
                    "registration entry in the reserved namespace /spire/* is not served; delete it"
                );
                continue;
            }
            // Templates are never parents, so nothing is nested under them.
            if let Some(id) = e.spiffe_id.fixed()
                && !expanded.contains(id)
                && !frontier.contains(id)
            {
                frontier.push(id.clone());
            }
            entries.insert(e.id.clone(), e);
        }
        if frontier.is_empty() {
            return Ok(entries);
        }
        expanded.extend(frontier.iter().cloned());
        found = datastore.list_entries_by_parents(&frontier).await?;
    }
}

struct Cached {
    selectors: Vec<Selector>,
    entries: Arc<AuthorizedEntries>,
}

/// Per-agent cache of [`AuthorizedEntries`], valid while the datastore's latest entry revision
/// and the agent's node selectors are unchanged.
pub struct AuthorizationCache {
    datastore: Datastore,
    trust_domain: TrustDomain,
    cache: Mutex<HashMap<SpiffeId, Cached>>,
}

impl std::fmt::Debug for AuthorizationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationCache")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl AuthorizationCache {
    pub fn new(datastore: Datastore, trust_domain: TrustDomain) -> Self {
        Self {
            datastore,
            trust_domain,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The agent's authorized entries as of (at least) the latest revision.
    pub async fn authorized(
        &self,
        agent_id: &SpiffeId,
        node_selectors: &[Selector],
    ) -> Result<Arc<AuthorizedEntries>, AuthorizationError> {
        // Read the revision first: the set computed afterwards reflects at least it, so caching
        // it under this revision is never stale.
        let revision = self.datastore.latest_entry_revision().await?;
        if let Some(c) = self.lock().get(agent_id)
            && c.entries.revision == revision
            && c.selectors == node_selectors
        {
            return Ok(c.entries.clone());
        }
        let entries = authorized_entries(
            &self.datastore,
            &self.trust_domain,
            agent_id,
            node_selectors,
        )
        .await?;
        let entries = Arc::new(AuthorizedEntries { revision, entries });
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED_AGENTS {
            cache.clear();
        }
        cache.insert(
            agent_id.clone(),
            Cached {
                selectors: node_selectors.to_vec(),
                entries: entries.clone(),
            },
        );
        Ok(entries)
    }

    /// Drops an agent's cached set (eviction).
    pub fn forget(&self, agent_id: &SpiffeId) {
        self.lock().remove(agent_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, Cached>> {
        // Each insert or remove is one call on the map, so a poisoned lock still holds a
        // consistent map.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use sigil_proto::EntrySpiffeId;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn id(path: &str) -> SpiffeId {
        SpiffeId::from_path(&td(), path).unwrap()
    }

    fn sel(s: &str) -> Selector {
        let (t, v) = s.split_once(':').unwrap();
        Selector::from_parts(t, v).unwrap()
    }

    fn entry(spiffe_id: &str, parent: &SpiffeId, selectors: &[&str]) -> RegistrationEntry {
        RegistrationEntry::new(
            id(spiffe_id),
            parent.clone(),
            selectors.iter().map(|s| sel(s)).collect(),
        )
    }

    async fn datastore(dir: &tempfile::TempDir) -> Datastore {
        Datastore::open("datastore.sqlite3", dir.path())
            .await
            .unwrap()
    }

    fn ids(m: &HashMap<String, RegistrationEntry>) -> HashSet<String> {
        m.values()
            .map(|e| e.spiffe_id.fixed().expect("a fixed ID").path().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn own_alias_and_descendants_but_not_others() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir).await;
        let agent = id("/spire/agent/join_token/a");
        let other = id("/spire/agent/join_token/b");
        let server = td().server_id();
        ds.create_entries(vec![
            entry("/own", &agent, &["unix:uid:1"]),
            entry("/alias", &server, &["k8s_psat:cluster:c1"]),
            entry(
                "/alias-too-specific",
                &server,
                &["k8s_psat:cluster:c1", "k8s_psat:x:y"],
            ),
            entry("/under-alias", &id("/alias"), &["unix:uid:2"]),
            entry("/under-under", &id("/under-alias"), &["unix:uid:3"]),
            entry("/under-own", &id("/own"), &["unix:uid:4"]),
            entry("/theirs", &other, &["unix:uid:1"]),
            entry("/under-theirs", &id("/theirs"), &["unix:uid:1"]),
        ])
        .await
        .unwrap();
        let got = authorized_entries(&ds, &td(), &agent, &[sel("k8s_psat:cluster:c1")])
            .await
            .unwrap();
        let want: HashSet<String> = [
            "/own",
            "/alias",
            "/under-alias",
            "/under-under",
            "/under-own",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(ids(&got), want);

        // Without node selectors the alias (and what hangs under it) is not reachable.
        let got = authorized_entries(&ds, &td(), &agent, &[]).await.unwrap();
        let want: HashSet<String> = ["/own", "/under-own"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(ids(&got), want);
    }

    /// Entries stored before reserved IDs were refused (written straight to the datastore
    /// here, as an old server did): neither given to the agent nor followed as parents.
    #[tokio::test]
    async fn reserved_entries_from_an_old_datastore_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir).await;
        let agent = id("/spire/agent/join_token/a");
        let other = id("/spire/agent/join_token/b");
        let mut template = entry("/unused", &agent, &["unix:user"]);
        template.spiffe_id =
            EntrySpiffeId::Template("spiffe://example.org/spire/{unix:user}".parse().unwrap());
        ds.create_entries(vec![
            entry("/own", &agent, &["unix:uid:1"]),
            entry("/spire/server", &agent, &["unix:uid:1"]),
            // The agent posing as agent b: would pull in b's entries through rule (c).
            entry("/spire/agent/join_token/b", &agent, &["unix:uid:1"]),
            entry("/theirs", &other, &["unix:uid:1"]),
            template,
        ])
        .await
        .unwrap();
        let got = authorized_entries(&ds, &td(), &agent, &[]).await.unwrap();
        assert_eq!(ids(&got), HashSet::from(["/own".to_owned()]));
        // Agent b itself still gets its own entries.
        let got = authorized_entries(&ds, &td(), &other, &[]).await.unwrap();
        assert_eq!(ids(&got), HashSet::from(["/theirs".to_owned()]));
    }

    #[tokio::test]
    async fn cycles_terminate() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir).await;
        let agent = id("/spire/agent/x");
        ds.create_entries(vec![
            entry("/a", &agent, &["unix:uid:1"]),
            entry("/b", &id("/a"), &["unix:uid:1"]),
            entry("/a", &id("/b"), &["unix:uid:2"]),
        ])
        .await
        .unwrap();
        let got = authorized_entries(&ds, &td(), &agent, &[]).await.unwrap();
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn cache_follows_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir).await;
        let agent = id("/spire/agent/x");
        let cache = AuthorizationCache::new(ds.clone(), td());
        ds.create_entries(vec![entry("/a", &agent, &["unix:uid:1"])])
            .await
            .unwrap();
        let first = cache.authorized(&agent, &[]).await.unwrap();
        let again = cache.authorized(&agent, &[]).await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "same revision: served from cache"
        );
        assert_eq!(first.len(), 1);
        ds.create_entries(vec![entry("/b", &agent, &["unix:uid:1"])])
            .await
            .unwrap();
        let after = cache.authorized(&agent, &[]).await.unwrap();
        assert_eq!(after.len(), 2);
        assert!(after.revision > first.revision);
    }
}
