//! The agent's connection to sigil-server's agent API: TCP, then TLS with rustls (ring, ALPN
//! `h2`), then tonic. The server is identified by SPIFFE ID, as SPIRE does: its chain must
//! verify against our trust domain's X.509 authorities and its leaf must carry exactly
//! `spiffe://<td>/spire/server`; the host name plays no part.
//!
//! Trust anchors and the client identity are shared, mutable state: sync installs each new
//! bundle, rotation installs each renewed agent SVID, and the next handshake uses them.
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
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sigil_proto::sigil::agent::v1::MintJwtsvidRequest;
use sigil_proto::sigil::agent::v1::agent_client::AgentClient;
use sigil_proto::{Bundle, RegistrationEntry, SpiffeId, TrustDomain};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::cache::{JwtSvidMinter, MintError, Outage};
use crate::ops::Metrics;
use crate::svid_store::{AgentSvid, leaf_facts};
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

/// The agent SVID as presented in handshakes, with its NotAfter (Unix seconds).
#[derive(Clone)]
struct Presented {
    key: Arc<CertifiedKey>,
    not_after: i64,
}

/// TLS state shared by every connection the agent makes.
struct Credentials {
    /// `None` only during `insecure_bootstrap`, before the first bundle arrives.
    roots: RwLock<Option<Arc<RootCertStore>>>,
    identity: RwLock<Option<Presented>>,
}

