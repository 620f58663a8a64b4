//! The server's datastore: registration entries (with their change feed), attested nodes, join
//! tokens, trust bundles and the CA journal, in SQLite or PostgreSQL through sqlx.
//!
//! One concrete [`Datastore`] over a connection pool (cheap to clone); no trait, it is tested
//! against real databases (the suite runs on both backends). Verbs follow SPIRE's datastore:
//! create / fetch / list / update / delete / prune / count.
//!
//! Two backends, one implementation: the pool is an enum and each query runs in a `match` whose
//! arms are the same code type-checked once per backend ([`on_pool!`], [`on_tx!`]). sqlx's `Any`
//! driver would avoid the match but converts every argument and row into its own value type
//! (slower bulk loads and listings on SQLite) and cannot express each backend's transaction
//! start; generic functions would need a long list of trait bounds on each helper. SQL is
//! written once with `$N` placeholders, which both drivers accept; queries built at run time go
//! through [`sql::Sql`].
//!
//! Durability and integrity: SQLite runs in WAL mode with `synchronous = FULL`, so a committed
//! change survives a crash or power loss; every change that touches more than one row is one
//! transaction, started with `BEGIN IMMEDIATE` so concurrent writers queue on the
//! `busy_timeout` instead of failing half-way; foreign keys are enforced. On PostgreSQL, where
//! several server replicas write at once, every write transaction first takes one
//! transaction-scoped advisory lock, which gives the same guarantees (see
//! [`Datastore::begin_write`]). The schema lives in the top-level `migrations/` directory, one
//! set per backend, and is compiled into the binary (see [`migrate`]).

/// Evaluates `$body` with `$p` bound to the backend's pool (`&SqlitePool` / `&PgPool`).
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::datastore::Pool::Sqlite($p) => $body,
            $crate::datastore::Pool::Postgres($p) => $body,
        }
    };
}

/// Evaluates `$body` with `$c` bound to the backend's open transaction (`&mut Transaction<_>`;
/// `&mut **$c` is its connection).
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::datastore::Tx::Sqlite($c, _) => $body,
            $crate::datastore::Tx::Postgres($c) => $body,
        }
    };
}

mod bundles;
mod ca_journal;
mod changes;
pub mod config;
mod entries;
mod federation;
mod join_tokens;
mod migrate;
mod nodes;
mod probe;
mod selectors;
mod sql;

use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sigil_common::time::unix_now;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite, Transaction};
use tokio::sync::{broadcast, watch};

pub use ca_journal::{JournalUnion, ReplicaJournal};
pub use changes::Change;
pub use config::{DatabaseType, DatastoreConfig};
pub use entries::{EntryEvent, EntryEventKind, EntryFilter};
/// A test node (`join_token`, expiring at 1000) for other modules' tests.
#[cfg(test)]
pub(crate) use nodes::tests::node as test_node;
pub use nodes::{AttestedNode, NodeFilter, can_reattest};
pub use selectors::SelectorMatch;

/// How long a writer waits for another writer's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite connections, all opened at start and kept open (no idle timeout, no maximum
/// lifetime): the database, WAL and shared-memory files stay open, so the server never has to
/// reopen them when descriptors are short ("unable to open database file"); one that breaks
/// is reopened from the descriptors the listeners' caps leave in reserve (see
/// `crate::listener::limits`). sqlx's default size.
const SQLITE_POOL_SIZE: u32 = 10;

/// One batch of a prune: how many rows it deleted and the changes to publish.
type BoxFuture<'t, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, DatastoreError>> + Send + 't>>;

/// Rows deleted per transaction by the prune functions, so pruning a large backlog never
/// holds the write lock for long.
const PRUNE_BATCH: i64 = 500;

/// The key of the PostgreSQL advisory lock every write transaction takes ("SIGIL" in ASCII).
const WRITE_LOCK_KEY: i64 = 0x53_49_47_49_4C;

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

