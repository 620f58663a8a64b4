//! Trust bundles and their wire formats: the SPIFFE bundle (a JWK Set with `use`,
//! `spiffe_sequence`, `spiffe_refresh_hint`; SPIFFE Trust Domain and Bundle §4) and the plain
//! JWKS the Workload API's FetchJWTBundles returns.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::trust_domain::TrustDomain;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// Why a bundle cannot be read from a SPIFFE bundle document, or written as one or as a JWKS.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The document is not JSON of a JWK Set's shape (or the JSON could not be written).
    #[error("bundle is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The document has no `keys` member, which every JWK Set must have.
    #[error("bundle has no \"keys\" member")]
    NoKeys,
    /// An `x509-svid` key does not hold exactly one certificate in `x5c`, as a SPIFFE bundle
    /// requires.
    #[error("x509-svid key must carry exactly one certificate in x5c")]
    X5cCount,
    /// An X.509 authority is not base64 (in `x5c`) or not a parsable DER certificate; holds the
    /// decoder's message.
    #[error("x509-svid certificate is not valid base64 DER: {0}")]
    X5cEncoding(String),
    /// A `jwt-svid` key has no `kid`, or an empty one: a SPIFFE bundle names every JWT key.
    #[error("jwt-svid key has no kid")]
    MissingKid,
    /// A public key that cannot be written as a JWK or rebuilt from one: neither EC P-256,
    /// EC P-384 nor RSA, a compressed EC point, or a malformed EC coordinate; holds which.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
}

/// A JWT signing key published in a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The key ID (`kid`) that JWT-SVIDs signed with this key carry in their header.
    pub key_id: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// Unix seconds after which the key no longer signs or validates; 0 when unknown.
    pub expires_at: i64,
    /// Tainted by the operator: still validates until revoked, but agents drop the JWT-SVIDs
    /// it signed. Never part of the SPIFFE bundle document.
    pub tainted: bool,
}

