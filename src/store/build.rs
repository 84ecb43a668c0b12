//! The build record as the rest of the daemon sees it.
//!
//! Plain domain types: no serde here. `store::record` converts them to and
//! from the stored form.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::state::{BuildState, FileIdentity};

/// A build's id: 1, 2, 3, ... from the store's counter, bumped in the same
/// transaction as the record, so ids sort by arrival and are never reused.
/// Stores from before the counter keep their large ids and continue after
/// the highest.
///
/// Shown and parsed as plain decimal (`42`); `FromStr` also accepts a leading
/// `#` (`#42`), as status output may print it that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(pub u64);

impl BuildId {
    /// The sled key: big-endian, so byte order is numeric order.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Reads a sled key written by [`BuildId::to_key`].
    pub fn from_key(key: &[u8]) -> Option<BuildId> {
        Some(BuildId(u64::from_be_bytes(key.try_into().ok()?)))
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A string that is not a build id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a build id (expected a number such as 42)")]
pub struct ParseBuildIdError {
    input: String,
}

impl FromStr for BuildId {
    type Err = ParseBuildIdError;

    fn from_str(s: &str) -> Result<BuildId, ParseBuildIdError> {
        let digits = s.trim().strip_prefix('#').unwrap_or(s.trim());
        // `u64::from_str` accepts a leading `+`; an id never has one.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseBuildIdError { input: s.into() });
        }
        digits
            .parse()
            .map(BuildId)
            .map_err(|_| ParseBuildIdError { input: s.into() })
    }
}

/// One build: a ZIP found by a rule, and where it is on its way to PatchKit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// Its id, in arrival order.
    pub id: BuildId,
    /// The name of the rule that matched the file.
    pub rule: String,
    /// The PatchKit app secret. An identifier, not a credential: the API key
    /// is never stored.
    pub app_secret: String,
    /// The ZIP's path.
    pub file: PathBuf,
    /// The file as it was when the build was enqueued.
    pub identity: FileIdentity,
    /// The version label to create.
    pub label: String,
    /// The version changelog, if the rule has one.
    pub changelog: Option<String>,
    /// Whether the rule publishes the version after processing (otherwise
    /// the build ends as a draft).
    pub publish: bool,
    /// When the build was enqueued, Unix milliseconds.
    pub enqueued_at: u64,
    /// When the record last changed, Unix milliseconds.
    pub updated_at: u64,
    /// Where the build is.
    pub state: BuildState,
    /// Failed tries of the current step since it last succeeded.
    pub attempts: u32,
    /// Not before this time (Unix milliseconds) should the current step be
    /// tried again.
    pub next_attempt_at: Option<u64>,
    /// The error of the last failed try.
    pub last_error: Option<String>,
}

/// What `Store::enqueue` needs to record a new build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBuild {
    /// The name of the rule that matched the file.
    pub rule: String,
    /// The PatchKit app secret.
    pub app_secret: String,
    /// The ZIP's path.
    pub file: PathBuf,
    /// The file's identity when it was found.
    pub identity: FileIdentity,
    /// The version label.
    pub label: String,
    /// The version changelog.
    pub changelog: Option<String>,
    /// Whether to publish after processing.
    pub publish: bool,
}

/// The outcome of `Store::enqueue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new build was recorded, in state `Queued`.
    New(Box<Build>),
    /// A build with the same file identity was recorded before. Its record
    /// may since have been pruned; the identity is remembered regardless.
    Existing(BuildId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_back() {
        for n in [0, 7, 1_000_042, u64::MAX] {
            assert_eq!(BuildId(n).to_string().parse(), Ok(BuildId(n)));
            assert_eq!(BuildId::from_key(&BuildId(n).to_key()), Some(BuildId(n)));
        }
        assert_eq!("#42".parse(), Ok(BuildId(42)));
        for bad in ["", "#", "+1", "-1", "4 2", "x1", "18446744073709551616"] {
            assert!(bad.parse::<BuildId>().is_err(), "{bad:?}");
        }
    }
}
