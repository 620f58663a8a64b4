//! A small typed reader over `hcl-edit` for SPIRE-style HCL config files.
//!
//! `hcl-rs`'s `Body` drops source positions; `hcl-edit` keeps a span on every attribute and
//! block, so each error can name the file, the line and the key path. A [`Block`] view hands out
//! typed values and remembers which keys it handed out; [`Block::finish`] turns every key nobody
//! asked for into an "unknown key" error, so a misspelt key never goes unnoticed.
//!
//! The parts both binaries configure the same way (`log_level`, `log_format`, `health_checks`)
//! live at the bottom of this module.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::Body;

use crate::TrustDomain;

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
    pub message: String,
}

/// What [`ConfigError::file`] holds for an error in a command-line flag.
pub const COMMAND_LINE: &str = "command line";

impl ConfigError {
    /// An error in the value of a command-line flag, e.g. `-trustDomain`.
    pub fn flag(flag: &str, message: impl Into<String>) -> Self {
        ConfigError {
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

/// A parsed HCL file: the body plus what is needed to turn byte offsets into line numbers.
pub struct Document {
    file: String,
    line_starts: Vec<usize>,
    body: Body,
}

impl Document {
    /// Parses `text`; `file` is only used to name the file in errors.
    pub fn parse(file: &str, text: &str) -> Result<Document, ConfigError> {
        let body = hcl_edit::parser::parse_body(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: Some(e.location().line()),
            key: String::new(),
            message: format!("HCL syntax error: {}", e.message()),
        })?;
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ok(Document {
            file: file.to_owned(),
            line_starts,
            body,
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// The top-level body as a [`Block`] with an empty key path.
    pub fn root(&self) -> Block<'_> {
        Block::from_body(self, String::new(), None, &self.body)
    }

    fn line_of(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
        // `line_starts[0] == 0`, so the count of line starts at or before the offset is the
        // one-based line number.
        span.map(|s| self.line_starts.partition_point(|&start| start <= s.start))
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A config file may hold a join token or a database password: show only its name.
        f.debug_struct("Document")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

struct Attr<'a> {
    key: String,
    value: &'a Expression,
    line: Option<usize>,
    used: bool,
}

struct SubBlock<'a> {
    block: &'a hcl_edit::structure::Block,
    line: Option<usize>,
    used: bool,
}

/// A view of one HCL block body (or object value) that hands out typed values and records
/// which keys were read. Every accessor returns `Ok(None)` when the key is absent.
pub struct Block<'a> {
    doc: &'a Document,
    path: String,
    line: Option<usize>,
    attrs: Vec<Attr<'a>>,
    blocks: Vec<SubBlock<'a>>,
}

impl<'a> Block<'a> {
    fn from_body(doc: &'a Document, path: String, line: Option<usize>, body: &'a Body) -> Self {
        let attrs = body
            .attributes()
            .map(|a| Attr {
                key: a.key.as_str().to_owned(),
                value: &a.value,
                line: doc.line_of(a.span()),
                used: false,
            })
            .collect();
        let blocks = body
            .blocks()
            .map(|b| SubBlock {
                block: b,
                line: doc.line_of(b.span()),
                used: false,
            })
            .collect();
        Block {
            doc,
            path,
            line,
            attrs,
            blocks,
        }
    }

    fn from_object(
        doc: &'a Document,
        path: String,
        line: Option<usize>,
        object: &'a hcl_edit::expr::Object,
    ) -> Result<Self, ConfigError> {
        let mut attrs = Vec::with_capacity(object.len());
        for (key, value) in object.iter() {
            let key_line = doc.line_of(key.span()).or(line);
            let name = match key {
                ObjectKey::Ident(ident) => ident.as_str().to_owned(),
                ObjectKey::Expression(expr) => match expr.as_str() {
                    Some(s) => s.to_owned(),
                    None => {
                        return Err(ConfigError {
                            file: doc.file.clone(),
                            line: key_line,
                            key: path,
                            message: "object keys must be names or strings".to_owned(),
                        });
                    }
                },
            };
            attrs.push(Attr {
                key: name,
                value: value.expr(),
                line: key_line,
                used: false,
            });
        }
        Ok(Block {
            doc,
            path,
            line,
            attrs,
            blocks: Vec::new(),
        })
    }

    /// The dotted key path of this block (`server`, `plugins.DataStore.sql.plugin_data`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The line where this block starts (`None` for the file itself).
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The key path of `key` inside this block; an empty `key` names the block itself.
    pub fn key_path(&self, key: &str) -> String {
        if key.is_empty() {
            self.path.clone()
        } else if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An error about `key` of this block, placed on the block's first line: for rules that
    /// involve several keys or a missing one.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.error_at(self.line, self.key_path(key), message)
    }

    /// The error for a required key that is absent.
    pub fn missing(&self, key: &str) -> ConfigError {
        self.error(key, "is required")
    }

    fn error_at(
        &self,
        line: Option<usize>,
        key: String,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.doc.file.clone(),
            line,
            key,
            message: message.into(),
        }
    }

    /// Whether the attribute `key` is present (without reading it).
    pub fn has(&self, key: &str) -> bool {
        self.attrs.iter().any(|a| a.key == key)
    }

    /// Marks the attribute or blocks `key` as read without looking at them: for a value a
    /// command-line flag replaces, or a disabled plugin.
    pub fn skip(&mut self, key: &str) {
        for attr in self.attrs.iter_mut().filter(|a| a.key == key) {
            attr.used = true;
        }
        for sub in self
            .blocks
            .iter_mut()
            .filter(|b| b.block.ident.as_str() == key)
        {
            sub.used = true;
        }
    }

    /// The command-line flag's value when it is given (the file's `key` is then ignored), else
    /// the file's `key`; both go through `parse`, and a bad flag value is an error naming the
    /// flag.
    pub fn parsed_or_flag<T>(
        &mut self,
        key: &str,
        flag: &str,
        flag_value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match flag_value {
            Some(v) => {
                self.skip(key);
                parse(v).map(Some).map_err(|m| ConfigError::flag(flag, m))
            }
            None => self.parsed(key, parse),
        }
    }

    /// Like [`Block::parsed_or_flag`] for a port, which the file may write as a number.
    pub fn port_or_flag(
        &mut self,
        key: &str,
        flag: &str,
        flag_value: Option<&str>,
    ) -> Result<Option<u16>, ConfigError> {
        match flag_value {
            Some(v) => {
                self.skip(key);
                parse_port(v)
                    .map(Some)
                    .map_err(|m| ConfigError::flag(flag, m))
            }
            None => self.port(key),
        }
    }

    /// Takes the attribute `key`: its value, line and key path.
    fn take(&mut self, key: &str) -> Option<Value<'a>> {
        let attr = self.attrs.iter_mut().find(|a| a.key == key)?;
        attr.used = true;
        let (value, line) = (attr.value, attr.line);
        Some(Value {
            expr: value,
            line,
            key: self.key_path(key),
            file: self.doc.file.clone(),
        })
    }

    /// A string value.
    pub fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        self.take(key).map(|v| v.string()).transpose()
    }