/// A trust domain's bundle: the CA certificates and JWT keys that validate its SVIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The trust domain whose SVIDs the bundle validates.
    pub trust_domain: TrustDomain,
    /// DER CA certificates (roots for our own trust domain).
    pub x509_authorities: Vec<Vec<u8>>,
    /// The keys that validate JWT-SVIDs, tainted ones included.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// The document's `spiffe_sequence`, its version number; 0 when a parsed document has none.
    pub sequence: u64,
    /// Seconds; how often federated consumers should re-fetch.
    pub refresh_hint: Option<u64>,
    /// DER CA certificates the operator tainted (`localauthority x509 taint`): those in
    /// `x509_authorities` stay trusted until revoked, but agents re-mint every SVID whose
    /// chain they signed. Never part of the SPIFFE bundle document.
    pub tainted_x509_authorities: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct JwkSet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<Jwk>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct Jwk {
    #[serde(default)]
    kty: String,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

/// Which JWK flavour to emit for a JWT key.
#[derive(Clone, Copy)]
enum JwtKeyStyle {
    /// SPIFFE bundle member: `use: jwt-svid`.
    SpiffeBundle,
    /// Plain JWKS as SPIRE's Workload API returns it: no `use`.
    Plain,
    /// OIDC discovery `/keys`: `use: sig` and `alg`.
    Oidc,
}

impl Bundle {
    /// An empty bundle for `trust_domain`: no authorities, sequence 0, no refresh hint.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
            tainted_x509_authorities: Vec::new(),
        }
    }

    /// The SPIFFE bundle document (SPIRE's serialization: x509 entries
    /// `{kty,crv,x,y,x5c,use}`, JWT entries `{kty,kid,crv,x,y,use}`).
    pub fn to_spiffe_json(&self) -> Result<String, BundleError> {
        let mut keys = Vec::new();
        for der in &self.x509_authorities {
            let (_, cert) = X509Certificate::from_der(der)
                .map_err(|e| BundleError::X5cEncoding(e.to_string()))?;
            let mut jwk = public_key_jwk(cert.public_key())?;
            jwk.use_ = Some("x509-svid".into());
            jwk.x5c = Some(vec![STANDARD.encode(der)]);
            keys.push(jwk);
        }
        keys.extend(self.jwt_jwks(JwtKeyStyle::SpiffeBundle)?);
        let set = JwkSet {
            keys: Some(keys),
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint,
        };
        Ok(serde_json::to_string_pretty(&set)?)
    }

    /// Parses a SPIFFE bundle document for `trust_domain`. JWKs with an unknown `use` or
    /// `kty` are skipped, as the spec requires; malformed known entries are errors.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &str) -> Result<Self, BundleError> {
        let set: JwkSet = serde_json::from_str(json)?;
        let keys = set.keys.ok_or(BundleError::NoKeys)?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence = set.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint = set.spiffe_refresh_hint;
        for jwk in keys {
            match jwk.use_.as_deref() {
                Some("x509-svid") => {
                    let x5c = jwk.x5c.unwrap_or_default();
                    if x5c.len() != 1 {
                        return Err(BundleError::X5cCount);
                    }
                    let der = STANDARD
                        .decode(&x5c[0])
                        .map_err(|e| BundleError::X5cEncoding(e.to_string()))?;
                    X509Certificate::from_der(&der)
                        .map_err(|e| BundleError::X5cEncoding(e.to_string()))?;
                    bundle.x509_authorities.push(der);
                }
                Some("jwt-svid") => {
                    let kid = jwk.kid.clone().filter(|k| !k.is_empty());
                    let kid = kid.ok_or(BundleError::MissingKid)?;
                    let Some(public_key) = jwk_to_spki(&jwk)? else {
                        continue;
                    };
                    bundle.jwt_authorities.push(JwtAuthority {
                        key_id: kid,
                        public_key,
                        expires_at: 0,
                        tainted: false,
                    });
                }
                _ => {}
            }
        }
        Ok(bundle)
    }

    /// Plain JWKS of the JWT keys only (Workload API FetchJWTBundles value).
    pub fn to_jwks_json(&self) -> Result<String, BundleError> {
        self.jwks(JwtKeyStyle::Plain)
    }

    /// JWKS for OIDC discovery (`use: sig`, `alg: ES256`).
    pub fn to_oidc_jwks_json(&self) -> Result<String, BundleError> {
        self.jwks(JwtKeyStyle::Oidc)
    }

    fn jwks(&self, style: JwtKeyStyle) -> Result<String, BundleError> {
        let set = JwkSet {
            keys: Some(self.jwt_jwks(style)?),
            spiffe_sequence: None,
            spiffe_refresh_hint: None,
        };
        Ok(serde_json::to_string(&set)?)
    }

    fn jwt_jwks(&self, style: JwtKeyStyle) -> Result<Vec<Jwk>, BundleError> {
        self.jwt_authorities
            .iter()
            .map(|a| {
                let (_, spki) = SubjectPublicKeyInfo::from_der(&a.public_key)
                    .map_err(|e| BundleError::UnsupportedKey(e.to_string()))?;
                let mut jwk = public_key_jwk(&spki)?;
                jwk.kid = Some(a.key_id.clone());
                match style {
                    JwtKeyStyle::SpiffeBundle => jwk.use_ = Some("jwt-svid".into()),
                    JwtKeyStyle::Plain => {}
                    JwtKeyStyle::Oidc => {
                        jwk.use_ = Some("sig".into());
                        jwk.alg = Some(jws_alg(&jwk).into());
                    }
                }
                Ok(jwk)
            })
            .collect()
    }

    /// The X.509 authorities concatenated as DER, the Workload API's bundle encoding.
    pub fn x509_authorities_concat(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// The X.509 authorities as PEM.
    pub fn x509_authorities_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect()
    }

    /// The JWT authority with key ID `key_id`, if the bundle holds one.
    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }
}

fn jws_alg(jwk: &Jwk) -> &'static str {
    match jwk.crv.as_deref() {
        Some("P-384") => "ES384",
        Some(_) => "ES256",
        None => "RS256",
    }
}

/// The public-key members of a JWK (`crv`/`x`/`y` or `n`/`e`) derived from an SPKI, so they
/// always match the certificate (go-jose rejects a set where they differ).
fn public_key_jwk(spki: &SubjectPublicKeyInfo<'_>) -> Result<Jwk, BundleError> {
    let alg = spki.algorithm.algorithm.to_id_string();
    let point = spki.subject_public_key.data.as_ref();
    if alg == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .unwrap_or_default();
        let (crv, len) = match curve.as_str() {
            OID_P256 => ("P-256", 32),
            OID_P384 => ("P-384", 48),
            other => return Err(BundleError::UnsupportedKey(format!("EC curve {other}"))),
        };
        if point.len() != 1 + 2 * len || point[0] != 4 {
            return Err(BundleError::UnsupportedKey(
                "EC point is not uncompressed".into(),
            ));
        }
        return Ok(Jwk {
            kty: "EC".into(),
            crv: Some(crv.into()),
            x: Some(URL_SAFE_NO_PAD.encode(&point[1..1 + len])),
            y: Some(URL_SAFE_NO_PAD.encode(&point[1 + len..])),
            ..Jwk::default()
        });
    }
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Ok(Jwk {
            kty: "RSA".into(),
            n: Some(URL_SAFE_NO_PAD.encode(trim_leading_zeros(rsa.modulus))),
            e: Some(URL_SAFE_NO_PAD.encode(trim_leading_zeros(rsa.exponent))),
            ..Jwk::default()
        }),
        _ => Err(BundleError::UnsupportedKey(format!("algorithm {alg}"))),
    }
}

