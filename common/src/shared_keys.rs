//! The keys SPIRE's `server` and `agent` blocks share, read the same way for both binaries:
//! `trust_domain` and `data_dir` (required), `socket_path`, `log_level` and `log_format`, each
//! replaced by its command-line flag (`-trustDomain`, `-dataDir`, `-socketPath`, `-logLevel`,
//! `-logFormat`) when one is given, plus `-expandEnv`. [`SPIRE_ONLY`] and
//! [`EXPERIMENTAL_SPIRE_ONLY`] say what Sigil does with the keys of both blocks that SPIRE has
//! and Sigil does not implement.

use std::path::PathBuf;

use sigil_proto::TrustDomain;

use crate::hcl::{Block, ConfigError, Off, SpireOnly, parse_path, parse_trust_domain};

/// SPIRE's keys of both blocks' `experimental { ... }` that Sigil does not implement (each
/// binary has its own table for the rest).
pub const EXPERIMENTAL_SPIRE_ONLY: &[(&str, SpireOnly)] = &[
    (
        "require_pq_kem",
        SpireOnly::RefusedUnless(
            Off::False,
            "Sigil's TLS (rustls with ring) offers no post-quantum key exchange",
        ),
    ),
    (
        "feature_flags",
        SpireOnly::RefusedUnless(
            Off::Empty,
            "SPIRE's feature flags switch SPIRE-internal behaviours that Sigil does not have",
        ),
    ),
];

/// SPIRE's keys of both the `server` and the `agent` block that Sigil does not implement.
pub const SPIRE_ONLY: &[(&str, SpireOnly)] = &[
    (
        "log_file",
        SpireOnly::RefusedUnless(
            Off::Empty,
            "logs go to standard error only; redirect it or let systemd or the container runtime collect it",
        ),
    ),
    (
        "log_source_location",
        SpireOnly::Ignored("log lines name their module (target), not the source file and line"),
    ),
    (
        "profiling_enabled",
        SpireOnly::RefusedUnless(
            Off::False,
            "there is no pprof endpoint (a Go runtime feature); profile with perf or another native profiler",
        ),
    ),
    (
        "profiling_port",
        SpireOnly::Ignored("there is no pprof endpoint (profiling_enabled)"),
    ),
    (
        "profiling_freq",
        SpireOnly::Ignored("there is no pprof endpoint (profiling_enabled)"),
    ),
    (
        "profiling_names",
        SpireOnly::Ignored("there is no pprof endpoint (profiling_enabled)"),
    ),
];
use crate::log_config::{LogFormat, LogLevel};

/// The flags that replace the shared keys, and `-expandEnv`. Values are raw strings, validated
/// like the file's, with errors naming the flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedFlags {
    /// `-trustDomain`.
    pub trust_domain: Option<String>,
    /// `-dataDir`.
    pub data_dir: Option<String>,
    /// `-socketPath`.
    pub socket_path: Option<String>,
    /// `-logLevel`.
    pub log_level: Option<String>,
    /// `-logFormat`.
    pub log_format: Option<String>,
    /// `-expandEnv`: expand `$VAR`/`${VAR}` from the environment in the file before parsing it.
    pub expand_env: bool,
}

/// The shared keys of one `server` or `agent` block, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeys {
    /// `trust_domain`.
    pub trust_domain: TrustDomain,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// `socket_path`, when set: each binary has its own default.
    pub socket_path: Option<PathBuf>,
    /// `log_level` (default `INFO`).
    pub log_level: LogLevel,
    /// `log_format` (default `text`).
    pub log_format: LogFormat,
}

impl SharedKeys {
    /// Reads the shared keys of `block` (its other keys are the caller's), each replaced by its
    /// flag when `flags` has it.
    pub fn read(block: &mut Block<'_>, flags: &SharedFlags) -> Result<Self, ConfigError> {
        let socket_path = block.parsed_or_flag(
            "socket_path",
            "-socketPath",
            flags.socket_path.as_deref(),
            parse_path,
        )?;
        let trust_domain = block
            .parsed_or_flag(
                "trust_domain",
                "-trustDomain",
                flags.trust_domain.as_deref(),
                parse_trust_domain,
            )?
            .ok_or_else(|| block.missing("trust_domain"))?;
        let data_dir = block
            .parsed_or_flag(
                "data_dir",
                "-dataDir",
                flags.data_dir.as_deref(),
                parse_path,
            )?
            .ok_or_else(|| block.missing("data_dir"))?;
        let log_level = block.parsed_or_flag(
            "log_level",
            "-logLevel",
            flags.log_level.as_deref(),
            str::parse,
        )?;
        let log_format = block.parsed_or_flag(
            "log_format",
            "-logFormat",
            flags.log_format.as_deref(),
            str::parse,
        )?;
        Ok(Self {
            trust_domain,
            data_dir,
            socket_path,
            log_level: log_level.unwrap_or_default(),
            log_format: log_format.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hcl::Document;

    fn read(text: &str, flags: &SharedFlags) -> Result<SharedKeys, String> {
        let doc = Document::parse("x.conf", text).map_err(|e| e.to_string())?;
        let mut root = doc.root();
        let mut block = root.block("server").unwrap().unwrap();
        let keys = SharedKeys::read(&mut block, flags).map_err(|e| e.to_string())?;
        block.finish().map_err(|e| e.to_string())?;
        Ok(keys)
    }

    const FILE: &str = "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/var/lib/x\"\n  log_level = \"ERROR\"\n  socket_path = \"/run/x.sock\"\n}\n";

    #[test]
    fn defaults_and_file_values() {
        let keys = read(FILE, &SharedFlags::default()).unwrap();
        assert_eq!(keys.trust_domain.as_str(), "example.org");
        assert_eq!(keys.data_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(keys.socket_path, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(keys.log_level, LogLevel::Error);
        assert_eq!(keys.log_format, LogFormat::Text);
        let keys = read(
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}\n",
            &SharedFlags::default(),
        )
        .unwrap();
        assert_eq!((keys.socket_path, keys.log_level), (None, LogLevel::Info));
    }

    #[test]
    fn flags_replace_the_file_and_their_errors_name_them() {
        let flags = SharedFlags {
            trust_domain: Some("other.org".to_owned()),
            data_dir: Some("/srv".to_owned()),
            socket_path: Some("/run/y.sock".to_owned()),
            log_level: Some("warn".to_owned()),
            log_format: Some("json".to_owned()),
            expand_env: false,
        };
        let keys = read(FILE, &flags).unwrap();
        assert_eq!(keys.trust_domain.as_str(), "other.org");
        assert_eq!(keys.data_dir, PathBuf::from("/srv"));
        assert_eq!(keys.socket_path, Some(PathBuf::from("/run/y.sock")));
        assert_eq!(
            (keys.log_level, keys.log_format),
            (LogLevel::Warn, LogFormat::Json)
        );
        let bad = SharedFlags {
            log_format: Some("xml".to_owned()),
            ..SharedFlags::default()
        };
        assert_eq!(
            read(FILE, &bad).unwrap_err(),
            r#"command line: -logFormat: "xml" is not a valid log format (expected text or json)"#
        );
        assert_eq!(
            read(
                "server {\n  trust_domain = \"example.org\"\n}\n",
                &SharedFlags::default()
            )
            .unwrap_err(),
            "x.conf:1: server.data_dir: is required"
        );
    }
}
