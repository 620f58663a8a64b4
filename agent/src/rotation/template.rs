//! Template entries' X509-SVIDs, keyed by the SPIFFE ID rendered for a workload: minted only
//! for the rendered IDs workloads ask for (see [`TemplateDemand`]), each for the pod that asked
//! last, kept fresh while they do, and dropped once nobody asked for [`IDLE`] or the server
//! refuses them (see `refused`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::debug;

use super::Minting;
use super::mint::{Ask, mint_and_install};
use super::refused::Refusals;
use super::workload::{Ledger, Minted, Outcome, Target};
use crate::cache::rendered::IDLE;
use crate::cache::{Cache, Identity, RenderedKey, Snapshot, TemplateDemand};
use crate::csr::KeyType;
use crate::ops::Metrics;
use crate::server_client::ServerConnection;
use crate::taint::TaintedAuthorities;

/// The rendered IDs workloads want, as the rotation loop's [`Target`].
#[derive(Debug)]
pub(super) struct TemplateInstances {
    connection: Arc<ServerConnection>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    changes: watch::Receiver<Arc<Snapshot>>,
    demand: Arc<TemplateDemand>,
    key_type: KeyType,
}

impl TemplateInstances {
    pub(super) fn new(m: &Minting) -> Self {
        Self {
            connection: m.connection.clone(),
            cache: m.cache.clone(),
            metrics: m.metrics.clone(),
            changes: m.cache.subscribe(),
            demand: m.cache.demand(),
            key_type: m.key_type,
        }
    }
}

impl Target for TemplateInstances {
    type Key = RenderedKey;
    type Due = (Arc<Identity>, RenderedKey);
    const WHAT: &'static str = "template X509-SVIDs";

    fn key(due: &(Arc<Identity>, RenderedKey)) -> &RenderedKey {
        &due.1
    }

    fn due(
        &mut self,
        ledger: &mut Ledger<RenderedKey>,
        now: i64,
    ) -> Vec<(Arc<Identity>, RenderedKey)> {
        self.changes.borrow_and_update();
        let idle = self.demand.forget_idle(now, IDLE);
        self.cache.remove_rendered(&idle);
        let wanted = self.demand.keys();
        // An instance installed while the last pod that wanted it went: nobody will.
        let wanted_set: HashSet<&RenderedKey> = wanted.iter().collect();
        let unwanted: Vec<RenderedKey> = self
            .cache
            .snapshot()
            .rendered
            .keys()
            .filter(|k| !wanted_set.contains(k))
            .cloned()
            .collect();
        self.cache.remove_rendered(&unwanted);
        let snapshot = self.cache.snapshot();
        ledger
            .minted
            .retain(|k, _| snapshot.rendered.contains_key(k));
        ledger
            .retry_at
            .retain(|k, &mut at| wanted.contains(k) && now < at);
        due_rendered(&snapshot, &wanted, &ledger.minted, &ledger.retry_at, now)
    }

    async fn mint(
        &self,
        batch: &[(Arc<Identity>, RenderedKey)],
    ) -> Result<Outcome<RenderedKey>, tonic::Status> {
        let asked = batch
            .iter()
            .map(|(identity, key)| Ask {
                key: key.clone(),
                revision: identity.entry.revision,
                pod_uid: self.demand.pod_for(key),
            })
            .collect();
        let refusals = Refusals {
            cache: &self.cache,
            demand: &self.demand,
            metrics: &self.metrics,
        };
        let outcome = refusals
            .mint(asked, |asked| {
                mint_and_install(
                    &self.connection,
                    &self.metrics,
                    self.key_type,
                    asked,
                    |svids| self.cache.set_rendered_svids(svids),
                )
            })
            .await?;
        if !outcome.minted.is_empty() {
            debug!(count = outcome.minted.len(), "minted template X509-SVIDs");
        }
        Ok(outcome)
    }

    async fn changed(&mut self) -> bool {
        tokio::select! {
            () = self.demand.added() => true,
            r = self.changes.changed() => r.is_ok(),
        }
    }
}

/// The rendered IDs of template entries whose X509-SVID must be minted now: wanted by a
/// workload and the entry still a template they instantiate, and none minted yet, entry
/// changed since minting, or past the refresh point; skipping those waiting for a retry.
pub(super) fn due_rendered(
    snapshot: &Snapshot,
    wanted: &[RenderedKey],
    minted: &HashMap<RenderedKey, Minted>,
    retry_at: &HashMap<RenderedKey, i64>,
    now: i64,
) -> Vec<(Arc<Identity>, RenderedKey)> {
    let tainted = TaintedAuthorities::from_bundle(&snapshot.bundle);
    let mut out = Vec::new();
    for key in wanted {
        let Some(identity) = snapshot.identity(&key.entry_id) else {
            continue;
        };
        let instance = identity
            .entry
            .spiffe_id
            .template()
            .is_some_and(|t| t.matches(&key.spiffe_id));
        if !instance || retry_at.get(key).is_some_and(|&at| now < at) {
            continue;
        }
        let fresh = snapshot
            .rendered
            .get(key)
            .is_some_and(|svid| !tainted.affects_chain(&svid.chain))
            && minted
                .get(key)
                .is_some_and(|m| m.revision == identity.entry.revision && now < m.refresh_at);
        if !fresh {
            out.push((identity.clone(), key.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use sigil_proto::{RegistrationEntry, SpiffeId};

    use super::*;
    use crate::rotation::fixed::due;
    use crate::rotation::fixed::tests::{entry, ids};

    #[test]
    fn due_rendered_mints_wanted_instances_only() {
        let cache = Cache::new(sigil_proto::Bundle::new(
            sigil_proto::TrustDomain::new("td").unwrap(),
        ));
        let template: sigil_proto::IdTemplate = "spiffe://td/ns/{k8s:ns}".parse().unwrap();
        let t = RegistrationEntry {
            spiffe_id: template.into(),
            ..entry("t", 1)
        };
        cache.replace_entries(vec![t, entry("fixed", 1)]);
        let key = |e: &str, id: &str| RenderedKey {
            entry_id: e.into(),
            spiffe_id: SpiffeId::new(id).unwrap(),
        };
        let a = key("t", "spiffe://td/ns/a");
        let wanted = vec![
            a.clone(),
            key("t", "spiffe://td/other/a"),
            key("fixed", "spiffe://td/fixed"),
            key("gone", "spiffe://td/ns/a"),
        ];
        let none: HashMap<RenderedKey, Minted> = HashMap::new();
        let no_retry: HashMap<RenderedKey, i64> = HashMap::new();
        let snapshot = cache.snapshot();
        let due_keys =
            |minted: &HashMap<RenderedKey, Minted>, retry: &HashMap<RenderedKey, i64>, now| {
                due_rendered(&snapshot, &wanted, minted, retry, now)
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect::<Vec<_>>()
            };
        assert_eq!(due_keys(&none, &no_retry, 50), std::slice::from_ref(&a));
        let retry = HashMap::from([(a, 100)]);
        assert!(due_keys(&none, &retry, 50).is_empty());
        // Template entries are never pre-minted by the fixed-entry loop.
        let mut minted_fixed = HashMap::new();
        assert_eq!(
            ids(&due(&snapshot, &mut minted_fixed, &HashMap::new(), 50)),
            ["fixed"]
        );
    }
}
