//! The agent's connection to sigil-server's agent API: TCP, then TLS with rustls (ring, ALPN
//! `h2`), then tonic. The server is identified by SPIFFE ID, as SPIRE does: its chain must
//! verify against our trust domain's X.509 authorities and its leaf must carry exactly
//! `spiffe://<td>/spire/server`; the host name plays no part.
//!
//! Trust anchors and the client identity are read at each handshake from where the agent holds
//! them, once: the cache's trust bundle (which sync updates) and the [`AgentIdentity`](crate::identity::AgentIdentity) (which
//! attestation and renewal update). A new agent SVID is presented on a fresh channel.
//!
//! Failover: the agent may list several servers (`server_addresses`), and a `server_address`
//! name may resolve to several addresses. Every dial tries them in turn, starting with the one
//! last connected to, until one completes the TLS handshake; after a broken connection or sync
//! stream ([`ServerConnection::fail_over`]) the next dial starts with the following one. The
//! cache keeps serving SVIDs meanwhile: workloads never wait on the server.
//!
//! The connection also knows what the rest of the agent needs to explain an outage: since when
//! no dial has reached a server ([`ServerConnection::unreachable_since`]), and whether the
//! agent's own SVID has expired. An expired agent SVID is never presented: the server's TLS
//! would refuse the handshake, which would also block the re-attestation that replaces it
//! (`AttestAgent` needs no client certificate).
//!
//! - `connection`: [`ServerConnection`], the channel the rest of the agent calls through.
//! - `dialer`: the servers dialled in turn, and since when none has answered.
//! - `credentials`: the TLS side: trust anchors from the bundle, the agent SVID as client
//!   certificate, the server verifier, the rustls client config.
//! - `jwt_minter`: [`ServerJwtMinter`], JWT-SVIDs minted by the server for the Workload API.
//! - [`config`]: which servers to dial and how they are first trusted.

pub mod config;
mod connection;
mod credentials;
mod dialer;
mod jwt_minter;

use std::sync::{Mutex, MutexGuard};

pub use config::{ServerAddress, TrustBundleSource};
pub use connection::{ServerConnection, bounded, is_connection_failure};
pub(crate) use credentials::check_trust_anchors;
pub use jwt_minter::ServerJwtMinter;

/// Why the connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerClientError {
    #[error("the bundle has no usable X.509 authority")]
    NoTrustAnchors,
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("server address {0:?} is not valid")]
    InvalidAddress(String),
    #[error("no server address configured")]
    NoServers,
}

/// Locks `mutex`; every write is a whole-value assignment, so a poisoned lock still holds a valid
/// value.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
