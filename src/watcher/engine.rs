//! The watcher task: one `select!` over commands, notify messages, settle
//! timers, the rescan interval and the missing-folder retry.
//!
//! All file system access (stat, directory reads, ZIP checks) runs in
//! `spawn_blocking`, one batch per step, so a slow share never stalls the
//! runtime's threads. The loop awaits each batch before taking the next
//! message; notify keeps queueing meanwhile, so nothing is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::scan::{Place, is_wanted, place};
use super::{
    Candidate, FALLBACK_POLL, FOLDER_RETRY, FileId, WatchError, WatchEvent, WatchOptions,
    WatchSpec, scan_folder,
};
use crate::archive::{self, ArchiveError};

/// Events waiting for the daemon. A full buffer makes the watcher wait,
/// which is the backpressure we want; 256 covers a large drop of builds
/// without the daemon having to keep up file by file.
const EVENT_BUFFER: usize = 256;

/// The shortest rescan interval: below it the safety scan would be a busy
/// loop.
const MIN_RESCAN: Duration = Duration::from_secs(1);

/// A command from the [`super::WatcherHandle`].
#[derive(Debug)]
pub(super) enum Command {
    Update(Vec<WatchSpec>),
    Rescan,
}

/// Which notify watcher a message came from.
#[derive(Debug, Clone)]
enum Source {
    Inotify,
    /// The poll watcher of this rule.
    Poll(String),
}

/// A message from a notify thread.
struct FsMessage {
    source: Source,
    result: notify::Result<Event>,
}

/// A file the settle timer is following.
type Key = (String, PathBuf);

/// A settle timer entry: when it fires, and a tie-breaker so two files due
/// at the same instant both fit in the map.
type TimerKey = (Instant, u64);

#[derive(Debug)]
struct Pending {
    /// What the last check saw; `None` until the first check.
    seen: Option<FileId>,
    /// An event arrived since the last check.
    touched: bool,
    /// This entry's slot in `Engine::timers`.
    timer: TimerKey,
}

/// What the watcher knows about a rule folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FolderState {
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
enum Mode {
    Inotify,
    Poll(Duration),
}

struct RuleState {
    spec: WatchSpec,
    folder: FolderState,
    mode: Mode,
    /// The rule's own poll watcher while it is in poll mode and its folder
    /// is present. Dropping it stops its thread.
    poller: Option<PollWatcher>,
    /// The last `WatchEvent::Error` message, so it is not repeated.
    last_error: Option<String>,
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
        }
    }

    fn present(&self) -> bool {
        matches!(self.folder, FolderState::Present(_))
    }
}

/// The loop ended: cancelled, or nobody listens any more.
struct Stop;

type Flow = Result<(), Stop>;

