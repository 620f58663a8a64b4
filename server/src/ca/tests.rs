//! CA tests: the SVID profile checked with x509-parser and `openssl verify`, the CSR flow, JWT
//! validation with jsonwebtoken, rotation over a simulated clock, and restarts with both key
//! managers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

use super::*;
use crate::ca::rotation::AuthorityStatus;
use crate::key_manager::{DiskKeyManager, KeyType, MemoryKeyManager, SigningKey};
use sigil_proto::TrustDomain;
use sigil_proto::bundle::pem_encode;

impl Ca {
    /// Plans and applies every rotation step due at `now` at once (the run loop stores the
    /// journal in between: `crate::ca_store::commit`). The journal, when something changed.
    pub(crate) fn rotate(&self, now: SystemTime) -> Result<Option<CaJournal>, CaError> {
        self.plan_rotation(now)?
            .map(|pending| self.apply(pending).map(|((), journal)| journal))
            .transpose()
    }
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://example.org{path}")).unwrap()
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

/// A fixed start time for simulated clocks.
const T0: i64 = 1_800_000_000;

fn config(ca_ttl: u64) -> CaConfig {
    CaConfig {
        ca_ttl: Duration::from_secs(ca_ttl),
        ..CaConfig::new(td())
    }
}

fn memory_ca(config: CaConfig, now: SystemTime) -> Ca {
    Ca::new(config, Arc::new(MemoryKeyManager::new()), None, now)
        .unwrap()
        .0
}

fn workload_spki() -> Vec<u8> {
    SigningKey::generate("workload", KeyType::EcP256)
        .unwrap()
        .public_key()
        .to_vec()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("SKI present")
}

fn aki(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("AKI present")
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SAN present");
    san.value
        .general_names
        .iter()
        .filter_map(|n| {
            if let GeneralName::URI(u) = n {
                Some((*u).to_owned())
            } else {
                None
            }
        })
        .collect()
}

/// The bundle CA that issued `leaf` (by AKI), or panic.
fn issuing_ca(bundle: &Bundle, leaf: &[u8]) -> Vec<u8> {
    let want = aki(&parse(leaf));
    bundle
        .x509_authorities
        .iter()
        .find(|ca| ski(&parse(ca)) == want)
        .cloned()
        .expect("issuer in bundle")
}

fn openssl_verify(ca_der: &[u8], leaf_der: &[u8], extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&ca, pem_encode("CERTIFICATE", ca_der)).unwrap();
    std::fs::write(&leaf, pem_encode("CERTIFICATE", leaf_der)).unwrap();
    sigil_testkit::verify::openssl_verify(&ca, &leaf, extra)
}

#[test]
fn ca_certificate_profile() {
    let ca = memory_ca(config(86_400), at(T0));
    let bundle = ca.bundle();
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert_eq!(bundle.jwt_authorities.len(), 1);
    assert_eq!(bundle.sequence, 1);
    let cert = parse(&bundle.x509_authorities[0]);
    assert_eq!(cert.version(), X509Version::V3);
    assert_eq!(uri_sans(&cert), vec!["spiffe://example.org".to_owned()]);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(!ski(&cert).is_empty());
    assert_eq!(cert.validity().not_before.timestamp(), T0 - 10);
    assert_eq!(cert.validity().not_after.timestamp(), T0 + 86_400);
    let subject = cert.subject();
    let c: Vec<_> = subject
        .iter_country()
        .map(|a| a.as_str().unwrap())
        .collect();
    let o: Vec<_> = subject
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!((c, o), (vec!["US"], vec!["SPIFFE"]));
    let serial_attr = subject
        .iter_attributes()
        .find(|a| a.attr_type().to_id_string() == "2.5.4.5")
        .expect("serialNumber attribute");
    assert_eq!(serial_attr.as_str().unwrap(), cert.serial.to_string());
    cert.verify_signature(None).expect("self-signed");
}

