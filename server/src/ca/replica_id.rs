//! A server replica's name. Replicas share the datastore and run one CA each: each signs with
//! its own authorities and persists its own journal under its [`ReplicaId`] (the bundle is the
//! union of every replica's live authorities: [`super::bundle_union`]).
//!
//! A replica is named by a [`ReplicaId`]: a random ID created once in its `data_dir`. We chose
//! that over SPIRE's way (the ID of the X.509 authority found in the key manager) because it
//! stays the same whatever the key manager: with `KeyManager "memory"` every restart would
//! otherwise look like a new replica and leave its predecessor's journal behind, whereas with
//! a stable ID the restarted replica finds its journal, keeps its old authorities in the bundle
//! until they expire and rotates in a fresh one. Two replicas must not share a `data_dir`
//! (they would share the ID and overwrite each other's journal), as they must not share a
//! key manager either.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::{fmt, fs};

use ring::rand::{SecureRandom, SystemRandom};

/// The file in `data_dir` holding the replica ID.
pub const REPLICA_ID_FILE: &str = "replica_id";

/// Why the replica ID could not be read or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("random number generator failed")]
    Random,
}

/// A server replica's stable name: the key of its journal in the datastore.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// The ID of a server that never set one (unit tests, a single server built in code);
    /// `run` always loads the real one from `data_dir`.
    pub fn single() -> Self {
        Self("single".to_owned())
    }

    /// Checks `s`: 1 to 64 ASCII letters, digits, `-` or `_`.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "replica ID must be 1 to 64 characters, got {}",
                s.len()
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "replica ID {s:?} may only hold ASCII letters, digits, '-' and '_'"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh random ID: 16 random bytes, hex.
    pub fn random() -> Result<Self, ReplicaError> {
        let mut bytes = [0u8; 16];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| ReplicaError::Random)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Reads `data_dir/replica_id`, creating it (mode 0600) with a random ID on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, ReplicaError> {
        let path = data_dir.join(REPLICA_ID_FILE);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ReplicaError::Io { path, source }
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                return Self::new(text.trim()).map_err(|reason| ReplicaError::Invalid {
                    path: path.clone(),
                    reason,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let id = Self::random()?;
        // Written beside and renamed in, so a crash never leaves a half-written ID.
        let tmp = data_dir.join(format!("{REPLICA_ID_FILE}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(format!("{}\n", id.0).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        tracing::info!(replica_id = %id, path = %path.display(), "new server replica ID created");
        Ok(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replica_id_is_created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = ReplicaId::load_or_create(dir.path()).unwrap();
        assert_eq!(first.as_str().len(), 32);
        let path = dir.path().join(REPLICA_ID_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ReplicaId::load_or_create(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(ReplicaId::load_or_create(other.path()).unwrap(), first);
    }

    #[test]
    fn a_bad_replica_id_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(REPLICA_ID_FILE), "../etc\n").unwrap();
        let err = ReplicaId::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, ReplicaError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("replica_id"), "{err}");
        assert!(ReplicaId::new("").is_err());
        assert!(ReplicaId::new(&"a".repeat(65)).is_err());
        assert_eq!(ReplicaId::new("a-b_C9").unwrap().as_str(), "a-b_C9");
    }
}
