//! The watcher task: one `select!` over commands, notify messages, settle
//! timers, the rescan interval and the missing-folder retry. Folder
//! handling lives in `folders.rs`, settle timers in `settle.rs`.
//!
//! All file system access (stat, directory reads, ZIP checks) runs in
//! `spawn_blocking`, one batch per step, so a slow share never stalls the
//! runtime's threads. The loop awaits each batch before taking the next
//! message; notify keeps queueing meanwhile, so nothing is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::folders::folder_identity;
use super::scan::{Place, place};
use super::settle::Pending;
use super::{Take, WatchError, WatchEvent, WatchOptions, WatchSpec, scan_folder};
use crate::state::FileIdentity;

/// Events waiting for the daemon. A full buffer makes the watcher wait,
/// which is the backpressure we want; 256 covers a large drop of builds
/// without the daemon having to keep up file by file.
const EVENT_BUFFER: usize = 256;

/// The shortest rescan interval: below it the safety scan would be a busy
/// loop.
pub(super) const MIN_RESCAN: Duration = Duration::from_secs(1);

/// A command from the [`super::WatcherHandle`].
#[derive(Debug)]
pub(super) enum WatcherCommand {
    Update(Vec<WatchSpec>),
    Rescan,
}

/// Which notify watcher a message came from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    Inotify,
    /// The poll watcher of this rule.
    Poll(String),
}

/// A message from a notify thread.
pub(super) struct FsMessage {
    source: Source,
    result: notify::Result<Event>,
}

/// A file the settle timer is following: (rule, path).
pub(super) type Key = (String, PathBuf);

/// A settle timer entry: when it fires, and a tie-breaker so two files due
/// at the same instant both fit in the map.
pub(super) type TimerKey = (Instant, u64);

/// What the watcher knows about a rule folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FolderState {
    /// Not checked yet (a new rule).
    Unknown,
    /// Missing, reported as such.
    Missing,
    /// There, with this (device, inode): a different pair means the folder
    /// was replaced and must be watched again.
    Present((u64, u64)),
}

/// How a rule folder is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Inotify,
    Poll(Duration),
}

pub(super) struct RuleState {
    pub(super) spec: WatchSpec,
    pub(super) folder: FolderState,
    pub(super) mode: Mode,
    /// The rule's own poll watcher while it is in poll mode and its folder
    /// is present. Dropping it stops its thread.
    pub(super) poller: Option<PollWatcher>,
    /// The last `WatchEvent::Error` message, so it is not repeated.
    pub(super) last_error: Option<String>,
    /// The folder as the file system resolves it (symlinks, `..`), while it
    /// is present: how a file two rules would both take is recognised.
    pub(super) canonical: Option<PathBuf>,
}

impl RuleState {
    fn new(spec: WatchSpec) -> Self {
        let mode = match spec.poll {
            Some(interval) => Mode::Poll(interval),
            None => Mode::Inotify,
        };
        RuleState {
            spec,
            folder: FolderState::Unknown,
            mode,
            poller: None,
            last_error: None,
            canonical: None,
        }
    }

    pub(super) fn present(&self) -> bool {
        matches!(self.folder, FolderState::Present(_))
    }
}

/// The loop ended: cancelled, or nobody listens any more.
pub(super) struct Stop;

pub(super) type Flow = Result<(), Stop>;

pub(super) struct Engine {
    pub(super) opts: WatchOptions,
    cancel: CancellationToken,
    /// Events to the daemon.
    events: mpsc::Sender<WatchEvent>,
    /// Handed to every notify watcher's handler.
    pub(super) fs_tx: mpsc::UnboundedSender<FsMessage>,
    fs_rx: mpsc::UnboundedReceiver<FsMessage>,
    /// One inotify instance for every inotify-mode rule (instances are
    /// limited per user; watches are cheaper).
    pub(super) inotify: RecommendedWatcher,
    /// Folders the inotify instance watches, and how.
    pub(super) inotify_folders: HashMap<PathBuf, RecursiveMode>,
    pub(super) rules: BTreeMap<String, RuleState>,
    /// Files being settled.
    pub(super) pending: HashMap<Key, Pending>,
    /// Settle timers in firing order.
    pub(super) timers: BTreeMap<TimerKey, Key>,
    pub(super) next_timer_id: u64,
    /// Every (rule, identity) emitted, as Candidate or Invalid.
    pub(super) emitted: HashSet<(String, FileIdentity)>,
    /// Every (rule, path) refused by `filename_regex` and reported: a name
    /// is told about once, however often its file changes (a copy in
    /// progress is seen many times).
    refused: HashSet<(String, PathBuf)>,
    /// Rules to scan once the current step is done (a folder appeared
    /// inside a recursive rule).
    pub(super) scan_soon: BTreeSet<String>,
    /// When missing folders are looked for next; `None` while none is
    /// missing, so an idle watcher has no such timer.
    pub(super) retry_at: Option<Instant>,
}

