//! TLS material from the SPIFFE Workload API, and nothing else.
//!
//! The rustls configurations come from `spiffe-rustls`, which resolves the certificate and
//! verifies the peer against the `X509Source`'s *current* SVID and bundle at each handshake,
//! so an SVID or CA rotation is picked up by the next connection without a restart. Peers are
//! verified as X509-SVIDs: chain to the bundle of the peer's trust domain and exactly one
//! SPIFFE ID in the URI SAN; no DNS name is checked (the X509-SVID spec defines none).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use spiffe::x509_source::{SvidPicker, X509SourceError};
use spiffe::{SpiffeId, TrustDomain, X509Source, X509Svid};
use spiffe_rustls::{LocalOnly, TlsStatus, authorizer, mtls_client, mtls_server};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// Errors getting or using Workload API material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(
        "no X509-SVID from the Workload API within {waited:?} (SPIFFE_ENDPOINT_SOCKET set, agent running, workload registered?): {source}"
    )]
    Source {
        waited: Duration,
        #[source]
        source: X509SourceError,
    },
    #[error("building the rustls configuration: {0}")]
    Config(#[from] spiffe_rustls::Error),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer's certificate carries no single SPIFFE ID: {0}")]
    PeerId(String),
}

/// Which SVID to use when the workload is entitled to several (a per-user entry as well as
/// the service's own, say).
#[derive(Clone, Debug)]
pub enum Pick {
    /// Exactly this SPIFFE ID; no SVID until the Workload API offers it.
    Exact(SpiffeId),
    /// The first SVID whose ID has this path, else the Workload API's default (first) SVID.
    PreferPath(&'static str),
}

impl SvidPicker for Pick {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        pick_index(self, svids.iter().map(|s| s.spiffe_id()))
    }
}

fn pick_index<'a>(pick: &Pick, ids: impl Iterator<Item = &'a SpiffeId>) -> Option<usize> {
    let ids: Vec<&SpiffeId> = ids.collect();
    match pick {
        Pick::Exact(want) => ids.iter().position(|id| *id == want),
        Pick::PreferPath(path) => ids
            .iter()
            .position(|id| id.path() == *path)
            .or((!ids.is_empty()).then_some(0)),
    }
}

