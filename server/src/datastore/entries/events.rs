//! The entries' change feed (`entry_events`): what happened to which entry, in revision order.
//!
//! One job: the events themselves. A write appends one per change in its own transaction
//! ([`append_event`], [`append_upserts`]), so an entry's `revision` is always that of its
//! latest event; agents sync by listing the events after the last revision they saw; pruning
//! drops old events but never the latest, so the latest revision never goes back.

use std::collections::HashMap;

use sigil_proto::{RegistrationEntry, SpiffeId};
use sqlx::Row;

use crate::datastore::sql::Sql;
use crate::datastore::{Datastore, DatastoreError, PRUNE_BATCH, Tx};

/// What happened to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryEventKind {
    /// Created or changed: fetch the entry for its current state.
    Upsert,
    /// Deleted, pruned, or moved away from `parent_id` by an update.
    Delete,
}

impl EntryEventKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Result<Self, DatastoreError> {
        match s {
            "upsert" => Ok(Self::Upsert),
            "delete" => Ok(Self::Delete),
            other => Err(DatastoreError::Corrupt(format!(
                "unknown entry event kind {other:?}"
            ))),
        }
    }
}

/// One change to one entry, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryEvent {
    pub revision: i64,
    pub entry_id: String,
    /// The entry's parent when the event was written. An update that changes the parent
    /// writes a `Delete` under the old parent, then an `Upsert` under the new one.
    pub parent_id: SpiffeId,
    pub kind: EntryEventKind,
}

impl Datastore {
    /// Up to `limit` events with a revision greater than `after_revision`, oldest first.
    pub async fn list_entry_events(
        &self,
        after_revision: i64,
        limit: u32,
    ) -> Result<Vec<EntryEvent>, DatastoreError> {
        let rows: Vec<(i64, String, String, String)> = on_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT revision, entry_id, parent_id, kind FROM entry_events \
                 WHERE revision > $1 ORDER BY revision LIMIT $2",
            )
            .bind(after_revision)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?
        });
        rows.into_iter()
            .map(|(revision, entry_id, parent, kind)| {
                Ok(EntryEvent {
                    revision,
                    entry_id,
                    parent_id: parse_id(&parent, "entry event parent ID")?,
                    kind: EntryEventKind::parse(&kind)?,
                })
            })
            .collect()
    }

    /// The revision of the latest event, 0 if there has been none.
    pub async fn latest_entry_revision(&self) -> Result<i64, DatastoreError> {
        let latest: i64 = on_pool!(&self.pool, p => {
            sqlx::query_scalar(LATEST_ENTRY_REVISION)
                .fetch_one(p)
                .await?
        });
        Ok(latest)
    }

    /// Deletes events with a revision below `before_revision`, except the latest event, so
    /// [`latest_entry_revision`](Self::latest_entry_revision) never goes back. Returns how many.
    /// Works in batches, one short write transaction each.
    pub async fn prune_entry_events(&self, before_revision: i64) -> Result<u64, DatastoreError> {
        let mut total = 0u64;
        loop {
            let mut tx = self.begin_write().await?;
            let done = on_tx!(&mut tx, c => {
                sqlx::query(
                    "DELETE FROM entry_events WHERE revision IN \
                     (SELECT revision FROM entry_events WHERE revision < $1 \
                      AND revision < (SELECT MAX(revision) FROM entry_events) \
                      ORDER BY revision LIMIT $2)",
                )
                .bind(before_revision)
                .bind(PRUNE_BATCH)
                .execute(&mut **c)
                .await?
                .rows_affected()
            });
            tx.commit().await?;
            total += done;
            if done < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(total)
    }
}

/// The revision of the latest entry event, 0 if there has been none.
pub(in crate::datastore) const LATEST_ENTRY_REVISION: &str =
    "SELECT COALESCE(MAX(revision), 0) FROM entry_events";

/// Appends an event and returns its revision.
pub(super) async fn append_event(
    tx: &mut Tx,
    entry_id: &str,
    parent_id: &str,
    kind: EntryEventKind,
    now: i64,
) -> Result<i64, DatastoreError> {
    let revision: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(
            "INSERT INTO entry_events (entry_id, parent_id, kind, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING revision",
        )
        .bind(entry_id)
        .bind(parent_id)
        .bind(kind.as_str())
        .bind(now)
        .fetch_one(&mut **c)
        .await?
    });
    Ok(revision)
}

/// Appends one `Upsert` event per entry of `chunk` and sets each entry's `revision` to it.
pub(super) async fn append_upserts(
    tx: &mut Tx,
    chunk: &mut [RegistrationEntry],
    now: i64,
) -> Result<(), DatastoreError> {
    let mut sql =
        Sql::new("INSERT INTO entry_events (entry_id, parent_id, kind, created_at) VALUES ");
    sql.push_rows(chunk.iter(), |row, e| {
        row.bind(e.id.as_str())
            .bind(e.parent_id.to_string())
            .bind(EntryEventKind::Upsert.as_str())
            .bind(now);
    });
    sql.push(" RETURNING revision, entry_id");
    // Neither backend promises RETURNING rows in insertion order, so match them by entry ID. A
    // repeated ID gets either revision; its second row is refused by the primary key anyway.
    let rows: Vec<(i64, String)> = on_tx!(tx, c => {
        let rows = sql.query().fetch_all(&mut **c).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    let revisions: HashMap<String, i64> = rows.into_iter().map(|(r, id)| (id, r)).collect();
    for e in chunk {
        e.revision = *revisions.get(&e.id).ok_or_else(|| {
            DatastoreError::Corrupt(format!("no event revision returned for entry {:?}", e.id))
        })?;
    }
    Ok(())
}

fn parse_id(s: &str, what: &str) -> Result<SpiffeId, DatastoreError> {
    SpiffeId::new(s).map_err(|e| DatastoreError::Corrupt(format!("{what} {s:?}: {e}")))
}
