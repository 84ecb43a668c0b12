//! What a build records about sharing PatchKit with other publishers:
//! its owner id in PatchKit's global lock and what it waits for.
//!
//! Kept beside the build record (in `meta`, under `coordination/<id>`), not
//! in it: it changes without the build's state changing (a wait's position), and a store without it reads as "nothing recorded".
//! Stored as versioned JSON, `{"v":1,...}`; removed with the build.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The coordination record of one build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordination {
    /// Schema version, 1.
    #[serde(default = "one")]
    pub v: u64,
    /// The build's owner id in PatchKit's global lock, chosen once: a
    /// daemon restarted after a crash asks with the same id and keeps its
    /// place instead of queueing behind itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What the build waits for, while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Wait>,
}

fn one() -> u64 {
    1
}

/// A wait for another publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// When the wait began, Unix ms (kept while the wait goes on, so a
    /// restart does not reset it).
    pub since_ms: u64,
    /// What it waits for.
    pub reason: WaitReason,
}

/// What a build waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WaitReason {
    /// PatchKit's global lock on `app` is held by someone else.
    Lock {
        app: String,
        /// The place in the queue, when PatchKit said.
        position: Option<u64>,
    },
    /// The app is processing or publishing a version that is not ours.
    AppBusy { app: String, version: u64 },
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Lock {
                app,
                position: Some(p),
            } => write!(f, "waiting for PatchKit's lock on app {app} (position {p})"),
            WaitReason::Lock {
                app,
                position: None,
            } => {
                write!(f, "waiting for PatchKit's lock on app {app}")
            }
            WaitReason::AppBusy { app, version } => write!(
                f,
                "waiting for app {app}: PatchKit is processing or publishing version {version}, \
                 which another publisher sent"
            ),
        }
    }
}
