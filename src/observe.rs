//! What the daemon tells the outside world while it works: live progress
//! per build (for `status` and systemd's STATUS line), counters (for
//! metrics), one log line per stage change, and build events (for
//! notifications).
//!
//! The store tells the observer every record it writes (`Store::on_change`
//! calls [`Observer::state_changed`]), so the observer's copy of every
//! unfinished build is the one source of truth for `status`, systemd's
//! STATUS line, metrics and events. Stages report progress between writes.
//! Readers take snapshots. Reporting never blocks and never fails: a slow
//! reader (a dead webhook) can lose events, never stall an upload.
//!
//! Knows builds and numbers; nothing about HTTP, sockets or sled.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::state::BuildState;
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
    #[serde(skip)]
    last_progress: Instant,
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

/// Counters for metrics. Plain numbers under one lock: they change a few
/// times per chunk at most.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Bytes acknowledged by PatchKit, over all uploads.
    pub bytes_uploaded: u64,
    /// Retries, by error class (`transient`, `auth`, ...).
    pub retries: BTreeMap<String, u64>,
    /// Failed builds, by rule.
    pub failures: BTreeMap<String, u64>,
    /// Published builds, by rule.
    pub published: BTreeMap<String, u64>,
    /// Unix seconds of the last publish, by rule.
    pub last_success: BTreeMap<String, u64>,
    /// Unfinished builds by state name.
    pub builds_by_state: BTreeMap<String, u64>,
}

/// The shared reporting point. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every unfinished build as last written to the store.
    builds: Mutex<BTreeMap<BuildId, Build>>,
    /// Finished builds already announced, with the record's `updated_at`.
    finished: Mutex<HashMap<BuildId, u64>>,
    live: Mutex<HashMap<BuildId, Live>>,
    counters: Mutex<Counters>,
    events: broadcast::Sender<BuildEvent>,
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
                counters: Mutex::new(Counters::default()),
                events,
            }),
        }
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
        if previous
            .as_ref()
            .is_some_and(|p| p.state.name() == build.state.name())
        {
            return;
        }
        if build.state.is_terminal() && self.already_told(build) {
            return;
        }
        // A new build is logged by intake, with its file.
        let new = previous.is_none() && build.state == BuildState::Queued;
        if !new {
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
                live.insert(
                    build.id,
                    Live {
                        state: build.state.name(),
                        progress: None,
                        bytes_per_second: None,
                        eta_seconds: None,
                        idle_seconds: 0.0,
                        last_progress: Instant::now(),
                    },
                );
            }
        }
        self.emit(EventKind::StateChanged, build, None);
        match &build.state {
            BuildState::Processed { warnings, .. } if !warnings.is_empty() => {
                self.emit(EventKind::Warning, build, Some(warnings.join("; ")));
            }
            BuildState::Published { .. } | BuildState::Scheduled { .. } => {
                let mut c = self.inner.counters.lock().expect("observer lock");
                *c.published.entry(build.rule.clone()).or_default() += 1;
                c.last_success.insert(build.rule.clone(), now_ms() / 1000);
                drop(c);
                self.emit(EventKind::Published, build, None);
            }
            BuildState::Failed { reason, .. } => {
                let mut c = self.inner.counters.lock().expect("observer lock");
                *c.failures.entry(build.rule.clone()).or_default() += 1;
                drop(c);
                self.emit(EventKind::Failed, build, Some(reason.clone()));
            }
            _ => {}
        }
    }

    /// Whether this terminal state of the build was already announced (the
    /// same record told twice).
    fn already_told(&self, build: &Build) -> bool {
        let mut told = self.inner.finished.lock().expect("observer lock");
        if told.get(&build.id) == Some(&build.updated_at) {
            return true;
        }
        // Only the last few hundred finished builds matter: a repeat comes
        // right after the first telling.
        if told.len() >= 512 {
            told.clear();
        }
        told.insert(build.id, build.updated_at);
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
        self.inner
            .counters
            .lock()
            .expect("observer lock")
            .bytes_uploaded += chunk;
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

    fn update(&self, id: BuildId, change: impl FnOnce(&mut Live)) {
        let mut live = self.inner.live.lock().expect("observer lock");
        if let Some(entry) = live.get_mut(&id) {
            let before = entry.progress;
            change(entry);
            if entry.progress != before {
                entry.last_progress = Instant::now();
            }
        }
    }

    /// A failed try that will be repeated, by error class.
    pub fn retried(&self, class: &str) {
        *self
            .inner
            .counters
            .lock()
            .expect("observer lock")
            .retries
            .entry(class.to_owned())
            .or_default() += 1;
    }

    /// Live progress of a running build.
    pub fn live(&self, id: BuildId) -> Option<Live> {
        let live = self.inner.live.lock().expect("observer lock");
        live.get(&id).map(|l| Live {
            idle_seconds: l.last_progress.elapsed().as_secs_f64(),
            ..l.clone()
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

    /// The counters now.
    pub fn counters(&self) -> Counters {
        let mut counters = self.inner.counters.lock().expect("observer lock").clone();
        for b in self.inner.builds.lock().expect("observer lock").values() {
            *counters
                .builds_by_state
                .entry(b.state.name().to_owned())
                .or_default() += 1;
        }
        counters
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
