//! JWT-SVID validation for `ValidateJWTSVID`, with SPIRE's rules (digest §3.2): algorithm
//! allow-list, `kid` required, the key found by (trust domain of `sub`, `kid`), signature,
//! `aud` containing the requested audience, and `exp`/`nbf`/`iat` checked against `now` with a
//! one-minute leeway. `jsonwebtoken` checks only the signature; the claim checks are done here
//! so the whole validation is a pure function of `now`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sigil_proto::{Bundle, SpiffeId, TrustDomain};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Clock skew tolerated on `exp`, `nbf` and `iat` (go-jose's default, which SPIRE uses).
pub const LEEWAY_SECONDS: i64 = 60;

/// The JWS algorithms the JWT-SVID spec allows.
const ALLOWED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

/// Why a JWT-SVID is not valid; the message goes back to the workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidValidationError {
    #[error("unable to parse JWT token")]
    Malformed,
    #[error("unsupported token signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("token header type not equal to either JWT or JOSE")]
    BadType,
    #[error("token header missing key id")]
    MissingKeyId,
    #[error("token missing subject claim")]
    MissingSubject,
    #[error("token has an invalid subject claim: {0}")]
    InvalidSubject(String),
    #[error("token missing exp claim")]
    MissingExpiry,
    #[error("token has a malformed {0} claim")]
    MalformedClaim(&'static str),
    #[error("no bundle found for trust domain {0:?}")]
    NoBundle(String),
    #[error("no JWT authority {kid:?} found for trust domain {trust_domain:?}")]
    NoAuthority { kid: String, trust_domain: String },
    #[error("unable to use JWT authority {0:?}")]
    BadAuthority(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("expected audience in {expected:?} (audience={found:?})")]
    AudienceMismatch {
        expected: Vec<String>,
        found: Vec<String>,
    },
}

/// A validated JWT-SVID: its subject and the claims returned to the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwtSvid {
    pub spiffe_id: SpiffeId,
    /// All claims for our own trust domain; for a foreign one only `sub`, `exp`, `aud` and the
    /// operator-allowed claims. `aud` is always an array.
    pub claims: Map<String, Value>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
}

/// Validates `token` for `audience` against `bundles` (the JWT authorities the caller may use,
/// keyed by trust domain), at `now` (Unix seconds).
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    own_trust_domain: &TrustDomain,
    bundles: &BTreeMap<TrustDomain, &Bundle>,
    allowed_foreign_claims: &[String],
    now: i64,
) -> Result<ValidatedJwtSvid, JwtSvidValidationError> {
    use JwtSvidValidationError as E;

    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, _signature] = parts.as_slice() else {
        return Err(E::Malformed);
    };
    let header: RawHeader = decode_segment(header_b64)?;
    let alg = header.alg.unwrap_or_default();
    if !ALLOWED_ALGORITHMS.contains(&alg.as_str()) {
        return Err(E::UnsupportedAlgorithm(alg));
    }
    // ES512 is in the spec's list but our verifier (jsonwebtoken) cannot check it.
    let algorithm: Algorithm = alg
        .parse()
        .map_err(|_| E::UnsupportedAlgorithm(alg.clone()))?;
    if !matches!(header.typ.as_deref(), None | Some("JWT") | Some("JOSE")) {
        return Err(E::BadType);
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(E::MissingKeyId)?;

    // The subject picks the bundle, so it is read before the signature can be checked.
    let claims: Map<String, Value> = decode_segment(payload_b64)?;
    let sub = match claims.get("sub") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(E::InvalidSubject("not a string".into())),
        None => return Err(E::MissingSubject),
    };
    let spiffe_id = SpiffeId::new(&sub).map_err(|e| E::InvalidSubject(e.to_string()))?;
    let td = spiffe_id.trust_domain();
    let bundle = bundles.get(td).ok_or_else(|| E::NoBundle(td.to_string()))?;
    let authority = bundle.jwt_authority(&kid).ok_or_else(|| E::NoAuthority {
        kid: kid.clone(),
        trust_domain: td.to_string(),
    })?;
    let key = decoding_key(&authority.public_key).ok_or_else(|| E::BadAuthority(kid.clone()))?;

    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|_| E::BadSignature)?;

    let exp = numeric_date(&claims, "exp")?.ok_or(E::MissingExpiry)?;
    if now > exp + LEEWAY_SECONDS {
        return Err(E::Expired);
    }
    if numeric_date(&claims, "nbf")?.is_some_and(|nbf| nbf > now + LEEWAY_SECONDS) {
        return Err(E::NotYetValid);
    }
    if numeric_date(&claims, "iat")?.is_some_and(|iat| iat > now + LEEWAY_SECONDS) {
        return Err(E::IssuedInFuture);
    }
    let aud = audiences(&claims)?;
    if !aud.iter().any(|a| a == audience) {
        return Err(E::AudienceMismatch {
            expected: vec![audience.to_owned()],
            found: aud,
        });
    }

    let mut claims = claims;
    claims.insert(
        "aud".into(),
        Value::Array(aud.into_iter().map(Value::String).collect()),
    );
    if td != own_trust_domain {
        claims.retain(|name, _| {
            matches!(name.as_str(), "sub" | "exp" | "aud")
                || allowed_foreign_claims.iter().any(|allowed| allowed == name)
        });
    }
    Ok(ValidatedJwtSvid { spiffe_id, claims })
}

