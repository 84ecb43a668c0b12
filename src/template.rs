//! Label and changelog templates: what a rule turns a build file into.
//!
//! A template is text with placeholders in braces:
//! - `{stem}`: the file name without its last extension (`Game-1.2.zip` ->
//!   `Game-1.2`), `{filename}`: the whole file name;
//! - `{date}` (`2026-11-27`), `{time}` (`15:04:05`), `{datetime}`
//!   (`2026-11-27T15:04:05Z`): when the build was taken, in UTC;
//! - `{seq}`: a per-rule counter kept in the store (1, 2, 3, ...);
//! - `{NAME}`: a named capture group of the rule's `filename_regex`.
//!
//! Values from the file name have their control characters removed
//! ([`crate::text::printable`]). `{{` and `}}` stand for literal braces. Templates are parsed when the
//! config is loaded, so an unknown placeholder is a config error, never a
//! surprise at publish time.
//!
//! Knows file names and text; nothing about the store or the API.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// The placeholders every template may use.
pub const BUILTIN_PLACEHOLDERS: &[&str] = &["stem", "filename", "date", "time", "datetime", "seq"];

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed '{{' at character {0}; write {{{{ for a literal brace")]
    Unclosed(usize),
    #[error("a '}}' at character {0} closes nothing; write }}}} for a literal brace")]
    StrayClose(usize),
    #[error("unknown placeholder {{{name}}}; expected one of {known}")]
    Unknown { name: String, known: String },
}

impl Template {
    /// Parses `source`; `captures` are the named groups the rule's
    /// `filename_regex` provides.
    pub fn parse(source: &str, captures: &[String]) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed(i));
                    }
                    let name = name.trim().to_owned();
                    if !BUILTIN_PLACEHOLDERS.contains(&name.as_str()) && !captures.contains(&name) {
                        let mut known: Vec<String> = BUILTIN_PLACEHOLDERS
                            .iter()
                            .map(|p| format!("{{{p}}}"))
                            .collect();
                        known.extend(captures.iter().map(|c| format!("{{{c}}}")));
                        return Err(TemplateError::Unknown {
                            name,
                            known: known.join(", "),
                        });
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Var(name));
                }
                '}' => return Err(TemplateError::StrayClose(i)),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template uses `{seq}` (so a counter number is taken only
    /// when needed).
    pub fn uses_seq(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Var(v) if v == "seq"))
    }

    /// Fills the template in.
    pub fn render(&self, values: &TemplateValues) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(name) => {
                    if let Some(v) = values.get(name) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }
}

/// The values for one build.
#[derive(Debug, Clone, Default)]
pub struct TemplateValues {
    values: BTreeMap<String, String>,
}

