//! The CA journal store: where this replica's CA is loaded from ([`load_journal`]), stored
//! before any change to it takes effect ([`commit`], [`persist`]), and kept in step with the
//! other replicas sharing the datastore.
//!
//! Each replica persists its own CA journal and the trust domain's bundle becomes the union of
//! every replica's authorities (stored with it, in one transaction); every replica adopts that
//! union ([`refresh_bundle`]) when the datastore's change feed says the bundle changed
//! ([`follow_changes`]). Only the one bundle row is read on a refresh.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sigil_proto::Bundle;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::ca::bundle_union::union_bundle;
use crate::ca::{Ca, CaError, CaJournal, Pending, ReplicaId};
use crate::datastore::{Change, Datastore, DatastoreError, JournalUnion, ReplicaJournal};

/// How often a replica re-reads the stored bundle even when the change feed is quiet: a safety
/// net (a persist that failed is retried then), not the way changes travel.
pub const BUNDLE_REFRESH: Duration = Duration::from_secs(30);

/// This replica's journal, if it has one (claiming the single-server journal on upgrade).
pub async fn load_journal(
    datastore: &Datastore,
    replica_id: &ReplicaId,
) -> anyhow::Result<Option<CaJournal>> {
    let bytes = datastore
        .fetch_replica_journal(replica_id.as_str())
        .await
        .context("cannot read the CA journal")?;
    bytes
        .map(|b| CaJournal::from_bytes(&b).context("the CA journal in the datastore is corrupt"))
        .transpose()
}

/// Why a change to the CA was not made. Either way nothing changed: not in memory, not in
/// the datastore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError<E> {
    /// Planning refused the change (an operator's mistake, or a CA failure).
    #[error(transparent)]
    Refused(E),
    /// Its journal could not be stored (the datastore's disk is full, the database is gone).
    #[error("the change could not be stored, so it was not made: {0}")]
    NotStored(#[source] DatastoreError),
}

/// Makes a change to the CA persisted and in effect, or neither: `plan` works it out on a copy
/// of the CA's state (`None`: nothing to do), its journal and the union bundle it implies are
/// stored in one transaction, and only then is it applied and the stored union adopted. Holds
/// the CA's persistence lock throughout, so no other change is planned from the same state.
/// Returns the change's outcome once it is stored and applied.
pub async fn commit<T, E: From<CaError>>(
    datastore: &Datastore,
    ca: &Ca,
    plan: impl FnOnce(&Ca) -> Result<Option<Pending<T>>, E>,
) -> Result<Option<T>, CommitError<E>> {
    let _guard = ca.lock_persistence().await;
    let Some(pending) = off_the_runtime(|| plan(ca)).map_err(CommitError::Refused)? else {
        return Ok(None);
    };
    let union = store(
        datastore,
        ca,
        pending.journal(),
        ca.sequence_after(&pending),
    )
    .await
    .map_err(CommitError::NotStored)?;
    let sequence = pending.journal().bundle_sequence;
    let (outcome, _) = ca
        .apply(pending)
        .map_err(|e| CommitError::Refused(E::from(e)))?;
    ca.mark_persisted(sequence);
    ca.adopt_bundle(&union);
    Ok(Some(outcome))
}

/// Runs `work` where it may block: a plan can generate a key, and an RSA-4096 key takes
/// seconds. On a multi-threaded runtime the worker hands its other tasks away first
/// (`block_in_place`); a current-thread runtime (unit tests) cannot, and runs it in place.
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Stores the CA's current journal and the union bundle it implies (one transaction), then
/// adopts that bundle, so a restart resumes the same CA and every replica can see its
/// authorities. Used at start-up (the journal `Ca::new` built) and to retry; a change goes
/// through [`commit`].
pub async fn persist(datastore: &Datastore, ca: &Ca) -> anyhow::Result<()> {
    let _guard = ca.lock_persistence().await;
    persist_locked(datastore, ca).await
}

