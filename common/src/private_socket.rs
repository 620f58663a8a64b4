//! A Unix socket for its owner alone: the server's admin socket and the agent's admin socket
//! (the Delegated Identity API) are bound here, the same way.

use std::path::Path;

use tokio::net::UnixListener;

use crate::fs_checks::{self, FsCheckError};

/// Binds a socket at `path` where no other user can take it over or read what clients send:
/// - its directory is created 0700 if missing; one that is a symbolic link, is owned by
///   another user, is writable by group or others, or has a parent another user owns is
///   refused ([`fs_checks::check_socket_dir`]; a parent anyone may write, as a Kubernetes
///   `emptyDir`, is a warning); a safe one is tightened to 0700 through a handle opened
///   without following links;
/// - an existing socket file is removed only when nothing answers on it
///   ([`fs_checks::remove_stale_socket`]): a running process's socket is never taken over;
/// - the socket itself is 0600.
///
/// `what` names the directory in errors and warnings (`"admin socket directory"`).
pub fn bind(path: &Path, what: &str) -> Result<UnixListener, FsCheckError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FsCheckError::Io { path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    for problem in fs_checks::check_socket_dir(dir, what)? {
        tracing::warn!(%problem, "a parent of the {what} is open to others (callers' credentials are still checked on every call)");
    }
    let flags = nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(dir)
        .and_then(|d| d.set_permissions(std::fs::Permissions::from_mode(0o700)))
        .map_err(io_err(dir))?;
    fs_checks::remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    Ok(listener)
}
