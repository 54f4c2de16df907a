//! Configuration diagnostics: `file:line:col: key.path: message`.

use std::fmt;
use std::ops::Range;

/// One configuration problem, located in the source file.
///
/// Display is `file:line:col: key.path: message` (line and column are
/// 1-based, the column counts characters). Two kinds of error have no
/// position in the file and drop the parts they lack:
///
/// * a file that cannot be read at all: `file: message`;
/// * a TOML syntax error, which has no key path: `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given to [`crate::Config::load`] / [`crate::Config::from_str`].
    pub file: String,
    /// 1-based line; 0 when the error has no position (unreadable file).
    pub line: usize,
    /// 1-based column in characters; 0 when the error has no position.
    pub col: usize,
    /// Dotted key path such as `sip.port` or `users[2].password_file`
    /// (array indices are 0-based); empty for syntax errors and I/O errors.
    pub key: String,
    /// Human-readable description of the problem.
    pub message: String,
}

impl ConfigError {
    /// An error without a position (e.g. the file cannot be read).
    pub fn unlocated(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: 0,
            col: 0,
            key: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Formats a list of errors one per line (no trailing newline).
pub fn format_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Maps byte offsets of a source text to 1-based line/column pairs.
pub(crate) struct LineIndex<'a> {
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { src, starts }
    }

    /// 1-based (line, column); the column counts characters, not bytes.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.starts[line];
        let col = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }
}

/// Collects diagnostics while a document is read.
pub(crate) struct Diagnostics<'a> {
    pub(crate) file: &'a str,
    index: LineIndex<'a>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub(crate) fn new(file: &'a str, src: &'a str) -> Self {
        Diagnostics {
            file,
            index: LineIndex::new(src),
            errors: Vec::new(),
        }
    }

    pub(crate) fn error(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, col) = self.index.position(span.map_or(0, |s| s.start));
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        });
    }

    pub(crate) fn line_of(&self, span: &Option<Range<usize>>) -> usize {
        self.index.position(span.as_ref().map_or(0, |s| s.start)).0
    }

    /// Errors in file order (stable for errors at the same position).
    pub(crate) fn into_sorted(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| (e.line, e.col));
        self.errors
    }
}

/// `io::Error` text without the trailing ` (os error N)`.
pub(crate) fn io_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_chars() {
        let idx = LineIndex::new("ab\nçd = 1\n\nx");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(1), (1, 2));
        assert_eq!(idx.position(3), (2, 1));
        // 'ç' is two bytes; 'd' starts at byte 5 but is column 2.
        assert_eq!(idx.position(5), (2, 2));
        assert_eq!(idx.position(12), (4, 1));
        assert_eq!(idx.position(999), (4, 2));
    }

    #[test]
    fn display_forms() {
        let e = ConfigError {
            file: "p.toml".into(),
            line: 3,
            col: 7,
            key: "sip.port".into(),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "p.toml:3:7: sip.port: bad");
        let e = ConfigError::unlocated("p.toml", "cannot read: gone");
        assert_eq!(e.to_string(), "p.toml: cannot read: gone");
    }

    #[test]
    fn io_message_strips_os_error() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_message(&e), "No such file or directory");
    }
}