#[test]
fn x509_svid_profile() {
    let ca = memory_ca(config(86_400), at(T0));
    let spki = workload_spki();
    let dns = vec!["db.example.org".to_owned(), "db".to_owned()];
    let now = at(T0 + 100);
    let svid = ca
        .sign_x509_svid_at(now, &id("/db"), &spki, Some(Duration::from_secs(600)), &dns)
        .unwrap();
    assert_eq!(svid.chain.len(), 1);
    assert_eq!(svid.expires_at, T0 + 700);
    let leaf = parse(&svid.chain[0]);
    let ca_der = &ca.bundle().x509_authorities[0];
    let ca_cert = parse(ca_der);

    assert_eq!(leaf.version(), X509Version::V3);
    assert_eq!(leaf.public_key().raw, spki.as_slice());
    assert_eq!(
        uri_sans(&leaf),
        vec!["spiffe://example.org/db".to_owned()],
        "one URI SAN"
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let dns_sans: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| {
            if let GeneralName::DNSName(d) = n {
                Some(*d)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(dns_sans, vec!["db.example.org", "db"]);
    let cn: Vec<_> = leaf
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, vec!["db.example.org"], "first DNS name is the CN");
    let o: Vec<_> = leaf
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(o, vec!["SPIRE"]);

    let bc = leaf.basic_constraints().unwrap().expect("BC present");
    assert!(bc.critical && !bc.value.ca);
    let ku = leaf.key_usage().unwrap().expect("KU present");
    assert!(ku.critical && ku.value.digital_signature());
    assert!(ku.value.key_encipherment() && ku.value.key_agreement());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!ski(&leaf).is_empty());
    assert_eq!(aki(&leaf), ski(&ca_cert), "AKI is the CA's SKI");
    assert_eq!(leaf.issuer(), ca_cert.subject());

    assert_eq!(
        leaf.validity().not_before.timestamp(),
        T0 + 90,
        "backdated 10 s"
    );
    assert_eq!(leaf.validity().not_after.timestamp(), T0 + 700);
    assert_eq!(
        svid.serial,
        hex::encode(leaf.tbs_certificate.raw_serial()).trim_start_matches("00")
    );
    assert!(
        leaf.tbs_certificate.raw_serial().len() >= 15,
        "128-bit random serial"
    );

    leaf.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the CA");

    // NotAfter is capped by the CA's NotAfter.
    let late = ca
        .sign_x509_svid_at(
            at(T0 + 86_000),
            &id("/db"),
            &spki,
            Some(Duration::from_secs(3600)),
            &[],
        )
        .unwrap();
    assert_eq!(late.expires_at, T0 + 86_400);
    assert_eq!(
        parse(&late.chain[0]).validity().not_after.timestamp(),
        T0 + 86_400
    );
    // Default TTL is x509_svid_ttl (1 h); no DNS names → no CN.
    let default = ca
        .sign_x509_svid_at(now, &id("/db"), &spki, None, &[])
        .unwrap();
    assert_eq!(default.expires_at, T0 + 100 + 3600);
    assert_eq!(
        parse(&default.chain[0])
            .subject()
            .iter_common_name()
            .count(),
        0
    );
    assert_ne!(default.serial, svid.serial);
}

#[test]
fn svid_passes_openssl_strict_verification() {
    for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let ca = memory_ca(
            CaConfig {
                key_type,
                ..config(86_400)
            },
            SystemTime::now(),
        );
        let svid = ca
            .sign_x509_svid(&id("/web"), &workload_spki(), None, &["web.local".into()])
            .unwrap();
        let ca_der = &ca.bundle().x509_authorities[0];
        for purpose in [
            &[][..],
            &["-purpose", "sslserver"],
            &["-purpose", "sslclient"],
        ] {
            let (ok, out) = openssl_verify(ca_der, &svid.chain[0], purpose);
            assert!(ok, "{key_type} {purpose:?}: {out}");
        }
        // And the check can fail: a leaf from another CA does not verify.
        let other = memory_ca(config(86_400), SystemTime::now());
        let (ok, _) = openssl_verify(&other.bundle().x509_authorities[0], &svid.chain[0], &[]);
        assert!(!ok);
    }
}

#[test]
fn server_svid_has_the_server_id() {
    let ca = memory_ca(config(86_400), SystemTime::now());
    let svid = ca
        .sign_server_svid(&workload_spki(), &["sigil-server".into()])
        .unwrap();
    assert_eq!(
        uri_sans(&parse(&svid.chain[0])),
        vec!["spiffe://example.org/spire/server"]
    );
}

#[test]
fn refuses_foreign_or_pathless_ids() {
    let ca = memory_ca(config(86_400), SystemTime::now());
    let spki = workload_spki();
    let foreign = SpiffeId::new("spiffe://other.org/db").unwrap();
    assert!(matches!(
        ca.sign_x509_svid(&foreign, &spki, None, &[]),
        Err(CaError::ForeignTrustDomain { .. })
    ));
    let root = SpiffeId::new("spiffe://example.org").unwrap();
    assert!(matches!(
        ca.sign_x509_svid(&root, &spki, None, &[]),
        Err(CaError::NoPath(_))
    ));
    assert!(matches!(
        ca.sign_jwt_svid(&foreign, &["a".into()], None),
        Err(CaError::ForeignTrustDomain { .. })
    ));
    assert!(matches!(
        ca.sign_jwt_svid(&root, &["a".into()], None),
        Err(CaError::NoPath(_))
    ));
    assert!(matches!(
        ca.sign_x509_svid(&id("/db"), b"not a key", None, &[]),
        Err(CaError::InvalidPublicKey(_))
    ));
    assert!(matches!(
        ca.sign_x509_svid(&id("/db"), &spki, None, &["bad\u{e9}".into()]),
        Err(CaError::InvalidDnsName(_))
    ));
}

fn csr(uri_san: Option<&str>, dns: &[&str]) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    if let Some(uri) = uri_san {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    (der, key)
}

