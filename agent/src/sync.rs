//! Entry sync: holds the server's `SyncEntries` stream open and applies it to the [`Cache`].
//! A full snapshot arrives in pages and is installed in one write on its last page, so
//! workloads never see half of it; live changes are applied as they come; a new bundle is
//! installed in the cache (where the server link reads it for the next TLS handshake) and
//! persisted.
//!
//! Pods the server says left this node (`gone_pod_uids`: deleted, terminated or bound
//! elsewhere) are forgotten at once: the cache drops the template SVIDs no other pod wants, and
//! gives those pods' workloads none (see [`crate::cache::withdrawn`]).
//!
//! The stream resumes from the last applied revision after any error, with backoff (at most
//! ~4 s apart for [`RESTART_WINDOW`] after the server said it is shutting down, else up to
//! 30 s). The server being down never stops the agent: the cache keeps serving what it has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sigil_proto::entry::entries_digest;
use sigil_proto::sigil::agent::v1::{SyncEntriesRequest, SyncEntriesResponse};
use sigil_proto::{Bundle, RegistrationEntry, TrustDomain};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long after the server said it is shutting down the sync retries at most ~4 s apart
/// ([`Backoff::server_restart`]): long enough for a restart or a rescheduled pod, short enough
/// that a server that is gone is not knocked on every few seconds by every agent for long.
const RESTART_WINDOW: Duration = Duration::from_secs(120);

use crate::cache::{Cache, RenderedKey};
use crate::identity::AgentIdentity;
use crate::ops::{Metrics, Readiness};
use crate::rotation::Backoff;
use crate::server_client::{ServerConnection, check_trust_anchors, is_connection_failure};
use crate::svid_store::SvidStore;
use sigil_common::time::unix_now;

/// What one message changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The number of entries, when this message completed a full snapshot.
    pub snapshot_entries: Option<usize>,
    /// The new bundle of our trust domain, when the message carried one.
    pub bundle: Option<Bundle>,
    /// Entries skipped because they did not convert (logged).
    pub rejected: usize,
    /// The trust domains of the new federated bundle set, when the message changed it.
    pub federated: Option<Vec<TrustDomain>>,
    /// A resume left the cache with other entries than the server's digest says: the next
    /// stream must start from a full snapshot.
    pub diverged: bool,
    /// The pods the message said left this node, and the template SVIDs dropped with them.
    pub gone_pods: usize,
    pub withdrawn: Vec<RenderedKey>,
}

/// The sync position: the last revision applied and any snapshot being assembled.
#[derive(Debug)]
pub struct SyncState {
    trust_domain: TrustDomain,
    revision: i64,
    pending: Option<BTreeMap<String, RegistrationEntry>>,
    /// Entries the server sent that do not convert (ID → revision): kept out of the cache but
    /// in the digest, so that a resume does not take them for a difference every time.
    rejected: BTreeMap<String, i64>,
}

