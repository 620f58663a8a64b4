//! The change feed: what changed in the datastore, pushed to subscribers so that replicas need
//! no periodic reload.
//!
//! On PostgreSQL every write transaction sends its changes with `pg_notify` on [`CHANNEL`]
//! (delivered only if it commits) and each [`Datastore`](super::Datastore) keeps a `LISTEN`
//! connection, so a change written through one server replica reaches all of them. On SQLite
//! one process owns the database and the changes are published in-process after commit.
//!
//! The feed alone also keeps the latest committed entry revision ([`Feed::entry_revisions`]):
//! whoever changed the entries (the admin API, the pruner, another replica), agents' sync
//! streams wake on it, and nothing else publishes it.

use std::sync::Mutex;
use std::time::Duration;

use sigil_proto::{SpiffeId, TrustDomain};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::DatastoreError;

/// The PostgreSQL notification channel.
pub(super) const CHANNEL: &str = "sigil_changes";

/// Changes a slow subscriber may fall behind by before it gets `RecvError::Lagged`.
const CAPACITY: usize = 4096;

/// How long the listener waits between reconnection attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// One committed change. Each says what to re-read, not the new state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Registration entries changed: events up to `revision` are committed
    /// ([`list_entry_events`](super::Datastore::list_entry_events) after your last revision).
    Entries { revision: i64 },
    /// The bundle of this trust domain was stored or deleted.
    Bundle(TrustDomain),
    /// This attested node was created, updated, banned, evicted or pruned.
    AttestedNode(SpiffeId),
    /// The federation relationship with this trust domain was created, updated or deleted.
    FederationRelationship(TrustDomain),
    /// Changes may have been missed (the PostgreSQL listener lost its connection and is back):
    /// re-read whatever is cached. A subscriber that gets `RecvError::Lagged` must do the same.
    Resync,
}

impl Change {
    /// The `pg_notify` payload (well under PostgreSQL's 8000-byte limit: a SPIFFE ID is at most
    /// 2048 bytes).
    pub(super) fn encode(&self) -> String {
        match self {
            Self::Entries { revision } => format!("e:{revision}"),
            Self::Bundle(td) => format!("b:{td}"),
            Self::AttestedNode(id) => format!("n:{id}"),
            Self::FederationRelationship(td) => format!("f:{td}"),
            Self::Resync => "r:".to_owned(),
        }
    }

    /// Parses a payload; `None` for one this version does not know (a newer replica's).
    pub(super) fn decode(payload: &str) -> Option<Self> {
        let (kind, rest) = payload.split_once(':')?;
        match kind {
            "e" => Some(Self::Entries {
                revision: rest.parse().ok()?,
            }),
            "b" => TrustDomain::new(rest).ok().map(Change::Bundle),
            "n" => SpiffeId::new(rest).ok().map(Change::AttestedNode),
            "f" => TrustDomain::new(rest)
                .ok()
                .map(Change::FederationRelationship),
            "r" => Some(Self::Resync),
            _ => None,
        }
    }
}

/// Where the feed's changes go: the subscribers, and the latest entry revision.
#[derive(Clone)]
struct Outlet {
    changes: broadcast::Sender<Change>,
    entry_revision: watch::Sender<i64>,
}

impl Outlet {
    fn new() -> Self {
        Self {
            changes: broadcast::channel(CAPACITY).0,
            entry_revision: watch::Sender::new(0),
        }
    }

    /// Hands `change` to the subscribers (none is not an error) after raising the entry
    /// revision it carries.
    fn send(&self, change: Change) {
        if let Change::Entries { revision } = change {
            self.raise_entry_revision(revision);
        }
        let _ = self.changes.send(change);
    }

    /// Raises the latest entry revision, never lowers it: notifications from several writers
    /// may arrive out of order.
    fn raise_entry_revision(&self, revision: i64) {
        self.entry_revision.send_if_modified(|latest| {
            let newer = revision > *latest;
            if newer {
                *latest = revision;
            }
            newer
        });
    }
}

