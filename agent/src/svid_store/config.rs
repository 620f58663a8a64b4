//! The agent's `KeyManager` plugin: `memory` (nothing kept on disk, re-attest on every start)
//! or `disk`, whose `plugin_data { directory = "..." }` (default: `data_dir`) holds the agent's
//! key in the [`SvidStore`](super::SvidStore).

use std::path::{Path, PathBuf};

use sigil_common::hcl::{Block, ConfigError, parse_path};

/// Where the agent keeps its key, SVID and bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerConfig {
    Memory,
    /// Keys persisted under `directory` (default: `data_dir`).
    Disk {
        directory: PathBuf,
    },
}

impl KeyManagerConfig {
    /// `KeyManager "disk"` from its `plugin_data`, if any.
    pub(crate) fn disk(data: Option<Block<'_>>, data_dir: &Path) -> Result<Self, ConfigError> {
        let mut directory = None;
        if let Some(mut data) = data {
            directory = data.parsed("directory", parse_path)?;
            data.finish()?;
        }
        Ok(Self::Disk {
            directory: directory.unwrap_or_else(|| data_dir.to_owned()),
        })
    }
}
