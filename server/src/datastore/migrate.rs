//! Schema migrations compiled into the binary, applied at open with sqlx's `Migrator`.
//!
//! sqlx's own `migrate!` macro needs the `macros` feature (which we keep off for build time),
//! and reading a directory at run time would make the binary depend on files beside it; a small
//! [`MigrationSource`] over `include_str!` files does neither.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::SqlSafeStr;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::{DatastoreError, Pool};

/// `(file name, SQL)` in version order, per backend. File names follow sqlx's
/// `<version>_<description>.sql`; both backends carry the same versions with the same meaning.
/// An applied file must never change: its checksum is recorded and a mismatch refuses to start.
const SQLITE_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        "0002_entry_templates.sql",
        include_str!("../../../migrations/sqlite/0002_entry_templates.sql"),
    ),
    (
        "0003_ca_journals.sql",
        include_str!("../../../migrations/sqlite/0003_ca_journals.sql"),
    ),
    (
        "0004_write_probe.sql",
        include_str!("../../../migrations/sqlite/0004_write_probe.sql"),
    ),
    (
        "0005_federation_relationships.sql",
        include_str!("../../../migrations/sqlite/0005_federation_relationships.sql"),
    ),
    (
        "0006_entry_hint_index.sql",
        include_str!("../../../migrations/sqlite/0006_entry_hint_index.sql"),
    ),
];

const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_entry_templates.sql",
        include_str!("../../../migrations/postgres/0002_entry_templates.sql"),
    ),
    (
        "0003_ca_journals.sql",
        include_str!("../../../migrations/postgres/0003_ca_journals.sql"),
    ),
    (
        "0004_write_probe.sql",
        include_str!("../../../migrations/postgres/0004_write_probe.sql"),
    ),
    (
        "0005_federation_relationships.sql",
        include_str!("../../../migrations/postgres/0005_federation_relationships.sql"),
    ),
    (
        "0006_entry_hint_index.sql",
        include_str!("../../../migrations/postgres/0006_entry_hint_index.sql"),
    ),
];

/// The migrations carried by this binary.
#[derive(Debug, Clone, Copy)]
struct Embedded(&'static [(&'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { self.migrations().map_err(Into::into) })
    }
}

impl Embedded {
    fn migrations(self) -> Result<Vec<Migration>, String> {
        self.0
            .iter()
            .map(|&(name, sql)| {
                let (version, description) = parse_name(name)?;
                Ok(Migration::new(
                    version,
                    Cow::Owned(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                ))
            })
            .collect()
    }
}

/// Splits `0001_init.sql` into `(1, "init")`.
fn parse_name(name: &str) -> Result<(i64, String), String> {
    let bad = || format!("migration file name {name:?} is not <version>_<description>.sql");
    let stem = name.strip_suffix(".sql").ok_or_else(bad)?;
    let (version, description) = stem.split_once('_').ok_or_else(bad)?;
    let version: i64 = version.parse().map_err(|_| bad())?;
    if version <= 0 {
        return Err(bad());
    }
    Ok((version, description.replace('_', " ")))
}

/// Applies every migration not yet recorded in the database, each in its own transaction.
/// Fails if the database was migrated by a newer binary (a version this one doesn't carry) or an
/// applied migration's checksum changed.
/// On PostgreSQL sqlx holds an advisory lock while migrating, so replicas starting together
/// apply each migration once.
pub(super) async fn run(pool: &Pool) -> Result<(), DatastoreError> {
    match pool {
        Pool::Sqlite(p) => {
            Migrator::new(Embedded(SQLITE_MIGRATIONS))
                .await?
                .run(p)
                .await?
        }
        Pool::Postgres(p) => {
            Migrator::new(Embedded(POSTGRES_MIGRATIONS))
                .await?
                .run(p)
                .await?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse_name("0001_init.sql").unwrap(), (1, "init".to_owned()));
        assert_eq!(
            parse_name("0012_add_x.sql").unwrap(),
            (12, "add x".to_owned())
        );
        for bad in ["init.sql", "0001_init.txt", "0000_zero.sql", "x_y.sql"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn embedded_versions_are_increasing_and_the_same_on_both_backends() {
        let sqlite = Embedded(SQLITE_MIGRATIONS).migrations().unwrap();
        assert!(!sqlite.is_empty());
        assert!(sqlite.windows(2).all(|w| w[0].version < w[1].version));
        let postgres = Embedded(POSTGRES_MIGRATIONS).migrations().unwrap();
        let versions = |m: &[Migration]| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(&sqlite), versions(&postgres));
    }

    #[tokio::test]
    async fn failed_migration_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let opts = super::super::connect_options("bad.db", dir.path()).unwrap();
        let pool = sqlx::sqlite::SqlitePool::connect_with(opts).await.unwrap();
        const BROKEN: &[(&str, &str)] = &[("0001_broken.sql", "CREATE TABLE t (;")];
        let migrator = Migrator::new(Embedded(BROKEN)).await.unwrap();
        let err = DatastoreError::from(migrator.run(&pool).await.unwrap_err());
        assert!(matches!(err, DatastoreError::Migration(_)), "{err}");
        assert!(err.to_string().contains("migration"), "{err}");
    }
}