impl SyncState {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            revision: 0,
            pending: None,
            rejected: BTreeMap::new(),
        }
    }

    /// The revision to resume from.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Forgets a half-received snapshot (the stream broke); the next stream starts over.
    pub fn interrupted(&mut self) {
        self.pending = None;
    }

    /// Whether the cache's entries and the rejected ones hash to `digest` (see
    /// [`entries_digest`]).
    fn holds(&self, cache: &Cache, digest: &[u8]) -> bool {
        let snapshot = cache.snapshot();
        let held = entries_digest(
            snapshot
                .identities
                .iter()
                .map(|i| (i.entry.id.as_str(), i.entry.revision))
                .chain(self.rejected.iter().map(|(id, r)| (id.as_str(), *r))),
        );
        held.as_slice() == digest
    }

    /// Applies one stream message to `cache`.
    pub fn apply(&mut self, cache: &Cache, msg: SyncEntriesResponse) -> Applied {
        let mut applied = Applied::default();
        if msg.snapshot_start {
            self.pending = Some(BTreeMap::new());
            self.rejected.clear();
        }
        let mut upserts = Vec::with_capacity(msg.upserts.len());
        for wire in &msg.upserts {
            match RegistrationEntry::try_from(wire) {
                Ok(entry) => {
                    self.rejected.remove(&entry.id);
                    upserts.push(entry);
                }
                Err(e) => {
                    warn!(entry_id = %wire.id, error = %e, "skipping an entry the server sent that does not convert");
                    self.rejected.insert(wire.id.clone(), wire.revision);
                    applied.rejected += 1;
                }
            }
        }
        for id in &msg.deleted_ids {
            self.rejected.remove(id);
        }
        match &mut self.pending {
            Some(pending) => {
                for id in &msg.deleted_ids {
                    pending.remove(id);
                }
                pending.extend(upserts.into_iter().map(|e| (e.id.clone(), e)));
                if msg.snapshot_end {
                    let entries: Vec<_> = self
                        .pending
                        .take()
                        .map(|p| p.into_values().collect())
                        .unwrap_or_default();
                    applied.snapshot_entries = Some(entries.len());
                    cache.replace_entries(entries);
                    self.revision = msg.revision;
                }
            }
            None => {
                if !upserts.is_empty() || !msg.deleted_ids.is_empty() {
                    debug!(
                        upserts = upserts.len(),
                        deleted = msg.deleted_ids.len(),
                        revision = msg.revision,
                        "registration entries changed"
                    );
                }
                if !upserts.is_empty() {
                    cache.upsert_entries(upserts);
                }
                if !msg.deleted_ids.is_empty() {
                    cache.remove_entries(&msg.deleted_ids);
                }
                self.revision = self.revision.max(msg.revision);
                if !msg.entries_digest.is_empty() && !self.holds(cache, &msg.entries_digest) {
                    // The cache keeps serving what it has until the snapshot replaces it.
                    self.revision = 0;
                    applied.diverged = true;
                }
            }
        }
        if !msg.gone_pod_uids.is_empty() {
            applied.gone_pods = msg.gone_pod_uids.len();
            applied.withdrawn = cache.forget_pods(&msg.gone_pod_uids, unix_now());
        }
        if let Some(wire) = &msg.bundle {
            match Bundle::try_from(wire) {
                Ok(bundle) if bundle.trust_domain != self.trust_domain => {
                    warn!(trust_domain = %bundle.trust_domain, "ignoring a bundle for another trust domain");
                }
                Ok(bundle) if bundle.x509_authorities.is_empty() => {
                    warn!("ignoring a bundle without X.509 authorities");
                }
                Ok(bundle) => {
                    if *cache.snapshot().bundle != bundle {
                        cache.set_bundle(bundle.clone());
                        applied.bundle = Some(bundle);
                    }
                }
                Err(e) => warn!(error = %e, "ignoring an invalid bundle from the server"),
            }
        }
        if let Some(set) = &msg.federated_bundles {
            let mut bundles = BTreeMap::new();
            for wire in &set.bundles {
                match Bundle::try_from(wire) {
                    Ok(b) if b.trust_domain == self.trust_domain => {
                        warn!("ignoring a federated bundle for our own trust domain");
                    }
                    Ok(b) => {
                        bundles.insert(b.trust_domain.clone(), b);
                    }
                    Err(e) => {
                        warn!(error = %e, "ignoring an invalid federated bundle from the server")
                    }
                }
            }
            let current = &cache.snapshot().federated;
            let unchanged = current.len() == bundles.len()
                && bundles
                    .iter()
                    .all(|(td, b)| current.get(td).is_some_and(|c| **c == *b));
            if !unchanged {
                applied.federated = Some(bundles.keys().cloned().collect());
                cache.set_federated_bundles(bundles);
            }
        }
        applied
    }
}

