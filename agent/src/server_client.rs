//! The agent's connection to sigil-server's agent API: TCP, then TLS with rustls (ring, ALPN
//! `h2`), then tonic. The server is identified by SPIFFE ID, as SPIRE does: its chain must
//! verify against our trust domain's X.509 authorities and its leaf must carry exactly
//! `spiffe://<td>/spire/server`; the host name plays no part.
//!
//! Trust anchors and the client identity are read at each handshake from where the agent holds
//! them, once: the cache's trust bundle (which sync updates) and the [`AgentIdentity`] (which
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

pub mod config;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use sigil_common::time::unix_now;
use sigil_common::tls::{self, SpiffeServerVerifier};
use sigil_proto::sigil::agent::v1::MintJwtsvidRequest;
use sigil_proto::sigil::agent::v1::agent_client::AgentClient;
use sigil_proto::{Bundle, RegistrationEntry, SpiffeId, TrustDomain};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, warn};

use crate::cache::{Cache, JwtSvidMinter, MintError, Outage, TrustBundle};
use crate::identity::AgentIdentity;
use crate::ops::Metrics;
use crate::svid_store::AgentSvid;
pub use config::{ServerAddress, TrustBundleSource};

/// Largest agent API message, the server's own limit (see `sigil_proto::limits`).
const MAX_MESSAGE_BYTES: usize = sigil_proto::limits::AGENT_API_MAX_MESSAGE;

/// Bound on resolving one server name, and on one address's TCP connect plus TLS handshake,
/// so that a silent server costs a few seconds before the next one is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The trust anchors in use: those of the last usable bundle seen.
#[derive(Default)]
struct Roots {
    /// The bundle last looked at, usable or not.
    seen: Option<Arc<Bundle>>,
    /// `None` only during `insecure_bootstrap`, before the first usable bundle arrives.
    roots: Option<Arc<RootCertStore>>,
}

/// The agent SVID last asked for in a handshake, in rustls's form (`None` if it has none).
struct Presented {
    svid: Arc<AgentSvid>,
    key: Option<Arc<CertifiedKey>>,
}

/// TLS state shared by every connection the agent makes, derived from where the agent holds
/// its bundle and SVID and kept until those change.
struct Credentials {
    trust: TrustBundle,
    roots: Mutex<Roots>,
    identity: Arc<AgentIdentity>,
    presented: Mutex<Option<Presented>>,
}