async fn persist_locked(datastore: &Datastore, ca: &Ca) -> anyhow::Result<()> {
    let journal = ca.journal();
    // Never behind what this replica already published, so consumers see it only grow.
    let union = store(datastore, ca, &journal, ca.bundle().sequence)
        .await
        .context("cannot persist the CA journal and the bundle")?;
    ca.mark_persisted(journal.bundle_sequence);
    if ca.adopt_bundle(&union) {
        tracing::debug!(sequence = union.sequence, "bundle of every replica stored");
    }
    Ok(())
}

/// Stores `journal` as this replica's and the union bundle of every replica's journal (its
/// sequence at least `published`) in one transaction; returns the union.
async fn store(
    datastore: &Datastore,
    ca: &Ca,
    journal: &CaJournal,
    published: u64,
) -> Result<Bundle, DatastoreError> {
    let trust_domain = ca.config().trust_domain.clone();
    let own_id = ca.replica_id().clone();
    let now = unix(SystemTime::now());
    let bytes = journal
        .to_bytes()
        .map_err(|e| DatastoreError::Corrupt(format!("CA journal: {e}")))?;
    datastore
        .store_replica_journal(
            own_id.as_str(),
            &bytes,
            &trust_domain,
            |previous, stored| {
                let (journals, drop_replicas) = decode_journals(stored, &own_id, now);
                let mut bundle = union_bundle(&trust_domain, &journals, now);
                bundle.sequence = next_sequence(previous.as_ref(), &bundle, published);
                Ok(JournalUnion {
                    bundle,
                    drop_replicas,
                })
            },
        )
        .await
}

/// The stored bundle's sequence when `union` has the same authorities (a restart changes
/// nothing), else one more than both it and what this replica `published`.
fn next_sequence(previous: Option<&Bundle>, union: &Bundle, published: u64) -> u64 {
    match previous {
        Some(p)
            if Bundle {
                sequence: union.sequence,
                ..p.clone()
            } == *union =>
        {
            p.sequence.max(published)
        }
        Some(p) => p.sequence.max(published) + 1,
        None => published + 1,
    }
}

/// The journals that parse, and the replicas (never `own`) with nothing left unexpired.
/// A journal that does not parse is skipped with a warning: it must not stop this replica
/// from persisting its own.
fn decode_journals(
    stored: &[ReplicaJournal],
    own: &ReplicaId,
    now: i64,
) -> (Vec<CaJournal>, Vec<String>) {
    let mut journals = Vec::with_capacity(stored.len());
    let mut gone = Vec::new();
    for j in stored {
        match CaJournal::from_bytes(&j.data) {
            Ok(journal) => {
                let live = journal.x509_authorities.iter().any(|a| a.not_after > now)
                    || journal.jwt_keys.iter().any(|k| k.not_after > now);
                if !live && j.replica_id != own.as_str() {
                    tracing::info!(replica_id = %j.replica_id, "dropping the journal of a replica whose authorities all expired");
                    gone.push(j.replica_id.clone());
                }
                journals.push(journal);
            }
            Err(e) => {
                tracing::warn!(replica_id = %j.replica_id, error = %e, "skipping a corrupt CA journal of another replica");
            }
        }
    }
    (journals, gone)
}

/// Brings the published bundle up to date with the datastore: stores our journal if it has
/// unsaved changes (a failed persist is retried here), otherwise re-reads the stored union
/// bundle and adopts it. Returns whether the published bundle changed. This is what a change
/// feed event on the bundles should call.
pub async fn refresh_bundle(datastore: &Datastore, ca: &Ca) -> anyhow::Result<bool> {
    let _guard = ca.lock_persistence().await;
    if ca.needs_persist() {
        let before = ca.bundle();
        persist_locked(datastore, ca).await?;
        return Ok(ca.bundle() != before);
    }
    let stored = datastore
        .fetch_bundle(&ca.config().trust_domain)
        .await
        .context("cannot read the trust bundle")?;
    let Some(union) = stored else {
        return Ok(false);
    };
    let changed = ca.adopt_bundle(&union);
    if changed {
        let bundle = ca.bundle();
        tracing::info!(
            sequence = bundle.sequence,
            x509_authorities = bundle.x509_authorities.len(),
            jwt_authorities = bundle.jwt_authorities.len(),
            "trust bundle updated from the datastore"
        );
    }
    Ok(changed)
}

