//! [`ServerConnection`]: the channel the rest of the agent calls the server's agent API
//! through, remade when the agent SVID changes or after a failover, and what it knows about an
//! outage.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use sigil_proto::sigil::agent::v1::agent_client::AgentClient;
use sigil_proto::{Bundle, TrustDomain};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::credentials::{Credentials, client_config};
use super::dialer::Dialer;
use super::{ServerAddress, ServerClientError, lock};
use crate::cache::{Cache, Outage, TrustBundle};
use crate::identity::AgentIdentity;
use crate::svid_store::AgentSvid;

/// How long one unary call to the server may take. A server that took the request and never
/// answers, or a connection to a server that is gone without a word (a deleted pod's address)
/// until HTTP/2 keep-alive notices, must not hold the loop that called it.
pub(super) const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// A unary call to the server, bounded by [`CALL_DEADLINE`]: past it, `DeadlineExceeded` (a
/// connection failure: the caller moves on as after any other).
pub async fn bounded<T>(
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "the server did not answer within {CALL_DEADLINE:?}"
            )))
        })
}

/// Largest agent API message, the server's own limit (see `sigil_proto::limits`).
const MAX_MESSAGE_BYTES: usize = sigil_proto::limits::AGENT_API_MAX_MESSAGE;

/// The agent's channel to the server. Cheap to share (`Arc`); [`ServerConnection::client`]
/// hands out a tonic client on the current channel.
pub struct ServerConnection {
    dialer: Arc<Dialer>,
    credentials: Arc<Credentials>,
    channel: ArcSwap<Channel>,
    /// Marked changed by each new agent SVID: the next [`ServerConnection::client`] reconnects.
    identity_changes: Mutex<watch::Receiver<Option<Arc<AgentSvid>>>>,
}

impl fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConnection")
            .field("dialer", &self.dialer)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl ServerConnection {
    /// A lazily connecting channel to `address:port`, for tools and tests: it trusts `bundle`
    /// (`None` only for `insecure_bootstrap`) and holds its own [`AgentIdentity`], starting
    /// with `identity` (see [`ServerConnection::identity`]).
    pub fn new(
        address: &str,
        port: u16,
        trust_domain: &TrustDomain,
        bundle: Option<&Bundle>,
        identity: Option<&AgentSvid>,
    ) -> Result<Self, ServerClientError> {
        if address.is_empty() {
            return Err(ServerClientError::InvalidAddress(address.into()));
        }
        let server = ServerAddress {
            host: address.to_owned(),
            port,
        };
        let held = bundle
            .cloned()
            .unwrap_or_else(|| Bundle::new(trust_domain.clone()));
        Self::with_servers(
            vec![server],
            trust_domain,
            Cache::new(held).trust_bundle(),
            bundle.is_none(),
            Arc::new(AgentIdentity::new(identity.cloned())),
        )
    }

    /// A lazily connecting channel to several servers, tried in turn (see [`crate::server_client`]):
    /// nothing is dialled until the first call, so a server that is down at start-up is just an
    /// `Unavailable` RPC. Servers are verified with `trust`, which must hold a usable bundle
    /// unless `insecure_bootstrap`; the client certificate is the SVID `identity` holds.
    pub fn with_servers(
        servers: Vec<ServerAddress>,
        trust_domain: &TrustDomain,
        trust: TrustBundle,
        insecure_bootstrap: bool,
        identity: Arc<AgentIdentity>,
    ) -> Result<Self, ServerClientError> {
        if servers.is_empty() {
            return Err(ServerClientError::NoServers);
        }
        if let Some(bad) = servers.iter().find(|s| s.host.is_empty()) {
            return Err(ServerClientError::InvalidAddress(bad.to_string()));
        }
        let identity_changes = Mutex::new(identity.subscribe());
        let credentials = Arc::new(Credentials::new(trust, insecure_bootstrap, identity)?);
        let tls = Arc::new(client_config(trust_domain, &credentials)?);
        let dialer = Arc::new(Dialer::new(servers, tls));
        let channel = lazy_channel(dialer.clone());
        Ok(Self {
            dialer,
            credentials,
            channel: ArcSwap::from_pointee(channel),
            identity_changes,
        })
    }

    /// A client on the current channel; on a fresh one after the agent SVID changed, so no
    /// connection keeps authenticating with the previous SVID.
    pub fn client(&self) -> AgentClient<Channel> {
        {
            let mut changes = lock(&self.identity_changes);
            if changes.has_changed().unwrap_or(false) {
                changes.mark_unchanged();
                self.reconnect();
            }
        }
        AgentClient::new((**self.channel.load()).clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The agent identity this connection presents.
    pub fn identity(&self) -> &Arc<AgentIdentity> {
        self.credentials.identity()
    }

    /// Since when (Unix seconds) no dial has reached a server; `None` once one has since.
    pub fn unreachable_since(&self) -> Option<i64> {
        self.dialer.unreachable_since()
    }

    /// Why nothing can be renewed at `now`, if so: the agent SVID expired, or no server has
    /// been reachable since some time.
    pub fn outage(&self, now: i64) -> Option<Outage> {
        if let Some(at) = self.identity().expired_at(now) {
            return Some(Outage::AgentSvidExpired { at });
        }
        self.unreachable_since()
            .map(|since| Outage::ServerUnreachable { since })
    }

    /// Drops the current channel for a new one (after the identity or trust changed).
    pub fn reconnect(&self) {
        self.channel
            .store(Arc::new(lazy_channel(self.dialer.clone())));
    }

    /// After a broken connection or sync stream: the next dial starts with the server after
    /// the current one (which is still tried, last), on a fresh channel.
    pub fn fail_over(&self) {
        self.dialer.move_on();
        self.reconnect();
    }

    /// The server of the last successful dial, as configured (`host:port`), if any.
    pub fn current_server(&self) -> Option<String> {
        self.dialer.current_server()
    }
}

/// Whether a failed call means the connection to the server is gone (dial failed, server
/// killed or going away), as opposed to the server answering with a refusal: only the former
/// is a reason to move to another server.
pub fn is_connection_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
            | tonic::Code::Aborted
    )
}

