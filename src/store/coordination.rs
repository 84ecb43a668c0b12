//! What a build records about sharing PatchKit with other publishers:
//! its owner id in PatchKit's global lock, what it waits for, and the
//! progress of each of its channels.
//!
//! Kept beside the build record (in `meta`, under `coordination/<id>`), not
//! in it: it changes without the build's state changing (a wait's position,
//! a channel's step), and a store without it reads as "nothing recorded".
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
    /// Each channel the rule names, in the rule's order, once the group
    /// version is live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelProgress>,
    /// Publish even when a build of the app that arrived later is already
    /// live (`retry --force`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// An operator retried the build: its publish is checked against newer
    /// live builds again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
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

/// One channel's way from the group version to its own live version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelProgress {
    /// The channel as the rule names it (a secret or a name).
    pub channel: String,
    /// Its app secret, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Where it is.
    pub step: ChannelStep,
}

/// The steps of one channel, each recorded before its side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelStep {
    /// Nothing done yet.
    Pending,
    /// About to create the channel's draft; a draft above `after_id` with
    /// the build's label is the one a lost answer named.
    Creating { after_id: u64 },
    /// The channel's draft exists.
    Ready { version_id: u64 },
    /// `link` was requested; `job_guid` once PatchKit answered.
    Linking {
        version_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_guid: Option<String>,
    },
    /// Publishing was requested.
    Publishing { version_id: u64 },
    /// The channel's version is live.
    Published { version_id: u64 },
    /// The channel could not be fed; a retry starts it again from here.
    Failed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<u64>,
        reason: String,
    },
}

impl ChannelStep {
    /// The channel's version, once it has one.
    pub fn version_id(&self) -> Option<u64> {
        match self {
            ChannelStep::Pending | ChannelStep::Creating { .. } => None,
            ChannelStep::Ready { version_id }
            | ChannelStep::Linking { version_id, .. }
            | ChannelStep::Publishing { version_id }
            | ChannelStep::Published { version_id } => Some(*version_id),
            ChannelStep::Failed { version_id, .. } => *version_id,
        }
    }

    /// Its name in status.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelStep::Pending => "pending",
            ChannelStep::Creating { .. } => "creating_version",
            ChannelStep::Ready { .. } => "version_ready",
            ChannelStep::Linking { .. } => "linking",
            ChannelStep::Publishing { .. } => "publishing",
            ChannelStep::Published { .. } => "published",
            ChannelStep::Failed { .. } => "failed",
        }
    }
}

impl fmt::Display for ChannelProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.channel, self.step.name())?;
        if let Some(v) = self.step.version_id() {
            write!(f, " v{v}")?;
        }
        if let ChannelStep::Failed { reason, .. } = &self.step {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}
