//! The PatchKit API key: a secret that never shows itself.
//!
//! `ApiKey` owns the key's bytes and the one place where they are read
//! ([`ApiKey::expose`], used only to fill the `X-Api-Key` header). Its `Debug`
//! and `Display` print a fixed placeholder, so a key can be carried inside
//! configs, errors and log fields without leaking.

use std::fmt;

/// A PatchKit API key. `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The placeholder printed instead of the key.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wraps a key, trimming the surrounding white space a file or an
    /// environment variable often carries (a trailing newline above all).
    /// Returns `None` when nothing is left.
    pub fn new(raw: impl Into<String>) -> Option<Self> {
        let raw = raw.into();
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            None
        } else {
            Some(Self(trimmed.to_owned()))
        }
    }

    /// The key itself. Only the HTTP layer calls this, to set `X-Api-Key`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", Self::REDACTED)
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_key() {
        let key = ApiKey::new("  s3cr3t-key\n").unwrap();
        assert_eq!(key.expose(), "s3cr3t-key");
        assert!(!format!("{key:?}").contains("s3cr3t"));
        assert!(!format!("{key}").contains("s3cr3t"));
        assert!(!format!("{:?}", Some(&key)).contains("s3cr3t"));
    }

    #[test]
    fn blank_keys_are_refused() {
        assert!(ApiKey::new(" \n").is_none());
    }
}
