//! Structured logs on stderr: `log_format = "text"` for people, `"json"` for collectors.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is the configured `log_level` (e.g. "info");
/// `RUST_LOG` is deliberately not consulted: one typed config decides.
pub fn init(level: &str, json: bool) {
    // Dependencies are noisy at debug; keep them at warn unless we are tracing.
    let filter = EnvFilter::new(format!(
        "warn,sigil_server={level},sigil_proto={level},sigil_agent={level}"
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests calling run twice in one process) is harmless: keep the first.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
