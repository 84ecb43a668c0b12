//! The daemon: one event loop that turns watcher events, finished workers,
//! control commands and timers into work.
//!
//! [`run`] opens the store (failing at once if another daemon has the state
//! directory), reads the key, starts the watcher and drives every unfinished
//! build, oldest first. Each trigger of work is one variant of [`Event`],
//! handled in one `match`. Builds of one app run strictly one at a time in
//! arrival order (PatchKit allows one draft per app); at most `workers`
//! builds run at once. Shutdown stops new work, lets in-flight chunk
//! requests finish within `shutdown_timeout`, flushes the store and returns.
//!
//! Knows the config, the store, the watcher and the worker; it never talks
//! HTTP itself and never writes a build record except through
//! `Store::transition` (cancel, retry) and `intake::enqueue`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::archive::ArchiveError;
use crate::config::{Config, ConfigError, KeyError, KeyOrigin, Rule};
use crate::dispose;
use crate::intake::{self, IntakeError};
use crate::observe::Observer;
use crate::patchkit::{ApiKey, BuildError, Client, RetryPolicy};
use crate::stages::StageCtx;
use crate::state::BuildState;
use crate::store::{Build, BuildId, Enqueued, Store, StoreError};
use crate::watcher::{
    FileId, WatchError, WatchEvent, WatchOptions, WatchSpec, Watcher, WatcherHandle,
};
use crate::worker::{Outcome, drive, now_ms};

/// While builds run, systemd's STATUS line is refreshed this often: often
/// enough that `systemctl status` shows live progress, rarely enough to cost
/// nothing.
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// On shutdown, webhooks still in flight get this long to finish.
const NOTIFY_DRAIN: Duration = Duration::from_secs(3);

/// How the daemon runs.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Take what is in the rule folders now, finish every build, and return,
    /// instead of watching.
    pub once: bool,
    /// Control commands (the status socket, tests).
    pub commands: Option<mpsc::Receiver<Command>>,
    /// Config reloads (SIGHUP): each message is a freshly loaded config.
    pub reloads: Option<mpsc::Receiver<Result<Config, ConfigError>>>,
    /// Where progress, counters and build events go; subscribe before
    /// `run` to see every event.
    pub observer: Observer,
}

/// A request to the running daemon.
#[derive(Debug)]
pub enum Command {
    /// Start a failed build again, from a fresh upload.
    Retry(BuildId, oneshot::Sender<Result<Build, ControlError>>),
    /// Stop a build for good.
    Cancel(BuildId, oneshot::Sender<Result<Build, ControlError>>),
    /// Every build the daemon knows is unfinished, and which are running.
    Status(oneshot::Sender<Vec<Build>>),
}

/// Why a control command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("there is no build {0}; `patchkit-autopublish status --all` lists them")]
    Unknown(BuildId),
    #[error("build {id} is {state}, not failed; only a failed build can be retried")]
    NotFailed { id: BuildId, state: &'static str },
    #[error("build {id} is already {state}; there is nothing to cancel")]
    Finished { id: BuildId, state: &'static str },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("cannot set up the PatchKit client: {0}")]
    Client(#[from] BuildError),
    #[error("{0}")]
    Watch(#[from] WatchError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "PatchKit refused the API key; fix it (api_key_env, api_key_file or the systemd \
         credential) and run again: the builds resume where they stopped"
    )]
    KeyRefused,
}

/// Retries a failed build from the store directly (the daemon is not
/// running). A build with a known version reuses it with a fresh upload.
pub async fn retry_build(store: &Store, id: BuildId) -> Result<Build, ControlError> {
    let build = store.get(id)?.ok_or(ControlError::Unknown(id))?;
    let next = build.state.retry().map_err(|_| ControlError::NotFailed {
        id,
        state: build.state.name(),
    })?;
    let build = store.transition(id, &build.state, next).await?;
    Ok(store.clear_attempts(id, &build.state).await?)
}

/// Cancels a build that no worker is running.
pub async fn cancel_build(store: &Store, id: BuildId) -> Result<Build, ControlError> {
    let build = store.get(id)?.ok_or(ControlError::Unknown(id))?;
    let next = build
        .state
        .cancelled()
        .map_err(|_| ControlError::Finished {
            id,
            state: build.state.name(),
        })?;
    Ok(store.transition(id, &build.state, next).await?)
}

