//! What the daemon tells the outside world while it works: live progress
//! per build (for `status` and systemd's STATUS line), the request retries
//! under way, metrics, one log line per stage change, and build events (for
//! notifications).
//!
//! The store tells the observer every record it writes (`Store::on_change`
//! calls [`Observer::state_changed`]), so the observer's copy of every
//! unfinished build is the one source of truth for `status`, systemd's
//! STATUS line, metrics and events. Stages report progress between writes;
//! the client reports each request retry of a build's worker through the
//! [`RetryWatch`] the worker runs under. Readers take snapshots. Reporting
//! never blocks and never fails: a slow reader (a dead webhook) can lose
//! events, never stall an upload.
//!
//! Knows builds and numbers; nothing about HTTP, sockets or sled.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::metrics::{Metrics, Present};
use crate::patchkit::{RequestRetry, RetryWatch};
use crate::scheduler::Lane;
use crate::state::{BuildState, Stage};
use crate::store::{Build, BuildId};

/// How many build events wait for slow subscribers before the oldest are
/// dropped (each subscriber is told how many it missed).
const EVENT_BUFFER: usize = 1024;

/// Live progress of one running build.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Live {
    /// The state's name (`uploading`, `processing`, ...).
    pub state: &'static str,
    /// 0..1 within the current stage, when known.
    pub progress: Option<f64>,
    /// Upload speed in bytes per second, while uploading.
    pub bytes_per_second: Option<f64>,
    /// Seconds left, while uploading.
    pub eta_seconds: Option<f64>,
    /// Seconds since the build last made progress.
    pub idle_seconds: f64,
    /// A request being sent again right now, until it is answered.
    pub request_retry: Option<RequestRetryStatus>,
    /// Reported stuck (no progress for `stuck_after`), until it moves.
    pub stuck: bool,
    #[serde(skip)]
    last_progress: Instant,
}

impl Live {
    fn new(state: &'static str) -> Self {
        Live {
            state,
            progress: None,
            bytes_per_second: None,
            eta_seconds: None,
            idle_seconds: 0.0,
            request_retry: None,
            stuck: false,
            last_progress: Instant::now(),
        }
    }
}

/// A request of a running build that failed and is being retried: what
/// `status` shows during an outage shorter than `retry_give_up`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestRetryStatus {
    /// The endpoint, e.g. `POST /1/uploads/{id}/chunk`.
    pub endpoint: String,
    /// `transient`, `rate_limited` or `chunk_mismatch`.
    pub class: String,
    /// Retries of this request so far (1 = the first).
    pub attempt: u32,
    /// What the last try got.
    pub last_error: String,
    /// When it is sent again, Unix milliseconds.
    pub next_try_at: u64,
}

/// Something that happened to a build, for notifications and the demo.
#[derive(Debug, Clone, Serialize)]
pub struct BuildEvent {
    /// What happened.
    pub kind: EventKind,
    /// The build as stored at that moment.
    #[serde(skip)]
    pub build: Build,
    /// Seconds from the build being taken to this event.
    pub duration_seconds: f64,
    /// Why it failed or is stuck, for `failed` and `stuck`.
    pub reason: Option<String>,
}

/// The kinds of build event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The build moved to another state (not every chunk).
    StateChanged,
    /// The version is live (or scheduled).
    Published,
    /// The build failed.
    Failed,
    /// Processing finished with warnings (the build goes on).
    Warning,
    /// No progress for the configured time.
    Stuck,
}

impl EventKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::StateChanged => "state_changed",
            EventKind::Published => "published",
            EventKind::Failed => "failed",
            EventKind::Warning => "warning",
            EventKind::Stuck => "stuck",
        }
    }
}

