//! The agent block's `admin_socket_path` and `authorized_delegates`, SPIRE's keys and rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sigil_common::hcl::{Block, ConfigError};
use sigil_proto::{SpiffeId, TrustDomain};

/// Where the Delegated Identity API is served, and to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegatedIdentityConfig {
    /// `admin_socket_path`, made absolute.
    pub socket_path: PathBuf,
    /// `authorized_delegates`: a caller is served when one of its own entries has one of these
    /// SPIFFE IDs.
    pub authorized_delegates: BTreeSet<SpiffeId>,
}

impl DelegatedIdentityConfig {
    /// Reads the two keys from the agent block. `None` without `admin_socket_path` (SPIRE
    /// serves no admin socket then; `authorized_delegates` alone is accepted and unused).
    /// `workload_socket` is the Workload API's socket when the agent serves one: the admin
    /// socket may not be in its directory or below it, where workloads reach it. Each delegate
    /// must be a SPIFFE ID in `trust_domain`.
    pub fn from_agent_block(
        block: &mut Block<'_>,
        trust_domain: &TrustDomain,
        workload_socket: Option<&Path>,
    ) -> Result<Option<Self>, ConfigError> {
        let socket_path = block.optional_path("admin_socket_path")?;
        let delegates = block
            .string_list("authorized_delegates")?
            .unwrap_or_default();
        let mut authorized_delegates = BTreeSet::new();
        for delegate in delegates {
            let id = SpiffeId::new(&delegate).map_err(|e| {
                block.error(
                    "authorized_delegates",
                    format!("{delegate:?} is not a valid SPIFFE ID: {e}"),
                )
            })?;
            if id.trust_domain() != trust_domain {
                return Err(block.error(
                    "authorized_delegates",
                    format!("{id} is not a member of trust domain {trust_domain:?}"),
                ));
            }
            authorized_delegates.insert(id);
        }
        let Some(socket_path) = socket_path else {
            return Ok(None);
        };
        let socket_path = std::path::absolute(&socket_path)
            .map_err(|e| block.error("admin_socket_path", e.to_string()))?;
        if let Some(workload_socket) = workload_socket
            && shares_directory(&socket_path, workload_socket)
        {
            return Err(block.error(
                "admin_socket_path",
                "the admin socket cannot be in the same directory or a subdirectory as that containing the Workload API socket",
            ));
        }
        Ok(Some(Self {
            socket_path,
            authorized_delegates,
        }))
    }
}

/// Whether `admin` is in the directory of `workload` or below it (SPIRE's rule: workloads,
/// which may reach that directory, must not reach the admin socket).
fn shares_directory(admin: &Path, workload: &Path) -> bool {
    let Ok(workload) = std::path::absolute(workload) else {
        return false;
    };
    let dir = workload.parent().unwrap_or(Path::new("/"));
    admin.starts_with(dir) && admin != dir
}

#[cfg(test)]
mod tests {
    use sigil_common::hcl::Document;

    use super::*;

    fn read(body: &str, workload: Option<&str>) -> Result<Option<DelegatedIdentityConfig>, String> {
        let doc = Document::parse("agent.conf", &format!("agent {{\n{body}\n}}\n")).unwrap();
        let mut root = doc.root();
        let mut block = root.block("agent").unwrap().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let got =
            DelegatedIdentityConfig::from_agent_block(&mut block, &td, workload.map(Path::new))
                .map_err(|e| e.to_string())?;
        block.finish().map_err(|e| e.to_string())?;
        Ok(got)
    }

    #[test]
    fn reads_the_socket_and_the_delegates() {
        let got = read(
            "admin_socket_path = \"/run/sigil/admin/api.sock\"\nauthorized_delegates = [\"spiffe://example.org/cilium\", \"spiffe://example.org/ztunnel\"]",
            Some("/run/sigil/public/api.sock"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.socket_path, PathBuf::from("/run/sigil/admin/api.sock"));
        let ids: Vec<String> = got
            .authorized_delegates
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            ids,
            [
                "spiffe://example.org/cilium",
                "spiffe://example.org/ztunnel"
            ]
        );
    }

    #[test]
    fn without_a_socket_nothing_is_served() {
        assert_eq!(read("", None).unwrap(), None);
        assert_eq!(read("admin_socket_path = \"\"", None).unwrap(), None);
        assert_eq!(
            read(
                "authorized_delegates = [\"spiffe://example.org/cilium\"]",
                None
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn refuses_the_workload_api_directory_and_foreign_or_invalid_delegates() {
        for admin in [
            "/run/sigil/public/admin.sock",
            "/run/sigil/public/sub/admin.sock",
        ] {
            let err = read(
                &format!("admin_socket_path = \"{admin}\""),
                Some("/run/sigil/public/api.sock"),
            )
            .unwrap_err();
            assert!(
                err.contains("admin_socket_path") && err.contains("same directory"),
                "{err}"
            );
        }
        // Only while the Workload API socket is served.
        assert!(read("admin_socket_path = \"/run/sigil/public/admin.sock\"", None).is_ok());
        let err = read(
            "admin_socket_path = \"/run/a/admin.sock\"\nauthorized_delegates = [\"spiffe://other.org/cilium\"]",
            None,
        )
        .unwrap_err();
        assert!(
            err.contains("authorized_delegates") && err.contains("other.org"),
            "{err}"
        );
        let err = read("authorized_delegates = [\"cilium\"]", None).unwrap_err();
        assert!(err.contains("not a valid SPIFFE ID"), "{err}");
    }
}
