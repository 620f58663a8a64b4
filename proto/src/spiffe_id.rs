//! SPIFFE IDs (SPIFFE-ID §2), validated with go-spiffe's rules: the strictest of the three
//! client libraries, so anything we issue is accepted by all of them (spec digest §1.3).
//!
//! Also the one definition of the reserved namespace ([`SpiffeId::is_reserved`]): the paths
//! SPIRE keeps for its server and agents, which no workload may ever hold.

use std::fmt;
use std::str::FromStr;

use crate::trust_domain::{self, TrustDomain};

/// Maximum length of a whole SPIFFE ID that we accept or issue (SPIFFE-ID §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME_PREFIX: &str = "spiffe://";

/// The reserved namespace: this path and everything under it. The server is
/// `/spire/server`, agents are `/spire/agent/<attestor>/...`; SPIRE's `idutil.IsReservedPath`
/// keeps the whole `/spire` subtree so that no future server-side ID can clash either.
pub const RESERVED_PATH: &str = "/spire";

/// Why a string is not a SPIFFE ID. One variant per rule; messages follow go-spiffe's wording.
/// Sections (§) are those of the SPIFFE-ID specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("cannot be empty")]
    Empty,
    /// The string does not start with `spiffe://`: no scheme, or another one (§2).
    #[error("scheme is missing or invalid")]
    WrongScheme,
    /// No trust domain name: nothing between `spiffe://` and the path, or an empty name (§2.1).
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain name has a character other than a lowercase ASCII letter, a digit,
    /// `.`, `-` or `_` (§2.1).
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    )]
    BadTrustDomainChar,
    /// The trust domain name is longer than
    /// [`MAX_TRUST_DOMAIN_LEN`](crate::trust_domain::MAX_TRUST_DOMAIN_LEN) bytes (§2.3).
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    /// A path given apart from its trust domain is not empty and does not start with `/` (§2.2).
    #[error("path must have a leading slash")]
    NoLeadingSlash,
    /// The path has an empty segment, `//` (§2.2).
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A path segment is `.` or `..` (§2.2).
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends in `/` (§2.2).
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A path segment has a character other than an ASCII letter, a digit, `.`, `-` or `_`
    /// (§2.2).
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathSegmentChar,
    /// The whole ID is longer than [`MAX_SPIFFE_ID_LEN`] bytes (§2.3).
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
    /// A valid SPIFFE ID in the reserved namespace `/spire` (see [`SpiffeId::is_reserved`]),
    /// where no registration entry or workload may be.
    #[error(
        "path is in the reserved namespace \"/spire/*\" (the server's and agents' own IDs); \
         no registration entry or workload may have it"
    )]
    Reserved,
}

/// A validated SPIFFE ID: `spiffe://<trust domain><path>`. Always printed in canonical
/// (lowercase scheme and trust domain) form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest = s
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        trust_domain::validate_name(td)?;
        validate_path(path)?;
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(Self {
            trust_domain: TrustDomain::new(td)?,
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and a path, validating the path.
    pub fn from_path(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path)?;
        let id = Self::from_parts_unchecked(trust_domain.clone(), path.to_owned());
        if id.to_string().len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(id)
    }

    pub(crate) fn from_parts_unchecked(trust_domain: TrustDomain, path: String) -> Self {
        Self { trust_domain, path }
    }

    /// The trust domain the ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty for a trust domain ID, else starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True for IDs with a path, the only kind a leaf SVID may carry (X509-SVID §3).
    pub fn is_workload_id(&self) -> bool {
        !self.path.is_empty()
    }

    /// True for `spiffe://<td>/spire/agent/...`, the IDs node attestation gives agents.
    pub fn is_agent_id(&self) -> bool {
        self.path.starts_with("/spire/agent/")
    }

    /// True for `spiffe://<td>/spire/server`.
    pub fn is_server_id(&self) -> bool {
        self.path == "/spire/server"
    }

    /// True for an ID in the reserved namespace, `spiffe://<td>/spire` and
    /// `spiffe://<td>/spire/...` (see [`RESERVED_PATH`]): agent and server IDs, which only node
    /// attestation and the server itself issue. Every path that gives a workload an identity
    /// (entry create and update, template rendering, every mint) refuses these, so no workload
    /// can present itself as the server or as an agent.
    pub fn is_reserved(&self) -> bool {
        is_reserved_path(&self.path)
    }

    /// `Err(SpiffeIdError::Reserved)` for a reserved ID (see [`Self::is_reserved`]).
    pub fn check_not_reserved(&self) -> Result<(), SpiffeIdError> {
        if self.is_reserved() {
            return Err(SpiffeIdError::Reserved);
        }
        Ok(())
    }
}

/// True for [`RESERVED_PATH`] and every path under it; `/spire-x` or `/x/spire` are not.
pub(crate) fn is_reserved_path(path: &str) -> bool {
    path.strip_prefix(RESERVED_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Validates an ID path: empty, or `/`-separated non-empty segments of `[a-zA-Z0-9._-]` that
/// are neither `.` nor `..`.
pub fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or(SpiffeIdError::NoLeadingSlash)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        validate_segment(segment).map_err(|e| match e {
            SpiffeIdError::EmptySegment if i == last => SpiffeIdError::TrailingSlash,
            e => e,
        })?;
    }
    Ok(())
}

/// Validates one path segment (also used for values substituted into identity templates).
pub fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        s if s.bytes().all(is_path_byte) => Ok(()),
        _ => Err(SpiffeIdError::BadPathSegmentChar),
    }
}

