//! `sigil-agent helper`: files for software that does not speak SPIFFE, a drop-in for
//! spiffe-helper. Run as `sigil-agent helper -config helper.conf`, or through a link named
//! `spiffe-helper` (`ln -s sigil-agent spiffe-helper`), it reads spiffe-helper's HCL file and
//! keeps, in `cert_dir`, the X.509-SVID, its key and the trust bundle, JWT-SVIDs for listed
//! audiences and the JWT bundles, each replaced atomically, and after each X.509 renewal runs
//! `cmd` or signals a process as spiffe-helper does. It is a Workload API client like any
//! workload, so the files hold what the agent gives the helper's own process.
//!
//! - [`config`]: the HCL file, every spiffe-helper key, refusals with file and line.
//! - [`cmd_args`]: `cmd_args` split as spiffe-helper splits it.
//! - [`render`]: the files' contents, in spiffe-helper's formats.
//! - [`files`]: atomic writes; the X.509 files switch together (what a reader is promised).
//! - [`renew`]: `cmd`, `renew_signal`, `pid_file_name`.
//! - [`health`]: the `health_checks` listener.
//! - [`run`]: the daemon's loops and the one-shot mode.

mod cmd_args;
pub mod config;
pub mod files;
pub mod health;
pub mod render;
pub mod renew;
pub mod run;

pub use config::{HelperConfig, HelperFlags};

/// The file name under which `sigil-agent` behaves as spiffe-helper.
pub const SPIFFE_HELPER_NAME: &str = "spiffe-helper";
