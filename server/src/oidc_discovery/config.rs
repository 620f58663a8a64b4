//! The `oidc_discovery` block of server.conf: where the discovery endpoint listens, the host
//! names it serves, HTTPS or plain HTTP behind a proxy.
//!
//! ```hcl
//! oidc_discovery {
//!     bind_address = "0.0.0.0"   # the default
//!     bind_port = 8443           # the default
//!     domains = ["oidc.example.org"]
//!     tls_cert_file = "/etc/sigil/oidc.crt"
//!     tls_key_file = "/etc/sigil/oidc.key"
//!     # allow_insecure_scheme = true   # plain HTTP only
//! }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use sigil_common::hcl::{Block, ConfigError, parse_listen_ip};

/// SPIRE's OIDC discovery provider port.
pub const DEFAULT_BIND_PORT: u16 = 8443;

/// The `oidc_discovery` block of server.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcDiscoveryConfig {
    pub bind: SocketAddr,
    /// Host names served (lowercase, no port); empty serves any `Host`.
    pub domains: Vec<String>,
    /// HTTPS when set; plain HTTP (behind a TLS-terminating proxy) otherwise.
    pub tls: Option<TlsFiles>,
    /// Plain HTTP only: name the issuer `http://<Host>` (SPIRE's `allow_insecure_scheme`).
    pub allow_insecure_scheme: bool,
}

/// `tls_cert_file` and `tls_key_file`: the listener's certificate chain and key (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// `tls_cert_file` and `tls_key_file` of `block`: both (HTTPS) or neither (`None`).
    pub(crate) fn from_block(block: &mut Block<'_>) -> Result<Option<Self>, ConfigError> {
        let cert_file = block.optional_path("tls_cert_file")?;
        let key_file = block.optional_path("tls_key_file")?;
        match (cert_file, key_file) {
            (Some(cert_file), Some(key_file)) => Ok(Some(Self {
                cert_file,
                key_file,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(block.missing("tls_key_file")),
            (None, Some(_)) => Err(block.missing("tls_cert_file")),
        }
    }
}

impl OidcDiscoveryConfig {
    /// Reads `oidc_discovery { bind_address, bind_port, domains, tls_cert_file, tls_key_file,
    /// allow_insecure_scheme }`; `None` when the block is absent.
    pub(crate) fn from_block(block: Option<Block<'_>>) -> Result<Option<Self>, ConfigError> {
        let Some(mut block) = block else {
            return Ok(None);
        };
        let ip = block.parsed("bind_address", parse_listen_ip)?;
        let port = block.port("bind_port")?;
        let domains = block.string_list("domains")?.unwrap_or_default();
        let tls = TlsFiles::from_block(&mut block)?;
        let allow_insecure_scheme = block.bool("allow_insecure_scheme")?.unwrap_or(false);
        let mut checked = Vec::with_capacity(domains.len());
        for d in domains {
            if !is_host_name(&d) {
                return Err(block.error(
                    "domains",
                    format!("{d:?} is not a host name (no scheme, port or path)"),
                ));
            }
            checked.push(d.to_ascii_lowercase());
        }
        if tls.is_some() && allow_insecure_scheme {
            return Err(block.error(
                "allow_insecure_scheme",
                "only applies to a plain-HTTP listener (no tls_cert_file)",
            ));
        }
        block.finish()?;
        Ok(Some(Self {
            bind: SocketAddr::new(
                ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                port.unwrap_or(DEFAULT_BIND_PORT),
            ),
            domains: checked,
            tls,
            allow_insecure_scheme,
        }))
    }
}

/// A DNS name or IP literal as it may appear in `Host` without a port.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use sigil_common::hcl::Document;

    use super::*;

    const BASE: &str = "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n}\nplugins {\n  DataStore \"sql\" {}\n  KeyManager \"memory\" {}\n  NodeAttestor \"join_token\" {}\n}\n";

    /// The block after a valid server config, so that lines are as in a real file.
    fn parse(block: &str) -> Result<Option<OidcDiscoveryConfig>, ConfigError> {
        let text = format!("{BASE}{block}");
        let doc = Document::parse("server.conf", &text)?;
        OidcDiscoveryConfig::from_block(doc.root().block("oidc_discovery")?)
    }

    #[test]
    fn config_block_parses_with_defaults_and_validation() {
        assert_eq!(parse("").unwrap(), None);
        let c = parse("oidc_discovery {\n  domains = [\"OIDC.example.org\"]\n}\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.bind, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.domains, vec!["oidc.example.org"]);
        assert_eq!(c.tls, None);
        let c = parse("oidc_discovery {\n  bind_address = \"127.0.0.1\"\n  bind_port = 9443\n  tls_cert_file = \"/c.pem\"\n  tls_key_file = \"/k.pem\"\n}\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.bind, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert_file: "/c.pem".into(),
                key_file: "/k.pem".into()
            })
        );

        let bad = [
            (
                "oidc_discovery {\n  tls_cert_file = \"/c.pem\"\n}\n",
                "server.conf:10: oidc_discovery.tls_key_file: is required",
            ),
            (
                "oidc_discovery {\n  domains = [\"https://x.org\"]\n}\n",
                "server.conf:10: oidc_discovery.domains: \"https://x.org\" is not a host name (no scheme, port or path)",
            ),
            (
                "oidc_discovery {\n  bind_port = \"x\"\n}\n",
                "server.conf:11: oidc_discovery.bind_port: \"x\" is not a valid port",
            ),
            (
                "oidc_discovery {\n  domain = [\"x.org\"]\n}\n",
                "server.conf:11: oidc_discovery.domain: unknown key",
            ),
        ];
        for (block, want) in bad {
            assert_eq!(parse(block).unwrap_err().to_string(), want, "{block}");
        }
    }
}
