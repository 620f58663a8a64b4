//! The agent's connection to sigil-server's agent API: TCP, then TLS with rustls (ring, ALPN
//! `h2`), then tonic. The server is identified by SPIFFE ID, as SPIRE does: its chain must
//! verify against our trust domain's X.509 authorities and its leaf must carry exactly
//! `spiffe://<td>/spire/server`; the host name plays no part.
//!
//! Trust anchors and the client identity are shared, mutable state: sync installs each new
//! bundle, rotation installs each renewed agent SVID, and the next handshake uses them.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::cache::{JwtSvidMinter, MintError};
use crate::svid_store::{AgentSvid, leaf_facts};

/// Largest agent API message, the server's own limit (see `sigil_proto::limits`).
const MAX_MESSAGE_BYTES: usize = sigil_proto::limits::AGENT_API_MAX_MESSAGE;

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
}

/// TLS state shared by every connection the agent makes.
struct Credentials {
    /// `None` only during `insecure_bootstrap`, before the first bundle arrives.
    roots: RwLock<Option<Arc<RootCertStore>>>,
    identity: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Credentials {
    fn roots(&self) -> Option<Arc<RootCertStore>> {
        // A poisoned lock still holds a whole value (writes are single assignments).
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn identity(&self) -> Option<Arc<CertifiedKey>> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
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

/// Presents the current agent SVID, if any, when the server asks for a client certificate.
#[derive(Debug)]
struct AgentIdentityResolver(Arc<Credentials>);

impl ResolvesClientCert for AgentIdentityResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.identity()
    }

    fn has_certs(&self) -> bool {
        self.0.identity().is_some()
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The agent's channel to the server. Cheap to share (`Arc`); [`ServerConnection::client`]
/// hands out a tonic client on the current channel.
pub struct ServerConnection {
    address: String,
    port: u16,
    credentials: Arc<Credentials>,
    tls: Arc<ClientConfig>,
    channel: ArcSwap<Channel>,
}

impl fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConnection")
            .field("address", &self.address)
            .field("port", &self.port)
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
        let roots = bundle.map(root_store).transpose()?.map(Arc::new);
        let identity = identity.map(certified_key).transpose()?.map(Arc::new);
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
        let channel = lazy_channel(address, port, tls.clone());
        Ok(ServerConnection {
            address: address.into(),
            port,
            credentials,
            tls,
            channel: ArcSwap::from_pointee(channel),
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
        let key = Arc::new(certified_key(svid)?);
        *self
            .credentials
            .identity
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.reconnect();
        Ok(())
    }

    /// Drops the current channel for a new one (after the identity or trust changed).
    pub fn reconnect(&self) {
        self.channel.store(Arc::new(lazy_channel(
            &self.address,
            self.port,
            self.tls.clone(),
        )));
    }
}

/// Mints JWT-SVIDs through the server's `MintJWTSVID` (the Workload API's `JwtSvidCache` sits
/// in front of it).
#[derive(Debug, Clone)]
pub struct ServerJwtMinter {
    connection: Arc<ServerConnection>,
}

impl ServerJwtMinter {
    pub fn new(connection: Arc<ServerConnection>) -> Self {
        ServerJwtMinter { connection }
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
            match self.connection.client().mint_jwtsvid(request).await {
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
}

fn lazy_channel(address: &str, port: u16, tls: Arc<ClientConfig>) -> Channel {
    let host = address.to_owned();
    // SNI only; the verifier ignores names. An IP address or odd name sends no SNI.
    let server_name = ServerName::try_from(host.clone()).unwrap_or_else(|_| {
        ServerName::from(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST))
    });
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let host = host.clone();
        let tls = tls.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(tls).connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI only names the HTTP/2 authority; the connector above does the dialling.
    Endpoint::from_static("http://sigil-server")
        .connect_timeout(Duration::from_secs(5))
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
    fn a_bundle_without_certificates_is_refused() {
        let bundle = Bundle::new(TrustDomain::new("td").unwrap());
        assert!(matches!(
            root_store(&bundle),
            Err(ServerClientError::NoTrustAnchors)
        ));
    }
}