/// The connection pool of one backend.
#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction on one backend.
pub(crate) enum Tx {
    /// With the writer's turn in this process's write queue (`None` for a read), released
    /// after the commit or rollback.
    Sqlite(
        Transaction<'static, Sqlite>,
        #[expect(dead_code, reason = "held, never read: dropping it ends the turn")]
        Option<tokio::sync::OwnedMutexGuard<()>>,
    ),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    async fn commit(self) -> Result<(), sqlx::Error> {
        on_tx!(self, t => t.commit().await)
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// The server's persistent state. Clones share one connection pool and one change feed.
#[derive(Clone)]
pub struct Datastore {
    pool: Pool,
    /// The SQLite file; empty on PostgreSQL.
    path: PathBuf,
    changes: Arc<changes::Feed>,
    /// SQLite writers of this process queue here, in arrival order, before `BEGIN IMMEDIATE`.
    /// SQLite's own busy handler polls with sleeps of up to 100 ms, so a writer waiting on it
    /// could sit out a whole run of back-to-back transactions (a 100k-row prune is 200 of
    /// them); a fair queue hands the lock to it after the current one.
    write_turns: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Datastore {
    // By hand: a PostgreSQL connection string may carry a password, so it is never kept.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.pool {
            Pool::Sqlite(_) => "sqlite3",
            Pool::Postgres(_) => "postgres",
        };
        f.debug_struct("Datastore")
            .field("backend", &backend)
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
    /// against `data_dir`. A `postgres://` or `postgresql://` URL opens PostgreSQL instead, as
    /// [`open_postgres`](Self::open_postgres).
    pub async fn open(connection_string: &str, data_dir: &Path) -> Result<Self, DatastoreError> {
        let trimmed = connection_string.trim_start();
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            return Self::open_postgres(trimmed).await;
        }
        let options = connect_options(connection_string, data_dir)?;
        let path = options.get_filename().to_owned();
        create_private_file(&path)?;
        let sqlite = SqlitePoolOptions::new()
            .max_connections(SQLITE_POOL_SIZE)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_release(|conn, _| Box::pin(release_outside_transaction(conn)))
            .connect_with(options)
            .await?;
        let pool = Pool::Sqlite(sqlite.clone());
        migrate::run(&pool).await?;
        // Open the whole pool now, once the schema is in place (not while the migrations hold
        // the write lock), and keep it open.
        let all = (0..SQLITE_POOL_SIZE).map(|_| sqlite.acquire());
        drop(futures::future::try_join_all(all).await?);
        tracing::info!(path = %path.display(), "datastore open");
        Self {
            pool,
            path,
            changes: Arc::new(changes::Feed::local()),
            write_turns: Arc::default(),
        }
        .with_entry_revision()
        .await
    }

    /// Connects to PostgreSQL and brings the schema up to date. `connection_string` is a URL
    /// (`postgres://user:password@host:5432/db?sslmode=require`) or libpq's `key=value` form,
    /// as SPIRE accepts (`dbname=sigil user=sigil host=db sslmode=disable`).
    ///
    /// Several servers may share the database: each starts a `LISTEN` connection feeding
    /// [`subscribe_changes`](Self::subscribe_changes) with the changes written through any of
    /// them.
    pub async fn open_postgres(connection_string: &str) -> Result<Self, DatastoreError> {
        let options = pg_connect_options(connection_string)?.application_name("sigil-server");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await?;
        let pool = Pool::Postgres(pool);
        migrate::run(&pool).await?;
        let changes = match &pool {
            Pool::Postgres(p) => changes::Feed::listen(p).await?,
            Pool::Sqlite(_) => changes::Feed::local(),
        };
        tracing::info!("datastore open on PostgreSQL");
        Self {
            pool,
            path: PathBuf::new(),
            changes: Arc::new(changes),
            write_turns: Arc::default(),
        }
        .with_entry_revision()
        .await
    }

    /// Starts [`Self::entry_revisions`] at the revision already committed. Read once the feed
    /// listens, so a change committed meanwhile is either read here or announced.
    async fn with_entry_revision(self) -> Result<Self, DatastoreError> {
        let latest = self.latest_entry_revision().await?;
        self.changes.raise_entry_revision(latest);
        Ok(self)
    }

    /// The SQLite database file (empty on PostgreSQL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection (checkpointing SQLite's WAL) and ends the change feed; later
    /// calls fail.
    pub async fn close(&self) {
        on_pool!(&self.pool, p => p.close().await);
        self.changes.stop();
    }

    /// A new subscription to the changes committed from now on: on SQLite those written
    /// through this datastore (and its clones), on PostgreSQL those written by every server
    /// sharing the database. See [`Change`] for what a subscriber must do after
    /// [`Change::Resync`] or a lag (`RecvError::Lagged`).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The latest committed entry revision, from the change feed alone: raised by every entry
    /// change committed through this datastore (SQLite) or through any server sharing the
    /// database (PostgreSQL), and read again after a gap in the feed; never lowered. Agents'
    /// sync streams wake on it.
    pub fn entry_revisions(&self) -> watch::Receiver<i64> {
        self.changes.entry_revisions()
    }

    /// Starts a read transaction: its statements see one snapshot (on PostgreSQL `REPEATABLE
    /// READ`, since its default isolation takes a new snapshot per statement).
    async fn begin_read(&self) -> Result<Tx, DatastoreError> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin().await?, None),
            Pool::Postgres(p) => Tx::Postgres(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
        })
    }

    /// Starts a write transaction holding the write lock from its first statement, so checks
    /// made inside it stay true until commit and it never fails half-way on lock upgrade.
    ///
    /// SQLite: `BEGIN IMMEDIATE`. PostgreSQL: several replicas write at once, so the
    /// transaction first takes one transaction-scoped advisory lock, released at commit or
    /// rollback. Writers are then serialized as on SQLite: a check-then-write stays race-free,
    /// and `entry_events` revisions (from an identity column, handed out at insert time)
    /// become visible in revision order. Without it, a transaction holding revision 7 could
    /// commit after one holding 8, and a syncing agent that had read up to 8 would never see 7.
    async fn begin_write(&self) -> Result<Tx, DatastoreError> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                let turn = self.write_turns.clone().lock_owned().await;
                Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?, Some(turn))
            }
            Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                Tx::Postgres(tx)
            }
        })
    }

    /// Runs `batch` in one write transaction after another, committing each with the changes
    /// it returns, until a batch deletes fewer than [`PRUNE_BATCH`] rows; returns the total.
    /// Short transactions keep a large backlog from holding the write lock for long.
    async fn prune_in_batches(
        &self,
        // A boxed future, not an `AsyncFnMut`: the latter's future cannot yet be proven `Send`
        // for every borrow of the transaction, which the spawned pruner needs.
        mut batch: impl for<'t> FnMut(&'t mut Tx) -> BoxFuture<'t, (u64, Vec<Change>)>,
    ) -> Result<u64, DatastoreError> {
        let mut total = 0u64;
        loop {
            let mut tx = self.begin_write().await?;
            let (deleted, changes) = batch(&mut tx).await?;
            self.commit(tx, changes).await?;
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Commits a write transaction and publishes its changes. On PostgreSQL they are sent with
    /// `pg_notify` inside the transaction, so listeners hear of them only once committed; on
    /// SQLite they are published in-process after the commit.
    async fn commit(&self, mut tx: Tx, changes: Vec<Change>) -> Result<(), DatastoreError> {
        if let Tx::Postgres(t) = &mut tx
            && !changes.is_empty()
        {
            let payloads: Vec<String> = changes.iter().map(Change::encode).collect();
            sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(changes::CHANNEL)
                .bind(payloads)
                .execute(&mut **t)
                .await?;
        }
        let local = !tx.is_postgres();
        tx.commit().await?;
        if local {
            for change in changes {
                self.changes.publish(change);
            }
        }
        Ok(())
    }
}

/// Whether a SQLite connection coming back to the pool may be reused: not while it is still
/// inside a transaction.
///
/// After SQLITE_FULL or an I/O error SQLite may roll a transaction back by itself; sqlx's
/// rollback on drop then fails ("no transaction is active") and leaves the connection marked
/// as inside one, so every later `BEGIN IMMEDIATE` on it failed ("attempted to call
/// begin_with at non-zero transaction depth") and a read `BEGIN` became a savepoint of the
/// leaked transaction, long after the disk had space again. Such a connection is closed here
/// (which ends whatever SQLite still holds) and the pool opens a fresh one. The rollback that
/// dropping the transaction queued runs first: `ping` waits for the connection's worker to
/// work through everything queued before it.
async fn release_outside_transaction(
    conn: &mut sqlx::SqliteConnection,
) -> Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("a datastore connection is still inside a failed transaction; closing it");
        return Ok(false);
    }
    Ok(true)
}