fn is_path_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}{}",
            self.trust_domain.as_str(),
            self.path
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::SpiffeIdError::*;
    use super::*;

    /// Every reject case of the spec digest §1.4 (from go-spiffe's id_test.go and the
    /// conformance catalogue), with the rule that rejects it.
    #[test]
    fn rejects_digest_cases() {
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("s", WrongScheme),
            ("spiffe:/", WrongScheme),
            ("Spiffe://", WrongScheme),
            ("SPIFFE://td/x", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://td:8080/a", BadTrustDomainChar),
            ("spiffe://u@td/a", BadTrustDomainChar),
            ("spiffe://td/a?x=1", BadPathSegmentChar),
            ("spiffe://td/a#f", BadPathSegmentChar),
            ("spiffe://td?x=1", BadTrustDomainChar),
            ("spiffe://td#f", BadTrustDomainChar),
            ("spiffe://%62%61%64/path", BadTrustDomainChar),
            ("spiffe://td/%41", BadPathSegmentChar),
            ("spiffe://%F0%9F%A4%AF/path", BadTrustDomainChar),
            ("spiffe://TD/x", BadTrustDomainChar),
            ("spiffe://[::1]/x", BadTrustDomainChar),
            ("spiffe://td/", TrailingSlash),
            ("spiffe://td//", EmptySegment),
            ("spiffe://td//path", EmptySegment),
            ("spiffe://td/path/", TrailingSlash),
            ("spiffe://td/.", DotSegment),
            ("spiffe://td/./path", DotSegment),
            ("spiffe://td/path/./other", DotSegment),
            ("spiffe://td/..", DotSegment),
            ("spiffe://td/../path", DotSegment),
            ("spiffe://td/path/..", DotSegment),
            ("spiffe://t$d/a", BadTrustDomainChar),
            ("spiffe://td/a!b", BadPathSegmentChar),
            ("spiffe://td/a:b", BadPathSegmentChar),
            ("spiffe://td/a~b", BadPathSegmentChar),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::new(input).as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn accepts_digest_cases() {
        for ok in [
            "spiffe://trustdomain",
            "spiffe://trustdomain/path",
            "spiffe://td/.path",
            "spiffe://td/..path",
            "spiffe://td/...",
            "spiffe://td/MixedCase/Path",
            "spiffe://td_1/a_b/9",
            "spiffe://1.2.3.4/x",
            "spiffe://example.org/ns/payments/sa/checkout-service",
        ] {
            let id = SpiffeId::new(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(id.to_string(), ok, "round trip");
        }
    }

    /// go-spiffe sweeps every byte: only `[a-z0-9._-]` in the trust domain and
    /// `[a-zA-Z0-9._-]` in path segments are allowed.
    #[test]
    fn sweeps_every_byte() {
        for b in 0u8..=255 {
            let td_ok = matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_');
            let path_ok = td_ok || b.is_ascii_uppercase();
            let mut td = b"spiffe://t".to_vec();
            td.push(b);
            td.extend_from_slice(b"d/p");
            let mut path = b"spiffe://td/p".to_vec();
            path.push(b);
            path.push(b'x');
            if let (Ok(td), Ok(path)) = (String::from_utf8(td), String::from_utf8(path)) {
                // '/' in the TD position just ends the TD early; it is covered by other cases.
                if b != b'/' {
                    assert_eq!(SpiffeId::new(&td).is_ok(), td_ok, "TD byte {b:#04x}");
                    assert_eq!(SpiffeId::new(&path).is_ok(), path_ok, "path byte {b:#04x}");
                }
            }
        }
    }

    #[test]
    fn length_caps() {
        let prefix = "spiffe://td/";
        let max = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert_eq!(max.len(), 2048);
        assert!(SpiffeId::new(&max).is_ok());
        assert_eq!(SpiffeId::new(&format!("{max}a")), Err(TooLong));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        assert_eq!(SpiffeId::new(&long_td), Err(TrustDomainTooLong));
    }

    #[test]
    fn classifies_ids() {
        let agent = SpiffeId::new("spiffe://td/spire/agent/join_token/abc").unwrap();
        assert!(agent.is_agent_id() && agent.is_workload_id());
        let server = TrustDomain::new("td").unwrap().server_id();
        assert!(server.is_server_id());
        assert_eq!(server.to_string(), "spiffe://td/spire/server");
        assert!(!SpiffeId::new("spiffe://td").unwrap().is_workload_id());
    }

    /// SPIRE's `IsReservedPath`: `/spire` and everything under `/spire/`, nothing else.
    #[test]
    fn reserved_namespace_is_the_spire_subtree() {
        for reserved in [
            "spiffe://td/spire",
            "spiffe://td/spire/server",
            "spiffe://td/spire/agent/join_token/abc",
            "spiffe://td/spire/agent",
            "spiffe://td/spire/anything/else",
            "spiffe://other.org/spire/server",
        ] {
            let id = SpiffeId::new(reserved).unwrap();
            assert!(id.is_reserved(), "{reserved}");
            assert_eq!(id.check_not_reserved(), Err(Reserved), "{reserved}");
        }
        assert!(TrustDomain::new("td").unwrap().server_id().is_reserved());
        for free in [
            "spiffe://td",
            "spiffe://td/spirex",
            "spiffe://td/spire-agent",
            "spiffe://td/spire.server",
            "spiffe://td/x/spire/server",
            "spiffe://td/SPIRE/server",
            "spiffe://td/ns/spire/sa/spire-agent",
        ] {
            let id = SpiffeId::new(free).unwrap();
            assert!(!id.is_reserved(), "{free}");
            assert_eq!(id.check_not_reserved(), Ok(()), "{free}");
        }
    }
}