#[test]
fn csr_flow() {
    let ca = memory_ca(config(86_400), SystemTime::now());
    let ca_der = ca.bundle().x509_authorities[0].clone();

    // Requested DNS names are ignored; the public key is the CSR's.
    let (der, key) = csr(None, &["evil.example.com"]);
    let svid = ca.sign_x509_svid_csr(&der, &id("/w"), None, &[]).unwrap();
    let leaf = parse(&svid.chain[0]);
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key)
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names.len(),
        1,
        "only the server-chosen URI SAN"
    );
    assert!(openssl_verify(&ca_der, &svid.chain[0], &[]).0);

    // A URI SAN equal to the ID is fine.
    let (der, _) = csr(Some("spiffe://example.org/w"), &[]);
    assert!(ca.sign_x509_svid_csr(&der, &id("/w"), None, &[]).is_ok());

    // A different URI SAN is refused.
    let (der, _) = csr(Some("spiffe://example.org/admin"), &[]);
    assert!(matches!(
        ca.sign_x509_svid_csr(&der, &id("/w"), None, &[]),
        Err(CaError::CsrIdMismatch { .. })
    ));

    // A broken signature is refused: flip a bit in the last byte (inside the signature).
    let (mut der, _) = csr(None, &[]);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert!(matches!(
        ca.sign_x509_svid_csr(&der, &id("/w"), None, &[]),
        Err(CaError::CsrSignature)
    ));

    assert!(matches!(
        ca.sign_x509_svid_csr(b"\x30\x03garbage", &id("/w"), None, &[]),
        Err(CaError::CsrMalformed(_))
    ));
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    aud: serde_json::Value,
    exp: i64,
    iat: i64,
    iss: Option<String>,
}

/// Validates `token` with jsonwebtoken against the bundle's JWKS key with the token's `kid`.
fn validate_jwt(bundle: &Bundle, token: &str, audience: &str) -> jsonwebtoken::TokenData<Claims> {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().expect("kid set");
    let jwks: JwkSet = serde_json::from_str(&bundle.to_jwks_json().unwrap()).unwrap();
    let jwk = jwks.find(&kid).expect("kid in bundle");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(token, &key, &validation).unwrap()
}

#[test]
fn jwt_svid_validates_with_jsonwebtoken() {
    let ca = memory_ca(config(86_400), SystemTime::now());
    let aud = vec!["svc-a".to_owned(), "svc-b".to_owned()];
    let svid = ca.sign_jwt_svid(&id("/client"), &aud, None).unwrap();
    let data = validate_jwt(&ca.bundle(), &svid.token, "svc-b");
    assert_eq!(data.header.alg, Algorithm::ES256);
    assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    assert_eq!(data.claims.sub, "spiffe://example.org/client");
    assert_eq!(
        data.claims.aud,
        serde_json::json!(["svc-a", "svc-b"]),
        "array, in order"
    );
    assert_eq!(data.claims.exp, svid.expires_at);
    assert_eq!(data.claims.exp - data.claims.iat, 300, "default 5 min");
    assert!(data.claims.iss.is_none());
    assert!(
        !format!("{svid:?}").contains(&svid.token),
        "Debug hides the token"
    );

    // A single audience is still an array; the header carries exactly alg, kid, typ.
    let one = ca
        .sign_jwt_svid(&id("/client"), &["x".into()], None)
        .unwrap();
    assert_eq!(
        validate_jwt(&ca.bundle(), &one.token, "x").claims.aud,
        serde_json::json!(["x"])
    );
    let header_json = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        one.token.split('.').next().unwrap(),
    )
    .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header_json).unwrap();
    assert_eq!(header.as_object().unwrap().len(), 3);

    // Tampering breaks the signature.
    let mut parts: Vec<String> = one.token.split('.').map(str::to_owned).collect();
    parts[1] = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        br#"{"sub":"spiffe://example.org/admin","aud":["x"],"exp":9999999999,"iat":0}"#,
    );
    let forged = parts.join(".");
    let header = jsonwebtoken::decode_header(&forged).unwrap();
    let jwks: JwkSet = serde_json::from_str(&ca.bundle().to_jwks_json().unwrap()).unwrap();
    let key = DecodingKey::from_jwk(jwks.find(&header.kid.unwrap()).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["x"]);
    assert!(jsonwebtoken::decode::<Claims>(&forged, &key, &v).is_err());

    assert!(matches!(
        ca.sign_jwt_svid(&id("/c"), &[], None),
        Err(CaError::EmptyAudience)
    ));
}

