//! UpstreamAuthority "disk": the operator's CA certificate and key, read from files, signing
//! the server's X.509 CAs as intermediates (SPIRE's `disk` UpstreamAuthority plugin). The trust
//! bundle then carries the operator's root(s), and every X509-SVID chain carries the
//! intermediate (and any upstream intermediates) after the leaf.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::Issuer;
use rustls::pki_types::CertificateDer;
use sigil_common::hcl::{Block, ConfigError, parse_path};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::ca::CaError;
use crate::ca::cert_signature::signed_by;
use crate::key_manager::Signer;
use crate::key_manager::pem_key::pkcs8_from_pem;

/// Where the `disk` plugin's files are (`plugin_data` of `UpstreamAuthority "disk"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamDiskConfig {
    /// PEM: the upstream CA certificate first, then any intermediates up to (not necessarily
    /// including) a root.
    pub cert_file_path: PathBuf,
    /// PEM private key of the first certificate: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`); EC P-256/P-384 or RSA.
    pub key_file_path: PathBuf,
    /// PEM roots the bundle publishes; when absent the upstream certificate must be
    /// self-signed and is the root.
    pub bundle_file_path: Option<PathBuf>,
}

impl UpstreamDiskConfig {
    /// Reads `plugin_data { cert_file_path key_file_path bundle_file_path }`; the files
    /// themselves are read by [`UpstreamAuthority::load`].
    pub(crate) fn from_plugin_data(mut data: Block<'_>) -> Result<Self, ConfigError> {
        let cert_file_path = data
            .parsed("cert_file_path", parse_path)?
            .ok_or_else(|| data.missing("cert_file_path"))?;
        let key_file_path = data
            .parsed("key_file_path", parse_path)?
            .ok_or_else(|| data.missing("key_file_path"))?;
        let bundle_file_path = data.parsed("bundle_file_path", parse_path)?;
        data.finish()?;
        Ok(Self {
            cert_file_path,
            key_file_path,
            bundle_file_path,
        })
    }
}

/// Why the upstream authority's files were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path}: certificate {index} does not parse: {message}")]
    Certificate {
        path: String,
        index: usize,
        message: String,
    },
    #[error(
        "{path}: the private key is not usable ({message}); a PEM PKCS#8, SEC1 (EC PRIVATE KEY) or PKCS#1 (RSA PRIVATE KEY) key of type EC P-256, EC P-384 or RSA is expected"
    )]
    Key { path: String, message: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("{0}: the upstream certificate is not a CA (basicConstraints CA:TRUE is required)")]
    NotCa(String),
    #[error("{0}: the upstream certificate's keyUsage does not allow keyCertSign")]
    NoCertSign(String),
    #[error(
        "{path}: the upstream certificate is not valid now (valid from {not_before} to {not_after})"
    )]
    NotValidNow {
        path: String,
        not_before: String,
        not_after: String,
    },
    #[error(
        "{0}: the upstream certificate is not self-signed; set bundle_file_path to its root(s)"
    )]
    NotSelfSigned(String),
    #[error("{0}: the certificate chain does not lead to a root in the bundle")]
    Untrusted(String),
    #[error("cannot use the upstream certificate as an issuer: {0}")]
    Issuer(#[from] rcgen::Error),
}

/// The loaded, checked upstream CA.
pub struct UpstreamAuthority {
    /// The upstream CA certificate, the issuer of every intermediate.
    cert_der: Vec<u8>,
    /// Sent after the intermediate in every chain: empty when the upstream CA is a root,
    /// otherwise the upstream CA and any certificates between it and a root (excluded).
    chain: Vec<Vec<u8>>,
    /// What the trust bundle publishes in place of the server's own CAs.
    roots: Vec<Vec<u8>>,
    issuer: Issuer<'static, Signer>,
    not_after: i64,
}

