//! Key managers: where the CA's private keys live (SPIRE's `KeyManager` plugin).
//!
//! A [`KeyManager`] generates, fetches and lists keys by id; each key is a [`SigningKey`] that
//! signs with ring and shows its public key. Two implementations: [`memory::MemoryKeyManager`]
//! (keys die with the process) and [`disk::DiskKeyManager`] (SPIRE's `KeyManager "disk"`, one
//! JSON file, so the CA and the bundle survive a restart).

pub mod config;
pub mod disk;
pub mod memory;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use zeroize::Zeroizing;

pub use config::KeyManagerConfig;
pub use disk::DiskKeyManager;
pub use memory::MemoryKeyManager;

/// Why a key could not be generated, loaded or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyManagerError {
    #[error("unsupported key type {0:?} (supported: ec-p256, ec-p384)")]
    UnsupportedKeyType(String),
    #[error("key generation failed")]
    Generate,
    #[error("key {id:?} is not a valid {key_type} PKCS#8 key: {reason}")]
    InvalidKey {
        id: String,
        key_type: KeyType,
        reason: String,
    },
    #[error("signing failed")]
    Sign,
    #[error("keys file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("keys file {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

/// The CA key algorithm, spelled as SPIRE's `ca_key_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    #[default]
    EcP256,
    EcP384,
}

