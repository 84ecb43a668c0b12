//! The scheduler core: which builds run now. Pure: events in, actions out.
//!
//! [`Scheduler::handle`] takes the time and a batch of [`Input`]s and
//! returns the [`Action`]s the daemon's shell must carry out (start a
//! worker, stop one, cancel a build in the store, read the key again, exit).
//! [`Scheduler::next_wake`] says when to call it again without an input.
//! No I/O, no clock, no tasks: every rule below is unit-tested here.
//!
//! The rules:
//! - **One build per app at a time, in arrival order.** A build's place is
//!   its file's [`Arrival`] (modification time, then first sight), not the
//!   moment it settled. A build that already holds its app on PatchKit (it
//!   has a version or an upload) goes first; otherwise the oldest build of
//!   the app does, and it waits while an older file of the same app is
//!   still settling in the watcher.
//! - **A build waiting for a retry time keeps its app's turn**: the builds
//!   behind it wait too, so a retry never lets a newer build overtake.
//! - **At most `workers` builds run at once**, across apps, oldest app
//!   first.
//! - **A refused key pauses every start** until the pause ends; then the
//!   key is read again. With `once`, a refused key ends the run once no
//!   worker is left.
//! - **Cancel** stops a running build's worker first and cancels it in the
//!   store once the worker has ended; a waiting build is cancelled at once.
//!
//! Knows build ids, app secrets and arrivals; nothing about the store,
//! PatchKit, files or tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use crate::state::Arrival;
use crate::store::BuildId;

/// A request waiting for its answer, named by the shell.
pub type ReplyId = u64;

/// A file the watcher is still settling: (rule, path).
pub type SettlingFile = (String, PathBuf);

/// What the scheduler needs to know of an unfinished build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub id: BuildId,
    /// The PatchKit app it goes to.
    pub app: String,
    /// Its place in the app's queue.
    pub arrival: Arrival,
    /// It already has a version or an upload on PatchKit, so it holds the
    /// app until it ends.
    pub holds_app: bool,
    /// Not before this time (Unix ms): a retry time.
    pub not_before: Option<u64>,
}

impl Waiting {
    /// The queue order: builds that hold their app first, then arrival,
    /// then id.
    fn order(&self) -> (bool, Arrival, BuildId) {
        (!self.holds_app, self.arrival, self.id)
    }
}

/// How a worker ended, as far as scheduling cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEnded {
    /// The build is finished (published, draft, failed, cancelled).
    Finished,
    /// The build waits and runs again (a retry time, a stop at shutdown).
    Again(Waiting),
    /// PatchKit refused the API key: the build waits, every start pauses.
    KeyRefused(Waiting),
}

/// One input to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A build is unfinished and wants to run: new, retried, or found in
    /// the store at start. Replaces what was known of it.
    Waiting(Waiting),
    /// A build that is not running ended some other way (cancelled while
    /// waiting, finished at intake).
    Gone(BuildId),
    /// A worker ended.
    WorkerEnded(BuildId, WorkerEnded),
    /// The watcher follows a file of `app` that has not settled yet; its
    /// arrival so far.
    Settling {
        file: SettlingFile,
        app: String,
        arrival: Arrival,
    },
    /// The watcher stopped following the file: it became a build (the
    /// build's own `Waiting` comes first), went away, or was refused.
    Settled(SettlingFile),
    /// The watcher has taken everything there was (`--once`).
    Drained,
    /// A person asks to cancel a build.
    Cancel { id: BuildId, reply: ReplyId },
    /// Stop: no new work, stop every worker.
    Shutdown,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker for the build.
    Start(BuildId),
    /// Ask the build's worker to stop at its next safe point.
    Stop(BuildId),
    /// Cancel the build in the store (it is not running) and answer these
    /// requests with the result.
    Cancel { id: BuildId, replies: Vec<ReplyId> },
    /// The key pause is over: read the key again before builds start.
    ReadKeyAgain,
    /// The run is over.
    Exit(Exit),
}

