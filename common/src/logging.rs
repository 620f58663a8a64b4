//! Structured logs on stderr, set up the same way by both binaries: `log_format = "text"` for
//! people, `"json"` for collectors, at the configured `log_level` (`RUST_LOG` is deliberately
//! not consulted: one typed config decides).
//!
//! Text is coloured only when stderr is a terminal, as SPIRE does: a log written to a file or
//! a pipe carries no ANSI escape codes, so `grep key=value` finds what it looks for.
//!
//! The level can be changed while the process runs ([`LogControl`], SPIRE's logger API): the
//! filter sits behind a reload handle.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};

use sigil_proto::spire::api::types::{LogLevel, Logger};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The process's one [`LogControl`], set by the first [`init`].
static CONTROL: OnceLock<LogControl> = OnceLock::new();

/// The target of the server's audit log lines (`audit_log_enabled`): always at INFO, whatever
/// `log_level` says, so a quieter log never drops the record of who changed what.
pub const AUDIT_TARGET: &str = "sigil::audit";

/// Installs the global subscriber: our crates (`binary_crate`, e.g. `"sigil_server"`, and the
/// shared ones) log at `level` (e.g. `"info"`), dependencies at warn. A second call in one
/// process (tests running a binary's `run` twice) keeps the first subscriber, and returns its
/// control.
pub fn init(binary_crate: &str, level: &str, json: bool) -> LogControl {
    CONTROL
        .get_or_init(|| {
            let launch = LogControl::parse_level(level).unwrap_or(LogLevel::Info);
            let (filter, handle) = reload::Layer::new(filter(binary_crate, launch));
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false);
            let registry = tracing_subscriber::registry().with(filter);
            let _ = if json {
                registry.with(fmt.json().flatten_event(true)).try_init()
            } else {
                registry.with(fmt).try_init()
            };
            LogControl {
                inner: Arc::new(Inner {
                    handle,
                    binary_crate: binary_crate.to_owned(),
                    launch,
                    current: Mutex::new(launch),
                }),
            }
        })
        .clone()
}

/// Reads and changes the log level of the running process (SPIRE's logger API: get, set, reset
/// to the launch level).
#[derive(Clone)]
pub struct LogControl {
    inner: Arc<Inner>,
}

struct Inner {
    handle: reload::Handle<EnvFilter, Registry>,
    binary_crate: String,
    /// The level from the config file or `-logLevel`.
    launch: LogLevel,
    current: Mutex<LogLevel>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("launch", &self.inner.launch)
            .finish_non_exhaustive()
    }
}

impl LogControl {
    /// SPIRE's level names (logrus'): `panic`, `fatal`, `error`, `warn`/`warning`, `info`,
    /// `debug`, `trace`, case-insensitive.
    pub fn parse_level(s: &str) -> Option<LogLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "panic" => LogLevel::Panic,
            "fatal" => LogLevel::Fatal,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }

    /// The current and launch levels.
    pub fn logger(&self) -> Logger {
        Logger {
            current_level: self.current() as i32,
            launch_level: self.inner.launch as i32,
        }
    }

    fn current(&self) -> LogLevel {
        // A poisoned lock still holds a valid level.
        *self.inner.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the level from now on; `Unspecified` is refused.
    pub fn set(&self, level: LogLevel) -> Result<Logger, String> {
        if level == LogLevel::Unspecified {
            return Err("newLevel value cannot be LogLevel_UNSPECIFIED".into());
        }
        let mut current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        self.inner
            .handle
            .reload(filter(&self.inner.binary_crate, level))
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        *current = level;
        drop(current);
        Ok(self.logger())
    }

    /// Back to the launch level.
    pub fn reset(&self) -> Result<Logger, String> {
        self.set(self.inner.launch)
    }
}

/// The `tracing` directive for an API level. Sigil logs nothing at logrus' panic or fatal
/// levels (a fatal condition is an error line, then exit): both keep errors only.
fn directive(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Unspecified | LogLevel::Info => "info",
        LogLevel::Panic | LogLevel::Fatal | LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// Dependencies are noisy at debug; they stay at warn unless a directive names them. The audit
/// target is always at INFO (it only carries events when the audit log is on).
fn filter(binary_crate: &str, level: LogLevel) -> EnvFilter {
    let level = directive(level);
    EnvFilter::new(format!(
        "warn,{binary_crate}={level},sigil_common={level},sigil_proto={level},{AUDIT_TARGET}=info"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_crates_at_the_level_dependencies_at_warn() {
        let f = filter("sigil_agent", LogLevel::Debug).to_string();
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

    #[test]
    fn spire_level_names() {
        assert_eq!(LogControl::parse_level("DEBUG"), Some(LogLevel::Debug));
        assert_eq!(LogControl::parse_level("warning"), Some(LogLevel::Warn));
        assert_eq!(LogControl::parse_level("Fatal"), Some(LogLevel::Fatal));
        assert_eq!(LogControl::parse_level("loud"), None);
    }
}
