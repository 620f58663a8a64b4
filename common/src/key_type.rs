//! Key types spelled as SPIRE's (the server's `ca_key_type` and `jwt_key_type`, the agent's
//! `workload_x509_svid_key_type`) and fresh private keys of each, as PKCS#8.
//!
//! EC keys come from ring. ring signs with RSA keys but cannot generate them, so RustCrypto's
//! `rsa` does, and only that: its private-key operations are not constant-time
//! (RUSTSEC-2023-0071, the Marvin attack), so the key leaves it at once as PKCS#8 and every
//! signature is made by ring.

use std::fmt;
use std::str::FromStr;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use rsa::pkcs8::EncodePrivateKey as _;
use zeroize::Zeroizing;

/// A key algorithm and size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ec-p256`: ECDSA over P-256 (SPIRE's default).
    #[default]
    EcP256,
    /// `ec-p384`: ECDSA over P-384.
    EcP384,
    /// `rsa-2048`: a 2048-bit RSA key.
    Rsa2048,
    /// `rsa-4096`: a 4096-bit RSA key.
    Rsa4096,
}

/// A key type SPIRE does not have; shows the spelling given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported key type {0:?} (supported: rsa-2048, rsa-4096, ec-p256, ec-p384)")]
pub struct UnsupportedKeyType(String);

/// Why a key could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("{key_type} key generation failed: {reason}")]
pub struct KeyGenError {
    key_type: KeyType,
    reason: String,
}

impl KeyType {
    /// SPIRE's spelling (`ec-p256`, `ec-p384`, `rsa-2048`, `rsa-4096`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// A fresh private key of this type, PKCS#8 DER, wiped on drop. EC keys and 2048-bit RSA
    /// keys take milliseconds to tens of milliseconds, a 4096-bit RSA key up to a few seconds.
    pub fn generate_pkcs8(self) -> Result<Zeroizing<Vec<u8>>, KeyGenError> {
        let failed = |reason: String| KeyGenError {
            key_type: self,
            reason,
        };
        let ec = |alg| {
            EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
                .map(|doc| Zeroizing::new(doc.as_ref().to_vec()))
                .map_err(|e| failed(e.to_string()))
        };
        let rsa = |bits| {
            // `RsaPrivateKey` zeroizes itself on drop, the PKCS#8 document too.
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| failed(e.to_string()))?;
            let doc = key.to_pkcs8_der().map_err(|e| failed(e.to_string()))?;
            Ok(Zeroizing::new(doc.as_bytes().to_vec()))
        };
        match self {
            Self::EcP256 => ec(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
            Self::EcP384 => ec(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
            Self::Rsa2048 => rsa(2048),
            Self::Rsa4096 => rsa(4096),
        }
    }
}

impl FromStr for KeyType {
    type Err = UnsupportedKeyType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa2048),
            "rsa-4096" => Ok(Self::Rsa4096),
            other => Err(UnsupportedKeyType(other.to_owned())),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spire_spellings_round_trip() {
        for t in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa4096,
        ] {
            assert_eq!(t.as_str().parse::<KeyType>(), Ok(t));
        }
        assert_eq!(KeyType::default(), KeyType::EcP256);
        for bad in ["rsa-3072", "rsa", "EC-P256", "ec-p521", ""] {
            let e = bad.parse::<KeyType>().unwrap_err();
            assert!(e.to_string().contains("rsa-2048, rsa-4096"), "{e}");
        }
    }

    #[test]
    fn generated_keys_are_pkcs8_of_the_type() {
        let rng = SystemRandom::new();
        let p256 = KeyType::EcP256.generate_pkcs8().unwrap();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &p256, &rng).unwrap();
        let p384 = KeyType::EcP384.generate_pkcs8().unwrap();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &p384, &rng).unwrap();
        let rsa = KeyType::Rsa2048.generate_pkcs8().unwrap();
        let pair = signature::RsaKeyPair::from_pkcs8(&rsa).unwrap();
        assert_eq!(pair.public().modulus_len(), 256);
    }
}
