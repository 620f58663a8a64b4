//! Registration entries and their change feed (`entry_events`).
//!
//! Every create, update and delete appends an event in the same transaction; an entry's
//! `revision` is the revision of its latest event. Agents sync by asking for the events after
//! the last revision they saw.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sigil_proto::selector::canonicalize;
use sigil_proto::{EntrySpiffeId, IdTemplate, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use super::selectors::{self, ENTRY_SELECTORS, SelectorMatch};
use super::sql::Sql;
use super::{
    Change, Datastore, DatastoreError, PRUNE_BATCH, Tx, finish_page, is_unique_violation,
    page_bounds, unix_now,
};

/// Entries written per multi-row `INSERT` by [`Datastore::create_entries`]: 15 parameters per
/// row stays well under SQLite's 32,766 (and PostgreSQL's 65,535) per statement.
const INSERT_CHUNK: usize = 1000;

/// The columns [`entry_from_row`] reads, from `registered_entries e`. A macro so that
/// `concat!` can build `&'static str` queries from it.
macro_rules! entry_columns {
    () => {
        "e.id, e.spiffe_id, e.parent_id, e.x509_svid_ttl, e.jwt_svid_ttl, e.dns_names, \
         e.federates_with, e.admin, e.downstream, e.hint, e.expires_at, e.revision, e.created_at, \
         e.template"
    };
}

/// Which entries to list or count; every set field must match (AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// The SPIFFE ID as written: a fixed ID, or a template's text.
    pub spiffe_id: Option<String>,
    pub parent_id: Option<SpiffeId>,
    /// A non-empty selector set and how entries' selectors must relate to it.
    pub selectors: Option<(Vec<Selector>, SelectorMatch)>,
    pub hint: Option<String>,
}

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

    /// The entry with this ID, if any.
    pub async fn fetch_entry(&self, id: &str) -> Result<Option<RegistrationEntry>, DatastoreError> {
        // A read transaction: the entry row and its selectors come from one snapshot.
        let mut tx = self.begin_read().await?;
        let entry = fetch_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(entry)
    }

    /// One page of the entries matching `filter`, in ID order, and the token of the next page
    /// (the last ID returned) if there is one. `page_size` must be positive; the caller caps it.
    pub async fn list_entries(
        &self,
        filter: &EntryFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<(Vec<RegistrationEntry>, Option<String>), DatastoreError> {
        let (limit, after) = page_bounds(page_size, page_token)?;
        let mut sql = Sql::new(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM registered_entries e WHERE e.id > "
        ));
        sql.bind(after);
        push_filter(&mut sql, filter)?;
        sql.push(" ORDER BY e.id LIMIT ");
        sql.bind(limit);
        let mut tx = self.begin_read().await?;
        let entries = query_entries(&mut tx, sql).await?;
        tx.commit().await?;
        Ok(finish_page(entries, page_size, |e| e.id.clone()))
    }

    /// How many entries match `filter`.
    pub async fn count_entries(&self, filter: &EntryFilter) -> Result<u64, DatastoreError> {
        let mut sql = Sql::new("SELECT COUNT(*) FROM registered_entries e WHERE 1 = 1");
        push_filter(&mut sql, filter)?;
        let count: i64 = on_pool!(&self.pool, p => sql.query().fetch_one(p).await?.try_get(0)?);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Every entry whose parent is one of `parents`, in ID order.
    pub async fn list_entries_by_parents(
        &self,
        parents: &[SpiffeId],
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let mut tx = self.begin_read().await?;
        let mut entries = Vec::new();
        for chunk in parents.chunks(500) {
            let mut sql = Sql::new(concat!(
                "SELECT ",
                entry_columns!(),
                " FROM registered_entries e WHERE e.parent_id IN ("
            ));
            sql.push_list(chunk.iter().map(|p| p.to_string()));
            sql.push(")");
            entries.extend(query_entries(&mut tx, sql).await?);
        }
        tx.commit().await?;
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        entries.dedup_by(|a, b| a.id == b.id);
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
pub(super) const LATEST_ENTRY_REVISION: &str =
    "SELECT COALESCE(MAX(revision), 0) FROM entry_events";

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

/// Appends an event and returns its revision.
async fn append_event(
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
async fn append_upserts(
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

/// Appends the filter's conditions (`AND ...`) to a query over `registered_entries e`.
fn push_filter(sql: &mut Sql, filter: &EntryFilter) -> Result<(), DatastoreError> {
    if let Some(id) = &filter.spiffe_id {
        sql.push(" AND e.spiffe_id = ").bind(id.as_str());
    }
    if let Some(id) = &filter.parent_id {
        sql.push(" AND e.parent_id = ").bind(id.to_string());
    }
    if let Some(hint) = &filter.hint {
        sql.push(" AND e.hint = ").bind(hint.as_str());
    }
    if let Some((given, mode)) = &filter.selectors {
        let mut given = given.clone();
        canonicalize(&mut given);
        if given.is_empty() {
            return Err(DatastoreError::InvalidArgument(
                "selector filter is empty".into(),
            ));
        }
        selectors::push_match(sql, ENTRY_SELECTORS, "e.id", &given, *mode);
    }
    Ok(())
}

/// Reads one entry with its selectors.
async fn fetch_in(tx: &mut Tx, id: &str) -> Result<Option<RegistrationEntry>, DatastoreError> {
    let mut sql = Sql::new(concat!(
        "SELECT ",
        entry_columns!(),
        " FROM registered_entries e WHERE e.id = "
    ));
    sql.bind(id);
    Ok(query_entries(tx, sql).await?.pop())
}

/// Runs a query over `entry_columns!()` and attaches the entries' selectors.
async fn query_entries(tx: &mut Tx, sql: Sql) -> Result<Vec<RegistrationEntry>, DatastoreError> {
    let mut entries = on_tx!(tx, c => {
        let rows = sql.query().fetch_all(&mut **c).await?;
        rows.iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?
    });
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let mut selectors = selectors::load(tx, ENTRY_SELECTORS, &ids).await?;
    for entry in &mut entries {
        entry.selectors = selectors.remove(&entry.id).unwrap_or_default();
        if entry.selectors.is_empty() {
            return Err(DatastoreError::Corrupt(format!(
                "entry {:?} has no selectors",
                entry.id
            )));
        }
    }
    Ok(entries)
}

/// Parses an entry row (without its selectors), from either backend.
fn entry_from_row<'r, R>(row: &'r R) -> Result<RegistrationEntry, DatastoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        DatastoreError::Corrupt(format!("entry {id:?}: {what}: {e}"))
    };
    let spiffe_id: String = row.try_get("spiffe_id")?;
    let parent_id: String = row.try_get("parent_id")?;
    let ttl = |col: &'static str| -> Result<Option<Duration>, DatastoreError> {
        let v: i64 = row.try_get(col)?;
        let seconds = u32::try_from(v).map_err(|e| corrupt(col, &e))?;
        Ok((seconds != 0).then(|| Duration::from_secs(seconds.into())))
    };
    let dns_names: String = row.try_get("dns_names")?;
    let federates_with: String = row.try_get("federates_with")?;
    let federates_with: Vec<String> =
        serde_json::from_str(&federates_with).map_err(|e| corrupt("federates_with", &e))?;
    let spiffe_id = if row.try_get::<bool, _>("template")? {
        EntrySpiffeId::Template(IdTemplate::new(&spiffe_id).map_err(|e| corrupt("spiffe_id", &e))?)
    } else {
        EntrySpiffeId::Fixed(SpiffeId::new(&spiffe_id).map_err(|e| corrupt("spiffe_id", &e))?)
    };
    let parent_id = SpiffeId::new(&parent_id).map_err(|e| corrupt("parent_id", &e))?;
    // The selectors live in their own table; the caller fills them in.
    Ok(RegistrationEntry {
        x509_svid_ttl: ttl("x509_svid_ttl")?,
        jwt_svid_ttl: ttl("jwt_svid_ttl")?,
        dns_names: serde_json::from_str(&dns_names).map_err(|e| corrupt("dns_names", &e))?,
        federates_with: federates_with
            .iter()
            .map(|td| TrustDomain::new(td).map_err(|e| corrupt("federates_with", &e)))
            .collect::<Result<_, _>>()?,
        admin: row.try_get("admin")?,
        downstream: row.try_get("downstream")?,
        hint: row.try_get("hint")?,
        expires_at: row.try_get("expires_at")?,
        revision: row.try_get("revision")?,
        created_at: row.try_get("created_at")?,
        id,
        ..RegistrationEntry::new(spiffe_id, parent_id, Vec::new())
    })
}