impl Credentials {
    fn roots(&self) -> Option<Arc<RootCertStore>> {
        // A poisoned lock still holds a whole value (writes are single assignments).
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn identity(&self) -> Option<Presented> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The agent SVID to present now: none once it has expired (see the module doc).
    fn presentable(&self) -> Option<Arc<CertifiedKey>> {
        self.identity()
            .filter(|p| unix_now() < p.not_after)
            .map(|p| p.key)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("roots", &self.roots().map(|r| r.len()))
            .field("identity", &self.identity().is_some())
            .finish()
    }
}

/// Verifies the server's chain against the trust bundle and its SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    expected: SpiffeId,
    credentials: Arc<Credentials>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    fn new(trust_domain: &TrustDomain, credentials: Arc<Credentials>) -> Self {
        SpiffeServerVerifier {
            expected: trust_domain.server_id(),
            credentials,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.credentials.roots() {
            Some(roots) => {
                let cert = ParsedCertificate::try_from(end_entity)?;
                // webpki checks the chain, validity and the serverAuth usage.
                verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    &roots,
                    intermediates,
                    now,
                    self.algorithms.all,
                )?;
            }
            None => warn!(
                server_id = %self.expected,
                "insecure_bootstrap: trusting the server's certificate chain without verification (first contact only)"
            ),
        }
        let facts = leaf_facts(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if facts.spiffe_id != self.expected {
            warn!(found = %facts.spiffe_id, expected = %self.expected, "server presented an unexpected SPIFFE ID");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
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
    /// NotAfter of the agent SVID presented (Unix seconds), for those waiting on a new one.
    identity_not_after: watch::Sender<Option<i64>>,
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
    /// A lazily connecting channel to `address:port`: nothing is dialled until the first call,
    /// so a server that is down at start-up is just an `Unavailable` RPC. `bundle` is `None`
    /// only for `insecure_bootstrap`.
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
        ServerConnection::with_servers(vec![server], trust_domain, bundle, identity)
    }

    /// Like [`ServerConnection::new`] for several servers, tried in turn (see the module doc).
    pub fn with_servers(
        servers: Vec<ServerAddress>,
        trust_domain: &TrustDomain,
        bundle: Option<&Bundle>,
        identity: Option<&AgentSvid>,
    ) -> Result<Self, ServerClientError> {
        if servers.is_empty() {
            return Err(ServerClientError::NoServers);
        }
        if let Some(bad) = servers.iter().find(|s| s.host.is_empty()) {
            return Err(ServerClientError::InvalidAddress(bad.to_string()));
        }
        let roots = bundle.map(root_store).transpose()?.map(Arc::new);
        let not_after = identity.map(|svid| svid.not_after);
        let identity = identity.map(presented).transpose()?;
        let credentials = Arc::new(Credentials {
            roots: RwLock::new(roots),
            identity: RwLock::new(identity),
        });
        let verifier = Arc::new(SpiffeServerVerifier::new(trust_domain, credentials.clone()));
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
        Ok(ServerConnection {
            dialer,
            credentials,
            channel: ArcSwap::from_pointee(channel),
            identity_not_after: watch::Sender::new(not_after),
        })
    }

    /// A client on the current channel.
    pub fn client(&self) -> AgentClient<Channel> {
        AgentClient::new((**self.channel.load()).clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Trusts exactly the X.509 authorities of `bundle` from the next handshake on.
    pub fn set_bundle(&self, bundle: &Bundle) -> Result<(), ServerClientError> {
        let roots = Arc::new(root_store(bundle)?);
        *self
            .credentials
            .roots
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(roots);
        Ok(())
    }

    /// Presents `svid` as the client certificate and opens a fresh channel, so no connection
    /// keeps authenticating with the previous SVID.
    pub fn set_identity(&self, svid: &AgentSvid) -> Result<(), ServerClientError> {
        let presented = presented(svid)?;
        *self
            .credentials
            .identity
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(presented);
        self.reconnect();
        self.identity_not_after.send_replace(Some(svid.not_after));
        Ok(())
    }

    /// When the agent SVID expired, if it has by `now` (Unix seconds; from the start of its
    /// NotAfter second, as workload SVIDs are withdrawn).
    pub fn identity_expired_at(&self, now: i64) -> Option<i64> {
        (*self.identity_not_after.borrow())
            .filter(|&not_after| crate::cache::expiry::is_expired(not_after, now))
    }

    /// Resolves once an agent SVID that has not expired is set (at once if it already is).
    pub async fn identity_renewed(&self) {
        let mut rx = self.identity_not_after.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx
            .wait_for(|na| na.is_none_or(|na| !crate::cache::expiry::is_expired(na, unix_now())))
            .await;
    }

    /// Since when (Unix seconds) no dial has reached a server; `None` once one has since.
    pub fn unreachable_since(&self) -> Option<i64> {
        self.dialer.lock_state().unreachable_since
    }

    /// Why nothing can be renewed at `now`, if so: the agent SVID expired, or no server has
    /// been reachable since some time.
    pub fn outage(&self, now: i64) -> Option<Outage> {
        if let Some(at) = self.identity_expired_at(now) {
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
        ServerJwtMinter {
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

fn presented(svid: &AgentSvid) -> Result<Presented, ServerClientError> {
    Ok(Presented {
        key: Arc::new(certified_key(svid)?),
        not_after: svid.not_after,
    })
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

    fn verifier(roots: Option<&Ca>) -> SpiffeServerVerifier {
        let td = TrustDomain::new("td").unwrap();
        let roots = roots.map(|ca| {
            let mut bundle = Bundle::new(td.clone());
            bundle.x509_authorities = vec![ca.der.clone()];
            Arc::new(root_store(&bundle).unwrap())
        });
        let credentials = Arc::new(Credentials {
            roots: RwLock::new(roots),
            identity: RwLock::new(None),
        });
        SpiffeServerVerifier::new(&td, credentials)
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
        let conn =
            ServerConnection::with_servers(servers, &TrustDomain::new("td").unwrap(), None, None)
                .unwrap();
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
            ServerConnection::with_servers(vec![], &TrustDomain::new("td").unwrap(), None, None),
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
        assert_eq!(conn.identity_expired_at(unix_now()), None);

        let expired = svid(unix_now());
        conn.set_identity(&expired).unwrap();
        assert!(!resolver.has_certs());
        assert!(resolver.resolve(&[], &[]).is_none());
        assert_eq!(
            conn.identity_expired_at(unix_now()),
            Some(expired.not_after)
        );
        // An expired agent SVID explains an outage before reachability does.
        assert_eq!(
            conn.outage(unix_now()),
            Some(Outage::AgentSvidExpired {
                at: expired.not_after
            })
        );
    }

    #[tokio::test]
    async fn waiting_for_a_renewed_identity_ends_when_one_is_set() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::default().self_signed(&key).unwrap();
        let svid = |not_after: i64| AgentSvid {
            spiffe_id: SpiffeId::new("spiffe://td/spire/agent/x").unwrap(),
            chain: vec![cert.der().to_vec()],
            key_pkcs8: zeroize::Zeroizing::new(key.serialize_der()),
            not_before: 0,
            not_after,
        };
        let td = TrustDomain::new("td").unwrap();
        let conn = Arc::new(
            ServerConnection::new("127.0.0.1", 1, &td, None, Some(&svid(unix_now() - 1))).unwrap(),
        );
        let waiter = tokio::spawn({
            let conn = conn.clone();
            async move { conn.identity_renewed().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        conn.set_identity(&svid(unix_now() + 60)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the new identity")
            .unwrap();
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
