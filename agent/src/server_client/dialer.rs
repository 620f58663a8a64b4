//! Dialling the servers: every address of every configured server, tried in turn from the one
//! last connected to (or the one after it, after a failover) until one completes TCP and TLS;
//! and since when no dial has reached any of them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sigil_common::time::unix_now;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::{ServerAddress, lock};

/// Bound on resolving one server name, and on one address's TCP connect plus TLS handshake,
/// so that a silent server costs a few seconds before the next one is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// One address to dial: the configured server it came from and one address it resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    server: String,
    addr: SocketAddr,
}

#[derive(Debug, Default)]
struct DialState {
    /// The address of the last successful dial.
    current: Option<Candidate>,
    /// Set by [`Dialer::move_on`]: start after `current` next time.
    moving: bool,
    /// When a dial first failed to reach any server (Unix seconds); cleared by a good dial.
    unreachable_since: Option<i64>,
}

/// Dials the configured servers in turn; shared by every channel the connection makes.
pub(super) struct Dialer {
    servers: Vec<ServerAddress>,
    tls: Arc<ClientConfig>,
    state: Mutex<DialState>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        f.debug_struct("Dialer")
            .field("servers", &servers)
            .field("state", &*self.lock_state())
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Dials `servers` (at least one) with `tls`.
    pub(super) fn new(servers: Vec<ServerAddress>, tls: Arc<ClientConfig>) -> Self {
        Self {
            servers,
            tls,
            state: Mutex::new(DialState::default()),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, DialState> {
        lock(&self.state)
    }

    /// Since when (Unix seconds) no dial has reached a server; `None` once one has since.
    pub(super) fn unreachable_since(&self) -> Option<i64> {
        self.lock_state().unreachable_since
    }

    /// The next dial starts with the server after the current one (which is still tried, last).
    pub(super) fn move_on(&self) {
        self.lock_state().moving = true;
    }

    /// The server of the last successful dial, as configured (`host:port`), if any.
    pub(super) fn current_server(&self) -> Option<String> {
        self.lock_state().current.as_ref().map(|c| c.server.clone())
    }

    /// Every address of every server, in configuration and resolution order. A name that
    /// does not resolve is skipped (and logged): the others may still answer.
    async fn candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for server in &self.servers {
            let label = server.to_string();
            match tokio::time::timeout(
                DIAL_TIMEOUT,
                tokio::net::lookup_host((server.host.as_str(), server.port)),
            )
            .await
            {
                Ok(Ok(addrs)) => out.extend(addrs.map(|addr| Candidate {
                    server: label.clone(),
                    addr,
                })),
                Ok(Err(e)) => warn!(server = %label, error = %e, "cannot resolve server address"),
                Err(_) => warn!(server = %label, "resolving the server address timed out"),
            }
        }
        out
    }

    /// Connects to the first candidate (in [`dial_order`]) that completes the TCP connect and
    /// the TLS handshake.
    pub(super) async fn dial(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let candidates = self.candidates().await;
        let order = {
            let state = self.lock_state();
            dial_order(&candidates, state.current.as_ref(), state.moving)
        };
        let mut failures = Vec::with_capacity(order.len());
        for candidate in order {
            match tokio::time::timeout(DIAL_TIMEOUT, self.connect(&candidate)).await {
                Ok(Ok(stream)) => {
                    let mut state = self.lock_state();
                    if state.current.as_ref() != Some(&candidate) {
                        match &state.current {
                            Some(previous) => {
                                info!(server = %candidate.server, address = %candidate.addr, previous = %previous.addr, "moved to another server")
                            }
                            None => {
                                info!(server = %candidate.server, address = %candidate.addr, "connected to the server")
                            }
                        }
                    }
                    state.current = Some(candidate);
                    state.moving = false;
                    if let Some(since) = state.unreachable_since.take() {
                        info!(unreachable_since = %crate::cache::expiry::rfc3339(since), "server reachable again");
                    }
                    return Ok(stream);
                }
                Ok(Err(e)) => {
                    debug!(server = %candidate.server, address = %candidate.addr, error = %e, "dial failed; trying the next server");
                    failures.push(format!("{}: {e}", candidate.addr));
                }
                Err(_) => {
                    debug!(server = %candidate.server, address = %candidate.addr, "dial timed out; trying the next server");
                    failures.push(format!("{}: timed out", candidate.addr));
                }
            }
        }
        let servers: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        self.lock_state()
            .unreachable_since
            .get_or_insert_with(unix_now);
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            if failures.is_empty() {
                format!("no address found for {}", servers.join(", "))
            } else {
                format!("no server reachable ({})", failures.join("; "))
            },
        ))
    }

    async fn connect(
        &self,
        candidate: &Candidate,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(candidate.addr).await?;
        tcp.set_nodelay(true)?;
        // SNI only; the verifier ignores names. An IP address or odd name sends no SNI.
        let host = candidate
            .server
            .rsplit_once(':')
            .map_or(candidate.server.as_str(), |(h, _)| h);
        let server_name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::from(candidate.addr.ip()));
        TlsConnector::from(self.tls.clone())
            .connect(server_name, tcp)
            .await
    }
}

/// The order to try `candidates` in: from `current` on (or from the one after it when
/// `moving`), wrapping around, so every candidate is tried once and a working server is kept.
/// Without a known `current`, configuration order.
fn dial_order<T: Clone + PartialEq>(candidates: &[T], current: Option<&T>, moving: bool) -> Vec<T> {
    let start = current
        .and_then(|c| candidates.iter().position(|x| x == c))
        .map_or(0, |i| if moving { i + 1 } else { i });
    (0..candidates.len())
        .map(|i| candidates[(start + i) % candidates.len()].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_order_keeps_the_current_server_and_moves_on_after_a_failure() {
        let all = ["a", "b", "c"];
        assert_eq!(dial_order(&all, None, false), ["a", "b", "c"]);
        assert_eq!(dial_order(&all, None, true), ["a", "b", "c"]);
        assert_eq!(dial_order(&all, Some(&"b"), false), ["b", "c", "a"]);
        assert_eq!(dial_order(&all, Some(&"b"), true), ["c", "a", "b"]);
        assert_eq!(dial_order(&all, Some(&"c"), true), ["a", "b", "c"]);
        // A server no longer in the list (DNS changed): configuration order.
        assert_eq!(dial_order(&all, Some(&"z"), true), ["a", "b", "c"]);
        assert_eq!(dial_order(&["a"], Some(&"a"), true), ["a"]);
        assert!(dial_order::<&str>(&[], Some(&"a"), false).is_empty());
    }
}
