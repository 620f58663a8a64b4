//! Reading entries: fetch one, list a filtered page, count, list those of some parents.
//!
//! One job: turning an [`EntryFilter`] into SQL over `registered_entries` and rows back into
//! [`RegistrationEntry`] values with their selectors, on either backend. The writes reuse
//! [`fetch_in`] to return the entries they delete as they were.

use std::time::Duration;

use sigil_proto::selector::canonicalize;
use sigil_proto::{EntrySpiffeId, IdTemplate, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::datastore::selectors::{self, ENTRY_SELECTORS, SelectorMatch};
use crate::datastore::sql::Sql;
use crate::datastore::{Datastore, DatastoreError, Tx, finish_page, page_bounds};

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
    /// SPIFFE IDs (or templates' text) starting with this (the web console's search); served
    /// by the index that leads with `spiffe_id`.
    pub spiffe_id_prefix: Option<String>,
    pub parent_id: Option<SpiffeId>,
    /// A non-empty selector set and how entries' selectors must relate to it.
    pub selectors: Option<(Vec<Selector>, SelectorMatch)>,
    pub hint: Option<String>,
    /// A non-empty set of trust domains and how entries' `federates_with` must relate to it.
    pub federates_with: Option<(Vec<TrustDomain>, SelectorMatch)>,
    pub downstream: Option<bool>,
}

impl Datastore {
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
}

/// Appends the filter's conditions (`AND ...`) to a query over `registered_entries e`.
fn push_filter(sql: &mut Sql, filter: &EntryFilter) -> Result<(), DatastoreError> {
    if let Some(id) = &filter.spiffe_id {
        sql.push(" AND e.spiffe_id = ").bind(id.as_str());
    }
    if let Some(prefix) = filter.spiffe_id_prefix.as_deref().filter(|p| !p.is_empty()) {
        // A range, not LIKE, so that both backends use the index (byte order: SQLite's BINARY,
        // PostgreSQL's COLLATE "C"); no character sorts after U+10FFFF.
        sql.push(" AND e.spiffe_id >= ").bind(prefix);
        sql.push(" AND e.spiffe_id < ")
            .bind(format!("{prefix}\u{10FFFF}"));
    }
    if let Some(id) = &filter.parent_id {
        sql.push(" AND e.parent_id = ").bind(id.to_string());
    }
    if let Some(hint) = &filter.hint {
        sql.push(" AND e.hint = ").bind(hint.as_str());
    }
    if let Some(downstream) = filter.downstream {
        sql.push(" AND e.downstream = ").bind(downstream);
    }
    if let Some((given, mode)) = &filter.federates_with {
        push_federates_with(sql, given, *mode)?;
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

/// Appends `AND` the entries' `federates_with` relate to `given` as `mode` says. The column
/// holds a JSON array of trust domain names (lowercase `[a-z0-9._-]`), so `"name"` with its
/// quotes occurs in it exactly when the entry federates with `name`, and the number of quotes
/// halved is the number of names: plain SQL both backends run alike.
fn push_federates_with(
    sql: &mut Sql,
    given: &[TrustDomain],
    mode: SelectorMatch,
) -> Result<(), DatastoreError> {
    let mut given: Vec<&str> = given.iter().map(TrustDomain::as_str).collect();
    given.sort_unstable();
    given.dedup();
    if given.is_empty() {
        return Err(DatastoreError::InvalidArgument(
            "federates_with filter is empty".into(),
        ));
    }
    // `_` is a LIKE wildcard and may appear in a name: escaped.
    let pattern = |td: &str| format!("%\"{}\"%", td.replace('_', "\\_"));
    let contains = |sql: &mut Sql, td: &str| {
        sql.push("e.federates_with LIKE ")
            .bind(pattern(td))
            .push(" ESCAPE '\\'");
    };
    let joined = |sql: &mut Sql, op: &str| {
        sql.push(" AND (");
        for (i, td) in given.iter().enumerate() {
            if i > 0 {
                sql.push(op);
            }
            contains(sql, td);
        }
        sql.push(")");
    };
    let names = "((LENGTH(e.federates_with) - LENGTH(REPLACE(e.federates_with, '\"', ''))) / 2)";
    match mode {
        SelectorMatch::Any => joined(sql, " OR "),
        SelectorMatch::Superset => joined(sql, " AND "),
        SelectorMatch::Exact => {
            joined(sql, " AND ");
            sql.push(&format!(" AND {names} = "))
                .bind(given.len() as i64);
        }
        SelectorMatch::Subset => {
            // Every name the entry has is one of the given (and it has at least one, as SPIRE
            // matches through its join table).
            sql.push(" AND (");
            for (i, td) in given.iter().enumerate() {
                if i > 0 {
                    sql.push(" + ");
                }
                sql.push("CASE WHEN ");
                contains(sql, td);
                sql.push(" THEN 1 ELSE 0 END");
            }
            sql.push(&format!(") = {names} AND {names} > 0"));
        }
    }
    Ok(())
}

/// Reads one entry with its selectors.
pub(super) async fn fetch_in(
    tx: &mut Tx,
    id: &str,
) -> Result<Option<RegistrationEntry>, DatastoreError> {
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
