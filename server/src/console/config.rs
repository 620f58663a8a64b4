//! The `console` block inside `server { }`: where the web console listens, its optional TLS
//! files and the file holding its bearer token.
//!
//! ```hcl
//! server {
//!     console {
//!         bind_address = "127.0.0.1"   # the default
//!         bind_port = 8090             # the default
//!         token_file = "/etc/sigil/console.token"   # required, mode 0600
//!         tls_cert_file = "/etc/sigil/console.crt"  # both or neither
//!         tls_key_file = "/etc/sigil/console.key"
//!     }
//! }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use sigil_common::hcl::{Block, ConfigError, parse_listen_ip};

use crate::oidc_discovery::TlsFiles;

/// The console's port when `bind_port` is not set.
pub const DEFAULT_BIND_PORT: u16 = 8090;

/// The validated `console` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    pub bind: SocketAddr,
    /// The file whose content (surrounding whitespace trimmed) is the bearer token.
    pub token_file: PathBuf,
    /// HTTPS when set; plain HTTP otherwise.
    pub tls: Option<TlsFiles>,
}

impl ConsoleConfig {
    /// Reads `console { bind_address, bind_port, tls_cert_file, tls_key_file, token_file }`
    /// from the `server` block; `None` when the block is absent (the console is off).
    pub(crate) fn from_block(block: Option<Block<'_>>) -> Result<Option<Self>, ConfigError> {
        let Some(mut block) = block else {
            return Ok(None);
        };
        let ip = block.parsed("bind_address", parse_listen_ip)?;
        let port = block.port("bind_port")?;
        let token_file = block
            .optional_path("token_file")?
            .ok_or_else(|| block.missing("token_file"))?;
        let tls = TlsFiles::from_block(&mut block)?;
        block.finish()?;
        Ok(Some(Self {
            bind: SocketAddr::new(
                ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port.unwrap_or(DEFAULT_BIND_PORT),
            ),
            token_file,
            tls,
        }))
    }
}

#[cfg(test)]
mod tests {
    use sigil_common::hcl::Document;

    use super::*;

    fn read(text: &str) -> Result<Option<ConsoleConfig>, ConfigError> {
        let doc = Document::parse("server.conf", text)?;
        let mut root = doc.root();
        let mut server = root.block("server")?.unwrap();
        ConsoleConfig::from_block(server.block("console")?)
    }

    #[test]
    fn off_without_the_block_and_local_by_default() {
        assert_eq!(read("server {}\n").unwrap(), None);
        let c = read("server {\n console {\n token_file = \"/t\"\n }\n}\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.bind, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(c.tls, None);
    }

    #[test]
    fn refuses_a_missing_token_half_tls_and_unknown_keys() {
        let e = read("server {\n console {\n bind_port = 1\n }\n}\n").unwrap_err();
        assert!(e.to_string().contains("token_file"), "{e}");
        let e =
            read("server {\n console {\n token_file = \"/t\"\n tls_cert_file = \"/c\"\n }\n}\n")
                .unwrap_err();
        assert!(e.to_string().contains("tls_key_file"), "{e}");
        let e = read("server {\n console {\n token_file = \"/t\"\n colour = \"red\"\n }\n}\n")
            .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