/// One trigger of work.
enum Event {
    /// The watcher saw something.
    Watch(WatchEvent),
    /// A worker ended.
    Done(BuildId, Box<Outcome>),
    /// A control request.
    Command(Command),
    /// A reloaded config (or why it could not be loaded).
    Reload(Box<Result<Config, ConfigError>>),
    /// A retry time or the key pause passed.
    Tick,
    /// Shutdown was requested.
    Shutdown,
}

/// A build a worker is driving.
struct Running {
    app: String,
    cancel: CancellationToken,
    /// Cancel requests waiting for the worker to stop.
    cancel_replies: Vec<oneshot::Sender<Result<Build, ControlError>>>,
}

struct Daemon {
    config: Config,
    store: Store,
    client: Client,
    key: ApiKey,
    key_origin: KeyOrigin,
    /// Unfinished builds by id (arrival order): the daemon's work list.
    pending: BTreeMap<BuildId, Build>,
    running: HashMap<BuildId, Running>,
    tracker: TaskTracker,
    done_tx: mpsc::UnboundedSender<(BuildId, Outcome)>,
    /// While PatchKit refuses the key: no build starts before this (Unix ms).
    key_paused_until: Option<u64>,
    cancel: CancellationToken,
    /// Files refused by their rule's `filename_regex`, with the rule: each
    /// is reported once, and looked at again after a reload.
    reported: HashMap<PathBuf, String>,
    observer: Observer,
    /// Builds already reported stuck, so each is reported once per stall.
    stuck: HashSet<BuildId>,
    /// Files that looked like unfinished copies: when to look again.
    incomplete: Vec<(u64, String, PathBuf, FileId)>,
    /// When old finished records were last pruned (Unix ms).
    last_prune: u64,
}