/// Builds the SQLite connection options: file location plus the pragmas every connection needs.
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
        .foreign_keys(true)
        // Sorts and temporary indexes in memory: a query never needs a new file descriptor.
        .pragma("temp_store", "memory"))
}

/// Parses a PostgreSQL connection string: a URL, or libpq's `key=value ...` form (SPIRE's
/// documented style). Errors never echo the string: it may hold a password.
fn pg_connect_options(connection_string: &str) -> Result<PgConnectOptions, DatastoreError> {
    let s = connection_string.trim();
    let invalid =
        |why: &str| DatastoreError::InvalidArgument(format!("PostgreSQL connection string: {why}"));
    if s.is_empty() {
        return Err(invalid("empty"));
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        // sqlx's URL errors name the part that failed, not the password.
        return PgConnectOptions::from_str(s).map_err(|e| invalid(&e.to_string()));
    }
    // Hand-written: sqlx parses only URLs. Values here are unquoted words (libpq's quoting
    // with '...' is not supported and is refused rather than misread).
    let mut options = PgConnectOptions::new();
    for pair in s.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| invalid("expected key=value pairs"))?;
        if value.starts_with('\'') {
            return Err(invalid("quoted values are not supported; use a URL"));
        }
        options = match key {
            "host" => options.host(value),
            "port" => options.port(value.parse().map_err(|_| invalid("bad port"))?),
            "user" => options.username(value),
            "password" => options.password(value),
            "dbname" => options.database(value),
            "sslmode" => {
                options.ssl_mode(PgSslMode::from_str(value).map_err(|_| invalid("bad sslmode"))?)
            }
            "sslrootcert" => options.ssl_root_cert(value),
            "application_name" => options.application_name(value),
            other => return Err(invalid(&format!("unsupported key {other:?}"))),
        };
    }
    Ok(options)
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
        // An existing file's mode is checked at start-up (`config/file_checks.rs`): refused, or
        // a warning under allow_insecure_file_permissions.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(e)),
    }
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

    use super::entries::EntryFilter;

    use super::*;

    /// A plain entry to create in tests outside the datastore too.
    pub(crate) use super::entries::tests::entry;

    /// A fresh SQLite datastore in a temp dir (keep the dir alive as long as the store).
    pub(crate) async fn store() -> (TempDir, Datastore) {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("datastore.sqlite3", dir.path())
            .await
            .unwrap();
        (dir, ds)
    }

    /// The backends the datastore suite runs on.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Backend {
        Sqlite,
        Postgres,
    }

    /// Keeps a test's database alive: SQLite's temp dir (a PostgreSQL test database lives as
    /// long as the throwaway cluster).
    pub(crate) struct Guard(#[allow(dead_code)] Option<TempDir>);

    /// A fresh datastore on `backend`: a temp SQLite file, or a new database on this test
    /// process's throwaway PostgreSQL cluster (`sigil_testkit::postgres`).
    pub(crate) async fn store_on(backend: Backend) -> (Guard, Datastore) {
        match backend {
            Backend::Sqlite => {
                let (dir, ds) = store().await;
                (Guard(Some(dir)), ds)
            }
            Backend::Postgres => {
                let url = pg_database().await;
                (Guard(None), Datastore::open_postgres(&url).await.unwrap())
            }
        }
    }

    /// A fresh database on the throwaway cluster (started on first use; blocking, so off the
    /// runtime's thread).
    pub(crate) async fn pg_database() -> String {
        tokio::task::spawn_blocking(|| sigil_testkit::postgres::database("datastore"))
            .await
            .unwrap()
    }

    /// Runs each listed `async fn(Datastore)` on both backends, as tests
    /// `<name>::sqlite` and `<name>::postgres`.
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            $(
                mod $name {
                    use crate::datastore::tests::{Backend, store_on};

                    #[tokio::test]
                    async fn sqlite() {
                        let (_guard, ds) = store_on(Backend::Sqlite).await;
                        super::$name(ds).await;
                    }

                    #[tokio::test]
                    async fn postgres() {
                        let (_guard, ds) = store_on(Backend::Postgres).await;
                        super::$name(ds).await;
                    }
                }
            )*
        };
    }
    pub(crate) use on_both_backends;

    /// One number from a query the test writes (row counts and the like), on either backend.
    pub(crate) async fn scalar(ds: &Datastore, sql: &'static str) -> i64 {
        on_pool!(&ds.pool, p => sqlx::query_scalar(sql).fetch_one(p).await.unwrap())
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

    /// SQLite ends a transaction by itself on SQLITE_FULL or an I/O error; sqlx's rollback on
    /// drop then fails. Here the transaction is ended behind sqlx's back the same way, more
    /// times than the pool has connections: every later write still gets a usable connection.
    #[tokio::test]
    async fn a_transaction_sqlite_ended_by_itself_leaves_no_connection_unusable() {
        let (_dir, ds) = store().await;
        for i in 0..20 {
            let mut tx = ds
                .begin_write()
                .await
                .unwrap_or_else(|e| panic!("round {i}: {e}"));
            on_tx!(&mut tx, c => sqlx::query("ROLLBACK").execute(&mut **c).await.map(drop).unwrap());
            drop(tx);
        }
        for i in 0..20 {
            let e = entry(
                &format!("spiffe://example.org/w{i}"),
                "spiffe://example.org/spire/agent/a",
                &["unix:uid:1"],
            );
            ds.create_entries(vec![e]).await.unwrap();
            ds.list_entries(&EntryFilter::default(), 100, None)
                .await
                .unwrap();
        }
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
        let Pool::Sqlite(pool) = &ds.pool else {
            unreachable!()
        };
        let mut conn = pool.acquire().await.unwrap();
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
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(temp_store, 2, "MEMORY");
        // Connections are kept, never reaped and reopened.
        let options = pool.options();
        assert_eq!(options.get_idle_timeout(), None);
        assert_eq!(options.get_max_lifetime(), None);
        assert_eq!(pool.size(), SQLITE_POOL_SIZE);
    }

    #[tokio::test]
    async fn reopening_keeps_everything_and_passes_integrity_check() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let created = {
            let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
            let entries = ds
                .create_entries(vec![entry(
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
        let Pool::Sqlite(pool) = &ds.pool else {
            unreachable!()
        };
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        let fk_violations = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(pool)
            .await
            .unwrap();
        assert!(fk_violations.is_empty());
    }

    #[tokio::test]
    async fn database_from_a_newer_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("ds.sqlite3", dir.path()).await.unwrap();
        let sql = "INSERT INTO _sqlx_migrations \
                   (version, description, success, checksum, execution_time) \
                   VALUES (999, 'future', TRUE, x'00', 0)";
        on_pool!(&ds.pool, p => sqlx::query(sql).execute(p).await.unwrap().rows_affected());
        ds.close().await;
        let err = Datastore::open("ds.sqlite3", dir.path()).await.unwrap_err();
        assert!(matches!(err, DatastoreError::Migration(_)), "{err}");

        let url = pg_database().await;
        let ds = Datastore::open_postgres(&url).await.unwrap();
        let sql = "INSERT INTO _sqlx_migrations \
                   (version, description, success, checksum, execution_time) \
                   VALUES (999, 'future', TRUE, '\\x00', 0)";
        on_pool!(&ds.pool, p => sqlx::query(sql).execute(p).await.unwrap().rows_affected());
        ds.close().await;
        let err = Datastore::open_postgres(&url).await.unwrap_err();
        assert!(matches!(err, DatastoreError::Migration(_)), "{err}");
    }

    #[test]
    fn postgres_connection_strings() {
        let url = pg_connect_options("postgres://u:secret@db.example:6000/sigil?sslmode=require")
            .unwrap();
        assert_eq!(
            (
                url.get_host(),
                url.get_port(),
                url.get_username(),
                url.get_database()
            ),
            ("db.example", 6000, "u", Some("sigil"))
        );
        let kv = pg_connect_options(
            "dbname=sigil user=spire password=secret host=10.0.0.1 port=5433 sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            (
                kv.get_host(),
                kv.get_port(),
                kv.get_username(),
                kv.get_database()
            ),
            ("10.0.0.1", 5433, "spire", Some("sigil"))
        );
        for bad in [
            "",
            "dbname=x password='with space'",
            "dbname=x secretword",
            "dbname=x port=notaport password=hunter2",
            "dbname=x sslmode=sometimes password=hunter2",
            "dbname=x unknown=1 password=hunter2",
        ] {
            let err = pg_connect_options(bad).unwrap_err();
            assert!(
                matches!(err, DatastoreError::InvalidArgument(_)),
                "{bad}: {err}"
            );
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[tokio::test]
    async fn postgres_reopening_keeps_everything() {
        let url = pg_database().await;
        let ds = Datastore::open(&url, Path::new("/nonexistent"))
            .await
            .unwrap();
        assert_eq!(ds.path(), Path::new(""));
        assert!(!format!("{ds:?}").contains("postgres@"), "{ds:?}");
        let created = ds
            .create_entries(vec![entry(
                "spiffe://example.org/web",
                "spiffe://example.org/spire/agent/a",
                &["unix:uid:1000"],
            )])
            .await
            .unwrap();
        ds.set_ca_journal(b"journal").await.unwrap();
        ds.close().await;
        let ds = Datastore::open_postgres(&url).await.unwrap();
        assert_eq!(
            ds.fetch_entry(&created[0].id).await.unwrap().as_ref(),
            Some(&created[0])
        );
        assert_eq!(
            ds.fetch_ca_journal().await.unwrap().as_deref(),
            Some(&b"journal"[..])
        );
    }

    /// PostgreSQL restarted under an open datastore: the pool reconnects, the change feed
    /// reconnects and says `Resync`, and nothing committed is lost.
    #[tokio::test]
    async fn postgres_restart_is_survived() {
        let cluster = tokio::task::spawn_blocking(|| {
            let cluster = sigil_testkit::postgres::Cluster::start().unwrap();
            let url = cluster.create_database("restart").unwrap();
            (cluster, url)
        })
        .await
        .unwrap();
        let (cluster, url) = cluster;
        let cluster = std::sync::Arc::new(cluster);
        let ds = Datastore::open_postgres(&url).await.unwrap();
        let mut changes = ds.subscribe_changes();
        let entry = |i: usize| {
            entry(
                &format!("spiffe://example.org/w{i}"),
                "spiffe://example.org/spire/agent/a",
                &["unix:uid:1"],
            )
        };
        let before = ds
            .create_entries((0..10).map(entry).collect())
            .await
            .unwrap();
        let restart = cluster.clone();
        tokio::task::spawn_blocking(move || restart.restart().unwrap())
            .await
            .unwrap();
        let after = ds
            .create_entries((10..20).map(entry).collect())
            .await
            .unwrap();
        let all = ds
            .list_entries(&EntryFilter::default(), 100, None)
            .await
            .unwrap()
            .0;
        let mut want: Vec<_> = before.into_iter().chain(after.clone()).collect();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(all, want);
        // The feed: the first batch, then (once the listener is back) Resync; then changes
        // flow again.
        let mut seen = Vec::new();
        loop {
            let change = tokio::time::timeout(Duration::from_secs(30), changes.recv())
                .await
                .expect("no change within 30 s")
                .unwrap();
            if change == Change::Resync {
                break;
            }
            seen.push(change);
        }
        assert!(seen.len() <= 2, "{seen:?}");
        ds.set_ca_journal(b"x").await.unwrap();
        let td = TrustDomain::new("after.restart").unwrap();
        ds.set_bundle(&Bundle::new(td.clone())).await.unwrap();
        loop {
            let change = tokio::time::timeout(Duration::from_secs(30), changes.recv())
                .await
                .expect("no change within 30 s")
                .unwrap();
            if change == Change::Bundle(td.clone()) {
                break;
            }
        }
        ds.close().await;
        tokio::task::spawn_blocking(move || drop(cluster))
            .await
            .unwrap();
    }

    /// Two datastores (two server replicas) write concurrently while a reader follows the
    /// events as an agent sync does (`after` its last revision): it must never skip a
    /// revision, which it would if a lower revision could commit after a higher one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_concurrent_writers_commit_revisions_in_order() {
        let url = pg_database().await;
        let a = Datastore::open_postgres(&url).await.unwrap();
        let b = Datastore::open_postgres(&url).await.unwrap();
        const WRITERS: usize = 8;
        const WRITES: usize = 25;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let ds = if w % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                for i in 0..WRITES {
                    let e = entry(
                        &format!("spiffe://example.org/w{w}/{i}"),
                        "spiffe://example.org/spire/agent/a",
                        &["unix:uid:1"],
                    );
                    ds.create_entries(vec![e]).await.unwrap();
                }
            }));
        }
        let reader = a.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers_done = done.clone();
        let follow = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                // Read once more after the writers finished, then stop.
                let last = writers_done.load(std::sync::atomic::Ordering::SeqCst);
                for event in reader.list_entry_events(after, 1000).await.unwrap() {
                    after = event.revision;
                    seen.push(event.revision);
                }
                if last {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        });
        for t in tasks {
            t.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = follow.await.unwrap();
        let all: Vec<i64> = a
            .list_entry_events(0, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(seen, all, "the follower saw every revision, in order");
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
