//! Key managers: where the CA's private keys live (SPIRE's `KeyManager` plugin).
//!
//! A [`KeyManager`] generates, fetches and lists keys by id; each key is a [`SigningKey`] that
//! signs with ring and shows its public key. Two implementations: [`memory::MemoryKeyManager`]
//! (keys die with the process) and [`disk::DiskKeyManager`] (SPIRE's `KeyManager "disk"`, one
//! JSON file, so the CA and the bundle survive a restart).

pub mod config;
pub mod disk;
pub mod memory;
pub mod pem_key;
pub mod signer;

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

pub use config::KeyManagerConfig;
pub use disk::DiskKeyManager;
pub use memory::MemoryKeyManager;
pub use sigil_common::key_type::KeyType;
pub use signer::{KeyAlgorithm, Signer};

/// Why a key could not be generated, loaded or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyManagerError {
    #[error(transparent)]
    Generate(#[from] sigil_common::key_type::KeyGenError),
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

/// What a configured key type is, as far as signing goes.
fn algorithm_of(key_type: KeyType) -> KeyAlgorithm {
    match key_type {
        KeyType::EcP256 => KeyAlgorithm::EcP256,
        KeyType::EcP384 => KeyAlgorithm::EcP384,
        KeyType::Rsa2048 => KeyAlgorithm::Rsa(2048),
        KeyType::Rsa4096 => KeyAlgorithm::Rsa(4096),
    }
}

/// Where the CA's keys live. `generate` replaces any key with the same id.
pub trait KeyManager: Send + Sync + fmt::Debug {
    fn generate(&self, id: &str, key_type: KeyType) -> Result<Arc<SigningKey>, KeyManagerError>;
    fn fetch(&self, id: &str) -> Result<Option<Arc<SigningKey>>, KeyManagerError>;
    fn list(&self) -> Result<Vec<String>, KeyManagerError>;
}

/// One private key of a key manager, ready to sign. The ring key pairs are built once here
/// because parsing PKCS#8 costs far more than a signature.
pub struct SigningKey {
    id: String,
    key_type: KeyType,
    /// Kept only so the disk key manager can persist the key; zeroized on drop.
    pkcs8: Zeroizing<Vec<u8>>,
    signer: Signer,
}

impl SigningKey {
    /// Generates a fresh key (an RSA-4096 key takes a second or more).
    pub fn generate(id: &str, key_type: KeyType) -> Result<Self, KeyManagerError> {
        Self::from_pkcs8(id, key_type, key_type.generate_pkcs8()?)
    }

    /// Loads a key from its PKCS#8 DER encoding; it must be of `key_type`.
    pub fn from_pkcs8(
        id: &str,
        key_type: KeyType,
        pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<Self, KeyManagerError> {
        let invalid = |reason: String| KeyManagerError::InvalidKey {
            id: id.to_owned(),
            key_type,
            reason,
        };
        let signer = Signer::from_pkcs8(&pkcs8).map_err(invalid)?;
        if signer.algorithm() != algorithm_of(key_type) {
            return Err(invalid(format!("the key is {:?}", signer.algorithm())));
        }
        Ok(Self {
            id: id.to_owned(),
            key_type,
            pkcs8,
            signer,
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
        self.signer.spki()
    }

    /// The SPKI's BIT STRING contents (an uncompressed EC point, or PKCS#1 `RSAPublicKey`).
    pub fn public_key_raw(&self) -> &[u8] {
        self.signer.public_key_raw()
    }

    /// The JWS `alg` of [`SigningKey::sign_jws`] (as SPIRE: ES256, ES384, RS256 for RSA).
    pub fn jws_alg(&self) -> &'static str {
        self.signer.jws_alg()
    }

    /// Signs `msg` in the JWS encoding of [`SigningKey::jws_alg`].
    pub fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        self.signer.sign_jws(msg).map_err(|_| KeyManagerError::Sign)
    }

    /// Signs `msg` in the X.509 encoding (ECDSA DER, or RSA PKCS#1 v1.5 with SHA-256).
    pub fn sign_x509(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        self.signer
            .sign_x509(msg)
            .map_err(|_| KeyManagerError::Sign)
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
        self.0.signer.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&self.0.signer)
    }
}

impl rcgen::SigningKey for RcgenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        rcgen::SigningKey::sign(&self.0.signer, msg)
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA256,
        UnparsedPublicKey,
    };
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    use x509_parser::x509::SubjectPublicKeyInfo;

    use super::*;

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
    fn rsa_keys_sign_rs256_and_sha256_with_rsa_under_their_spki() {
        let k = SigningKey::generate("r", KeyType::Rsa2048).unwrap();
        let (rest, spki) = SubjectPublicKeyInfo::from_der(k.public_key()).unwrap();
        assert!(rest.is_empty());
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            panic!("not an RSA SPKI");
        };
        assert_eq!(rsa.key_size(), 2048);
        assert_eq!(spki.subject_public_key.data.as_ref(), k.public_key_raw());
        assert_eq!(k.jws_alg(), "RS256");
        for sig in [k.sign_x509(b"msg").unwrap(), k.sign_jws(b"msg").unwrap()] {
            assert_eq!(sig.len(), 256);
            let pk = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k.public_key_raw());
            pk.verify(b"msg", &sig).unwrap();
            assert!(pk.verify(b"other", &sig).is_err());
        }
        let again =
            SigningKey::from_pkcs8("r", KeyType::Rsa2048, Zeroizing::new(k.pkcs8().to_vec()))
                .unwrap();
        assert_eq!(again.public_key(), k.public_key());
        for wrong in [KeyType::Rsa4096, KeyType::EcP256] {
            let e = SigningKey::from_pkcs8("r", wrong, Zeroizing::new(k.pkcs8().to_vec()));
            assert!(
                matches!(e, Err(KeyManagerError::InvalidKey { .. })),
                "{e:?}"
            );
        }
    }

    /// RSA-4096 generation is the slow one (run with `--nocapture` to see its time; the
    /// bignum crates are built at opt-level 3 even in debug builds, see Cargo.toml).
    #[test]
    fn rsa_4096_generates_in_reasonable_time() {
        let started = std::time::Instant::now();
        let k = SigningKey::generate("big", KeyType::Rsa4096).unwrap();
        let took = started.elapsed();
        println!("rsa-4096 keygen: {took:?}");
        let sig = k.sign_x509(b"msg").unwrap();
        assert_eq!(sig.len(), 512);
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k.public_key_raw())
            .verify(b"msg", &sig)
            .unwrap();
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