/// The sending side, shared by a datastore's clones; the listener task (PostgreSQL) ends when
/// the last clone is dropped or the datastore is closed.
pub(super) struct Feed {
    outlet: Outlet,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl Feed {
    /// A feed fed by this process's own writes (SQLite).
    pub(super) fn local() -> Self {
        Self {
            outlet: Outlet::new(),
            listener: Mutex::new(None),
        }
    }

    /// A feed fed by `LISTEN` on PostgreSQL. Fails if the first connection fails.
    pub(super) async fn listen(pool: &PgPool) -> Result<Self, DatastoreError> {
        let listener = connect(pool).await?;
        let outlet = Outlet::new();
        let feed = run_listener(pool.clone(), listener, outlet.clone());
        let span = tracing::info_span!("task", name = "datastore change feed");
        let task = tokio::spawn(tracing::Instrument::instrument(feed, span));
        Ok(Self {
            outlet,
            listener: Mutex::new(Some(task)),
        })
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.outlet.changes.subscribe()
    }

    /// The latest committed entry revision: see [`super::Datastore::entry_revisions`].
    pub(super) fn entry_revisions(&self) -> watch::Receiver<i64> {
        self.outlet.entry_revision.subscribe()
    }

    /// Raises the latest entry revision to one read from the database (at open, before any
    /// change is announced).
    pub(super) fn raise_entry_revision(&self, revision: i64) {
        self.outlet.raise_entry_revision(revision);
    }

    /// Publishes a change in-process.
    pub(super) fn publish(&self, change: Change) {
        self.outlet.send(change);
    }

    pub(super) fn stop(&self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listener on [`CHANNEL`] that reports a lost connection instead of reconnecting silently.
async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Forwards notifications to subscribers. When the connection drops (PostgreSQL restarted,
/// network cut), notifications sent meanwhile are lost for good, so once a new listener is
/// connected and listening, the latest entry revision is read again and subscribers get
/// [`Change::Resync`].
async fn run_listener(pool: PgPool, mut listener: PgListener, outlet: Outlet) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match Change::decode(notification.payload()) {
                Some(change) => outlet.send(change),
                None => tracing::debug!("ignoring an unknown change notification"),
            },
            Err(sqlx::Error::PoolClosed) => return,
            // A fresh listener rather than sqlx's reconnection, which keeps a connection that
            // failed with an error other than a clean disconnect.
            Ok(None) | Err(_) => {
                tracing::warn!("lost the PostgreSQL change feed connection; reconnecting");
                listener = loop {
                    if pool.is_closed() {
                        return;
                    }
                    match connect(&pool).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::debug!(error = %e, "change feed reconnect failed");
                            tokio::time::sleep(RECONNECT_DELAY).await;
                        }
                    }
                };
                tracing::info!("PostgreSQL change feed reconnected");
                match sqlx::query_scalar(super::entries::LATEST_ENTRY_REVISION)
                    .fetch_one(&pool)
                    .await
                {
                    Ok(revision) => outlet.raise_entry_revision(revision),
                    // Agents' streams pick up what they missed at their fallback tick.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the entry revision after the change feed reconnected")
                    }
                }
                outlet.send(Change::Resync);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sigil_proto::Bundle;
    use tokio::sync::broadcast::error::TryRecvError;

    use super::super::entries::tests::entry;
    use super::super::nodes::tests::node;
    use super::super::tests::{pg_database, store};
    use super::super::{Datastore, DatastoreError};
    use super::*;

    const AGENT: &str = "spiffe://td/spire/agent/a";

    /// The next change; a guard against a hang, not a timing assertion.
    async fn next(rx: &mut broadcast::Receiver<Change>) -> Change {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("no change within 30 s")
            .unwrap()
    }

    /// Writes one of each kind of change through `ds`, a failed write in between; returns
    /// what a subscriber must then see, in order.
    async fn write_each_kind(ds: &Datastore) -> Vec<Change> {
        let e = ds
            .create_entries(vec![entry("spiffe://td/w", AGENT, &["unix:uid:1"])])
            .await
            .unwrap()
            .remove(0);
        // Refused (duplicate): rolled back, so nothing is announced.
        let dup = ds
            .create_entries(vec![entry("spiffe://td/w", AGENT, &["unix:uid:1"])])
            .await;
        assert!(matches!(dup, Err(DatastoreError::AlreadyExists(_))));
        let td = TrustDomain::new("td").unwrap();
        ds.set_bundle(&Bundle::new(td.clone())).await.unwrap();
        let n = ds.create_attested_node(node(AGENT)).await.unwrap();
        ds.set_attested_node_banned(&n.spiffe_id, true)
            .await
            .unwrap();
        let deleted = ds
            .delete_entries(std::slice::from_ref(&e.id))
            .await
            .unwrap();
        assert_eq!(deleted.len(), 1);
        let latest = ds.latest_entry_revision().await.unwrap();
        vec![
            Change::Entries {
                revision: e.revision,
            },
            Change::Bundle(td),
            Change::AttestedNode(n.spiffe_id.clone()),
            Change::AttestedNode(n.spiffe_id),
            Change::Entries { revision: latest },
        ]
    }

    #[tokio::test]
    async fn sqlite_feed_publishes_committed_writes_in_process() {
        let (_dir, ds) = store().await;
        let mut rx = ds.subscribe_changes();
        let want = write_each_kind(&ds).await;
        for w in want {
            assert_eq!(rx.try_recv().unwrap(), w);
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        // A clone shares the feed.
        let clone = ds.clone();
        clone
            .set_bundle(&Bundle::new(TrustDomain::new("x.org").unwrap()))
            .await
            .unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            Change::Bundle(TrustDomain::new("x.org").unwrap())
        );
    }

    #[tokio::test]
    async fn postgres_changes_written_through_one_datastore_reach_another() {
        let url = pg_database().await;
        let a = Datastore::open_postgres(&url).await.unwrap();
        let b = Datastore::open_postgres(&url).await.unwrap();
        let mut on_a = a.subscribe_changes();
        let mut on_b = b.subscribe_changes();
        let want = write_each_kind(&a).await;
        for w in &want {
            assert_eq!(&next(&mut on_b).await, w);
            assert_eq!(&next(&mut on_a).await, w, "the writer hears itself too");
        }
        // And the other way round.
        b.set_bundle(&Bundle::new(TrustDomain::new("y.org").unwrap()))
            .await
            .unwrap();
        assert_eq!(
            next(&mut on_a).await,
            Change::Bundle(TrustDomain::new("y.org").unwrap())
        );
        a.close().await;
        b.close().await;
    }

    /// The latest entry revision comes from the feed alone: it starts at what is stored, rises
    /// with every committed entry change (nothing else), and on PostgreSQL with those written
    /// through another datastore.
    #[tokio::test]
    async fn entry_revisions_start_at_the_stored_one_and_follow_the_feed() {
        let (dir, ds) = store().await;
        let revisions = ds.entry_revisions();
        assert_eq!(*revisions.borrow(), 0);
        write_each_kind(&ds).await;
        let latest = ds.latest_entry_revision().await.unwrap();
        assert!(latest > 0);
        assert_eq!(*revisions.borrow(), latest);
        ds.set_bundle(&Bundle::new(TrustDomain::new("x.org").unwrap()))
            .await
            .unwrap();
        assert_eq!(*revisions.borrow(), latest, "not an entry change");
        ds.close().await;
        let reopened = Datastore::open("datastore.sqlite3", dir.path())
            .await
            .unwrap();
        assert_eq!(*reopened.entry_revisions().borrow(), latest);

        let url = pg_database().await;
        let a = Datastore::open_postgres(&url).await.unwrap();
        let b = Datastore::open_postgres(&url).await.unwrap();
        let mut on_b = b.entry_revisions();
        write_each_kind(&a).await;
        let latest = a.latest_entry_revision().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), on_b.wait_for(|r| *r == latest))
            .await
            .expect("B hears of A's entry changes")
            .unwrap();
        let c = Datastore::open_postgres(&url).await.unwrap();
        assert_eq!(*c.entry_revisions().borrow(), latest);
        for ds in [a, b, c] {
            ds.close().await;
        }
    }

    #[test]
    fn payloads_round_trip() {
        let changes = [
            Change::Entries { revision: 42 },
            Change::Bundle(TrustDomain::new("example.org").unwrap()),
            Change::AttestedNode(SpiffeId::new("spiffe://example.org/spire/agent/x").unwrap()),
            Change::FederationRelationship(TrustDomain::new("other.org").unwrap()),
            Change::Resync,
        ];
        for c in changes {
            assert_eq!(Change::decode(&c.encode()), Some(c.clone()), "{c:?}");
        }
        for bad in ["", "e:x", "z:1", "b:Not A Domain", "n:http://x"] {
            assert_eq!(Change::decode(bad), None, "{bad}");
        }
    }
}
