//! SQL built at run time (filters, multi-row inserts) for either backend.
//!
//! sqlx's `QueryBuilder<DB>` is typed by backend, so a query built with it would have to be
//! built twice; this one collects the text and the arguments as plain values, and renders the
//! placeholders and binds the arguments for either backend at the end: `$N` for PostgreSQL,
//! `?` for SQLite. Not `$N` on SQLite: it treats them as named parameters and looks each name
//! up by a linear scan, which made a 15,000-parameter bulk insert ten times slower.

use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Database, Encode, Type};

/// One argument of a [`Sql`] query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Arg {
    Text(String),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Self::OptInt(v)
    }
}

impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// Stands for a placeholder in [`Sql`]'s text until it is rendered for a backend (never in
/// our SQL fragments).
const PLACEHOLDER: char = '\0';

/// SQL text and its arguments.
#[derive(Debug, Default)]
pub(super) struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub(super) fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// Appends SQL text. Only ever called with our own fragments (table and column names
    /// from constants), never with a value.
    pub(super) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub(super) fn bind(&mut self, value: impl Into<Arg>) -> &mut Self {
        self.args.push(value.into());
        self.text.push(PLACEHOLDER);
        self
    }

    /// Appends `(v1, v2), (v3, v4), ...`: one parenthesized group per item.
    pub(super) fn push_rows<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut row: impl FnMut(&mut RowBuilder<'_>, T),
    ) -> &mut Self {
        for (i, item) in items.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            row(
                &mut RowBuilder {
                    sql: self,
                    first: true,
                },
                item,
            );
            self.push(")");
        }
        self
    }

    /// Appends `value, value, ...` placeholders.
    pub(super) fn push_list<T: Into<Arg>>(
        &mut self,
        values: impl IntoIterator<Item = T>,
    ) -> &mut Self {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self
    }

    /// The text with placeholders in the backend's syntax: `?` (positional) or `$1, $2, ...`.
    fn render(&self, numbered: bool) -> String {
        if !numbered {
            return self.text.replace(PLACEHOLDER, "?");
        }
        let mut out = String::with_capacity(self.text.len() + 4 * self.args.len());
        let mut n = 0;
        for c in self.text.chars() {
            if c == PLACEHOLDER {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The query, with every argument bound, for backend `DB`.
    pub(super) fn query<'q, DB>(self) -> Query<'q, DB, <DB as Database>::Arguments>
    where
        DB: Database,
        for<'t> String: Encode<'t, DB> + Type<DB>,
        for<'t> i64: Encode<'t, DB> + Type<DB>,
        for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
        for<'t> bool: Encode<'t, DB> + Type<DB>,
    {
        let text = self.render(DB::NAME != "SQLite");
        let mut q = sqlx::query(AssertSqlSafe(text));
        for arg in self.args {
            q = match arg {
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::OptInt(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
            };
        }
        q
    }
}

/// The values of one row of a multi-row `VALUES` list.
pub(super) struct RowBuilder<'a> {
    sql: &'a mut Sql,
    first: bool,
}

impl RowBuilder<'_> {
    pub(super) fn bind(&mut self, value: impl Into<Arg>) -> &mut Self {
        if !self.first {
            self.sql.push(", ");
        }
        self.first = false;
        self.sql.bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rendered_per_backend_in_order() {
        let mut sql = Sql::new("SELECT 1 WHERE a = ");
        sql.bind("x")
            .push(" AND b IN (")
            .push_list([1i64, 2])
            .push(") AND c IN (VALUES ");
        sql.push_rows([("p", true), ("q", false)], |row, (s, b)| {
            row.bind(s).bind(b);
        });
        sql.push(")");
        assert_eq!(
            sql.render(true),
            "SELECT 1 WHERE a = $1 AND b IN ($2, $3) AND c IN (VALUES ($4, $5), ($6, $7))"
        );
        assert_eq!(
            sql.render(false),
            "SELECT 1 WHERE a = ? AND b IN (?, ?) AND c IN (VALUES (?, ?), (?, ?))"
        );
        assert_eq!(sqlx::Sqlite::NAME, "SQLite", "the name render() tests");
        assert_eq!(sql.args.len(), 7);
        assert_eq!(sql.args[4], Arg::Bool(true));
    }
}
