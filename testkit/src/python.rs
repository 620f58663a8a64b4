//! The Python interpreter the end-to-end tests run independent SPIFFE clients with (py-spiffe,
//! py-spiffe-tls, PyJWT; `tests/requirements.txt`), and running a client that prints JSON.

use std::process::Command;

/// The Python interpreter with py-spiffe (SIGIL_PYTHON, set by .ci/run and scripts/test).
pub fn python() -> String {
    std::env::var("SIGIL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs [`python()`] with `args` (a script path or `-c <code>`, then its arguments) and parses
/// what it prints as JSON.
///
/// # Panics
/// If it fails (naming `what`, with its stderr and stdout) or prints no JSON.
pub fn python_json(what: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python()).args(args).output().expect("python");
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
