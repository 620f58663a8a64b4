//! `WorkloadAttestor "unix"`'s configuration, with SPIRE's keys: `plugin_data {
//! discover_workload_path workload_size_limit }`.

use std::path::PathBuf;

use sigil_common::hcl::{Block, ConfigError};

/// SPIRE's `unix` plugin configuration, plus where `/proc` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixAttestorConfig {
    /// Adds `unix:path` and `unix:sha256` selectors.
    pub discover_workload_path: bool,
    /// Largest binary (bytes) hashed for `unix:sha256`: 0 means no limit, negative means
    /// never hash (SPIRE's `workload_size_limit`).
    pub workload_size_limit: i64,
    /// `/proc` outside tests.
    pub proc_root: PathBuf,
}

impl Default for UnixAttestorConfig {
    fn default() -> Self {
        Self {
            discover_workload_path: false,
            workload_size_limit: 0,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl UnixAttestorConfig {
    /// Reads the plugin's `plugin_data`, if any. The file's `workload_size_limit` is a
    /// non-negative number of bytes (0: no limit).
    pub(crate) fn from_plugin_data(data: Option<Block<'_>>) -> Result<Self, ConfigError> {
        let Some(mut data) = data else {
            return Ok(Self::default());
        };
        let out = Self {
            discover_workload_path: data.bool("discover_workload_path")?.unwrap_or(false),
            workload_size_limit: data
                .u64("workload_size_limit")?
                .map_or(0, |limit| i64::try_from(limit).unwrap_or(i64::MAX)),
            ..Self::default()
        };
        data.finish()?;
        Ok(out)
    }
}
