//! The admin socket and who may call through it: only the server's own user (or root). The
//! socket's directory is 0700 and the socket 0600 ([`bind_socket`]), and each call's peer
//! credentials are checked again before any handler runs ([`OwnerOnly`], in the API's
//! [`RpcLayer`](crate::api::middleware::RpcLayer)).

use std::path::Path;

use sigil_common::fs_checks::{self, FsCheckError};
use tokio::net::UnixListener;
use tonic::Status;
use tonic::codegen::http::Extensions;
use tonic::transport::server::UdsConnectInfo;

use crate::api::middleware::Authorize;

/// Lets through the callers whose peer credentials say they run as `uid` or as root.
#[derive(Clone, Copy, Debug)]
pub(super) struct OwnerOnly {
    /// The server's effective UID.
    uid: u32,
}

impl OwnerOnly {
    /// The server's own user.
    pub(super) fn server_user() -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
        }
    }
}

impl Authorize for OwnerOnly {
    const METHODS: &'static [&'static str] = super::METHODS;

    async fn authorize(
        &self,
        method: &'static str,
        extensions: &mut Extensions,
    ) -> Result<(), Status> {
        let uid = extensions
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid());
        if !matches!(uid, Some(u) if u == self.uid || u == 0) {
            tracing::warn!(method, peer_uid = ?uid, "admin API call refused: caller is not the server's user");
            return Err(Status::permission_denied(
                "the admin API is only for the server's own user",
            ));
        }
        Ok(())
    }
}

/// Binds the admin socket where no other user can take it over or read what clients send:
/// - its directory is created 0700 if missing; one that is a symbolic link, is owned by
///   another user, is writable by group or others, or has a parent another user owns is
///   refused ([`fs_checks::check_socket_dir`]; a parent anyone may write, as a Kubernetes
///   `emptyDir`, is a warning); a safe one is tightened to 0700 through a handle opened
///   without following links;
/// - an existing socket file is removed only when nothing answers on it
///   ([`fs_checks::remove_stale_socket`]): a running server's socket is never taken over;
/// - the socket itself is 0600.
///
/// The caller binds its TCP listeners first, so a port clash fails start-up before the socket
/// path is touched at all.
pub fn bind_socket(path: &Path) -> Result<UnixListener, FsCheckError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    const WHAT: &str = "admin socket directory";
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
    for problem in fs_checks::check_socket_dir(dir, WHAT)? {
        tracing::warn!(%problem, "a parent of the admin socket directory is open to others (the CLI still refuses a socket served by anyone but root or this user)");
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