/// Why the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `--once`: every file taken, every build finished.
    Drained,
    /// `--once`: PatchKit refuses the key and nobody is there to fix it.
    KeyRefused,
    /// Shutdown was asked for; the shell waits for the workers.
    Shutdown,
}

/// A running build.
#[derive(Debug)]
struct Running {
    app: String,
    /// Cancel requests waiting for the worker to stop.
    cancels: Vec<ReplyId>,
    /// The build became runnable again before its worker's end was
    /// handled (a retry of the failure the worker just recorded): it waits
    /// again once the worker has ended.
    then: Option<Waiting>,
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    /// At most this many workers at once.
    workers: usize,
    /// `--once`: exit when drained and idle.
    once: bool,
    /// How long starts pause after a refused key (ms).
    key_pause_ms: u64,
    /// Builds waiting to run.
    waiting: BTreeMap<BuildId, Waiting>,
    running: HashMap<BuildId, Running>,
    /// Files the watcher still settles, with their app and arrival.
    settling: HashMap<SettlingFile, (String, Arrival)>,
    /// While PatchKit refuses the key: no start before this (Unix ms).
    key_paused_until: Option<u64>,
    drained: bool,
    stopping: bool,
    exited: bool,
}

impl Scheduler {
    /// A scheduler with nothing to do yet.
    pub fn new(workers: usize, once: bool, key_pause_ms: u64) -> Scheduler {
        Scheduler {
            workers: workers.max(1),
            once,
            key_pause_ms,
            waiting: BTreeMap::new(),
            running: HashMap::new(),
            settling: HashMap::new(),
            key_paused_until: None,
            drained: false,
            stopping: false,
            exited: false,
        }
    }

    /// Applies a changed worker limit or key pause (a reload).
    pub fn configure(&mut self, workers: usize, key_pause_ms: u64) {
        self.workers = workers.max(1);
        self.key_pause_ms = key_pause_ms;
    }

    /// Whether the build has a worker.
    pub fn is_running(&self, id: BuildId) -> bool {
        self.running.contains_key(&id)
    }

    /// How many builds run now.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Whether starts are paused for the key.
    pub fn key_paused(&self) -> bool {
        self.key_paused_until.is_some()
    }

    /// Feeds a batch of inputs, then decides what runs now.
    pub fn handle(&mut self, now: u64, inputs: impl IntoIterator<Item = Input>) -> Vec<Action> {
        let mut actions = Vec::new();
        for input in inputs {
            self.apply(now, input, &mut actions);
        }
        self.decide(now, &mut actions);
        actions
    }

    /// When to call [`Scheduler::handle`] again with no input (Unix ms):
    /// the end of the key pause or the earliest retry time that could start
    /// a build.
    pub fn next_wake(&self) -> Option<u64> {
        if self.stopping {
            return None;
        }
        if let Some(until) = self.key_paused_until {
            return Some(until);
        }
        self.heads().filter_map(|w| w.not_before).min()
    }

    fn apply(&mut self, now: u64, input: Input, actions: &mut Vec<Action>) {
        match input {
            Input::Waiting(w) => match self.running.get_mut(&w.id) {
                Some(running) => running.then = Some(w),
                None => {
                    self.waiting.insert(w.id, w);
                }
            },
            Input::Gone(id) => {
                self.waiting.remove(&id);
            }
            Input::WorkerEnded(id, ended) => {
                let mut running = self.running.remove(&id);
                match ended {
                    WorkerEnded::Finished => {
                        if let Some(w) = running.as_mut().and_then(|r| r.then.take()) {
                            self.waiting.insert(id, w);
                        }
                    }
                    WorkerEnded::Again(w) => {
                        self.waiting.insert(id, w);
                    }
                    WorkerEnded::KeyRefused(w) => {
                        self.waiting.insert(id, w);
                        let until = now.saturating_add(self.key_pause_ms);
                        self.key_paused_until =
                            Some(self.key_paused_until.map_or(until, |u| u.max(until)));
                    }
                }
                if let Some(running) = running
                    && !running.cancels.is_empty()
                {
                    self.waiting.remove(&id);
                    actions.push(Action::Cancel {
                        id,
                        replies: running.cancels,
                    });
                }
            }
            Input::Settling { file, app, arrival } => {
                self.settling.insert(file, (app, arrival));
            }
            Input::Settled(file) => {
                self.settling.remove(&file);
            }
            Input::Drained => self.drained = true,
            Input::Cancel { id, reply } => match self.running.get_mut(&id) {
                Some(running) => {
                    if running.cancels.is_empty() {
                        actions.push(Action::Stop(id));
                    }
                    running.cancels.push(reply);
                }
                None => {
                    self.waiting.remove(&id);
                    actions.push(Action::Cancel {
                        id,
                        replies: vec![reply],
                    });
                }
            },
            Input::Shutdown => {
                if !self.stopping {
                    self.stopping = true;
                    let mut ids: Vec<BuildId> = self.running.keys().copied().collect();
                    ids.sort();
                    actions.extend(ids.into_iter().map(Action::Stop));
                }
            }
        }
    }

