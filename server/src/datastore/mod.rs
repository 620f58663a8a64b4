//! The server's datastore: registration entries (with their change feed), attested nodes, join
//! tokens, trust bundles and the CA journal, in SQLite through sqlx.
//!
//! One concrete [`Datastore`] over a connection pool (cheap to clone); no trait, it is tested
//! against a real database file. Verbs follow SPIRE's datastore: create / fetch / list / update
//! / delete / prune / count.
//!
//! Durability and integrity: the database runs in WAL mode with `synchronous = FULL`, so a
//! committed change survives a crash or power loss; every change that touches more than one row
//! is one transaction, started with `BEGIN IMMEDIATE` so concurrent writers queue on the
//! `busy_timeout` instead of failing half-way; foreign keys are enforced. The schema lives in
//! the top-level `migrations/` directory and is compiled into the binary (see [`migrate`]).

mod bundles;
mod ca_journal;
mod entries;
mod join_tokens;
mod migrate;
mod nodes;
mod selectors;

use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

pub use ca_journal::{JournalUnion, ReplicaJournal};
pub use entries::{EntryEvent, EntryEventKind, EntryFilter};
pub use nodes::{AttestedNode, NodeFilter};
pub use selectors::SelectorMatch;

/// How long a writer waits for another writer's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a datastore operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The agent was banned: it must be evicted (deleted) before it may attest again.
    #[error("attested node {0} is banned")]
    Banned(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored row no longer parses (edited by hand, or written by an incompatible version).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The server's persistent state. Clones share one connection pool.
#[derive(Clone)]
pub struct Datastore {
    pool: SqlitePool,
    path: PathBuf,
}

impl fmt::Debug for Datastore {
    // By hand: a later PostgreSQL connection string may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datastore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Datastore {
    /// Opens (creating if missing, mode 0600) the SQLite database named by `connection_string`
    /// and brings its schema up to date.
    ///
    /// `connection_string` is a file path as in SPIRE's `connection_string`
    /// (`/run/spire/data/datastore.sqlite3`) or a `sqlite://` URL; a relative path resolves
    /// against `data_dir`.
    pub async fn open(
        connection_string: &str,
        data_dir: &Path,
    ) -> Result<Datastore, DatastoreError> {
        let options = connect_options(connection_string, data_dir)?;
        let path = options.get_filename().to_owned();
        create_private_file(&path)?;
        let pool = SqlitePoolOptions::new().connect_with(options).await?;
        migrate::run(&pool).await?;
        tracing::info!(path = %path.display(), "datastore open");
        Ok(Datastore { pool, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection (checkpointing the WAL); later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction holding the write lock from its first statement, so checks
    /// made inside it stay true until commit and it never fails half-way on lock upgrade.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, DatastoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Builds the connection options: file location plus the pragmas every connection needs.
fn connect_options(
    connection_string: &str,
    data_dir: &Path,
) -> Result<SqliteConnectOptions, DatastoreError> {
    let connection_string = connection_string.trim();
    if connection_string.is_empty() {
        return Err(DatastoreError::InvalidArgument(
            "empty datastore connection string".into(),
        ));
    }
    // An in-memory database would silently lose every entry at restart.
    if connection_string.contains(":memory:") || connection_string.contains("mode=memory") {
        return Err(DatastoreError::InvalidArgument(
            "the datastore must be a file, not an in-memory database".into(),
        ));
    }
    let options = if connection_string.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(connection_string).map_err(|e| {
            DatastoreError::InvalidArgument(format!("datastore connection string: {e}"))
        })?
    } else {
        SqliteConnectOptions::new().filename(connection_string)
    };
    let file = options.get_filename();
    if file.as_os_str().is_empty() {
        return Err(DatastoreError::InvalidArgument(
            "the datastore connection string names no file".into(),
        ));
    }
    let file = if file.is_relative() {
        data_dir.join(file)
    } else {
        file.to_owned()
    };
    Ok(options
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// Creates the database file with mode 0600 (and its directory with 0700) before SQLite does,
/// since SQLite would create it world-readable under the usual umask. SQLite gives the `-wal`
/// and `-shm` files the database file's mode.
fn create_private_file(path: &Path) -> Result<(), DatastoreError> {
    let io_err = |source| DatastoreError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)
                .map_err(io_err)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "datastore file is readable by other users"
                );
            }
            Ok(())
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Current time in Unix seconds (0 if the clock is before 1970).
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether `err` is a unique-constraint violation (a duplicate key).
fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Checks a page size and decodes a page token (the last key of the previous page).
fn page_bounds(page_size: u32, page_token: Option<&str>) -> Result<(i64, &str), DatastoreError> {
    if page_size == 0 {
        return Err(DatastoreError::InvalidArgument(
            "page size must be positive".into(),
        ));
    }
    // Fetch one more than asked to learn whether another page follows.
    Ok((i64::from(page_size) + 1, page_token.unwrap_or("")))
}

/// Trims the look-ahead row and returns the next page token, if another page follows.
fn finish_page<T>(
    mut rows: Vec<T>,
    page_size: u32,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let page_size = page_size as usize;
    if rows.len() > page_size {
        rows.truncate(page_size);
        let token = rows.last().map(key);
        (rows, token)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;

    use sigil_proto::{Bundle, SpiffeId, TrustDomain};
    use tempfile::TempDir;

    use super::*;

    /// A fresh datastore in a temp dir (keep the dir alive as long as the store).
    pub(crate) async fn store() -> (TempDir, Datastore) {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("datastore.sqlite3", dir.path())
            .await
            .unwrap();
        (dir, ds)
    }

    #[tokio::test]
    async fn relative_path_resolves_against_data_dir_and_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("sub/datastore.sqlite3", dir.path())
            .await
            .unwrap();
        let file = dir.path().join("sub/datastore.sqlite3");
        assert_eq!(ds.path(), file);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // SQLite copies the database file's mode onto the WAL.
        ds.set_ca_journal(b"x").await.unwrap();
        let wal = dir.path().join("sub/datastore.sqlite3-wal");
        assert_eq!(
            std::fs::metadata(wal).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn url_and_absolute_path_forms() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("sqlite://url.db?mode=rwc", dir.path())
            .await
            .unwrap();
        assert_eq!(ds.path(), dir.path().join("url.db"));
        let abs = dir.path().join("abs.db");
        let ds = Datastore::open(abs.to_str().unwrap(), Path::new("/nonexistent"))
            .await
            .unwrap();
        assert_eq!(ds.path(), abs);
    }

    #[tokio::test]
    async fn refuses_in_memory_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x?mode=memory",
        ] {
            let err = Datastore::open(bad, dir.path()).await.unwrap_err();
            assert!(
                matches!(err, DatastoreError::InvalidArgument(_)),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn pragmas_are_set() {
        let (_dir, ds) = store().await;
        let mut conn = ds.pool.acquire().await.unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(fk, 1);
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(busy, 5000);
    }

    #[tokio::test]
    async fn reopening_keeps_everything_and_passes_integrity_check() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let created = {
            let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
            let entries = ds
                .create_entries(vec![super::entries::tests::entry(
                    "spiffe://example.org/web",
                    "spiffe://example.org/spire/agent/a",
                    &["unix:uid:1000"],
                )])
                .await
                .unwrap();
            ds.create_attested_node(super::nodes::tests::node(
                "spiffe://example.org/spire/agent/a",
            ))
            .await
            .unwrap();
            ds.create_join_token("tok", i64::MAX).await.unwrap();
            ds.set_bundle(&Bundle::new(td.clone())).await.unwrap();
            ds.set_ca_journal(b"journal").await.unwrap();
            ds.close().await;
            entries
        };
        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        assert_eq!(
            ds.fetch_entry(&created[0].id).await.unwrap().as_ref(),
            Some(&created[0])
        );
        assert_eq!(
            ds.latest_entry_revision().await.unwrap(),
            created[0].revision
        );
        let agent = SpiffeId::new("spiffe://example.org/spire/agent/a").unwrap();
        assert!(ds.fetch_attested_node(&agent).await.unwrap().is_some());
        assert_eq!(ds.take_join_token("tok", 0).await.unwrap(), Some(i64::MAX));
        assert_eq!(ds.fetch_bundle(&td).await.unwrap(), Some(Bundle::new(td)));
        assert_eq!(
            ds.fetch_ca_journal().await.unwrap().as_deref(),
            Some(&b"journal"[..])
        );
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&ds.pool)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        let fk_violations = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&ds.pool)
            .await
            .unwrap();
        assert!(fk_violations.is_empty());
    }

    #[tokio::test]
    async fn database_from_a_newer_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (999, 'future', TRUE, x'00', 0)",
        )
        .execute(&ds.pool)
        .await
        .unwrap();
        ds.close().await;
        let err = Datastore::open("ds.sqlite3", dir.path()).await.unwrap_err();
        assert!(matches!(err, DatastoreError::Migration(_)), "{err}");
    }

    #[test]
    fn paging_helpers() {
        assert!(page_bounds(0, None).is_err());
        assert_eq!(page_bounds(2, Some("b")).unwrap(), (3, "b"));
        let key = |s: &&str| s.to_string();
        assert_eq!(
            finish_page(vec!["a", "b", "c"], 2, key),
            (vec!["a", "b"], Some("b".into()))
        );
        assert_eq!(finish_page(vec!["a", "b"], 2, key), (vec!["a", "b"], None));
    }
}