impl UpstreamAuthority {
    /// Reads and checks the files: the key matches the certificate, the certificate is a CA
    /// valid at `now` (Unix seconds), and it chains to the roots.
    pub fn load(config: &UpstreamDiskConfig, now: i64) -> Result<Self, UpstreamError> {
        let cert_path = config.cert_file_path.display().to_string();
        let key_path = config.key_file_path.display().to_string();
        let certs = read_certs(&config.cert_file_path)?;
        let key_pem = Zeroizing::new(read(&config.key_file_path)?);
        let key = pkcs8_from_pem(&key_pem)
            .and_then(|pkcs8| Signer::from_pkcs8(&pkcs8))
            .map_err(|message| UpstreamError::Key {
                path: key_path.clone(),
                message,
            })?;
        let upstream_der = certs[0].clone();
        let (_, upstream) =
            X509Certificate::from_der(&upstream_der).map_err(|e| UpstreamError::Certificate {
                path: cert_path.clone(),
                index: 0,
                message: e.to_string(),
            })?;
        if upstream.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(UpstreamError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        if !upstream
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca)
        {
            return Err(UpstreamError::NotCa(cert_path));
        }
        if let Ok(Some(ku)) = upstream.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(UpstreamError::NoCertSign(cert_path));
        }
        let validity = upstream.validity();
        let not_after = validity.not_after.timestamp();
        if now < validity.not_before.timestamp() || now >= not_after {
            return Err(UpstreamError::NotValidNow {
                path: cert_path,
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }

        let roots = match &config.bundle_file_path {
            Some(path) => read_certs(path)?,
            None => {
                if !signed_by(&upstream_der, &upstream_der) {
                    return Err(UpstreamError::NotSelfSigned(cert_path));
                }
                vec![upstream_der.clone()]
            }
        };
        // Sent after the intermediate: the upstream CA and what lies between it and a root,
        // each signed by the next, the last by a root. A root upstream needs nothing more.
        let chain = if roots.contains(&upstream_der) {
            Vec::new()
        } else {
            let path: Vec<Vec<u8>> = certs
                .iter()
                .filter(|c| !roots.contains(c))
                .cloned()
                .collect();
            let linked = path.windows(2).all(|w| signed_by(&w[0], &w[1]));
            let anchored = path
                .last()
                .is_some_and(|last| roots.iter().any(|r| signed_by(last, r)));
            if path.first() != Some(&upstream_der) || !linked || !anchored {
                return Err(UpstreamError::Untrusted(cert_path));
            }
            path
        };

        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(upstream_der.as_slice()), key)?;
        Ok(Self {
            cert_der: upstream_der,
            chain,
            roots,
            issuer,
            not_after,
        })
    }

    /// The upstream CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Certificates sent after the intermediate (empty when the upstream CA is a root).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The roots the trust bundle publishes.
    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    /// Unix seconds; the upstream certificate's NotAfter, which caps every intermediate.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, Signer> {
        &self.issuer
    }

    /// Whether `cert_der` was signed by this upstream CA (an intermediate from the journal
    /// is only resumed when it was).
    pub fn issued(&self, cert_der: &[u8]) -> bool {
        signed_by(cert_der, &self.cert_der)
    }
}

impl fmt::Debug for UpstreamAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamAuthority")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

// By certificates: the key is the certificate's (checked at load).
impl PartialEq for UpstreamAuthority {
    fn eq(&self, other: &Self) -> bool {
        self.cert_der == other.cert_der && self.chain == other.chain && self.roots == other.roots
    }
}

impl Eq for UpstreamAuthority {}

impl From<UpstreamError> for CaError {
    fn from(e: UpstreamError) -> Self {
        Self::Upstream(e.to_string())
    }
}

