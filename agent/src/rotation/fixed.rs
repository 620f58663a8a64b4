//! Fixed entries' X509-SVIDs, keyed by entry ID: every cached entry that is not a template gets
//! one ahead of any workload asking, and keeps it fresh. First issues are logged at INFO,
//! renewals at DEBUG (a 5 s TTL renews every ~2.5 s).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, info};

use super::Minting;
use super::mint::{Ask, mint_and_install};
use super::schedule::{random_jitter, refresh_at};
use super::workload::{Ledger, Minted, Outcome, Target};
use crate::cache::{Cache, Identity, Snapshot, pod_uid};
use crate::csr::KeyType;
use crate::ops::Metrics;
use crate::server_client::ServerConnection;
use crate::svid_store::leaf_facts;
use crate::taint::TaintedAuthorities;

/// The fixed entries of the cache, as the rotation loop's [`Target`].
#[derive(Debug)]
pub(super) struct FixedEntries {
    connection: Arc<ServerConnection>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    changes: watch::Receiver<Arc<Snapshot>>,
    key_type: KeyType,
}

impl FixedEntries {
    pub(super) fn new(m: &Minting) -> Self {
        Self {
            connection: m.connection.clone(),
            cache: m.cache.clone(),
            metrics: m.metrics.clone(),
            changes: m.cache.subscribe(),
            key_type: m.key_type,
        }
    }
}

impl Target for FixedEntries {
    type Key = String;
    type Due = Arc<Identity>;
    const WHAT: &'static str = "X509-SVIDs";

    fn key(due: &Arc<Identity>) -> &String {
        &due.entry.id
    }

    fn due(&mut self, ledger: &mut Ledger<String>, now: i64) -> Vec<Arc<Identity>> {
        self.changes.borrow_and_update();
        let snapshot = self.cache.snapshot();
        // Forget entries that left the cache.
        ledger
            .minted
            .retain(|id, _| snapshot.identity(id).is_some());
        ledger
            .retry_at
            .retain(|id, &mut at| snapshot.identity(id).is_some() && now < at);
        due(&snapshot, &mut ledger.minted, &ledger.retry_at, now)
    }

    async fn mint(&self, batch: &[Arc<Identity>]) -> Result<Outcome<String>, tonic::Status> {
        let first_issue: HashSet<&str> = batch
            .iter()
            .filter(|i| i.svid.is_none())
            .map(|i| i.entry.id.as_str())
            .collect();
        // Minted ahead of any workload: a pod is named only when the entry selects one.
        let asked = batch
            .iter()
            .map(|i| Ask {
                key: i.entry.id.clone(),
                revision: i.entry.revision,
                pod_uid: pod_uid(&i.entry.selectors).map(str::to_owned),
            })
            .collect();
        let outcome = mint_and_install(
            &self.connection,
            &self.metrics,
            self.key_type,
            asked,
            |svids| self.cache.set_svids(svids),
        )
        .await?;
        let issued = outcome
            .minted
            .iter()
            .filter(|(id, _)| first_issue.contains(id.as_str()))
            .count();
        if issued > 0 {
            info!(
                count = issued,
                "issued X509-SVIDs for entries that had none"
            );
        }
        if outcome.minted.len() > issued {
            debug!(count = outcome.minted.len() - issued, "renewed X509-SVIDs");
        }
        Ok(outcome)
    }

    async fn changed(&mut self) -> bool {
        self.changes.changed().await.is_ok()
    }
}

