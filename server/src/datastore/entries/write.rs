//! Writing entries: create, update, delete and prune.
//!
//! One job: changing `registered_entries` and its selectors, each change with its event
//! (`super::events`) in the same transaction, and publishing the new revision once committed.
//! The checks every write makes before it touches a row ([`prepare`]) and the messages for a
//! refused one ([`conflict`]) live here too.

use std::collections::HashSet;
use std::time::Duration;

use sigil_common::time::unix_now;
use sigil_proto::selector::canonicalize;
use sigil_proto::{RegistrationEntry, Selector, TrustDomain};
use uuid::Uuid;

use super::events::{EntryEventKind, append_event, append_upserts};
use super::read::fetch_in;
use crate::datastore::selectors::{self, ENTRY_SELECTORS};
use crate::datastore::sql::Sql;
use crate::datastore::{Change, Datastore, DatastoreError, PRUNE_BATCH, Tx, is_unique_violation};

/// Entries written per multi-row `INSERT` by [`Datastore::create_entries`]: 15 parameters per
/// row stays well under SQLite's 32,766 (and PostgreSQL's 65,535) per statement.
const INSERT_CHUNK: usize = 1000;

impl Datastore {
    /// Creates all `entries` in one transaction, or none of them.
    ///
    /// Assigns `id` (a UUID v7) unless set, `created_at` (now) and `revision`; canonicalizes the
    /// selectors. An entry with the same SPIFFE ID, parent and selector set as an existing one
    /// (or an earlier one in the batch), or a taken `id`, is `AlreadyExists`.
    pub async fn create_entries(
        &self,
        mut entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let now = unix_now();
        let mut keys = Vec::with_capacity(entries.len());
        for entry in &mut entries {
            keys.push(prepare(entry)?);
            if entry.id.is_empty() {
                // Time-ordered (v7): new IDs land at the end of the ID indexes instead of at
                // random pages, which keeps a bulk load's writes (and WAL) proportional to the
                // batch, not to the table. 74 random bits still make IDs unguessable.
                entry.id = Uuid::now_v7().to_string();
            }
            entry.created_at = now;
        }
        // Multi-row statements, a chunk at a time: a few statements per thousand entries instead
        // of three round trips per entry. Fixed-size chunks keep the SQL text the same, so the
        // connection's statement cache prepares each one once.
        let mut tx = self.begin_write().await?;
        for (chunk, keys) in entries
            .chunks_mut(INSERT_CHUNK)
            .zip(keys.chunks(INSERT_CHUNK))
        {
            append_upserts(&mut tx, chunk, now).await?;
            insert_rows(&mut tx, chunk, keys).await?;
            let owned: Vec<(&str, &[Selector])> = chunk
                .iter()
                .map(|e| (e.id.as_str(), e.selectors.as_slice()))
                .collect();
            selectors::insert_many(&mut tx, ENTRY_SELECTORS, &owned).await?;
        }
        let changes = latest_change(entries.iter().map(|e| e.revision));
        self.commit(tx, changes).await?;
        Ok(entries)
    }