fn read(path: &Path) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path).map_err(|source| UpstreamError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every CERTIFICATE block of a PEM file, each checked to parse; at least one.
fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, UpstreamError> {
    let shown = path.display().to_string();
    let blocks = pem::parse_many(read(path)?).map_err(|e| UpstreamError::Pem {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(UpstreamError::Pem {
            path: shown,
            message: "no CERTIFICATE found".into(),
        });
    }
    for (index, der) in certs.iter().enumerate() {
        X509Certificate::from_der(der).map_err(|e| UpstreamError::Certificate {
            path: shown.clone(),
            index,
            message: e.to_string(),
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256,
    };
    use time::OffsetDateTime;

    use super::*;

    /// A test CA: its certificate and key as PEM.
    pub(crate) struct TestCa {
        pub cert_pem: String,
        pub key_pem: String,
    }

    impl TestCa {
        pub(crate) fn der(&self) -> Vec<u8> {
            pem::parse(&self.cert_pem).unwrap().into_contents()
        }
    }

    /// A CA certificate valid over `[not_before, not_after]`, self-signed or signed by
    /// `parent`; `ca: false` makes an end-entity certificate instead.
    pub(crate) fn test_ca(
        name: &str,
        parent: Option<&TestCa>,
        not_before: i64,
        not_after: i64,
        ca: bool,
    ) -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
        }
        let cert = match parent {
            None => params.self_signed(&key).unwrap(),
            Some(p) => {
                params.use_authority_key_identifier_extension = true;
                let issuer = Issuer::from_ca_cert_der(
                    &CertificateDer::from(p.der()),
                    KeyPair::from_pem(&p.key_pem).unwrap(),
                )
                .unwrap();
                params.signed_by(&key, &issuer).unwrap()
            }
        };
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `cert` (PEM, possibly several), `key` and optionally `bundle` into `dir`.
    pub(crate) fn write_files(
        dir: &Path,
        cert: &str,
        key: &str,
        bundle: Option<&str>,
    ) -> UpstreamDiskConfig {
        std::fs::write(dir.join("upstream.crt"), cert).unwrap();
        std::fs::write(dir.join("upstream.key"), key).unwrap();
        let bundle_file_path = bundle.map(|b| {
            std::fs::write(dir.join("roots.crt"), b).unwrap();
            dir.join("roots.crt")
        });
        UpstreamDiskConfig {
            cert_file_path: dir.join("upstream.crt"),
            key_file_path: dir.join("upstream.key"),
            bundle_file_path,
        }
    }

    const NOW: i64 = 1_800_000_000;
    const YEAR: i64 = 365 * 86_400;

    fn load(
        cert: &str,
        key: &str,
        bundle: Option<&str>,
    ) -> Result<UpstreamAuthority, UpstreamError> {
        let dir = tempfile::tempdir().unwrap();
        UpstreamAuthority::load(&write_files(dir.path(), cert, key, bundle), NOW)
    }

    #[test]
    fn self_signed_root_is_its_own_bundle() {
        let root = test_ca("root", None, NOW - 10, NOW + YEAR, true);
        let up = load(&root.cert_pem, &root.key_pem, None).unwrap();
        assert_eq!(up.roots(), &[root.der()]);
        assert!(up.chain().is_empty());
        assert_eq!(up.cert_der(), root.der());
        assert_eq!(up.not_after(), NOW + YEAR);
        assert!(!format!("{up:?}").contains("PRIVATE"));
    }

    #[test]
    fn upstream_intermediate_chains_to_the_bundle_roots() {
        let root = test_ca("root", None, NOW - 10, NOW + YEAR, true);
        let mid = test_ca("mid", Some(&root), NOW - 10, NOW + YEAR, true);
        // The cert file may carry the root after the upstream CA: it is not sent in chains.
        let cert_file = format!("{}{}", mid.cert_pem, root.cert_pem);
        let up = load(&cert_file, &mid.key_pem, Some(&root.cert_pem)).unwrap();
        assert_eq!(up.roots(), &[root.der()]);
        assert_eq!(up.chain(), &[mid.der()]);
        // Without the bundle it is refused: not self-signed.
        assert!(matches!(
            load(&mid.cert_pem, &mid.key_pem, None),
            Err(UpstreamError::NotSelfSigned(_))
        ));
        // With an unrelated root it is refused.
        let other = test_ca("other", None, NOW - 10, NOW + YEAR, true);
        assert!(matches!(
            load(&mid.cert_pem, &mid.key_pem, Some(&other.cert_pem)),
            Err(UpstreamError::Untrusted(_))
        ));
    }

    #[test]
    fn bad_inputs_are_refused_with_a_clear_error() {
        let root = test_ca("root", None, NOW - 10, NOW + YEAR, true);
        let other = test_ca("other", None, NOW - 10, NOW + YEAR, true);
        let leaf = test_ca("leaf", None, NOW - 10, NOW + YEAR, false);
        let expired = test_ca("old", None, NOW - YEAR, NOW - 1, true);

        let e = load(&root.cert_pem, &other.key_pem, None).unwrap_err();
        assert!(matches!(e, UpstreamError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("does not match"), "{e}");

        let e = load(&leaf.cert_pem, &leaf.key_pem, None).unwrap_err();
        assert!(matches!(e, UpstreamError::NotCa(_)), "{e}");
        assert!(e.to_string().contains("not a CA"), "{e}");

        let e = load(&expired.cert_pem, &expired.key_pem, None).unwrap_err();
        assert!(matches!(e, UpstreamError::NotValidNow { .. }), "{e}");

        let e = load("not a certificate", &root.key_pem, None).unwrap_err();
        assert!(matches!(e, UpstreamError::Pem { .. }), "{e}");

        let e = load(&root.cert_pem, "garbage", None).unwrap_err();
        assert!(matches!(e, UpstreamError::Key { .. }), "{e}");
        assert!(e.to_string().contains("PKCS#8, SEC1"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let mut cfg = write_files(dir.path(), &root.cert_pem, &root.key_pem, None);
        cfg.key_file_path = dir.path().join("missing.key");
        let e = UpstreamAuthority::load(&cfg, NOW).unwrap_err();
        assert!(matches!(e, UpstreamError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.key"), "{e}");
    }

    #[test]
    fn issued_recognises_its_own_intermediates_only() {
        let root = test_ca("root", None, NOW - 10, NOW + YEAR, true);
        let other = test_ca("other", None, NOW - 10, NOW + YEAR, true);
        let child = test_ca("child", Some(&root), NOW - 10, NOW + YEAR, true);
        let up = load(&root.cert_pem, &root.key_pem, None).unwrap();
        assert!(up.issued(&child.der()));
        assert!(!up.issued(&other.der()));
        assert!(!up.issued(b"junk"));
    }

    /// The self-signature check is real for the algorithms ring cannot check (ECDSA with
    /// SHA-512, RSA-PSS with OpenSSL's default salt): a flipped signature bit is refused, as
    /// are SHA-1 signatures and a key of another type than the certificate's.
    #[test]
    fn openssl_made_cas_are_checked_not_just_parsed() {
        use sigil_testkit::verify::openssl_self_signed_ca;
        let dir = tempfile::tempdir().unwrap();
        let ec = openssl_self_signed_ca(
            dir.path(),
            "ec",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            &["-sha512"],
        );
        let pss = openssl_self_signed_ca(
            dir.path(),
            "pss",
            &["genrsa", "-traditional", "2048"],
            &["-sha256", "-sigopt", "rsa_padding_mode:pss"],
        );
        let sha1 = openssl_self_signed_ca(dir.path(), "sha1", &["genrsa", "2048"], &["-sha1"]);
        // After openssl: its NotBefore is the current second.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        let load_at = |cert: &str, key: &str| {
            let dir = tempfile::tempdir().unwrap();
            UpstreamAuthority::load(&write_files(dir.path(), cert, key, None), now)
        };
        for (cert, key) in [&ec, &pss] {
            load_at(&text(cert), &text(key)).unwrap();
            // The last byte of the DER is the signature's.
            let mut der = pem::parse(text(cert)).unwrap().into_contents();
            *der.last_mut().unwrap() ^= 1;
            let tampered = pem::encode(&pem::Pem::new("CERTIFICATE", der));
            let e = load_at(&tampered, &text(key)).unwrap_err();
            assert!(matches!(e, UpstreamError::NotSelfSigned(_)), "{e}");
        }
        let e = load_at(&text(&sha1.0), &text(&sha1.1)).unwrap_err();
        assert!(matches!(e, UpstreamError::NotSelfSigned(_)), "{e}");
        let e = load_at(&text(&ec.0), &text(&pss.1)).unwrap_err();
        assert!(matches!(e, UpstreamError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("does not match"), "{e}");
    }
}