/// Drops the access events our own ZIP checks cause (open, read, close
/// after reading); everything else may mean the file changed.
fn worth_sending(result: &notify::Result<Event>) -> bool {
    match result {
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
        Err(_) => true,
    }
}

pub(super) fn handler(
    tx: mpsc::UnboundedSender<FsMessage>,
    source: Source,
) -> impl FnMut(notify::Result<Event>) + Send + 'static {
    // The handler runs on notify's thread: an unbounded send never blocks
    // it, and the loop drains the channel in batches.
    move |result| {
        if worth_sending(&result) {
            let _ = tx.send(FsMessage {
                source: source.clone(),
                result,
            });
        }
    }
}

impl Engine {
    pub(super) fn new(
        specs: Vec<WatchSpec>,
        opts: WatchOptions,
        cancel: CancellationToken,
    ) -> Result<(Engine, mpsc::Receiver<WatchEvent>), WatchError> {
        let (fs_tx, fs_rx) = mpsc::unbounded_channel();
        let inotify = RecommendedWatcher::new(
            handler(fs_tx.clone(), Source::Inotify),
            notify::Config::default(),
        )
        .map_err(WatchError::Backend)?;
        let (events, events_rx) = mpsc::channel(EVENT_BUFFER);
        let rules = specs
            .into_iter()
            .map(|spec| (spec.rule.clone(), RuleState::new(spec)))
            .collect();
        let engine = Engine {
            opts,
            cancel,
            events,
            fs_tx,
            fs_rx,
            inotify,
            inotify_folders: HashMap::new(),
            rules,
            pending: HashMap::new(),
            timers: BTreeMap::new(),
            next_timer_id: 0,
            emitted: HashSet::new(),
            refused: HashSet::new(),
            scan_soon: BTreeSet::new(),
            retry_at: None,
        };
        Ok((engine, events_rx))
    }