/// Everything the sync loop touches.
#[derive(Debug, Clone)]
pub struct SyncContext {
    pub connection: Arc<ServerConnection>,
    pub cache: Arc<Cache>,
    pub identity: Arc<AgentIdentity>,
    pub store: Option<SvidStore>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

/// Keeps the cache in sync with the server until `cancel` fires.
pub async fn sync_forever(ctx: SyncContext, trust_domain: TrustDomain, cancel: CancellationToken) {
    let mut state = SyncState::new(trust_domain);
    let mut backoff = Backoff::server();
    // When the server said it is shutting down, while within RESTART_WINDOW of it.
    let mut restarting: Option<Instant> = None;
    let mut degraded = false;
    loop {
        state.interrupted();
        let request = SyncEntriesRequest {
            since_revision: state.revision(),
        };
        let mut client = ctx.connection.client();
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            r = client.sync_entries(request) => r,
        };
        let failure = match opened {
            Err(status) => {
                ctx.metrics.sync_connect(false);
                status
            }
            Ok(response) => {
                ctx.metrics.sync_connect(true);
                let mut stream = response.into_inner();
                let ended = loop {
                    let next = tokio::select! {
                        () = cancel.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match next {
                        Ok(Some(msg)) => {
                            if degraded {
                                info!("connection to the server restored; syncing");
                                degraded = false;
                            }
                            if restarting.take().is_some() {
                                backoff = Backoff::server();
                            }
                            backoff.reset();
                            if apply(&ctx, &mut state, msg) {
                                break None;
                            }
                        }
                        Ok(None) => {
                            break Some(tonic::Status::unavailable(
                                "the server ended the sync stream",
                            ));
                        }
                        Err(status) => break Some(status),
                    }
                };
                match ended {
                    Some(status) => status,
                    None => {
                        // At once, from revision 0: the server is up, nothing failed.
                        warn!(
                            "a resumed sync left other entries than the server holds for this agent; syncing a full snapshot"
                        );
                        continue;
                    }
                }
            }
        };
        if failure.code() == tonic::Code::Unavailable
            && failure.message() == sigil_proto::SERVER_SHUTTING_DOWN
        {
            restarting = Some(Instant::now());
            backoff = Backoff::server_restart();
        } else if restarting.is_some_and(|since| since.elapsed() > RESTART_WINDOW) {
            restarting = None;
            backoff = Backoff::server();
        }
        if is_connection_failure(failure.code()) {
            // The next attempt starts with another server.
            ctx.connection.fail_over();
        }
        if let Some(expired_at) = ctx.identity.expired_at(unix_now()) {
            // The server refuses every call until the agent has a new SVID (the renewal loop
            // attests again or says what to do): wait for it rather than knock.
            debug!(expired_at, "agent SVID expired; sync waits for a new one");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = ctx.identity.renewed() => {}
            }
            continue;
        }
        if failure.code() == tonic::Code::PermissionDenied {
            warn!(error = %failure.message(), "the server refused to sync: agent evicted or banned; serving cached SVIDs");
            ctx.identity.report_evicted();
        } else if !degraded {
            warn!(code = ?failure.code(), error = %failure.message(), "server unreachable; workloads keep getting cached bundles, and cached SVIDs until they expire; retrying");
            degraded = true;
        } else {
            debug!(code = ?failure.code(), error = %failure.message(), "sync still failing");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Applies one message; returns whether a resume diverged (see [`Applied::diverged`]).
fn apply(ctx: &SyncContext, state: &mut SyncState, msg: SyncEntriesResponse) -> bool {
    ctx.metrics.sync_messages.inc();
    let applied = state.apply(&ctx.cache, msg);
    if let Some(n) = applied.snapshot_entries {
        info!(
            entries = n,
            revision = state.revision(),
            "synced registration entries"
        );
        ctx.readiness.set(true);
    }
    ctx.metrics
        .cached_entries
        .set(ctx.cache.snapshot().identities.len() as i64);
    if !applied.withdrawn.is_empty() {
        let ids: Vec<String> = applied
            .withdrawn
            .iter()
            .map(|k| k.spiffe_id.to_string())
            .collect();
        info!(pods = applied.gone_pods, spiffe_id = %ids.join(","), "pods left this node; template X509-SVIDs no other pod wants withdrawn");
    } else if applied.gone_pods > 0 {
        debug!(pods = applied.gone_pods, "pods left this node");
    }
    if let Some(tds) = applied.federated {
        let tds: Vec<&str> = tds.iter().map(TrustDomain::as_str).collect();
        info!(trust_domains = ?tds, "federated bundles updated");
    }
    if let Some(bundle) = applied.bundle {
        info!(
            sequence = bundle.sequence,
            authorities = bundle.x509_authorities.len(),
            "trust bundle updated"
        );
        if let Err(e) = check_trust_anchors(&bundle) {
            warn!(error = %e, "new bundle not usable for server authentication");
        }
        if let Some(Err(e)) = ctx.store.as_ref().map(|s| s.save_bundle(&bundle)) {
            warn!(error = %e, "cannot persist the trust bundle");
        }
    }
    applied.diverged
}

#[cfg(test)]
mod tests {
    use sigil_proto::sigil::common::v1 as pb;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("td").unwrap()
    }

    fn wire(id: &str) -> pb::RegistrationEntry {
        pb::RegistrationEntry {
            id: id.into(),
            spiffe_id: format!("spiffe://td/{id}"),
            parent_id: "spiffe://td/spire/agent/x".into(),
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: "uid:1".into(),
            }],
            ..Default::default()
        }
    }