#[test]
fn rsa_keys_sign_sha256_with_rsa_certificates_and_rs256_tokens() {
    let cfg = CaConfig {
        key_type: KeyType::Rsa2048,
        jwt_key_type: KeyType::Rsa2048,
        ..config(86_400)
    };
    let ca = memory_ca(cfg, SystemTime::now());
    let ca_der = ca.bundle().x509_authorities[0].clone();
    let ca_cert = parse(&ca_der);
    assert_eq!(
        ca_cert.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.11",
        "sha256WithRSAEncryption, as SPIRE's CA signs with RSA keys"
    );
    let svid = ca
        .sign_x509_svid(&id("/web"), &workload_spki(), None, &[])
        .unwrap();
    parse(&svid.chain[0])
        .verify_signature(Some(ca_cert.public_key()))
        .unwrap();

    let jwt = ca.sign_jwt_svid(&id("/c"), &["a".into()], None).unwrap();
    let data = validate_jwt(&ca.bundle(), &jwt.token, "a");
    assert_eq!(data.header.alg, Algorithm::RS256);
    let jwks: serde_json::Value =
        serde_json::from_str(&ca.bundle().to_jwks_json().unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(jwks["keys"][0]["e"], "AQAB");
    // And the check can fail: a token signed by another RSA CA does not validate here.
    let other = memory_ca(
        CaConfig {
            jwt_key_type: KeyType::Rsa2048,
            ..config(86_400)
        },
        SystemTime::now(),
    );
    let foreign = other.sign_jwt_svid(&id("/c"), &["a".into()], None).unwrap();
    let jwks: JwkSet = serde_json::from_str(&ca.bundle().to_jwks_json().unwrap()).unwrap();
    let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    assert!(
        jsonwebtoken::decode::<Claims>(&foreign.token, &key, &Validation::new(Algorithm::RS256))
            .is_err()
    );
}

#[test]
fn jwt_key_type_is_independent_of_the_ca_key_type() {
    let cfg = CaConfig {
        key_type: KeyType::EcP384,
        jwt_key_type: KeyType::Rsa2048,
        ..config(86_400)
    };
    let ca = memory_ca(cfg, SystemTime::now());
    let ca_der = ca.bundle().x509_authorities[0].clone();
    assert_eq!(
        parse(&ca_der).signature_algorithm.algorithm.to_id_string(),
        "1.2.840.10045.4.3.3",
        "ecdsa-with-SHA384"
    );
    let jwt = ca.sign_jwt_svid(&id("/c"), &["a".into()], None).unwrap();
    assert_eq!(
        validate_jwt(&ca.bundle(), &jwt.token, "a").header.alg,
        Algorithm::RS256
    );
}

#[test]
fn jwt_svid_es384_issuer_and_expiry_cap() {
    let cfg = CaConfig {
        key_type: KeyType::EcP384,
        jwt_key_type: KeyType::EcP384,
        jwt_issuer: Some("https://oidc.example.org".into()),
        ..config(86_400)
    };
    let ca = memory_ca(cfg, SystemTime::now());
    let svid = ca.sign_jwt_svid(&id("/c"), &["a".into()], None).unwrap();
    let data = validate_jwt(&ca.bundle(), &svid.token, "a");
    assert_eq!(data.header.alg, Algorithm::ES384);
    assert_eq!(data.claims.iss.as_deref(), Some("https://oidc.example.org"));

    // exp never outlives the JWT key.
    let ca = memory_ca(config(86_400), at(T0));
    let key_expiry = ca.bundle().jwt_authorities[0].expires_at;
    assert_eq!(key_expiry, T0 + 86_400);
    let capped = ca
        .sign_jwt_svid_at(
            at(T0 + 86_300),
            &id("/c"),
            &["a".into()],
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    assert_eq!(capped.expires_at, key_expiry);
}

#[test]
fn rotation_prepares_activates_and_prunes() {
    let ca = memory_ca(config(60), at(T0));
    let mut updates = ca.subscribe();
    let spki = workload_spki();
    let first = ca.bundle();
    let first_ca = first.x509_authorities[0].clone();
    let first_kid = first.jwt_authorities[0].key_id.clone();
    assert_eq!(ca.next_rotation_check(at(T0)), at(T0 + 30));
    assert!(ca.rotate(at(T0 + 29)).unwrap().is_none(), "nothing due yet");
    assert!(!updates.has_changed().unwrap());

    // T0+30: the next CA and JWT key are prepared and published before they sign.
    let journal = ca.rotate(at(T0 + 30)).unwrap().expect("prepared");
    assert!(updates.has_changed().unwrap());
    let prepared = updates.borrow_and_update().clone();
    assert_eq!(prepared.sequence, first.sequence + 1);
    assert_eq!(prepared.x509_authorities.len(), 2);
    assert_eq!(prepared.jwt_authorities.len(), 2);
    let statuses: Vec<_> = journal.x509_authorities.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        vec![AuthorityStatus::Active, AuthorityStatus::Prepared]
    );
    assert_ne!(
        journal.x509_authorities[0].key_id,
        journal.x509_authorities[1].key_id
    );
    let second_ca = prepared.x509_authorities[1].clone();
    let svid = ca
        .sign_x509_svid_at(at(T0 + 31), &id("/w"), &spki, None, &[])
        .unwrap();
    assert_eq!(
        issuing_ca(&prepared, &svid.chain[0]),
        first_ca,
        "prepared CA signs nothing"
    );
    assert_eq!(svid.expires_at, T0 + 60, "capped by the active CA");
    let jwt = ca
        .sign_jwt_svid_at(at(T0 + 31), &id("/w"), &["a".into()], None)
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&jwt.token)
            .unwrap()
            .kid
            .unwrap(),
        first_kid
    );
    assert_eq!(ca.next_rotation_check(at(T0 + 30)), at(T0 + 50));

    // T0+50: the prepared ones become active; the old CA stays in the bundle.
    ca.rotate(at(T0 + 50)).unwrap().expect("activated");
    let active = ca.bundle();
    assert_eq!(active.sequence, prepared.sequence + 1);
    assert_eq!(
        active.x509_authorities,
        vec![first_ca.clone(), second_ca.clone()]
    );
    // The old JWT key stays published until its tokens (capped at its expiry) have expired.
    assert_eq!(
        active.jwt_authorities, prepared.jwt_authorities,
        "JWT keys published across activation"
    );
    let svid = ca
        .sign_x509_svid_at(at(T0 + 51), &id("/w"), &spki, None, &[])
        .unwrap();
    assert_eq!(
        issuing_ca(&active, &svid.chain[0]),
        second_ca,
        "new SVIDs chain to the new CA"
    );
    let jwt = ca
        .sign_jwt_svid_at(at(T0 + 51), &id("/w"), &["a".into()], None)
        .unwrap();
    assert_ne!(
        jsonwebtoken::decode_header(&jwt.token)
            .unwrap()
            .kid
            .unwrap(),
        first_kid
    );
    assert_eq!(ca.next_rotation_check(at(T0 + 50)), at(T0 + 60));

    // T0+59: the old CA is still there; T0+60: it expired and is pruned. The new active
    // (issued at T0+30) reaches its own prepare threshold at the same moment.
    assert!(ca.rotate(at(T0 + 59)).unwrap().is_none());
    let journal = ca.rotate(at(T0 + 60)).unwrap().expect("pruned");
    let bundle = ca.bundle();
    assert!(!bundle.x509_authorities.contains(&first_ca));
    assert!(bundle.x509_authorities.contains(&second_ca));
    assert!(bundle.jwt_authorities.iter().all(|a| a.key_id != first_kid));
    assert!(
        journal
            .x509_authorities
            .iter()
            .all(|a| a.not_after > T0 + 60)
    );
    // The third CA reuses the first one's key slot: the keys file holds two CA keys at most.
    assert_eq!(journal.x509_authorities[1].key_id, "x509-CA-A");
}

