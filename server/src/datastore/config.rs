//! The `DataStore "sql"` plugin's configuration: `database_type` (`sqlite3`, the default, or
//! `postgres`) and `connection_string` (a SQLite path, default `<data_dir>/datastore.sqlite3`,
//! or a PostgreSQL URL or `key=value` DSN, which is then required).

use std::fmt;
use std::path::Path;

use sigil_common::hcl::{Block, ConfigError};

/// `database_type` of the `DataStore "sql"` plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatabaseType {
    #[default]
    Sqlite3,
    /// PostgreSQL: `connection_string` is a URL or libpq `key=value` DSN.
    Postgres,
}

/// The `DataStore "sql"` plugin.
#[derive(Clone, PartialEq, Eq)]
pub struct DatastoreConfig {
    pub database_type: DatabaseType,
    /// A SQLite file path (default `<data_dir>/datastore.sqlite3`) or a PostgreSQL DSN.
    pub connection_string: String,
}

impl fmt::Debug for DatastoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A PostgreSQL DSN may carry a password; a SQLite path is only a path.
        let conn = match self.database_type {
            DatabaseType::Sqlite3 => self.connection_string.as_str(),
            DatabaseType::Postgres => "<redacted>",
        };
        f.debug_struct("DatastoreConfig")
            .field("database_type", &self.database_type)
            .field("connection_string", &conn)
            .finish()
    }
}

impl DatastoreConfig {
    /// `DataStore "sql"` from its `plugin_data`, if any; `data_dir` holds the default SQLite
    /// file.
    pub(crate) fn from_plugin_data(
        data: Option<Block<'_>>,
        data_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let Some(mut data) = data else {
            return Ok(Self {
                database_type: DatabaseType::Sqlite3,
                connection_string: default_sqlite_path(data_dir),
            });
        };
        let database_type = data
            .parsed("database_type", |s| match s {
                "sqlite3" => Ok(DatabaseType::Sqlite3),
                "postgres" => Ok(DatabaseType::Postgres),
                _ => Err(format!(
                    "{s:?} is not a supported database type (expected sqlite3 or postgres)"
                )),
            })?
            .unwrap_or_default();
        let connection_string = data.string("connection_string")?.filter(|c| !c.is_empty());
        let connection_string = match (connection_string, database_type) {
            (Some(c), _) => c,
            (None, DatabaseType::Sqlite3) => default_sqlite_path(data_dir),
            (None, DatabaseType::Postgres) => return Err(data.missing("connection_string")),
        };
        data.finish()?;
        Ok(Self {
            database_type,
            connection_string,
        })
    }
}

fn default_sqlite_path(data_dir: &Path) -> String {
    data_dir.join("datastore.sqlite3").display().to_string()
}
