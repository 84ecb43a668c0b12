//! Finds complete, settled build files in the rule folders and yields them
//! as candidates.
//!
//! Sources of work, all feeding one settle path:
//! - notify events (inotify, or a `PollWatcher` for rules with `poll`, which
//!   network shares need because inotify misses writes made by other
//!   machines). An event only *nudges* a per-file timer.
//! - a scan of every rule folder at start, every `rescan` interval, after
//!   a notify queue overflow, and on [`WatcherHandle::rescan_now`].
//!
//! A file is taken when its size, mtime and inode stayed the same for its
//! rule's `settle` with no event in between; then its ZIP central directory
//! is read ([`crate::archive::validate`]). A readable one becomes
//! [`WatchEvent::Candidate`], an unreadable one [`WatchEvent::Invalid`].
//! Either is emitted once per identity for the watcher's lifetime. A file
//! that looks like an unfinished copy (empty, or a ZIP whose end is
//! missing) is looked at again after [`unfinished_grace`] before it is
//! emitted as invalid. While a file settles the daemon hears
//! [`WatchEvent::Settling`] with its arrival, so no newer build of its app
//! overtakes it.
//!
//! Every file decision lives here: watch mode, the startup scan, rescans
//! and `--once` ([`WatchOptions::drain`]: scan once, settle what was found,
//! then [`WatchEvent::Drained`]) run the same engine.
//!
//! Architecture invariant: the watcher never writes the store and knows
//! nothing about PatchKit. Deduplication across restarts is the store's job.

mod engine;
mod filter;
mod folders;
mod scan;
mod settle;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::archive::ArchiveError;
use crate::state::{Arrival, FileIdentity};

pub use filter::{NameFilter, Take};
pub use scan::scan_folder;

/// The shortest settle time a rule may have: below it a copy that pauses
/// between two writes (a busy disk, a slow share) is taken half-written.
pub const MIN_SETTLE: Duration = Duration::from_secs(1);

/// The shortest wait before a file that looks like an unfinished copy is
/// called broken, whatever `settle` is: copies over a network stall for
/// tens of seconds far more often than a producer leaves a file cut short.
pub const MIN_GRACE: Duration = Duration::from_secs(30);

/// How long a file that looks like an unfinished copy (empty, or a ZIP
/// whose end is missing) must stay unchanged before it is emitted as
/// invalid: ten settle periods, and at least [`MIN_GRACE`].
pub fn unfinished_grace(settle: Duration) -> Duration {
    (settle * 10).max(MIN_GRACE)
}

/// Names skipped when a rule gives no ignore patterns of its own: the temp
/// names of browsers, scp/WinSCP, rsync (`.name.XXXX`), editors and
/// Syncthing. A producer that writes under one of these and renames at the
/// end is never seen half-written.
pub const DEFAULT_IGNORE: &[&str] = &[
    "*.part",
    "*.tmp",
    "*.crdownload",
    ".*",
    "~*",
    "*.partial",
    "*.filepart",
    ".syncthing.*.tmp",
    "~syncthing~*",
];

/// How often a missing rule folder is looked for, besides every rescan.
/// Two seconds notices a remount or a re-created folder quickly while
/// costing one `stat` per missing folder; the timer exists only while a
/// folder is missing.
pub const FOLDER_RETRY: Duration = Duration::from_secs(2);

/// Poll interval for a folder that cannot get an inotify watch because the
/// per-user watch limit is reached. Thirty seconds is watchexec's `--poll`
/// default; a tree big enough to exhaust the watches is costly to walk.
pub const FALLBACK_POLL: Duration = Duration::from_secs(30);

/// The compiled [`DEFAULT_IGNORE`] set.
pub fn default_ignore() -> &'static GlobSet {
    static SET: LazyLock<GlobSet> = LazyLock::new(|| {
        let mut builder = GlobSetBuilder::new();
        for pattern in DEFAULT_IGNORE {
            builder.add(Glob::new(pattern).expect("default ignore patterns are valid globs"));
        }
        builder
            .build()
            .expect("default ignore patterns are valid globs")
    });
    &SET
}

/// What to watch for one rule.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The rule's name, copied into every event.
    pub rule: String,
    /// The folder to watch.
    pub folder: PathBuf,
    /// Which file names are builds (the rule's own test).
    pub names: NameFilter,
    /// Also look in sub-folders, at any depth.
    pub recursive: bool,
    /// Poll the folder at this interval instead of using inotify (for
    /// NFS/SMB shares written by other machines).
    pub poll: Option<Duration>,
    /// This rule's settle time; `None` means [`WatchOptions::settle`].
    pub settle: Option<Duration>,
}

impl WatchSpec {
    /// A non-recursive, inotify-watched rule with the default ignore list.
    pub fn new(rule: impl Into<String>, folder: impl Into<PathBuf>, matcher: GlobMatcher) -> Self {
        WatchSpec {
            rule: rule.into(),
            folder: folder.into(),
            names: NameFilter::new(matcher),
            recursive: false,
            poll: None,
            settle: None,
        }
    }
}

/// Timing shared by every rule.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// A file must keep the same size, mtime and inode this long, with no
    /// event in between, before it is taken (rules may set their own).
    pub settle: Duration,
    /// Interval of the safety scan of every folder (at least one second).
    pub rescan: Duration,
    /// `--once`: scan every folder once, settle what is there, emit
    /// [`WatchEvent::Drained`] and stop. No notify watches, no rescans.
    pub drain: bool,
}

