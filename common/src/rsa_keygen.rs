//! RSA key generation for both binaries (the server's `rsa-*` CA and JWT keys, the agent's
//! `rsa-2048` workload keys). ring signs with RSA keys but cannot generate them, so RustCrypto's
//! `rsa` does, and only that: its private-key operations are not constant-time
//! (RUSTSEC-2023-0071, the Marvin attack), so the key leaves it at once as PKCS#8 and every
//! signature is made by ring.

use rsa::pkcs8::EncodePrivateKey as _;
use zeroize::Zeroizing;

/// Why an RSA key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("RSA key generation failed: {0}")]
pub struct RsaKeygenError(String);

/// A fresh RSA key of `bits` (public exponent 65537), PKCS#8 DER, wiped on drop. A 2048-bit
/// key takes tens of milliseconds, a 4096-bit one up to a few seconds.
pub fn generate_rsa_pkcs8(bits: usize) -> Result<Zeroizing<Vec<u8>>, RsaKeygenError> {
    // `RsaPrivateKey` zeroizes itself on drop, the PKCS#8 document too.
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| RsaKeygenError(e.to_string()))?;
    let doc = key
        .to_pkcs8_der()
        .map_err(|e| RsaKeygenError(e.to_string()))?;
    Ok(Zeroizing::new(doc.as_bytes().to_vec()))
}
