//! The CA's configuration, read from its keys of the `server` block with SPIRE's names:
//! `ca_ttl`, `default_x509_svid_ttl` (or the older `default_svid_ttl`), `default_jwt_svid_ttl`,
//! `ca_key_type`, `jwt_key_type`, `ca_subject`, `jwt_issuer`. Each default is written once, in
//! [`CaConfig::new`]; the SVID TTL floor and its check live here too, for the entry fields and
//! flags that also name TTLs.

use std::sync::Arc;
use std::time::Duration;

use sigil_common::hcl::{Block, ConfigError, parse_duration};
use sigil_proto::TrustDomain;

use crate::ca::upstream::UpstreamAuthority;
use crate::key_manager::KeyType;

/// `ca_ttl` unless set: the lifetime of each X.509 CA and JWT key.
pub(crate) const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// `default_x509_svid_ttl` unless set.
pub(crate) const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(60 * 60);
/// `default_jwt_svid_ttl` unless set.
pub(crate) const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(5 * 60);
/// The shortest lifetime Sigil issues an X509-SVID, JWT-SVID or agent SVID for. Agents renew
/// at half-life, so shorter lifetimes turn into a signing loop; the SPIFFE client libraries'
/// own test fixtures go down to 5 s. SPIRE sets no floor.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(5);

/// Checks an SVID TTL in seconds (an entry field, a flag): 0 means "the server's default";
/// anything else must be at least [`MIN_SVID_TTL`]. The error names the floor.
pub fn check_svid_ttl(seconds: u64) -> Result<(), String> {
    if seconds != 0 && seconds < MIN_SVID_TTL.as_secs() {
        return Err(format!(
            "{seconds}s is below the minimum SVID TTL of {}s",
            MIN_SVID_TTL.as_secs()
        ));
    }
    Ok(())
}

/// `ca_subject`: the subject of the CA certificates. SPIRE's default is `C=US, O=SPIFFE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    pub country: Vec<String>,
    pub organization: Vec<String>,
    pub common_name: String,
}

impl Default for CaSubject {
    fn default() -> Self {
        Self {
            country: vec!["US".to_owned()],
            organization: vec!["SPIFFE".to_owned()],
            common_name: String::new(),
        }
    }
}

/// What the CA is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    /// Lifetime of each X.509 CA and JWT key (SPIRE's `ca_ttl`).
    pub ca_ttl: Duration,
    /// Default X509-SVID lifetime (`default_x509_svid_ttl`).
    pub x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime (`default_jwt_svid_ttl`).
    pub jwt_svid_ttl: Duration,
    /// `ca_key_type`, parsed straight into the key manager's type: an unsupported one is a
    /// config error.
    pub key_type: KeyType,
    /// `jwt_key_type`: the JWT signing keys' type; `ca_key_type` unless set (as SPIRE).
    pub jwt_key_type: KeyType,
    pub ca_subject: CaSubject,
    /// `iss` claim of JWT-SVIDs (`jwt_issuer`); none by default.
    pub jwt_issuer: Option<String>,
    /// `UpstreamAuthority "disk"`: when set, each X.509 CA is an intermediate it signs and the
    /// bundle publishes its roots. Set by the binary once the upstream files are read.
    pub upstream: Option<Arc<UpstreamAuthority>>,
}

impl CaConfig {
    /// SPIRE's defaults: CA 24 h, X509-SVID 1 h, JWT-SVID 5 min, EC P-256, `C=US, O=SPIFFE`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            ca_ttl: DEFAULT_CA_TTL,
            x509_svid_ttl: DEFAULT_X509_SVID_TTL,
            jwt_svid_ttl: DEFAULT_JWT_SVID_TTL,
            key_type: KeyType::default(),
            jwt_key_type: KeyType::default(),
            ca_subject: CaSubject::default(),
            jwt_issuer: None,
            upstream: None,
        }
    }

    /// Reads the CA's keys of the `server` block (the block's other keys are its caller's);
    /// what is not set keeps [`CaConfig::new`]'s default.
    pub(crate) fn from_server_block(
        server: &mut Block<'_>,
        trust_domain: TrustDomain,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::new(trust_domain);
        if let Some(ttl) = positive(server, "ca_ttl")? {
            config.ca_ttl = ttl;
        }
        match (
            svid_ttl(server, "default_x509_svid_ttl")?,
            svid_ttl(server, "default_svid_ttl")?,
        ) {
            (Some(_), Some(_)) => {
                return Err(server.error(
                    "default_svid_ttl",
                    "is the older name of default_x509_svid_ttl; set only one of them",
                ));
            }
            (Some(ttl), None) | (None, Some(ttl)) => config.x509_svid_ttl = ttl,
            (None, None) => {}
        }
        if let Some(ttl) = svid_ttl(server, "default_jwt_svid_ttl")? {
            config.jwt_svid_ttl = ttl;
        }
        config.jwt_issuer = server.string("jwt_issuer")?.filter(|i| !i.is_empty());
        let key_type = |t: &str| t.parse::<KeyType>().map_err(|e| e.to_string());
        if let Some(ca_key_type) = server.parsed("ca_key_type", key_type)? {
            config.key_type = ca_key_type;
        }
        config.jwt_key_type = server
            .parsed("jwt_key_type", key_type)?
            .unwrap_or(config.key_type);
        if let Some(mut subject) = server.block("ca_subject")? {
            config.ca_subject = CaSubject {
                country: subject.string_list("country")?.unwrap_or_default(),
                organization: subject.string_list("organization")?.unwrap_or_default(),
                common_name: subject.string("common_name")?.unwrap_or_default(),
            };
            subject.finish()?;
        }
        Ok(config)
    }
}

/// A duration that must not be zero: a zero TTL would mint certificates that are born expired.
fn positive(block: &mut Block<'_>, key: &str) -> Result<Option<Duration>, ConfigError> {
    block.parsed(key, |s| match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be greater than zero")),
        d => Ok(d),
    })
}

/// An SVID lifetime (`key` of `block`): positive and at least [`MIN_SVID_TTL`].
pub(crate) fn svid_ttl(block: &mut Block<'_>, key: &str) -> Result<Option<Duration>, ConfigError> {
    block.parsed(key, |s| match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be greater than zero")),
        d if d < MIN_SVID_TTL => Err(format!(
            "{s:?} is below the minimum SVID TTL of {}s",
            MIN_SVID_TTL.as_secs()
        )),
        d => Ok(d),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svid_ttls_have_a_floor_and_zero_means_the_default() {
        assert_eq!(check_svid_ttl(0), Ok(()));
        assert_eq!(check_svid_ttl(5), Ok(()));
        assert_eq!(check_svid_ttl(86_400), Ok(()));
        assert_eq!(
            check_svid_ttl(1),
            Err("1s is below the minimum SVID TTL of 5s".to_owned())
        );
        assert!(check_svid_ttl(4).is_err());
    }
}