/// The shared reporting point. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every unfinished build as last written to the store.
    builds: Mutex<BTreeMap<BuildId, Build>>,
    /// Finished builds already announced, with the state they ended in.
    finished: Mutex<HashMap<BuildId, &'static str>>,
    live: Mutex<HashMap<BuildId, Live>>,
    /// When each running build entered the stage it is in, for
    /// `stage_duration_seconds`: only stages this process saw begin.
    clocks: Mutex<HashMap<BuildId, (Stage, Instant)>>,
    /// The builds a worker runs now, and in which lane.
    workers: Mutex<HashMap<BuildId, Lane>>,
    metrics: Metrics,
    events: broadcast::Sender<BuildEvent>,
    /// Woken when what the STATUS line shows moved (a new state, a request
    /// retry begun or ended), so systemd hears it at once.
    moved: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Default for Observer {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Observer {
            inner: Arc::new(Inner {
                builds: Mutex::new(BTreeMap::new()),
                finished: Mutex::new(HashMap::new()),
                live: Mutex::new(HashMap::new()),
                clocks: Mutex::new(HashMap::new()),
                workers: Mutex::new(HashMap::new()),
                metrics: Metrics::new(),
                events,
                moved: Arc::new(tokio::sync::Notify::new()),
            }),
        }
    }

    /// Notified whenever a build's state changes or a request retry begins
    /// or ends: the event loop refreshes systemd's STATUS line then. A
    /// change while nobody waits is kept for the next wait.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.inner.moved.clone()
    }

    /// Build events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BuildEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, kind: EventKind, build: &Build, reason: Option<String>) {
        let duration_seconds = now_ms().saturating_sub(build.enqueued_at) as f64 / 1000.0;
        // No subscriber is not an error.
        let _ = self.inner.events.send(BuildEvent {
            kind,
            build: build.clone(),
            duration_seconds,
            reason,
        });
    }

    /// The unfinished builds found in the store at start: known, without a
    /// log line or an event each.
    pub fn load(&self, builds: impl IntoIterator<Item = Build>) {
        let mut known = self.inner.builds.lock().expect("observer lock");
        for build in builds {
            if !build.state.is_terminal() {
                known.insert(build.id, build);
            }
        }
    }

    /// The rules of the config in force: their series exist from now on,
    /// at 0 until something happens.
    pub fn add_rules<'a>(&self, rules: impl IntoIterator<Item = &'a str>) {
        self.inner.metrics.add_rules(rules);
    }

    /// The newest publish of each rule found in the store at start, so
    /// `last_success_timestamp_seconds` survives restarts.
    pub fn restore_last_success<'a>(&self, builds: impl IntoIterator<Item = &'a Build>) {
        for build in builds {
            if matches!(
                build.state,
                BuildState::Published { .. } | BuildState::Scheduled { .. }
            ) {
                self.inner
                    .metrics
                    .set_last_success(&build.rule, build.updated_at / 1000);
            }
        }
    }

    /// The metric families.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What the present-tense metrics show now: builds by rule and state,
    /// upload throughput and request retries under way, from the same
    /// copies `status` reads.
    pub fn present(&self) -> Present {
        let mut present = Present::default();
        let rules: HashMap<BuildId, (String, &'static str)> = {
            let known = self.inner.builds.lock().expect("observer lock");
            known
                .values()
                .map(|b| (b.id, (b.rule.clone(), b.state.name())))
                .collect()
        };
        for (rule, state) in rules.values() {
            *present.builds.entry((rule.clone(), *state)).or_default() += 1;
        }
        let live = self.inner.live.lock().expect("observer lock");
        for (id, l) in live.iter() {
            let Some((rule, _)) = rules.get(id) else {
                continue;
            };
            // A failing request moves no byte, whatever the last rate was.
            if l.state == "uploading"
                && l.request_retry.is_none()
                && let Some(rate) = l.bytes_per_second
            {
                *present
                    .upload_bytes_per_second
                    .entry(rule.clone())
                    .or_default() += rate;
            }
            if l.stuck {
                *present.stuck_builds.entry(rule.clone()).or_default() += 1;
            }
            if let Some(retry) = &l.request_retry {
                let attempt = present
                    .request_retry_attempt
                    .entry(rule.clone())
                    .or_default();
                *attempt = (*attempt).max(i64::from(retry.attempt));
            }
        }
        present
    }

    /// Every unfinished build as last written, oldest id first.
    pub fn unfinished(&self) -> Vec<Build> {
        let known = self.inner.builds.lock().expect("observer lock");
        known.values().cloned().collect()
    }

    /// An unfinished build as last written.
    pub fn build(&self, id: BuildId) -> Option<Build> {
        let known = self.inner.builds.lock().expect("observer lock");
        known.get(&id).cloned()
    }

    /// A build record was written. Every write updates the build's entry
    /// (attempts and errors included); a new state (by name) also gives one
    /// log line, fresh live status and events. Telling it twice is
    /// harmless.
    pub fn state_changed(&self, build: &Build) {
        let previous = {
            let mut known = self.inner.builds.lock().expect("observer lock");
            if build.state.is_terminal() {
                known.remove(&build.id)
            } else {
                known.insert(build.id, build.clone())
            }
        };
        // A record is written after an answer (or as the step gives up): no
        // request of this build is being retried any more.
        self.request_settled(build.id);
        if previous
            .as_ref()
            .is_some_and(|p| p.state.name() == build.state.name())
        {
            return;
        }
        if self.already_told(build) && build.state.is_terminal() {
            return;
        }
        // A new build is logged by intake, with its file.
        let new = previous.is_none() && build.state == BuildState::Queued;
        if matches!(build.state, BuildState::Failed { .. }) {
            // The one line a failure gets, wherever it came from.
            tracing::error!(
                build = %build.id, rule = %build.rule, label = %build.label,
                "build {}", build.state
            );
        } else if !new {
            tracing::info!(
            build = %build.id, rule = %build.rule, label = %build.label,
            "{}", build.state
            );
        }
        {
            let mut live = self.inner.live.lock().expect("observer lock");
            if build.state.is_terminal() {
                live.remove(&build.id);
            } else {
                live.insert(build.id, Live::new(build.state.name()));
            }
        }
        self.time_stage(build);
        self.inner.moved.notify_one();
        self.emit(EventKind::StateChanged, build, None);
        let metrics = &self.inner.metrics;
        match &build.state {
            BuildState::Processed { warnings, .. } if !warnings.is_empty() => {
                self.emit(EventKind::Warning, build, Some(warnings.join("; ")));
            }
            BuildState::Published { .. } | BuildState::Scheduled { .. } => {
                let now = now_ms();
                // Scheduled is not live yet: only a publish ends the
                // drop-to-live time.
                let live = matches!(build.state, BuildState::Published { .. })
                    .then(|| Duration::from_millis(now.saturating_sub(build.enqueued_at)));
                // The record's time, as a restart reads it back.
                metrics.published(&build.rule, build.updated_at / 1000, live);
                self.emit(EventKind::Published, build, None);
            }
            BuildState::Failed { reason, .. } => {
                metrics.failed(&build.rule);
                self.emit(EventKind::Failed, build, Some(reason.clone()));
            }
            _ => {}
        }
    }

    /// A worker starts (or resumes) `build`. A queued build's validation
    /// begins here, not when the file was taken; every other stage began at
    /// the state change this process saw (a stage resumed after a restart
    /// began before it, so it is not timed).
    pub fn worker_started(&self, build: &Build, lane: Lane) {
        self.inner
            .workers
            .lock()
            .expect("observer lock")
            .insert(build.id, lane);
        // Waiting to be taken, or for the turn after the upload, is not
        // part of a stage: those clocks start with the worker.
        let stage = match build.state {
            BuildState::Queued => Stage::Validate,
            BuildState::Uploaded {
                version_id: None, ..
            } => Stage::CreateVersion,
            _ => return,
        };
        let mut clocks = self.inner.clocks.lock().expect("observer lock");
        clocks
            .entry(build.id)
            .or_insert_with(|| (stage, Instant::now()));
    }

    /// The build's worker ended.
    pub fn worker_ended(&self, id: BuildId) {
        self.inner
            .workers
            .lock()
            .expect("observer lock")
            .remove(&id);
    }

    /// The lane the build's worker runs in, while one runs it.
    pub fn lane(&self, id: BuildId) -> Option<Lane> {
        self.inner
            .workers
            .lock()
            .expect("observer lock")
            .get(&id)
            .copied()
    }

    /// Ends the clock of the stage the build left, when it moved forward
    /// (a stage it completed), and starts the next one.
    fn time_stage(&self, build: &Build) {
        let order = |stage: Stage| Stage::ALL.iter().position(|s| *s == stage);
        let mut clocks = self.inner.clocks.lock().expect("observer lock");
        let done = match &build.state {
            BuildState::Published { .. }
            | BuildState::Scheduled { .. }
            | BuildState::Draft { .. } => clocks.remove(&build.id),
            BuildState::Failed { .. } | BuildState::Cancelled { .. } => {
                clocks.remove(&build.id);
                None
            }
            // Waiting to be taken is not validation: the clock starts
            // with the worker.
            BuildState::Queued => {
                clocks.remove(&build.id);
                None
            }
            // The upload is done; waiting for the turn is not the draft's
            // time: that clock starts with the turn's worker.
            BuildState::Uploaded {
                version_id: None, ..
            } => clocks
                .remove(&build.id)
                .filter(|(stage, _)| *stage == Stage::Upload),
            state => {
                let next = state.stage();
                match clocks.get(&build.id).copied() {
                    Some((stage, _)) if stage == next => None,
                    Some((stage, began)) => {
                        clocks.insert(build.id, (next, Instant::now()));
                        (order(next) > order(stage)).then_some((stage, began))
                    }
                    None => {
                        clocks.insert(build.id, (next, Instant::now()));
                        None
                    }
                }
            }
        };
        drop(clocks);
        if let Some((stage, began)) = done {
            self.inner
                .metrics
                .stage_done(&build.rule, stage, began.elapsed());
        }
    }

    /// The watch a build's worker runs under: each request retry it makes is
    /// counted and shown in its live status until the request is answered.
    pub fn retry_watch(&self, build: &Build) -> Arc<dyn RetryWatch> {
        Arc::new(BuildRetries {
            observer: self.clone(),
            id: build.id,
        })
    }

    /// No request of the build is being retried any more.
    pub fn request_settled(&self, id: BuildId) {
        let mut live = self.inner.live.lock().expect("observer lock");
        if let Some(entry) = live.get_mut(&id)
            && entry.request_retry.take().is_some()
        {
            self.inner.moved.notify_one();
        }
    }

    /// Whether this terminal state of the build was already announced (the
    /// same record told twice).
    fn already_told(&self, build: &Build) -> bool {
        let mut told = self.inner.finished.lock().expect("observer lock");
        if !build.state.is_terminal() {
            // Retried: its next end is news again.
            told.remove(&build.id);
            return false;
        }
        // By state, not by write: a finished record written again (its
        // attempt count cleared) is the same end.
        if told.get(&build.id) == Some(&build.state.name()) {
            return true;
        }
        // Only the last few hundred finished builds matter: a repeat comes
        // right after the first telling.
        if told.len() >= 512 {
            told.clear();
        }
        told.insert(build.id, build.state.name());
        false
    }

    /// Upload progress: `acknowledged` of `total` bytes, `sent` of them in
    /// this session, over `elapsed`.
    pub fn upload_progress(
        &self,
        id: BuildId,
        acknowledged: u64,
        total: u64,
        sent: u64,
        elapsed: Duration,
        chunk: u64,
    ) {
        if let Some(rule) = self.build(id).map(|b| b.rule) {
            self.inner.metrics.uploaded(&rule, chunk);
        }
        let rate = sent as f64 / elapsed.as_secs_f64().max(0.001);
        self.update(id, |live| {
            live.progress = Some(acknowledged as f64 / total.max(1) as f64);
            live.bytes_per_second = Some(rate);
            live.eta_seconds = (rate > 0.0).then(|| (total - acknowledged) as f64 / rate);
        });
    }

    /// Processing or publishing progress, 0..1.
    pub fn stage_progress(&self, id: BuildId, fraction: f64) {
        self.update(id, |live| live.progress = Some(fraction));
    }

    /// Changes a running build's live status. A build resumed from the
    /// store (after a restart) gets its entry at its first report.
    fn update(&self, id: BuildId, change: impl FnOnce(&mut Live)) {
        let missing = !self
            .inner
            .live
            .lock()
            .expect("observer lock")
            .contains_key(&id);
        // Looked up before the live lock is taken again: the two locks are
        // never held together.
        let state = if missing {
            self.build(id).map(|b| b.state.name())
        } else {
            None
        };
        let mut live = self.inner.live.lock().expect("observer lock");
        let entry = match state {
            Some(state) => Some(live.entry(id).or_insert_with(|| Live::new(state))),
            None => live.get_mut(&id),
        };
        if let Some(entry) = entry {
            let before = entry.progress;
            change(entry);
            if entry.progress != before {
                entry.last_progress = Instant::now();
                entry.stuck = false;
            }
        }
    }

    /// A build's stage failed and the build will try it again later (each
    /// such retry is an attempt in `status`).
    pub fn build_retried(&self, build: &Build) {
        self.inner.metrics.build_retried(&build.rule);
    }

    /// Live progress of a running build.
    ///
    /// While a request is failing, nothing moves: the speed and ETA of the
    /// upload's last stretch are not shown as if they still held.
    pub fn live(&self, id: BuildId) -> Option<Live> {
        let live = self.inner.live.lock().expect("observer lock");
        live.get(&id).map(|l| {
            let moving = l.request_retry.is_none();
            Live {
                idle_seconds: l.last_progress.elapsed().as_secs_f64(),
                bytes_per_second: l.bytes_per_second.filter(|_| moving),
                eta_seconds: l.eta_seconds.filter(|_| moving),
                ..l.clone()
            }
        })
    }

    /// Builds that made no progress for `after`, with how long.
    pub fn idle_builds(&self, after: Duration) -> Vec<(BuildId, Duration)> {
        let live = self.inner.live.lock().expect("observer lock");
        live.iter()
            .filter_map(|(id, l)| {
                let idle = l.last_progress.elapsed();
                (idle >= after).then_some((*id, idle))
            })
            .collect()
    }

    /// Tells subscribers a build is stuck.
    pub fn stuck(&self, build: &Build, idle: Duration) {
        self.update(build.id, |live| live.stuck = true);
        tracing::warn!(
            build = %build.id, rule = %build.rule, label = %build.label,
            "no progress for {} while {}; check PatchKit's status and the network",
            humantime::format_duration(Duration::from_secs(idle.as_secs())),
            build.state.name()
        );
        self.emit(
            EventKind::Stuck,
            build,
            Some(format!(
                "no progress for {} while {}",
                humantime::format_duration(Duration::from_secs(idle.as_secs())),
                build.state.name()
            )),
        );
    }

    /// Tells subscribers a build has waited for another publisher for
    /// `waited` (`what` says for what).
    pub fn stuck_waiting(&self, build: &Build, waited: Duration, what: &str) {
        let text = format!(
            "{what} for {}",
            humantime::format_duration(Duration::from_secs(waited.as_secs()))
        );
        tracing::warn!(
            build = %build.id, rule = %build.rule, label = %build.label,
            "{text}; another publisher (pkt, another daemon, a person) holds the app"
        );
        self.emit(EventKind::Stuck, build, Some(text));
    }

    /// A one-line summary for systemd's STATUS=, e.g. "uploading mygame
    /// 1.4.2: 45%, 12.0 MiB/s; 2 queued".
    pub fn summary(&self, running: &[Build], queued: usize) -> String {
        let mut parts: Vec<String> = running
            .iter()
            .map(|b| {
                let live = self.live(b.id);
                let mut s = format!("{} {} {}", b.state.name(), b.rule, b.label);
                if let Some(l) = live {
                    if let Some(p) = l.progress {
                        s.push_str(&format!(": {:.0}%", p * 100.0));
                    }
                    if let Some(r) = l.bytes_per_second {
                        s.push_str(&format!(", {:.1} MiB/s", r / (1024.0 * 1024.0)));
                    }
                    if let Some(retry) = &l.request_retry {
                        s.push_str(&format!(
                            ", retrying {} (attempt {})",
                            retry.endpoint, retry.attempt
                        ));
                    }
                }
                s
            })
            .collect();
        if queued > 0 {
            parts.push(format!("{queued} queued"));
        }
        if parts.is_empty() {
            "idle, watching for builds".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// The [`RetryWatch`] of one build's worker.
struct BuildRetries {
    observer: Observer,
    id: BuildId,
}

impl RetryWatch for BuildRetries {
    fn retrying(&self, retry: &RequestRetry) {
        self.observer
            .inner
            .metrics
            .request_retried(retry.endpoint, retry.class);
        let delay_ms = u64::try_from(retry.delay.as_millis()).unwrap_or(u64::MAX);
        let status = RequestRetryStatus {
            endpoint: retry.endpoint.to_string(),
            class: retry.class.as_str().to_owned(),
            attempt: retry.attempt,
            last_error: retry.error.clone(),
            next_try_at: now_ms().saturating_add(delay_ms),
        };
        self.observer
            .update(self.id, |live| live.request_retry = Some(status));
        self.observer.inner.moved.notify_one();
    }

    fn answered(&self) {
        self.observer.request_settled(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::state::FileIdentity;

    fn build(state: BuildState, attempts: u32, updated_at: u64) -> Build {
        Build {
            id: BuildId(7),
            rule: "win".into(),
            app_secret: "app".into(),
            file: PathBuf::from("/b/game.zip"),
            identity: FileIdentity {
                path: PathBuf::from("/b/game.zip"),
                size: 1,
                mtime_ns: 1,
                inode: 1,
            },
            label: "1.0".into(),
            changelog: None,
            publish: true,
            enqueued_at: 1,
            updated_at,
            state,
            attempts,
            next_attempt_at: None,
            last_error: None,
        }
    }

    /// A finished record written twice (its attempt count cleared after the
    /// last step) is one publish; a retried build's next end is news again.
    #[test]
    fn an_end_written_twice_is_told_once_and_a_retried_end_again() {
        let observer = Observer::new();
        observer.add_rules(["win"]);
        let mut events = observer.subscribe();
        let published = BuildState::Published {
            version_id: 1,
            published_at: 1,
            warnings: Vec::new(),
        };
        observer.state_changed(&build(
            BuildState::Publishing {
                version_id: 1,
                warnings: Vec::new(),
            },
            1,
            1,
        ));
        observer.state_changed(&build(published.clone(), 1, 2));
        observer.state_changed(&build(published.clone(), 0, 3));
        let text = crate::metrics::render(&observer);
        assert!(
            text.contains("patchkit_autopublish_published_total{rule=\"win\"} 1\n"),
            "{text}"
        );
        let mut told = 0;
        while let Ok(event) = events.try_recv() {
            told += usize::from(event.kind == EventKind::Published);
        }
        assert_eq!(told, 1);

        let failed = |at| {
            build(
                BuildState::Failed {
                    stage: crate::state::Stage::Publish,
                    reason: "no".into(),
                    attempts: 1,
                    version_id: Some(1),
                },
                0,
                at,
            )
        };
        observer.state_changed(&failed(4));
        observer.state_changed(&build(BuildState::VersionReady { version_id: 1 }, 0, 5));
        observer.state_changed(&failed(6));
        let text = crate::metrics::render(&observer);
        assert!(
            text.contains("patchkit_autopublish_failures_total{rule=\"win\"} 2\n"),
            "{text}"
        );
    }
}