#[test]
fn rotation_after_long_downtime_starts_over() {
    let (ca, journal) =
        Ca::new(config(60), Arc::new(MemoryKeyManager::new()), None, at(T0)).unwrap();
    let km = Arc::new(MemoryKeyManager::new());
    drop(ca);
    // Far past every expiry: everything is pruned and a fresh CA is active.
    let (ca, journal2) = Ca::new(config(60), km, Some(journal.clone()), at(T0 + 10_000)).unwrap();
    assert_eq!(journal2.x509_authorities.len(), 1);
    assert_eq!(journal2.x509_authorities[0].status, AuthorityStatus::Active);
    assert!(ca.bundle().sequence > journal.bundle_sequence);
    assert!(
        ca.sign_x509_svid_at(at(T0 + 10_001), &id("/w"), &workload_spki(), None, &[])
            .is_ok()
    );
}

#[test]
fn disk_key_manager_restart_resumes_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("data/keys.json");
    let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
    let (ca, journal) = Ca::new(config(86_400), km, None, at(T0)).unwrap();
    let journal = ca.rotate(at(T0 + 43_200)).unwrap().unwrap_or(journal); // a prepared CA too
    let bundle = ca.bundle();
    assert_eq!(bundle.x509_authorities.len(), 2);
    let bytes = journal.to_bytes().unwrap();
    drop(ca);

    let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
    let journal = CaJournal::from_bytes(&bytes).unwrap();
    let (ca, journal2) =
        Ca::new(config(86_400), km, Some(journal.clone()), at(T0 + 43_201)).unwrap();
    assert_eq!(*ca.bundle(), *bundle, "same bundle, same sequence");
    assert_eq!(journal2, journal);
    let svid = ca
        .sign_x509_svid_at(at(T0 + 43_202), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(
        issuing_ca(&bundle, &svid.chain[0]),
        bundle.x509_authorities[0]
    );
    // The resumed prepared CA is activated on schedule.
    ca.rotate(at(T0 + 86_400 - 14_400))
        .unwrap()
        .expect("activated");
    let svid = ca
        .sign_x509_svid_at(at(T0 + 72_001), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(
        issuing_ca(&bundle, &svid.chain[0]),
        bundle.x509_authorities[1]
    );
}

#[test]
fn memory_key_manager_restart_keeps_old_ca_and_activates_a_new_one() {
    let (ca, journal) = Ca::new(
        config(86_400),
        Arc::new(MemoryKeyManager::new()),
        None,
        at(T0),
    )
    .unwrap();
    let old_bundle = ca.bundle();
    drop(ca);

    let (ca, journal2) = Ca::new(
        config(86_400),
        Arc::new(MemoryKeyManager::new()),
        Some(journal),
        at(T0 + 100),
    )
    .unwrap();
    let bundle = ca.bundle();
    assert!(bundle.sequence > old_bundle.sequence);
    assert_eq!(bundle.x509_authorities.len(), 2);
    assert_eq!(
        bundle.x509_authorities[0], old_bundle.x509_authorities[0],
        "old CA kept"
    );
    assert_eq!(
        bundle.jwt_authorities[0], old_bundle.jwt_authorities[0],
        "old JWT key kept"
    );
    let statuses: Vec<_> = journal2.x509_authorities.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        vec![AuthorityStatus::Old, AuthorityStatus::Active]
    );
    let svid = ca
        .sign_x509_svid_at(at(T0 + 101), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(
        issuing_ca(&bundle, &svid.chain[0]),
        bundle.x509_authorities[1],
        "new CA signs"
    );
    let jwt = ca
        .sign_jwt_svid_at(at(T0 + 101), &id("/w"), &["a".into()], None)
        .unwrap();
    let kid = jsonwebtoken::decode_header(&jwt.token)
        .unwrap()
        .kid
        .unwrap();
    assert_eq!(kid, bundle.jwt_authorities[1].key_id);
    // The old ones leave the bundle when they expire.
    ca.rotate(at(T0 + 86_400)).unwrap().expect("pruned");
    assert!(
        !ca.bundle()
            .x509_authorities
            .contains(&old_bundle.x509_authorities[0])
    );
}

#[test]
fn debug_output_has_no_key_material() {
    let ca = memory_ca(config(86_400), SystemTime::now());
    let dbg = format!("{ca:?}");
    assert!(dbg.contains("example.org"), "{dbg}");
    assert!(!dbg.to_lowercase().contains("pkcs8"), "{dbg}");
}

#[test]
fn ca_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ca>();
    let ca = Arc::new(memory_ca(config(86_400), SystemTime::now()));
    let spki = workload_spki();
    std::thread::scope(|s| {
        for i in 0..4 {
            let (ca, spki) = (Arc::clone(&ca), spki.clone());
            s.spawn(move || {
                for j in 0..50 {
                    ca.sign_x509_svid(&id(&format!("/t{i}/{j}")), &spki, None, &[])
                        .unwrap();
                    ca.sign_jwt_svid(&id(&format!("/t{i}")), &["a".into()], None)
                        .unwrap();
                }
            });
        }
    });
}