    /// Replaces every field except `id` and `created_at` of each entry, in one transaction;
    /// bumps their revisions. An unknown ID is `NotFound`, a change that makes an entry equal
    /// to another (SPIFFE ID, parent, selectors) is `AlreadyExists`; either way nothing changes.
    pub async fn update_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let now = unix_now();
        let mut tx = self.begin_write().await?;
        let mut updated = Vec::with_capacity(entries.len());
        for mut entry in entries {
            let selector_key = prepare(&mut entry)?;
            let current: Option<(String, i64, String)> = on_tx!(&mut tx, c => {
                sqlx::query_as(
                    "SELECT parent_id, created_at, selector_key FROM registered_entries \
                     WHERE id = $1",
                )
                .bind(&entry.id)
                .fetch_optional(&mut **c)
                .await?
            });
            let (old_parent, created_at, old_key) = current.ok_or_else(|| not_found(&entry.id))?;
            entry.created_at = created_at;

            let parent = entry.parent_id.to_string();
            if old_parent != parent {
                // Tell the old parent's agents the entry left them.
                append_event(&mut tx, &entry.id, &old_parent, EntryEventKind::Delete, now).await?;
            }
            entry.revision =
                append_event(&mut tx, &entry.id, &parent, EntryEventKind::Upsert, now).await?;
            update_row(&mut tx, &entry, &selector_key)
                .await
                .map_err(|e| conflict(e, &entry))?;
            if old_key != selector_key {
                selectors::delete(&mut tx, ENTRY_SELECTORS, &entry.id).await?;
                selectors::insert(&mut tx, ENTRY_SELECTORS, &entry.id, &entry.selectors).await?;
            }
            updated.push(entry);
        }
        let changes = latest_change(updated.iter().map(|e| e.revision));
        self.commit(tx, changes).await?;
        Ok(updated)
    }

    /// Deletes the entries with these IDs in one transaction and returns them as they were.
    /// An unknown ID is `NotFound` and nothing is deleted. Repeated IDs count once.
    pub async fn delete_entries(
        &self,
        ids: &[String],
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let now = unix_now();
        let mut seen = HashSet::new();
        let mut tx = self.begin_write().await?;
        let mut deleted = Vec::with_capacity(ids.len());
        let mut latest = None;
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            let entry = fetch_in(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
            // Selectors go with the row (ON DELETE CASCADE).
            on_tx!(&mut tx, c => {
                sqlx::query("DELETE FROM registered_entries WHERE id = $1")
                    .bind(id)
                    .execute(&mut **c)
                    .await?.rows_affected()
            });
            let parent = entry.parent_id.to_string();
            latest = Some(append_event(&mut tx, id, &parent, EntryEventKind::Delete, now).await?);
            deleted.push(entry);
        }
        self.commit(tx, latest_change(latest)).await?;
        Ok(deleted)
    }

    /// Deletes the entries that expired before `now` (Unix seconds), writing a `Delete` event
    /// for each; returns how many. Works in batches, one short write transaction each.
    pub async fn prune_entries(&self, now: i64) -> Result<u64, DatastoreError> {
        self.prune_in_batches(|tx| {
            Box::pin(async move {
            let pruned: Vec<(String, String)> = on_tx!(&mut *tx, c => {
                sqlx::query_as(
                    "DELETE FROM registered_entries WHERE id IN \
                     (SELECT id FROM registered_entries WHERE expires_at < $1 ORDER BY id LIMIT $2) \
                     RETURNING id, parent_id",
                )
                .bind(now)
                .bind(PRUNE_BATCH)
                .fetch_all(&mut **c)
                .await?
            });
            let event_time = unix_now();
            let mut latest = None;
            for (id, parent) in &pruned {
                latest = Some(append_event(tx, id, parent, EntryEventKind::Delete, event_time).await?);
            }
            Ok((pruned.len() as u64, latest_change(latest)))
            })
        })
        .await
    }
}

/// The change to publish for a write whose events have these revisions (none if no event).
fn latest_change(revisions: impl IntoIterator<Item = i64>) -> Vec<Change> {
    revisions
        .into_iter()
        .max()
        .map(|revision| Change::Entries { revision })
        .into_iter()
        .collect()
}

/// Canonicalizes and checks an entry before it is written; returns its selector key.
fn prepare(entry: &mut RegistrationEntry) -> Result<String, DatastoreError> {
    canonicalize(&mut entry.selectors);
    if entry.selectors.is_empty() {
        return Err(DatastoreError::InvalidArgument(format!(
            "entry for {} has no selectors",
            entry.spiffe_id
        )));
    }
    if entry.id.chars().any(char::is_control) {
        return Err(DatastoreError::InvalidArgument(
            "entry ID contains a control character".into(),
        ));
    }
    Ok(selectors::selector_key(&entry.selectors))
}

fn not_found(id: &str) -> DatastoreError {
    DatastoreError::NotFound(format!("entry {id:?}"))
}

/// Maps the unique index's refusal to an error naming the entry.
fn conflict(err: DatastoreError, entry: &RegistrationEntry) -> DatastoreError {
    match err {
        DatastoreError::Database(e) if is_unique_violation(&e) && is_id_conflict(&e) => {
            DatastoreError::AlreadyExists(format!("entry ID {:?}", entry.id))
        }
        DatastoreError::Database(e) if is_unique_violation(&e) => {
            DatastoreError::AlreadyExists(format!(
                "an entry for {} with parent {} and the same selectors",
                entry.spiffe_id, entry.parent_id
            ))
        }
        other => other,
    }
}

/// Whether a unique violation is on the entry ID (rather than on SPIFFE ID, parent, selectors).
fn is_id_conflict(err: &sqlx::Error) -> bool {
    let Some(db) = err.as_database_error() else {
        return false;
    };
    // PostgreSQL names the constraint; SQLite names the columns in its message:
    // "UNIQUE constraint failed: registered_entries.id".
    db.constraint() == Some("registered_entries_pkey")
        || db.message().contains("registered_entries.id")
}