fn trim_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[start..]
}

/// Rebuilds the SPKI DER of an EC or RSA JWK. Returns `Ok(None)` for key types we do not
/// verify with (they are skipped, as the spec says for unknown `kty`). Hand-written for EC
/// because the DER prefix for a named-curve EC key is a fixed byte string.
fn jwk_to_spki(jwk: &Jwk) -> Result<Option<Vec<u8>>, BundleError> {
    if jwk.kty == "RSA" {
        return rsa_jwk_to_spki(jwk).map(Some);
    }
    if jwk.kty != "EC" {
        return Ok(None);
    }
    let (prefix, len): (&[u8], usize) = match jwk.crv.as_deref() {
        Some("P-256") => (
            &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
            32,
        ),
        Some("P-384") => (
            &[
                0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
            ],
            48,
        ),
        _ => return Ok(None),
    };
    let coord = |c: &Option<String>| {
        let raw = URL_SAFE_NO_PAD
            .decode(c.as_deref().unwrap_or_default())
            .map_err(|e| BundleError::UnsupportedKey(format!("bad EC coordinate: {e}")))?;
        if raw.len() != len {
            return Err(BundleError::UnsupportedKey(
                "EC coordinate has the wrong length".into(),
            ));
        }
        Ok(raw)
    };
    let mut der = prefix.to_vec();
    der.push(4);
    der.extend(coord(&jwk.x)?);
    der.extend(coord(&jwk.y)?);
    Ok(Some(der))
}

/// The SPKI DER (rsaEncryption, NULL parameters, as X.509 and the server write it) of an RSA
/// JWK's `n` and `e` (RFC 7518 §6.3.1).
fn rsa_jwk_to_spki(jwk: &Jwk) -> Result<Vec<u8>, BundleError> {
    use rsa::pkcs8::EncodePublicKey as _;
    let member = |v: &Option<String>, name: &str| {
        URL_SAFE_NO_PAD
            .decode(v.as_deref().unwrap_or_default())
            .map_err(|e| BundleError::UnsupportedKey(format!("bad RSA {name}: {e}")))
    };
    let n = rsa::BigUint::from_bytes_be(&member(&jwk.n, "n")?);
    let e = rsa::BigUint::from_bytes_be(&member(&jwk.e, "e")?);
    let key = rsa::RsaPublicKey::new_with_max_size(n, e, 8192)
        .map_err(|e| BundleError::UnsupportedKey(format!("RSA key: {e}")))?;
    let der = key
        .to_public_key_der()
        .map_err(|e| BundleError::UnsupportedKey(format!("RSA key: {e}")))?;
    Ok(der.into_vec())
}