    /// A string value turned into `T` by `parse`, whose `Err` message is reported at the key's
    /// line, e.g. `"Example.org" is not a valid trust domain: ...`.
    pub fn parsed<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let s = value.string()?;
        parse(&s).map(Some).map_err(|m| value.error(m))
    }

    /// A TCP port, written as a number (`8081`) or, as SPIRE writes it, a string (`"8081"`).
    pub fn port(&mut self, key: &str) -> Result<Option<u16>, ConfigError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        match value.expr {
            Expression::Number(n) => n
                .value()
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| value.error(format!("{} is not a valid port", n.value()))),
            Expression::String(s) => parse_port(s.value()).map(Some).map_err(|m| value.error(m)),
            other => Err(value.error(format!("expected a port, found {}", kind(other)))),
        }
    }

    /// A non-negative integer, written as a number or a numeric string.
    pub fn u64(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        match value.expr {
            Expression::Number(n) => {
                n.value().as_u64().map(Some).ok_or_else(|| {
                    value.error(format!("{} is not a non-negative integer", n.value()))
                })
            }
            Expression::String(s) => {
                s.value().parse().map(Some).map_err(|_| {
                    value.error(format!("{:?} is not a non-negative integer", s.value()))
                })
            }
            other => Err(value.error(format!("expected an integer, found {}", kind(other)))),
        }
    }

    /// A boolean, written as `true`/`false` or as the string `"true"`/`"false"`.
    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        match value.expr {
            Expression::Bool(b) => Ok(Some(*b.value())),
            Expression::String(s) => match s.value().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(value.error(format!("{:?} is not true or false", s.value()))),
            },
            other => Err(value.error(format!("expected true or false, found {}", kind(other)))),
        }
    }

    /// A duration in Go's syntax, as SPIRE writes them: `"24h"`, `"1h30m"`, `"90s"`, `"500ms"`.
    pub fn duration(&mut self, key: &str) -> Result<Option<Duration>, ConfigError> {
        self.parsed(key, parse_duration)
    }

    /// A list of strings (`["a", "b"]`).
    pub fn string_list(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let Expression::Array(array) = value.expr else {
            return Err(value.error(format!(
                "expected a list of strings, found {}",
                kind(value.expr)
            )));
        };
        array
            .iter()
            .map(|item| match item {
                Expression::String(s) => Ok(s.value().clone()),
                other => Err(value.error(format!(
                    "expected a list of strings, found {} in the list",
                    kind(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A nested section, written either as a block (`plugin_data { ... }`) or as an object
    /// attribute (`ca_subject = { ... }`): HCL 1, which SPIRE uses, treats both the same.
    /// Given more than once, or with labels, it is an error.
    pub fn block(&mut self, key: &str) -> Result<Option<Block<'a>>, ConfigError> {
        let path = self.key_path(key);
        let mut found: Option<Block<'a>> = None;
        for i in 0..self.blocks.len() {
            let sub = &mut self.blocks[i];
            if sub.block.ident.as_str() != key {
                continue;
            }
            sub.used = true;
            let (block, line) = (sub.block, sub.line);
            if found.is_some() {
                return Err(self.error_at(line, path, "is given more than once"));
            }
            if block.is_labeled() {
                return Err(self.error_at(line, path, "takes no label"));
            }
            found = Some(Block::from_body(self.doc, path.clone(), line, &block.body));
        }
        if let Some(value) = self.take(key) {
            if found.is_some() {
                return Err(value.error("is given more than once"));
            }
            let Expression::Object(object) = value.expr else {
                return Err(value.error(format!(
                    "expected a block or an object, found {}",
                    kind(value.expr)
                )));
            };
            found = Some(Block::from_object(self.doc, path, value.line, object)?);
        }
        Ok(found)
    }

    /// An object whose values are all objects, e.g. `clusters = { "a" = {...} "b" = {...} }`,
    /// as (name, section) pairs in file order.
    pub fn object_map(
        &mut self,
        key: &str,
    ) -> Result<Option<Vec<(String, Block<'a>)>>, ConfigError> {
        let Some(mut outer) = self.block(key)? else {
            return Ok(None);
        };
        let names: Vec<String> = outer.attrs.iter().map(|a| a.key.clone()).collect();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // Each name was just listed from `outer`, so `block` finds it.
            if let Some(section) = outer.block(&name)? {
                entries.push((name, section));
            }
        }
        outer.finish()?;
        Ok(Some(entries))
    }

    /// All blocks `ident "label" { ... }`, each with exactly one label, in file order. Their key
    /// paths are `<path>.<ident>.<label>`.
    pub fn labelled_blocks(
        &mut self,
        ident: &str,
    ) -> Result<Vec<(String, Block<'a>)>, ConfigError> {
        let mut out = Vec::new();
        for i in 0..self.blocks.len() {
            let sub = &mut self.blocks[i];
            if sub.block.ident.as_str() != ident {
                continue;
            }
            sub.used = true;
            let (block, line) = (sub.block, sub.line);
            let [label] = block.labels.as_slice() else {
                return Err(self.error_at(
                    line,
                    self.key_path(ident),
                    format!("needs exactly one label, e.g. {ident} \"name\" {{ ... }}"),
                ));
            };
            let label = label.as_str().to_owned();
            let path = format!("{}.{label}", self.key_path(ident));
            out.push((label, Block::from_body(self.doc, path, line, &block.body)));
        }
        Ok(out)
    }

    /// The identifiers of the blocks in this body, in file order (repeats included).
    pub fn block_idents(&self) -> Vec<String> {
        self.blocks
            .iter()
            .map(|b| b.block.ident.as_str().to_owned())
            .collect()
    }

    /// Ends reading: the first key or block nobody read is an error naming it and its line.
    pub fn finish(self) -> Result<(), ConfigError> {
        let attrs = self
            .attrs
            .iter()
            .filter(|a| !a.used)
            .map(|a| (a.line, a.key.as_str(), "unknown key"));
        let blocks = self
            .blocks
            .iter()
            .filter(|b| !b.used)
            .map(|b| (b.line, b.block.ident.as_str(), "unknown block"));
        // Report whichever comes first in the file.
        match attrs.chain(blocks).min_by_key(|(line, _, _)| *line) {
            Some((line, key, message)) => Err(self.error_at(line, self.key_path(key), message)),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Block<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys only: values may be secrets.
        let keys: Vec<&str> = self.attrs.iter().map(|a| a.key.as_str()).collect();
        f.debug_struct("Block")
            .field("path", &self.path)
            .field("line", &self.line)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// One attribute value taken from a [`Block`], with what its errors need.
struct Value<'a> {
    expr: &'a Expression,
    line: Option<usize>,
    key: String,
    file: String,
}

impl Value<'_> {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            key: self.key.clone(),
            message: message.into(),
        }
    }

    fn string(&self) -> Result<String, ConfigError> {
        match self.expr {
            Expression::String(s) => Ok(s.value().clone()),
            Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => Err(self.error(
                "interpolation is not supported (run with -expandEnv to expand $VAR from the environment)",
            )),
            other => Err(self.error(format!("expected a string, found {}", kind(other)))),
        }
    }
}

/// What an expression is, for "expected X, found Y" messages.
fn kind(expr: &Expression) -> &'static str {
    match expr {
        Expression::Null(_) => "null",
        Expression::Bool(_) => "a boolean",
        Expression::Number(_) => "a number",
        Expression::String(_) | Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => {
            "a string"
        }
        Expression::Array(_) => "a list",
        Expression::Object(_) => "an object",
        _ => "an expression",
    }
}

/// Parses a port written as a string, with the message config errors use.
pub fn parse_port(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| format!("{s:?} is not a valid port"))
}

/// Parses a duration in Go's `time.ParseDuration` syntax, which SPIRE's config uses: a
/// sequence of decimal numbers, each with an optional fraction and a unit among `ns`, `us`
/// (`µs`), `ms`, `s`, `m`, `h`; or `0`. Negative durations are refused.
///
/// Hand-written because humantime's syntax differs both ways: it accepts units SPIRE rejects
/// (`d`, `w`, `y`) and rejects fractions SPIRE accepts (`1.5h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("{s:?} is not a valid duration (use Go syntax such as \"24h\", \"1h30m\", \"90s\")")
    };
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!(
            "{s:?} is negative; a duration must be positive or zero"
        ));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(after) => {
                let frac_len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                after.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(invalid()),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut nanos = int.checked_mul(unit_nanos).ok_or_else(invalid)?;
        // The fraction: digits beyond nanosecond precision are dropped, as in Go.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(invalid)?;
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| invalid())?;
    // The remainder is below 10^9, so it fits in u32.
    let subsec = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Reads a config file and, with `expand_env` (SPIRE's `-expandEnv`), expands environment
/// variables in it. Returns the file name as written (for error messages) and the text. Reads
/// the process environment only when asked: call it from a binary's edge.
pub fn read_config_file(
    path: &Path,
    expand_env_vars: bool,
) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        key: String::new(),
        message: format!("cannot read the config file: {e}"),
    })?;
    let text = if expand_env_vars {
        expand_env(&text, |name| std::env::var(name).ok())
    } else {
        text
    };
    Ok((file, text))
}