/// Locks `mutex`; every write is a whole-value assignment, so a poisoned lock still holds a valid
/// value.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Credentials {
    /// Reads trust from `trust`, which must hold a usable bundle unless `insecure_bootstrap`, and
    /// the agent SVID from `identity`.
    fn new(
        trust: TrustBundle,
        insecure_bootstrap: bool,
        identity: Arc<AgentIdentity>,
    ) -> Result<Self, ServerClientError> {
        let roots = if insecure_bootstrap {
            Roots::default()
        } else {
            let bundle = trust.current();
            Roots {
                roots: Some(Arc::new(root_store(&bundle)?)),
                seen: Some(bundle),
            }
        };
        Ok(Self {
            trust,
            roots: Mutex::new(roots),
            identity,
            presented: Mutex::new(None),
        })
    }

    /// The roots of the current bundle, or of the last usable one when the current one has no
    /// usable authority (sync warns about it).
    fn roots(&self) -> Option<Arc<RootCertStore>> {
        let bundle = self.trust.current();
        let mut roots = lock(&self.roots);
        if !roots.seen.as_ref().is_some_and(|b| Arc::ptr_eq(b, &bundle)) {
            if let Ok(store) = root_store(&bundle) {
                roots.roots = Some(Arc::new(store));
            }
            roots.seen = Some(bundle);
        }
        roots.roots.clone()
    }

    /// The agent SVID to present now: none once it has expired (see the module doc).
    fn presentable(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self
            .identity
            .current()
            .filter(|svid| unix_now() < svid.not_after)?;
        let mut presented = lock(&self.presented);
        if let Some(p) = presented.as_ref().filter(|p| Arc::ptr_eq(&p.svid, &svid)) {
            return p.key.clone();
        }
        let key = match certified_key(&svid) {
            Ok(key) => Some(Arc::new(key)),
            Err(e) => {
                error!(spiffe_id = %svid.spiffe_id, error = %e, "cannot present the agent SVID");
                None
            }
        };
        *presented = Some(Presented {
            svid,
            key: key.clone(),
        });
        key
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("roots", &lock(&self.roots).roots.as_ref().map(|r| r.len()))
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The server's chain must reach the roots [`Credentials::roots`] gives at each handshake and
/// its leaf must be `spiffe://<td>/spire/server`; with no roots yet (`insecure_bootstrap`)
/// only the ID is checked, and that is logged.
fn server_verifier(
    trust_domain: &TrustDomain,
    credentials: Arc<Credentials>,
) -> SpiffeServerVerifier {
    let server_id = trust_domain.server_id();
    let expected = server_id.clone();
    let roots = move || {
        let roots = credentials.roots();
        if roots.is_none() {
            warn!(
                server_id = %expected,
                "insecure_bootstrap: trusting the server's certificate chain without verification (first contact only)"
            );
        }
        roots
    };
    SpiffeServerVerifier::new(tls::Roots::Live(Arc::new(roots)), server_id)
}

/// Presents the current agent SVID, if any and unexpired, when the server asks for a client
/// certificate.
#[derive(Debug)]
struct AgentIdentityResolver(Arc<Credentials>);

impl ResolvesClientCert for AgentIdentityResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.presentable()
    }

    fn has_certs(&self) -> bool {
        self.0.presentable().is_some()
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

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

    /// A lazily connecting channel to several servers, tried in turn (see the module doc):
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
        let verifier = Arc::new(server_verifier(trust_domain, credentials.clone()));
        let mut tls = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(AgentIdentityResolver(credentials.clone())));
        tls.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed TLS 1.3 session keeps the client authentication of the session it came
        // from: after attestation or renewal that would be no SVID or the old one.
        tls.resumption = rustls::client::Resumption::disabled();
        let tls = Arc::new(tls);
        let dialer = Arc::new(Dialer {
            servers,
            tls,
            state: Mutex::new(DialState::default()),
        });
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
        &self.credentials.identity
    }

    /// Since when (Unix seconds) no dial has reached a server; `None` once one has since.
    pub fn unreachable_since(&self) -> Option<i64> {
        self.dialer.lock_state().unreachable_since
    }

    /// Why nothing can be renewed at `now`, if so: the agent SVID expired, or no server has
    /// been reachable since some time.
    pub fn outage(&self, now: i64) -> Option<Outage> {
        if let Some(at) = self.credentials.identity.expired_at(now) {
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
        self.dialer.lock_state().moving = true;
        self.reconnect();
    }

    /// The server of the last successful dial, as configured (`host:port`), if any.
    pub fn current_server(&self) -> Option<String> {
        self.dialer
            .lock_state()
            .current
            .as_ref()
            .map(|c| c.server.clone())
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
    /// Set by [`ServerConnection::fail_over`]: start after `current` next time.
    moving: bool,
    /// When a dial first failed to reach any server (Unix seconds); cleared by a good dial.
    unreachable_since: Option<i64>,
}

/// Dials the configured servers in turn; shared by every channel the connection makes.
struct Dialer {
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
    fn lock_state(&self) -> std::sync::MutexGuard<'_, DialState> {
        // Every write is a whole-field assignment: a poisoned lock still holds a valid value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
    async fn dial(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
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

/// Mints JWT-SVIDs through the server's `MintJWTSVID` (the Workload API's `JwtSvidCache` sits
/// in front of it).
#[derive(Debug, Clone)]
pub struct ServerJwtMinter {
    connection: Arc<ServerConnection>,
    metrics: Arc<Metrics>,
}

impl ServerJwtMinter {
    pub fn new(connection: Arc<ServerConnection>, metrics: Arc<Metrics>) -> Self {
        Self {
            connection,
            metrics,
        }
    }
}

impl JwtSvidMinter for ServerJwtMinter {
    fn mint<'a>(
        &'a self,
        entry: &'a RegistrationEntry,
        spiffe_id: &'a SpiffeId,
        audience: &'a [String],
    ) -> BoxFuture<'a, Result<String, MintError>> {
        Box::pin(async move {
            let request = MintJwtsvidRequest {
                entry_id: entry.id.clone(),
                audience: audience.to_vec(),
                spiffe_id: spiffe_id.to_string(),
                // Sent by the agent side of issue 17 (not yet).
                pod_uid: String::new(),
            };
            let mut outcome = self.connection.client().mint_jwtsvid(request.clone()).await;
            if let Err(status) = &outcome
                && is_connection_failure(status.code())
            {
                // The server went away: one more try, on the next server.
                self.connection.fail_over();
                outcome = self.connection.client().mint_jwtsvid(request).await;
            }
            match outcome {
                Ok(response) => Ok(response.into_inner().token),
                Err(status) => {
                    warn!(entry_id = %entry.id, code = ?status.code(), error = %status.message(), "JWT-SVID minting failed");
                    Err(match status.code() {
                        tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::NotFound => MintError::Refused(status.message().into()),
                        _ => MintError::Unavailable(status.message().into()),
                    })
                }
            }
        })
    }

    fn outage(&self, now: i64) -> Option<Outage> {
        self.connection.outage(now)
    }

    fn served_past_half_life(&self) {
        self.metrics.svid_past_half_life("jwt");
    }
}

fn lazy_channel(dialer: Arc<Dialer>) -> Channel {
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let dialer = dialer.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(dialer.dial().await?)) }
    });
    // The URI only names the HTTP/2 authority; the dialer does the dialling, each attempt
    // bounded by DIAL_TIMEOUT.
    Endpoint::from_static("http://sigil-server")
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector)
}