/// The entries whose SVID must be minted now: none yet, entry changed since minting, signed by
/// an authority the bundle says is tainted, or past the refresh point. Entries waiting in
/// `retry_at` are skipped until their time.
pub(super) fn due(
    snapshot: &Snapshot,
    minted: &mut HashMap<String, Minted>,
    retry_at: &HashMap<String, i64>,
    now: i64,
) -> Vec<Arc<Identity>> {
    let tainted = TaintedAuthorities::from_bundle(&snapshot.bundle);
    let mut out = Vec::new();
    for identity in &snapshot.identities {
        // Template entries are not pre-minted: their ID depends on the workload.
        if identity.entry.spiffe_id.template().is_some() {
            continue;
        }
        let id = &identity.entry.id;
        if retry_at.get(id).is_some_and(|&at| now < at) {
            continue;
        }
        let Some(svid) = &identity.svid else {
            out.push(identity.clone());
            continue;
        };
        if tainted.affects_chain(&svid.chain) {
            info!(entry_id = %id, "X509-SVID signed by a tainted authority; re-minting now");
            out.push(identity.clone());
            continue;
        }
        let known = minted
            .get(id)
            .copied()
            .filter(|m| m.expires_at == svid.expires_at);
        let m = match known {
            Some(m) => m,
            // An SVID we did not mint in this process (none today; kept for safety): learn
            // its window from the leaf, or re-mint it if the leaf cannot be read.
            None => match svid.chain.first().map(|leaf| leaf_facts(leaf)) {
                Some(Ok(facts)) => {
                    let m = Minted {
                        revision: identity.entry.revision,
                        expires_at: svid.expires_at,
                        refresh_at: refresh_at(facts.not_before, facts.not_after, random_jitter()),
                    };
                    minted.insert(id.clone(), m);
                    m
                }
                _ => {
                    out.push(identity.clone());
                    continue;
                }
            },
        };
        if m.revision != identity.entry.revision || now >= m.refresh_at {
            out.push(identity.clone());
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use sigil_proto::{RegistrationEntry, Selector, SpiffeId};

    use super::*;
    use crate::cache::CachedX509Svid;

    pub(in crate::rotation) fn entry(id: &str, revision: i64) -> RegistrationEntry {
        RegistrationEntry {
            id: id.into(),
            revision,
            ..RegistrationEntry::new(
                SpiffeId::new(&format!("spiffe://td/{id}")).unwrap(),
                SpiffeId::new("spiffe://td/spire/agent/x").unwrap(),
                vec![Selector::new("unix:uid:1").unwrap()],
            )
        }
    }

    fn cache_with_svid(id: &str) -> (Cache, i64) {
        let cache = Cache::new(sigil_proto::Bundle::new(
            sigil_proto::TrustDomain::new("td").unwrap(),
        ));
        cache.replace_entries(vec![entry(id, 1), entry("fresh", 1)]);
        let (cert, key) = crate::svid_store::tests::self_signed(&format!("spiffe://td/{id}"));
        let facts = leaf_facts(&cert).unwrap();
        cache
            .set_svid(
                id,
                CachedX509Svid {
                    chain: vec![cert],
                    private_key_pkcs8: key,
                    expires_at: facts.not_after,
                },
            )
            .unwrap();
        (cache, facts.not_after)
    }

    pub(in crate::rotation) fn ids(v: &[Arc<Identity>]) -> Vec<&str> {
        v.iter().map(|i| i.entry.id.as_str()).collect()
    }

    #[test]
    fn due_selects_missing_changed_and_refresh_time_svids() {
        let (cache, expires_at) = cache_with_svid("a");
        let snapshot = cache.snapshot();
        let mut minted = HashMap::new();
        minted.insert(
            "a".to_string(),
            Minted {
                revision: 1,
                expires_at,
                refresh_at: 100,
            },
        );
        let none = HashMap::new();
        // Before the refresh point only the entry without an SVID is due.
        assert_eq!(ids(&due(&snapshot, &mut minted, &none, 99)), ["fresh"]);
        // At the refresh point both are.
        assert_eq!(
            ids(&due(&snapshot, &mut minted, &none, 100)),
            ["a", "fresh"]
        );
        // An entry waiting for a retry is skipped until then.
        let retry = HashMap::from([("fresh".to_string(), 200)]);
        assert!(due(&snapshot, &mut minted, &retry, 99).is_empty());
        // A changed entry (new revision) is re-minted at once.
        cache.upsert_entries(vec![entry("a", 2)]);
        let snapshot = cache.snapshot();
        assert_eq!(ids(&due(&snapshot, &mut minted, &retry, 99)), ["a"]);
    }

    #[test]
    fn due_includes_svids_signed_by_a_tainted_authority() {
        let (cache, expires_at) = cache_with_svid("a");
        let mut minted = HashMap::from([(
            "a".to_string(),
            Minted {
                revision: 1,
                expires_at,
                refresh_at: 100,
            },
        )]);
        let none = HashMap::new();
        assert_eq!(
            ids(&due(&cache.snapshot(), &mut minted, &none, 99)),
            ["fresh"]
        );
        // The test SVID is self-signed: tainting it taints the chain's own authority.
        let chain = cache
            .snapshot()
            .identity("a")
            .unwrap()
            .svid
            .as_ref()
            .unwrap()
            .chain
            .clone();
        let mut bundle = (*cache.snapshot().bundle).clone();
        bundle.tainted_x509_authorities = vec![chain[0].clone()];
        cache.set_bundle(bundle);
        assert_eq!(
            ids(&due(&cache.snapshot(), &mut minted, &none, 99)),
            ["a", "fresh"]
        );
    }
}
