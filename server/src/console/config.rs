//! The `console` block inside `server { }`: where the web console listens, its optional TLS
//! files, the file holding its bearer token and the SPIFFE IDs whose X.509-SVIDs open it
//! without the token.
//!
//! ```hcl
//! server {
//!     console {
//!         bind_address = "127.0.0.1"   # the default
//!         bind_port = 8090             # the default
//!         token_file = "/etc/sigil/console.token"   # required, mode 0600
//!         tls_cert_file = "/etc/sigil/console.crt"  # both or neither
//!         tls_key_file = "/etc/sigil/console.key"
//!         # needs TLS; IDs of our trust domain
//!         admin_ids = ["spiffe://example.org/ops/alice"]
//!     }
//! }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use sigil_common::hcl::{Block, ConfigError, parse_listen_ip};
use sigil_proto::{SpiffeId, TrustDomain};

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
    /// A client X.509-SVID (verified against the trust domain's bundle) whose SPIFFE ID is
    /// one of these is let in without the token; empty: the token only.
    pub admin_ids: Vec<SpiffeId>,
}

impl ConsoleConfig {
    /// Reads `console { bind_address, bind_port, tls_cert_file, tls_key_file, token_file,
    /// admin_ids }` from the `server` block; `None` when the block is absent (the console is
    /// off). `admin_ids` must be SPIFFE IDs of `trust_domain` and needs TLS.
    pub(crate) fn from_block(
        block: Option<Block<'_>>,
        trust_domain: &TrustDomain,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(mut block) = block else {
            return Ok(None);
        };
        let ip = block.parsed("bind_address", parse_listen_ip)?;
        let port = block.port("bind_port")?;
        let token_file = block
            .optional_path("token_file")?
            .ok_or_else(|| block.missing("token_file"))?;
        let tls = TlsFiles::from_block(&mut block)?;
        let admin_ids = block
            .string_list("admin_ids")?
            .unwrap_or_default()
            .iter()
            .map(|s| admin_id(s, trust_domain).map_err(|m| block.error("admin_ids", m)))
            .collect::<Result<Vec<_>, _>>()?;
        if !admin_ids.is_empty() && tls.is_none() {
            return Err(block.error(
                "admin_ids",
                "a client certificate needs TLS: set tls_cert_file and tls_key_file too",
            ));
        }
        block.finish()?;
        Ok(Some(Self {
            bind: SocketAddr::new(
                ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port.unwrap_or(DEFAULT_BIND_PORT),
            ),
            token_file,
            tls,
            admin_ids,
        }))
    }
}

/// One `admin_ids` item: a SPIFFE ID of `trust_domain` (the only one whose SVIDs the
/// console verifies).
fn admin_id(s: &str, trust_domain: &TrustDomain) -> Result<SpiffeId, String> {
    let id = SpiffeId::new(s).map_err(|e| format!("{s:?}: {e}"))?;
    if id.trust_domain() != trust_domain {
        return Err(format!(
            "{id} is not in trust domain {trust_domain}: the console verifies client SVIDs against its own bundle only"
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use sigil_common::hcl::Document;

    use super::*;

    fn read(text: &str) -> Result<Option<ConsoleConfig>, ConfigError> {
        let doc = Document::parse("server.conf", text)?;
        let mut root = doc.root();
        let mut server = root.block("server")?.unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        ConsoleConfig::from_block(server.block("console")?, &td)
    }

    const TLS: &str = "tls_cert_file = \"/c\"\n tls_key_file = \"/k\"\n";

    #[test]
    fn off_without_the_block_and_local_by_default() {
        assert_eq!(read("server {}\n").unwrap(), None);
        let c = read("server {\n console {\n token_file = \"/t\"\n }\n}\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.bind, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(c.tls, None);
        assert!(c.admin_ids.is_empty());
    }

    #[test]
    fn admin_ids_of_our_trust_domain_with_tls() {
        let c = read(&format!(
            "server {{\n console {{\n token_file = \"/t\"\n {TLS} admin_ids = [\"spiffe://example.org/ops/alice\", \"spiffe://example.org/ops/bob\"]\n }}\n}}\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            c.admin_ids,
            [
                SpiffeId::new("spiffe://example.org/ops/alice").unwrap(),
                SpiffeId::new("spiffe://example.org/ops/bob").unwrap()
            ]
        );
    }

    #[test]
    fn refuses_admin_ids_without_tls_bad_or_foreign() {
        let e = read("server {\n console {\n token_file = \"/t\"\n admin_ids = [\"spiffe://example.org/ops/alice\"]\n }\n}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("admin_ids") && e.contains("tls_cert_file"),
            "{e}"
        );
        for (id, want) in [
            (
                "https://example.org/ops/alice",
                "https://example.org/ops/alice",
            ),
            ("spiffe://example.org/a//b", "spiffe://example.org/a//b"),
            (
                "spiffe://other.org/ops/alice",
                "not in trust domain example.org",
            ),
        ] {
            let e = read(&format!(
                "server {{\n console {{\n token_file = \"/t\"\n {TLS} admin_ids = [\"{id}\"]\n }}\n}}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("admin_ids") && e.contains(want), "{id}: {e}");
        }
        let e = read(&format!(
            "server {{\n console {{\n token_file = \"/t\"\n {TLS} admin_ids = \"spiffe://example.org/x\"\n }}\n}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("list of strings"), "{e}");
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