fn decode_segment<T: serde::de::DeserializeOwned>(b64: &str) -> Result<T, JwtSvidValidationError> {
    let raw = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JwtSvidValidationError::Malformed)?;
    serde_json::from_slice(&raw).map_err(|_| JwtSvidValidationError::Malformed)
}

/// A NumericDate claim: integer or fractional seconds (RFC 7519 §2), truncated.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, JwtSvidValidationError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtSvidValidationError::MalformedClaim(name)),
        Some(_) => Err(JwtSvidValidationError::MalformedClaim(name)),
    }
}

/// `aud` as a string or an array of strings.
fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtSvidValidationError> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtSvidValidationError::MalformedClaim("aud")),
        Some(_) => Err(JwtSvidValidationError::MalformedClaim("aud")),
    }
}

/// A verification key from SubjectPublicKeyInfo DER: jsonwebtoken wants the SEC1 point for EC
/// keys and the PKCS#1 `RSAPublicKey` for RSA keys, which is exactly the SPKI's bit string.
fn decoding_key(spki_der: &[u8]) -> Option<DecodingKey> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    let key = spki.subject_public_key.data.as_ref();
    match spki.algorithm.algorithm.to_id_string().as_str() {
        OID_EC_PUBLIC_KEY => Some(DecodingKey::from_ec_der(key)),
        OID_RSA_ENCRYPTION => Some(DecodingKey::from_rsa_der(key)),
        _ => None,
    }
}

