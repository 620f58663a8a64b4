//! `log_level` and `log_format`: how both binaries' logs are configured. Read from the
//! `server` or `agent` block (or `-logLevel`/`-logFormat`) and handed to the logging set-up.

use std::str::FromStr;

/// `log_level`: SPIRE's `DEBUG|INFO|WARN|ERROR`, case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Everything, per request.
    Debug,
    /// Lifecycle (the default).
    #[default]
    Info,
    /// Degraded service.
    Warn,
    /// An operator must act.
    Error,
}

impl LogLevel {
    /// The level as a `tracing` filter directive (`debug`, `info`, ...).
    pub fn as_filter(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "DEBUG" => Ok(Self::Debug),
            "INFO" => Ok(Self::Info),
            "WARN" | "WARNING" => Ok(Self::Warn),
            "ERROR" => Ok(Self::Error),
            _ => Err(format!(
                "{s:?} is not a valid log level (expected DEBUG, INFO, WARN or ERROR)"
            )),
        }
    }
}

/// `log_format`: `text` or `json`, case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!(
                "{s:?} is not a valid log format (expected text or json)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_and_formats() {
        assert_eq!("debug".parse(), Ok(LogLevel::Debug));
        assert_eq!("WARN".parse(), Ok(LogLevel::Warn));
        assert_eq!("Error".parse(), Ok(LogLevel::Error));
        assert!("LOUD".parse::<LogLevel>().is_err());
        assert_eq!("JSON".parse(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
