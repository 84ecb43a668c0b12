//! Collecting every problem of a config file, each with its line and column.
//!
//! A user who runs `check` on a new config wants the whole list at once, not
//! one error per run. `Problems` gathers them; `deserialize_all` gets every
//! serde error of one table by removing the offending key and trying again.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column (in characters) of the offending text.
    pub column: usize,
    /// What is wrong and what is expected instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all. The cause is in the message and
    /// not a `source`, so a chain printed with `{:#}` says it once.
    #[error("cannot read config file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The file was read, and these are all the problems in it.
    #[error("{}", render(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found, empty when the file could not be read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let count = problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    let mut out = format!("config file {} has {count} {noun}:", path.display());
    for p in problems {
        out.push_str(&format!("\n  {}:{p}", path.display()));
    }
    out
}

/// What a person writes for each key of a raw config table, for messages
/// about a value of the wrong type ("a whole number", "a duration in quotes,
/// such as \"30s\"") instead of serde's Rust names (`i64`, `a string`).
pub trait Expected {
    /// How a value of `key` is written, or `None` for a key the table does
    /// not have.
    fn expected(key: &str) -> Option<&'static str>;
}

/// The problems found so far in one source text.
pub struct Problems<'s> {
    source: &'s str,
    found: Vec<Problem>,
}

impl<'s> Problems<'s> {
    pub fn new(source: &'s str) -> Self {
        Self {
            source,
            found: Vec::new(),
        }
    }

    /// Records a problem at a byte span of the source.
    pub fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_column(self.source, span.start);
        self.found.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    /// The text written at `span`, on one line and shortened, to show what
    /// was found.
    fn written(&self, span: &Range<usize>) -> String {
        /// Enough to recognise a value, short enough for one message line.
        const SHOWN: usize = 40;
        let text = self.source.get(span.clone()).unwrap_or("").trim();
        let line = text.lines().next().unwrap_or("");
        let mut shown: String = line.chars().take(SHOWN).collect();
        if shown.len() < text.len() {
            shown.push_str(" ...");
        }
        shown
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// All problems, in the order they appear in the file.
    pub fn into_sorted(mut self) -> Vec<Problem> {
        self.found.sort_by_key(|p| (p.line, p.column));
        self.found.dedup();
        self.found
    }
}

/// 1-based line and character column of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A table deserialized with its bad keys left out.
pub struct Parsed<T> {
    /// The value built from the keys that were fine.
    pub value: T,
    /// Keys removed because they were unknown or had a bad value; their
    /// problems are recorded already, so the validator must not also call
    /// them missing.
    pub removed: BTreeSet<String>,
}

/// Deserializes one table into `T`, recording *every* serde error in it.
///
/// serde stops at the first error, so after each one the key it points at is
/// removed and the table is tried again; `context` (e.g. `[daemon]`) prefixes
/// each message. Returns `None` only when the value is not a table at all.
pub fn deserialize_all<T: DeserializeOwned + Expected>(
    value: &Spanned<DeValue<'_>>,
    context: &str,
    problems: &mut Problems<'_>,
) -> Option<Parsed<T>> {
    let mut value = value.clone();
    let mut removed = BTreeSet::new();
    loop {
        let err = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(value) => return Some(Parsed { value, removed }),
            Err(err) => err,
        };
        let whole = value.span();
        let err_span = err.span().unwrap_or_else(|| whole.clone());
        let message = clean(err.message());
        let DeValue::Table(table) = value.get_mut() else {
            problems.at(err_span, format!("{context}: {message}"));
            return None;
        };
        let offender = table.iter().find_map(|(k, v)| {
            if contains(k.span(), &err_span) {
                Some((k.get_ref().to_string(), false))
            } else if contains(v.span(), &err_span) {
                Some((k.get_ref().to_string(), true))
            } else {
                None
            }
        });
        match offender {
            Some((key, in_value)) => {
                // A bad value is a value of the wrong type (meanings are
                // checked later, on the typed value): say how the key is
                // written, and what was written instead.
                let text = if in_value {
                    let expected = T::expected(&key)
                        .map(str::to_owned)
                        .unwrap_or_else(|| plain_types(&message));
                    let found = problems.written(&err_span);
                    format!("{context} {key}: expected {expected}, found {found}")
                } else {
                    format!("{context}: {message}")
                };
                problems.at(err_span, text);
                table.remove(key.as_str());
                removed.insert(key);
            }
            None => {
                problems.at(err_span, format!("{context}: {message}"));
                return None;
            }
        }
    }
}

fn contains(outer: Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && inner.start < outer.end
}

/// serde's message in a person's words, for a key [`Expected`] does not
/// know (it knows every key; this keeps a new one readable).
fn plain_types(message: &str) -> String {
    let wanted = message.rsplit("expected ").next().unwrap_or(message);
    match wanted {
        "i64" | "u64" | "i32" | "u32" | "usize" => "a whole number (without quotes)",
        "a boolean" => "true or false (without quotes)",
        "a string" => "text in quotes",
        "a sequence" => "a list in brackets, such as [\"a\", \"b\"]",
        "f64" | "f32" => "a number",
        other => other,
    }
    .to_owned()
}

/// serde's messages end with a newline or carry a trailing period unevenly.
fn clean(message: &str) -> String {
    message.trim().trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_column(src, 9), (2, 3));
    }
}
