//! Text from outside (file names, labels, PatchKit's messages) made safe to
//! show.
//!
//! A file name may hold any byte but `/` and NUL: a newline in it could
//! forge a log line, an escape sequence could repaint a terminal, a
//! right-to-left override could make a label read backwards. Labels and
//! changelogs get such characters removed ([`printable`]): PatchKit shows
//! them to players. Logs, `status` and webhooks show them escaped
//! ([`escaped`]), so the operator still sees that they are there.
//!
//! Knows characters; nothing about where the text goes.

use std::borrow::Cow;

/// Whether `c` changes how the text around it is shown rather than being
/// shown itself: the C0 and C1 controls and DEL, and Unicode's
/// bidirectional marks, embeddings, overrides and isolates.
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` without its control characters.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|c| !is_control(*c)).collect())
}

/// `text` with every control character written as a Rust escape (`\n`,
/// `\t`, `\u{1b}`, `\u{202e}`), and backslashes left alone: the result is
/// one line that shows what is there.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_removed_or_escaped_and_the_rest_is_kept() {
        let name = "Game\n2026-01-01 ERROR forged\r\t\u{1b}[31mred\u{7f}\u{202e}piz.exe é";
        assert_eq!(
            printable(name),
            "Game2026-01-01 ERROR forged[31mredpiz.exe é"
        );
        assert_eq!(
            escaped(name),
            "Game\\n2026-01-01 ERROR forged\\r\\t\\u{1b}[31mred\\u{7f}\\u{202e}piz.exe é"
        );
        assert!(matches!(printable("Game-1.2.zip"), Cow::Borrowed(_)));
        assert!(matches!(escaped("a\\b"), Cow::Borrowed("a\\b")));
    }
}