/// Follows the datastore's change feed until `cancel` fires: a change to the trust domain's
/// bundle made through any replica is adopted ([`refresh_bundle`]). On PostgreSQL the feed
/// carries every replica's commits (`LISTEN`/`NOTIFY`); after a gap in it (`Resync`, or this
/// subscriber lagging) the bundle is re-read. [`refresh_bundle`] also runs every `period`, as
/// a safety net that retries a persist which failed. (Entry changes reach the agents' sync
/// streams through [`Datastore::entry_revisions`], kept by the feed itself.)
pub async fn follow_changes(
    datastore: Datastore,
    ca: Arc<Ca>,
    period: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut changes = datastore.subscribe_changes();
    let own = ca.config().trust_domain.clone();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let refresh = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => true,
            change = changes.recv() => match change {
                Ok(Change::Bundle(td)) => td == own,
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => true,
                Ok(_) => false,
                // The datastore is closing: only the shutdown is left.
                Err(RecvError::Closed) => {
                    cancel.cancelled().await;
                    return Ok(());
                }
            },
        };
        if refresh && let Err(e) = refresh_bundle(&datastore, &ca).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot refresh the trust bundle; will retry");
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use sigil_proto::TrustDomain;

    use super::*;
    use crate::ca::CaConfig;
    use crate::ca::local_authority::AuthorityKind;
    use crate::key_manager::MemoryKeyManager;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    /// A replica as `run` builds it: journal loaded from the shared datastore, then persisted.
    async fn replica(ds: &Datastore, id: &str) -> Ca {
        let id = ReplicaId::new(id).unwrap();
        let journal = load_journal(ds, &id).await.unwrap();
        let (ca, _) = Ca::new(
            CaConfig::new(td()),
            Arc::new(MemoryKeyManager::new()),
            journal,
            SystemTime::now(),
        )
        .unwrap();
        let ca = ca.with_replica_id(id);
        persist(ds, &ca).await.unwrap();
        ca
    }

    fn own_cert(ca: &Ca) -> Vec<u8> {
        ca.journal().x509_authorities[0].cert_der.clone()
    }

    fn own_kid(ca: &Ca) -> String {
        ca.journal().jwt_keys[0].kid.clone()
    }

    fn has(bundle: &sigil_proto::Bundle, cert: &[u8], kid: &str) -> (bool, bool) {
        (
            bundle.x509_authorities.iter().any(|c| c == cert),
            bundle.jwt_authorities.iter().any(|a| a.key_id == kid),
        )
    }

    #[tokio::test]
    async fn two_replicas_publish_and_adopt_one_union() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        let a = replica(&ds, "a").await;
        let b = replica(&ds, "b").await;
        let (cert_a, kid_a, cert_b, kid_b) = (own_cert(&a), own_kid(&a), own_cert(&b), own_kid(&b));
        assert_ne!(cert_a, cert_b, "one CA per replica");

        // B persisted after A: its bundle, and the stored one, hold both.
        let stored = ds.fetch_bundle(&td()).await.unwrap().unwrap();
        for bundle in [&*b.bundle(), &stored] {
            assert_eq!(has(bundle, &cert_a, &kid_a), (true, true));
            assert_eq!(has(bundle, &cert_b, &kid_b), (true, true));
        }
        assert_eq!(b.bundle().sequence, stored.sequence);
        // A learns of B on refresh.
        assert_eq!(has(&a.bundle(), &cert_b, &kid_b), (false, false));
        assert!(refresh_bundle(&ds, &a).await.unwrap());
        assert_eq!(*a.bundle(), stored);
        assert!(!refresh_bundle(&ds, &a).await.unwrap(), "nothing new");
        assert_eq!(ds.list_replica_journals().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_revoked_authority_leaves_the_union_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        let a = replica(&ds, "a").await;
        let b = replica(&ds, "b").await;
        let kid_a = own_kid(&a);
        // Rotate A's JWT key out of service, then taint and revoke the old one.
        let now = SystemTime::now();
        let (next, _) = a
            .apply(a.prepare_authority(AuthorityKind::Jwt, now).unwrap())
            .unwrap();
        a.apply(
            a.activate_authority(AuthorityKind::Jwt, &next.authority_id)
                .unwrap(),
        )
        .unwrap();
        a.apply(a.taint_authority(AuthorityKind::Jwt, &kid_a).unwrap())
            .unwrap();
        persist(&ds, &a).await.unwrap();
        assert!(refresh_bundle(&ds, &b).await.unwrap());
        let tainted = b
            .bundle()
            .jwt_authorities
            .iter()
            .find(|k| k.key_id == kid_a)
            .map(|k| k.tainted);
        assert_eq!(tainted, Some(true), "B sees A's taint");

        a.apply(a.revoke_authority(AuthorityKind::Jwt, &kid_a).unwrap())
            .unwrap();
        // Not yet persisted: a refresh stores it rather than adopting the stale union.
        assert!(a.needs_persist());
        refresh_bundle(&ds, &a).await.unwrap();
        assert!(!a.needs_persist());
        assert!(a.bundle().jwt_authorities.iter().all(|k| k.key_id != kid_a));
        assert!(refresh_bundle(&ds, &b).await.unwrap());
        let b_kids: Vec<String> = b
            .bundle()
            .jwt_authorities
            .iter()
            .map(|k| k.key_id.clone())
            .collect();
        assert!(!b_kids.contains(&kid_a), "{b_kids:?}");
        assert!(b_kids.contains(&next.authority_id));
        assert!(b_kids.contains(&own_kid(&b)));
    }

    /// A change the datastore will not take is not made: not in memory, not in the bundle,
    /// and no key the stored journal needs is overwritten, so a restart resumes the stored CA
    /// whole (here: a second `prepare` over a prepared authority, the case where a two-slot
    /// key manager would have replaced the stored prepared authority's key).
    #[tokio::test]
    async fn a_change_that_cannot_be_stored_is_not_made() {
        use crate::ca::local_authority::AuthorityKind::X509;
        use crate::key_manager::DiskKeyManager;

        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        let id = ReplicaId::new("a").unwrap();
        let open_ca = |journal| {
            let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
            let (ca, _) = Ca::new(CaConfig::new(td()), km, journal, SystemTime::now()).unwrap();
            ca.with_replica_id(id.clone())
        };
        let prepare = |ca: &Ca| ca.prepare_authority(X509, SystemTime::now()).map(Some);
        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        let ca = open_ca(None);
        persist(&ds, &ca).await.unwrap();
        let prepared = commit(&ds, &ca, prepare).await.unwrap().unwrap();
        let shown = ca.authorities(X509);
        assert!(shown.contains(&prepared));
        let bundle = ca.bundle();

        ds.close().await;
        let err = commit(&ds, &ca, prepare).await.unwrap_err();
        assert!(matches!(err, CommitError::NotStored(_)), "{err}");
        assert_eq!(ca.authorities(X509), shown, "applied in memory");
        assert_eq!(ca.bundle(), bundle, "published");
        assert!(!ca.needs_persist());

        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        let restarted = open_ca(load_journal(&ds, &id).await.unwrap());
        assert_eq!(
            restarted.authorities(X509),
            shown,
            "the stored CA resumes whole"
        );
    }

    #[tokio::test]
    async fn a_restarted_replica_resumes_its_journal_and_sequence_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        let a = replica(&ds, "a").await;
        let b = replica(&ds, "b").await;
        let seq = b.bundle().sequence;
        let cert_a = own_cert(&a);
        drop(a);
        // Memory key manager: the restarted A keeps its old CA in the bundle and makes a new one.
        let a = replica(&ds, "a").await;
        assert_eq!(a.journal().x509_authorities[0].cert_der, cert_a);
        assert_eq!(a.journal().x509_authorities.len(), 2);
        assert!(a.bundle().sequence > seq);
        assert_eq!(ds.list_replica_journals().await.unwrap().len(), 2);
        assert!(refresh_bundle(&ds, &b).await.unwrap());
        assert_eq!(b.bundle().x509_authorities.len(), 3);
    }

    #[test]
    fn sequence_grows_only_when_the_union_changes() {
        let union = |kid: &str| {
            let mut b = Bundle::new(td());
            b.jwt_authorities.push(sigil_proto::JwtAuthority {
                key_id: kid.into(),
                public_key: vec![1],
                expires_at: 9,
                tainted: false,
            });
            b
        };
        let mut stored = union("a");
        stored.sequence = 5;
        assert_eq!(
            next_sequence(Some(&stored), &union("a"), 3),
            5,
            "same authorities"
        );
        assert_eq!(
            next_sequence(Some(&stored), &union("a"), 7),
            7,
            "never behind ours"
        );
        assert_eq!(next_sequence(Some(&stored), &union("b"), 3), 6);
        assert_eq!(next_sequence(Some(&stored), &union("b"), 8), 9);
        assert_eq!(next_sequence(None, &union("b"), 2), 3);
    }

    #[test]
    fn expired_journals_of_other_replicas_are_dropped() {
        let live = CaJournal {
            jwt_keys: vec![crate::ca::journal::JwtKeyRecord {
                kid: "k".into(),
                public_key: vec![1],
                key_id: "JWT-Signer-A".into(),
                status: crate::ca::rotation::AuthorityStatus::Old,
                issued_at: 0,
                not_after: 100,
                tainted: false,
            }],
            ..CaJournal::default()
        };
        let stored = |id: &str, j: &CaJournal| ReplicaJournal {
            replica_id: id.into(),
            data: j.to_bytes().unwrap(),
            updated_at: 0,
        };
        let rows = [
            stored("own", &CaJournal::default()),
            stored("dead", &CaJournal::default()),
            stored("live", &live),
            ReplicaJournal {
                replica_id: "corrupt".into(),
                data: b"{".to_vec(),
                updated_at: 0,
            },
        ];
        let (journals, gone) = decode_journals(&rows, &ReplicaId::new("own").unwrap(), 50);
        assert_eq!(journals.len(), 3);
        assert_eq!(gone, vec!["dead".to_owned()]);
        let (_, gone) = decode_journals(&rows, &ReplicaId::new("own").unwrap(), 100);
        assert_eq!(gone, vec!["dead".to_owned(), "live".to_owned()]);
    }

    /// Two replicas on one PostgreSQL database, each following its own datastore's change
    /// feed: an entry written through B and B's CA reach A through the feed alone (A's
    /// safety-net refresh is an hour away).
    #[tokio::test]
    async fn the_change_feed_carries_entries_and_bundles_between_replicas() {
        let url = crate::datastore::tests::pg_database().await;
        let ds_a = Datastore::open_postgres(&url).await.unwrap();
        let ds_b = Datastore::open_postgres(&url).await.unwrap();
        let a = Arc::new(replica(&ds_a, "a").await);
        let mut seen = ds_a.entry_revisions();
        let cancel = CancellationToken::new();
        let follower = tokio::spawn(follow_changes(
            ds_a.clone(),
            a.clone(),
            Duration::from_secs(3600),
            cancel.clone(),
        ));

        let b = replica(&ds_b, "b").await;
        let cert_b = own_cert(&b);
        let mut bundles = a.subscribe();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !a.bundle().x509_authorities.contains(&cert_b) {
                bundles.changed().await.unwrap();
            }
        })
        .await
        .expect("A adopts B's CA from the feed");

        let created = ds_b
            .create_entries(vec![crate::datastore::tests::entry(
                "spiffe://example.org/web",
                "spiffe://example.org/spire/agent/x",
                &["unix:uid:1000"],
            )])
            .await
            .unwrap();
        let revision = created[0].revision;
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|r| *r >= revision))
            .await
            .expect("A's sync streams are woken by B's write")
            .unwrap();

        cancel.cancel();
        follower.await.unwrap().unwrap();
    }
}