/// Expands `$VAR` and `${VAR}` in `text` as Go's `os.ExpandEnv` does (SPIRE's `-expandEnv`):
/// an unset variable becomes empty, and a `$` not followed by a name stays as it is.
/// `lookup` is the environment, passed in so that only the binary's edge reads it.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) if end > 0 => {
                    out.push_str(&lookup(&braced[..end]).unwrap_or_default());
                    rest = &braced[end + 1..];
                }
                // `${}` or an unclosed `${`: Go drops the bad syntax; keeping it is kinder to
                // the reader of the resulting parse error.
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
            continue;
        }
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len == 0 {
            out.push('$');
        } else {
            out.push_str(&lookup(&after[..name_len]).unwrap_or_default());
        }
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

// ---- Sections both binaries share -------------------------------------------------------

/// `log_level`: SPIRE's `DEBUG|INFO|WARN|ERROR`, case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level as a `tracing` filter directive (`debug`, `info`, ...).
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "DEBUG" => Ok(LogLevel::Debug),
            "INFO" => Ok(LogLevel::Info),
            "WARN" | "WARNING" => Ok(LogLevel::Warn),
            "ERROR" => Ok(LogLevel::Error),
            _ => Err(format!(
                "{s:?} is not a valid log level (expected DEBUG, INFO, WARN or ERROR)"
            )),
        }
    }
}

