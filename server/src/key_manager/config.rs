//! The `KeyManager` plugin's configuration: `memory` (no settings) or `disk`, whose
//! `plugin_data { keys_path = "..." }` defaults to `<data_dir>/keys.json`.

use std::path::{Path, PathBuf};

use sigil_common::hcl::{Block, ConfigError, parse_path};

/// Which key manager holds the CA's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerConfig {
    Memory,
    /// Keys persisted to `keys_path` (default `<data_dir>/keys.json`).
    Disk {
        keys_path: PathBuf,
    },
}

impl KeyManagerConfig {
    /// `KeyManager "disk"` from its `plugin_data`, if any.
    pub(crate) fn disk(data: Option<Block<'_>>, data_dir: &Path) -> Result<Self, ConfigError> {
        let mut keys_path = None;
        if let Some(mut data) = data {
            keys_path = data.parsed("keys_path", parse_path)?;
            data.finish()?;
        }
        Ok(Self::Disk {
            keys_path: keys_path.unwrap_or_else(|| data_dir.join("keys.json")),
        })
    }
}
