//! Checks of the files, directories and Unix sockets both binaries are configured with:
//! OpenSSH's StrictModes for key and state files (owned by us or root, not open to others),
//! trusted directories for a privileged socket, and connect-before-replace for a socket file.
//!
//! Here because both binaries need them and neither may depend on the other. They read file
//! metadata and connect to local sockets.

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Who besides its owner may use a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A private key or secret state: no access for group or others (0600 or tighter).
    OwnerOnly,
    /// Public state that decides trust (a certificate, a trust bundle): others may read it,
    /// not write it.
    NoOtherWriters,
}

/// A file, directory or socket that is unsafe to use, or could not be checked. Each message
/// names the path, what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsCheckError {
    /// Group or others may use a file they must not.
    #[error("{what} {path} has mode {mode:04o}: {who} may {how} it; run `chmod {fix} {path}`")]
    Mode {
        /// What the file is, e.g. "keys file".
        what: String,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Who may use it: "its group", "all other users".
        who: &'static str,
        /// What they may do: "read", "write", "read and write".
        how: &'static str,
        /// The `chmod` mode that fixes it.
        fix: &'static str,
    },
    /// The file belongs to another user.
    #[error(
        "{what} {path} is owned by uid {owner}, not by uid {euid} (this process){or_root}; run `chown {euid} {path}` or use another path"
    )]
    Owner {
        /// What the file is.
        what: String,
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
        /// Whether root would also do.
        or_root: OrRoot,
    },
    /// A socket directory is a symbolic link.
    #[error(
        "{what} {path} is a symbolic link; refusing to use it (whoever controls the link decides where the socket goes): name the real directory"
    )]
    Symlink {
        /// What the directory is.
        what: String,
        /// The link.
        path: PathBuf,
    },
    /// A path that must be a directory is something else.
    #[error("{what} {path} is not a directory")]
    NotADirectory {
        /// What the directory is.
        what: String,
        /// The path.
        path: PathBuf,
    },
    /// A parent of a socket directory lets another user replace what it holds.
    #[error(
        "{path}, a parent directory of {what} {of}, {problem}: another user could replace what it holds; use a directory whose parents only root and uid {euid} can change"
    )]
    Ancestor {
        /// What the checked directory is.
        what: String,
        /// The checked directory.
        of: PathBuf,
        /// The parent at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// This process's effective uid.
        euid: u32,
    },
    /// A live process answers on the socket.
    #[error(
        "another process is serving on {0}; refusing to replace its socket (is another server running with this socket path?)"
    )]
    SocketInUse(PathBuf),
    /// The socket path holds something else than a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The path could not be examined.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Whether root is an accepted owner, for [`FsCheckError::Owner`]'s message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrRoot(pub bool);

impl fmt::Display for OrRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { " or root" } else { "" })
    }
}

/// This process's effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks the file at `path` (links followed) as OpenSSH's StrictModes checks a key file: owned
/// by this process's user or root, and open to no one else as far as `access` says. A missing
/// file passes (it will be created with the right mode). `what` names it in the message
/// ("keys file").
pub fn check_file(path: &Path, what: &str, access: Access) -> Result<(), FsCheckError> {
    let Some(meta) = metadata(path, |p| fs::metadata(p))? else {
        return Ok(());
    };
    check_owner(path, what, &meta, true)?;
    let (forbidden, fix) = match access {
        Access::OwnerOnly => (0o077, "600"),
        Access::NoOtherWriters => (0o022, "go-w"),
    };
    check_mode(path, what, &meta, forbidden, fix)
}

/// Checks the directory at `path` (links followed): owned by this process's user or root, and
/// writable by no one else (who could otherwise replace the files in it). A missing directory
/// passes (it will be created 0700).
pub fn check_dir(path: &Path, what: &str) -> Result<(), FsCheckError> {
    let Some(meta) = metadata(path, |p| fs::metadata(p))? else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Err(FsCheckError::NotADirectory {
            what: what.to_owned(),
            path: path.to_owned(),
        });
    }
    check_owner(path, what, &meta, true)?;
    check_mode(path, what, &meta, 0o022, "go-w")
}

