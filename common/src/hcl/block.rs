//! The [`Block`] view: one HCL block body (or object value) that hands out typed values, each
//! error naming the file, the line and the dotted key path, and that remembers which keys were
//! read so [`Block::finish`] can refuse the rest.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::Body;

use super::spire_only::{self, SpireOnly};
use super::{ConfigError, Document, parse_duration, parse_port};

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
    pub(super) fn from_body(
        doc: &'a Document,
        path: String,
        line: Option<usize>,
        body: &'a Body,
    ) -> Self {
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
        Self {
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
                            file: doc.file().to_owned(),
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
        Ok(Self {
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
            file: self.doc.file().to_owned(),
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
            file: self.doc.file().to_owned(),
        })
    }

    /// An optional path, where SPIRE writes `""` for "not set".
    pub fn optional_path(&mut self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self
            .string(key)?
            .filter(|p| !p.is_empty())
            .map(PathBuf::from))
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

    /// A Unix file mode such as spiffe-helper's `key_file_mode = 0600`: as in HCL 1, which
    /// reads integer literals as Go's `strconv.ParseInt(s, 0, 0)` does, a leading `0` makes
    /// the number octal (`0644`), `0o`/`0x` prefixes are honoured, and anything else is
    /// decimal (`420`). A string (`"0644"`) is read the same way. At most `0o7777`.
    pub fn file_mode(&mut self, key: &str) -> Result<Option<u32>, ConfigError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let text = match value.expr {
            Expression::Number(n) => n
                .as_repr()
                .map_or_else(|| n.value().to_string(), |r| r.to_string()),
            Expression::String(s) => s.value().clone(),
            other => {
                return Err(value.error(format!(
                    "expected a file mode such as 0644, found {}",
                    kind(other)
                )));
            }
        };
        parse_file_mode(text.trim())
            .map(Some)
            .ok_or_else(|| value.error(format!("{text} is not a file mode (0 to 07777)")))
    }

    /// A list of sections, written as a list of objects (`key = [{...}, {...}]`) or as
    /// repeated blocks (`key { ... } key { ... }`): HCL 1 decodes both into one list. The
    /// sections' key paths are `<path>.<key>[i]`, in file order (the objects, then the blocks).
    pub fn object_list(&mut self, key: &str) -> Result<Vec<Self>, ConfigError> {
        let path = self.key_path(key);
        let mut out = Vec::new();
        if let Some(value) = self.take(key) {
            let items: Vec<&Expression> = match value.expr {
                Expression::Array(array) => array.iter().collect(),
                Expression::Object(_) => vec![value.expr],
                other => {
                    return Err(
                        value.error(format!("expected a list of objects, found {}", kind(other)))
                    );
                }
            };
            for item in items {
                let Expression::Object(object) = item else {
                    return Err(value.error(format!(
                        "expected a list of objects, found {} in the list",
                        kind(item)
                    )));
                };
                let item_path = format!("{path}[{}]", out.len());
                let line = self.doc.line_of(object.span()).or(value.line);
                out.push(Block::from_object(self.doc, item_path, line, object)?);
            }
        }
        for i in 0..self.blocks.len() {
            let sub = &mut self.blocks[i];
            if sub.block.ident.as_str() != key {
                continue;
            }
            sub.used = true;
            let (block, line) = (sub.block, sub.line);
            if block.is_labeled() {
                return Err(self.error_at(line, path, "takes no label"));
            }
            let item_path = format!("{path}[{}]", out.len());
            out.push(Block::from_body(self.doc, item_path, line, &block.body));
        }
        Ok(out)
    }

    /// A nested section, written either as a block (`plugin_data { ... }`) or as an object
    /// attribute (`ca_subject = { ... }`): HCL 1, which SPIRE uses, treats both the same.
    /// Given more than once, or with labels, it is an error.
    pub fn block(&mut self, key: &str) -> Result<Option<Self>, ConfigError> {
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
    pub fn object_map(&mut self, key: &str) -> Result<Option<Vec<(String, Self)>>, ConfigError> {
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
    pub fn labelled_blocks(&mut self, ident: &str) -> Result<Vec<(String, Self)>, ConfigError> {
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

    /// Applies a component's table of SPIRE's keys that Sigil does not implement (see
    /// [`SpireOnly`]) to this block, in file order: a refused key is an error naming it, its
    /// line and why; an accepted one is marked read and leaves one warning on the document.
    /// Call it just before [`Block::finish`], which still refuses every key in no table.
    pub fn spire_only(&mut self, keys: &[(&str, SpireOnly)]) -> Result<(), ConfigError> {
        // (line, key, value: `None` for a block, treatment) of each key present.
        let mut present: Vec<(Option<usize>, &str, Option<&Expression>, SpireOnly)> = Vec::new();
        for &(key, treatment) in keys {
            for attr in self.attrs.iter_mut().filter(|a| a.key == key) {
                attr.used = true;
                present.push((attr.line, key, Some(attr.value), treatment));
            }
            for sub in self
                .blocks
                .iter_mut()
                .filter(|b| b.block.ident.as_str() == key)
            {
                sub.used = true;
                present.push((sub.line, key, None, treatment));
            }
        }
        present.sort_by_key(|(line, ..)| *line);
        for (line, key, value, treatment) in present {
            let error = |message: String| self.error_at(line, self.key_path(key), message);
            match treatment {
                SpireOnly::Refused(why) => return Err(error(spire_only::refusal(why))),
                SpireOnly::RefusedUnless(off, why) if !value.is_some_and(|v| off.matches(v)) => {
                    return Err(error(spire_only::refusal(why)));
                }
                SpireOnly::Ignored(why) | SpireOnly::RefusedUnless(_, why) => {
                    self.doc.warn(&error(spire_only::ignored(why)));
                }
            }
        }
        Ok(())
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

/// An integer as Go's `strconv.ParseInt(s, 0, 0)` reads it (`0644` octal, `0x1a4` hex, `420`
/// decimal), as a file mode: `None` unless it is within `0..=0o7777`.
fn parse_file_mode(text: &str) -> Option<u32> {
    let text = text.replace('_', "");
    let (digits, radix) = if let Some(hex) = text.strip_prefix("0x").or(text.strip_prefix("0X")) {
        (hex, 16)
    } else if let Some(oct) = text.strip_prefix("0o").or(text.strip_prefix("0O")) {
        (oct, 8)
    } else if text.len() > 1 && text.starts_with('0') {
        (&text[1..], 8)
    } else {
        (text.as_str(), 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix)
        .ok()
        .filter(|m| *m <= 0o7777)
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
