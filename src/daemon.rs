//! The daemon: a thin async shell around the scheduler core.
//!
//! [`run`] opens the store (failing at once if another daemon has the state
//! directory), reads the key, starts the watcher and feeds every trigger of
//! work, one variant of [`Event`] in one `match`, to the pure
//! [`Scheduler`] as its inputs; then it carries out the actions the
//! scheduler returns (start or stop a worker, cancel a build, read the key
//! again, exit). Shutdown stops new work, lets in-flight chunk requests
//! finish within `shutdown_timeout`, flushes the store and returns.
//!
//! Knows the config, the store, the watcher, the workers and the observers;
//! it makes no file decision (the watcher does), no scheduling decision
//! (the scheduler does), never talks HTTP itself, and never writes a build
//! record except through `intake::enqueue` and the control functions.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{millis, now_ms};
use crate::config::{Config, ConfigError, KeyError, KeyOrigin, Rule};
use crate::control::{ControlCommand, ControlError, cancel_build, retry_build};
use crate::dispose;
use crate::global_lock::GlobalLock;
use crate::intake;
use crate::observe::Observer;
use crate::patchkit::{ApiKey, BuildError, Client, RetryPolicy};
use crate::scheduler::{Action, Exit, Input, Lane, ReplyId, Scheduler, Waiting, WorkerEnded};
use crate::stages::StageCtx;
use crate::state::{Arrival, BuildState};
use crate::store::{Build, BuildId, Enqueued, Store, StoreError};
use crate::systemd::Systemd;
use crate::watcher::{
    Candidate, WatchError, WatchEvent, WatchOptions, WatchSpec, Watcher, WatcherHandle,
};
use crate::worker::{WorkerEnd, drive};

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
    pub commands: Option<mpsc::Receiver<ControlCommand>>,
    /// Config reloads (SIGHUP): each message is a freshly loaded config.
    pub reloads: Option<mpsc::Receiver<Result<Config, ConfigError>>>,
    /// Where progress, counters and build events go; subscribe before
    /// `run` to see every event.
    pub observer: Observer,
}

/// Why the daemon could not start or had to stop. Wrappers are
/// transparent: the cause is printed once, by whoever prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot set up the PatchKit client")]
    Client(#[from] BuildError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(
        "PatchKit refused the API key; fix it (api_key_env, api_key_file or the systemd \
         credential) and run again: the builds resume where they stopped"
    )]
    KeyRefused,
    #[error(
        "{failed} of {total} builds failed in this run; `patchkit-autopublish status --all` shows \
         why, `retry ID` runs one again"
    )]
    BuildsFailed { failed: usize, total: usize },
}

/// One trigger of work.
enum Event {
    /// The watcher saw something.
    Watch(WatchEvent),
    /// A worker ended.
    WorkerEnded(BuildId, Box<WorkerEnd>),
    /// A control request.
    Command(ControlCommand),
    /// A reloaded config (or why it could not be loaded).
    Reload(Box<Result<Config, ConfigError>>),
    /// A timer: a retry time, the key pause, the status line, the watchdog.
    Tick,
    /// Shutdown was requested.
    Shutdown,
}

struct Daemon {
    config: Config,
    store: Store,
    client: Client,
    key: ApiKey,
    key_origin: KeyOrigin,
    /// Which builds run when.
    core: Scheduler,
    /// Arrivals of the builds taken in this run (first sight included);
    /// builds from the store fall back to their mtime and enqueue time.
    arrivals: HashMap<BuildId, Arrival>,
    /// The running workers' stop switches.
    workers: HashMap<BuildId, CancellationToken>,
    tracker: TaskTracker,
    done_tx: mpsc::UnboundedSender<(BuildId, WorkerEnd)>,
    /// Cancel requests waiting for their answer.
    replies: HashMap<ReplyId, oneshot::Sender<Result<Build, ControlError>>>,
    next_reply: ReplyId,
    cancel: CancellationToken,
    observer: Observer,
    /// PatchKit's global lock, held for the builds that need it.
    lock: GlobalLock,
    /// Builds already reported stuck, so each is reported once per stall.
    stuck: HashSet<BuildId>,
    /// When old finished records were last pruned (Unix ms).
    last_prune: u64,
    /// Why the run ends, once the scheduler says so.
    exit: Option<Exit>,
    /// `--once`: take what is there, finish, exit.
    once: bool,
    /// With `once`, the builds that ended in this run, for the summary.
    ended: Vec<Build>,
}

