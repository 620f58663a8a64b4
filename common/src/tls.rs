//! The rustls verifier for a TLS server named by SPIFFE ID, as SPIRE does it: the chain must
//! reach the given roots and the leaf must carry exactly the expected SPIFFE ID as its one URI
//! SAN; the host name dialled plays no part. One verifier serves every client in both
//! binaries; what differs between them is a parameter:
//!
//! - where the roots come from ([`Roots`]): fixed when the verifier is built (the federation
//!   poller: the bundle held for the foreign trust domain), read at every handshake (the agent:
//!   each bundle synced from the server counts from the next handshake on, and before the
//!   first one, under `insecure_bootstrap`, there are none), or none at all (the kubelet's
//!   `skip_kubelet_verification`, tests about connections rather than identities);
//! - whether a SPIFFE ID is pinned ([`SpiffeServerVerifier::new`]) or not
//!   ([`SpiffeServerVerifier::any_certificate`]).
//!
//! The handshake signatures are checked in every case, so the session is bound to the key of
//! the certificate presented.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sigil_proto::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Reads the roots at a handshake; `None` when there are none yet (the chain is then not
/// checked: the caller chose to trust on first use, and is where that is logged).
pub type RootsSource = Arc<dyn Fn() -> Option<Arc<RootCertStore>> + Send + Sync>;

/// Where a [`SpiffeServerVerifier`] finds the roots a server's chain must reach.
#[derive(Clone)]
pub enum Roots {
    /// Fixed when the verifier is built.
    Fixed(Arc<RootCertStore>),
    /// Read at every handshake, so new roots count from the next one on.
    Live(RootsSource),
    /// Any chain is accepted (only the handshake signature is checked).
    Any,
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(roots) => write!(f, "Fixed({} roots)", roots.len()),
            Self::Live(_) => f.write_str("Live"),
            Self::Any => f.write_str("Any"),
        }
    }
}

/// Verifies a server's chain against [`Roots`] and its SPIFFE ID against the pinned one (see
/// the module doc).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Roots,
    expected: Option<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// The chain must reach `roots` (webpki checks it, its validity and the serverAuth usage)
    /// and the leaf's single URI SAN must be `expected`.
    pub fn new(roots: Roots, expected: SpiffeId) -> Self {
        Self {
            roots,
            expected: Some(expected),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// Any certificate is accepted; the handshake signatures are still checked, so that the
    /// session is at least bound to the presented key.
    pub fn any_certificate() -> Self {
        Self {
            roots: Roots::Any,
            expected: None,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let roots = match &self.roots {
            Roots::Fixed(roots) => roots.clone(),
            Roots::Live(source) => match source() {
                Some(roots) => roots,
                None => return Ok(()),
            },
            Roots::Any => return Ok(()),
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.algorithms.all,
        )
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
        self.check_chain(end_entity, intermediates, now)?;
        let Some(expected) = &self.expected else {
            return Ok(ServerCertVerified::assertion());
        };
        let found = leaf_spiffe_id(end_entity)?;
        if found.as_ref() != Some(expected) {
            let found = found.map_or_else(|| "none".to_owned(), |id| id.to_string());
            tracing::warn!(%found, %expected, "server presented an unexpected SPIFFE ID");
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

/// The leaf's SPIFFE ID: its single URI SAN, when there is exactly one and it is a SPIFFE ID.
/// A certificate that does not parse is a bad encoding.
pub fn leaf_spiffe_id(der: &[u8]) -> Result<Option<SpiffeId>, rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad())?;
    let Some(san) = cert.subject_alternative_name().map_err(|_| bad())? else {
        return Ok(None);
    };
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Ok(None);
    };
    Ok(SpiffeId::new(uri).ok())
}

#[cfg(test)]
mod tests {
    use sigil_proto::TrustDomain;
    use time::{Duration as TimeDuration, OffsetDateTime};

    use super::*;
    use crate::testing::{Ca, ca, in_a_day, leaf, verify_server};

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der.clone())).unwrap();
        Arc::new(roots)
    }

    fn server_id() -> SpiffeId {
        TrustDomain::new("td").unwrap().server_id()
    }

    #[test]
    fn accepts_the_pinned_id_chained_to_the_roots() {
        let ca = ca();
        let cert = leaf(&ca, &["spiffe://td/spire/server"], in_a_day());
        let fixed = SpiffeServerVerifier::new(Roots::Fixed(roots(&ca)), server_id());
        assert!(verify_server(&fixed, &cert).is_ok());
        let held = roots(&ca);
        let live = SpiffeServerVerifier::new(
            Roots::Live(Arc::new(move || Some(held.clone()))),
            server_id(),
        );
        assert!(verify_server(&live, &cert).is_ok());
    }

    #[test]
    fn rejects_another_spiffe_id_or_more_than_one() {
        let ca = ca();
        let v = SpiffeServerVerifier::new(Roots::Fixed(roots(&ca)), server_id());
        for uris in [
            &["spiffe://td/workload"][..],
            &["spiffe://other/spire/server"],
            &["spiffe://td/spire/server", "spiffe://td/workload"],
        ] {
            let cert = leaf(&ca, uris, in_a_day());
            assert_eq!(
                verify_server(&v, &cert).unwrap_err(),
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "{uris:?}"
            );
        }
    }

    #[test]
    fn rejects_another_ca() {
        let (trusted, other) = (ca(), ca());
        let cert = leaf(&other, &["spiffe://td/spire/server"], in_a_day());
        let v = SpiffeServerVerifier::new(Roots::Fixed(roots(&trusted)), server_id());
        assert!(matches!(
            verify_server(&v, &cert),
            // Same subject name as the trusted CA, so webpki finds it and the signature fails.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            ))
        ));
    }

    #[test]
    fn rejects_an_expired_certificate() {
        let ca = ca();
        let expired = OffsetDateTime::now_utc() - TimeDuration::hours(1);
        let cert = leaf(&ca, &["spiffe://td/spire/server"], expired);
        let v = SpiffeServerVerifier::new(Roots::Fixed(roots(&ca)), server_id());
        assert!(matches!(
            verify_server(&v, &cert),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn without_live_roots_only_the_spiffe_id_is_checked() {
        let v = SpiffeServerVerifier::new(Roots::Live(Arc::new(|| None)), server_id());
        let cert = leaf(&ca(), &["spiffe://td/spire/server"], in_a_day());
        assert!(verify_server(&v, &cert).is_ok());
        let cert = leaf(&ca(), &["spiffe://td/not-the-server"], in_a_day());
        assert!(verify_server(&v, &cert).is_err());
    }

    #[test]
    fn any_certificate_accepts_any_chain_and_name() {
        let v = SpiffeServerVerifier::any_certificate();
        let cert = leaf(&ca(), &["spiffe://elsewhere/x"], in_a_day());
        assert!(verify_server(&v, &cert).is_ok());
    }
}