/// `log_format`: `text` or `json`, case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "{s:?} is not a valid log format (expected text or json)"
            )),
        }
    }
}

/// Parses an IP address, also accepting `localhost` (SPIRE's default for listener addresses).
pub fn parse_listen_ip(s: &str) -> Result<IpAddr, String> {
    if s.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not a valid IP address"))
}

/// The `health_checks` section: where the liveness and readiness endpoints listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub bind: SocketAddr,
    pub live_path: String,
    pub ready_path: String,
}

/// Reads a `health_checks` block with SPIRE's keys and defaults (`localhost:80`, `/live`,
/// `/ready`). `None` when the block is absent or `listener_enabled` is not true.
pub fn health_checks(block: Option<Block<'_>>) -> Result<Option<HealthConfig>, ConfigError> {
    let Some(mut block) = block else {
        return Ok(None);
    };
    let enabled = block.bool("listener_enabled")?.unwrap_or(false);
    let ip = block.parsed("bind_address", parse_listen_ip)?;
    let port = block.port("bind_port")?;
    let live_path = block.parsed("live_path", parse_http_path)?;
    let ready_path = block.parsed("ready_path", parse_http_path)?;
    block.finish()?;
    if !enabled {
        return Ok(None);
    }
    Ok(Some(HealthConfig {
        bind: SocketAddr::new(
            ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port.unwrap_or(80),
        ),
        live_path: live_path.unwrap_or_else(|| "/live".to_owned()),
        ready_path: ready_path.unwrap_or_else(|| "/ready".to_owned()),
    }))
}

