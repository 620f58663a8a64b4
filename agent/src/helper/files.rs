//! Writing into `cert_dir` so that no reader ever sees a half-written file, and so that the
//! X.509 certificate, key and bundle change together.
//!
//! Every file is written to a new file in the same directory, its final mode set (with
//! `fchmod`, so the umask does not weaken or strengthen it) before its first byte, synced, and
//! then renamed into place; the directory is synced after. The X.509 files go one level
//! further, in the layout Kubernetes uses for Secret and ConfigMap volumes:
//!
//! ```text
//! cert_dir/..x509_<random>/svid.pem        one directory per X.509 update, written whole
//! cert_dir/..x509_<random>/svid_key.pem
//! cert_dir/..x509_<random>/svid_bundle.pem
//! cert_dir/..data -> ..x509_<random>       swapped in one rename(2): the switch
//! cert_dir/svid.pem -> ..data/svid.pem     created once, never changed
//! ```
//!
//! What a reader gets:
//!
//! - Each file, opened by its usual path, is whole: the old version or the new one.
//! - A reader that resolves `cert_dir/..data` once (`readlink`, or opening it as a directory
//!   and the files relative to that descriptor) and reads the files of that one version gets
//!   a certificate, key and bundle of the same update, always. The version before the current
//!   one is kept until the next update, so such a reader has a whole renewal period to finish.
//! - A reader that opens `cert_dir/svid.pem` and then `cert_dir/svid_key.pem` gets a matching
//!   pair unless the `..data` rename falls between its two opens. The renewal command and
//!   signal come after that rename, so a reader woken by them reads a matching pair.
//!
//! JWT-SVID and JWT bundle files stand alone: each is replaced by one rename.

use std::ffi::OsStr;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// The symlink to the current X.509 version directory.
pub const DATA_LINK: &str = "..data";
/// The prefix of the X.509 version directories.
const VERSION_PREFIX: &str = "..x509_";
/// The symlink being prepared before it replaces [`DATA_LINK`].
const DATA_LINK_TMP: &str = "..data_tmp";

/// One file to write: its name in `cert_dir`, its bytes, its mode.
#[derive(Clone, Copy)]
pub struct OutFile<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

impl std::fmt::Debug for OutFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The contents may be a private key.
        f.debug_struct("OutFile")
            .field("name", &self.name)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

/// Why a write failed: the path and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("writing {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// The output directory.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    /// The directory `dir` (which must exist).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Replaces one file: a new file with its final mode, synced, renamed over the old one.
    pub fn write_file(&self, file: OutFile<'_>) -> Result<(), WriteError> {
        let path = self.dir.join(file.name);
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", file.name))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(at(&path))?;
        fill(tmp.as_file_mut(), file).map_err(at(&path))?;
        tmp.persist(&path).map_err(|e| WriteError {
            path: path.clone(),
            source: e.error,
        })?;
        sync_dir(&self.dir).map_err(at(&self.dir))
    }

    /// Publishes the X.509 files as one new version (see the module doc), then removes the
    /// versions older than the one it replaces.
    pub fn publish(&self, files: &[OutFile<'_>]) -> Result<(), WriteError> {
        let version = tempfile::Builder::new()
            .prefix(VERSION_PREFIX)
            .rand_bytes(12)
            .tempdir_in(&self.dir)
            .map_err(at(&self.dir))?;
        for file in files {
            let path = version.path().join(file.name);
            // Created owner-only, so nobody opens it before its final mode is set.
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(at(&path))?;
            fill(&mut out, *file).map_err(at(&path))?;
        }
        // Traversable as cert_dir allows (a temp dir starts at 0700): the files' own modes
        // guard them.
        fs::set_permissions(version.path(), Permissions::from_mode(0o755))
            .map_err(at(version.path()))?;
        sync_dir(version.path()).map_err(at(version.path()))?;
        // From here the version is complete: keep it (a failure below leaves it to the next
        // publish's clean-up).
        let version = version.keep();
        let name = version
            .file_name()
            .unwrap_or_else(|| unreachable!("a temp dir has a name"))
            .to_owned();

        let data = self.dir.join(DATA_LINK);
        let previous = fs::read_link(&data).ok();
        let tmp = self.dir.join(DATA_LINK_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(&tmp)(e)),
        }
        symlink(&name, &tmp).map_err(at(&tmp))?;
        fs::rename(&tmp, &data).map_err(at(&data))?;
        for file in files {
            self.link(file.name)?;
        }
        sync_dir(&self.dir).map_err(at(&self.dir))?;

        let keep = [
            Some(name.as_os_str()),
            previous.as_deref().map(Path::as_os_str),
        ];
        self.remove_versions_except(&keep);
        Ok(())
    }

    /// Makes `cert_dir/<name>` the symlink `..data/<name>`, replacing whatever was there (a
    /// regular file that spiffe-helper wrote, say) in one rename.
    fn link(&self, name: &str) -> Result<(), WriteError> {
        let path = self.dir.join(name);
        let target = Path::new(DATA_LINK).join(name);
        if fs::read_link(&path).is_ok_and(|t| t == target) {
            return Ok(());
        }
        let tmp = self.dir.join(format!(".{name}.link.tmp"));
        let _ = fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(at(&tmp))?;
        fs::rename(&tmp, &path).map_err(at(&path))
    }

    /// Removes what an interrupted write of one of `names` left behind: its temp files
    /// (`.<name>.<random>.tmp`, `.<name>.link.tmp`) and a half-made `..data_tmp`. Run at start;
    /// failures are logged.
    pub fn remove_leftovers(&self, names: &[&str]) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let leftover = name == DATA_LINK_TMP
                || name.ends_with(".tmp")
                    && names.iter().any(|n| name.starts_with(&format!(".{n}.")));
            if !leftover {
                continue;
            }
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a leftover temp file");
            }
        }
    }

    /// Removes the X.509 version directories not named in `keep`. Failures are logged: a
    /// leftover directory costs space, not correctness.
    fn remove_versions_except(&self, keep: &[Option<&OsStr>]) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_version = name.to_str().is_some_and(|n| n.starts_with(VERSION_PREFIX));
            if !is_version || keep.contains(&Some(name.as_os_str())) {
                continue;
            }
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove an old X.509 version");
            }
        }
    }
}

