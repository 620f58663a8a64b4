//! Private keys from PEM in the three encodings SPIRE's `pemutil` reads (the upstream
//! authority's key file): PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`, P-256 or P-384) and
//! PKCS#1 (`RSA PRIVATE KEY`). Each comes out as PKCS#8 DER, the one form ring loads.

use p256::pkcs8::EncodePrivateKey as _;
use pkcs8::PrivateKeyInfo;
use pkcs8::der::Encode as _;
use pkcs8::der::asn1::AnyRef;
use pkcs8::spki::AlgorithmIdentifierRef;
use zeroize::Zeroizing;

use crate::key_manager::signer::OID_RSA_ENCRYPTION;

/// The first private key of a PEM text as PKCS#8 DER (other blocks, such as `EC PARAMETERS`
/// or certificates, are skipped). The error is for an operator and names what was found.
pub fn pkcs8_from_pem(text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    for block in blocks {
        let tag = block.tag().to_owned();
        let der = Zeroizing::new(block.into_contents());
        return match tag.as_str() {
            "PRIVATE KEY" => Ok(der),
            "EC PRIVATE KEY" => sec1_to_pkcs8(&der),
            "RSA PRIVATE KEY" => pkcs1_to_pkcs8(&der),
            "ENCRYPTED PRIVATE KEY" => Err(
                "the key is encrypted; decrypt it first (`openssl pkey -in <file> -out <file>`)"
                    .into(),
            ),
            _ => continue,
        };
    }
    Err("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block found".into())
}

/// SEC1 `ECPrivateKey` (RFC 5915) to PKCS#8, through RustCrypto's curve types so a key that
/// omits its public key or curve still converts.
fn sec1_to_pkcs8(der: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let encoded = if let Ok(key) = p256::SecretKey::from_sec1_der(der) {
        key.to_pkcs8_der()
    } else if let Ok(key) = p384::SecretKey::from_sec1_der(der) {
        key.to_pkcs8_der()
    } else {
        return Err("EC PRIVATE KEY is not a P-256 or P-384 SEC1 key".into());
    };
    let doc = encoded.map_err(|e| format!("EC PRIVATE KEY: {e}"))?;
    Ok(Zeroizing::new(doc.as_bytes().to_vec()))
}

/// PKCS#1 `RSAPrivateKey` to PKCS#8: the same bytes inside a `PrivateKeyInfo` naming
/// rsaEncryption (RFC 5208); ring checks the key itself when it loads it.
fn pkcs1_to_pkcs8(der: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let info = PrivateKeyInfo::new(
        AlgorithmIdentifierRef {
            oid: OID_RSA_ENCRYPTION,
            parameters: Some(AnyRef::NULL),
        },
        der,
    );
    let encoded = info.to_der().map_err(|e| format!("RSA PRIVATE KEY: {e}"))?;
    Ok(Zeroizing::new(encoded))
}

#[cfg(test)]
mod tests {
    use sigil_testkit::verify::openssl;

    use super::*;
    use crate::key_manager::{KeyAlgorithm, Signer};

    /// Runs openssl, which writes a key to `dir/key.pem`, and reads it back.
    fn openssl_key(dir: &std::path::Path, args: &[&str]) -> String {
        let out = dir.join("key.pem");
        let mut args = args.to_vec();
        args.splice(1..1, ["-out", out.to_str().unwrap()]);
        let (ok, text) = openssl(&args);
        assert!(ok, "{text}");
        std::fs::read_to_string(out).unwrap()
    }

    #[test]
    fn reads_pkcs8_sec1_and_pkcs1_keys_made_by_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[&str], &str, KeyAlgorithm); 6] = [
            (
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
                "BEGIN EC PRIVATE KEY",
                KeyAlgorithm::EcP256,
            ),
            // With the EC PARAMETERS block first, as `ecparam -genkey` writes by default.
            (
                &["ecparam", "-name", "secp384r1", "-genkey"],
                "BEGIN EC PARAMETERS",
                KeyAlgorithm::EcP384,
            ),
            (
                &["genrsa", "-traditional", "2048"],
                "BEGIN RSA PRIVATE KEY",
                KeyAlgorithm::Rsa(2048),
            ),
            (
                &["genrsa", "3072"],
                "BEGIN PRIVATE KEY",
                KeyAlgorithm::Rsa(3072),
            ),
            (
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ],
                "BEGIN PRIVATE KEY",
                KeyAlgorithm::EcP256,
            ),
            (
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ],
                "BEGIN PRIVATE KEY",
                KeyAlgorithm::EcP384,
            ),
        ];
        for (args, marker, algorithm) in cases {
            let pem = openssl_key(dir.path(), args);
            assert!(pem.contains(marker), "{args:?}: {pem}");
            let pkcs8 = pkcs8_from_pem(&pem).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let signer = Signer::from_pkcs8(&pkcs8).unwrap();
            assert_eq!(signer.algorithm(), algorithm, "{args:?}");
            // The public key is the one openssl derives from the same file.
            let (ok, spki_pem) = openssl(&[
                "pkey",
                "-in",
                dir.path().join("key.pem").to_str().unwrap(),
                "-pubout",
            ]);
            assert!(ok, "{spki_pem}");
            let spki = pem::parse(spki_pem).unwrap().into_contents();
            assert_eq!(signer.spki(), spki, "{args:?}");
        }
    }

    #[test]
    fn other_inputs_get_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let encrypted = openssl_key(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-aes256",
                "-pass",
                "pass:secret",
            ],
        );
        let e = pkcs8_from_pem(&encrypted).unwrap_err();
        assert!(e.contains("encrypted"), "{e}");
        let p521 = openssl_key(
            dir.path(),
            &["ecparam", "-name", "secp521r1", "-genkey", "-noout"],
        );
        let e = pkcs8_from_pem(&p521).unwrap_err();
        assert!(e.contains("P-256 or P-384"), "{e}");
        let e = pkcs8_from_pem("garbage").unwrap_err();
        assert!(e.contains("no PRIVATE KEY"), "{e}");
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(pkcs8_from_pem(cert_only).is_err());
        let bad_rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let pkcs8 = pkcs8_from_pem(bad_rsa).unwrap();
        assert!(Signer::from_pkcs8(&pkcs8).is_err());
    }
}
