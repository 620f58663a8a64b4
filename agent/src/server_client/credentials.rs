//! The TLS side of the connection: the trust anchors taken from the bundle the cache holds, the
//! agent SVID presented as client certificate, the verifier that pins the server's SPIFFE ID,
//! and the rustls client config that puts them together.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use sigil_common::time::unix_now;
use sigil_common::tls::{self, SpiffeServerVerifier};
use sigil_proto::{Bundle, TrustDomain};
use tracing::{error, warn};

use super::{ServerClientError, lock};
use crate::cache::TrustBundle;
use crate::identity::AgentIdentity;
use crate::svid_store::AgentSvid;

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
pub(super) struct Credentials {
    trust: TrustBundle,
    roots: Mutex<Roots>,
    identity: Arc<AgentIdentity>,
    presented: Mutex<Option<Presented>>,
}

impl Credentials {
    /// Reads trust from `trust`, which must hold a usable bundle unless `insecure_bootstrap`, and
    /// the agent SVID from `identity`.
    pub(super) fn new(
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

    /// Where the agent SVID to present is read from.
    pub(super) fn identity(&self) -> &Arc<AgentIdentity> {
        &self.identity
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

    /// The agent SVID to present now: none once it has expired (see the module doc of
    /// [`crate::server_client`]).
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

/// The rustls config of every dial: the server checked by [`server_verifier`], the agent SVID
/// presented by [`AgentIdentityResolver`], ALPN `h2`.
pub(super) fn client_config(
    trust_domain: &TrustDomain,
    credentials: &Arc<Credentials>,
) -> Result<ClientConfig, ServerClientError> {
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
    Ok(tls)
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
/// certificate. Seen by the connection's tests, which check what a handshake would present.
#[derive(Debug)]
pub(super) struct AgentIdentityResolver(pub(super) Arc<Credentials>);

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
    use rustls::CertificateError;
    use sigil_common::testing::{Ca, ca, in_a_day, leaf, verify_server};
    use time::{Duration as TimeDuration, OffsetDateTime};

    use super::*;
    use crate::cache::Cache;

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

    #[test]
    fn accepts_the_server_id_chained_to_the_bundle() {
        let ca = ca();
        let cert = leaf(&ca, &["spiffe://td/spire/server"], in_a_day());
        assert!(verify_server(&verifier(Some(&ca)), &cert).is_ok());
    }

    #[test]
    fn rejects_another_spiffe_id() {
        let ca = ca();
        for uri in ["spiffe://td/workload", "spiffe://other/spire/server"] {
            let cert = leaf(&ca, &[uri], in_a_day());
            assert_eq!(
                verify_server(&verifier(Some(&ca)), &cert).unwrap_err(),
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "{uri}"
            );
        }
    }

    #[test]
    fn rejects_another_ca() {
        let (trusted, other) = (ca(), ca());
        let cert = leaf(&other, &["spiffe://td/spire/server"], in_a_day());
        assert!(matches!(
            verify_server(&verifier(Some(&trusted)), &cert),
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
            &["spiffe://td/spire/server"],
            OffsetDateTime::now_utc() - TimeDuration::hours(1),
        );
        assert!(matches!(
            verify_server(&verifier(Some(&ca)), &cert),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn insecure_bootstrap_checks_only_the_spiffe_id() {
        let cert = leaf(&ca(), &["spiffe://td/spire/server"], in_a_day());
        assert!(verify_server(&verifier(None), &cert).is_ok());
        let cert = leaf(&ca(), &["spiffe://td/not-the-server"], in_a_day());
        assert!(verify_server(&verifier(None), &cert).is_err());
    }

    #[test]
    fn the_bundle_is_read_where_the_cache_holds_it() {
        let (old, new) = (ca(), ca());
        let cache = Cache::new(bundle(&[&old]));
        let credentials = credentials(&cache);
        let td = TrustDomain::new("td").unwrap();
        let verifier = server_verifier(&td, credentials.clone());
        let signed_by_new = leaf(&new, &["spiffe://td/spire/server"], in_a_day());
        assert!(verify_server(&verifier, &signed_by_new).is_err());
        cache.set_bundle(bundle(&[&old, &new]));
        assert!(verify_server(&verifier, &signed_by_new).is_ok());
        // A bundle without a usable authority keeps the last usable one in force.
        cache.set_bundle(bundle(&[]));
        assert!(verify_server(&verifier, &signed_by_new).is_ok());
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
    fn a_bundle_without_certificates_is_refused() {
        let bundle = Bundle::new(TrustDomain::new("td").unwrap());
        assert!(matches!(
            root_store(&bundle),
            Err(ServerClientError::NoTrustAnchors)
        ));
    }
}