/// A settled build file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The rule whose folder and pattern it matched.
    pub rule: String,
    /// Where it is.
    pub path: PathBuf,
    /// What it looked like when it settled and was checked: the identity
    /// the store records.
    pub identity: FileIdentity,
    /// Its place in its app's queue.
    pub arrival: Arrival,
}

/// What the watcher reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// A file the rule takes is being followed and has not settled; its
    /// arrival so far. Sent when it is first seen and when its modification
    /// time moves.
    Settling {
        rule: String,
        path: PathBuf,
        arrival: Arrival,
    },
    /// A file that was `Settling` is no longer followed and was not taken:
    /// it went away, stopped being a file, or its rule or folder went.
    Abandoned { rule: String, path: PathBuf },
    /// A build to publish.
    Candidate(Candidate),
    /// A settled file matching the rule that is not a ZIP PatchKit can take.
    /// Reported once per identity.
    Invalid {
        candidate: Candidate,
        error: ArchiveError,
    },
    /// The rule folder is missing (or stopped being a folder). Reported
    /// once; it is looked for every [`FOLDER_RETRY`] and on every rescan.
    FolderMissing { rule: String, folder: PathBuf },
    /// A missing rule folder is back and watched again; it is scanned next.
    FolderBack { rule: String, folder: PathBuf },
    /// The folder cannot be watched as asked; the message says why and what
    /// the watcher does instead. Reported once per distinct message.
    Error { rule: String, message: String },
    /// `--once`: every file found has been emitted or let go; the watcher
    /// has stopped.
    Drained,
}

impl WatchEvent {
    /// The rule the event is about (`None` for [`WatchEvent::Drained`]).
    pub fn rule(&self) -> Option<&str> {
        match self {
            WatchEvent::Candidate(c) | WatchEvent::Invalid { candidate: c, .. } => Some(&c.rule),
            WatchEvent::Settling { rule, .. }
            | WatchEvent::Abandoned { rule, .. }
            | WatchEvent::FolderMissing { rule, .. }
            | WatchEvent::FolderBack { rule, .. }
            | WatchEvent::Error { rule, .. } => Some(rule),
            WatchEvent::Drained => None,
        }
    }
}

/// Why the watcher cannot start or take a command.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the file watcher must be started inside a tokio runtime")]
    NoRuntime,
    #[error("two watched rules are named {0:?}; rule names must be unique")]
    DuplicateRule(String),
    #[error(
        "cannot start the inotify watcher: {0}; if it says too many open files, raise the \
         `fs.inotify.max_user_instances` sysctl"
    )]
    Backend(#[source] notify::Error),
    #[error("the file watcher has stopped")]
    Stopped,
}

/// Starts watchers.
pub struct Watcher;

impl Watcher {
    /// Starts watching the rule folders on the current tokio runtime.
    ///
    /// The first scan of every folder runs right away; files already there
    /// are taken after one settle period. The watcher stops when `cancel`
    /// fires or the receiver is dropped.
    pub fn start(
        specs: Vec<WatchSpec>,
        opts: WatchOptions,
        cancel: CancellationToken,
    ) -> Result<(WatcherHandle, mpsc::Receiver<WatchEvent>), WatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        check_unique(&specs)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (engine, events) = engine::Engine::new(specs, opts, cancel)?;
        let task = runtime.spawn(engine.run(command_rx));
        Ok((WatcherHandle { commands, task }, events))
    }
}

/// Controls a running watcher.
#[derive(Debug)]
pub struct WatcherHandle {
    /// Commands to the watcher task.
    commands: mpsc::UnboundedSender<engine::WatcherCommand>,
    /// The watcher task, awaited by [`WatcherHandle::stopped`].
    task: JoinHandle<()>,
}

impl WatcherHandle {
    /// Replaces the rule set (config reload). Rules are matched by name: a
    /// rule whose folder, `recursive` or `poll` changed is watched afresh;
    /// every rule is scanned again. Files already emitted under a rule name
    /// are not emitted again, so new rules apply to new files.
    pub fn update(&self, specs: Vec<WatchSpec>) -> Result<(), WatchError> {
        check_unique(&specs)?;
        self.commands
            .send(engine::WatcherCommand::Update(specs))
            .map_err(|_| WatchError::Stopped)
    }

    /// Scans every folder now, as after a notify queue overflow.
    pub fn rescan_now(&self) -> Result<(), WatchError> {
        self.commands
            .send(engine::WatcherCommand::Rescan)
            .map_err(|_| WatchError::Stopped)
    }

    /// Waits until the watcher task has ended (after cancel).
    pub async fn stopped(self) {
        // A panic in the task has already been reported by the runtime;
        // there is nothing left to stop either way.
        let _ = self.task.await;
    }
}

fn check_unique(specs: &[WatchSpec]) -> Result<(), WatchError> {
    let mut seen = std::collections::HashSet::new();
    for spec in specs {
        if !seen.insert(spec.rule.as_str()) {
            return Err(WatchError::DuplicateRule(spec.rule.clone()));
        }
    }
    Ok(())
}