/// Whether `bundle` holds an X.509 authority the link can verify servers with.
pub(crate) fn check_trust_anchors(bundle: &Bundle) -> Result<(), ServerClientError> {
    root_store(bundle).map(drop)
}

fn root_store(bundle: &Bundle) -> Result<RootCertStore, ServerClientError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(
        bundle
            .x509_authorities
            .iter()
            .map(|der| CertificateDer::from(der.clone())),
    );
    if added == 0 {
        return Err(ServerClientError::NoTrustAnchors);
    }
    Ok(roots)
}

fn certified_key(svid: &AgentSvid) -> Result<CertifiedKey, ServerClientError> {
    let chain = svid
        .chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8.to_vec()));
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use rustls::CertificateError;
    use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::UnixTime;
    use time::{Duration as TimeDuration, OffsetDateTime};

    use super::*;

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI("spiffe://td".try_into().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(ca: &Ca, uri: &str, not_after: OffsetDateTime) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - TimeDuration::hours(2);
        params.not_after = not_after;
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    fn bundle(cas: &[&Ca]) -> Bundle {
        let mut bundle = Bundle::new(TrustDomain::new("td").unwrap());
        bundle.x509_authorities = cas.iter().map(|ca| ca.der.clone()).collect();
        bundle
    }

    /// Credentials reading trust from `cache`; `insecure_bootstrap` when it holds no authority.
    fn credentials(cache: &Cache) -> Arc<Credentials> {
        let insecure = cache.snapshot().bundle.x509_authorities.is_empty();
        let identity = Arc::new(AgentIdentity::new(None));
        Arc::new(Credentials::new(cache.trust_bundle(), insecure, identity).unwrap())
    }

    fn verifier(roots: Option<&Ca>) -> SpiffeServerVerifier {
        let td = TrustDomain::new("td").unwrap();
        let cache = Cache::new(bundle(roots.as_slice()));
        server_verifier(&td, credentials(&cache))
    }

    fn verify(v: &SpiffeServerVerifier, leaf: &[u8]) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from("unrelated.example").unwrap();
        v.verify_server_cert(
            &CertificateDer::from(leaf.to_vec()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
    }

    fn in_a_day() -> OffsetDateTime {
        OffsetDateTime::now_utc() + TimeDuration::days(1)
    }

    #[test]
    fn accepts_the_server_id_chained_to_the_bundle() {
        let ca = ca();
        let cert = leaf(&ca, "spiffe://td/spire/server", in_a_day());
        assert!(verify(&verifier(Some(&ca)), &cert).is_ok());
    }

    #[test]
    fn rejects_another_spiffe_id() {
        let ca = ca();
        for uri in ["spiffe://td/workload", "spiffe://other/spire/server"] {
            let cert = leaf(&ca, uri, in_a_day());
            assert_eq!(
                verify(&verifier(Some(&ca)), &cert).unwrap_err(),
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "{uri}"
            );
        }
    }

    #[test]
    fn rejects_another_ca() {
        let (trusted, other) = (ca(), ca());
        let cert = leaf(&other, "spiffe://td/spire/server", in_a_day());
        assert!(matches!(
            verify(&verifier(Some(&trusted)), &cert),
            // Same subject name as the trusted CA, so webpki finds it and the signature fails.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            ))
        ));
    }

    #[test]
    fn rejects_an_expired_certificate() {
        let ca = ca();
        let cert = leaf(
            &ca,
            "spiffe://td/spire/server",
            OffsetDateTime::now_utc() - TimeDuration::hours(1),
        );
        assert!(matches!(
            verify(&verifier(Some(&ca)), &cert),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn insecure_bootstrap_checks_only_the_spiffe_id() {
        let cert = leaf(&ca(), "spiffe://td/spire/server", in_a_day());
        assert!(verify(&verifier(None), &cert).is_ok());
        let cert = leaf(&ca(), "spiffe://td/not-the-server", in_a_day());
        assert!(verify(&verifier(None), &cert).is_err());
    }

    #[test]
    fn the_bundle_is_read_where_the_cache_holds_it() {
        let (old, new) = (ca(), ca());
        let cache = Cache::new(bundle(&[&old]));
        let credentials = credentials(&cache);
        let td = TrustDomain::new("td").unwrap();
        let verifier = server_verifier(&td, credentials.clone());
        let signed_by_new = leaf(&new, "spiffe://td/spire/server", in_a_day());
        assert!(verify(&verifier, &signed_by_new).is_err());
        cache.set_bundle(bundle(&[&old, &new]));
        assert!(verify(&verifier, &signed_by_new).is_ok());
        // A bundle without a usable authority keeps the last usable one in force.
        cache.set_bundle(bundle(&[]));
        assert!(verify(&verifier, &signed_by_new).is_ok());
        assert_eq!(credentials.roots().map(|r| r.len()), Some(2));
    }

    #[test]
    fn insecure_bootstrap_ends_with_the_first_usable_bundle() {
        let ca = ca();
        let cache = Cache::new(bundle(&[]));
        let credentials = credentials(&cache);
        assert!(credentials.roots().is_none());
        cache.set_bundle(bundle(&[&ca]));
        assert_eq!(credentials.roots().map(|r| r.len()), Some(1));
        cache.set_bundle(bundle(&[]));
        assert!(credentials.roots().is_some(), "never insecure again");
        // Without insecure_bootstrap a bundle without authorities is refused up front.
        let identity = Arc::new(AgentIdentity::new(None));
        let refused = Credentials::new(Cache::new(bundle(&[])).trust_bundle(), false, identity);
        assert!(matches!(refused, Err(ServerClientError::NoTrustAnchors)));
    }

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

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let bundle = Bundle::new(TrustDomain::new("td").unwrap());
        assert!(matches!(
            root_store(&bundle),
            Err(ServerClientError::NoTrustAnchors)
        ));
    }
}