/// Sets `file`'s final mode, then writes and syncs it.
fn fill(out: &mut File, file: OutFile<'_>) -> io::Result<()> {
    out.set_permissions(Permissions::from_mode(file.mode))?;
    out.write_all(file.contents)?;
    out.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn x509<'a>(cert: &'a str, key: &'a str) -> [OutFile<'a>; 2] {
        [
            OutFile {
                name: "svid.pem",
                contents: cert.as_bytes(),
                mode: 0o644,
            },
            OutFile {
                name: "svid_key.pem",
                contents: key.as_bytes(),
                mode: 0o600,
            },
        ]
    }

    fn versions(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with(VERSION_PREFIX)
            })
            .count()
    }

    #[test]
    fn publish_swaps_versions_and_keeps_one_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path().to_path_buf());
        // What spiffe-helper left: regular files, replaced by the links.
        fs::write(tmp.path().join("svid.pem"), "old").unwrap();
        for i in 0..4 {
            let (cert, key) = (format!("cert{i}"), format!("key{i}"));
            let before = fs::read_link(tmp.path().join(DATA_LINK)).ok();
            dir.publish(&x509(&cert, &key)).unwrap();
            assert_eq!(
                fs::read_to_string(tmp.path().join("svid.pem")).unwrap(),
                cert
            );
            assert_eq!(
                fs::read_to_string(tmp.path().join("svid_key.pem")).unwrap(),
                key
            );
            let meta = fs::metadata(tmp.path().join("svid_key.pem")).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o600);
            let meta = fs::metadata(tmp.path().join("svid.pem")).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o644);
            assert_eq!(
                fs::read_link(tmp.path().join("svid.pem")).unwrap(),
                Path::new("..data/svid.pem")
            );
            // The version a reader resolved before is still whole.
            if let Some(before) = before {
                let old = fs::read_to_string(tmp.path().join(before).join("svid.pem")).unwrap();
                assert_eq!(old, format!("cert{}", i - 1));
            }
            assert_eq!(versions(tmp.path()), (i + 1).min(2));
        }
    }

    #[test]
    fn modes_are_exact_whatever_the_umask_and_the_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path().to_path_buf());
        let path = tmp.path().join("jwt.token");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        for mode in [0o600, 0o444, 0o640] {
            dir.write_file(OutFile {
                name: "jwt.token",
                contents: b"token",
                mode,
            })
            .unwrap();
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, mode);
            assert_eq!(fs::read_to_string(&path).unwrap(), "token");
        }
        // No temp file is left behind.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path().to_path_buf());
        for name in [
            ".svid_key.pem.Ab12Cd.tmp",
            ".svid.pem.link.tmp",
            "..data_tmp",
            ".other.Ab12Cd.tmp",
            "svid.pem",
        ] {
            fs::write(tmp.path().join(name), "x").unwrap();
        }
        dir.remove_leftovers(&["svid.pem", "svid_key.pem"]);
        let mut left: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".other.Ab12Cd.tmp", "svid.pem"]);
    }

    #[test]
    fn a_failed_publish_leaves_the_current_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path().to_path_buf());
        dir.publish(&x509("c1", "k1")).unwrap();
        // Two files of one name: the second create fails half-way through the version.
        let mut twice = x509("c2", "k2").to_vec();
        twice.push(twice[0]);
        assert!(dir.publish(&twice).is_err());
        assert_eq!(
            fs::read_to_string(tmp.path().join("svid.pem")).unwrap(),
            "c1"
        );
        assert_eq!(versions(tmp.path()), 1);
    }
}