fn lazy_channel(dialer: Arc<Dialer>) -> Channel {
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let dialer = dialer.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(dialer.dial().await?)) }
    });
    // The URI only names the HTTP/2 authority; the dialer does the dialling, each attempt
    // bounded by the dialer's timeout.
    Endpoint::from_static("http://sigil-server")
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};
    use rustls::client::ResolvesClientCert;
    use sigil_common::time::unix_now;
    use sigil_proto::SpiffeId;

    use super::*;
    use crate::server_client::credentials::AgentIdentityResolver;

    #[tokio::test(start_paused = true)]
    async fn a_call_the_server_never_answers_ends_at_the_deadline() {
        let started = tokio::time::Instant::now();
        let outcome = bounded(std::future::pending::<Result<(), tonic::Status>>()).await;
        let status = outcome.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(is_connection_failure(status.code()));
        assert_eq!(started.elapsed(), CALL_DEADLINE);
        assert_eq!(
            bounded(async { Ok::<_, tonic::Status>(7) }).await.unwrap(),
            7
        );
    }

    #[test]
    fn only_transport_failures_move_to_another_server() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Unknown,
            tonic::Code::Cancelled,
        ] {
            assert!(is_connection_failure(code), "{code:?}");
        }
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
            tonic::Code::ResourceExhausted,
            tonic::Code::NotFound,
        ] {
            assert!(!is_connection_failure(code), "{code:?}");
        }
    }

    /// A listener that accepts and drops connections (no TLS): a server that is up but broken.
    async fn broken_server() -> (tokio::task::JoinHandle<()>, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        (task, port)
    }

    #[tokio::test]
    async fn dialing_tries_every_server_and_names_them_in_the_error() {
        let (task, broken) = broken_server().await;
        // A port nobody listens on: connection refused.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let servers = vec![
            ServerAddress {
                host: "127.0.0.1".into(),
                port: refused,
            },
            ServerAddress {
                host: "127.0.0.1".into(),
                port: broken,
            },
        ];
        let td = TrustDomain::new("td").unwrap();
        let connection = |servers| {
            let trust = Cache::new(Bundle::new(td.clone())).trust_bundle();
            let identity = Arc::new(AgentIdentity::new(None));
            ServerConnection::with_servers(servers, &td, trust, true, identity)
        };
        let conn = connection(servers).unwrap();
        let err = conn.dialer.dial().await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{refused}")), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{broken}")), "{msg}");
        assert_eq!(conn.current_server(), None);
        // The failed dial dates the outage that workloads and readiness are told about.
        let since = conn
            .unreachable_since()
            .expect("unreachable since the dial");
        assert!((unix_now() - since).abs() <= 5, "{since}");
        assert_eq!(
            conn.outage(unix_now()),
            Some(Outage::ServerUnreachable { since })
        );
        task.abort();
        assert!(matches!(
            connection(vec![]),
            Err(ServerClientError::NoServers)
        ));
    }

    #[tokio::test]
    async fn an_expired_agent_svid_is_never_presented() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://td/spire/agent/x".try_into().unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        let svid = |not_after: i64| AgentSvid {
            spiffe_id: SpiffeId::new("spiffe://td/spire/agent/x").unwrap(),
            chain: vec![cert.der().to_vec()],
            key_pkcs8: zeroize::Zeroizing::new(key.serialize_der()),
            not_before: 0,
            not_after,
        };
        let td = TrustDomain::new("td").unwrap();
        let valid = svid(unix_now() + 60);
        let conn = ServerConnection::new("127.0.0.1", 1, &td, None, Some(&valid)).unwrap();
        let resolver = AgentIdentityResolver(conn.credentials.clone());
        assert!(resolver.has_certs());
        assert!(resolver.resolve(&[], &[]).is_some());
        assert_eq!(conn.identity().expired_at(unix_now()), None);

        let expired_at = unix_now();
        conn.identity().set(svid(expired_at));
        assert!(!resolver.has_certs());
        assert!(resolver.resolve(&[], &[]).is_none());
        // An expired agent SVID explains an outage before reachability does.
        assert_eq!(
            conn.outage(unix_now()),
            Some(Outage::AgentSvidExpired { at: expired_at })
        );
    }

    #[tokio::test]
    async fn a_new_agent_svid_is_presented_on_a_fresh_channel() {
        let td = TrustDomain::new("td").unwrap();
        let conn = ServerConnection::new("127.0.0.1", 1, &td, None, None).unwrap();
        let channel = |conn: &ServerConnection| {
            drop(conn.client());
            Arc::as_ptr(&conn.channel.load_full())
        };
        let first = channel(&conn);
        assert_eq!(channel(&conn), first, "kept while the SVID is the same");
        conn.identity()
            .set(crate::identity::tests::agent_svid(unix_now() + 60));
        let second = channel(&conn);
        assert_ne!(second, first);
        assert_eq!(channel(&conn), second);
    }
}