/// Inserts the rows of `chunk` in one statement. On a uniqueness refusal the statement (only)
/// is undone, and the rows are retried one by one to name the entry that conflicts.
async fn insert_rows(
    tx: &mut Tx,
    chunk: &[RegistrationEntry],
    keys: &[String],
) -> Result<(), DatastoreError> {
    // PostgreSQL aborts the whole transaction on an error, unlike SQLite which undoes only the
    // statement: a savepoint lets the one-by-one retry run.
    let savepoint = tx.is_postgres() && chunk.len() > 1;
    if savepoint {
        execute(tx, "SAVEPOINT insert_rows").await?;
    }
    match insert_rows_once(tx, chunk, keys).await {
        Err(DatastoreError::Database(e)) if is_unique_violation(&e) && chunk.len() > 1 => {
            if savepoint {
                execute(tx, "ROLLBACK TO SAVEPOINT insert_rows").await?;
            }
            for (entry, key) in chunk.iter().zip(keys) {
                insert_rows_once(tx, std::slice::from_ref(entry), std::slice::from_ref(key))
                    .await
                    .map_err(|e| conflict(e, entry))?;
            }
            // Unreachable in practice: the chunk conflicted but no single row did.
            Err(DatastoreError::Database(e))
        }
        Err(e) => Err(match chunk {
            [entry] => conflict(e, entry),
            _ => e,
        }),
        Ok(()) => {
            if savepoint {
                execute(tx, "RELEASE SAVEPOINT insert_rows").await?;
            }
            Ok(())
        }
    }
}

/// Runs one statement without arguments.
async fn execute(tx: &mut Tx, statement: &'static str) -> Result<(), DatastoreError> {
    on_tx!(tx, c => sqlx::query(statement).execute(&mut **c).await.map(|d| d.rows_affected()))?;
    Ok(())
}

async fn insert_rows_once(
    tx: &mut Tx,
    chunk: &[RegistrationEntry],
    keys: &[String],
) -> Result<(), DatastoreError> {
    let mut sql = Sql::new(
        "INSERT INTO registered_entries (id, spiffe_id, parent_id, selector_key, x509_svid_ttl, \
         jwt_svid_ttl, dns_names, federates_with, admin, downstream, hint, expires_at, revision, \
         created_at, template) VALUES ",
    );
    sql.push_rows(chunk.iter().zip(keys), |row, (e, key)| {
        row.bind(e.id.as_str())
            .bind(e.spiffe_id.to_string())
            .bind(e.parent_id.to_string())
            .bind(key.as_str())
            .bind(ttl_seconds(e.x509_svid_ttl))
            .bind(ttl_seconds(e.jwt_svid_ttl))
            .bind(json_list(e.dns_names.iter().map(String::as_str)))
            .bind(json_list(e.federates_with.iter().map(TrustDomain::as_str)))
            .bind(e.admin)
            .bind(e.downstream)
            .bind(e.hint.as_str())
            .bind(e.expires_at)
            .bind(e.revision)
            .bind(e.created_at)
            .bind(e.spiffe_id.template().is_some());
    });
    on_tx!(tx, c => sql.query().execute(&mut **c).await.map(|d| d.rows_affected()))?;
    Ok(())
}

async fn update_row(
    tx: &mut Tx,
    e: &RegistrationEntry,
    selector_key: &str,
) -> Result<(), DatastoreError> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE registered_entries SET spiffe_id = $1, parent_id = $2, selector_key = $3, \
             x509_svid_ttl = $4, jwt_svid_ttl = $5, dns_names = $6, federates_with = $7, \
             admin = $8, downstream = $9, hint = $10, expires_at = $11, revision = $12, \
             template = $13 WHERE id = $14",
        )
        .bind(e.spiffe_id.to_string())
        .bind(e.parent_id.to_string())
        .bind(selector_key)
        .bind(ttl_seconds(e.x509_svid_ttl))
        .bind(ttl_seconds(e.jwt_svid_ttl))
        .bind(json_list(e.dns_names.iter().map(String::as_str)))
        .bind(json_list(e.federates_with.iter().map(TrustDomain::as_str)))
        .bind(e.admin)
        .bind(e.downstream)
        .bind(&e.hint)
        .bind(e.expires_at)
        .bind(e.revision)
        .bind(e.spiffe_id.template().is_some())
        .bind(&e.id)
        .execute(&mut **c)
        .await
        .map(|d| d.rows_affected())
    })?;
    Ok(())
}

/// A TTL as stored: whole seconds, 0 for the server's default.
fn ttl_seconds(ttl: Option<Duration>) -> i64 {
    ttl.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A JSON array of strings (serializing strings cannot fail).
fn json_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    serde_json::Value::Array(
        items
            .map(|s| serde_json::Value::String(s.to_owned()))
            .collect(),
    )
    .to_string()
}