/// Rough signing rates; run with `cargo test -p sigil-server --release --lib signing_rate --
/// --ignored --nocapture`. Prints, asserts nothing about speed.
#[test]
#[ignore]
fn signing_rate() {
    let ca = memory_ca(config(86_400), SystemTime::now());
    let spki = workload_spki();
    let n = 5_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        ca.sign_x509_svid(&id("/w"), &spki, None, &[]).unwrap();
    }
    let x509 = f64::from(n) / start.elapsed().as_secs_f64();
    let (csr_der, _) = csr(None, &[]);
    let start = std::time::Instant::now();
    for _ in 0..n {
        ca.sign_x509_svid_csr(&csr_der, &id("/w"), None, &[])
            .unwrap();
    }
    let csr_rate = f64::from(n) / start.elapsed().as_secs_f64();
    let aud = vec!["a".to_owned()];
    let start = std::time::Instant::now();
    for _ in 0..n {
        ca.sign_jwt_svid(&id("/w"), &aud, None).unwrap();
    }
    let jwt = f64::from(n) / start.elapsed().as_secs_f64();
    println!("x509 {x509:.0}/s, csr {csr_rate:.0}/s, jwt {jwt:.0}/s");
}

#[test]
fn zero_ca_ttl_is_refused() {
    let err = Ca::new(config(0), Arc::new(MemoryKeyManager::new()), None, at(T0)).unwrap_err();
    assert!(matches!(err, CaError::InvalidConfig(_)));
}

// UpstreamAuthority "disk": the CA is an intermediate of the operator's root.

use crate::ca::upstream::tests::{TestCa, test_ca, write_files};
use crate::ca::upstream::{UpstreamAuthority, UpstreamDiskConfig};

const YEAR: i64 = 365 * 86_400;

fn upstream_config(ca_ttl: u64, upstream: &UpstreamDiskConfig, now: i64) -> CaConfig {
    CaConfig {
        upstream: Some(Arc::new(UpstreamAuthority::load(upstream, now).unwrap())),
        ..config(ca_ttl)
    }
}

fn root_files(dir: &std::path::Path, not_after: i64) -> (TestCa, UpstreamDiskConfig) {
    let root = test_ca("operator root", None, T0 - 100, not_after, true);
    let files = write_files(dir, &root.cert_pem, &root.key_pem, None);
    (root, files)
}

/// `openssl verify -x509_strict -CAfile root -untrusted <chain[1..]> chain[0]`.
fn openssl_verify_chain(root_der: &[u8], chain: &[Vec<u8>], attime: i64) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let untrusted = dir.path().join("untrusted.pem");
    let pems: String = chain[1..]
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    std::fs::write(&untrusted, pems).unwrap();
    let untrusted = untrusted.to_str().unwrap().to_owned();
    let attime = attime.to_string();
    openssl_verify(
        root_der,
        &chain[0],
        &["-attime", &attime, "-untrusted", &untrusted],
    )
}

