//! The agent's keys and their certificate signing requests: every key, the agent's own and each
//! workload's, is generated here (P-256) and never leaves the agent; only its CSR goes to the
//! server. Beside node attestation, renewal and minting, which all send one.

use zeroize::Zeroizing;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("generating a key or CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A fresh P-256 key (PKCS#8 DER, wiped on drop) and a PKCS#10 CSR (DER) for it. The server
/// takes only the public key from the CSR and sets the SPIFFE ID itself.
pub fn new_key_and_csr() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CsrError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_der()), csr.der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_parseable_and_key_is_p256() {
        use rcgen::PublicKeyData;
        let (key, csr) = new_key_and_csr().unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr.into()).unwrap();
        let key = rcgen::KeyPair::try_from(key.as_slice()).unwrap();
        assert_eq!(parsed.public_key.der_bytes(), key.der_bytes());
        assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
    }
}
