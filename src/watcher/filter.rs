//! Which file names are builds for a rule: the one answer that the watcher,
//! intake and `check` all use.

use std::ffi::OsStr;
use std::path::Path;

use globset::{GlobMatcher, GlobSet};
use regex::Regex;

use super::default_ignore;

/// What a rule makes of a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A build for the rule.
    Yes,
    /// Not the rule's business: the pattern does not match, or the name is
    /// ignored (temp files, dotfiles).
    No,
    /// It matches the pattern but not `filename_regex`: it looks like a
    /// build, so the person who dropped it is told why it is not taken.
    Refused,
}

/// A rule's file name tests.
#[derive(Debug, Clone)]
pub struct NameFilter {
    /// The pattern, matched against the name (not the path).
    pub matcher: GlobMatcher,
    /// Names skipped; `None` means [`super::DEFAULT_IGNORE`].
    pub ignore: Option<GlobSet>,
    /// When set, a name must match it too.
    pub regex: Option<Regex>,
}

impl NameFilter {
    /// A filter with the pattern only and the default ignore list.
    pub fn new(matcher: GlobMatcher) -> NameFilter {
        NameFilter {
            matcher,
            ignore: None,
            regex: None,
        }
    }

    /// What the rule makes of `name`.
    pub fn takes(&self, name: &OsStr) -> Take {
        if !self.matcher.is_match(Path::new(name)) || self.is_ignored(name) {
            return Take::No;
        }
        match &self.regex {
            Some(re) if !re.is_match(&name.to_string_lossy()) => Take::Refused,
            _ => Take::Yes,
        }
    }

    /// Whether the name is one the rule skips, file or folder.
    pub fn is_ignored(&self, name: &OsStr) -> bool {
        let set = self.ignore.as_ref().unwrap_or_else(|| default_ignore());
        set.is_match(Path::new(name))
    }
}

#[cfg(test)]
mod tests {
    use globset::Glob;

    use super::*;

    #[test]
    fn pattern_ignore_and_regex_decide_together() {
        let mut filter = NameFilter::new(Glob::new("*.zip").unwrap().compile_matcher());
        assert_eq!(filter.takes(OsStr::new("a.zip")), Take::Yes);
        assert_eq!(filter.takes(OsStr::new("a.txt")), Take::No);
        assert_eq!(
            filter.takes(OsStr::new(".a.zip")),
            Take::No,
            "dotfiles are ignored"
        );
        filter.regex = Some(Regex::new(r"^Game-\d+\.zip$").unwrap());
        assert_eq!(filter.takes(OsStr::new("Game-1.zip")), Take::Yes);
        assert_eq!(filter.takes(OsStr::new("Other.zip")), Take::Refused);
        assert_eq!(filter.takes(OsStr::new("Other.txt")), Take::No);
    }
}
