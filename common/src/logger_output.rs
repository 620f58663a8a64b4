//! What `logger get|set|reset` print, for both binaries' CLIs: SPIRE's pretty block and its
//! `-output json` (`spire.api.types.Logger`), and how `set -level` is read.

use sigil_proto::spire::api::types::{LogLevel, Logger};

use crate::logging::LogControl;

/// `-level`: required, one of SPIRE's level names (case-insensitive). SPIRE's messages.
pub fn parse_level_flag(level: Option<&str>) -> Result<LogLevel, String> {
    match level {
        None | Some("") => Err("a value (-level) must be set".into()),
        Some(l) => LogControl::parse_level(l)
            .ok_or_else(|| format!("the value {l:?} is not a valid setting")),
    }
}

/// SPIRE's pretty output: logrus' level names, then a blank line.
pub fn pretty(logger: &Logger) -> String {
    format!(
        "Logger Level : {}\nLaunch Level : {}\n",
        logrus_name(logger.current_level),
        logrus_name(logger.launch_level)
    )
}

/// SPIRE's JSON: `{"current_level":"DEBUG","launch_level":"INFO"}`.
pub fn json(logger: &Logger) -> String {
    format!(
        "{{\"current_level\":\"{}\",\"launch_level\":\"{}\"}}",
        api_name(logger.current_level),
        api_name(logger.launch_level)
    )
}

/// The enum value's name in `spire.api.types.LogLevel`, as protojson writes it.
fn api_name(level: i32) -> &'static str {
    LogLevel::try_from(level)
        .unwrap_or(LogLevel::Unspecified)
        .as_str_name()
}

/// logrus' `Level.String()`.
fn logrus_name(level: i32) -> &'static str {
    match LogLevel::try_from(level).unwrap_or(LogLevel::Unspecified) {
        LogLevel::Unspecified => "unknown",
        LogLevel::Panic => "panic",
        LogLevel::Fatal => "fatal",
        LogLevel::Error => "error",
        LogLevel::Warn => "warning",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_spire() {
        let l = Logger {
            current_level: LogLevel::Warn as i32,
            launch_level: LogLevel::Info as i32,
        };
        assert_eq!(pretty(&l), "Logger Level : warning\nLaunch Level : info\n");
        assert_eq!(
            json(&l),
            r#"{"current_level":"WARN","launch_level":"INFO"}"#
        );
        assert_eq!(parse_level_flag(Some("DEBUG")), Ok(LogLevel::Debug));
        assert!(parse_level_flag(None).is_err());
        assert_eq!(
            parse_level_flag(Some("loud")),
            Err("the value \"loud\" is not a valid setting".into())
        );
    }
}
