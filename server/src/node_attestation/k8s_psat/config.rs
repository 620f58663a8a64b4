//! `NodeAttestor "k8s_psat"`'s configuration on the server: which clusters' projected service
//! account tokens are accepted, with SPIRE's keys:
//!
//! ```hcl
//! plugin_data {
//!     clusters = {
//!         "my-cluster" = {
//!             service_account_allow_list = ["spire:spire-agent"]
//!             audience = ["spire-server"]          # the default
//!             kube_config_file = ""                # in-cluster credentials
//!             allowed_node_label_keys = []
//!             allowed_pod_label_keys = []
//!         }
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use sigil_common::hcl::{Block, ConfigError};

/// The clusters whose agents may attest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatConfig {
    /// At least one cluster.
    pub clusters: BTreeMap<String, K8sPsatCluster>,
}

/// One cluster of [`K8sPsatConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatCluster {
    /// `namespace:service_account` pairs allowed to attest; not empty.
    pub service_account_allow_list: Vec<String>,
    /// Expected token audiences; SPIRE's default is `["spire-server"]`.
    pub audience: Vec<String>,
    /// `None` means in-cluster credentials.
    pub kube_config_file: Option<PathBuf>,
    pub allowed_node_label_keys: Vec<String>,
    pub allowed_pod_label_keys: Vec<String>,
}

impl K8sPsatConfig {
    /// Reads the plugin's `plugin_data`, which it needs.
    pub(crate) fn from_plugin_data(mut data: Block<'_>) -> Result<Self, ConfigError> {
        let entries = data
            .object_map("clusters")?
            .ok_or_else(|| data.missing("clusters"))?;
        if entries.is_empty() {
            return Err(data.error("clusters", "must name at least one cluster"));
        }
        let mut clusters = BTreeMap::new();
        for (name, c) in entries {
            clusters.insert(name, K8sPsatCluster::from_block(c)?);
        }
        data.finish()?;
        Ok(Self { clusters })
    }
}

impl K8sPsatCluster {
    fn from_block(mut c: Block<'_>) -> Result<Self, ConfigError> {
        let service_account_allow_list = c
            .string_list("service_account_allow_list")?
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                c.error(
                    "service_account_allow_list",
                    "must allow at least one namespace:service_account",
                )
            })?;
        if let Some(bad) = service_account_allow_list
            .iter()
            .find(|sa| !matches!(sa.split_once(':'), Some((ns, name)) if !ns.is_empty() && !name.is_empty()))
        {
            return Err(c.error(
                "service_account_allow_list",
                format!("{bad:?} is not of the form namespace:service_account"),
            ));
        }
        let cluster = Self {
            service_account_allow_list,
            audience: c
                .string_list("audience")?
                .unwrap_or_else(|| vec!["spire-server".to_owned()]),
            kube_config_file: c.optional_path("kube_config_file")?,
            allowed_node_label_keys: c
                .string_list("allowed_node_label_keys")?
                .unwrap_or_default(),
            allowed_pod_label_keys: c.string_list("allowed_pod_label_keys")?.unwrap_or_default(),
        };
        c.finish()?;
        Ok(cluster)
    }
}
