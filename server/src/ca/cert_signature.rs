//! Whether one certificate signed another, for the signature algorithms operators' CAs use:
//! ECDSA with SHA-256, SHA-384 or SHA-512, and RSA with PKCS#1 v1.5 or PSS (SHA-256/384/512).
//!
//! x509-parser (over ring) checks PKCS#1 v1.5 and ECDSA with SHA-256/384. Two cases it cannot
//! are checked with RustCrypto: ECDSA with SHA-512 (ring has no P-256/P-384 with SHA-512, and
//! SPIRE's own `dummy_upstream_ca.crt` is signed so), and RSA-PSS with the salt length the
//! certificate declares (ring takes only a salt as long as the hash, while OpenSSL signs with
//! the longest salt unless told otherwise). Both are public-key operations, so the timing
//! advisory of the `rsa` crate (RUSTSEC-2023-0071, private keys) does not concern them. SHA-1
//! signatures are refused, as Go's crypto/x509 refuses them.

use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::signature::Verifier as _;
use sha2::digest::FixedOutputReset;
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_NIST_EC_P384, OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384,
    OID_NIST_HASH_SHA512, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA,
    OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Whether `child` (DER) names `parent` (DER) as its issuer and verifies under its key.
pub(crate) fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, child)), Ok((_, parent))) = (
        X509Certificate::from_der(child),
        X509Certificate::from_der(parent),
    ) else {
        return false;
    };
    child.issuer() == parent.subject() && verifies(&child, parent.public_key())
}

fn verifies(cert: &X509Certificate<'_>, key: &SubjectPublicKeyInfo<'_>) -> bool {
    let alg = &cert.signature_algorithm;
    let tbs = cert.tbs_certificate.as_ref();
    let signature = cert.signature_value.data.as_ref();
    if alg.algorithm == OID_PKCS1_SHA1WITHRSA || alg.algorithm == OID_SHA1_WITH_RSA {
        false
    } else if alg.algorithm == OID_SIG_ECDSA_WITH_SHA512 {
        ecdsa_sha512(key, tbs, signature)
    } else if alg.algorithm == OID_PKCS1_RSASSAPSS {
        rsa_pss(cert, key, tbs, signature)
    } else {
        cert.verify_signature(Some(key)).is_ok()
    }
}

/// ECDSA over P-256 or P-384 with SHA-512 (the digest truncated to the curve's size, as
/// FIPS 186-4 says; the `ecdsa` crate does it).
fn ecdsa_sha512(key: &SubjectPublicKeyInfo<'_>, tbs: &[u8], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    let digest = Sha512::digest(tbs);
    let point = key.subject_public_key.data.as_ref();
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    match curve {
        Some(c) if c == OID_EC_P256 => {
            let (Ok(key), Ok(sig)) = (
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point),
                p256::ecdsa::Signature::from_der(signature),
            ) else {
                return false;
            };
            key.verify_prehash(&digest, &sig).is_ok()
        }
        Some(c) if c == OID_NIST_EC_P384 => {
            let (Ok(key), Ok(sig)) = (
                p384::ecdsa::VerifyingKey::from_sec1_bytes(point),
                p384::ecdsa::Signature::from_der(signature),
            ) else {
                return false;
            };
            key.verify_prehash(&digest, &sig).is_ok()
        }
        _ => false,
    }
}

/// RSASSA-PSS with the parameters the certificate declares: SHA-256/384/512, MGF1 over the
/// same hash, any salt length, the standard trailer.
fn rsa_pss(
    cert: &X509Certificate<'_>,
    key: &SubjectPublicKeyInfo<'_>,
    tbs: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(SignatureAlgorithm::RSASSA_PSS(params)) =
        SignatureAlgorithm::try_from(&cert.signature_algorithm)
    else {
        return false;
    };
    let hash = params.hash_algorithm_oid();
    let mgf_same_hash = params
        .mask_gen_algorithm()
        .is_ok_and(|mgf| mgf.hash == *hash);
    if !mgf_same_hash || params.trailer_field() != 1 {
        return false;
    }
    let Ok(key) = rsa::RsaPublicKey::from_pkcs1_der(key.subject_public_key.data.as_ref()) else {
        return false;
    };
    let Ok(signature) = rsa::pss::Signature::try_from(signature) else {
        return false;
    };
    let salt = params.salt_length() as usize;
    if *hash == OID_NIST_HASH_SHA256 {
        pss_verifies::<Sha256>(key, salt, tbs, &signature)
    } else if *hash == OID_NIST_HASH_SHA384 {
        pss_verifies::<Sha384>(key, salt, tbs, &signature)
    } else if *hash == OID_NIST_HASH_SHA512 {
        pss_verifies::<Sha512>(key, salt, tbs, &signature)
    } else {
        false
    }
}

fn pss_verifies<D: Digest + FixedOutputReset>(
    key: rsa::RsaPublicKey,
    salt: usize,
    msg: &[u8],
    signature: &rsa::pss::Signature,
) -> bool {
    rsa::pss::VerifyingKey::<D>::new_with_salt_len(key, salt)
        .verify(msg, signature)
        .is_ok()
}
