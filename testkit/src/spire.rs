//! SPIRE itself, as a peer: its binaries built once per machine by `scripts/spire-peer.sh`
//! from the Go module proxy into a cache outside the repository. Tests that need SPIRE run
//! when the build is present and say that they skipped otherwise; CI does not build it.

use std::path::PathBuf;

/// The SPIRE version `scripts/spire-peer.sh` builds by default.
pub const VERSION: &str = "v1.13.3";

/// `spire-server` or `spire-agent` from `SIGIL_SPIRE_BIN_DIR`, else from the script's default
/// cache (`/var/tmp/sigil-spire/<version>/bin`); `None` (with a line saying how to build it)
/// when it is not there.
pub fn spire_bin(program: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SIGIL_SPIRE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/sigil-spire/{VERSION}/bin")));
    let bin = dir.join(program);
    if bin.is_file() {
        Some(bin)
    } else {
        eprintln!(
            "SKIPPED: no {program} at {} (scripts/spire-peer.sh builds SPIRE {VERSION} there)",
            bin.display()
        );
        None
    }
}