impl TemplateValues {
    /// Values for a build file named `file_name`, taken at `taken`, with the
    /// rule's counter value (if the template uses it) and the regex captures.
    pub fn new(
        file_name: &str,
        taken: SystemTime,
        seq: Option<u64>,
        captures: BTreeMap<String, String>,
    ) -> Self {
        // A file name may hold newlines, escape sequences and bidi overrides;
        // none of them belong in a label or changelog players read.
        let mut values: BTreeMap<String, String> = captures
            .into_iter()
            .map(|(name, value)| (name, crate::text::printable(&value).into_owned()))
            .collect();
        let file_name = crate::text::printable(file_name);
        let file_name = file_name.as_ref();
        let stem = match file_name.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() => stem,
            _ => file_name,
        };
        values.insert("stem".into(), stem.to_owned());
        values.insert("filename".into(), file_name.to_owned());
        // RFC 3339 in UTC, to the second: 2026-11-27T15:04:05Z.
        let stamp = humantime::format_rfc3339_seconds(taken).to_string();
        values.insert("date".into(), stamp[..10].to_owned());
        values.insert("time".into(), stamp[11..19].to_owned());
        values.insert("datetime".into(), stamp);
        if let Some(seq) = seq {
            values.insert("seq".into(), seq.to_string());
        }
        TemplateValues { values }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// The named groups a regex provides, for [`Template::parse`].
pub fn capture_names(regex: &regex::Regex) -> Vec<String> {
    regex.capture_names().flatten().map(str::to_owned).collect()
}

/// The named captures of `regex` in `file_name`, or `None` when the name
/// does not match.
pub fn captures(regex: &regex::Regex, file_name: &str) -> Option<BTreeMap<String, String>> {
    let caps = regex.captures(file_name)?;
    Some(
        regex
            .capture_names()
            .flatten()
            .map(|name| {
                let value = caps.name(name).map_or("", |m| m.as_str());
                (name.to_owned(), value.to_owned())
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at() -> SystemTime {
        // 2026-11-27T15:04:05Z
        UNIX_EPOCH + Duration::from_secs(1_795_791_845)
    }

    fn render(template: &str, file: &str, seq: Option<u64>) -> String {
        Template::parse(template, &[])
            .unwrap()
            .render(&TemplateValues::new(file, at(), seq, BTreeMap::new()))
    }

    #[test]
    fn every_builtin_placeholder_renders() {
        assert_eq!(render("{stem}", "Game-1.2.zip", None), "Game-1.2");
        assert_eq!(render("{filename}", "Game-1.2.zip", None), "Game-1.2.zip");
        assert_eq!(render("{date}", "a.zip", None), "2026-11-27");
        assert_eq!(render("{time}", "a.zip", None), "15:04:05");
        assert_eq!(render("{datetime}", "a.zip", None), "2026-11-27T15:04:05Z");
        assert_eq!(render("build {seq}", "a.zip", Some(42)), "build 42");
        assert_eq!(render("{{{stem}}}", "x.zip", None), "{x}");
        assert_eq!(render("{stem}", ".zip", None), ".zip");
    }

    #[test]
    fn captures_fill_named_placeholders() {
        let re = regex::Regex::new(r"^Game-(?P<version>[\d.]+)-(?P<platform>\w+)\.zip$").unwrap();
        let names = capture_names(&re);
        let t = Template::parse("{version} ({platform})", &names).unwrap();
        let caps = captures(&re, "Game-1.4.2-win64.zip").unwrap();
        let out = t.render(&TemplateValues::new(
            "Game-1.4.2-win64.zip",
            at(),
            None,
            caps,
        ));
        assert_eq!(out, "1.4.2 (win64)");
        assert!(captures(&re, "other.zip").is_none());
    }

    #[test]
    fn control_characters_of_the_file_name_never_reach_the_label() {
        let file = "Game\n1.2\u{1b}[2J\u{202e}.zip";
        assert_eq!(
            render("{stem} ({filename})", file, None),
            "Game1.2[2J (Game1.2[2J.zip)"
        );
        let re = regex::Regex::new(r"^Game(?s)(?P<v>.*)\.zip$").unwrap();
        let t = Template::parse("v{v}", &capture_names(&re)).unwrap();
        let caps = captures(&re, file).unwrap();
        assert_eq!(
            t.render(&TemplateValues::new(file, at(), None, caps)),
            "v1.2[2J"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(matches!(
            Template::parse("{nope}", &[]),
            Err(TemplateError::Unknown { .. })
        ));
        assert!(
            Template::parse("{nope}", &[])
                .unwrap_err()
                .to_string()
                .contains("{stem}")
        );
        assert_eq!(
            Template::parse("a{stem", &[]),
            Err(TemplateError::Unclosed(1))
        );
        assert_eq!(
            Template::parse("a}b", &[]),
            Err(TemplateError::StrayClose(1))
        );
        assert!(Template::parse("{seq}", &[]).unwrap().uses_seq());
        assert!(!Template::parse("{stem}", &[]).unwrap().uses_seq());
    }
}
