//! A small typed reader over `hcl-edit` for SPIRE-style HCL config files, shared by both
//! binaries.
//!
//! `hcl-rs`'s `Body` drops source positions; `hcl-edit` keeps a span on every attribute and
//! block, so each error can name the file, the line and the key path. A [`Block`] view hands out
//! typed values and remembers which keys it handed out; [`Block::finish`] turns every key nobody
//! asked for into an "unknown key" error, so a misspelt key never goes unnoticed.
//!
//! - [`document`]: a parsed file and its line numbers.
//! - [`block`]: the [`Block`] view and its typed accessors.
//! - [`values`]: the parsers of the values both configs share (Go durations, ports, paths,
//!   listen addresses, trust domains).
//! - [`file`]: reading the file ([`Document::read`]), with SPIRE's `-expandEnv`.
//! - [`plugins`]: the `plugins { Kind "name" { plugin_data { ... } } }` table.
//! - [`spire_only`]: what a component does with SPIRE's keys that Sigil lacks (refuse them
//!   saying why, or accept them with one warning), instead of calling them unknown.
//! - [`hcl1`]: a clear error for HCL 1's one-line blocks, which the HCL 2 parser refuses.

pub mod block;
pub mod document;
pub mod file;
mod hcl1;
pub mod plugins;
pub mod spire_only;
pub mod values;

#[cfg(test)]
mod tests;

use std::fmt;

pub use block::Block;
pub use document::Document;
pub use file::expand_env;
pub use plugins::{Builder, Plugin, PluginTable, SpirePlugins};
pub use spire_only::{Off, SpireOnly};
pub use values::{
    parse_duration, parse_http_path, parse_listen_ip, parse_path, parse_port, parse_trust_domain,
};

/// A config error: where it is (file, line, key path) and what is wrong, displayed on one line
/// as `server.conf:12: server.bind_port: "80x" is not a valid port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file's name as given to the parser, or `command line` for a flag.
    pub file: String,
    /// One-based line, when the error is tied to one.
    pub line: Option<usize>,
    /// Dotted key path (`server.bind_port`, `plugins.KeyManager.vault`) or a flag (`-serverPort`);
    /// empty for whole-file errors such as a syntax error.
    pub key: String,
    /// What is wrong, e.g. `"80x" is not a valid port`.
    pub message: String,
}

/// What [`ConfigError::file`] holds for an error in a command-line flag.
pub const COMMAND_LINE: &str = "command line";

impl ConfigError {
    /// An error in the value of a command-line flag, e.g. `-trustDomain`.
    pub fn flag(flag: &str, message: impl Into<String>) -> Self {
        Self {
            file: COMMAND_LINE.to_owned(),
            line: None,
            key: flag.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