/// Connects to the Workload API named by `SPIFFE_ENDPOINT_SOCKET` and waits for a first X509
/// context with an SVID `pick` accepts, retrying for up to `timeout`: a workload typically
/// starts before its entry has reached the agent.
pub async fn x509_source(pick: Pick, timeout: Duration) -> Result<X509Source, TlsError> {
    let start = Instant::now();
    loop {
        match X509Source::builder().picker(pick.clone()).build().await {
            Ok(source) => return Ok(source),
            Err(source) if start.elapsed() >= timeout => {
                return Err(TlsError::Source {
                    waited: start.elapsed(),
                    source,
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "no X509-SVID yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The server side: presents the current SVID and requires a client SVID of our own trust
/// domain. It authorizes *any* such identity at the TLS layer on purpose: the per-route
/// decision (and a 403 that names the refused identity) belongs to [`crate::policy`], which
/// sees the request; refusing the handshake would leave the caller with a bare TLS alert.
pub fn server_config(
    source: X509Source,
    td: &TrustDomain,
) -> Result<rustls::ServerConfig, TlsError> {
    let (config, status) = mtls_server(source)
        .authorize(authorizer::any())
        .trust_domain_policy(LocalOnly(td.clone()))
        .with_alpn_protocols([b"http/1.1".as_ref()])
        .build_with_status()?;
    tokio::spawn(log_status(status));
    Ok(config)
}

/// The client side: presents the current SVID and accepts only a server whose SVID carries
/// exactly `server_id` (any other identity fails the handshake before a byte is sent).
pub fn client_config(
    source: X509Source,
    server_id: &SpiffeId,
) -> Result<rustls::ClientConfig, TlsError> {
    let (config, status) = mtls_client(source)
        .authorize(authorizer::exact([server_id.clone()])?)
        .trust_domain_policy(LocalOnly(server_id.trust_domain().clone()))
        .with_alpn_protocols([b"http/1.1".as_ref()])
        .build_with_status()?;
    tokio::spawn(log_status(status));
    Ok(config)
}

/// Logs each new revision of the TLS material (an SVID or bundle update from the Workload
/// API), and loudly when it cannot be used: handshakes fail closed until the next good one.
async fn log_status(mut status: TlsStatus) {
    while status.changed().await.is_ok() {
        let now = status.current();
        match &now.error {
            None => tracing::debug!(revision = now.applied_revision, "TLS material updated"),
            Some(e) => tracing::warn!(
                revision = now.source_revision,
                applied = now.applied_revision,
                error = %e,
                "TLS material unavailable"
            ),
        }
    }
}

/// What a verified peer presented: its SPIFFE ID, and enough of its leaf to see rotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSvid {
    pub spiffe_id: SpiffeId,
    /// The leaf's serial number, hex: changes at each SVID rotation.
    pub serial: String,
    /// The leaf's authority key identifier, hex: changes when the CA that signs it rotates.
    pub authority_key_id: String,
}

impl fmt::Display for PeerSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} serial={} ca={}",
            self.spiffe_id, self.serial, self.authority_key_id
        )
    }
}

/// The peer of a completed handshake (rustls has verified it already).
pub fn peer_svid(conn: &rustls::CommonState) -> Result<PeerSvid, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(<[CertificateDer<'_>]>::first)
        .ok_or(TlsError::NoPeerCertificate)?;
    svid_summary(leaf)
}

/// SPIFFE ID, serial and AKI of a DER leaf certificate.
pub fn svid_summary(der: &[u8]) -> Result<PeerSvid, TlsError> {
    let spiffe_id =
        spiffe::cert::spiffe_id_from_der(der).map_err(|e| TlsError::PeerId(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::PeerId(e.to_string()))?;
    let authority_key_id = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex(k.0))
            }
            _ => None,
        })
        .unwrap_or_else(|| "-".to_owned());
    Ok(PeerSvid {
        spiffe_id,
        serial: hex(cert.raw_serial()),
        authority_key_id,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server SPIFFE ID a failed client handshake was refused for, when that was the reason.
pub fn unauthorized_server(err: &std::io::Error) -> Option<SpiffeId> {
    let rustls::Error::Other(other) = err.get_ref()?.downcast_ref::<rustls::Error>()? else {
        return None;
    };
    match other.0.downcast_ref::<spiffe_rustls::Error>()? {
        spiffe_rustls::Error::UnauthorizedSpiffeId(id) => Some(id.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0a, 0xff]), "000aff");
    }

    #[test]
    fn a_refused_server_id_is_told_apart_from_other_handshake_failures() {
        // tokio-rustls reports a rustls error as io::Error(InvalidData, rustls::Error), and
        // spiffe-rustls its authorization refusal as rustls::Error::Other.
        let id = SpiffeId::new("spiffe://example.org/ns/payments/sa/impostor").unwrap();
        let refused = rustls::Error::Other(rustls::OtherError(Arc::new(
            spiffe_rustls::Error::UnauthorizedSpiffeId(id.clone()),
        )));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        assert_eq!(unauthorized_server(&io), Some(id));

        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, untrusted);
        assert_eq!(unauthorized_server(&io), None);
        let other = rustls::Error::Other(rustls::OtherError(Arc::new(
            spiffe_rustls::Error::MissingSpiffeId,
        )));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, other);
        assert_eq!(unauthorized_server(&io), None);
        assert_eq!(
            unauthorized_server(&std::io::ErrorKind::ConnectionReset.into()),
            None
        );
    }

    #[test]
    fn pick_prefers_the_service_path_and_exact_insists() {
        let id = |s: &str| SpiffeId::new(s).unwrap();
        let ids = [
            id("spiffe://example.org/demo/workload"),
            id("spiffe://example.org/ns/payments/sa/payment-processor"),
        ];
        let prefer = Pick::PreferPath("/ns/payments/sa/payment-processor");
        assert_eq!(pick_index(&prefer, ids.iter()), Some(1));
        assert_eq!(pick_index(&prefer, ids[..1].iter()), Some(0));
        assert_eq!(pick_index(&prefer, [].iter()), None);
        let exact = Pick::Exact(id("spiffe://example.org/ns/payments/sa/payment-processor"));
        assert_eq!(pick_index(&exact, ids.iter()), Some(1));
        assert_eq!(pick_index(&exact, ids[..1].iter()), None);
    }
}
