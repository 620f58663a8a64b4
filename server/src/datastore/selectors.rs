//! Selector sets stored one row per selector (`entry_selectors`, `node_selectors`), and the SQL
//! that matches them. Every match starts from the `(type, value)` index, so its cost follows the
//! number of records holding the given selectors, not the table size.

use std::collections::HashMap;

use ring::digest;
use sigil_proto::Selector;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::DatastoreError;

/// How a record's selector set must relate to the given set (SPIRE's match modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorMatch {
    /// The record's selectors are exactly the given ones.
    Exact,
    /// The record's selectors are a subset of the given ones (e.g. a workload's selectors
    /// against the entries it qualifies for).
    Subset,
    /// The record's selectors include all the given ones.
    Superset,
    /// The record has at least one of the given selectors.
    Any,
}

/// A table of selectors owned by records of another table.
#[derive(Clone, Copy)]
pub(super) struct SelectorTable {
    /// e.g. `entry_selectors`
    pub table: &'static str,
    /// The column naming the owning record, e.g. `entry_id`.
    pub owner: &'static str,
}

pub(super) const ENTRY_SELECTORS: SelectorTable = SelectorTable {
    table: "entry_selectors",
    owner: "entry_id",
};
pub(super) const NODE_SELECTORS: SelectorTable = SelectorTable {
    table: "node_selectors",
    owner: "spiffe_id",
};

/// The canonical key of a selector set: SHA-256 (hex) over the sorted `type:value` lines.
/// Selector values cannot contain control characters, so `\n` separates them unambiguously;
/// hashing keeps the unique index small whatever the number of selectors.
pub(super) fn selector_key(canonical: &[Selector]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for s in canonical {
        ctx.update(s.kind().as_bytes());
        ctx.update(b":");
        ctx.update(s.value().as_bytes());
        ctx.update(b"\n");
    }
    hex::encode(ctx.finish())
}

/// Appends `AND <owner_expr> matches` for the given (canonical, non-empty) set.
pub(super) fn push_match(
    qb: &mut QueryBuilder<Sqlite>,
    t: SelectorTable,
    owner_expr: &str,
    selectors: &[Selector],
    mode: SelectorMatch,
) {
    let SelectorTable { table, owner } = t;
    match mode {
        SelectorMatch::Any => {
            qb.push(format_args!(
                " AND {owner_expr} IN (SELECT s.{owner} FROM {table} s WHERE (s.type, s.value) IN "
            ));
            push_values(qb, selectors);
            qb.push(")");
        }
        SelectorMatch::Superset | SelectorMatch::Exact => {
            // The given set is de-duplicated and (owner, type, value) is unique, so a count equal
            // to the set's size means the record has every selector.
            qb.push(format_args!(
                " AND {owner_expr} IN (SELECT s.{owner} FROM {table} s WHERE (s.type, s.value) IN "
            ));
            push_values(qb, selectors);
            qb.push(format_args!(" GROUP BY s.{owner} HAVING COUNT(*) = "));
            qb.push_bind(selectors.len() as i64);
            qb.push(")");
        }
        SelectorMatch::Subset => {
            // Candidates have at least one given selector (index); the NOT EXISTS below then
            // reads only each candidate's own selectors (primary key).
            qb.push(format_args!(
                " AND {owner_expr} IN (SELECT s.{owner} FROM {table} s WHERE (s.type, s.value) IN "
            ));
            push_values(qb, selectors);
            qb.push(")");
        }
    }
    if matches!(mode, SelectorMatch::Exact | SelectorMatch::Subset) {
        qb.push(format_args!(" AND NOT EXISTS (SELECT 1 FROM {table} o WHERE o.{owner} = {owner_expr} AND (o.type, o.value) NOT IN "));
        push_values(qb, selectors);
        qb.push(")");
    }
}

/// Pushes `(VALUES (?, ?), ...)`: SQLite accepts a row-value IN only against a subquery.
fn push_values(qb: &mut QueryBuilder<Sqlite>, selectors: &[Selector]) {
    qb.push("(VALUES ");
    let mut sep = qb.separated(", ");
    for s in selectors {
        sep.push("(");
        sep.push_bind_unseparated(s.kind().to_owned());
        sep.push_unseparated(", ");
        sep.push_bind_unseparated(s.value().to_owned());
        sep.push_unseparated(")");
    }
    qb.push(")");
}

/// Selector rows per multi-row `INSERT`: 3 parameters each, under SQLite's 32,766 per statement.
const INSERT_CHUNK: usize = 5000;

/// Inserts the selector rows of one record.
pub(super) async fn insert(
    conn: &mut SqliteConnection,
    t: SelectorTable,
    owner: &str,
    selectors: &[Selector],
) -> Result<(), DatastoreError> {
    insert_many(conn, t, &[(owner, selectors)]).await
}

/// Inserts the selector rows of many records, a few thousand rows per statement.
pub(super) async fn insert_many(
    conn: &mut SqliteConnection,
    t: SelectorTable,
    records: &[(&str, &[Selector])],
) -> Result<(), DatastoreError> {
    let rows: Vec<(&str, &Selector)> = records
        .iter()
        .flat_map(|&(owner, selectors)| selectors.iter().map(move |s| (owner, s)))
        .collect();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {} ({}, type, value) ",
            t.table, t.owner
        ));
        qb.push_values(chunk, |mut row, (owner, s)| {
            row.push_bind(owner.to_string())
                .push_bind(s.kind().to_owned())
                .push_bind(s.value().to_owned());
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes the selector rows of one record.
pub(super) async fn delete(
    conn: &mut SqliteConnection,
    t: SelectorTable,
    owner: &str,
) -> Result<(), DatastoreError> {
    let mut qb =
        QueryBuilder::<Sqlite>::new(format!("DELETE FROM {} WHERE {} = ", t.table, t.owner));
    qb.push_bind(owner.to_owned());
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

/// Loads the selectors of the given records, each set in canonical order.
pub(super) async fn load(
    conn: &mut SqliteConnection,
    t: SelectorTable,
    owners: &[String],
) -> Result<HashMap<String, Vec<Selector>>, DatastoreError> {
    let mut out: HashMap<String, Vec<Selector>> = HashMap::new();
    for chunk in owners.chunks(500) {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {owner}, type, value FROM {table} WHERE {owner} IN (",
            owner = t.owner,
            table = t.table
        ));
        let mut sep = qb.separated(", ");
        for o in chunk {
            sep.push_bind(o.clone());
        }
        qb.push(format_args!(") ORDER BY {}, type, value", t.owner));
        for row in qb.build().fetch_all(&mut *conn).await? {
            let owner: String = row.try_get(0)?;
            let kind: String = row.try_get(1)?;
            let value: String = row.try_get(2)?;
            let selector = Selector::from_parts(&kind, &value)
                .map_err(|e| DatastoreError::Corrupt(format!("{} of {owner}: {e}", t.table)))?;
            out.entry(owner).or_default().push(selector);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sels(list: &[&str]) -> Vec<Selector> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn key_depends_on_every_selector() {
        let a = selector_key(&sels(&["k8s:ns:a", "unix:uid:1"]));
        assert_eq!(a, selector_key(&sels(&["k8s:ns:a", "unix:uid:1"])));
        assert_eq!(a.len(), 64);
        assert_ne!(a, selector_key(&sels(&["k8s:ns:a"])));
        assert_ne!(a, selector_key(&sels(&["k8s:ns:a", "unix:uid:2"])));
    }
}
