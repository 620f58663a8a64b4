//! A parsed config file: the HCL body, plus what turns byte offsets into line numbers so that
//! every error names its line.

use std::cell::RefCell;
use std::fmt;

use hcl_edit::structure::Body;

use super::{Block, ConfigError, hcl1};

/// A parsed HCL file: the body plus what is needed to turn byte offsets into line numbers, and
/// the warnings its readers left (SPIRE keys that mean nothing for Sigil).
pub struct Document {
    file: String,
    line_starts: Vec<usize>,
    body: Body,
    /// Each warning with its line, for file order.
    warnings: RefCell<Vec<(Option<usize>, String)>>,
}

impl Document {
    /// Parses `text`; `file` is only used to name the file in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let body = hcl_edit::parser::parse_body(text).map_err(|e| {
            let line = e.location().line();
            let message = hcl1::one_line_block(text, line)
                .unwrap_or_else(|| format!("HCL syntax error: {}", e.message()));
            ConfigError {
                file: file.to_owned(),
                line: Some(line),
                key: String::new(),
                message,
            }
        })?;
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ok(Self {
            file: file.to_owned(),
            line_starts,
            body,
            warnings: RefCell::new(Vec::new()),
        })
    }

    /// The warnings left by the readers of this file so far, each one line naming the file,
    /// the line and the key (`server.conf:9: server.profiling_port: has no effect in Sigil:
    /// ...`), in file order. Taking them empties the list.
    pub fn take_warnings(&self) -> Vec<String> {
        let mut warnings = self.warnings.take();
        warnings.sort_by_key(|(line, _)| *line);
        warnings.into_iter().map(|(_, warning)| warning).collect()
    }

    pub(super) fn warn(&self, warning: &ConfigError) {
        self.warnings
            .borrow_mut()
            .push((warning.line, warning.to_string()));
    }

    /// The file's name, as errors show it.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The top-level body as a [`Block`] with an empty key path.
    pub fn root(&self) -> Block<'_> {
        Block::from_body(self, String::new(), None, &self.body)
    }

    pub(super) fn line_of(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
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