/// Runs the daemon until `cancel` fires (or, with `once`, until every build
/// is finished).
pub async fn run(
    config: Config,
    mut opts: RunOptions,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let state_dir = config.daemon.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || {
        Store::open_with(&state_dir, &crate::store::OpenOptions::daemon())
    })
    .await
    .expect("the store open task does not panic")?;
    let (key, key_origin) = config.patchkit.load_key()?;
    tracing::info!(origin = %key_origin, "API key read");
    let client = Client::new(config.patchkit.client_options(key.clone()))?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut daemon = Daemon {
        pending: store.unfinished()?.into_iter().map(|b| (b.id, b)).collect(),
        config,
        store,
        client,
        key,
        key_origin,
        running: HashMap::new(),
        tracker: TaskTracker::new(),
        done_tx,
        key_paused_until: None,
        cancel: cancel.clone(),
        reported: HashMap::new(),
        observer: opts.observer.clone(),
        stuck: HashSet::new(),
        incomplete: Vec::new(),
        last_prune: 0,
    };
    daemon.dispose_leftovers().await;
    daemon.prune().await;

    let watcher_cancel = cancel.child_token();
    let (watcher, mut watch_rx) = if opts.once {
        daemon.take_folder_contents().await;
        (None, None)
    } else {
        let (handle, rx) = Watcher::start(
            watch_specs(&daemon.config.rules),
            watch_options(&daemon.config),
            watcher_cancel.clone(),
        )?;
        (Some(handle), Some(rx))
    };
    let mut commands = opts.commands.take();
    let mut reloads = opts.reloads.take();
    let (socket_tx, socket_rx) = mpsc::channel(16);
    let mut socket_rx = Some(socket_rx);
    let socket = crate::control::serve(
        &daemon.config.daemon.state_dir,
        daemon.store.clone(),
        daemon.observer.clone(),
        socket_tx,
        watcher_cancel.clone(),
    )
    .await?;
    let mut notifier = crate::notify::spawn(
        daemon.config.notify.clone(),
        &daemon.observer,
        watcher_cancel.clone(),
    );
    let metrics = match daemon.config.daemon.metrics {
        Some(addr) => {
            let (bound, task) =
                crate::metrics::serve(addr, daemon.observer.clone(), watcher_cancel.clone())
                    .await?;
            tracing::info!("metrics at http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    let watchdog = sd_notify::watchdog_enabled();
    let mut systemd = Systemd::default();
    systemd.ready();
    tracing::info!(
        rules = daemon.config.rules.len(),
        unfinished = daemon.pending.len(),
        workers = daemon.config.daemon.workers,
        "daemon running"
    );

    let mut result = Ok(());
    // Crash-only store failures: a state directory deleted or replaced, or a
    // store that keeps refusing writes, ends the daemon with an error at once
    // (running builds are stopped, nothing else is done); systemd restarts it
    // on a fresh store handle and the builds resume from their records.
    let mut store_check = tokio::time::interval(crate::store::HEALTH_CHECK);
    loop {
        if let Err(err) = daemon.store.check_still_ours() {
            for running in daemon.running.values() {
                running.cancel.cancel();
            }
            return Err(err.into());
        }
        // With --once there is nobody to fix the key while we wait.
        if opts.once && daemon.key_paused_until.is_some() && daemon.running.is_empty() {
            result = Err(DaemonError::KeyRefused);
            break;
        }
        let wake = daemon.schedule();
        daemon.observer.set_unfinished(daemon.pending.values());
        let wake = daemon.check_stuck(wake);
        systemd.status(&daemon);
        // Progress moves without events: refresh the status line while
        // builds run.
        let wake = if daemon.running.is_empty() {
            wake
        } else {
            let at = now_ms() + millis(STATUS_REFRESH);
            Some(wake.map_or(at, |w| w.min(at)))
        };
        // The watchdog is fed from this loop, so a wedged loop trips it.
        let wake = match watchdog {
            Some(interval) => {
                systemd.watchdog(interval);
                let at = now_ms() + millis(interval / 2);
                Some(wake.map_or(at, |w| w.min(at)))
            }
            None => wake,
        };
        if opts.once && daemon.pending.is_empty() && daemon.running.is_empty() {
            break;
        }
        let sleep = wake.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => Event::Shutdown,
            Some((id, outcome)) = done_rx.recv() => Event::Done(id, Box::new(outcome)),
            Some(cmd) = recv(&mut commands) => Event::Command(cmd),
            Some(cmd) = recv(&mut socket_rx) => Event::Command(cmd),
            Some(reload) = recv(&mut reloads) => Event::Reload(Box::new(reload)),
            Some(ev) = recv(&mut watch_rx) => Event::Watch(ev),
            _ = store_check.tick() => Event::Tick,
            _ = sleep_for(sleep) => Event::Tick,
        };
        match event {
            Event::Shutdown => break,
            Event::Done(id, outcome) => daemon.finished(id, *outcome).await,
            Event::Command(cmd) => daemon.command(cmd).await,
            Event::Reload(reload) => {
                if daemon.reload(*reload, watcher.as_ref()).await {
                    crate::notify::update(
                        &mut notifier,
                        daemon.config.notify.clone(),
                        &daemon.observer,
                        &watcher_cancel,
                    );
                }
            }
            Event::Watch(ev) => daemon.watch_event(ev).await,
            Event::Tick => {
                daemon.key_pause_over().await;
                daemon.recheck_incomplete().await;
            }
        }
    }

    systemd.stopping();
    daemon.shutdown().await;
    watcher_cancel.cancel();
    let _ = socket.await;
    if let Some(notifier) = notifier {
        // Notifications of the last moments get a short chance; a dead
        // webhook must not hold up a stop that systemd is timing.
        if tokio::time::timeout(NOTIFY_DRAIN, notifier.join())
            .await
            .is_err()
        {
            tracing::warn!("some notifications were not delivered before the daemon stopped");
        }
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Some(watcher) = watcher {
        watcher.stopped().await;
    }
    result
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_for(delay: Option<Duration>) {
    match delay {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The watcher's view of the rules.
fn watch_specs(rules: &[Rule]) -> Vec<WatchSpec> {
    rules
        .iter()
        .map(|rule| {
            let mut spec = WatchSpec::new(&rule.name, &rule.folder, rule.matcher.clone());
            spec.recursive = rule.recursive;
            spec.poll = rule.poll;
            if let Some(ignore) = &rule.ignore {
                spec.ignore = ignore.clone();
            }
            spec
        })
        .collect()
}

fn watch_options(config: &Config) -> WatchOptions {
    WatchOptions {
        settle: config.daemon.settle,
        rescan: config.daemon.rescan,
    }
}

impl Daemon {
    /// Starts every build that may run now and returns when the next one
    /// waiting for a retry time may (Unix ms).
    fn schedule(&mut self) -> Option<u64> {
        let now = now_ms();
        let mut busy: HashSet<String> = self.running.values().map(|r| r.app.clone()).collect();
        let mut wake: Option<u64> = self.incomplete.iter().map(|(at, ..)| *at).min();
        if let Some(until) = self.key_paused_until
            && until > now
        {
            return Some(wake.map_or(until, |w| w.min(until)));
        }
        let mut start = Vec::new();
        for (id, build) in &self.pending {
            if self.running.contains_key(id) || !busy.insert(build.app_secret.clone()) {
                // This app already has its oldest unfinished build going (or
                // waiting); the rest wait their turn.
                continue;
            }
            if let Some(at) = build.next_attempt_at.filter(|at| *at > now) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
                continue;
            }
            if self.running.len() + start.len() >= self.config.daemon.workers {
                break;
            }
            start.push(*id);
        }
        for id in start {
            self.start(id);
        }
        wake
    }

    fn start(&mut self, id: BuildId) {
        let Some(build) = self.pending.get(&id).cloned() else {
            return;
        };
        let cancel = self.cancel.child_token();
        let rule = self.config.rule(&build.rule);
        let ctx = StageCtx {
            store: self.store.clone(),
            client: self.client.clone(),
            chunk_size: self.config.daemon.chunk_size,
            poll_interval: self.config.daemon.poll_interval,
            settle: self.config.daemon.settle,
            existing_draft: Default::default(),
            rule_name: build.rule.clone(),
            cancel: cancel.clone(),
            observer: self.observer.clone(),
        }
        .with_rule(rule);
        let retry = self.retry_policy();
        let key_retry = self.config.daemon.auth_retry;
        let done = self.done_tx.clone();
        tracing::info!(
            build = %id, rule = %build.rule, label = %build.label,
            state = %build.state.name(), "working on build"
        );
        self.running.insert(
            id,
            Running {
                app: build.app_secret.clone(),
                cancel,
                cancel_replies: Vec::new(),
            },
        );
        self.tracker.spawn(async move {
            let outcome = drive(ctx, build, retry, key_retry).await;
            let _ = done.send((id, outcome));
        });
    }

    /// Stage retries wait between these bounds; PatchKit being down for an
    /// hour delays builds, it does not fail them.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.config.patchkit.retry_base,
            cap: self.config.patchkit.retry_cap,
            give_up: None,
        }
    }

    async fn finished(&mut self, id: BuildId, outcome: Outcome) {
        let running = self.running.remove(&id);
        match outcome {
            Outcome::Finished(build) => {
                self.pending.remove(&id);
                self.dispose(&build).await;
                self.prune().await;
            }
            Outcome::Retry(build) => {
                self.pending.insert(id, build);
            }
            Outcome::KeyRefused(build) => {
                self.pending.insert(id, build);
                let until = now_ms() + millis(self.config.daemon.auth_retry);
                self.key_paused_until = Some(self.key_paused_until.map_or(until, |u| u.max(until)));
            }
            Outcome::Stopped(_) => {
                if let Ok(Some(build)) = self.store.get(id) {
                    self.pending.insert(id, build);
                }
            }
            Outcome::StoreFailed(_, err) => {
                tracing::error!(
                    build = %id,
                    "the build store could not be written: {err}; the build is kept as last \
                     recorded and tried again in a minute. Check the disk under {}",
                    self.store.dir().display()
                );
                if let Ok(Some(mut build)) = self.store.get(id) {
                    build.next_attempt_at = Some(now_ms() + 60_000);
                    self.pending.insert(id, build);
                }
            }
        }
        // Cancel requests waited for the worker to stop.
        if let Some(running) = running
            && !running.cancel_replies.is_empty()
        {
            let result = cancel_build(&self.store, id).await;
            if let Ok(build) = &result {
                self.pending.remove(&id);
                self.observer.state_changed(build);
                self.dispose(build).await;
            }
            let mut replies = running.cancel_replies.into_iter();
            if let Some(first) = replies.next() {
                let _ = first.send(result);
            }
            // Repeated requests for the same build see where it ended up.
            for reply in replies {
                let _ = reply.send(
                    self.store
                        .get(id)
                        .map_err(ControlError::from)
                        .and_then(|b| b.ok_or(ControlError::Unknown(id))),
                );
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.pending.values().cloned().collect());
            }
            Command::Retry(id, reply) => {
                let result = retry_build(&self.store, id).await;
                if let Ok(build) = &result {
                    tracing::info!(build = %id, "retrying build from a fresh upload");
                    self.observer.state_changed(build);
                    self.pending.insert(id, build.clone());
                }
                let _ = reply.send(result);
            }
            Command::Cancel(id, reply) => {
                if let Some(running) = self.running.get_mut(&id) {
                    running.cancel.cancel();
                    running.cancel_replies.push(reply);
                    return;
                }
                let result = cancel_build(&self.store, id).await;
                if let Ok(build) = &result {
                    self.pending.remove(&id);
                    tracing::info!(build = %id, "build cancelled");
                    self.dispose(build).await;
                }
                let _ = reply.send(result);
            }
        }
    }

    async fn watch_event(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Candidate(c) => self.take(&c.rule, &c.path).await,
            // A file that looks like an unfinished copy (empty, or a ZIP
            // whose end is missing) may be a copy that paused longer than
            // `settle`: look again later before calling it broken.
            WatchEvent::Invalid {
                rule,
                path,
                error: ArchiveError::Truncated { .. } | ArchiveError::EmptyFile { .. },
                identity,
            } => {
                let due = now_ms() + millis(incomplete_grace(self.config.daemon.settle));
                tracing::info!(
                    rule = %rule, file = %path.display(),
                    "the file looks like an unfinished copy; looking again in {}",
                    humantime::format_duration(incomplete_grace(self.config.daemon.settle))
                );
                self.incomplete.push((due, rule, path, identity));
            }
            // Any other invalid ZIP still becomes a build, which fails
            // validation with the reason: status and notifications show it.
            WatchEvent::Invalid { rule, path, .. } => self.take(&rule, &path).await,
            WatchEvent::FolderMissing { rule, folder } => tracing::warn!(
                rule = %rule, folder = %folder.display(),
                "the rule folder is missing; create it (or mount it) and it is watched again"
            ),
            WatchEvent::FolderBack { rule, folder } => {
                tracing::info!(rule = %rule, folder = %folder.display(), "the rule folder is back")
            }
            WatchEvent::Error { rule, message } => {
                tracing::error!(rule = %rule, "{message}")
            }
        }
    }

    /// Enqueues a file for a rule, reporting problems once per file.
    async fn take(&mut self, rule_name: &str, path: &Path) {
        let Some(rule) = self.config.rule(rule_name).cloned() else {
            return;
        };
        match intake::enqueue(&self.store, &rule, path).await {
            Ok(Enqueued::New(build)) => {
                self.observer.state_changed(&build);
                if !build.state.is_terminal() {
                    self.pending.insert(build.id, *build);
                } else {
                    self.dispose(&build).await;
                }
            }
            Ok(Enqueued::Existing(_)) => {}
            Err(err @ IntakeError::NoMatch { .. }) => {
                if self
                    .reported
                    .insert(path.to_owned(), rule.name.clone())
                    .is_none()
                {
                    tracing::warn!("{err}");
                }
            }
            Err(err) => tracing::error!(rule = %rule.name, "cannot take {}: {err}", path.display()),
        }
    }

    /// `--once`: takes what is in every rule folder now, after checking each
    /// file stays unchanged for `settle`.
    async fn take_folder_contents(&mut self) {
        let specs = watch_specs(&self.config.rules);
        let mut first = scan_all(&specs).await;
        // Oldest first: with no events to go by, modification time is the
        // best record of the order the builds arrived in.
        first.sort_by(|a, b| (a.2.mtime, &a.1).cmp(&(b.2.mtime, &b.1)));
        if !first.is_empty() && !self.config.daemon.settle.is_zero() {
            tokio::time::sleep(self.config.daemon.settle).await;
        }
        let second = scan_all(&specs).await;
        for (rule, path, id) in first {
            let still = second
                .iter()
                .any(|(r, p, i)| *r == rule && *p == path && *i == id);
            if still {
                self.take(&rule, &path).await;
            } else {
                tracing::warn!(
                    file = %path.display(),
                    "the file is still changing; it is left for the next run"
                );
            }
        }
    }

    /// Applies a reloaded config; returns whether it was taken.
    async fn reload(
        &mut self,
        reload: Result<Config, ConfigError>,
        watcher: Option<&WatcherHandle>,
    ) -> bool {
        let config = match reload {
            Ok(config) => config,
            Err(err) => {
                tracing::error!("the new config is refused, the old one stays in force: {err}");
                return false;
            }
        };
        if config.daemon.state_dir != self.config.daemon.state_dir {
            tracing::warn!(
                "state_dir changed in the config; that takes a restart, the daemon keeps using {}",
                self.config.daemon.state_dir.display()
            );
        }
        if let Some(watcher) = watcher
            && let Err(err) = watcher.update(watch_specs(&config.rules))
        {
            tracing::error!("cannot apply the new rules to the watcher: {err}");
            return false;
        }
        let state_dir = self.config.daemon.state_dir.clone();
        self.config = config;
        self.config.daemon.state_dir = state_dir;
        self.refresh_key();
        tracing::info!(rules = self.config.rules.len(), "config reloaded");
        // The watcher offers each file once, so a file the old rule refused
        // is not offered again; the refusal tells the user to change the
        // rule, so the changed rule gets to look at it now.
        for (path, rule) in std::mem::take(&mut self.reported) {
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                self.take(&rule, &path).await;
            }
        }
        true
    }

    /// Takes the files that looked unfinished and have not changed since:
    /// they are what they are, and validation says why they fail. A file that
    /// changed is left to the watcher, which reports its new state.
    async fn recheck_incomplete(&mut self) {
        let now = now_ms();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.incomplete)
            .into_iter()
            .partition(|(at, ..)| *at <= now);
        self.incomplete = later;
        for (_, rule, path, seen) in due {
            let unchanged = tokio::fs::metadata(&path)
                .await
                .is_ok_and(|meta| FileId::of(&meta) == seen);
            if unchanged {
                self.take(&rule, &path).await;
            }
        }
    }

    /// Reports running builds that made no progress for `stuck_after`, once
    /// per stall, and returns when to look again.
    fn check_stuck(&mut self, wake: Option<u64>) -> Option<u64> {
        let after = self.config.daemon.stuck_after;
        let idle = self.observer.idle_builds(after);
        self.stuck.retain(|id| idle.iter().any(|(i, _)| i == id));
        for (id, how_long) in idle {
            if self.running.contains_key(&id)
                && self.stuck.insert(id)
                && let Some(build) = self.pending.get(&id)
            {
                self.observer.stuck(build, how_long);
            }
        }
        if self.running.is_empty() {
            return wake;
        }
        // Look again a tenth of the threshold from now: a stall is noticed
        // within 10% of `stuck_after`, at a few wake-ups an hour.
        let again = now_ms() + millis(after / 10).max(1000);
        Some(wake.map_or(again, |w| w.min(again)))
    }

    /// After the key pause: read the key again (the file or credential may
    /// have been fixed) and let builds run.
    async fn key_pause_over(&mut self) {
        if let Some(until) = self.key_paused_until
            && until <= now_ms()
        {
            self.key_paused_until = None;
            self.refresh_key();
            tracing::info!("trying the API key again");
        }
    }

    fn refresh_key(&mut self) {
        match self.config.patchkit.load_key() {
            Ok((key, origin)) => {
                if key != self.key || origin != self.key_origin {
                    match Client::new(self.config.patchkit.client_options(key.clone())) {
                        Ok(client) => {
                            tracing::info!(origin = %origin, "API key read again");
                            self.client = client;
                            self.key = key;
                            self.key_origin = origin;
                        }
                        Err(err) => tracing::error!("cannot set up the PatchKit client: {err}"),
                    }
                } else if let Ok(client) = Client::new(self.config.patchkit.client_options(key)) {
                    // Same key, maybe new timeouts or URLs from a reload.
                    self.client = client;
                }
            }
            Err(err) => tracing::error!("{err}"),
        }
    }

    /// Deletes finished records older than `keep_finished`, at most hourly
    /// and only when builds finish, so an idle daemon stays asleep.
    async fn prune(&mut self) {
        const EVERY_MS: u64 = 60 * 60 * 1000;
        let now = now_ms();
        if now.saturating_sub(self.last_prune) < EVERY_MS {
            return;
        }
        self.last_prune = now;
        match self
            .store
            .prune_finished(self.config.daemon.keep_finished)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "deleted old finished build records"),
            Err(err) => tracing::warn!("cannot prune old build records: {err}"),
        }
    }

    /// Moves or deletes a finished build's file as its rule says.
    ///
    /// Runs beside the event loop: a move to another file system copies the
    /// whole build, which must not hold up scheduling or the watchdog.
    async fn dispose(&self, build: &Build) {
        let rule = self.config.rule(&build.rule).cloned();
        let store = self.store.clone();
        let build = build.clone();
        self.tracker.spawn(async move {
            if let Some(rule) = rule {
                dispose::finished(&rule, &build).await;
            }
            if let Err(err) = store.mark_disposed(build.id, build.updated_at) {
                tracing::warn!(build = %build.id, "cannot record the file's disposal: {err}");
            }
        });
    }

    /// A crash between a build's last transition and its file's disposal
    /// leaves the file in place: finish that now.
    async fn dispose_leftovers(&self) {
        let Ok(finished) = self.store.list(&crate::store::ListFilter {
            finished: Some(true),
            ..Default::default()
        }) else {
            return;
        };
        for build in finished {
            let done = self
                .store
                .is_disposed(build.id, build.updated_at)
                .unwrap_or(true);
            if matches!(build.state, BuildState::Cancelled { .. }) || done {
                continue;
            }
            self.dispose(&build).await;
        }
    }

    async fn shutdown(&mut self) {
        let timeout = self.config.daemon.shutdown_timeout;
        self.tracker.close();
        if !self.running.is_empty() {
            tracing::info!(
                running = self.running.len(),
                "stopping: letting in-flight requests finish (up to {})",
                humantime::format_duration(timeout)
            );
        }
        for running in self.running.values() {
            running.cancel.cancel();
        }
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight work did not finish within shutdown_timeout; it resumes from the last \
                 acknowledged chunk on the next start"
            );
        }
        if let Err(err) = self.store.flush().await {
            tracing::error!("could not flush the build store: {err}");
        }
        tracing::info!("stopped");
    }
}