/// Parses a trust domain, with the message config errors use.
pub fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| format!("{s:?} is not a valid trust domain: {e}"))
}

/// Parses a path that must be given (an empty string is refused).
pub fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(PathBuf::from(s))
    }
}

/// An optional path, where SPIRE writes `""` for "not set".
pub fn optional_path(block: &mut Block<'_>, key: &str) -> Result<Option<PathBuf>, ConfigError> {
    Ok(block
        .string(key)?
        .filter(|p| !p.is_empty())
        .map(PathBuf::from))
}

/// A plugin block's `plugin_data` (`Some(None)` when absent), or `None` when the plugin says
/// `enabled = false`. SPIRE's `plugin_cmd` (external plugins) is not supported and falls out as
/// an unknown key.
pub fn plugin_data<'a>(plugin: &mut Block<'a>) -> Result<Option<Option<Block<'a>>>, ConfigError> {
    if plugin.bool("enabled")? == Some(false) {
        plugin.skip("plugin_data");
        return Ok(None);
    }
    plugin.block("plugin_data").map(Some)
}

/// For a plugin without settings: `plugin_data`, if present, must be empty.
pub fn finish_empty(data: Option<Block<'_>>) -> Result<(), ConfigError> {
    data.map_or(Ok(()), Block::finish)
}

/// The error for a plugin name this binary does not have, on the plugin's line.
pub fn unknown_plugin(plugin: &Block<'_>, kind: &str, name: &str, supported: &str) -> ConfigError {
    plugin.error(
        "",
        format!("unknown {kind} plugin {name:?} (supported: {supported})"),
    )
}