pub(super) struct Engine {
    opts: WatchOptions,
    cancel: CancellationToken,
    /// Events to the daemon.
    events: mpsc::Sender<WatchEvent>,
    /// Handed to every notify watcher's handler.
    fs_tx: mpsc::UnboundedSender<FsMessage>,
    fs_rx: mpsc::UnboundedReceiver<FsMessage>,
    /// One inotify instance for every inotify-mode rule (instances are
    /// limited per user; watches are cheaper).
    inotify: RecommendedWatcher,
    /// Folders the inotify instance watches, and how.
    inotify_folders: HashMap<PathBuf, RecursiveMode>,
    rules: BTreeMap<String, RuleState>,
    /// Files being settled.
    pending: HashMap<Key, Pending>,
    /// Settle timers in firing order.
    timers: BTreeMap<TimerKey, Key>,
    next_timer_id: u64,
    /// Every (rule, path, identity) emitted, as Candidate or Invalid.
    emitted: HashSet<(String, PathBuf, FileId)>,
    /// Rules to scan once the current step is done (a folder appeared
    /// inside a recursive rule).
    scan_soon: BTreeSet<String>,
    /// When missing folders are looked for next; `None` while none is
    /// missing, so an idle watcher has no such timer.
    retry_at: Option<Instant>,
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

fn handler(
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
            scan_soon: BTreeSet::new(),
            retry_at: None,
        };
        Ok((engine, events_rx))
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
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
            let flow = match flow {
                Ok(()) if !self.scan_soon.is_empty() => {
                    let names = std::mem::take(&mut self.scan_soon);
                    self.scan_rules(names.into_iter().collect()).await
                }
                flow => flow,
            };
            if flow.is_err() {
                break;
            }
        }
        info!("file watcher stopped");
    }

    async fn emit(&self, event: WatchEvent) -> Flow {
        tokio::select! {
            sent = self.events.send(event) => sent.map_err(|_| Stop),
            _ = self.cancel.cancelled() => Err(Stop),
        }
    }

    async fn command(&mut self, command: Command) -> Flow {
        match command {
            Command::Rescan => {
                info!("rescan requested");
                self.full_check(None).await
            }
            Command::Update(specs) => self.update(specs).await,
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
            self.forget_pending(&name);
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
                    (name, state)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut to_scan = Vec::new();
        for (name, state) in stats {
            self.apply_folder(&name, state).await?;
            to_scan.push(name);
        }
        self.reconcile_watches().await?;
        self.scan_rules(to_scan).await
    }

    /// Records what a folder check found, reporting a folder that went
    /// missing or came back.
    async fn apply_folder(&mut self, name: &str, state: io::Result<(u64, u64)>) -> Flow {
        let Some(rule) = self.rules.get_mut(name) else {
            return Ok(());
        };
        let folder = rule.spec.folder.clone();
        match (rule.folder, state) {
            (FolderState::Present(old), Ok(id)) if old == id => Ok(()),
            (FolderState::Present(_), Ok(id)) => {
                info!(rule = name, folder = %folder.display(), "rule folder was replaced; watching the new one");
                rule.folder = FolderState::Present(id);
                rule.poller = None;
                self.unwatch_inotify(&folder);
                Ok(())
            }
            (FolderState::Unknown, Ok(id)) => {
                rule.folder = FolderState::Present(id);
                Ok(())
            }
            (FolderState::Missing, Ok(id)) => {
                info!(rule = name, folder = %folder.display(), "rule folder is back; watching it again");
                rule.folder = FolderState::Present(id);
                self.emit(WatchEvent::FolderBack {
                    rule: name.to_owned(),
                    folder,
                })
                .await
            }
            (FolderState::Missing, Err(_)) => Ok(()),
            (FolderState::Unknown | FolderState::Present(_), Err(err)) => {
                warn!(
                    rule = name,
                    folder = %folder.display(),
                    "rule folder is missing ({err}); create or mount it. Looking for it again every {}",
                    humantime::format_duration(FOLDER_RETRY)
                );
                rule.folder = FolderState::Missing;
                rule.poller = None;
                self.forget_pending(name);
                self.emit(WatchEvent::FolderMissing {
                    rule: name.to_owned(),
                    folder,
                })
                .await
            }
        }
    }

    fn unwatch_inotify(&mut self, folder: &Path) {
        if self.inotify_folders.remove(folder).is_some() {
            // Fails when the kernel already dropped the watch (the folder
            // was deleted); either way it is gone.
            let _ = self.inotify.unwatch(folder);
        }
    }

    /// Makes the notify watches match the rules: one inotify watch per
    /// present folder in inotify mode, one poll watcher per present rule
    /// in poll mode.
    async fn reconcile_watches(&mut self) -> Flow {
        let mut wanted: HashMap<PathBuf, RecursiveMode> = HashMap::new();
        for rule in self.rules.values() {
            if rule.present() && rule.mode == Mode::Inotify {
                let mode = wanted
                    .entry(rule.spec.folder.clone())
                    .or_insert(RecursiveMode::NonRecursive);
                if rule.spec.recursive {
                    *mode = RecursiveMode::Recursive;
                }
            }
        }
        let stale: Vec<PathBuf> = self
            .inotify_folders
            .iter()
            .filter(|(folder, mode)| wanted.get(*folder) != Some(*mode))
            .map(|(folder, _)| folder.clone())
            .collect();
        for folder in stale {
            self.unwatch_inotify(&folder);
        }
        for (folder, mode) in wanted {
            if self.inotify_folders.contains_key(&folder) {
                continue;
            }
            match self.inotify.watch(&folder, mode) {
                Ok(()) => {
                    debug!(folder = %folder.display(), ?mode, "inotify watch added");
                    self.inotify_folders.insert(folder.clone(), mode);
                    for rule in self.rules.values_mut() {
                        if rule.spec.folder == folder {
                            rule.last_error = None;
                        }
                    }
                }
                Err(err) => self.watch_failed(&folder, err).await?,
            }
        }
        for (name, rule) in self.rules.iter_mut() {
            match (rule.mode, rule.present(), rule.poller.is_some()) {
                (Mode::Poll(interval), true, false) => {
                    let config = notify::Config::default().with_poll_interval(interval);
                    let source = Source::Poll(name.clone());
                    match PollWatcher::new(handler(self.fs_tx.clone(), source), config) {
                        Ok(mut poller) => {
                            let mode = if rule.spec.recursive {
                                RecursiveMode::Recursive
                            } else {
                                RecursiveMode::NonRecursive
                            };
                            // A poll watcher reports a failure to read the
                            // folder through its handler, not here.
                            let _ = poller.watch(&rule.spec.folder, mode);
                            debug!(rule = %name, interval = ?interval, "polling rule folder");
                            rule.poller = Some(poller);
                        }
                        Err(err) => warn!(rule = %name, "cannot start the poll watcher: {err}"),
                    }
                }
                (_, false, true) | (Mode::Inotify, _, true) => rule.poller = None,
                _ => {}
            }
        }
        Ok(())
    }

    /// Handles a failed inotify watch: the watch limit moves the folder's
    /// rules to polling; a vanished folder is reported missing; anything
    /// else is reported and retried on the next rescan.
    async fn watch_failed(&mut self, folder: &Path, err: notify::Error) -> Flow {
        let names: Vec<String> = self
            .rules
            .iter()
            .filter(|(_, rule)| rule.spec.folder == folder && rule.mode == Mode::Inotify)
            .map(|(name, _)| name.clone())
            .collect();
        match err.kind {
            notify::ErrorKind::MaxFilesWatch => {
                // A recursive watch may have been half added.
                let _ = self.inotify.unwatch(folder);
                for name in names {
                    self.fall_back_to_polling(&name).await?;
                }
                Ok(())
            }
            notify::ErrorKind::PathNotFound => {
                for name in names {
                    let gone = io::Error::from(io::ErrorKind::NotFound);
                    self.apply_folder(&name, Err(gone)).await?;
                }
                Ok(())
            }
            _ => {
                for name in names {
                    let message = format!(
                        "cannot watch {}: {err}; new files are found only by the rescan every {} \
                         until this is fixed",
                        folder.display(),
                        humantime::format_duration(self.opts.rescan.max(MIN_RESCAN)),
                    );
                    self.report_error(&name, message).await?;
                }
                Ok(())
            }
        }
    }

    async fn fall_back_to_polling(&mut self, name: &str) -> Flow {
        let Some(rule) = self.rules.get_mut(name) else {
            return Ok(());
        };
        if rule.mode != Mode::Inotify {
            return Ok(());
        }
        rule.mode = Mode::Poll(FALLBACK_POLL);
        let message = format!(
            "cannot watch {}: the inotify watch limit is reached; raise the \
             `fs.inotify.max_user_watches` sysctl (e.g. `sysctl fs.inotify.max_user_watches=524288`, \
             and persist it in /etc/sysctl.d/). Polling this folder every {} meanwhile",
            rule.spec.folder.display(),
            humantime::format_duration(FALLBACK_POLL),
        );
        self.report_error(name, message).await
    }

    async fn report_error(&mut self, name: &str, message: String) -> Flow {
        let Some(rule) = self.rules.get_mut(name) else {
            return Ok(());
        };
        if rule.last_error.as_deref() == Some(message.as_str()) {
            return Ok(());
        }
        warn!(rule = name, "{message}");
        rule.last_error = Some(message.clone());
        self.emit(WatchEvent::Error {
            rule: name.to_owned(),
            message,
        })
        .await
    }

    /// Scans the named rules' folders and starts settling what is new.
    async fn scan_rules(&mut self, names: Vec<String>) -> Flow {
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
        let due = Instant::now() + self.opts.settle;
        for (name, found) in results {
            match found {
                Ok(mut files) => {
                    debug!(rule = %name, files = files.len(), "scanned rule folder");
                    // Settled together, they are emitted in this order: oldest
                    // first, the best record of arrival for files dropped
                    // while the daemon was down (builds of one app must reach
                    // PatchKit in arrival order).
                    files.sort_by(|a, b| (a.1.mtime, &a.0).cmp(&(b.1.mtime, &b.0)));
                    for (path, id) in files {
                        self.seen_by_scan(&name, path, id, due);
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

    /// A scan saw a file: follow it unless it was already emitted as is.
    /// A file seen for the first time is taken if the check one settle
    /// period later sees it unchanged.
    fn seen_by_scan(&mut self, rule: &str, path: PathBuf, id: FileId, due: Instant) {
        let key = (rule.to_owned(), path);
        if let Some(pending) = self.pending.get_mut(&key) {
            if pending.seen != Some(id) {
                pending.touched = true;
            }
            return;
        }
        if self.emitted.contains(&(key.0.clone(), key.1.clone(), id)) {
            return;
        }
        debug!(rule, path = %key.1.display(), "scan found a file to settle");
        let timer = self.arm(key.clone(), due);
        self.pending.insert(
            key,
            Pending {
                seen: Some(id),
                touched: false,
                timer,
            },
        );
    }

    fn arm(&mut self, key: Key, due: Instant) -> TimerKey {
        let timer = (due, self.next_timer_id);
        self.next_timer_id += 1;
        self.timers.insert(timer, key);
        timer
    }

    fn forget_pending(&mut self, rule: &str) {
        let timers = &mut self.timers;
        self.pending.retain(|(name, _), pending| {
            let keep = name != rule;
            if !keep {
                timers.remove(&pending.timer);
            }
            keep
        });
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
                        } else if is_wanted(&rule.spec, file_name) {
                            nudged.push((name.clone(), path.clone()));
                        } else if maybe_folder && rule.spec.recursive {
                            self.scan_soon.insert(name.clone());
                        }
                    }
                }
            }
        }
        for key in nudged {
            if let Some(pending) = self.pending.get_mut(&key) {
                pending.touched = true;
                continue;
            }
            debug!(rule = %key.0, path = %key.1.display(), kind = ?event.kind, "file event; settling");
            let timer = self.arm(key.clone(), now);
            self.pending.insert(
                key,
                Pending {
                    seen: None,
                    touched: false,
                    timer,
                },
            );
        }
    }

    /// Checks every file whose settle timer is due, in one blocking batch.
    async fn check_due(&mut self) -> Flow {
        let now = Instant::now();
        let mut jobs = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(pending) = self.pending.get(&key) {
                let stable = if pending.touched { None } else { pending.seen };
                jobs.push((key, stable));
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let outcomes = blocking(move || {
            jobs.into_iter()
                .map(|(key, stable)| {
                    let outcome = check_file(&key.1, stable);
                    (key, outcome)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let rearm = Instant::now() + self.opts.settle;
        for (key, outcome) in outcomes {
            match outcome {
                Outcome::Gone => {
                    debug!(rule = %key.0, path = %key.1.display(), "file went away before settling");
                    self.pending.remove(&key);
                }
                Outcome::NotAFile { folder } => {
                    self.pending.remove(&key);
                    if folder && self.rules.get(&key.0).is_some_and(|r| r.spec.recursive) {
                        self.scan_soon.insert(key.0);
                    }
                }
                Outcome::Unreadable(err) => {
                    debug!(rule = %key.0, path = %key.1.display(), "cannot stat file: {err}");
                    self.pending.remove(&key);
                }
                Outcome::Changed(id) => {
                    if self.emitted.contains(&(key.0.clone(), key.1.clone(), id)) {
                        self.pending.remove(&key);
                        continue;
                    }
                    let timer = self.arm(key.clone(), rearm);
                    if let Some(pending) = self.pending.get_mut(&key) {
                        pending.seen = Some(id);
                        pending.touched = false;
                        pending.timer = timer;
                    }
                }
                Outcome::Settled(id, verdict) => {
                    self.pending.remove(&key);
                    self.take(key, id, verdict).await?;
                }
            }
        }
        Ok(())
    }

    async fn take(
        &mut self,
        (rule, path): Key,
        identity: FileId,
        verdict: Result<archive::ArchiveSummary, ArchiveError>,
    ) -> Flow {
        if !self.rules.contains_key(&rule)
            || !self.emitted.insert((rule.clone(), path.clone(), identity))
        {
            return Ok(());
        }
        let event = match verdict {
            Ok(summary) => {
                info!(
                    rule = %rule,
                    path = %path.display(),
                    size = identity.size,
                    entries = summary.entries,
                    "build file settled; taking it"
                );
                WatchEvent::Candidate(Candidate {
                    rule,
                    path,
                    identity,
                })
            }
            Err(error) => {
                warn!(
                    rule = %rule,
                    "{error}. It is left alone until it changes"
                );
                WatchEvent::Invalid {
                    rule,
                    path,
                    error,
                    identity,
                }
            }
        };
        self.emit(event).await
    }

    fn refresh_retry(&mut self) {
        let any_missing = self
            .rules
            .values()
            .any(|rule| rule.folder == FolderState::Missing);
        self.retry_at = match (any_missing, self.retry_at) {
            (false, _) => None,
            (true, None) => Some(Instant::now() + FOLDER_RETRY),
            (true, at) => at,
        };
    }
}

/// What a settle check found.
enum Outcome {
    Gone,
    NotAFile {
        folder: bool,
    },
    Unreadable(io::Error),
    /// Different from the last check (or first seen, or an event came in
    /// between): wait another settle period.
    Changed(FileId),
    /// Unchanged for the settle period; the ZIP check's verdict.
    Settled(FileId, Result<archive::ArchiveSummary, ArchiveError>),
}

/// Looks at a file again; `stable` is what the previous check saw if no
/// event arrived since. Blocking.
fn check_file(path: &Path, stable: Option<FileId>) -> Outcome {
    let id = match stat_file(path) {
        Ok(id) => id,
        Err(outcome) => return outcome,
    };
    if stable != Some(id) {
        return Outcome::Changed(id);
    }
    let verdict = archive::validate(path);
    // A write that started while the central directory was being read
    // would make the verdict stale.
    match stat_file(path) {
        Ok(after) if after == id => Outcome::Settled(id, verdict),
        Ok(after) => Outcome::Changed(after),
        Err(outcome) => outcome,
    }
}

fn stat_file(path: &Path) -> Result<FileId, Outcome> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(FileId::of(&meta)),
        Ok(meta) => Err(Outcome::NotAFile {
            folder: meta.is_dir(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(Outcome::Gone),
        Err(err) => Err(Outcome::Unreadable(err)),
    }
}

/// The (device, inode) of a folder, or why it is not a usable folder.
fn folder_identity(folder: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(folder)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        Ok((0, 0))
    }
}

/// Runs file system work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
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
