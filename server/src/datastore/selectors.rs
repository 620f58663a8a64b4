//! Selector sets stored one row per selector (`entry_selectors`, `node_selectors`), and the SQL
//! that matches them. Every match starts from the `(type, value)` index, so its cost follows the
//! number of records holding the given selectors, not the table size.

use std::collections::HashMap;

use ring::digest;
use sigil_proto::Selector;
use sqlx::Row;

use super::sql::Sql;
use super::{DatastoreError, Tx};

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
    sql: &mut Sql,
    t: SelectorTable,
    owner_expr: &str,
    selectors: &[Selector],
    mode: SelectorMatch,
) {
    let SelectorTable { table, owner } = t;
    let candidates = format!(
        " AND {owner_expr} IN (SELECT s.{owner} FROM {table} s WHERE (s.type, s.value) IN "
    );
    match mode {
        SelectorMatch::Any => {
            sql.push(&candidates);
            push_values(sql, selectors);
            sql.push(")");
        }
        SelectorMatch::Superset | SelectorMatch::Exact => {
            // The given set is de-duplicated and (owner, type, value) is unique, so a count equal
            // to the set's size means the record has every selector.
            sql.push(&candidates);
            push_values(sql, selectors);
            sql.push(&format!(" GROUP BY s.{owner} HAVING COUNT(*) = "));
            sql.bind(selectors.len() as i64);
            sql.push(")");
        }
        SelectorMatch::Subset => {
            // Candidates have at least one given selector (index); the NOT EXISTS below then
            // reads only each candidate's own selectors (primary key).
            sql.push(&candidates);
            push_values(sql, selectors);
            sql.push(")");
        }
    }
    if matches!(mode, SelectorMatch::Exact | SelectorMatch::Subset) {
        sql.push(&format!(
            " AND NOT EXISTS (SELECT 1 FROM {table} o WHERE o.{owner} = {owner_expr} \
             AND (o.type, o.value) NOT IN "
        ));
        push_values(sql, selectors);
        sql.push(")");
    }
}

/// Pushes `(VALUES ($1, $2), ...)`: SQLite accepts a row-value IN only against a subquery.
fn push_values(sql: &mut Sql, selectors: &[Selector]) {
    sql.push("(VALUES ");
    sql.push_rows(selectors, |row, s| {
        row.bind(s.kind()).bind(s.value());
    });
    sql.push(")");
}

/// Selector rows per multi-row `INSERT`: 3 parameters each, under SQLite's 32,766 (and
/// PostgreSQL's 65,535) per statement.
const INSERT_CHUNK: usize = 5000;

/// Inserts the selector rows of one record.
pub(super) async fn insert(
    tx: &mut Tx,
    t: SelectorTable,
    owner: &str,
    selectors: &[Selector],
) -> Result<(), DatastoreError> {
    insert_many(tx, t, &[(owner, selectors)]).await
}

/// Inserts the selector rows of many records, a few thousand rows per statement.
pub(super) async fn insert_many(
    tx: &mut Tx,
    t: SelectorTable,
    records: &[(&str, &[Selector])],
) -> Result<(), DatastoreError> {
    let rows: Vec<(&str, &Selector)> = records
        .iter()
        .flat_map(|&(owner, selectors)| selectors.iter().map(move |s| (owner, s)))
        .collect();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new(&format!(
            "INSERT INTO {} ({}, type, value) VALUES ",
            t.table, t.owner
        ));
        sql.push_rows(chunk, |row, (owner, s)| {
            row.bind(*owner).bind(s.kind()).bind(s.value());
        });
        on_tx!(tx, c => sql.query().execute(&mut **c).await.map(|d| d.rows_affected()))?;
    }
    Ok(())
}

/// Deletes the selector rows of one record.
pub(super) async fn delete(
    tx: &mut Tx,
    t: SelectorTable,
    owner: &str,
) -> Result<(), DatastoreError> {
    let mut sql = Sql::new(&format!("DELETE FROM {} WHERE {} = ", t.table, t.owner));
    sql.bind(owner);
    on_tx!(tx, c => sql.query().execute(&mut **c).await.map(|d| d.rows_affected()))?;
    Ok(())
}

/// Loads the selectors of the given records, each set in canonical order.
pub(super) async fn load(
    tx: &mut Tx,
    t: SelectorTable,
    owners: &[String],
) -> Result<HashMap<String, Vec<Selector>>, DatastoreError> {
    let mut out: HashMap<String, Vec<Selector>> = HashMap::new();
    for chunk in owners.chunks(500) {
        let mut sql = Sql::new(&format!(
            "SELECT {owner}, type, value FROM {table} WHERE {owner} IN (",
            owner = t.owner,
            table = t.table
        ));
        sql.push_list(chunk.iter().map(String::as_str));
        sql.push(&format!(") ORDER BY {}, type, value", t.owner));
        let rows: Vec<(String, String, String)> = on_tx!(tx, c => {
            let rows = sql.query().fetch_all(&mut **c).await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        for (owner, kind, value) in rows {
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
