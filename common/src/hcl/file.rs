//! Reading a config file, with SPIRE's `-expandEnv`: `$VAR` and `${VAR}` expanded from the
//! environment as Go's `os.ExpandEnv` does. The environment is read only when the flag asks, and
//! only here, at the binary's edge.

use std::path::Path;

use super::{ConfigError, Document};

impl Document {
    /// Reads and parses the config file at `path`, named in errors as `path` is written. With
    /// `expand_env` (SPIRE's `-expandEnv`), environment variables in it are expanded first:
    /// the process environment is read only when asked, so call this from a binary's edge.
    pub fn read(path: &Path, expand_env_vars: bool) -> Result<Self, ConfigError> {
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
        Self::parse(&file, &text)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
