//! sigil-common: what `sigil-server` and `sigil-agent` both need, written once. It knows
//! neither binary: each module serves both the same way.
//!
//! - [`hcl`]: the config-file reader and the `plugins` table.
//! - [`shared_keys`], [`log_config`], [`health_checks`], [`telemetry`]: the config keys and
//!   sections both binaries share.
//! - [`cli_args`]: SPIRE's single-dash flags, rewritten for clap.
//! - [`fs_checks`]: file-permission checks of key and state files, stale-socket removal.
//! - [`private_socket`]: a Unix socket for its owner alone (the admin sockets).
//! - [`supervisor`], [`logging`]: the tasks of a process, its signals and drain; log set-up
//!   and the level changed at run time ([`logger_output`]: what `logger get|set|reset` print).
//! - [`listener`], [`ops`]: TCP listeners with caps and timeouts; `/live` `/ready` `/metrics`.
//! - [`tls`], [`uds`]: the SPIFFE-ID-pinning server verifier; gRPC over a Unix socket.
//! - [`time`]: the current Unix time.
//! - [`allocator`]: free memory given back to the system after a burst.
// Denied, not forbidden: `allocator` allows the one FFI call no safe crate offers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod allocator;
pub mod cli_args;
pub mod fs_checks;
pub mod hcl;
pub mod health_checks;
pub mod key_type;
pub mod listener;
pub mod log_config;
pub mod logger_output;
pub mod logging;
pub mod ops;
pub mod private_socket;
pub mod shared_keys;
pub mod supervisor;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod tls;
pub mod uds;
