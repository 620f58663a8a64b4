//! The agent's keys and their certificate signing requests: every key, the agent's own and each
//! workload's, is generated here and never leaves the agent; only its CSR goes to the server.
//! Beside node attestation, renewal and minting, which all send one. The agent's own key is
//! P-256; workload keys are of `workload_x509_svid_key_type` (SPIRE's name and values).

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("generating a key or CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Rsa(#[from] sigil_common::rsa_keygen::RsaKeygenError),
}

/// A workload X509-SVID key type (`workload_x509_svid_key_type`), spelled as SPIRE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    #[default]
    EcP256,
    EcP384,
    Rsa2048,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
        }
    }
}

impl FromStr for KeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa2048),
            other => Err(format!(
                "{other:?} is not a supported key type (expected rsa-2048, ec-p256 or ec-p384)"
            )),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fresh key of `key_type` (PKCS#8 DER, wiped on drop) and a PKCS#10 CSR (DER) for it. The
/// server takes only the public key from the CSR and sets the SPIFFE ID itself.
pub fn new_key_and_csr(key_type: KeyType) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CsrError> {
    let key = match key_type {
        KeyType::EcP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyType::EcP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
        // ring (rcgen's backend) signs with RSA keys but cannot make them.
        KeyType::Rsa2048 => {
            let pkcs8 = sigil_common::rsa_keygen::generate_rsa_pkcs8(2048)?;
            rcgen::KeyPair::try_from(pkcs8.as_slice())?
        }
    };
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_der()), csr.der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_parseable_and_key_is_of_the_type_asked() {
        use rcgen::PublicKeyData;
        for (key_type, alg) in [
            (KeyType::EcP256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (KeyType::EcP384, &rcgen::PKCS_ECDSA_P384_SHA384),
            (KeyType::Rsa2048, &rcgen::PKCS_RSA_SHA256),
        ] {
            let (key, csr) = new_key_and_csr(key_type).unwrap();
            let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr.into()).unwrap();
            let key = rcgen::KeyPair::try_from(key.as_slice()).unwrap();
            assert_eq!(parsed.public_key.der_bytes(), key.der_bytes(), "{key_type}");
            assert!(key.is_compatible(alg), "{key_type}");
        }
    }

    #[test]
    fn key_types_parse_spire_spellings() {
        for t in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            assert_eq!(t.as_str().parse::<KeyType>(), Ok(t));
        }
        assert_eq!(KeyType::default(), KeyType::EcP256);
        let e = "rsa-4096".parse::<KeyType>().unwrap_err();
        assert!(e.contains("rsa-2048, ec-p256 or ec-p384"), "{e}");
    }
}