impl KeyType {
    /// SPIRE's spelling (`ec-p256`, `ec-p384`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::EcP256 => "ES256",
            Self::EcP384 => "ES384",
        }
    }

    fn asn1_alg(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Self::EcP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            Self::EcP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    fn fixed_alg(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Self::EcP256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            Self::EcP384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

impl FromStr for KeyType {
    type Err = KeyManagerError;

    /// Parses SPIRE's `ca_key_type`. RSA is refused: ring cannot generate RSA keys and rcgen's
    /// RSA generation needs aws-lc-rs, which is not in our tree.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            other => Err(KeyManagerError::UnsupportedKeyType(other.to_owned())),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the CA's keys live. `generate` replaces any key with the same id.
pub trait KeyManager: Send + Sync + fmt::Debug {
    fn generate(&self, id: &str, key_type: KeyType) -> Result<Arc<SigningKey>, KeyManagerError>;
    fn fetch(&self, id: &str) -> Result<Option<Arc<SigningKey>>, KeyManagerError>;
    fn list(&self) -> Result<Vec<String>, KeyManagerError>;
}

/// One private key, ready to sign. Both ring key pairs are built once here because parsing
/// PKCS#8 costs far more than a signature; signing then needs no allocation beyond the output.
pub struct SigningKey {
    id: String,
    key_type: KeyType,
    /// Kept only so the disk key manager can persist the key; zeroized on drop.
    pkcs8: Zeroizing<Vec<u8>>,
    /// SubjectPublicKeyInfo DER.
    public_key: Vec<u8>,
    /// ASN.1 (DER) signatures, as X.509 wants them.
    x509_signer: EcdsaKeyPair,
    /// Fixed-size `r || s` signatures, as JWS wants them (RFC 7518 §3.4).
    jws_signer: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// Generates a fresh key.
    pub fn generate(id: &str, key_type: KeyType) -> Result<Self, KeyManagerError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(key_type.asn1_alg(), &rng)
            .map_err(|_| KeyManagerError::Generate)?;
        Self::from_pkcs8(id, key_type, Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// Loads a key from its PKCS#8 DER encoding.
    pub fn from_pkcs8(
        id: &str,
        key_type: KeyType,
        pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<Self, KeyManagerError> {
        let rng = SystemRandom::new();
        let invalid = |e: ring::error::KeyRejected| KeyManagerError::InvalidKey {
            id: id.to_owned(),
            key_type,
            reason: e.to_string(),
        };
        let x509_signer =
            EcdsaKeyPair::from_pkcs8(key_type.asn1_alg(), &pkcs8, &rng).map_err(invalid)?;
        let jws_signer =
            EcdsaKeyPair::from_pkcs8(key_type.fixed_alg(), &pkcs8, &rng).map_err(invalid)?;
        let public_key = spki_der(key_type, x509_signer.public_key().as_ref());
        Ok(Self {
            id: id.to_owned(),
            key_type,
            pkcs8,
            public_key,
            x509_signer,
            jws_signer,
            rng,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The raw public key (uncompressed EC point), the SPKI's BIT STRING contents.
    pub fn public_key_raw(&self) -> &[u8] {
        self.x509_signer.public_key().as_ref()
    }

    /// Signs `msg` with a fixed-size signature, the JWS encoding.
    pub fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        let sig = self
            .jws_signer
            .sign(&self.rng, msg)
            .map_err(|_| KeyManagerError::Sign)?;
        Ok(sig.as_ref().to_vec())
    }

    /// Signs `msg` with an ASN.1 DER signature, the X.509 encoding.
    pub fn sign_x509(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        let sig = self
            .x509_signer
            .sign(&self.rng, msg)
            .map_err(|_| KeyManagerError::Sign)?;
        Ok(sig.as_ref().to_vec())
    }

    /// A handle rcgen can sign certificates with.
    pub fn rcgen_key(self: &Arc<Self>) -> RcgenKey {
        RcgenKey(Arc::clone(self))
    }

    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
}

impl fmt::Debug for SigningKey {
    /// Shows the id and the type only: never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

/// A [`SigningKey`] as rcgen's signer (owned, so an `rcgen::Issuer<'static, _>` can hold it).
#[derive(Clone, Debug)]
pub struct RcgenKey(Arc<SigningKey>);

impl RcgenKey {
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.0
    }
}

impl rcgen::PublicKeyData for RcgenKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.key_type.rcgen_alg()
    }
}

impl rcgen::SigningKey for RcgenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign_x509(msg)
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

/// Wraps an uncompressed EC point in a SubjectPublicKeyInfo. Hand-written because the DER
/// prefix for a named-curve key is a fixed byte string (RFC 5480) and ring does not emit SPKI.
fn spki_der(key_type: KeyType, point: &[u8]) -> Vec<u8> {
    const P256_PREFIX: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    const P384_PREFIX: &[u8] = &[
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
        0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
    ];
    let prefix = match key_type {
        KeyType::EcP256 => P256_PREFIX,
        KeyType::EcP384 => P384_PREFIX,
    };
    [prefix, point].concat()
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;

    use super::*;

    #[test]
    fn key_type_parses_spire_spellings() {
        assert_eq!("ec-p256".parse::<KeyType>().unwrap(), KeyType::EcP256);
        assert_eq!("ec-p384".parse::<KeyType>().unwrap(), KeyType::EcP384);
        assert_eq!(KeyType::default(), KeyType::EcP256);
        for bad in ["rsa-2048", "rsa-4096", "EC-P256", ""] {
            assert!(matches!(
                bad.parse::<KeyType>(),
                Err(KeyManagerError::UnsupportedKeyType(_))
            ));
        }
    }

    #[test]
    fn signs_in_both_encodings_and_spki_parses() {
        let k = SigningKey::generate("a", KeyType::EcP256).unwrap();
        let (rest, spki) = SubjectPublicKeyInfo::from_der(k.public_key()).unwrap();
        assert!(rest.is_empty());
        assert_eq!(spki.subject_public_key.data.as_ref(), k.public_key_raw());
        let sig = k.sign_x509(b"msg").unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, k.public_key_raw())
            .verify(b"msg", &sig)
            .unwrap();
        assert!(
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, k.public_key_raw())
                .verify(b"other", &sig)
                .is_err()
        );

        let k = SigningKey::generate("b", KeyType::EcP384).unwrap();
        let sig = k.sign_jws(b"msg").unwrap();
        assert_eq!(sig.len(), 96, "fixed-size P-384 signature");
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, k.public_key_raw())
            .verify(b"msg", &sig)
            .unwrap();
        assert!(SubjectPublicKeyInfo::from_der(k.public_key()).is_ok());
    }

    #[test]
    fn pkcs8_round_trip_and_wrong_type_rejected() {
        let k = SigningKey::generate("a", KeyType::EcP256).unwrap();
        let again =
            SigningKey::from_pkcs8("a", KeyType::EcP256, Zeroizing::new(k.pkcs8().to_vec()))
                .unwrap();
        assert_eq!(again.public_key(), k.public_key());
        let wrong =
            SigningKey::from_pkcs8("a", KeyType::EcP384, Zeroizing::new(k.pkcs8().to_vec()));
        assert!(matches!(wrong, Err(KeyManagerError::InvalidKey { .. })));
    }

    #[test]
    fn debug_hides_key_material() {
        let k = SigningKey::generate("x509-CA-A", KeyType::EcP256).unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains("x509-CA-A") && dbg.contains("EcP256"));
        assert!(!dbg.contains("pkcs8") && !dbg.contains("signer"), "{dbg}");
    }
}
