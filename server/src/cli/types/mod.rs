//! SPIRE's API types as its CLI prints them with `-output json`, and as `-data` files hold
//! them: one serde model per type, named after SPIRE's (`spire.api.types.Entry`, `Agent`,
//! `Bundle`, ...), used both to print and to parse.
//!
//! SPIRE prints protobuf messages with protojson (`UseProtoNames`, `EmitUnpopulated`), then
//! re-encodes them with Go's `encoding/json`, which drops `null`s, sorts object keys and
//! writes one compact line. So here: snake_case proto names, every scalar and list present
//! (zero values included), unset messages absent, fields declared in alphabetical order,
//! `int64`/`uint64` written as JSON strings (protojson's rule; numbers are accepted when
//! read), `bytes` as standard base64, and [`print`] writes one compact line.
//!
//! - [`entry`]: `Entry` and the entry commands' responses.
//! - [`agent`]: `Agent` and `agent list`'s response.
//! - [`bundle`]: `Bundle` and the bundle commands' responses.
//! - [`federation`]: `FederationRelationship`, the federation commands' responses and
//!   `-data` files.
//! - [`svid`]: `JoinToken`, `JWTSVID`, `x509 mint`'s result and `AuthorityState`.

pub(super) mod agent;
pub(super) mod bundle;
pub(super) mod entry;
pub(super) mod federation;
pub(super) mod svid;

use serde::{Deserialize, Serialize};
use sigil_proto::sigil::common::v1 as pb;

/// Writes `value` as Go's `json.Encoder` does: one compact line.
pub(super) fn print(value: &impl Serialize) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

/// `spire.api.types.SPIFFEID`: `{"trust_domain": "example.org", "path": "/web"}`. Read from
/// that object or from the plain `spiffe://` string SPIRE's `-data` files hold.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(try_from = "IdRepr")]
pub(super) struct SpiffeId {
    pub path: String,
    pub trust_domain: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr {
    Text(String),
    Parts {
        #[serde(default)]
        trust_domain: String,
        #[serde(default)]
        path: String,
    },
}

impl TryFrom<IdRepr> for SpiffeId {
    type Error = String;
    fn try_from(r: IdRepr) -> Result<Self, String> {
        match r {
            IdRepr::Parts { trust_domain, path } => Ok(Self { path, trust_domain }),
            IdRepr::Text(s) if s.is_empty() || s.starts_with("spiffe://") => {
                Ok(Self::from_text(&s))
            }
            IdRepr::Text(s) => Err(format!("invalid SPIFFE ID {s:?}: expected spiffe://...")),
        }
    }
}

impl SpiffeId {
    /// Splits `spiffe://<td><path>` (an ID or an ID template) into its parts; empty stays
    /// empty.
    pub(super) fn from_text(s: &str) -> Self {
        let rest = s.strip_prefix("spiffe://").unwrap_or(s);
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        Self {
            path: path.into(),
            trust_domain: td.into(),
        }
    }

    /// `spiffe://<td><path>`, or empty when both parts are (the server's checks name it).
    pub(super) fn text(&self) -> String {
        if self.trust_domain.is_empty() && self.path.is_empty() {
            String::new()
        } else {
            format!("spiffe://{}{}", self.trust_domain, self.path)
        }
    }
}

/// `spire.api.types.Selector`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct Selector {
    pub r#type: String,
    pub value: String,
}

impl From<&pb::Selector> for Selector {
    fn from(s: &pb::Selector) -> Self {
        Self {
            r#type: s.r#type.clone(),
            value: s.value.clone(),
        }
    }
}

/// `spire.api.types.Status` of one item of a batch: SPIRE's gRPC code and message.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(super) struct Status {
    pub code: i32,
    pub message: String,
}

impl Status {
    /// What SPIRE reports for an item that succeeded.
    pub(super) fn ok() -> Self {
        Self {
            code: 0,
            message: "OK".into(),
        }
    }
}

/// `{"count": N}`: SPIRE's `Count*Response` (an `int32`, so a JSON number).
#[derive(Serialize, Debug)]
pub(super) struct CountResponse {
    pub count: i32,
}

impl CountResponse {
    pub(super) fn new(n: impl TryInto<i32>) -> Self {
        Self {
            count: n.try_into().unwrap_or(i32::MAX),
        }
    }
}

/// protojson's `int64`: written as a JSON string, read from a string or a number.
pub(super) mod int64 {
    use serde::{Deserializer, Serializer};

    pub(in crate::cli) fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(in crate::cli) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        super::number_or_string(d)
    }
}

/// protojson's `uint64`: written as a JSON string (only printed, never read).
pub(super) fn uint64<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// protojson's `int32`: written as a number, read from a number or a string.
pub(super) mod int32 {
    use serde::{Deserializer, Serializer};

    pub(in crate::cli) fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(*v)
    }

    pub(in crate::cli) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        super::number_or_string(d)
    }
}

/// An integer from a JSON number or a decimal string, as protojson reads integers.
fn number_or_string<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr,
{
    struct Integer<T>(std::marker::PhantomData<T>);
    impl<T> serde::de::Visitor<'_> for Integer<T>
    where
        T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr,
    {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer, as a number or a string")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            v.parse()
                .map_err(|_| E::custom(format!("invalid integer {v:?}")))
        }
    }
    d.deserialize_any(Integer(std::marker::PhantomData))
}

/// protojson's `bytes`: standard base64 with padding.
pub(super) fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Ints {
        #[serde(with = "int64")]
        a: i64,
        #[serde(with = "int32")]
        c: i32,
    }

    #[test]
    fn integers_as_protojson_writes_and_reads_them() {
        let v = Ints { a: -5, c: 9 };
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text, r#"{"a":"-5","c":9}"#);
        let read: Ints = serde_json::from_str(r#"{"a":-5,"c":"9"}"#).unwrap();
        assert_eq!(read, v);
        assert!(serde_json::from_str::<Ints>(r#"{"a":"x","c":1}"#).is_err());
        assert!(serde_json::from_str::<Ints>(r#"{"a":1,"c":3000000000}"#).is_err());
        #[derive(Serialize)]
        struct Big(#[serde(serialize_with = "uint64")] u64);
        assert_eq!(
            serde_json::to_string(&Big(u64::MAX)).unwrap(),
            "\"18446744073709551615\""
        );
    }

    #[test]
    fn spiffe_id_reads_both_shapes_and_writes_parts() {
        let parts: SpiffeId =
            serde_json::from_str(r#"{"trust_domain":"example.org","path":"/web"}"#).unwrap();
        let text: SpiffeId = serde_json::from_str(r#""spiffe://example.org/web""#).unwrap();
        assert_eq!(parts, text);
        assert_eq!(text.text(), "spiffe://example.org/web");
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            r#"{"path":"/web","trust_domain":"example.org"}"#
        );
        assert_eq!(SpiffeId::from_text("spiffe://td").text(), "spiffe://td");
        assert_eq!(SpiffeId::from_text("").text(), "");
        let err = serde_json::from_str::<SpiffeId>(r#""http://x/y""#).unwrap_err();
        assert!(err.to_string().contains("expected spiffe://"), "{err}");
    }
}
