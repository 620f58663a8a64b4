//! The agent's keys and their certificate signing requests: every key, the agent's own and each
//! workload's, is generated here and never leaves the agent; only its CSR goes to the server.
//! Beside node attestation, renewal and minting, which all send one. The agent's own key is
//! P-256; workload keys are of `workload_x509_svid_key_type` (SPIRE's name and values).

use sigil_common::key_type::KeyGenError;
pub use sigil_common::key_type::KeyType;
use zeroize::Zeroizing;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("generating a key or CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Key(#[from] KeyGenError),
}

/// `workload_x509_svid_key_type`: SPIRE's agent takes `rsa-2048`, `ec-p256` and `ec-p384`.
pub fn parse_workload_key_type(s: &str) -> Result<KeyType, String> {
    match s.parse::<KeyType>() {
        Ok(KeyType::Rsa4096) | Err(_) => Err(format!(
            "{s:?} is not a supported key type (expected rsa-2048, ec-p256 or ec-p384)"
        )),
        Ok(key_type) => Ok(key_type),
    }
}

/// A fresh key of `key_type` (PKCS#8 DER, wiped on drop) and a PKCS#10 CSR (DER) for it. The
/// server takes only the public key from the CSR and sets the SPIFFE ID itself.
pub fn new_key_and_csr(key_type: KeyType) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CsrError> {
    let pkcs8 = key_type.generate_pkcs8()?;
    let key = rcgen::KeyPair::try_from(pkcs8.as_slice())?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((pkcs8, csr.der().to_vec()))
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
    fn workload_key_types_are_spire_agent_s() {
        for t in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            assert_eq!(parse_workload_key_type(t.as_str()), Ok(t));
        }
        for bad in ["rsa-4096", "ec-p521"] {
            let e = parse_workload_key_type(bad).unwrap_err();
            assert!(e.contains("rsa-2048, ec-p256 or ec-p384"), "{e}");
        }
    }
}
