//! The Go test clients of `tests/go` (one Go module, a program per `cmd/<name>`), and the Go tools
//! the tests pin in nested modules under it (`tests/go/kustomize`): each built once per test
//! process with the Go toolchain into `<target>/go-bin/<name>`, from the committed `go.mod` /
//! `go.sum` (`-mod=readonly`; the module cache and the proxy supply the sources; Go's build cache
//! makes a rebuild of an unchanged program a no-op). Go is required, not optional: a machine
//! without it fails the tests that use it, saying so (`.ci/run` installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use crate::bin_dir;

static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());

/// The Go module of the test clients, `tests/go`.
pub fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("go")
}

/// The `go` command: `SIGIL_GO` if set, else `go` on `PATH`, else `/usr/local/go/bin/go`.
///
/// # Panics
/// If none of them runs, with what to install.
pub fn go() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("SIGIL_GO") {
        Some(go) => vec![go.into()],
        None => vec!["go".into(), "/usr/local/go/bin/go".into()],
    };
    for go in &candidates {
        if Command::new(go)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return go.clone();
        }
    }
    panic!(
        "Go is required for the Go test clients in tests/go (go-control-plane needs Go >= 1.26) \
         and none of {candidates:?} runs: install Go (.ci/run does) or set SIGIL_GO"
    );
}

/// `tests/go/cmd/<name>` built into `<target>/go-bin/<name>`, once per test process.
///
/// # Panics
/// If Go is missing or the build fails (with its output).
pub fn go_program(name: &str) -> PathBuf {
    build(&module_dir(), &format!("./cmd/{name}"), name)
}

/// kustomize v5, the version `tests/go/kustomize/go.mod` pins (its `tool` directive), built
/// into `<target>/go-bin/kustomize` once per test process. `kubectl kustomize` of the kubectl
/// built by `real-apiserver.sh` (v1.20.2) is kustomize v2.0.3, which knows no `kind: Component`
/// (kustomize >= 3.7); deploy/istio is one.
///
/// # Panics
/// If Go is missing or the build fails (with its output).
pub fn kustomize_bin() -> PathBuf {
    build(&module_dir().join("kustomize"), "tool", "kustomize")
}

/// `go build` of `package` in the module at `module` into `<target>/go-bin/<name>`, once per
/// test process.
fn build(module: &Path, package: &str, name: &str) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let target = bin_dir()
        .parent()
        .expect("a target dir above the profile dir")
        .join("go-bin");
    let out = target.join(name);
    let start = Instant::now();
    let result = Command::new(go())
        .current_dir(module)
        .args(["build", "-mod=readonly", "-buildvcs=false", "-o"])
        .arg(&out)
        .arg(package)
        .output()
        .expect("run go build");
    assert!(
        result.status.success(),
        "go build {package} (in {}) failed ({}):\n{}{}",
        module.display(),
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!(
        "built {package} of {} in {:.1}s",
        module.display(),
        start.elapsed().as_secs_f64()
    );
    built.insert(name.to_owned(), out.clone());
    out
}
