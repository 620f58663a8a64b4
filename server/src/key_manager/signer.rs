//! The ring key pair behind every private key the server signs with: an ECDSA P-256/P-384 or
//! an RSA key, loaded from PKCS#8 and recognised by its algorithm. [`SigningKey`] wraps one
//! with its key-manager id and type; the upstream authority's key is one on its own, since an
//! operator's RSA key may have any size ring accepts (2048 to 8192 bits).
//!
//! [`SigningKey`]: crate::key_manager::SigningKey

use std::fmt;

use pkcs8::der::Encode as _;
use pkcs8::der::asn1::{AnyRef, BitStringRef};
use pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use pkcs8::{ObjectIdentifier, PrivateKeyInfo};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _, RsaKeyPair};

pub(crate) const OID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub(crate) const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(crate) const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
pub(crate) const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// What a key is, as far as signing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcP256,
    EcP384,
    /// An RSA key with a modulus of this many bits.
    Rsa(usize),
}

/// A private key ready to sign certificates (ASN.1 / PKCS#1 v1.5 signatures) and JWS.
pub struct Signer {
    kind: Kind,
    /// SubjectPublicKeyInfo DER.
    spki: Vec<u8>,
    rng: SystemRandom,
}

// A handful of keys live at a time and signing reads them in place: no box.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Ecdsa {
        p384: bool,
        /// ASN.1 (DER) signatures, as X.509 wants them.
        x509: EcdsaKeyPair,
        /// Fixed-size `r || s` signatures, as JWS wants them (RFC 7518 §3.4).
        jws: EcdsaKeyPair,
    },
    /// Signs with PKCS#1 v1.5 and SHA-256: `sha256WithRSAEncryption` in certificates (what
    /// SPIRE's CA uses with RSA keys) and `RS256` in JWS.
    Rsa(RsaKeyPair),
}

impl Signer {
    /// Loads a PKCS#8 (DER) key, whatever its algorithm; the reason is for an operator.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let info = PrivateKeyInfo::try_from(pkcs8).map_err(|e| format!("not PKCS#8: {e}"))?;
        let rng = SystemRandom::new();
        let oid = info.algorithm.oid;
        let kind = if oid == OID_RSA_ENCRYPTION {
            Kind::Rsa(RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| format!("RSA key: {e}"))?)
        } else if oid == OID_EC_PUBLIC_KEY {
            let p384 = match info.algorithm.parameters_oid() {
                Ok(OID_P256) => false,
                Ok(OID_P384) => true,
                Ok(other) => return Err(format!("unsupported EC curve {other}")),
                Err(e) => return Err(format!("EC key without a named curve: {e}")),
            };
            let (x509_alg, jws_alg) = ecdsa_algs(p384);
            let load = |alg| {
                EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng).map_err(|e| format!("EC key: {e}"))
            };
            Kind::Ecdsa {
                p384,
                x509: load(x509_alg)?,
                jws: load(jws_alg)?,
            }
        } else {
            return Err(format!(
                "unsupported key algorithm {oid} (EC P-256, EC P-384 and RSA are supported)"
            ));
        };
        let spki = spki_der(&kind).map_err(|e| format!("encoding the public key: {e}"))?;
        Ok(Self { kind, spki, rng })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match &self.kind {
            Kind::Ecdsa { p384: false, .. } => KeyAlgorithm::EcP256,
            Kind::Ecdsa { p384: true, .. } => KeyAlgorithm::EcP384,
            Kind::Rsa(pair) => KeyAlgorithm::Rsa(pair.public().modulus_len() * 8),
        }
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// The SPKI's BIT STRING contents: the uncompressed EC point, or the PKCS#1
    /// `RSAPublicKey` DER.
    pub fn public_key_raw(&self) -> &[u8] {
        match &self.kind {
            Kind::Ecdsa { x509, .. } => x509.public_key().as_ref(),
            Kind::Rsa(pair) => pair.public_key().as_ref(),
        }
    }

    /// The JWS `alg` of [`Signer::sign_jws`]'s signatures (RFC 7518 §3.1).
    pub fn jws_alg(&self) -> &'static str {
        match &self.kind {
            Kind::Ecdsa { p384: false, .. } => "ES256",
            Kind::Ecdsa { p384: true, .. } => "ES384",
            Kind::Rsa(_) => "RS256",
        }
    }

    /// Signs `msg` in the X.509 encoding (ECDSA: ASN.1 DER; RSA: PKCS#1 v1.5, SHA-256).
    pub fn sign_x509(&self, msg: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        match &self.kind {
            Kind::Ecdsa { x509, .. } => Ok(x509.sign(&self.rng, msg)?.as_ref().to_vec()),
            Kind::Rsa(pair) => self.sign_rsa(pair, msg),
        }
    }

    /// Signs `msg` in the JWS encoding (ECDSA: fixed-size `r || s`; RSA: RS256).
    pub fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        match &self.kind {
            Kind::Ecdsa { jws, .. } => Ok(jws.sign(&self.rng, msg)?.as_ref().to_vec()),
            Kind::Rsa(pair) => self.sign_rsa(pair, msg),
        }
    }

    fn sign_rsa(&self, pair: &RsaKeyPair, msg: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)?;
        Ok(sig)
    }

    fn rcgen_alg(&self) -> &'static rcgen::SignatureAlgorithm {
        match &self.kind {
            Kind::Ecdsa { p384: false, .. } => &rcgen::PKCS_ECDSA_P256_SHA256,
            Kind::Ecdsa { p384: true, .. } => &rcgen::PKCS_ECDSA_P384_SHA384,
            Kind::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Debug for Signer {
    /// Shows the algorithm only: never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl rcgen::PublicKeyData for Signer {
    fn der_bytes(&self) -> &[u8] {
        self.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.rcgen_alg()
    }
}

impl rcgen::SigningKey for Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.sign_x509(msg)
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

fn ecdsa_algs(
    p384: bool,
) -> (
    &'static EcdsaSigningAlgorithm,
    &'static EcdsaSigningAlgorithm,
) {
    if p384 {
        (
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        )
    } else {
        (
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
    }
}

/// The SubjectPublicKeyInfo as X.509 carries it (RFC 5480 for EC, RFC 3279 for RSA: the
/// rsaEncryption algorithm with NULL parameters, as rcgen writes it).
fn spki_der(kind: &Kind) -> Result<Vec<u8>, pkcs8::der::Error> {
    let (algorithm, raw) = match kind {
        Kind::Ecdsa { p384, x509, .. } => (
            AlgorithmIdentifierRef {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(AnyRef::from(if *p384 { &OID_P384 } else { &OID_P256 })),
            },
            x509.public_key().as_ref(),
        ),
        Kind::Rsa(pair) => (
            AlgorithmIdentifierRef {
                oid: OID_RSA_ENCRYPTION,
                parameters: Some(AnyRef::NULL),
            },
            pair.public_key().as_ref(),
        ),
    };
    SubjectPublicKeyInfoRef {
        algorithm,
        subject_public_key: BitStringRef::from_bytes(raw)?,
    }
    .to_der()
}
