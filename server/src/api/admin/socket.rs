//! The admin socket and who may call through it: only the server's own user (or root). The
//! socket's directory is 0700 and the socket 0600 ([`bind_socket`]), and each call's peer
//! credentials are checked again before any handler runs ([`OwnerOnly`], in the API's
//! [`RpcLayer`](crate::api::middleware::RpcLayer)).

use std::path::Path;

use sigil_common::fs_checks::FsCheckError;
use sigil_common::private_socket;
use tokio::net::UnixListener;
use tonic::Status;
use tonic::codegen::http::Extensions;
use tonic::transport::server::UdsConnectInfo;

use crate::api::audit::Caller;
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
    const READ_ONLY: &'static [&'static str] = super::READ_ONLY;

    fn caller(extensions: &Extensions) -> Caller {
        extensions
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| Caller::local(c.uid(), c.gid(), c.pid()))
            .unwrap_or_default()
    }

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

/// Binds the admin socket where no other user can take it over or read what clients send
/// ([`private_socket::bind`]: a 0700 directory no other user controls, a socket replaced only
/// when nothing answers on it, made 0600). The caller binds its TCP listeners first, so a port
/// clash fails start-up before the socket path is touched at all.
pub fn bind_socket(path: &Path) -> Result<UnixListener, FsCheckError> {
    private_socket::bind(path, "admin socket directory")
}