    fn ids(cache: &Cache) -> Vec<String> {
        let mut ids: Vec<String> = cache
            .snapshot()
            .identities
            .iter()
            .map(|i| i.entry.id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn page(ids: &[&str], start: bool, end: bool, revision: i64) -> SyncEntriesResponse {
        SyncEntriesResponse {
            upserts: ids.iter().map(|id| wire(id)).collect(),
            snapshot_start: start,
            snapshot_end: end,
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_pages_are_installed_only_when_complete() {
        let cache = Cache::new(Bundle::new(td()));
        cache.replace_entries(vec![RegistrationEntry::try_from(&wire("old")).unwrap()]);
        let mut state = SyncState::new(td());

        let a = state.apply(&cache, page(&["a", "b"], true, false, 5));
        assert_eq!(a.snapshot_entries, None);
        assert_eq!(ids(&cache), ["old"], "half a snapshot is not visible");
        assert_eq!(
            state.revision(),
            0,
            "revision moves only with a complete snapshot"
        );

        let a = state.apply(&cache, page(&["c"], false, true, 5));
        assert_eq!(a.snapshot_entries, Some(3));
        assert_eq!(
            ids(&cache),
            ["a", "b", "c"],
            "entries not in the snapshot are dropped"
        );
        assert_eq!(state.revision(), 5);
    }

    #[test]
    fn live_changes_upsert_and_delete() {
        let cache = Cache::new(Bundle::new(td()));
        let mut state = SyncState::new(td());
        state.apply(&cache, page(&["a", "b"], true, true, 3));
        let mut msg = page(&["c"], false, false, 4);
        msg.deleted_ids = vec!["a".into(), "unknown".into()];
        state.apply(&cache, msg);
        assert_eq!(ids(&cache), ["b", "c"]);
        assert_eq!(state.revision(), 4);
    }

    #[test]
    fn an_interrupted_snapshot_is_forgotten() {
        let cache = Cache::new(Bundle::new(td()));
        let mut state = SyncState::new(td());
        state.apply(&cache, page(&["a"], true, false, 9));
        state.interrupted();
        // A live message after a reconnect is not taken for the rest of the old snapshot.
        state.apply(&cache, page(&["b"], false, false, 2));
        assert_eq!(ids(&cache), ["b"]);
        assert_eq!(state.revision(), 2);
    }

    #[test]
    fn a_resume_whose_digest_differs_asks_for_a_snapshot() {
        let resume = |held: &[&str]| {
            let cache = Cache::new(Bundle::new(td()));
            let mut state = SyncState::new(td());
            state.apply(&cache, page(held, true, true, 3));
            // The server's set after the resume holds `a` and the new `b`.
            let mut msg = page(&["b"], false, false, 5);
            msg.entries_digest = entries_digest([("a", 0), ("b", 0)]).to_vec();
            let applied = state.apply(&cache, msg);
            (applied.diverged, state.revision(), ids(&cache))
        };
        assert_eq!(resume(&["a"]), (false, 5, vec!["a".into(), "b".into()]));
        // `orphan` lost its authorization through an ancestor while the agent was away: no
        // event of its own told the server to send its deletion.
        let (diverged, revision, held) = resume(&["a", "orphan"]);
        assert!(diverged);
        assert_eq!(revision, 0, "the next stream starts from a full snapshot");
        assert_eq!(held.len(), 3, "the cache keeps serving until the snapshot");
    }

    #[test]
    fn an_entry_that_does_not_convert_is_no_difference_on_resume() {
        let cache = Cache::new(Bundle::new(td()));
        let mut state = SyncState::new(td());
        let mut msg = page(&["a"], true, true, 3);
        msg.upserts.push(pb::RegistrationEntry {
            id: "bad".into(),
            spiffe_id: "not a spiffe id".into(),
            revision: 2,
            ..Default::default()
        });
        state.apply(&cache, msg);
        let mut resume = page(&["b"], false, false, 5);
        resume.entries_digest = entries_digest([("a", 0), ("bad", 2), ("b", 0)]).to_vec();
        assert!(!state.apply(&cache, resume).diverged);
        // Once deleted, it no longer counts.
        let mut resume = page(&[], false, false, 6);
        resume.deleted_ids = vec!["bad".into()];
        resume.entries_digest = entries_digest([("a", 0), ("b", 0)]).to_vec();
        assert!(!state.apply(&cache, resume).diverged);
        assert_eq!(state.revision(), 6);
    }

    #[test]
    fn invalid_entries_are_skipped() {
        let cache = Cache::new(Bundle::new(td()));
        let mut state = SyncState::new(td());
        let mut msg = page(&["a"], true, true, 1);
        msg.upserts.push(pb::RegistrationEntry {
            id: "bad".into(),
            spiffe_id: "not a spiffe id".into(),
            ..Default::default()
        });
        let applied = state.apply(&cache, msg);
        assert_eq!(applied.rejected, 1);
        assert_eq!(ids(&cache), ["a"]);
    }

    #[test]
    fn bundles_are_installed_once_and_checked() {
        let cache = Cache::new(Bundle::new(td()));
        let mut state = SyncState::new(td());
        let (ca, _) = crate::svid_store::tests::self_signed("spiffe://td");
        let mut bundle = Bundle::new(td());
        bundle.x509_authorities = vec![ca];
        bundle.sequence = 2;
        let msg = SyncEntriesResponse {
            bundle: Some(pb::Bundle::from(&bundle)),
            ..Default::default()
        };
        let applied = state.apply(&cache, msg.clone());
        assert_eq!(applied.bundle.as_ref(), Some(&bundle));
        assert_eq!(*cache.snapshot().bundle, bundle);
        // The same bundle again is not a change.
        assert_eq!(state.apply(&cache, msg).bundle, None);

        let mut foreign = bundle.clone();
        foreign.trust_domain = TrustDomain::new("other").unwrap();
        let msg = SyncEntriesResponse {
            bundle: Some(pb::Bundle::from(&foreign)),
            ..Default::default()
        };
        assert_eq!(state.apply(&cache, msg).bundle, None);
        assert_eq!(*cache.snapshot().bundle, bundle);
    }

    #[test]
    fn gone_pods_withdraw_the_template_svids_only_they_wanted() {
        let ca = crate::cache::testing::TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        let template = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";
        cache.replace_entries(vec![crate::cache::testing::template_entry(
            "t",
            template,
            &["k8s:ns"],
            1,
        )]);
        let key = |sa: &str| RenderedKey {
            entry_id: "t".into(),
            spiffe_id: sigil_proto::SpiffeId::new(&format!("spiffe://example.org/ns/a/sa/{sa}"))
                .unwrap(),
        };
        let demand = cache.demand();
        demand.want(key("api"), Some("api-1"), 100);
        demand.want(key("api"), Some("api-2"), 100);
        demand.want(key("batch"), Some("batch-1"), 100);
        let svids = ["api", "batch"]
            .iter()
            .map(|sa| (key(sa), ca.svid(&key(sa).spiffe_id.to_string())))
            .collect();
        assert!(cache.set_rendered_svids(svids).is_empty());

        let mut state = SyncState::new(TrustDomain::new("example.org").unwrap());
        let msg = SyncEntriesResponse {
            gone_pod_uids: vec!["api-1".into(), "batch-1".into()],
            ..Default::default()
        };
        let applied = state.apply(&cache, msg);
        assert_eq!(
            (applied.gone_pods, applied.withdrawn),
            (2, vec![key("batch")])
        );
        let served: Vec<RenderedKey> = cache.snapshot().rendered.keys().cloned().collect();
        assert_eq!(served, [key("api")], "api-2 still wants it");
        assert_eq!(demand.pods_for(&key("api")), ["api-2"]);
    }

    fn federated(bundles: &[&Bundle]) -> SyncEntriesResponse {
        SyncEntriesResponse {
            federated_bundles: Some(sigil_proto::sigil::agent::v1::FederatedBundles {
                bundles: bundles.iter().map(|b| pb::Bundle::from(*b)).collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn federated_bundles_replace_the_whole_set() {
        let cache = Cache::new(Bundle::new(td()));
        let mut state = SyncState::new(td());
        let (ca, _) = crate::svid_store::tests::self_signed("spiffe://other.org");
        let mut other = Bundle::new(TrustDomain::new("other.org").unwrap());
        other.x509_authorities = vec![ca.clone()];
        let mut third = Bundle::new(TrustDomain::new("third.org").unwrap());
        third.x509_authorities = vec![ca.clone()];
        let mut own = Bundle::new(td());
        own.x509_authorities = vec![ca];

        let applied = state.apply(&cache, federated(&[&other, &third, &own]));
        let names = |a: &Applied| {
            a.federated
                .as_ref()
                .map(|v| v.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            names(&applied),
            Some(vec!["other.org".into(), "third.org".into()]),
            "own TD is ignored"
        );
        assert_eq!(cache.snapshot().federated.len(), 2);
        assert_eq!(*cache.snapshot().federated[&other.trust_domain], other);

        // The same set is no change; a message without the field leaves the set alone.
        assert_eq!(
            state.apply(&cache, federated(&[&other, &third])).federated,
            None
        );
        assert_eq!(
            state
                .apply(&cache, SyncEntriesResponse::default())
                .federated,
            None
        );
        assert_eq!(cache.snapshot().federated.len(), 2);

        // A changed bundle and a dropped one.
        other.sequence = 3;
        let applied = state.apply(&cache, federated(&[&other]));
        assert_eq!(names(&applied), Some(vec!["other.org".into()]));
        assert_eq!(cache.snapshot().federated[&other.trust_domain].sequence, 3);
        assert!(!cache.snapshot().federated.contains_key(&third.trust_domain));

        // An empty set clears it.
        assert_eq!(state.apply(&cache, federated(&[])).federated, Some(vec![]));
        assert!(cache.snapshot().federated.is_empty());
    }
}
