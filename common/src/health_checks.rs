//! The `health_checks` section both binaries share: where the liveness and readiness endpoints
//! listen, with SPIRE's keys and defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::hcl::{Block, ConfigError, parse_http_path, parse_listen_ip};

/// The `health_checks` section: where the liveness and readiness endpoints listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `bind_address` and `bind_port`.
    pub bind: SocketAddr,
    /// `live_path`: the liveness endpoint.
    pub live_path: String,
    /// `ready_path`: the readiness endpoint.
    pub ready_path: String,
}

impl HealthConfig {
    /// Reads a `health_checks` block with SPIRE's keys and defaults (`localhost:80`, `/live`,
    /// `/ready`). `None` when the block is absent or `listener_enabled` is not true.
    pub fn from_block(block: Option<Block<'_>>) -> Result<Option<Self>, ConfigError> {
        let Some(mut block) = block else {
            return Ok(None);
        };
        let enabled = block.bool("listener_enabled")?.unwrap_or(false);
        let ip = block.parsed("bind_address", parse_listen_ip)?;
        let port = block.port("bind_port")?;
        let live_path = block.parsed("live_path", parse_http_path)?;
        let ready_path = block.parsed("ready_path", parse_http_path)?;
        block.finish()?;
        if !enabled {
            return Ok(None);
        }
        Ok(Some(Self {
            bind: SocketAddr::new(
                ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port.unwrap_or(80),
            ),
            live_path: live_path.unwrap_or_else(|| "/live".to_owned()),
            ready_path: ready_path.unwrap_or_else(|| "/ready".to_owned()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hcl::Document;

    fn doc(text: &str) -> Document {
        Document::parse("test.conf", text).unwrap()
    }

    #[test]
    fn health_checks_defaults_and_disabled() {
        let d = doc("health_checks {\n  listener_enabled = true\n}\n");
        let mut root = d.root();
        let h = HealthConfig::from_block(root.block("health_checks").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(h.bind, "127.0.0.1:80".parse().unwrap());
        assert_eq!(
            (h.live_path.as_str(), h.ready_path.as_str()),
            ("/live", "/ready")
        );

        let d = doc("health_checks {\n  bind_port = \"8080\"\n}\n");
        let mut root = d.root();
        assert_eq!(
            HealthConfig::from_block(root.block("health_checks").unwrap()).unwrap(),
            None
        );

        let d = doc("health_checks {\n  listener_enabled = true\n  live_path = \"live\"\n}\n");
        let mut root = d.root();
        assert_eq!(
            HealthConfig::from_block(root.block("health_checks").unwrap())
                .unwrap_err()
                .to_string(),
            r#"test.conf:3: health_checks.live_path: "live" is not an HTTP path (it must start with /)"#
        );
    }
}