    /// The settle time of a rule.
    pub(super) fn settle_of(&self, rule: &str) -> Duration {
        self.rules
            .get(rule)
            .and_then(|r| r.spec.settle)
            .unwrap_or(self.opts.settle)
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WatcherCommand>) {
        if self.opts.drain {
            self.drain().await;
            return;
        }
        info!(rules = self.rules.len(), "watching rule folders");
        if self.full_check(None).await.is_err() {
            return;
        }
        let period = self.opts.rescan.max(MIN_RESCAN);
        let mut rescan = tokio::time::interval_at(Instant::now() + period, period);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            self.refresh_retry();
            let next_timer = self.timers.first_key_value().map(|(&(due, _), _)| due);
            let retry_at = self.retry_at;
            let flow = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = self.events.closed() => break,
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.command(command).await,
                    None => {
                        // The handle is gone; keep watching until cancelled.
                        commands_open = false;
                        Ok(())
                    }
                },
                Some(message) = self.fs_rx.recv() => self.fs_messages(message).await,
                _ = sleep_until(next_timer), if next_timer.is_some() => self.check_due().await,
                _ = rescan.tick() => {
                    debug!("periodic rescan");
                    self.full_check(None).await
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    let missing = self
                        .rules
                        .iter()
                        .filter(|(_, r)| r.folder == FolderState::Missing)
                        .map(|(name, _)| name.clone())
                        .collect();
                    self.full_check(Some(missing)).await
                }
            };
            if self.after_step(flow).await.is_err() {
                break;
            }
        }
        info!("file watcher stopped");
    }

    /// `--once`: one scan of every folder, then the settle timers until
    /// every file found is emitted or let go.
    async fn drain(&mut self) {
        info!(
            rules = self.rules.len(),
            "taking what is in the rule folders"
        );
        let mut flow = self.full_check(None).await;
        while flow.is_ok() {
            flow = self.after_step(flow).await;
            let Some(next) = self.timers.first_key_value().map(|(&(due, _), _)| due) else {
                break;
            };
            flow = tokio::select! {
                _ = self.cancel.cancelled() => Err(Stop),
                _ = tokio::time::sleep_until(next) => self.check_due().await,
            };
        }
        if flow.is_ok() {
            let _ = self.emit(WatchEvent::Drained).await;
        }
    }

    /// Scans the rules a step asked for (a folder appeared in a recursive
    /// rule, a refused name was seen).
    async fn after_step(&mut self, flow: Flow) -> Flow {
        flow?;
        if self.scan_soon.is_empty() {
            return Ok(());
        }
        let names = std::mem::take(&mut self.scan_soon);
        self.scan_rules(names.into_iter().collect()).await
    }

    pub(super) async fn emit(&self, event: WatchEvent) -> Flow {
        tokio::select! {
            sent = self.events.send(event) => sent.map_err(|_| Stop),
            _ = self.cancel.cancelled() => Err(Stop),
        }
    }

    async fn command(&mut self, command: WatcherCommand) -> Flow {
        match command {
            WatcherCommand::Rescan => {
                info!("rescan requested");
                self.full_check(None).await
            }
            WatcherCommand::Update(specs) => self.update(specs).await,
        }
    }

    async fn update(&mut self, specs: Vec<WatchSpec>) -> Flow {
        let new: BTreeMap<String, WatchSpec> = specs
            .into_iter()
            .map(|spec| (spec.rule.clone(), spec))
            .collect();
        let old: Vec<String> = self.rules.keys().cloned().collect();
        for name in old {
            let rewatch = match (self.rules.get(&name), new.get(&name)) {
                (Some(rule), Some(spec)) => {
                    rule.spec.folder != spec.folder
                        || rule.spec.recursive != spec.recursive
                        || rule.spec.poll != spec.poll
                }
                _ => true,
            };
            self.forget_pending(&name).await?;
            if rewatch {
                // Dropping the state drops its poll watcher; the inotify
                // watch goes in `reconcile_watches` once no rule needs it.
                self.rules.remove(&name);
            }
        }
        for (name, spec) in new {
            match self.rules.get_mut(&name) {
                Some(rule) => rule.spec = spec,
                None => {
                    self.rules.insert(name, RuleState::new(spec));
                }
            }
        }
        // The changed rules look at the files they refused again: the
        // refusal told the person to change the rule.
        self.refused.clear();
        info!(rules = self.rules.len(), "rule set updated");
        self.full_check(None).await
    }

    /// Checks that rule folders exist (all, or the named ones), (re)watches
    /// them, and scans the ones that are there.
    async fn full_check(&mut self, only: Option<Vec<String>>) -> Flow {
        let targets: Vec<(String, PathBuf)> = self
            .rules
            .iter()
            .filter(|(name, _)| only.as_ref().is_none_or(|only| only.contains(name)))
            .map(|(name, rule)| (name.clone(), rule.spec.folder.clone()))
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let stats = blocking(move || {
            targets
                .into_iter()
                .map(|(name, folder)| {
                    let state = folder_identity(&folder);
                    let canonical = std::fs::canonicalize(&folder).ok();
                    (name, state, canonical)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut to_scan = Vec::new();
        for (name, state, canonical) in stats {
            self.apply_folder(&name, state).await?;
            if let Some(rule) = self.rules.get_mut(&name) {
                rule.canonical = canonical;
            }
            to_scan.push(name);
        }
        self.reconcile_watches().await?;
        self.scan_rules(to_scan).await
    }

    /// Scans the named rules' folders and starts settling what is new.
    pub(super) async fn scan_rules(&mut self, names: Vec<String>) -> Flow {
        let specs: Vec<WatchSpec> = names
            .iter()
            .filter_map(|name| self.rules.get(name))
            .filter(|rule| rule.present())
            .map(|rule| rule.spec.clone())
            .collect();
        if specs.is_empty() {
            return Ok(());
        }
        let results = blocking(move || {
            specs
                .into_iter()
                .map(|spec| {
                    let found = scan_folder(&spec);
                    (spec.rule, found)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let now = Instant::now();
        for (name, found) in results {
            match found {
                Ok(mut files) => {
                    debug!(rule = %name, files = files.len(), "scanned rule folder");
                    // Oldest first: the `Settling` notices, and so the
                    // settle timers, follow arrival.
                    files.sort_by(|a, b| (a.0.mtime_ns, &a.0.path).cmp(&(b.0.mtime_ns, &b.0.path)));
                    let due = now + self.settle_of(&name);
                    for (identity, take) in files {
                        if take == Take::Refused {
                            self.refused_seen(&name, identity);
                            continue;
                        }
                        if let Some(event) = self.seen_by_scan(&name, identity, due) {
                            self.emit(event).await?;
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    self.apply_folder(&name, Err(err)).await?;
                    self.reconcile_watches().await?;
                }
                Err(err) => {
                    let folder = self.rules.get(&name).map(|r| r.spec.folder.clone());
                    let folder = folder.unwrap_or_default();
                    let message = format!("cannot read {}: {err}", folder.display());
                    self.report_error(&name, message).await?;
                }
            }
        }
        Ok(())
    }

    /// Tells, once per file name, that the rule's `filename_regex` refuses
    /// a file its pattern matches.
    fn refused_seen(&mut self, rule: &str, identity: FileIdentity) {
        let path = identity.path;
        if self.refused.insert((rule.to_owned(), path.clone())) {
            warn!(
                rule,
                "{} does not match filename_regex of rule {rule:?}, so it is not taken; rename it \
                 or change the rule",
                path.display()
            );
        }
    }

    /// Handles one notify message and whatever else is already queued.
    async fn fs_messages(&mut self, first: FsMessage) -> Flow {
        let mut batch = vec![first];
        while let Ok(message) = self.fs_rx.try_recv() {
            batch.push(message);
        }
        let mut rescan_all = false;
        let mut check: BTreeSet<String> = BTreeSet::new();
        let mut fallback: Vec<String> = Vec::new();
        for FsMessage { source, result } in batch {
            match result {
                Ok(event) if event.need_rescan() => rescan_all = true,
                Ok(event) => self.nudge(&event, &mut check),
                Err(err) => match err.kind {
                    notify::ErrorKind::MaxFilesWatch => {
                        // A recursive watch hit the limit on a sub-folder.
                        for (name, rule) in &self.rules {
                            let hit = err.paths.is_empty()
                                || err.paths.iter().any(|p| p.starts_with(&rule.spec.folder));
                            if hit && rule.spec.recursive && rule.mode == Mode::Inotify {
                                fallback.push(name.clone());
                            }
                        }
                    }
                    _ => match source {
                        Source::Poll(name) => {
                            let folder_hit = self.rules.get(&name).is_some_and(|rule| {
                                err.paths.is_empty() || err.paths.contains(&rule.spec.folder)
                            });
                            if folder_hit {
                                check.insert(name);
                            } else {
                                debug!(rule = %name, "poll watcher: {err}");
                            }
                        }
                        Source::Inotify => warn!("inotify watcher: {err}"),
                    },
                },
            }
        }
        for name in &fallback {
            self.fall_back_to_polling(name).await?;
        }
        if rescan_all {
            info!("the file event queue overflowed; rescanning every rule folder");
            return self.full_check(None).await;
        }
        if !fallback.is_empty() {
            self.reconcile_watches().await?;
            self.scan_soon.extend(fallback);
        }
        if !check.is_empty() {
            return self.full_check(Some(check.into_iter().collect())).await;
        }
        Ok(())
    }

    /// Routes an event to the rules it concerns: events on a rule folder
    /// itself ask for a folder check; events on a file start or poke its
    /// settle timer; a sub-folder created in or moved into a recursive
    /// rule's folder asks for a scan (its files may be there before its own
    /// watch is).
    fn nudge(&mut self, event: &Event, check: &mut BTreeSet<String>) {
        let now = Instant::now();
        let mut nudged: Vec<Key> = Vec::new();
        let mut lost: Vec<PathBuf> = Vec::new();
        for (name, rule) in &self.rules {
            if !rule.present() {
                continue;
            }
            for path in &event.paths {
                match place(&rule.spec, path) {
                    Place::Outside => {}
                    Place::Folder => {
                        if matches!(
                            event.kind,
                            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                        ) {
                            check.insert(name.clone());
                            // The folder's watch went with it, even if a
                            // new folder at the path got the same inode.
                            if rule.mode == Mode::Inotify {
                                lost.push(rule.spec.folder.clone());
                            }
                        }
                    }
                    Place::Inside(file_name) => {
                        let new_folder = event.kind == EventKind::Create(CreateKind::Folder);
                        // A rename event does not say whether a file or a
                        // folder moved in; a folder brings files that send
                        // no event of their own.
                        let maybe_folder = matches!(
                            event.kind,
                            EventKind::Modify(ModifyKind::Name(
                                RenameMode::To | RenameMode::Both | RenameMode::Any
                            ))
                        );
                        if new_folder {
                            if rule.spec.recursive {
                                self.scan_soon.insert(name.clone());
                            }
                        } else {
                            match rule.spec.names.takes(file_name) {
                                Take::Yes => nudged.push((name.clone(), path.clone())),
                                // A scan reports the refusal, once.
                                Take::Refused => {
                                    self.scan_soon.insert(name.clone());
                                }
                                Take::No if maybe_folder && rule.spec.recursive => {
                                    self.scan_soon.insert(name.clone());
                                }
                                Take::No => {}
                            }
                        }
                    }
                }
            }
        }
        // Watched again by the folder check that follows: a folder deleted
        // and created at once can reuse the inode, and then looks unchanged.
        for folder in lost {
            self.unwatch_inotify(&folder);
        }
        for key in nudged {
            self.nudged(key, now);
        }
    }
}

/// Runs file system work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Cancelled: the runtime is shutting down and drops this task too.
        Err(_) => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