    /// Each app's first build in queue order.
    fn heads(&self) -> impl Iterator<Item = &Waiting> {
        let mut heads: BTreeMap<&str, &Waiting> = BTreeMap::new();
        for w in self.waiting.values() {
            let head = heads.entry(&w.app).or_insert(w);
            if w.order() < head.order() {
                *head = w;
            }
        }
        heads.into_values()
    }

    /// Whether an older file of the build's app is still settling.
    fn older_settling(&self, w: &Waiting) -> bool {
        !w.holds_app
            && self
                .settling
                .values()
                .any(|(app, arrival)| *app == w.app && *arrival < w.arrival)
    }

    fn decide(&mut self, now: u64, actions: &mut Vec<Action>) {
        if self.exited {
            return;
        }
        if self.stopping {
            if self.running.is_empty() {
                self.exit(Exit::Shutdown, actions);
            }
            return;
        }
        if let Some(until) = self.key_paused_until {
            if until > now {
                if self.once && self.running.is_empty() {
                    self.exit(Exit::KeyRefused, actions);
                }
                return;
            }
            self.key_paused_until = None;
            actions.push(Action::ReadKeyAgain);
        }
        let busy: BTreeSet<&str> = self.running.values().map(|r| r.app.as_str()).collect();
        let mut ready: Vec<&Waiting> = self
            .heads()
            .filter(|w| !busy.contains(w.app.as_str()))
            .filter(|w| w.not_before.is_none_or(|at| at <= now))
            .filter(|w| !self.older_settling(w))
            .collect();
        // Across apps, the oldest build goes first when workers are short.
        ready.sort_by_key(|w| w.order());
        let free = self.workers.saturating_sub(self.running.len());
        let start: Vec<(BuildId, String)> = ready
            .into_iter()
            .take(free)
            .map(|w| (w.id, w.app.clone()))
            .collect();
        for (id, app) in start {
            self.waiting.remove(&id);
            self.running.insert(
                id,
                Running {
                    app,
                    cancels: Vec::new(),
                    then: None,
                },
            );
            actions.push(Action::Start(id));
        }
        if self.once && self.drained && self.waiting.is_empty() && self.running.is_empty() {
            self.exit(Exit::Drained, actions);
        }
    }

