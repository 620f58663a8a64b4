//! Structured logs on stderr, set up the same way by both binaries: `log_format = "text"` for
//! people, `"json"` for collectors, at the configured `log_level` (`RUST_LOG` is deliberately
//! not consulted: one typed config decides).
//!
//! Text is coloured only when stderr is a terminal, as SPIRE does: a log written to a file or
//! a pipe carries no ANSI escape codes, so `grep key=value` finds what it looks for.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The target of the server's audit log lines (`audit_log_enabled`): always at INFO, whatever
/// `log_level` says, so a quieter log never drops the record of who changed what.
pub const AUDIT_TARGET: &str = "sigil::audit";

/// Installs the global subscriber: our crates (`binary_crate`, e.g. `"sigil_server"`, and the
/// shared ones) log at `level` (e.g. `"info"`), dependencies at warn. A second call in one
/// process (tests running a binary's `run` twice) keeps the first subscriber.
pub fn init(binary_crate: &str, level: &str, json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(binary_crate, level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Dependencies are noisy at debug; they stay at warn unless a directive names them. The audit
/// target is always at INFO (it only carries events when the audit log is on).
fn filter(binary_crate: &str, level: &str) -> EnvFilter {
    EnvFilter::new(format!(
        "warn,{binary_crate}={level},sigil_common={level},sigil_proto={level},{AUDIT_TARGET}=info"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_crates_at_the_level_dependencies_at_warn() {
        let f = filter("sigil_agent", "debug").to_string();
        for directive in [
            "warn",
            "sigil_agent=debug",
            "sigil_common=debug",
            "sigil_proto=debug",
            "sigil::audit=info",
        ] {
            assert!(f.split(',').any(|d| d == directive), "{directive} in {f}");
        }
    }
}