/// A JSON value as a protobuf `Value` (the `claims` Struct of `ValidateJWTSVIDResponse`).
pub fn to_prost_value(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_prost_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_prost_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`.
pub fn to_prost_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), to_prost_value(v)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cache::testing::{TestCa, TestJwtKey};

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        own: TrustDomain,
        key: TestJwtKey,
        own_bundle: Bundle,
        foreign_key: TestJwtKey,
        foreign_bundle: Bundle,
    }

    impl Fixture {
        fn new() -> Self {
            let key = TestJwtKey::new("own-kid");
            let foreign_key = TestJwtKey::new("foreign-kid");
            let own_bundle = TestCa::new("example.org").bundle(Some(&key));
            let foreign_bundle = TestCa::new("other.org").bundle(Some(&foreign_key));
            Self {
                own: TrustDomain::new("example.org").unwrap(),
                key,
                own_bundle,
                foreign_key,
                foreign_bundle,
            }
        }

        fn bundles(&self) -> BTreeMap<TrustDomain, &Bundle> {
            [
                (self.own_bundle.trust_domain.clone(), &self.own_bundle),
                (
                    self.foreign_bundle.trust_domain.clone(),
                    &self.foreign_bundle,
                ),
            ]
            .into()
        }

        fn check(
            &self,
            token: &str,
            aud: &str,
        ) -> Result<ValidatedJwtSvid, JwtSvidValidationError> {
            validate_jwt_svid(
                token,
                aud,
                &self.own,
                &self.bundles(),
                &["scope".into()],
                NOW,
            )
        }
    }

    fn claims() -> Value {
        json!({"sub": "spiffe://example.org/web", "aud": "db", "exp": NOW + 300, "iat": NOW, "extra": {"a": [1, true]}})
    }

    /// A token with an arbitrary header (unsigned: fine for checks that precede the signature).
    fn raw_token(header: Value, claims: Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!(
            "{}.{}.{}",
            enc(&header),
            enc(&claims),
            URL_SAFE_NO_PAD.encode(b"sig")
        )
    }

    #[test]
    fn valid_token_returns_subject_and_claims_with_array_aud() {
        let f = Fixture::new();
        let ok = f.check(&f.key.sign(&claims()), "db").unwrap();
        assert_eq!(ok.spiffe_id.to_string(), "spiffe://example.org/web");
        assert_eq!(ok.claims["aud"], json!(["db"]));
        assert_eq!(ok.claims["extra"], json!({"a": [1, true]}));
    }

    #[test]
    fn foreign_tokens_keep_only_allowed_claims() {
        let f = Fixture::new();
        let token = f.foreign_key.sign(&json!({
            "sub": "spiffe://other.org/api", "aud": ["db", "x"], "exp": NOW + 10,
            "iat": NOW, "scope": "read", "secret": "no",
        }));
        let ok = f.check(&token, "x").unwrap();
        let mut names: Vec<&str> = ok.claims.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["aud", "exp", "scope", "sub"]);
    }

    #[test]
    fn rejections() {
        use JwtSvidValidationError as E;
        let f = Fixture::new();
        let es256 = json!({"alg": "ES256", "kid": "own-kid", "typ": "JWT"});
        let with = |patch: Value| {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            f.key.sign(&c)
        };
        let cases: Vec<(String, &str, E)> = vec![
            ("a.b".into(), "db", E::Malformed),
            ("!!.!!.!!".into(), "db", E::Malformed),
            (
                raw_token(json!({"alg": "none", "kid": "k"}), claims()),
                "db",
                E::UnsupportedAlgorithm("none".into()),
            ),
            (
                raw_token(json!({"alg": "HS256", "kid": "k"}), claims()),
                "db",
                E::UnsupportedAlgorithm("HS256".into()),
            ),
            (
                raw_token(json!({"alg": "ES512", "kid": "k"}), claims()),
                "db",
                E::UnsupportedAlgorithm("ES512".into()),
            ),
            (
                raw_token(
                    json!({"alg": "ES256", "kid": "k", "typ": "at+jwt"}),
                    claims(),
                ),
                "db",
                E::BadType,
            ),
            (
                raw_token(json!({"alg": "ES256"}), claims()),
                "db",
                E::MissingKeyId,
            ),
            (
                raw_token(es256.clone(), json!({"aud": "db", "exp": NOW})),
                "db",
                E::MissingSubject,
            ),
            (
                with(json!({"sub": "https://example.org/x"})),
                "db",
                E::InvalidSubject("scheme must be \"spiffe\"".into()),
            ),
            (
                with(json!({"sub": "spiffe://unknown.org/x"})),
                "db",
                E::NoBundle("unknown.org".into()),
            ),
            (
                raw_token(json!({"alg": "ES256", "kid": "nope"}), claims()),
                "db",
                E::NoAuthority {
                    kid: "nope".into(),
                    trust_domain: "example.org".into(),
                },
            ),
            (raw_token(es256, claims()), "db", E::BadSignature),
            (
                f.foreign_key.sign(&claims()),
                "db",
                E::NoAuthority {
                    kid: "foreign-kid".into(),
                    trust_domain: "example.org".into(),
                },
            ),
            (with(json!({"exp": null})), "db", E::MissingExpiry),
            (with(json!({"exp": "soon"})), "db", E::MalformedClaim("exp")),
            (with(json!({"exp": NOW - 61})), "db", E::Expired),
            (with(json!({"nbf": NOW + 61})), "db", E::NotYetValid),
            (with(json!({"iat": NOW + 61})), "db", E::IssuedInFuture),
            (
                with(json!({"aud": ["a", "b"]})),
                "db",
                E::AudienceMismatch {
                    expected: vec!["db".into()],
                    found: vec!["a".into(), "b".into()],
                },
            ),
            (with(json!({"aud": 5})), "db", E::MalformedClaim("aud")),
        ];
        for (token, aud, want) in cases {
            let got = f.check(&token, aud);
            match (&got, &want) {
                (Err(E::InvalidSubject(_)), E::InvalidSubject(_)) => {}
                _ => assert_eq!(got, Err(want.clone()), "token {token}"),
            }
        }
    }

    #[test]
    fn leeway_accepts_small_skew() {
        let f = Fixture::new();
        let mut c = claims();
        c["exp"] = json!(NOW - 59);
        c["nbf"] = json!(NOW + 59);
        c["iat"] = json!(NOW + 59);
        assert!(f.check(&f.key.sign(&c), "db").is_ok());
    }

    #[test]
    fn prost_struct_conversion() {
        let map = json!({"n": 1.5, "s": "x", "b": false, "l": [null], "o": {"k": "v"}});
        let s = to_prost_struct(map.as_object().unwrap());
        use prost_types::value::Kind;
        assert_eq!(s.fields["n"].kind, Some(Kind::NumberValue(1.5)));
        assert_eq!(s.fields["s"].kind, Some(Kind::StringValue("x".into())));
        assert!(
            matches!(&s.fields["o"].kind, Some(Kind::StructValue(o)) if o.fields.contains_key("k"))
        );
    }
}

/// The input space of the `jwt_svid` fuzz target (fuzz/), run in CI as a property test:
/// arbitrary strings and edits of a valid JWT-SVID never panic ValidateJWTSVID's check, and an
/// edited token never validates (issue #7 item 4).
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::cache::testing::{TestCa, TestJwtKey};

    const NOW: i64 = 1_800_000_000;

    fn check(token: &str) -> Result<ValidatedJwtSvid, JwtSvidValidationError> {
        let key = TestJwtKey::new("kid");
        let bundle = TestCa::new("example.org").bundle(Some(&key));
        let own = TrustDomain::new("example.org").unwrap();
        validate_jwt_svid(
            token,
            "db",
            &own,
            &[(own.clone(), &bundle)].into(),
            &[],
            NOW,
        )
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_validate(token in "[A-Za-z0-9_\\-.=+/ ]{0,300}") {
            prop_assert!(check(&token).is_err());
        }

        #[test]
        fn edited_valid_token_never_validates(
            edits in prop::collection::vec((any::<prop::sample::Index>(), "[A-Za-z0-9_\\-.]"), 1..3),
        ) {
            let key = TestJwtKey::new("kid");
            let valid = key.sign(&json!({"sub": "spiffe://example.org/web", "aud": "db", "exp": NOW + 300}));
            let mut token = valid.clone();
            for (at, c) in &edits {
                let i = at.index(token.len());
                token.replace_range(i..=i, c);
            }
            // Base64url's last character can carry unused bits, so an edit there may decode
            // to the same bytes: only a token that reads differently must fail.
            let same = token.split('.').zip(valid.split('.')).all(|(a, b)| {
                URL_SAFE_NO_PAD.decode(a).ok() == URL_SAFE_NO_PAD.decode(b).ok()
            }) && token.matches('.').count() == 2;
            prop_assert!(same || check(&token).is_err(), "{token}");
        }
    }
}
