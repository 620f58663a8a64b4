//! sigil-common: what `sigil-server` and `sigil-agent` both need, written once. It knows
//! neither binary: each module serves both the same way.
//!
//! - [`hcl`]: the config-file reader and the `plugins` table.
//! - [`shared_keys`], [`log_config`], [`health_checks`]: the config keys and sections both
//!   binaries share.
//! - [`cli_args`]: SPIRE's single-dash flags, rewritten for clap.
//! - [`fs_checks`]: file-permission checks of key and state files, stale-socket removal.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli_args;
pub mod fs_checks;
pub mod hcl;
pub mod health_checks;
pub mod log_config;
pub mod shared_keys;
#[cfg(feature = "testing")]
pub mod testing;
