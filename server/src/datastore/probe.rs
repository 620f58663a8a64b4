//! The write probe: proof that the datastore can still take a change, for readiness.
//!
//! A read (what `healthcheck` used to do) succeeds on a full disk, so readiness needs a write.
//! On SQLite a small database write is not proof either: SQLite reuses the WAL space a failed
//! transaction left behind, so one row commits while a real change still fails with
//! SQLITE_FULL. The probe therefore first writes and syncs [`PROBE_FILE_BYTES`] of new data
//! beside the database file (fresh blocks the filesystem must find), then commits one row
//! through the same write path as every change (the write queue, `BEGIN IMMEDIATE` or the
//! PostgreSQL advisory lock). On PostgreSQL, whose disk is not ours to look at, the row is the
//! probe.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{Datastore, DatastoreError, Pool, unix_now};

/// Bytes of new file data the SQLite probe writes: a few times what one change appends to the
/// WAL, so a disk that passes can take a change.
const PROBE_FILE_BYTES: usize = 64 * 1024;

impl Datastore {
    /// Writes the probe (see the module docs); `Ok` means a change could be committed now.
    pub async fn probe_write(&self) -> Result<(), DatastoreError> {
        if let Pool::Sqlite(_) = self.pool {
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            let path = dir.clone();
            tokio::task::spawn_blocking(move || write_probe_file(&dir))
                .await
                .map_err(|e| DatastoreError::Io {
                    path,
                    source: std::io::Error::other(e),
                })??;
        }
        let mut tx = self.begin_write().await?;
        let sql = "INSERT INTO write_probe (id, written_at) VALUES (1, $1) \
                   ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at";
        on_tx!(&mut tx, c => sqlx::query(sql).bind(unix_now()).execute(&mut **c).await.map(drop))?;
        self.commit(tx, Vec::new()).await
    }
}

/// Writes, syncs and removes `.sigil-write-probe-<pid>` in `dir` (the pid keeps replicas that
/// share the database file out of each other's way). The file is removed even when the write
/// failed.
fn write_probe_file(dir: &Path) -> Result<(), DatastoreError> {
    let path = dir.join(format!(".sigil-write-probe-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0x5a; PROBE_FILE_BYTES])?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written
        .and(removed)
        .map_err(|source| DatastoreError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use crate::datastore::tests::{on_both_backends, scalar};

    use super::*;

    async fn probe_commits_a_row(ds: Datastore) {
        ds.probe_write().await.unwrap();
        ds.probe_write().await.unwrap();
        assert_eq!(scalar(&ds, "SELECT COUNT(*) FROM write_probe").await, 1);
        assert!(scalar(&ds, "SELECT written_at FROM write_probe").await > 0);
    }

    on_both_backends!(probe_commits_a_row);

    #[tokio::test]
    async fn probe_leaves_no_file_and_fails_where_nothing_can_be_written() {
        use std::os::unix::fs::PermissionsExt;

        let (dir, ds) = crate::datastore::tests::store().await;
        ds.probe_write().await.unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("probe")), "{names:?}");
        if nix::unistd::geteuid().is_root() {
            return; // root writes through a read-only mode; the e2e tests use a full tmpfs
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let err = ds.probe_write().await.unwrap_err();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(err, DatastoreError::Io { .. }), "{err}");
    }
}