#[test]
fn upstream_chain_shape_and_bundle_content() {
    let dir = tempfile::tempdir().unwrap();
    let (root, files) = root_files(dir.path(), T0 + YEAR);
    let ca = memory_ca(upstream_config(86_400, &files, T0), at(T0));
    let bundle = ca.bundle();
    assert_eq!(bundle.x509_authorities, vec![root.der()], "the root only");
    assert_eq!(bundle.jwt_authorities.len(), 1);

    let svid = ca
        .sign_x509_svid_at(at(T0 + 1), &id("/web"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(svid.chain.len(), 2, "leaf + intermediate");
    let root_der = root.der();
    let root_cert = parse(&root_der);
    let inter = parse(&svid.chain[1]);
    let leaf = parse(&svid.chain[0]);

    // The intermediate: SPIRE's CA profile, issued by the root.
    let bc = inter.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = inter.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert_eq!(uri_sans(&inter), vec!["spiffe://example.org".to_owned()]);
    assert_eq!(aki(&inter), ski(&root_cert), "AKI = upstream SKI");
    assert_eq!(inter.issuer(), root_cert.subject());
    inter
        .verify_signature(Some(root_cert.public_key()))
        .expect("signed by the root");
    assert_eq!(inter.validity().not_after.timestamp(), T0 + 86_400);
    // The leaf: issued by the intermediate.
    assert_eq!(aki(&leaf), ski(&inter));
    leaf.verify_signature(Some(inter.public_key()))
        .expect("signed by the intermediate");

    let (ok, out) = openssl_verify_chain(&root_der, &svid.chain, T0 + 2);
    assert!(ok, "{out}");
    // And it can fail: without the intermediate the leaf does not reach the root.
    let (ok, _) = openssl_verify(
        &root_der,
        &svid.chain[0],
        &["-attime", &(T0 + 2).to_string()],
    );
    assert!(!ok);

    // The server's own SVID (its TLS identity toward agents) carries the intermediate too.
    let server = ca.sign_server_svid(&workload_spki(), &[]).unwrap();
    assert_eq!(server.chain[1], svid.chain[1]);
}

#[test]
fn upstream_validity_caps_the_intermediate_and_the_leaves() {
    let dir = tempfile::tempdir().unwrap();
    // The root expires in one hour; ca_ttl asks for a day.
    let (_root, files) = root_files(dir.path(), T0 + 3600);
    let ca = memory_ca(upstream_config(86_400, &files, T0), at(T0));
    let svid = ca
        .sign_x509_svid_at(
            at(T0 + 3000),
            &id("/w"),
            &workload_spki(),
            Some(Duration::from_secs(7200)),
            &[],
        )
        .unwrap();
    assert_eq!(
        parse(&svid.chain[1]).validity().not_after.timestamp(),
        T0 + 3600
    );
    assert_eq!(svid.expires_at, T0 + 3600, "leaf capped by the chain");
}

#[test]
fn upstream_rotation_prepares_a_new_intermediate_and_keeps_the_root_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (root, files) = root_files(dir.path(), T0 + YEAR);
    let ca = memory_ca(upstream_config(60, &files, T0), at(T0));
    let first = ca
        .sign_x509_svid_at(at(T0 + 1), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    let journal = ca.rotate(at(T0 + 30)).unwrap().expect("prepared");
    assert!(journal.x509_authorities.iter().all(|a| a.upstream_signed));
    assert_eq!(ca.bundle().x509_authorities, vec![root.der()]);
    ca.rotate(at(T0 + 50)).unwrap().expect("activated");
    let second = ca
        .sign_x509_svid_at(at(T0 + 51), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_ne!(second.chain[1], first.chain[1], "a new intermediate");
    assert_eq!(ca.bundle().x509_authorities, vec![root.der()]);
    let (ok, out) = openssl_verify_chain(&root.der(), &second.chain, T0 + 52);
    assert!(ok, "{out}");
}

#[test]
fn upstream_intermediate_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (root, files) = root_files(dir.path(), T0 + YEAR);
    let keys = dir.path().join("keys.json");
    let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
    let (ca, journal) = Ca::new(upstream_config(86_400, &files, T0), km, None, at(T0)).unwrap();
    let before = ca
        .sign_x509_svid_at(at(T0 + 1), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    let bytes = journal.to_bytes().unwrap();
    drop(ca);

    let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
    let journal = CaJournal::from_bytes(&bytes).unwrap();
    let (ca, journal2) = Ca::new(
        upstream_config(86_400, &files, T0 + 10),
        km,
        Some(journal.clone()),
        at(T0 + 10),
    )
    .unwrap();
    assert_eq!(journal2, journal, "resumed as it was");
    let after = ca
        .sign_x509_svid_at(at(T0 + 11), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(after.chain[1], before.chain[1], "same intermediate");
    assert_eq!(ca.bundle().x509_authorities, vec![root.der()]);
}

#[test]
fn switching_to_or_from_an_upstream_replaces_the_active_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (root, files) = root_files(dir.path(), T0 + YEAR);
    let keys = dir.path().join("keys.json");

    // Self-signed first; then the operator adds the upstream.
    let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
    let (ca, journal) = Ca::new(config(86_400), km.clone(), None, at(T0)).unwrap();
    let self_signed = ca.bundle().x509_authorities[0].clone();
    drop(ca);
    let (ca, journal) = Ca::new(
        upstream_config(86_400, &files, T0 + 10),
        km.clone(),
        Some(journal),
        at(T0 + 10),
    )
    .unwrap();
    let svid = ca
        .sign_x509_svid_at(at(T0 + 11), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(svid.chain.len(), 2, "an intermediate signs at once");
    assert_eq!(
        ca.bundle().x509_authorities,
        vec![self_signed, root.der()],
        "the old self-signed CA stays trusted until it expires"
    );
    drop(ca);

    // And back: the intermediate is retired, a self-signed CA signs, the root leaves the bundle.
    let (ca, _) = Ca::new(config(86_400), km, Some(journal), at(T0 + 20)).unwrap();
    let svid = ca
        .sign_x509_svid_at(at(T0 + 21), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(svid.chain.len(), 1);
    let bundle = ca.bundle();
    assert!(!bundle.x509_authorities.contains(&root.der()));
    assert_eq!(
        issuing_ca(&bundle, &svid.chain[0]),
        bundle.x509_authorities[1]
    );
}

#[test]
fn upstream_with_its_own_intermediate_sends_the_whole_chain() {
    let dir = tempfile::tempdir().unwrap();
    let root = test_ca("operator root", None, T0 - 100, T0 + YEAR, true);
    let mid = test_ca(
        "operator issuing CA",
        Some(&root),
        T0 - 100,
        T0 + YEAR,
        true,
    );
    let files = write_files(
        dir.path(),
        &mid.cert_pem,
        &mid.key_pem,
        Some(&root.cert_pem),
    );
    let ca = memory_ca(upstream_config(86_400, &files, T0), at(T0));
    assert_eq!(ca.bundle().x509_authorities, vec![root.der()]);
    let svid = ca
        .sign_x509_svid_at(at(T0 + 1), &id("/w"), &workload_spki(), None, &[])
        .unwrap();
    assert_eq!(
        svid.chain.len(),
        3,
        "leaf, our intermediate, the operator's"
    );
    assert_eq!(svid.chain[2], mid.der());
    let (ok, out) = openssl_verify_chain(&root.der(), &svid.chain, T0 + 2);
    assert!(ok, "{out}");
}

#[test]
fn localauthority_refuses_x509_taint_and_revoke_with_an_upstream() {
    use crate::ca::local_authority::{AuthorityKind, LocalAuthorityError};
    let dir = tempfile::tempdir().unwrap();
    let (_root, files) = root_files(dir.path(), T0 + YEAR);
    let ca = memory_ca(upstream_config(86_400, &files, T0), at(T0));
    let (prepared, _) = ca
        .apply(
            ca.prepare_authority(AuthorityKind::X509, at(T0 + 1))
                .unwrap(),
        )
        .unwrap();
    assert!(prepared.upstream_authority_id.is_some());
    let old = ca.authorities(AuthorityKind::X509)[0].authority_id.clone();
    ca.apply(
        ca.activate_authority(AuthorityKind::X509, &prepared.authority_id)
            .unwrap(),
    )
    .unwrap();
    let before = ca.journal();
    for err in [
        ca.taint_authority(AuthorityKind::X509, &old).unwrap_err(),
        ca.revoke_authority(AuthorityKind::X509, &old).unwrap_err(),
    ] {
        assert!(matches!(err, LocalAuthorityError::Upstream(_)), "{err}");
        assert!(err.to_string().contains("upstream authority"), "{err}");
    }
    assert_eq!(ca.journal(), before);
    // JWT keys are ours alone: their taint still works.
    let jwt_old = ca.authorities(AuthorityKind::Jwt)[0].authority_id.clone();
    let (p, _) = ca
        .apply(
            ca.prepare_authority(AuthorityKind::Jwt, at(T0 + 2))
                .unwrap(),
        )
        .unwrap();
    ca.apply(
        ca.activate_authority(AuthorityKind::Jwt, &p.authority_id)
            .unwrap(),
    )
    .unwrap();
    ca.apply(ca.taint_authority(AuthorityKind::Jwt, &jwt_old).unwrap())
        .unwrap();
}

/// The CA certificates and keys operators make with openssl (`sigil_testkit`'s recipe): each
/// key encoding (SEC1, PKCS#1, PKCS#8) and signature algorithm (ECDSA with SHA-256/384/512,
/// RSA PKCS#1 v1.5 and PSS) loads as an upstream authority, signs an intermediate, and the
/// SVID chain passes `openssl verify -x509_strict` to the openssl-made root.
#[test]
fn openssl_made_upstream_cas_in_every_format_sign_verifiable_chains() {
    use sigil_testkit::verify::{OPERATOR_CA_RECIPES, openssl_self_signed_ca};
    let dir = tempfile::tempdir().unwrap();
    for (name, keygen, sign) in OPERATOR_CA_RECIPES {
        let (cert, key) = openssl_self_signed_ca(dir.path(), name, keygen, sign);
        // After openssl: its NotBefore is the current second.
        let now = SystemTime::now();
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let files = UpstreamDiskConfig {
            cert_file_path: cert,
            key_file_path: key,
            bundle_file_path: None,
        };
        let upstream =
            UpstreamAuthority::load(&files, now_secs).unwrap_or_else(|e| panic!("{name}: {e}"));
        let root = upstream.roots()[0].clone();
        let ca = memory_ca(
            CaConfig {
                upstream: Some(Arc::new(upstream)),
                ..config(86_400)
            },
            now,
        );
        let svid = ca
            .sign_x509_svid(&id("/web"), &workload_spki(), None, &[])
            .unwrap();
        assert_eq!(svid.chain.len(), 2, "{name}");
        let (ok, out) = openssl_verify_chain(&root, &svid.chain, now_secs + 1);
        assert!(ok, "{name}: {out}");
    }
}