/// Checks the directory that holds a privileged Unix socket, before anything is put in it: not
/// a symbolic link, owned by this process's user, writable by no one else, and every parent (of
/// the path as written and as resolved) owned by root or this user. Otherwise another user
/// could put their own socket in its place and receive what clients send to it.
///
/// A parent that others may write and that is not sticky (as `/tmp` is, where others cannot
/// rename what they do not own) is returned as a warning rather than refused: a Kubernetes
/// `emptyDir` is such a directory and cannot be changed from inside the pod, and clients that
/// check who serves the socket (the `sigil-server` CLI does) still send nothing to a socket
/// put in its place.
pub fn check_socket_dir(dir: &Path, what: &str) -> Result<Vec<FsCheckError>, FsCheckError> {
    let Some(meta) = metadata(dir, |p| fs::symlink_metadata(p))? else {
        return Err(FsCheckError::Io {
            path: dir.to_owned(),
            source: io::ErrorKind::NotFound.into(),
        });
    };
    if meta.file_type().is_symlink() {
        return Err(FsCheckError::Symlink {
            what: what.to_owned(),
            path: dir.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(FsCheckError::NotADirectory {
            what: what.to_owned(),
            path: dir.to_owned(),
        });
    }
    check_owner(dir, what, &meta, false)?;
    check_mode(dir, what, &meta, 0o022, "go-w")?;
    let io_err = |source| FsCheckError::Io {
        path: dir.to_owned(),
        source,
    };
    let written = std::path::absolute(dir).map_err(io_err)?;
    let resolved = fs::canonicalize(dir).map_err(io_err)?;
    let mut parents: Vec<&Path> = written.ancestors().skip(1).collect();
    parents.extend(resolved.ancestors().skip(1));
    parents.sort();
    parents.dedup();
    let mut warnings = Vec::new();
    for parent in parents {
        warnings.extend(check_parent(parent, dir, what)?);
    }
    Ok(warnings)
}

/// Removes the socket file at `path` so a new socket can be bound there, only if nothing serves
/// it: connecting first, as a live server answers and a stale socket refuses. A missing file
/// passes; anything else (a live server, a regular file, an error other than "refused") is
/// left untouched and refused.
pub fn remove_stale_socket(path: &Path) -> Result<(), FsCheckError> {
    let io_err = |source| FsCheckError::Io {
        path: path.to_owned(),
        source,
    };
    let Some(meta) = metadata(path, |p| fs::symlink_metadata(p))? else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(FsCheckError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(FsCheckError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(e)),
            _ => Ok(()),
        },
        // EAGAIN (a live server's full backlog), EACCES...: not provably stale.
        Err(e) => Err(io_err(e)),
    }
}

fn metadata(
    path: &Path,
    stat: impl FnOnce(&Path) -> io::Result<Metadata>,
) -> Result<Option<Metadata>, FsCheckError> {
    match stat(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FsCheckError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn check_owner(
    path: &Path,
    what: &str,
    meta: &Metadata,
    root_too: bool,
) -> Result<(), FsCheckError> {
    let euid = euid();
    let owner = meta.uid();
    if owner == euid || (root_too && owner == 0) {
        return Ok(());
    }
    Err(FsCheckError::Owner {
        what: what.to_owned(),
        path: path.to_owned(),
        owner,
        euid,
        or_root: OrRoot(root_too && euid != 0),
    })
}

fn check_mode(
    path: &Path,
    what: &str,
    meta: &Metadata,
    forbidden: u32,
    fix: &'static str,
) -> Result<(), FsCheckError> {
    let mode = meta.mode() & 0o7777;
    let open = mode & forbidden;
    if open == 0 {
        return Ok(());
    }
    let who = match (open & 0o070 != 0, open & 0o007 != 0) {
        (true, true) => "its group and all other users",
        (true, false) => "its group",
        _ => "all other users",
    };
    let how = match (open & 0o044 != 0, open & 0o022 != 0) {
        (true, true) => "read and write",
        (true, false) => "read",
        (false, true) => "write",
        (false, false) => "execute",
    };
    Err(FsCheckError::Mode {
        what: what.to_owned(),
        path: path.to_owned(),
        mode,
        who,
        how,
        fix,
    })
}

/// One parent of a socket directory: refused when owned by another user than root or us;
/// returned as a warning when others may write it and it is not sticky.
fn check_parent(
    parent: &Path,
    of: &Path,
    what: &str,
) -> Result<Option<FsCheckError>, FsCheckError> {
    let Some(meta) = metadata(parent, |p| fs::symlink_metadata(p))? else {
        return Ok(None);
    };
    let euid = euid();
    let problem = |problem: String| FsCheckError::Ancestor {
        what: what.to_owned(),
        of: of.to_owned(),
        path: parent.to_owned(),
        problem,
        euid,
    };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(problem(format!("is owned by uid {}", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    if meta.is_dir() && mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Ok(Some(problem(format!(
            "has mode {mode:04o} (writable by others, not sticky)"
        ))));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn files_by_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        assert!(
            check_file(&key, "key", Access::OwnerOnly).is_ok(),
            "missing"
        );
        fs::write(&key, "k").unwrap();
        for (mode, owner_only, no_writers) in [
            (0o600, true, true),
            (0o400, true, true),
            (0o640, false, true),
            (0o644, false, true),
            (0o660, false, false),
            (0o606, false, false),
        ] {
            chmod(&key, mode);
            assert_eq!(
                check_file(&key, "key", Access::OwnerOnly).is_ok(),
                owner_only,
                "{mode:o}"
            );
            assert_eq!(
                check_file(&key, "key", Access::NoOtherWriters).is_ok(),
                no_writers,
                "{mode:o}"
            );
        }
        chmod(&key, 0o644);
        let err = check_file(&key, "keys file", Access::OwnerOnly)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&key.display().to_string()), "{err}");
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        assert!(
            err.contains("its group and all other users may read"),
            "{err}"
        );
    }

    #[test]
    fn dirs_by_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        assert!(check_dir(&d, "data_dir").is_ok(), "missing");
        fs::create_dir(&d).unwrap();
        for (mode, ok) in [
            (0o700, true),
            (0o755, true),
            (0o775, false),
            (0o1777, false),
        ] {
            chmod(&d, mode);
            assert_eq!(check_dir(&d, "data_dir").is_ok(), ok, "{mode:o}");
        }
        let file = dir.path().join("f");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            check_dir(&file, "data_dir"),
            Err(FsCheckError::NotADirectory { .. })
        ));
    }

    #[test]
    fn socket_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("private");
        fs::create_dir(&d).unwrap();
        chmod(&d, 0o700);
        check_socket_dir(&d, "socket directory").unwrap();
        chmod(&d, 0o770);
        assert!(matches!(
            check_socket_dir(&d, "socket directory"),
            Err(FsCheckError::Mode { .. })
        ));
        chmod(&d, 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(matches!(
            check_socket_dir(&link, "socket directory"),
            Err(FsCheckError::Symlink { .. })
        ));
        assert!(check_socket_dir(&d, "socket directory").unwrap().is_empty());
        // A parent others may write (and not sticky): a warning.
        chmod(dir.path(), 0o777);
        let warnings = check_socket_dir(&d, "socket directory").unwrap();
        chmod(dir.path(), 0o700);
        assert!(
            matches!(warnings.as_slice(), [FsCheckError::Ancestor { .. }]),
            "{warnings:?}"
        );
        // Sticky is fine (as /tmp).
        chmod(dir.path(), 0o1777);
        assert!(check_socket_dir(&d, "socket directory").unwrap().is_empty());
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn stale_and_live_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        remove_stale_socket(&path).unwrap();
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            remove_stale_socket(&path),
            Err(FsCheckError::SocketInUse(_))
        ));
        assert!(path.exists(), "a live socket is left alone");
        drop(live);
        remove_stale_socket(&path).unwrap();
        assert!(!path.exists(), "a stale socket is removed");
        fs::write(&path, "not a socket").unwrap();
        assert!(matches!(
            remove_stale_socket(&path),
            Err(FsCheckError::NotASocket(_))
        ));
        assert!(path.exists());
    }
}
