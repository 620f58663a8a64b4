//! The console's HTTPS when `admin_ids` is set: the files' certificate, and client X.509-SVIDs
//! asked for (not required) and verified against the trust domain's current bundle by the
//! agent API's verifier ([`client_verifier`]). Each handshake takes the config built for the
//! CA's latest bundle, rebuilt the first time a handshake sees a new one, so a CA rotation
//! counts from the next connection on.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use sigil_common::listener::TlsSource;
use sigil_proto::Bundle;
use tokio_rustls::TlsAcceptor;

use super::ConsoleError;
use crate::api::tls::client_verifier;
use crate::ca::Ca;
use crate::oidc_discovery::{TlsFiles, TlsIdentity};

/// The acceptor for the bundle it was built from.
struct Current {
    bundle: Arc<Bundle>,
    acceptor: TlsAcceptor,
}

/// The console's certificate and the CA whose bundle verifies client SVIDs.
pub(super) struct AdminTls {
    identity: TlsIdentity,
    ca: Arc<Ca>,
    current: Mutex<Current>,
}

impl fmt::Debug for AdminTls {
    /// The key is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTls").finish_non_exhaustive()
    }
}

impl AdminTls {
    /// Reads `files` and builds the config for the CA's current bundle (a bundle whose
    /// authorities do not parse fails start-up).
    pub(super) fn new(files: &TlsFiles, ca: Arc<Ca>) -> Result<Self, ConsoleError> {
        let identity = TlsIdentity::read(files)?;
        let bundle = ca.bundle();
        let acceptor = acceptor(&identity, &bundle)?;
        Ok(Self {
            identity,
            ca,
            current: Mutex::new(Current { bundle, acceptor }),
        })
    }

    /// The source each connection calls.
    pub(super) fn source(self) -> TlsSource {
        let tls = Arc::new(self);
        Arc::new(move || tls.acceptor())
    }

    /// The acceptor for the CA's latest bundle. Should a new bundle fail to make one, the
    /// previous one stays (logged once per bundle).
    fn acceptor(&self) -> TlsAcceptor {
        let bundle = self.ca.bundle();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current.bundle, &bundle) {
            match acceptor(&self.identity, &bundle) {
                Ok(acceptor) => current.acceptor = acceptor,
                Err(e) => tracing::error!(
                    error = %e,
                    "console: cannot trust the new bundle for client SVIDs; the previous one still applies"
                ),
            }
            current.bundle = bundle;
        }
        current.acceptor.clone()
    }
}

fn acceptor(identity: &TlsIdentity, bundle: &Bundle) -> Result<TlsAcceptor, ConsoleError> {
    let verifier = client_verifier(bundle)?;
    Ok(TlsAcceptor::from(identity.server_config(verifier)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tls::tests::ca;

    fn self_signed(dir: &std::path::Path) -> (rcgen::Certificate, TlsFiles) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        (cert, files)
    }

    #[test]
    fn a_new_bundle_makes_a_new_config_the_same_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (other_ca, files) = self_signed(dir.path());
        let ca = ca();
        let tls = AdminTls::new(&files, ca.clone()).unwrap();
        let first = tls.acceptor();
        assert!(Arc::ptr_eq(first.config(), tls.acceptor().config()));
        assert_eq!(first.config().alpn_protocols, [b"http/1.1".to_vec()]);

        // Another replica's authority joins the bundle, as after its CA rotation.
        let mut union = (*ca.bundle()).clone();
        union.x509_authorities.push(other_ca.der().to_vec());
        union.sequence += 1;
        assert!(ca.adopt_bundle(&union));
        let second = tls.acceptor();
        assert!(!Arc::ptr_eq(first.config(), second.config()));
        assert!(Arc::ptr_eq(second.config(), tls.acceptor().config()));
        assert_eq!(format!("{tls:?}"), "AdminTls { .. }");
    }
}
