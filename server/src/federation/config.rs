//! The `federation` block inside `server { }`, with SPIRE's keys:
//!
//! ```hcl
//! federation {
//!     bundle_endpoint {
//!         address = "0.0.0.0"
//!         port = 8443
//!         refresh_hint = "5m"
//!         profile "https_spiffe" {}
//!         # or: profile "https_web" { serving_cert_file { cert_file_path = "..." key_file_path = "..." } }
//!     }
//!     federates_with "other.org" {
//!         bundle_endpoint_url = "https://other.org:8443"
//!         bundle_endpoint_profile "https_spiffe" { endpoint_spiffe_id = "spiffe://other.org/spire/server" }
//!         # or: bundle_endpoint_profile "https_web" {}
//!     }
//! }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sigil_common::hcl::{self, Block, ConfigError, SpireOnly};
use sigil_proto::{SpiffeId, TrustDomain};

/// SPIRE's bundle endpoint port.
pub const DEFAULT_PORT: u16 = 8443;
/// SPIRE's default `refresh_hint`.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FederationConfig {
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    pub federates_with: Vec<FederatesWith>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    pub bind: SocketAddr,
    pub refresh_hint: Duration,
    pub profile: ServingProfile,
}

/// How the bundle endpoint authenticates itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServingProfile {
    /// The server's own X509-SVID (`spiffe://<td>/spire/server`).
    HttpsSpiffe,
    /// A Web PKI certificate from files.
    HttpsWeb {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// One foreign trust domain whose bundle endpoint we poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatesWith {
    pub trust_domain: TrustDomain,
    pub url: String,
    pub profile: EndpointProfile,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointProfile {
    /// Authenticate the endpoint by this SPIFFE ID, against the stored bundle of its trust
    /// domain.
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
    /// Authenticate it against the system's Web PKI roots.
    HttpsWeb,
}

impl FederationConfig {
    /// Reads `federation { ... }`; `None` when the block is absent.
    pub(crate) fn from_block(block: Option<Block<'_>>) -> Result<Option<Self>, ConfigError> {
        let Some(mut block) = block else {
            return Ok(None);
        };
        let bundle_endpoint = match block.block("bundle_endpoint")? {
            Some(b) => Some(read_bundle_endpoint(b)?),
            None => None,
        };
        let mut federates_with = Vec::new();
        for (label, mut fw) in block.labelled_blocks("federates_with")? {
            let trust_domain = TrustDomain::new(&label)
                .map_err(|e| fw.error("", format!("{label:?} is not a trust domain: {e}")))?;
            if federates_with
                .iter()
                .any(|f: &FederatesWith| f.trust_domain == trust_domain)
            {
                return Err(fw.error("", "is given more than once"));
            }
            let url = fw
                .string("bundle_endpoint_url")?
                .ok_or_else(|| fw.missing("bundle_endpoint_url"))?;
            check_url(&url).map_err(|m| fw.error("bundle_endpoint_url", m))?;
            let profiles = fw.labelled_blocks("bundle_endpoint_profile")?;
            let profile = match profiles.as_slice() {
                [] => return Err(fw.missing("bundle_endpoint_profile")),
                [(name, _)] => name.clone(),
                _ => return Err(fw.error("bundle_endpoint_profile", "is given more than once")),
            };
            let Some((_, mut p)) = profiles.into_iter().next() else {
                return Err(fw.missing("bundle_endpoint_profile"));
            };
            let profile = match profile.as_str() {
                "https_spiffe" => {
                    let id = p
                        .parsed("endpoint_spiffe_id", |s| {
                            SpiffeId::new(s).map_err(|e| e.to_string())
                        })?
                        .ok_or_else(|| p.missing("endpoint_spiffe_id"))?;
                    p.finish()?;
                    EndpointProfile::HttpsSpiffe {
                        endpoint_spiffe_id: id,
                    }
                }
                "https_web" => {
                    p.finish()?;
                    EndpointProfile::HttpsWeb
                }
                other => {
                    return Err(fw.error(
                        "bundle_endpoint_profile",
                        format!("unknown profile {other:?}: use \"https_spiffe\" or \"https_web\""),
                    ));
                }
            };
            fw.finish()?;
            federates_with.push(FederatesWith {
                trust_domain,
                url,
                profile,
            });
        }
        block.finish()?;
        Ok(Some(Self {
            bundle_endpoint,
            federates_with,
        }))
    }
}

fn read_bundle_endpoint(mut b: Block<'_>) -> Result<BundleEndpointConfig, ConfigError> {
    let ip = b.parsed("address", hcl::parse_listen_ip)?;
    let port = b.port("port")?;
    let refresh_hint = b.duration("refresh_hint")?.unwrap_or(DEFAULT_REFRESH_HINT);
    if refresh_hint < Duration::from_secs(1) {
        return Err(b.error("refresh_hint", "must be at least 1s"));
    }
    let profiles = b.labelled_blocks("profile")?;
    let profile = match profiles.len() {
        0 => ServingProfile::HttpsSpiffe,
        1 => {
            let Some((name, mut p)) = profiles.into_iter().next() else {
                return Err(b.missing("profile"));
            };
            match name.as_str() {
                "https_spiffe" => {
                    p.finish()?;
                    ServingProfile::HttpsSpiffe
                }
                "https_web" => {
                    p.spire_only(&[(
                        "acme",
                        SpireOnly::Refused(
                            "ACME certificates are not fetched; give the serving certificate as serving_cert_file { cert_file_path key_file_path }",
                        ),
                    )])?;
                    let mut files = p
                        .block("serving_cert_file")?
                        .ok_or_else(|| p.missing("serving_cert_file"))?;
                    let cert_file = files
                        .optional_path("cert_file_path")?
                        .ok_or_else(|| files.missing("cert_file_path"))?;
                    let key_file = files
                        .optional_path("key_file_path")?
                        .ok_or_else(|| files.missing("key_file_path"))?;
                    files.spire_only(&[(
                        "file_sync_interval",
                        SpireOnly::Ignored("the files are read once, at start-up"),
                    )])?;
                    files.finish()?;
                    p.finish()?;
                    ServingProfile::HttpsWeb {
                        cert_file,
                        key_file,
                    }
                }
                other => {
                    return Err(b.error(
                        "profile",
                        format!("unknown profile {other:?}: use \"https_spiffe\" or \"https_web\" (ACME is not supported)"),
                    ));
                }
            }
        }
        _ => return Err(b.error("profile", "is given more than once")),
    };
    b.finish()?;
    Ok(BundleEndpointConfig {
        bind: SocketAddr::new(
            ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port.unwrap_or(DEFAULT_PORT),
        ),
        refresh_hint,
        profile,
    })
}

/// Both profiles need an `https` URL without user info (SPIFFE Federation §5.2).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must be an https:// URL"));
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => Err(format!("{url:?} must not carry user info")),
        Some(_) => Ok(()),
        None => Err(format!("{url:?} has no host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Option<FederationConfig>, ConfigError> {
        let doc = hcl::Document::parse("server.conf", &format!("federation {{\n{body}\n}}\n"))?;
        let mut root = doc.root();
        let out = FederationConfig::from_block(root.block("federation")?);
        root.finish()?;
        out
    }

    #[test]
    fn full_block_parses() {
        let cfg = parse(
            r#"
            bundle_endpoint {
                address = "127.0.0.1"
                port = 9443
                refresh_hint = "30s"
                profile "https_web" {
                    serving_cert_file {
                        cert_file_path = "/c.pem"
                        key_file_path = "/k.pem"
                        file_sync_interval = "1m"
                    }
                }
            }
            federates_with "other.org" {
                bundle_endpoint_url = "https://127.0.0.1:8443"
                bundle_endpoint_profile "https_spiffe" {
                    endpoint_spiffe_id = "spiffe://other.org/spire/server"
                }
            }
            federates_with "web.org" {
                bundle_endpoint_url = "https://web.org/bundle"
                bundle_endpoint_profile "https_web" {}
            }"#,
        )
        .unwrap()
        .unwrap();
        let ep = cfg.bundle_endpoint.unwrap();
        assert_eq!(ep.bind, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(ep.refresh_hint, Duration::from_secs(30));
        assert_eq!(
            ep.profile,
            ServingProfile::HttpsWeb {
                cert_file: "/c.pem".into(),
                key_file: "/k.pem".into()
            }
        );
        assert_eq!(cfg.federates_with.len(), 2);
        assert_eq!(cfg.federates_with[0].trust_domain.as_str(), "other.org");
        assert_eq!(
            cfg.federates_with[0].profile,
            EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::new("spiffe://other.org/spire/server").unwrap()
            }
        );
        assert_eq!(cfg.federates_with[1].profile, EndpointProfile::HttpsWeb);
        assert_eq!(cfg.federates_with[1].url, "https://web.org/bundle");
    }

    #[test]
    fn acme_is_refused_and_file_sync_interval_only_warns() {
        let err = parse(
            "bundle_endpoint {\n  profile \"https_web\" {\n    acme {\n      domain_name = \"example.org\"\n    }\n  }\n}",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "server.conf:4: federation.bundle_endpoint.profile.https_web.acme: not supported by Sigil: ACME certificates are not fetched; give the serving certificate as serving_cert_file { cert_file_path key_file_path }"
        );
        let doc = hcl::Document::parse(
            "server.conf",
            "federation {\nbundle_endpoint {\n  profile \"https_web\" {\n    serving_cert_file {\n      cert_file_path = \"/c\"\n      key_file_path = \"/k\"\n      file_sync_interval = \"1h\"\n    }\n  }\n}\n}\n",
        )
        .unwrap();
        let mut root = doc.root();
        FederationConfig::from_block(root.block("federation").unwrap()).unwrap();
        assert_eq!(
            doc.take_warnings(),
            [
                "server.conf:7: federation.bundle_endpoint.profile.https_web.serving_cert_file.file_sync_interval: has no effect in Sigil: the files are read once, at start-up"
            ]
        );
    }

    #[test]
    fn defaults() {
        let cfg = parse("bundle_endpoint {}").unwrap().unwrap();
        let ep = cfg.bundle_endpoint.unwrap();
        assert_eq!(ep.bind, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(ep.refresh_hint, DEFAULT_REFRESH_HINT);
        assert_eq!(ep.profile, ServingProfile::HttpsSpiffe);
        assert!(cfg.federates_with.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let bad = [
            (
                r#"federates_with "o.org" { bundle_endpoint_profile "https_web" {} }"#,
                "bundle_endpoint_url",
            ),
            (
                r#"federates_with "o.org" { bundle_endpoint_url = "http://x" bundle_endpoint_profile "https_web" {} }"#,
                "https://",
            ),
            (
                r#"federates_with "o.org" { bundle_endpoint_url = "https://u@x" bundle_endpoint_profile "https_web" {} }"#,
                "user info",
            ),
            (
                r#"federates_with "o.org" { bundle_endpoint_url = "https://x" }"#,
                "bundle_endpoint_profile",
            ),
            (
                r#"federates_with "o.org" { bundle_endpoint_url = "https://x" bundle_endpoint_profile "https_spiffe" {} }"#,
                "endpoint_spiffe_id",
            ),
            (
                r#"federates_with "o.org" { bundle_endpoint_url = "https://x" bundle_endpoint_profile "acme" {} }"#,
                "unknown profile",
            ),
            (
                r#"federates_with "Bad Org" { bundle_endpoint_url = "https://x" bundle_endpoint_profile "https_web" {} }"#,
                "not a trust domain",
            ),
            (
                r#"bundle_endpoint { profile "https_web" {} }"#,
                "serving_cert_file",
            ),
            (r#"bundle_endpoint { profile "acme" {} }"#, "ACME"),
            (r#"bundle_endpoint { bogus = 1 }"#, "bogus"),
            (r#"bundle_endpoint { refresh_hint = "0s" }"#, "refresh_hint"),
        ];
        for (body, want) in bad {
            // HCL allows one attribute per single-line block.
            let body = &body
                .replace("{ ", "{\n")
                .replace(" }", "\n}")
                .replace("\" bundle_endpoint_profile", "\"\nbundle_endpoint_profile");
            let e = parse(body).expect_err(body).to_string();
            assert!(e.contains(want), "{body}: {e}");
            assert!(e.contains("server.conf:"), "{body}: {e}");
        }
    }
}
