//! The server's `plugins` table: which plugins sigil-server has, how many of each kind may be
//! configured, and which component builds each one from its block (its owner parses its own
//! `plugin_data`). The table itself is sigil-common's, shared with the agent.

use std::path::Path;

use sigil_common::hcl::{Block, Builder, ConfigError, PluginTable};

use crate::ca::upstream::UpstreamDiskConfig;
use crate::datastore::DatastoreConfig;
use crate::key_manager::KeyManagerConfig;
use crate::node_attestation::k8s_psat::K8sPsatConfig;
use crate::notifier::K8sBundleConfig;

/// The `NodeAttestor` plugins; at least one is configured. `join_token` takes no settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAttestorsConfig {
    pub join_token: bool,
    pub k8s_psat: Option<K8sPsatConfig>,
}

/// One configured `NodeAttestor`.
enum NodeAttestor {
    JoinToken,
    K8sPsat(K8sPsatConfig),
}

/// The `plugins` block, read.
pub(super) struct Plugins {
    pub(super) datastore: DatastoreConfig,
    pub(super) key_manager: KeyManagerConfig,
    pub(super) upstream_authority: Option<UpstreamDiskConfig>,
    pub(super) node_attestors: NodeAttestorsConfig,
    pub(super) bundle_publisher: Option<K8sBundleConfig>,
}

impl Plugins {
    /// Reads the file's `plugins` block; `data_dir` holds the plugins' default files.
    pub(super) fn read(root: &mut Block<'_>, data_dir: &Path) -> Result<Self, ConfigError> {
        let mut table = PluginTable::from_root(root)?.spire_plugins(super::spire_only::PLUGINS);
        let datastore = table.exactly_one(
            "DataStore",
            &[("sql", &|p| {
                DatastoreConfig::from_plugin_data(p.data(), data_dir)
            })],
        )?;
        let key_managers: &[Builder<'_, KeyManagerConfig>] = &[
            ("memory", &|_| Ok(KeyManagerConfig::Memory)),
            ("disk", &|p| KeyManagerConfig::disk(p.data(), data_dir)),
        ];
        let key_manager = table.exactly_one("KeyManager", key_managers)?;
        let upstream_authority = table.at_most_one(
            "UpstreamAuthority",
            &[("disk", &|p| {
                UpstreamDiskConfig::from_plugin_data(p.required_data()?)
            })],
        )?;
        let attestors: &[Builder<'_, NodeAttestor>] = &[
            ("join_token", &|_| Ok(NodeAttestor::JoinToken)),
            ("k8s_psat", &|p| {
                K8sPsatConfig::from_plugin_data(p.required_data()?).map(NodeAttestor::K8sPsat)
            }),
        ];
        let mut node_attestors = NodeAttestorsConfig::default();
        for attestor in table.each_once("NodeAttestor", attestors)? {
            match attestor {
                NodeAttestor::JoinToken => node_attestors.join_token = true,
                NodeAttestor::K8sPsat(psat) => node_attestors.k8s_psat = Some(psat),
            }
        }
        if node_attestors == NodeAttestorsConfig::default() {
            return Err(table.error("NodeAttestor", "at least one is required"));
        }
        let bundle_publisher = table
            .each_once(
                "Notifier",
                &[("k8sbundle", &|p| {
                    K8sBundleConfig::from_plugin_data(p.data())
                })],
            )?
            .pop();
        table.spire_only(super::spire_only::PLUGIN_KINDS)?;
        table.finish()?;
        Ok(Self {
            datastore,
            key_manager,
            upstream_authority,
            node_attestors,
            bundle_publisher,
        })
    }
}
