//! Which servers the agent dials and how it first trusts them, from the `agent` block with
//! SPIRE's keys: `server_address` + `server_port` (or `-serverAddress` / `-serverPort`), or
//! Sigil's `server_addresses = ["host:port", ...]`; `trust_bundle_path` (or `-trustBundle`) or
//! `insecure_bootstrap = true`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use sigil_common::hcl::{Block, ConfigError, parse_path, parse_port};

/// SPIRE's agent API port.
pub(crate) const DEFAULT_SERVER_PORT: u16 = 8081;

/// One server to dial: a host name (every address it resolves to is tried) or an IP address,
/// and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ServerAddress {
    type Err = String;

    /// `host:port`, `ip:port` or `[ipv6]:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not host:port (e.g. \"10.0.0.1:8081\" or \"sigil-1.example.org:8081\")"
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6.strip_suffix(']').ok_or_else(bad)?;
                v6.parse::<Ipv6Addr>().map_err(|_| bad())?;
                v6
            }
            // An unbracketed IPv6 address would be ambiguous with the port.
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        let host = parse_host(host).map_err(|_| bad())?;
        let port = parse_port(port).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self { host, port })
    }
}

impl ServerAddress {
    /// The servers to dial, in order of preference: SPIRE's `server_address` (a name that may
    /// resolve to several addresses) with `server_port`, each replaced by its flag when given;
    /// or `server_addresses`. One or the other, never both, so that which servers the agent
    /// dials is never a guess.
    pub(crate) fn list_from_agent_block(
        a: &mut Block<'_>,
        address_flag: Option<&str>,
        port_flag: Option<&str>,
    ) -> Result<Vec<Self>, ConfigError> {
        if a.has("server_addresses") {
            for (key, flag, flag_set) in [
                ("server_address", "-serverAddress", address_flag.is_some()),
                ("server_port", "-serverPort", port_flag.is_some()),
            ] {
                if flag_set {
                    return Err(ConfigError::flag(
                        flag,
                        "cannot be used with server_addresses in the config file (each entry is host:port)",
                    ));
                }
                if a.has(key) {
                    return Err(a.error(
                        key,
                        "cannot be set together with server_addresses (each entry is host:port); set only one of them",
                    ));
                }
            }
            let list = a.string_list("server_addresses")?.unwrap_or_default();
            if list.is_empty() {
                return Err(a.error("server_addresses", "must list at least one server"));
            }
            let mut servers: Vec<Self> = Vec::with_capacity(list.len());
            for item in &list {
                let server: Self = item
                    .parse()
                    .map_err(|e: String| a.error("server_addresses", e))?;
                if servers.contains(&server) {
                    return Err(a.error("server_addresses", format!("{item:?} is listed twice")));
                }
                servers.push(server);
            }
            return Ok(servers);
        }
        let host = a
            .parsed_or_flag("server_address", "-serverAddress", address_flag, parse_host)?
            .ok_or_else(|| a.error("server_address", "is required (or server_addresses)"))?;
        let port = a.port_or_flag("server_port", "-serverPort", port_flag)?;
        Ok(vec![Self {
            host,
            port: port.unwrap_or(DEFAULT_SERVER_PORT),
        }])
    }
}

/// A host name or an IP address, without a scheme or port (the port is `server_port`).
fn parse_host(s: &str) -> Result<String, String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let is_label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if s.split('.').all(is_label) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a host name or IP address (give the port in server_port)"
        ))
    }
}

/// Where the agent's bootstrap trust in the server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustBundleSource {
    /// `trust_bundle_path`: a PEM file of the server's CA certificates.
    Path(PathBuf),
    /// `insecure_bootstrap = true`: trust the server on first contact (test setups only).
    InsecureBootstrap,
}

impl TrustBundleSource {
    /// `trust_bundle_path` (replaced by `-trustBundle` when given) or `insecure_bootstrap`:
    /// exactly one of them.
    pub(crate) fn from_agent_block(
        a: &mut Block<'_>,
        trust_bundle_flag: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let path = a.parsed_or_flag(
            "trust_bundle_path",
            "-trustBundle",
            trust_bundle_flag,
            parse_path,
        )?;
        match (path, a.bool("insecure_bootstrap")?.unwrap_or(false)) {
            (Some(path), false) => Ok(Self::Path(path)),
            (None, true) => Ok(Self::InsecureBootstrap),
            (None, false) => Err(a.error(
                "trust_bundle_path",
                "is required unless insecure_bootstrap = true",
            )),
            // SPIRE refuses the combination too: it is unclear which one the operator meant.
            (Some(_), true) => Err(a.error(
                "insecure_bootstrap",
                "cannot be true together with trust_bundle_path; set only one of them",
            )),
        }
    }
}