/// PEM-encodes one DER object with 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // A P-256 self-signed CA certificate and a P-256 SPKI, generated once with openssl.
    const CA_DER_B64: &str = "MIIBiDCCAS2gAwIBAgIUYBsLaRm8IqF3g5j9hWzat39mJOQwCgYIKoZIzj0EAwIwGTEXMBUGA1UEAwwOZXhhbXBsZS5vcmcgQ0EwHhcNMjYxMTIyMjAwNDE0WhcNMzYxMTE5MjAwNDE0WjAZMRcwFQYDVQQDDA5leGFtcGxlLm9yZyBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKRhwezhVDjuVxG3I9bwl9TyIkdaUluL86pKz57OazsLPPGhNUSUoFiJ6482PejpIIaiF3nPEoCzEW7JZ6YodSSjUzBRMB0GA1UdDgQWBBTQxPn8q09EZFHU0rF9dWO1wVyfKzAfBgNVHSMEGDAWgBTQxPn8q09EZFHU0rF9dWO1wVyfKzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDyoIla/Vh53Lj5fL0qAf8VMd5U6gR3z9ISUAtXxePwCgIhAKnSbrjoOSW3MiEOtERXu7pTcHeRMax9zqiM7tasojbp";

    fn ca_der() -> Vec<u8> {
        STANDARD.decode(CA_DER_B64).unwrap()
    }

    fn spki_of(der: &[u8]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        cert.public_key().raw.to_vec()
    }

    fn sample() -> Bundle {
        let der = ca_der();
        let spki = spki_of(&der);
        Bundle {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            x509_authorities: vec![der],
            jwt_authorities: vec![JwtAuthority {
                key_id: "kid1".into(),
                public_key: spki,
                expires_at: 0,
                tainted: false,
            }],
            sequence: 7,
            refresh_hint: Some(300),
            tainted_x509_authorities: Vec::new(),
        }
    }

    #[test]
    fn spiffe_bundle_round_trips() {
        let b = sample();
        let json = b.to_spiffe_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert_eq!(v["keys"][0]["kty"], "EC");
        assert_eq!(v["keys"][0]["crv"], "P-256");
        assert!(
            v["keys"][0].get("kid").is_none(),
            "x509 entries carry no kid"
        );
        assert_eq!(v["keys"][1]["use"], "jwt-svid");
        assert_eq!(v["keys"][1]["kid"], "kid1");
        let back = Bundle::from_spiffe_json(b.trust_domain.clone(), &json).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn plain_and_oidc_jwks() {
        let b = sample();
        let plain: serde_json::Value = serde_json::from_str(&b.to_jwks_json().unwrap()).unwrap();
        assert_eq!(plain["keys"].as_array().unwrap().len(), 1);
        assert!(plain["keys"][0].get("use").is_none());
        assert!(plain.get("spiffe_sequence").is_none());
        let oidc: serde_json::Value =
            serde_json::from_str(&b.to_oidc_jwks_json().unwrap()).unwrap();
        assert_eq!(oidc["keys"][0]["use"], "sig");
        assert_eq!(oidc["keys"][0]["alg"], "ES256");
    }

    #[test]
    fn parse_rules() {
        let td = TrustDomain::new("td").unwrap();
        assert!(matches!(
            Bundle::from_spiffe_json(td.clone(), "{}"),
            Err(BundleError::NoKeys)
        ));
        let empty = Bundle::from_spiffe_json(td.clone(), r#"{"keys":[]}"#).unwrap();
        assert!(empty.x509_authorities.is_empty());
        let unknown = r#"{"keys":[{"kty":"EC","use":"wit-svid","kid":"a"},{"kty":"OKP","use":"jwt-svid","kid":"b"}]}"#;
        let b = Bundle::from_spiffe_json(td.clone(), unknown).unwrap();
        assert!(
            b.jwt_authorities.is_empty(),
            "unknown use and kty are skipped"
        );
        let no_kid = r#"{"keys":[{"kty":"EC","use":"jwt-svid","crv":"P-256","x":"","y":""}]}"#;
        assert!(matches!(
            Bundle::from_spiffe_json(td.clone(), no_kid),
            Err(BundleError::MissingKid)
        ));
        let two = format!(
            r#"{{"keys":[{{"kty":"EC","use":"x509-svid","x5c":["{CA_DER_B64}","{CA_DER_B64}"]}}]}}"#
        );
        assert!(matches!(
            Bundle::from_spiffe_json(td, &two),
            Err(BundleError::X5cCount)
        ));
    }

    #[test]
    fn rsa_jwt_keys_round_trip_and_carry_rs256() {
        use rsa::pkcs8::EncodePublicKey as _;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap().into_vec();
        let mut b = sample();
        b.jwt_authorities[0].public_key = spki;
        let json = b.to_spiffe_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["keys"][1]["kty"], "RSA");
        assert_eq!(v["keys"][1]["e"], "AQAB");
        let back = Bundle::from_spiffe_json(b.trust_domain.clone(), &json).unwrap();
        assert_eq!(back, b, "the SPKI comes back byte for byte");
        let oidc: serde_json::Value =
            serde_json::from_str(&b.to_oidc_jwks_json().unwrap()).unwrap();
        assert_eq!(oidc["keys"][0]["alg"], "RS256");
        let bad = r#"{"keys":[{"kty":"RSA","use":"jwt-svid","kid":"k","n":"AQ","e":"AQAB"}]}"#;
        assert!(matches!(
            Bundle::from_spiffe_json(b.trust_domain.clone(), bad),
            Err(BundleError::UnsupportedKey(_))
        ));
    }

    #[test]
    fn pem() {
        let p = pem_encode("CERTIFICATE", &ca_der());
        assert!(p.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(p.lines().all(|l| l.len() <= 64));
    }
}
