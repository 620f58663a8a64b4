//! The agent's `plugins` table: which plugins sigil-agent has, how many of each kind may be
//! configured, and which component builds each one from its block (its owner parses its own
//! `plugin_data`). The table itself is sigil-common's, shared with the server.

use std::path::Path;

use sigil_common::hcl::{Block, Builder, ConfigError, PluginTable};

use crate::node_attestation::K8sPsatConfig;
use crate::svid_store::KeyManagerConfig;
use crate::workload_attestation::{K8sAttestorConfig, UnixAttestorConfig};

/// The one `NodeAttestor` plugin. `join_token` takes no settings: the token itself is the
/// `agent` block's `join_token` (or `-joinToken`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestorConfig {
    JoinToken,
    K8sPsat(K8sPsatConfig),
}

/// The `WorkloadAttestor` plugins; at least one is configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadAttestorsConfig {
    pub unix: Option<UnixAttestorConfig>,
    pub k8s: Option<K8sAttestorConfig>,
}

/// One configured `WorkloadAttestor`.
enum WorkloadAttestor {
    Unix(UnixAttestorConfig),
    K8s(K8sAttestorConfig),
}

/// The `plugins` block, read.
pub(super) struct Plugins {
    pub(super) node_attestor: NodeAttestorConfig,
    pub(super) key_manager: KeyManagerConfig,
    pub(super) workload_attestors: WorkloadAttestorsConfig,
}

impl Plugins {
    /// Reads the file's `plugins` block; `data_dir` is the disk key manager's default.
    pub(super) fn read(root: &mut Block<'_>, data_dir: &Path) -> Result<Self, ConfigError> {
        let mut table = PluginTable::from_root(root)?.spire_plugins(super::spire_only::PLUGINS);
        let node_attestors: &[Builder<'_, NodeAttestorConfig>] = &[
            ("join_token", &|_| Ok(NodeAttestorConfig::JoinToken)),
            ("k8s_psat", &|p| {
                K8sPsatConfig::from_plugin_data(p.required_data()?).map(NodeAttestorConfig::K8sPsat)
            }),
        ];
        let node_attestor = table.exactly_one("NodeAttestor", node_attestors)?;
        let key_managers: &[Builder<'_, KeyManagerConfig>] = &[
            ("memory", &|_| Ok(KeyManagerConfig::Memory)),
            ("disk", &|p| KeyManagerConfig::disk(p.data(), data_dir)),
        ];
        let key_manager = table.exactly_one("KeyManager", key_managers)?;
        let workload_attestors: &[Builder<'_, WorkloadAttestor>] = &[
            ("unix", &|p| {
                UnixAttestorConfig::from_plugin_data(p.data()).map(WorkloadAttestor::Unix)
            }),
            ("k8s", &|p| {
                K8sAttestorConfig::from_plugin_data(p.data()).map(WorkloadAttestor::K8s)
            }),
        ];
        let mut attestors = WorkloadAttestorsConfig::default();
        for attestor in table.each_once("WorkloadAttestor", workload_attestors)? {
            match attestor {
                WorkloadAttestor::Unix(unix) => attestors.unix = Some(unix),
                WorkloadAttestor::K8s(k8s) => attestors.k8s = Some(k8s),
            }
        }
        if attestors == WorkloadAttestorsConfig::default() {
            return Err(table.error("WorkloadAttestor", "at least one is required"));
        }
        table.spire_only(super::spire_only::PLUGIN_KINDS)?;
        table.finish()?;
        Ok(Self {
            node_attestor,
            key_manager,
            workload_attestors: attestors,
        })
    }
}