    fn exit(&mut self, why: Exit, actions: &mut Vec<Action>) {
        self.exited = true;
        actions.push(Action::Exit(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(t: i128) -> Arrival {
        Arrival {
            mtime_ns: t,
            seen_at: 0,
        }
    }

    fn build(id: u64, app: &str, t: i128) -> Waiting {
        Waiting {
            id: BuildId(id),
            app: app.into(),
            arrival: arrival(t),
            holds_app: false,
            not_before: None,
        }
    }

    fn starts(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(id) => Some(id.0),
                _ => None,
            })
            .collect()
    }

    fn file(name: &str) -> SettlingFile {
        ("rule".into(), PathBuf::from(name))
    }

    #[test]
    fn one_build_per_app_oldest_arrival_first() {
        let mut s = Scheduler::new(4, false, 1000);
        // Ids are in settle order; arrivals say 2 came first.
        let a = s.handle(
            0,
            [
                Input::Waiting(build(1, "a", 20)),
                Input::Waiting(build(2, "a", 10)),
                Input::Waiting(build(3, "b", 30)),
            ],
        );
        assert_eq!(starts(&a), vec![2, 3]);
        let a = s.handle(1, [Input::WorkerEnded(BuildId(2), WorkerEnded::Finished)]);
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn worker_limit_takes_the_oldest_apps_first() {
        let mut s = Scheduler::new(1, false, 1000);
        let a = s.handle(
            0,
            [
                Input::Waiting(build(1, "b", 20)),
                Input::Waiting(build(2, "a", 10)),
            ],
        );
        assert_eq!(starts(&a), vec![2]);
        assert_eq!(s.running_count(), 1);
        let a = s.handle(1, [Input::WorkerEnded(BuildId(2), WorkerEnded::Finished)]);
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn an_older_file_still_settling_holds_newer_builds_of_its_app() {
        let mut s = Scheduler::new(4, false, 1000);
        let a = s.handle(
            0,
            [
                Input::Settling {
                    file: file("000.zip"),
                    app: "a".into(),
                    arrival: arrival(5),
                },
                Input::Waiting(build(1, "a", 10)),
                Input::Waiting(build(2, "b", 1)),
            ],
        );
        assert_eq!(starts(&a), vec![2], "app b is not held");
        // The older file becomes build 3: it goes before build 1.
        let a = s.handle(
            1,
            [
                Input::Waiting(build(3, "a", 5)),
                Input::Settled(file("000.zip")),
            ],
        );
        assert_eq!(starts(&a), vec![3]);
        let a = s.handle(2, [Input::WorkerEnded(BuildId(3), WorkerEnded::Finished)]);
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn a_newer_file_settling_holds_nothing() {
        let mut s = Scheduler::new(4, false, 1000);
        let a = s.handle(
            0,
            [
                Input::Settling {
                    file: file("002.zip"),
                    app: "a".into(),
                    arrival: arrival(50),
                },
                Input::Waiting(build(1, "a", 10)),
            ],
        );
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn a_build_holding_its_app_goes_before_older_arrivals() {
        let mut s = Scheduler::new(4, false, 1000);
        let mut resumed = build(7, "a", 50);
        resumed.holds_app = true;
        let a = s.handle(
            0,
            [
                Input::Waiting(build(8, "a", 10)),
                Input::Waiting(resumed),
                Input::Settling {
                    file: file("old.zip"),
                    app: "a".into(),
                    arrival: arrival(1),
                },
            ],
        );
        assert_eq!(starts(&a), vec![7], "the draft's owner finishes first");
    }

    #[test]
    fn a_retry_time_keeps_the_apps_turn() {
        let mut s = Scheduler::new(4, false, 1000);
        let a = s.handle(
            0,
            [
                Input::Waiting(build(1, "a", 10)),
                Input::Waiting(build(2, "a", 20)),
            ],
        );
        assert_eq!(starts(&a), vec![1]);
        let mut again = build(1, "a", 10);
        again.not_before = Some(500);
        let a = s.handle(
            100,
            [Input::WorkerEnded(BuildId(1), WorkerEnded::Again(again))],
        );
        assert!(starts(&a).is_empty(), "build 2 must not overtake build 1");
        assert_eq!(s.next_wake(), Some(500));
        let a = s.handle(500, []);
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn a_refused_key_pauses_every_start_then_reads_the_key_again() {
        let mut s = Scheduler::new(4, false, 1000);
        s.handle(0, [Input::Waiting(build(1, "a", 1))]);
        let a = s.handle(
            10,
            [
                Input::WorkerEnded(BuildId(1), WorkerEnded::KeyRefused(build(1, "a", 1))),
                Input::Waiting(build(2, "b", 2)),
            ],
        );
        assert!(starts(&a).is_empty());
        assert!(s.key_paused());
        assert_eq!(s.next_wake(), Some(1010));
        let a = s.handle(1010, []);
        assert_eq!(a[0], Action::ReadKeyAgain);
        assert_eq!(starts(&a), vec![1, 2]);
    }

    #[test]
    fn once_exits_when_drained_and_idle_or_when_the_key_is_refused() {
        let mut s = Scheduler::new(2, true, 1000);
        let a = s.handle(0, [Input::Waiting(build(1, "a", 1))]);
        assert_eq!(starts(&a), vec![1]);
        let a = s.handle(1, [Input::Drained]);
        assert!(
            !a.contains(&Action::Exit(Exit::Drained)),
            "a build still runs"
        );
        let a = s.handle(2, [Input::WorkerEnded(BuildId(1), WorkerEnded::Finished)]);
        assert_eq!(a, vec![Action::Exit(Exit::Drained)]);

        let mut s = Scheduler::new(2, true, 1000);
        s.handle(0, [Input::Waiting(build(1, "a", 1))]);
        let a = s.handle(
            1,
            [Input::WorkerEnded(
                BuildId(1),
                WorkerEnded::KeyRefused(build(1, "a", 1)),
            )],
        );
        assert_eq!(a, vec![Action::Exit(Exit::KeyRefused)]);
    }

    #[test]
    fn cancel_stops_a_running_worker_first_and_a_waiting_build_at_once() {
        let mut s = Scheduler::new(1, false, 1000);
        s.handle(
            0,
            [
                Input::Waiting(build(1, "a", 1)),
                Input::Waiting(build(2, "b", 2)),
            ],
        );
        let a = s.handle(
            1,
            [Input::Cancel {
                id: BuildId(2),
                reply: 9,
            }],
        );
        assert_eq!(
            a,
            vec![Action::Cancel {
                id: BuildId(2),
                replies: vec![9]
            }]
        );
        let a = s.handle(
            2,
            [
                Input::Cancel {
                    id: BuildId(1),
                    reply: 10,
                },
                Input::Cancel {
                    id: BuildId(1),
                    reply: 11,
                },
            ],
        );
        assert_eq!(
            a,
            vec![Action::Stop(BuildId(1))],
            "one stop for two requests"
        );
        let a = s.handle(
            3,
            [Input::WorkerEnded(
                BuildId(1),
                WorkerEnded::Again(build(1, "a", 1)),
            )],
        );
        assert_eq!(
            a,
            vec![Action::Cancel {
                id: BuildId(1),
                replies: vec![10, 11]
            }]
        );
        assert!(
            starts(&a).is_empty(),
            "the cancelled build does not start again"
        );
    }

    #[test]
    fn a_retry_handled_before_its_workers_end_still_runs() {
        let mut s = Scheduler::new(1, false, 1000);
        s.handle(0, [Input::Waiting(build(1, "a", 1))]);
        // The worker recorded the failure; the retry of it comes in before
        // the worker's end does.
        let a = s.handle(1, [Input::Waiting(build(1, "a", 1))]);
        assert!(starts(&a).is_empty(), "it is still running");
        let a = s.handle(2, [Input::WorkerEnded(BuildId(1), WorkerEnded::Finished)]);
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn shutdown_stops_every_worker_and_exits_once_they_ended() {
        let mut s = Scheduler::new(2, false, 1000);
        s.handle(
            0,
            [
                Input::Waiting(build(1, "a", 1)),
                Input::Waiting(build(2, "b", 2)),
                Input::Waiting(build(3, "c", 3)),
            ],
        );
        let a = s.handle(1, [Input::Shutdown]);
        assert_eq!(a, vec![Action::Stop(BuildId(1)), Action::Stop(BuildId(2))]);
        let a = s.handle(
            2,
            [Input::WorkerEnded(
                BuildId(1),
                WorkerEnded::Again(build(1, "a", 1)),
            )],
        );
        assert!(a.is_empty(), "nothing new starts while stopping");
        let a = s.handle(3, [Input::WorkerEnded(BuildId(2), WorkerEnded::Finished)]);
        assert_eq!(a, vec![Action::Exit(Exit::Shutdown)]);
        assert_eq!(s.next_wake(), None);
    }
}
