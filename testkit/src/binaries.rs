//! Where the built binaries are: `sigil-server`, `sigil-agent`, the examples and the kit's own
//! `caller-switch`, all built by `cargo build --workspace --bins` into one target profile dir.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Directory holding the built binaries: the profile dir of the running executable (a test
/// executable lives in `<target>/<profile>/deps/`, the benchmark beside the binaries), unless
/// [`use_bin_dir`] named another first.
///
/// # Panics
/// If `sigil-server` or `sigil-agent` is not there (the message says how to build them).
pub fn bin_dir() -> PathBuf {
    let dir = DIR
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let here = exe.parent().expect("executable dir").to_path_buf();
            if here.join("sigil-server").exists() {
                here
            } else {
                here.parent()
                    .map(Path::to_path_buf)
                    .expect("target profile dir")
            }
        })
        .clone();
    assert_built(&dir);
    dir
}

/// Takes the binaries from `dir` (the benchmark's `--bin-dir`).
///
/// # Panics
/// If a binary was already started from another dir.
pub fn use_bin_dir(dir: PathBuf) {
    let chosen = DIR.get_or_init(|| dir.clone());
    assert_eq!(chosen, &dir, "binaries already taken from another dir");
}

fn assert_built(dir: &Path) {
    for name in ["sigil-server", "sigil-agent"] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, which scripts/test does)",
            dir.join(name).display()
        );
    }
}

/// The `sigil-server` binary.
pub fn server_bin() -> PathBuf {
    bin_dir().join("sigil-server")
}

/// The `sigil-agent` binary.
pub fn agent_bin() -> PathBuf {
    bin_dir().join("sigil-agent")
}

/// Another binary of the workspace (an example's, the kit's `caller-switch`).
///
/// # Panics
/// If it has not been built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo build --workspace --bins` first",
        path.display()
    );
    path
}