fn parse_http_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an HTTP path (it must start with /)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Document {
        Document::parse("test.conf", text).unwrap()
    }

    #[test]
    fn reads_typed_values_with_their_lines() {
        let d = doc(r#"
s {
  name = "x"
  port_s = "8081"
  port_n = 9090
  flag = true
  flag_s = "FALSE"
  ttl = "1h30m"
  list = ["a", "b"]
  n = 42
}
"#);
        let mut root = d.root();
        let mut s = root.block("s").unwrap().unwrap();
        assert_eq!(s.line(), Some(2));
        assert_eq!(s.string("name").unwrap().as_deref(), Some("x"));
        assert_eq!(s.port("port_s").unwrap(), Some(8081));
        assert_eq!(s.port("port_n").unwrap(), Some(9090));
        assert_eq!(s.bool("flag").unwrap(), Some(true));
        assert_eq!(s.bool("flag_s").unwrap(), Some(false));
        assert_eq!(s.duration("ttl").unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(
            s.string_list("list").unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(s.u64("n").unwrap(), Some(42));
        assert_eq!(s.string("absent").unwrap(), None);
        s.finish().unwrap();
        root.finish().unwrap();
    }

    #[test]
    fn value_errors_name_file_line_and_key() {
        let d = doc(
            "s {\n  a = 1\n  p = \"80x\"\n  q = 70000\n  b = \"yes\"\n  l = [1]\n  t = \"${X}\"\n}\n",
        );
        let mut root = d.root();
        let mut s = root.block("s").unwrap().unwrap();
        let msg = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(s.string("a").map(drop)),
            "test.conf:2: s.a: expected a string, found a number"
        );
        assert_eq!(
            msg(s.port("p").map(drop)),
            r#"test.conf:3: s.p: "80x" is not a valid port"#
        );
        assert_eq!(
            msg(s.port("q").map(drop)),
            "test.conf:4: s.q: 70000 is not a valid port"
        );
        assert_eq!(
            msg(s.bool("b").map(drop)),
            r#"test.conf:5: s.b: "yes" is not true or false"#
        );
        assert_eq!(
            msg(s.string_list("l").map(drop)),
            "test.conf:6: s.l: expected a list of strings, found a number in the list"
        );
        assert!(msg(s.string("t").map(drop)).starts_with("test.conf:7: s.t: interpolation"));
    }

    #[test]
    fn finish_reports_the_first_unread_key_or_block() {
        let d = doc("a = 1\nb {\n}\nc = 2\n");
        let mut root = d.root();
        root.skip("a");
        assert_eq!(
            root.finish().unwrap_err().to_string(),
            "test.conf:2: b: unknown block"
        );

        let d = doc("s {\n  known = 1\n  typo = 2\n}\n");
        let mut root = d.root();
        let mut s = root.block("s").unwrap().unwrap();
        assert!(s.has("known"));
        s.u64("known").unwrap();
        assert_eq!(
            s.finish().unwrap_err().to_string(),
            "test.conf:3: s.typo: unknown key"
        );
        root.finish().unwrap();
    }

    #[test]
    fn blocks_objects_and_labels() {
        let d = doc(r#"
plugins {
  KeyManager "disk" {
    plugin_data {
      keys_path = "/k"
    }
  }
  NodeAttestor "a" {}
  NodeAttestor "b" {
    plugin_data = {
      clusters = {
        "c1" = { x = "1" }
        c2 = {}
      }
    }
  }
}
"#);
        let mut root = d.root();
        let mut plugins = root.block("plugins").unwrap().unwrap();
        let mut km = plugins.labelled_blocks("KeyManager").unwrap();
        assert_eq!(km.len(), 1);
        let (label, km) = &mut km[0];
        assert_eq!(label, "disk");
        assert_eq!(km.path(), "plugins.KeyManager.disk");
        let mut data = km.block("plugin_data").unwrap().unwrap();
        assert_eq!(data.string("keys_path").unwrap().as_deref(), Some("/k"));
        data.finish().unwrap();

        let mut na = plugins.labelled_blocks("NodeAttestor").unwrap();
        assert_eq!(
            na.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let mut data = na[1].1.block("plugin_data").unwrap().unwrap();
        let mut clusters = data.object_map("clusters").unwrap().unwrap();
        assert_eq!(clusters[0].0, "c1");
        assert_eq!(clusters[1].0, "c2");
        assert_eq!(clusters[0].1.line(), Some(12));
        let err = clusters.remove(0).1.finish().unwrap_err().to_string();
        assert_eq!(
            err,
            "test.conf:12: plugins.NodeAttestor.b.plugin_data.clusters.c1.x: unknown key"
        );
        plugins.finish().unwrap();
    }

    #[test]
    fn flags_replace_file_values() {
        let d = doc("s {\n  p = \"80x\"\n  q = 7\n}\n");
        let mut root = d.root();
        let mut s = root.block("s").unwrap().unwrap();
        // The flag wins, so the file's bad value is never looked at.
        assert_eq!(
            s.port_or_flag("p", "-port", Some("9000")).unwrap(),
            Some(9000)
        );
        assert_eq!(
            s.parsed_or_flag("q", "-q", Some("x"), |v| v
                .parse::<u8>()
                .map_err(|_| format!("{v:?} is bad")))
                .unwrap_err()
                .to_string(),
            r#"command line: -q: "x" is bad"#
        );
        assert_eq!(
            s.parsed_or_flag("r", "-r", None, |v| Ok(v.to_owned()))
                .unwrap(),
            None
        );
        s.finish().unwrap();
        assert_eq!(
            root.error("", "whole file").to_string(),
            "test.conf: whole file"
        );
    }

    #[test]
    fn a_repeated_or_labelled_section_is_an_error() {
        let d = doc("s {\n}\ns {\n}\n");
        let err = d.root().block("s").unwrap_err().to_string();
        assert_eq!(err, "test.conf:3: s: is given more than once");
        let d = doc("s \"x\" {\n}\n");
        assert_eq!(
            d.root().block("s").unwrap_err().to_string(),
            "test.conf:1: s: takes no label"
        );
        let d = doc("s = 3\n");
        assert_eq!(
            d.root().block("s").unwrap_err().to_string(),
            "test.conf:1: s: expected a block or an object, found a number"
        );
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let err = Document::parse("x.conf", "a {\n  b = \n}\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.to_string().starts_with("x.conf:2: HCL syntax error: "),
            "{err}"
        );
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("24h", Duration::from_secs(86_400)),
            ("1h30m", Duration::from_secs(5_400)),
            ("90s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5_400)),
            (".5s", Duration::from_millis(500)),
            ("+5m", Duration::from_secs(300)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("1ns", Duration::from_nanos(1)),
            ("2h45m10s", Duration::from_secs(9_910)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for bad in [
            "", "forever", "5", "1d", "h", ".s", "1.h2", "5 m", "-1h", "1hh",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_duration("forever").unwrap_err(),
            r#""forever" is not a valid duration (use Go syntax such as "24h", "1h30m", "90s")"#
        );
    }

    #[test]
    fn env_expansion_follows_go() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/x".to_owned()),
            "A_1" => Some("v".to_owned()),
            _ => None,
        };
        assert_eq!(expand_env("$HOME/d ${A_1}x $UNSET.", env), "/home/x/d vx .");
        assert_eq!(expand_env("cost $ 5 and $", env), "cost $ 5 and $");
        assert_eq!(expand_env("${HOME}${A_1}", env), "/home/xv");
        assert_eq!(expand_env("no vars", env), "no vars");
    }

    #[test]
    fn log_levels_and_formats() {
        assert_eq!("debug".parse(), Ok(LogLevel::Debug));
        assert_eq!("WARN".parse(), Ok(LogLevel::Warn));
        assert_eq!("Error".parse(), Ok(LogLevel::Error));
        assert!("LOUD".parse::<LogLevel>().is_err());
        assert_eq!("JSON".parse(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn health_checks_defaults_and_disabled() {
        let d = doc("health_checks {\n  listener_enabled = true\n}\n");
        let mut root = d.root();
        let h = health_checks(root.block("health_checks").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(h.bind, "127.0.0.1:80".parse().unwrap());
        assert_eq!(
            (h.live_path.as_str(), h.ready_path.as_str()),
            ("/live", "/ready")
        );

        let d = doc("health_checks {\n  bind_port = \"8080\"\n}\n");
        let mut root = d.root();
        assert_eq!(
            health_checks(root.block("health_checks").unwrap()).unwrap(),
            None
        );

        let d = doc("health_checks {\n  listener_enabled = true\n  live_path = \"live\"\n}\n");
        let mut root = d.root();
        assert_eq!(
            health_checks(root.block("health_checks").unwrap())
                .unwrap_err()
                .to_string(),
            r#"test.conf:3: health_checks.live_path: "live" is not an HTTP path (it must start with /)"#
        );
    }
}
