//! Trust domain names (SPIFFE-ID §2.1).

use std::fmt;
use std::str::FromStr;

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Maximum length of a trust domain name: the RFC 3986 host limit (SPIFFE-ID §2.3).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A validated, lowercase trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare name (`example.org`) or any valid SPIFFE ID (`spiffe://example.org/x`),
    /// keeping only the trust domain, as go-spiffe's `TrustDomainFromString` does.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.contains(":/") {
            return Ok(SpiffeId::new(s)?.trust_domain().clone());
        }
        validate_name(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The name, e.g. `example.org`, without the scheme.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<td>`: the key of Workload API bundle maps
    /// and the URI SAN of CA certificates.
    pub fn id_string(&self) -> String {
        format!("spiffe://{}", self.0)
    }

    /// `spiffe://<td>/spire/server`, the ID the server presents to agents.
    pub fn server_id(&self) -> SpiffeId {
        SpiffeId::from_parts_unchecked(self.clone(), "/spire/server".to_owned())
    }
}

/// Checks a trust domain name with go-spiffe's rules (the strictest of the client libraries).
pub(crate) fn validate_name(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !name.bytes().all(is_trust_domain_byte) {
        return Err(SpiffeIdError::BadTrustDomainChar);
    }
    Ok(())
}

fn is_trust_domain_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_ids() {
        assert_eq!(
            TrustDomain::new("example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org/ns/x")
                .unwrap()
                .as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("td_1-2.x").unwrap().id_string(),
            "spiffe://td_1-2.x"
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Example.org",
            "td:8080",
            "u@td",
            "td/x",
            "t$d",
            "[::1]",
            "%61",
        ] {
            assert!(TrustDomain::new(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
        assert!(TrustDomain::new(&"a".repeat(255)).is_ok());
    }
}