/// A TTL as stored: whole seconds, 0 for the server's default.
fn ttl_seconds(ttl: Option<Duration>) -> i64 {
    ttl.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn parse_id(s: &str, what: &str) -> Result<SpiffeId, DatastoreError> {
    SpiffeId::new(s).map_err(|e| DatastoreError::Corrupt(format!("{what} {s:?}: {e}")))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::super::tests::{on_both_backends, scalar};
    use super::*;

    on_both_backends!(
        event_pruning_works_through_more_than_one_batch,
        create_fetch_round_trips_every_field,
        caller_chosen_id_is_kept_and_must_be_unique,
        duplicate_is_refused_whatever_the_selector_order,
        a_bad_batch_member_leaves_nothing_behind,
        template_entries_round_trip_and_filter_by_template_text,
        field_filters,
        selector_match_modes,
        pagination_covers_every_entry_once_in_id_order,
        update_replaces_fields_and_bumps_revision,
        failed_updates_change_nothing,
        delete_returns_entries_and_unknown_id_deletes_nothing,
        events_follow_every_change_in_revision_order,
        prune_removes_expired_entries_with_events
    );

    pub(crate) fn entry(spiffe_id: &str, parent_id: &str, sels: &[&str]) -> RegistrationEntry {
        RegistrationEntry::new(
            SpiffeId::new(spiffe_id).unwrap(),
            SpiffeId::new(parent_id).unwrap(),
            sels.iter().map(|s| s.parse().unwrap()).collect(),
        )
    }

    const AGENT: &str = "spiffe://td/spire/agent/a";
    const AGENT_B: &str = "spiffe://td/spire/agent/b";

    fn sels(list: &[&str]) -> Vec<Selector> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ids(entries: &[RegistrationEntry]) -> Vec<&str> {
        let mut v: Vec<&str> = entries
            .iter()
            .map(|e| e.spiffe_id.fixed().expect("a fixed ID").path())
            .collect();
        v.sort();
        v
    }

    async fn all(ds: &Datastore, filter: &EntryFilter) -> Vec<RegistrationEntry> {
        ds.list_entries(filter, 1000, None).await.unwrap().0
    }

    async fn create_fetch_round_trips_every_field(ds: Datastore) {
        let before = unix_now();
        let mut e = entry(
            "spiffe://td/web",
            AGENT,
            &["unix:uid:1000", "k8s:ns:web", "unix:uid:1000"],
        );
        e.x509_svid_ttl = Some(Duration::from_secs(3600));
        e.jwt_svid_ttl = Some(Duration::from_secs(300));
        e.dns_names = vec!["web.example.org".into(), "web".into()];
        e.federates_with = vec![TrustDomain::new("other.org").unwrap()];
        e.admin = true;
        e.downstream = true;
        e.hint = "web".into();
        e.expires_at = Some(1_900_000_000);
        e.revision = 42; // ignored: the datastore assigns it
        e.created_at = 7; // ignored

        let created = ds.create_entries(vec![e.clone()]).await.unwrap().remove(0);
        assert!(Uuid::parse_str(&created.id).is_ok(), "{}", created.id);
        assert!(created.created_at >= before);
        assert_eq!(created.revision, 1);
        // Canonical selectors: sorted, de-duplicated.
        assert_eq!(created.selectors, sels(&["k8s:ns:web", "unix:uid:1000"]));
        let expected = RegistrationEntry {
            id: created.id.clone(),
            selectors: created.selectors.clone(),
            revision: created.revision,
            created_at: created.created_at,
            ..e
        };
        assert_eq!(created, expected);
        assert_eq!(ds.fetch_entry(&created.id).await.unwrap(), Some(expected));
        assert_eq!(ds.fetch_entry("nope").await.unwrap(), None);
    }

    async fn caller_chosen_id_is_kept_and_must_be_unique(ds: Datastore) {
        let mut e = entry("spiffe://td/a", AGENT, &["unix:uid:1"]);
        e.id = "my-id".into();
        assert_eq!(
            ds.create_entries(vec![e.clone()]).await.unwrap()[0].id,
            "my-id"
        );
        let mut other = entry("spiffe://td/b", AGENT, &["unix:uid:2"]);
        other.id = "my-id".into();
        let err = ds.create_entries(vec![other]).await.unwrap_err();
        assert!(
            matches!(&err, DatastoreError::AlreadyExists(m) if m.contains("my-id")),
            "{err}"
        );
    }

    async fn duplicate_is_refused_whatever_the_selector_order(ds: Datastore) {
        ds.create_entries(vec![entry(
            "spiffe://td/web",
            AGENT,
            &["k8s:ns:a", "k8s:sa:b"],
        )])
        .await
        .unwrap();
        let dup = entry("spiffe://td/web", AGENT, &["k8s:sa:b", "k8s:ns:a"]);
        let err = ds.create_entries(vec![dup]).await.unwrap_err();
        assert!(
            matches!(&err, DatastoreError::AlreadyExists(m) if m.contains("spiffe://td/web")),
            "{err}"
        );
        // Same ID and selectors under another parent, or other selectors, are different entries.
        ds.create_entries(vec![
            entry("spiffe://td/web", AGENT_B, &["k8s:ns:a", "k8s:sa:b"]),
            entry("spiffe://td/web", AGENT, &["k8s:ns:a"]),
        ])
        .await
        .unwrap();
        assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 3);
    }

    async fn a_bad_batch_member_leaves_nothing_behind(ds: Datastore) {
        let existing = entry("spiffe://td/old", AGENT, &["unix:uid:9"]);
        ds.create_entries(vec![existing.clone()]).await.unwrap();
        let revision = ds.latest_entry_revision().await.unwrap();

        let batches = [
            // duplicate of a stored entry, last in the batch
            vec![
                entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
                existing.clone(),
            ],
            // duplicate within the batch
            vec![
                entry("spiffe://td/b", AGENT, &["unix:uid:1", "unix:gid:1"]),
                entry("spiffe://td/b", AGENT, &["unix:gid:1", "unix:uid:1"]),
            ],
            // invalid member
            vec![
                entry("spiffe://td/c", AGENT, &["unix:uid:1"]),
                entry("spiffe://td/d", AGENT, &[]),
            ],
        ];
        for batch in batches {
            assert!(ds.create_entries(batch).await.is_err());
            assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 1);
            assert_eq!(
                ds.latest_entry_revision().await.unwrap(),
                revision,
                "no events"
            );
        }
        let stray = scalar(&ds, "SELECT COUNT(*) FROM entry_selectors").await;
        assert_eq!(stray, 1, "only the stored entry's selector");
    }

    /// web: {k8s:ns:web, k8s:sa:web}, db: {k8s:ns:db}, uid: {unix:uid:1} (parent B, hint "h").
    async fn fixture(ds: &Datastore) {
        let mut uid = entry("spiffe://td/uid", AGENT_B, &["unix:uid:1"]);
        uid.hint = "h".into();
        ds.create_entries(vec![
            entry("spiffe://td/web", AGENT, &["k8s:ns:web", "k8s:sa:web"]),
            entry("spiffe://td/db", AGENT, &["k8s:ns:db"]),
            uid,
        ])
        .await
        .unwrap();
    }

    async fn template_entries_round_trip_and_filter_by_template_text(ds: Datastore) {
        let text = "spiffe://td/ns/{k8s:ns}/sa/{k8s:sa}";
        let template: IdTemplate = text.parse().unwrap();
        let e = RegistrationEntry::new(
            template.clone(),
            SpiffeId::new(AGENT).unwrap(),
            sels(&["k8s:ns"]),
        );
        let created = ds.create_entries(vec![e]).await.unwrap().remove(0);
        let fetched = ds.fetch_entry(&created.id).await.unwrap().unwrap();
        assert_eq!(fetched.spiffe_id.template(), Some(&template));
        assert_eq!(fetched, created);
        assert_eq!(fetched.spiffe_id.to_string(), text);
        let by_text = EntryFilter {
            spiffe_id: Some(text.into()),
            ..EntryFilter::default()
        };
        assert_eq!(all(&ds, &by_text).await.len(), 1);
        // A fixed entry is still a fixed entry after the migration.
        let fixed = ds
            .create_entries(vec![entry("spiffe://td/web", AGENT, &["unix:uid:1"])])
            .await
            .unwrap()
            .remove(0);
        let fetched = ds.fetch_entry(&fixed.id).await.unwrap().unwrap();
        assert_eq!(fetched.spiffe_id.template(), None);
    }

    async fn field_filters(ds: Datastore) {
        fixture(&ds).await;
        let by_id = EntryFilter {
            spiffe_id: Some("spiffe://td/web".into()),
            ..EntryFilter::default()
        };
        assert_eq!(ids(&all(&ds, &by_id).await), ["/web"]);
        let by_parent = EntryFilter {
            parent_id: Some(SpiffeId::new(AGENT).unwrap()),
            ..EntryFilter::default()
        };
        assert_eq!(ids(&all(&ds, &by_parent).await), ["/db", "/web"]);
        assert_eq!(ds.count_entries(&by_parent).await.unwrap(), 2);
        let by_hint = EntryFilter {
            hint: Some("h".into()),
            ..EntryFilter::default()
        };
        assert_eq!(ids(&all(&ds, &by_hint).await), ["/uid"]);
        let both = EntryFilter {
            hint: Some("h".into()),
            ..by_parent
        };
        assert!(all(&ds, &both).await.is_empty());
        assert_eq!(ds.count_entries(&both).await.unwrap(), 0);

        let by_parents = ds
            .list_entries_by_parents(&[
                SpiffeId::new(AGENT_B).unwrap(),
                SpiffeId::new(AGENT).unwrap(),
            ])
            .await
            .unwrap();
        assert_eq!(ids(&by_parents), ["/db", "/uid", "/web"]);
    }

    async fn selector_match_modes(ds: Datastore) {
        fixture(&ds).await;
        let cases: &[(&[&str], SelectorMatch, &[&str])] = &[
            (
                &["k8s:sa:web", "k8s:ns:web"],
                SelectorMatch::Exact,
                &["/web"],
            ),
            (&["k8s:ns:web"], SelectorMatch::Exact, &[]),
            (
                &["k8s:ns:web", "k8s:sa:web", "k8s:ns:db"],
                SelectorMatch::Exact,
                &[],
            ),
            (
                &["k8s:ns:web", "k8s:sa:web", "k8s:ns:db"],
                SelectorMatch::Subset,
                &["/db", "/web"],
            ),
            (
                &["k8s:ns:web", "unix:uid:1"],
                SelectorMatch::Subset,
                &["/uid"],
            ),
            (&["k8s:ns:web"], SelectorMatch::Subset, &[]),
            (&["k8s:ns:web"], SelectorMatch::Superset, &["/web"]),
            (
                &["k8s:ns:web", "k8s:sa:web"],
                SelectorMatch::Superset,
                &["/web"],
            ),
            (&["k8s:ns:web", "k8s:ns:db"], SelectorMatch::Superset, &[]),
            (
                &["k8s:ns:web", "k8s:ns:db", "x:y"],
                SelectorMatch::Any,
                &["/db", "/web"],
            ),
            (&["x:y"], SelectorMatch::Any, &[]),
        ];
        for (given, mode, want) in cases {
            let filter = EntryFilter {
                selectors: Some((sels(given), *mode)),
                ..EntryFilter::default()
            };
            assert_eq!(ids(&all(&ds, &filter).await), *want, "{given:?} {mode:?}");
            assert_eq!(ds.count_entries(&filter).await.unwrap(), want.len() as u64);
        }
        let empty = EntryFilter {
            selectors: Some((Vec::new(), SelectorMatch::Any)),
            ..EntryFilter::default()
        };
        assert!(matches!(
            ds.count_entries(&empty).await,
            Err(DatastoreError::InvalidArgument(_))
        ));
    }

    /// SQLite only: the plan check reads SQLite's `EXPLAIN QUERY PLAN`.
    #[tokio::test]
    async fn selector_matches_start_from_the_selector_index() {
        let (_dir, ds) = super::super::tests::store().await;
        let super::super::Pool::Sqlite(pool) = &ds.pool else {
            unreachable!()
        };
        for mode in [
            SelectorMatch::Exact,
            SelectorMatch::Subset,
            SelectorMatch::Superset,
            SelectorMatch::Any,
        ] {
            let mut sql =
                Sql::new("EXPLAIN QUERY PLAN SELECT e.id FROM registered_entries e WHERE 1 = 1");
            selectors::push_match(
                &mut sql,
                ENTRY_SELECTORS,
                "e.id",
                &sels(&["a:b", "c:d"]),
                mode,
            );
            let plan: Vec<String> = sql
                .query()
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("USING COVERING INDEX entry_selectors_type_value"),
                "{mode:?}:\n{plan}"
            );
            // No full scan of a table: only of the literal VALUES list.
            let scans = plan
                .lines()
                .filter(|l| l.starts_with("SCAN") && !l.contains("VALUES"));
            assert_eq!(scans.count(), 0, "{mode:?}:\n{plan}");
        }
    }

    async fn pagination_covers_every_entry_once_in_id_order(ds: Datastore) {
        let batch: Vec<_> = (0..23)
            .map(|i| entry(&format!("spiffe://td/w{i}"), AGENT, &["unix:uid:1"]))
            .collect();
        ds.create_entries(batch).await.unwrap();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let (page, next) = ds
                .list_entries(&EntryFilter::default(), 5, token.as_deref())
                .await
                .unwrap();
            assert!(page.len() <= 5);
            seen.extend(page.into_iter().map(|e| e.id));
            pages += 1;
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(pages, 5);
        assert_eq!(seen.len(), 23);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted, "in id order, no repeats");
        assert!(matches!(
            ds.list_entries(&EntryFilter::default(), 0, None).await,
            Err(DatastoreError::InvalidArgument(_))
        ));
    }

    async fn update_replaces_fields_and_bumps_revision(ds: Datastore) {
        let created = ds
            .create_entries(vec![entry("spiffe://td/web", AGENT, &["unix:uid:1"])])
            .await
            .unwrap()
            .remove(0);
        let mut changed = created.clone();
        changed.spiffe_id = SpiffeId::new("spiffe://td/web2").unwrap().into();
        changed.selectors = sels(&["unix:uid:2", "unix:gid:2"]);
        changed.dns_names = vec!["a.example".into()];
        changed.x509_svid_ttl = Some(Duration::from_secs(60));
        changed.expires_at = Some(5);
        changed.created_at = 0; // ignored
        let updated = ds
            .update_entries(vec![changed.clone()])
            .await
            .unwrap()
            .remove(0);
        assert!(updated.revision > created.revision);
        assert_eq!(updated.created_at, created.created_at);
        assert_eq!(updated.selectors, sels(&["unix:gid:2", "unix:uid:2"]));
        assert_eq!(
            ds.fetch_entry(&created.id).await.unwrap(),
            Some(updated.clone())
        );
        // The old selectors no longer match.
        let old = EntryFilter {
            selectors: Some((sels(&["unix:uid:1"]), SelectorMatch::Any)),
            ..EntryFilter::default()
        };
        assert_eq!(ds.count_entries(&old).await.unwrap(), 0);
    }

    async fn failed_updates_change_nothing(ds: Datastore) {
        let created = ds
            .create_entries(vec![
                entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
                entry("spiffe://td/b", AGENT, &["unix:uid:2"]),
            ])
            .await
            .unwrap();
        let revision = ds.latest_entry_revision().await.unwrap();

        let mut first = created[0].clone();
        first.hint = "changed".into();
        let mut unknown = created[1].clone();
        unknown.id = "unknown".into();
        let err = ds
            .update_entries(vec![first.clone(), unknown])
            .await
            .unwrap_err();
        assert!(matches!(err, DatastoreError::NotFound(_)), "{err}");

        // b becomes a copy of a: refused by the unique index.
        let mut collide = created[1].clone();
        collide.spiffe_id = created[0].spiffe_id.clone();
        collide.selectors = created[0].selectors.clone();
        let err = ds.update_entries(vec![first, collide]).await.unwrap_err();
        assert!(
            matches!(&err, DatastoreError::AlreadyExists(m) if m.contains("spiffe://td/a")),
            "{err}"
        );

        for e in &created {
            assert_eq!(ds.fetch_entry(&e.id).await.unwrap().as_ref(), Some(e));
        }
        assert_eq!(ds.latest_entry_revision().await.unwrap(), revision);
    }

    async fn delete_returns_entries_and_unknown_id_deletes_nothing(ds: Datastore) {
        let created = ds
            .create_entries(vec![
                entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
                entry("spiffe://td/b", AGENT, &["unix:uid:2"]),
            ])
            .await
            .unwrap();
        let err = ds
            .delete_entries(&[created[0].id.clone(), "unknown".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, DatastoreError::NotFound(_)), "{err}");
        assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 2);

        let deleted = ds
            .delete_entries(&[created[0].id.clone(), created[0].id.clone()])
            .await
            .unwrap();
        assert_eq!(deleted, vec![created[0].clone()]);
        assert_eq!(ds.fetch_entry(&created[0].id).await.unwrap(), None);
        assert_eq!(
            ds.fetch_entry(&created[1].id).await.unwrap().as_ref(),
            Some(&created[1])
        );
        let selectors = scalar(&ds, "SELECT COUNT(*) FROM entry_selectors").await;
        assert_eq!(selectors, 1, "selectors deleted with their entry");
    }

    async fn events_follow_every_change_in_revision_order(ds: Datastore) {
        assert_eq!(ds.latest_entry_revision().await.unwrap(), 0);
        let created = ds
            .create_entries(vec![
                entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
                entry("spiffe://td/b", AGENT, &["unix:uid:2"]),
            ])
            .await
            .unwrap();
        let (a, b) = (&created[0], &created[1]);
        let mut moved = a.clone();
        moved.parent_id = SpiffeId::new(AGENT_B).unwrap();
        let moved = ds.update_entries(vec![moved]).await.unwrap().remove(0);
        ds.delete_entries(std::slice::from_ref(&b.id))
            .await
            .unwrap();

        let events = ds.list_entry_events(0, 100).await.unwrap();
        let summary: Vec<(&str, &str, EntryEventKind)> = events
            .iter()
            .map(|e| (e.entry_id.as_str(), e.parent_id.path(), e.kind))
            .collect();
        use EntryEventKind::{Delete, Upsert};
        assert_eq!(
            summary,
            [
                (a.id.as_str(), "/spire/agent/a", Upsert),
                (b.id.as_str(), "/spire/agent/a", Upsert),
                (a.id.as_str(), "/spire/agent/a", Delete),
                (a.id.as_str(), "/spire/agent/b", Upsert),
                (b.id.as_str(), "/spire/agent/a", Delete),
            ]
        );
        assert!(events.windows(2).all(|w| w[0].revision < w[1].revision));
        assert_eq!(a.revision, events[0].revision);
        assert_eq!(b.revision, events[1].revision);
        assert_eq!(
            moved.revision, events[3].revision,
            "an entry's revision is its latest event"
        );
        assert_eq!(
            ds.latest_entry_revision().await.unwrap(),
            events[4].revision
        );

        let after = ds.list_entry_events(events[2].revision, 1).await.unwrap();
        assert_eq!(after, vec![events[3].clone()]);

        // Pruning keeps the latest event, so the latest revision never goes back.
        assert_eq!(ds.prune_entry_events(i64::MAX).await.unwrap(), 4);
        assert_eq!(
            ds.list_entry_events(0, 100).await.unwrap(),
            vec![events[4].clone()]
        );
        assert_eq!(
            ds.latest_entry_revision().await.unwrap(),
            events[4].revision
        );
        // Revisions are never reused.
        let c = ds
            .create_entries(vec![entry("spiffe://td/c", AGENT, &["unix:uid:3"])])
            .await
            .unwrap();
        assert!(c[0].revision > events[4].revision);
    }

    async fn prune_removes_expired_entries_with_events(ds: Datastore) {
        let mut batch = Vec::new();
        for i in 0..(PRUNE_BATCH + 3) {
            let mut e = entry(&format!("spiffe://td/x{i}"), AGENT, &["unix:uid:1"]);
            e.expires_at = Some(100);
            batch.push(e);
        }
        let mut later = entry("spiffe://td/later", AGENT, &["unix:uid:1"]);
        later.expires_at = Some(200);
        batch.push(later);
        batch.push(entry("spiffe://td/never", AGENT, &["unix:uid:1"]));
        ds.create_entries(batch).await.unwrap();
        let revision = ds.latest_entry_revision().await.unwrap();

        assert_eq!(
            ds.prune_entries(100).await.unwrap(),
            0,
            "expires_at < now only"
        );
        assert_eq!(ds.prune_entries(101).await.unwrap(), PRUNE_BATCH as u64 + 3);
        assert_eq!(
            ids(&all(&ds, &EntryFilter::default()).await),
            ["/later", "/never"]
        );
        let events = ds.list_entry_events(revision, 1000).await.unwrap();
        assert_eq!(events.len(), PRUNE_BATCH as usize + 3);
        assert!(events.iter().all(|e| e.kind == EntryEventKind::Delete));
    }

    async fn event_pruning_works_through_more_than_one_batch(ds: Datastore) {
        let n = PRUNE_BATCH + 10;
        let batch = (0..n)
            .map(|i| entry(&format!("spiffe://td/e{i}"), AGENT, &["unix:uid:1"]))
            .collect();
        ds.create_entries(batch).await.unwrap();
        let latest = ds.latest_entry_revision().await.unwrap();
        // All but the latest event go, in batches.
        assert_eq!(ds.prune_entry_events(i64::MAX).await.unwrap(), n as u64 - 1);
        let left = ds.list_entry_events(0, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].revision, latest);
    }
}