/// How long a file that looks like an unfinished copy must stay unchanged
/// before it is taken (and fails as truncated): ten settle periods (50 s by
/// default), since a copy that paused longer than `settle` is far likelier
/// than a file cut short for good.
fn incomplete_grace(settle: Duration) -> Duration {
    settle * 10
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Every build file in every rule folder now, with its identity.
async fn scan_all(specs: &[WatchSpec]) -> Vec<(String, PathBuf, crate::watcher::FileId)> {
    let specs = specs.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for spec in &specs {
            match crate::watcher::scan_folder(spec) {
                Ok(files) => {
                    out.extend(files.into_iter().map(|(p, id)| (spec.rule.clone(), p, id)))
                }
                Err(err) => tracing::warn!(
                    rule = %spec.rule, folder = %spec.folder.display(),
                    "cannot read the rule folder: {err}"
                ),
            }
        }
        out
    })
    .await
    .unwrap_or_default()
}

/// What the daemon tells systemd (`Type=notify`). Every call is a no-op
/// outside systemd (no `NOTIFY_SOCKET`).
#[derive(Default)]
struct Systemd {
    last_status: String,
    last_watchdog: Option<std::time::Instant>,
}

impl Systemd {
    fn ready(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    /// Sends STATUS= when it changed.
    fn status(&mut self, daemon: &Daemon) {
        let running: Vec<Build> = daemon
            .running
            .keys()
            .filter_map(|id| daemon.pending.get(id).cloned())
            .collect();
        let queued = daemon.pending.len() - running.len();
        let status = daemon.observer.summary(&running, queued);
        if status != self.last_status {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    fn watchdog(&mut self, interval: Duration) {
        let due = self
            .last_watchdog
            .is_none_or(|at| at.elapsed() >= interval / 2);
        if due {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_watchdog = Some(std::time::Instant::now());
        }
    }

    fn stopping(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
}
