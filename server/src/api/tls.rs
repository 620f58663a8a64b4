//! The agent API's TLS side: the server's own X.509-SVID (`spiffe://<td>/spire/server`) and a
//! rustls `ServerConfig` that verifies agent SVIDs against the current bundle. The listener
//! that uses it (handshake timeout, caps) is [`crate::listener`].
//!
//! The config lives in an `ArcSwap` and each connection takes the latest one, so a new bundle
//! (CA rotation) or a re-issued server SVID applies to the next handshake without a restart.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sigil_common::time::unix_now;
use sigil_proto::Bundle;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::ca::{Ca, CaError};

/// How long to wait before retrying a failed server SVID issuance.
const RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the server key: {0}")]
    KeyGeneration(String),
    #[error("cannot sign the server SVID: {0}")]
    Sign(#[from] CaError),
    #[error("the bundle has no usable X.509 authority: {0}")]
    Roots(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The server's TLS identity: its SVID chain and the PKCS#8 key it was issued for.
struct ServerSvid {
    chain: Vec<Vec<u8>>,
    key_pkcs8: Zeroizing<Vec<u8>>,
    issued_at: i64,
    expires_at: i64,
}

impl fmt::Debug for ServerSvid {
    /// The key is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSvid")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The latest TLS configuration for the agent API, kept current by [`ServerTls::refresh_forever`].
pub struct ServerTls {
    ca: Arc<Ca>,
    config: ArcSwap<ServerConfig>,
    /// When the current server SVID was issued and expires (Unix seconds).
    validity: ArcSwap<(i64, i64)>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (issued_at, expires_at) = **self.validity.load();
        f.debug_struct("ServerTls")
            .field("issued_at", &issued_at)
            .field("expires_at", &expires_at)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Issues the first server SVID and builds the config from the current bundle.
    pub fn new(ca: Arc<Ca>) -> Result<Self, TlsError> {
        let svid = issue(&ca)?;
        let config = build_config(&ca.bundle(), &svid)?;
        Ok(Self {
            validity: ArcSwap::from_pointee((svid.issued_at, svid.expires_at)),
            config: ArcSwap::new(config),
            ca,
        })
    }

    /// The config new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Issues a fresh server SVID and rebuilds the config against the current bundle.
    pub fn reissue(&self) -> Result<(), TlsError> {
        let svid = issue(&self.ca)?;
        let config = build_config(&self.ca.bundle(), &svid)?;
        self.config.store(config);
        self.validity
            .store(Arc::new((svid.issued_at, svid.expires_at)));
        tracing::info!(expires_at = svid.expires_at, "server SVID issued");
        Ok(())
    }

    /// Re-issues the server SVID at half-life and whenever the bundle changes (a CA rotation
    /// activates a new authority, and the trusted roots change). Logs and retries on failure;
    /// returns only when `cancel` fires.
    pub async fn refresh_forever(self: Arc<Self>, cancel: CancellationToken) {
        let mut bundles = self.ca.subscribe();
        bundles.borrow_and_update();
        let mut retry = false;
        loop {
            let (issued_at, expires_at) = **self.validity.load();
            let wait = if retry {
                RETRY_AFTER
            } else {
                let at = refresh_at(issued_at, expires_at);
                Duration::from_secs(u64::try_from(at - unix_now()).unwrap_or(0))
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = bundles.changed() => {
                    if changed.is_err() {
                        // The CA is gone: nothing will change any more.
                        return;
                    }
                    bundles.borrow_and_update();
                }
                () = tokio::time::sleep(wait) => {}
            }
            retry = match self.reissue() {
                Ok(()) => false,
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the server SVID; will retry");
                    true
                }
            };
        }
    }
}

/// When to re-issue an SVID valid from `issued_at` to `expires_at` (Unix seconds): at half-life,
/// as SPIRE does, so a failed attempt has the other half to succeed.
pub fn refresh_at(issued_at: i64, expires_at: i64) -> i64 {
    issued_at + (expires_at - issued_at).max(0) / 2
}

fn issue(ca: &Ca) -> Result<ServerSvid, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::KeyGeneration(e.to_string()))?;
    let issued_at = unix_now();
    let svid = ca.sign_server_svid(&key.subject_public_key_info(), &[])?;
    Ok(ServerSvid {
        chain: svid.chain,
        key_pkcs8: Zeroizing::new(key.serialize_der()),
        issued_at,
        expires_at: svid.expires_at,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies a client certificate, when one is sent, against `bundle`'s X.509 authorities
/// (chain, validity, clientAuth usage); a client without one passes the handshake, so whoever
/// serves the connection decides what it may do unauthenticated.
pub(crate) fn client_verifier(bundle: &Bundle) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in &bundle.x509_authorities {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Roots(e.to_string()))
}

/// A `ServerConfig` presenting `svid`, offering ALPN `h2`, and verifying client certificates
/// (when sent) against the bundle's X.509 authorities. AttestAgent comes without one, so
/// unauthenticated clients are let through the handshake; every other RPC checks for the
/// verified chain itself.
fn build_config(bundle: &Bundle, svid: &ServerSvid) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = client_verifier(bundle)?;
    let chain = svid
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8.to_vec()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::key_manager::MemoryKeyManager;
    use sigil_proto::TrustDomain;
    use x509_parser::prelude::*;

    /// A CA of `example.org` with its keys in memory.
    pub(crate) fn ca() -> Arc<Ca> {
        let config = crate::ca::CaConfig::new(TrustDomain::new("example.org").unwrap());
        let (ca, _) = Ca::new(
            config,
            Arc::new(MemoryKeyManager::new()),
            None,
            SystemTime::now(),
        )
        .unwrap();
        Arc::new(ca)
    }

    #[test]
    fn refresh_at_half_life() {
        assert_eq!(refresh_at(1000, 4600), 2800);
        assert_eq!(refresh_at(1000, 1000), 1000);
        // An expiry before issuance (clock trouble) refreshes at once.
        assert_eq!(refresh_at(1000, 900), 1000);
    }

    #[test]
    fn server_svid_names_the_server_and_chains_to_the_bundle() {
        let ca = ca();
        let svid = issue(&ca).unwrap();
        let (_, leaf) = X509Certificate::from_der(&svid.chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        let uris: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, ["spiffe://example.org/spire/server"]);
        let bundle = ca.bundle();
        let (_, root) = X509Certificate::from_der(&bundle.x509_authorities[0]).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
        assert!(format!("{svid:?}").find("key").is_none());
    }

    #[test]
    fn config_offers_h2_and_reissue_swaps_it() {
        let tls = ServerTls::new(ca()).unwrap();
        let first = tls.config();
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);
        tls.reissue().unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.config()));
    }
}