/// Runs the daemon until `cancel` fires (or, with `once`, until every file
/// found is taken and every build is finished).
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
    let observer = opts.observer.clone();
    let unfinished = store.unfinished()?;
    observer.load(unfinished.iter().cloned());
    // Metrics: every rule's series from the start, and the newest publish
    // of each rule from the store, so "nothing published for a day" alerts
    // survive restarts.
    observer.add_rules(config.rules.iter().map(|r| r.name.as_str()));
    observer.restore_last_success(&store.list(&crate::store::ListFilter {
        finished: Some(true),
        ..Default::default()
    })?);
    {
        let observer = observer.clone();
        store.on_change(move |build| observer.state_changed(build));
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let config_lock = (config.patchkit.global_lock, config.patchkit.lock_refresh);
    let mut daemon = Daemon {
        core: Scheduler::new(
            config.daemon.workers,
            opts.once,
            millis(config.daemon.auth_retry),
        ),
        config,
        store,
        client,
        key,
        key_origin,
        arrivals: HashMap::new(),
        workers: HashMap::new(),
        tracker: TaskTracker::new(),
        done_tx,
        replies: HashMap::new(),
        next_reply: 0,
        cancel: cancel.clone(),
        observer,
        lock: GlobalLock::new(config_lock.0, config_lock.1),
        stuck: HashSet::new(),
        last_prune: 0,
        exit: None,
        once: opts.once,
        ended: Vec::new(),
    };
    daemon.dispose_leftovers().await;
    daemon.prune().await;
    let loaded: Vec<Input> = unfinished
        .iter()
        .map(|b| Input::Waiting(daemon.waiting(b)))
        .collect();
    let unfinished = loaded.len();

    let watcher_cancel = cancel.child_token();
    let (watcher, mut watch_rx) = Watcher::start(
        daemon.watch_specs(),
        WatchOptions {
            settle: daemon.config.daemon.settle,
            rescan: daemon.config.daemon.rescan,
            drain: opts.once,
        },
        watcher_cancel.clone(),
    )?;
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
    let apps = app_lookup(daemon.client.known_apps());
    let mut notifier = crate::webhook::spawn(
        daemon.config.notify.clone(),
        &daemon.observer,
        apps.clone(),
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
    let lock_refresher = tokio::spawn(daemon.lock.clone().run(watcher_cancel.clone()));
    let watchdog = sd_notify::watchdog_enabled();
    let mut systemd = Systemd::default();
    systemd.ready();
    tracing::info!(
        rules = daemon.config.rules.len(),
        unfinished,
        workers = daemon.config.daemon.workers,
        "daemon running"
    );

    let actions = daemon.core.handle(now_ms(), loaded);
    daemon.carry_out(actions).await;
    // Crash-only store failures: a state directory deleted or replaced, or a
    // store that keeps refusing writes, ends the daemon with an error at once
    // (running builds are stopped, nothing else is done); systemd restarts it
    // on a fresh store handle and the builds resume from their records.
    let mut store_check = tokio::time::interval(crate::store::HEALTH_CHECK);
    let moved = daemon.observer.changes();
    let mut watch_open = true;
    while daemon.exit.is_none() {
        if let Err(err) = daemon.store.check_still_ours() {
            for stop in daemon.workers.values() {
                stop.cancel();
            }
            return Err(err.into());
        }
        let mut wake = daemon.check_stuck(daemon.core.next_wake());
        systemd.status(daemon.status_line());
        // Progress moves without events: refresh the status line while
        // builds run.
        if daemon.core.running_count() > 0 {
            wake = earliest(wake, now_ms() + millis(STATUS_REFRESH));
        }
        // The watchdog is fed from this loop, so a wedged loop trips it.
        if let Some(interval) = watchdog {
            systemd.watchdog(interval);
            wake = earliest(wake, now_ms() + millis(interval / 2));
        }
        let sleep = wake.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => Event::Shutdown,
            Some((id, end)) = done_rx.recv() => Event::WorkerEnded(id, Box::new(end)),
            Some(cmd) = recv(&mut commands) => Event::Command(cmd),
            Some(cmd) = recv(&mut socket_rx) => Event::Command(cmd),
            Some(reload) = recv(&mut reloads) => Event::Reload(Box::new(reload)),
            ev = watch_rx.recv(), if watch_open => match ev {
                Some(ev) => Event::Watch(ev),
                None => {
                    // The watcher stopped (drained, or cancelled).
                    watch_open = false;
                    Event::Tick
                }
            },
            _ = store_check.tick() => Event::Tick,
            // A build moved: STATUS= says so now, not at the next refresh.
            () = moved.notified() => Event::Tick,
            _ = sleep_for(sleep) => Event::Tick,
        };
        let inputs = match event {
            Event::Shutdown => vec![Input::Shutdown],
            Event::WorkerEnded(id, end) => daemon.worker_ended(id, *end).await,
            Event::Command(cmd) => daemon.command(cmd).await,
            Event::Reload(reload) => {
                systemd.reloading();
                let reloaded = daemon.reload(*reload, &watcher);
                if reloaded.is_some() {
                    crate::webhook::update(
                        &mut notifier,
                        daemon.config.notify.clone(),
                        &daemon.observer,
                        apps.clone(),
                        &watcher_cancel,
                    );
                }
                systemd.ready();
                match reloaded {
                    Some(true) => vec![Input::KeyChanged],
                    _ => Vec::new(),
                }
            }
            Event::Watch(ev) => daemon.watch_event(ev).await,
            Event::Tick => Vec::new(),
        };
        let shutdown = inputs.contains(&Input::Shutdown);
        let actions = daemon.core.handle(now_ms(), inputs);
        daemon.carry_out(actions).await;
        if shutdown {
            break;
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
    let _ = lock_refresher.await;
    watcher.stopped().await;
    match daemon.exit {
        // With --once there is nobody to fix the key while we wait.
        Some(Exit::KeyRefused) => Err(DaemonError::KeyRefused),
        Some(Exit::Drained) => daemon.summary(),
        _ => Ok(()),
    }
}

fn earliest(wake: Option<u64>, at: u64) -> Option<u64> {
    Some(wake.map_or(at, |w| w.min(at)))
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

impl Daemon {
    /// The watcher's view of the rules.
    fn watch_specs(&self) -> Vec<WatchSpec> {
        self.config.rules.iter().map(Rule::watch_spec).collect()
    }

    /// What the scheduler needs of a build.
    fn waiting(&self, build: &Build) -> Waiting {
        Waiting {
            id: build.id,
            app: build.app_secret.clone(),
            arrival: self.arrivals.get(&build.id).copied().unwrap_or(Arrival {
                mtime_ns: build.identity.mtime_ns,
                seen_at: build.enqueued_at,
            }),
            holds_app: build.state.holds_app(),
            before_turn: build.state.before_turn(),
            not_before: build.next_attempt_at,
        }
    }

    /// Carries out what the scheduler decided.
    async fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start(id) => self.start(id, Lane::Turn).await,
                Action::StartAhead(id) => self.start(id, Lane::Ahead).await,
                Action::Stop(id) => {
                    if let Some(stop) = self.workers.get(&id) {
                        stop.cancel();
                    }
                }
                Action::Cancel { id, replies } => self.cancel_stored(id, replies).await,
                Action::ReadKeyAgain => {
                    self.refresh_key();
                    tracing::info!("trying the API key again");
                }
                Action::Exit(why) => self.exit = Some(why),
            }
        }
    }

    async fn start(&mut self, id: BuildId, lane: Lane) {
        // The freshest record: the store's.
        let build = match self.store.get(id) {
            Ok(Some(build)) => build,
            Ok(None) => {
                tracing::warn!(build = %id, "the build's record is gone; it is not started");
                return;
            }
            Err(err) => {
                tracing::error!(build = %id, "cannot read the build: {err}");
                let _ = self.done_tx.send((id, WorkerEnd::StoreFailed(id, err)));
                return;
            }
        };
        let cancel = self.cancel.child_token();
        let rule = self.config.rule(&build.rule);
        let settle = rule
            .and_then(|r| r.settle)
            .unwrap_or(self.config.daemon.settle);
        let ctx = StageCtx {
            store: self.store.clone(),
            client: self.client.clone(),
            chunk_size: self.config.daemon.chunk_size,
            poll_interval: self.config.daemon.poll_interval,
            settle,
            existing_draft: Default::default(),
            rule_name: build.rule.clone(),
            cancel: cancel.clone(),
            observer: self.observer.clone(),
            lock: self.lock.clone(),
            channels: Vec::new(),
        }
        .with_rule(rule);
        let retry = self.retry_policy();
        let key_retry = self.config.daemon.auth_retry;
        let done = self.done_tx.clone();
        // A build waiting for another publisher asks again every
        // `lock_refresh`; only its wait's changes are worth a line.
        let waiting = self
            .store
            .coordination(id)
            .is_ok_and(|c| c.waiting.is_some());
        if waiting {
            tracing::debug!(build = %id, "asking again for what the build waits for");
        } else if lane == Lane::Turn && build.state.version_id().is_none() && build.attempts == 0 {
            tracing::info!(
                build = %id, rule = %build.rule, label = %build.label,
                state = %build.state.name(), "the build's turn on its app: draft, processing, publishing"
            );
        } else {
            tracing::info!(
                build = %id, rule = %build.rule, label = %build.label,
                state = %build.state.name(), "working on build"
            );
        }
        self.workers.insert(id, cancel);
        self.tracker.spawn(async move {
            let end = drive(ctx, build, lane, retry, key_retry).await;
            let _ = done.send((id, end));
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

    async fn worker_ended(&mut self, id: BuildId, end: WorkerEnd) -> Vec<Input> {
        self.workers.remove(&id);
        let ended = match end {
            WorkerEnd::Finished(build) => {
                // A retry may have come in between the worker's last write
                // and this: then the file stays for the retried build.
                let retried =
                    matches!(self.store.get(id), Ok(Some(now)) if !now.state.is_terminal());
                if !retried {
                    self.finished(&build).await;
                }
                WorkerEnded::Finished
            }
            WorkerEnd::Retry(build) | WorkerEnd::LaneDone(build) => {
                WorkerEnded::Again(self.waiting(&build))
            }
            WorkerEnd::KeyRefused(build) => WorkerEnded::KeyRefused(self.waiting(&build)),
            WorkerEnd::Stopped(_) => match self.store.get(id) {
                Ok(Some(build)) if !build.state.is_terminal() => {
                    WorkerEnded::Again(self.waiting(&build))
                }
                _ => WorkerEnded::Finished,
            },
            WorkerEnd::StoreFailed(_, err) => {
                // A store that keeps failing is broken: the loop's health
                // check ends the daemon next. Otherwise the build waits a
                // minute and runs again from its last record.
                tracing::error!(
                    build = %id,
                    "the build store could not be written: {err}; the build is kept as last \
                     recorded. Check the disk under {}",
                    self.store.dir().display()
                );
                match self.store.get(id) {
                    Ok(Some(mut build)) => {
                        build.next_attempt_at = Some(now_ms() + 60_000);
                        WorkerEnded::Again(self.waiting(&build))
                    }
                    _ => WorkerEnded::Finished,
                }
            }
        };
        vec![Input::WorkerEnded(id, ended)]
    }

    /// `--once`'s last words: one line per build that ended in the run,
    /// and an error when any of them failed, so the CI step that ran it
    /// fails too.
    fn summary(&self) -> Result<(), DaemonError> {
        for build in &self.ended {
            tracing::info!(
                build = %build.id, rule = %build.rule, label = %build.label,
                "run summary: {}", build.state
            );
        }
        let failed = self
            .ended
            .iter()
            .filter(|b| matches!(b.state, BuildState::Failed { .. }))
            .count();
        if failed > 0 {
            return Err(DaemonError::BuildsFailed {
                failed,
                total: self.ended.len(),
            });
        }
        Ok(())
    }

    /// A build reached a terminal state: its file goes where its rule says.
    async fn finished(&mut self, build: &Build) {
        if self.once {
            self.ended.push(build.clone());
        }
        self.arrivals.remove(&build.id);
        self.stuck.remove(&build.id);
        // A build cancelled while it waited may still hold its app's lock.
        if let Ok(record) = self.store.coordination(build.id)
            && let Some(owner) = &record.owner
        {
            self.lock.release_all(owner);
        }
        self.dispose(build).await;
        self.prune().await;
    }

    async fn command(&mut self, cmd: ControlCommand) -> Vec<Input> {
        match cmd {
            ControlCommand::Status(reply) => {
                let _ = reply.send(self.observer.unfinished());
                Vec::new()
            }
            ControlCommand::Retry(id, force, reply) => {
                let result = retry_build(&self.store, id, force).await;
                let inputs = match &result {
                    Ok(build) => {
                        // Before its worker starts: the file must be where
                        // the build reads it.
                        if let Some(rule) = self.config.rule(&build.rule) {
                            dispose::bring_back(rule, build).await;
                        }
                        tracing::info!(build = %id, "retrying build from a fresh upload");
                        vec![Input::Waiting(self.waiting(build))]
                    }
                    Err(_) => Vec::new(),
                };
                let _ = reply.send(result);
                inputs
            }
            ControlCommand::Cancel(id, reply) => {
                let reply_id = self.next_reply;
                self.next_reply += 1;
                self.replies.insert(reply_id, reply);
                vec![Input::Cancel {
                    id,
                    reply: reply_id,
                }]
            }
        }
    }

    /// Cancels a build no worker runs and answers the requests for it.
    async fn cancel_stored(&mut self, id: BuildId, replies: Vec<ReplyId>) {
        let result = cancel_build(&self.store, id).await;
        if let Ok(build) = &result {
            tracing::info!(build = %id, "build cancelled");
            self.finished(build).await;
        }
        let mut replies = replies.into_iter().filter_map(|r| self.replies.remove(&r));
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

    async fn watch_event(&mut self, event: WatchEvent) -> Vec<Input> {
        match event {
            WatchEvent::Settling {
                rule,
                path,
                arrival,
            } => match self.config.rule(&rule) {
                Some(r) => vec![Input::Settling {
                    app: r.app_secret.clone(),
                    file: (rule, path),
                    arrival,
                }],
                None => Vec::new(),
            },
            WatchEvent::Abandoned { rule, path } => vec![Input::Settled((rule, path))],
            WatchEvent::Candidate(candidate) => self.take(candidate).await,
            // A file that is not a ZIP PatchKit can take still becomes a
            // build, which fails validation with the reason: status,
            // notifications and the build's failure line show it (once; a
            // known file seen again at a start says nothing).
            WatchEvent::Invalid { candidate, error } => {
                tracing::debug!(rule = %candidate.rule, "{error}");
                self.take(candidate).await
            }
            WatchEvent::FolderMissing { rule, folder } => {
                tracing::warn!(
                    rule = %rule, folder = %folder.display(),
                    "the rule folder is missing; create it (or mount it) and it is watched again"
                );
                Vec::new()
            }
            WatchEvent::FolderBack { rule, folder } => {
                tracing::info!(rule = %rule, folder = %folder.display(), "the rule folder is back");
                Vec::new()
            }
            WatchEvent::Error { rule, message } => {
                tracing::error!(rule = %rule, "{message}");
                Vec::new()
            }
            WatchEvent::Drained => vec![Input::Drained],
        }
    }

    /// Records a settled file as a build. The build's place in the queue
    /// comes before the watcher's hold on it is released.
    async fn take(&mut self, candidate: Candidate) -> Vec<Input> {
        let settled = Input::Settled((candidate.rule.clone(), candidate.path.clone()));
        let Some(rule) = self.config.rule(&candidate.rule).cloned() else {
            return vec![settled];
        };
        let mut inputs = Vec::new();
        match intake::enqueue(&self.store, &rule, &candidate.identity).await {
            Ok(Enqueued::New(build)) => {
                if build.state.is_terminal() {
                    self.finished(&build).await;
                } else {
                    self.arrivals.insert(build.id, candidate.arrival);
                    inputs.push(Input::Waiting(self.waiting(&build)));
                }
            }
            Ok(Enqueued::Existing(id)) => tracing::debug!(
                build = %id, file = %candidate.path.display(),
                "the file is a build already recorded; left alone"
            ),
            Err(err) => tracing::error!(
                rule = %rule.name, "cannot take {}: {err}", candidate.path.display()
            ),
        }
        inputs.push(settled);
        inputs
    }

    /// Applies a reloaded config; returns `None` when it is refused, else
    /// whether it brought another API key.
    fn reload(
        &mut self,
        reload: Result<Config, ConfigError>,
        watcher: &WatcherHandle,
    ) -> Option<bool> {
        let config = match reload {
            Ok(config) => config,
            // One line per problem: log lines are single lines.
            Err(ConfigError::Invalid { path, problems }) => {
                tracing::error!(
                    "the new config is refused, the old one stays in force: {} has {} \
                     problem(s)",
                    path.display(),
                    problems.len()
                );
                for problem in problems {
                    tracing::error!("{}:{problem}", path.display());
                }
                return None;
            }
            Err(err) => {
                tracing::error!("the new config is refused, the old one stays in force: {err}");
                return None;
            }
        };
        if config.daemon.state_dir != self.config.daemon.state_dir {
            tracing::warn!(
                "state_dir changed in the config; that takes a restart, the daemon keeps using {}",
                self.config.daemon.state_dir.display()
            );
        }
        let specs = config.rules.iter().map(Rule::watch_spec).collect();
        if let Err(err) = watcher.update(specs) {
            tracing::error!("cannot apply the new rules to the watcher: {err}");
            return None;
        }
        let state_dir = self.config.daemon.state_dir.clone();
        self.config = config;
        self.config.daemon.state_dir = state_dir;
        self.core.configure(
            self.config.daemon.workers,
            millis(self.config.daemon.auth_retry),
        );
        let key_changed = self.refresh_key();
        self.observer
            .add_rules(self.config.rules.iter().map(|r| r.name.as_str()));
        tracing::info!(rules = self.config.rules.len(), "config reloaded");
        Some(key_changed)
    }

    /// systemd's STATUS line, from the observer's current view.
    fn status_line(&self) -> String {
        let unfinished = self.observer.unfinished();
        let (running, queued): (Vec<Build>, Vec<Build>) = unfinished
            .into_iter()
            .partition(|b| self.core.is_running(b.id));
        self.observer.summary(&running, queued.len())
    }

    /// Reports running builds that made no progress for `stuck_after`, once
    /// per stall, and returns when to look again.
    fn check_stuck(&mut self, wake: Option<u64>) -> Option<u64> {
        let after = self.config.daemon.stuck_after;
        // Builds waiting for another publisher (PatchKit's lock, someone
        // else's processing) are stuck once the wait is longer than the
        // threshold, whether or not a worker is asking right now.
        let waiting: Vec<(Build, crate::store::Wait)> = self
            .observer
            .unfinished()
            .into_iter()
            .filter_map(|b| {
                let wait = self.store.coordination(b.id).ok()?.waiting?;
                Some((b, wait))
            })
            .collect();
        let idle: Vec<(BuildId, Duration)> = self
            .observer
            .idle_builds(after)
            .into_iter()
            .filter(|(id, _)| {
                self.core.is_running(*id) && !waiting.iter().any(|(b, _)| b.id == *id)
            })
            .collect();
        self.stuck.retain(|id| {
            idle.iter().any(|(i, _)| i == id) || waiting.iter().any(|(b, _)| b.id == *id)
        });
        for (id, how_long) in &idle {
            if self.stuck.insert(*id)
                && let Some(build) = self.observer.build(*id)
            {
                self.observer.stuck(&build, *how_long);
            }
        }
        for (build, wait) in &waiting {
            let waited = Duration::from_millis(now_ms().saturating_sub(wait.since_ms));
            if waited >= after && self.stuck.insert(build.id) {
                self.observer
                    .stuck_waiting(build, waited, &wait.reason.to_string());
            }
        }
        if self.core.running_count() == 0 && waiting.is_empty() {
            return wake;
        }
        // Look again a tenth of the threshold from now: a stall is noticed
        // within 10% of `stuck_after`, at a few wake-ups an hour.
        earliest(wake, now_ms() + millis(after / 10).max(1000))
    }

    /// Client options for `key`, sharing the apps the client has read.
    fn client_options(&self, key: ApiKey) -> crate::patchkit::ClientOptions {
        let mut opts = self.config.patchkit.client_options(key);
        opts.known_apps = self.client.known_apps();
        opts
    }

    /// Reads the API key again; returns whether another key is now in use.
    fn refresh_key(&mut self) -> bool {
        match self.config.patchkit.load_key() {
            Ok((key, origin)) => {
                if key != self.key || origin != self.key_origin {
                    match Client::new(self.client_options(key.clone())) {
                        Ok(client) => {
                            tracing::info!(origin = %origin, "API key read again");
                            self.client = client;
                            let changed = key != self.key;
                            self.key = key;
                            self.key_origin = origin;
                            return changed;
                        }
                        Err(err) => tracing::error!("cannot set up the PatchKit client: {err}"),
                    }
                } else if let Ok(client) = Client::new(self.client_options(key)) {
                    // Same key, maybe new timeouts or URLs from a reload.
                    self.client = client;
                }
            }
            Err(err) => tracing::error!("{err}; the key in use stays"),
        }
        false
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
        if !self.workers.is_empty() {
            tracing::info!(
                running = self.workers.len(),
                "stopping: letting in-flight requests finish (up to {})",
                humantime::format_duration(timeout)
            );
        }
        for stop in self.workers.values() {
            stop.cancel();
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

/// The webhook's view of the apps the PatchKit client has read.
fn app_lookup(apps: crate::patchkit::KnownApps) -> crate::webhook::AppLookup {
    std::sync::Arc::new(move |secret| {
        apps.get(secret).map(|app| crate::webhook::AppInfo {
            name: app.name,
            id: app.id,
        })
    })
}
