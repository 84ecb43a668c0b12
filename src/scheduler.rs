//! The scheduler core: which builds run now. Pure: events in, actions out.
//!
//! [`Scheduler::handle`] takes the time and a batch of [`Input`]s and
//! returns the [`Action`]s the daemon's shell must carry out (start a
//! worker, stop one, cancel a build in the store, read the key again, exit).
//! [`Scheduler::next_wake`] says when to call it again without an input.
//! No I/O, no clock, no tasks: every rule below is unit-tested here.
//!
//! The rules:
//! - **Two lanes per app.** A build's work before its turn (validation and
//!   an upload without a version, [`Lane::Ahead`]) and its turn (the draft,
//!   processing, publishing, channels, [`Lane::Turn`]) are run separately,
//!   each lane one build per app at a time, so the app's next build uploads
//!   while the one before it processes and publishes.
//! - **Arrival order per app, in both lanes.** A build's place is its
//!   file's [`Arrival`] (modification time, then first sight), not the
//!   moment it settled. A build that already holds its app on PatchKit (it
//!   has a version) goes first; otherwise the oldest build of the app does.
//!   Only the app's first build takes its turn, once its upload is done,
//!   and it waits while an older file of the same app is still settling in
//!   the watcher. Uploads go in the same order: the first build of the app
//!   that still has work before its turn.
//! - **A build waiting for a retry time keeps its place** in its lane: the
//!   builds behind it wait too, so a retry never lets a newer build
//!   overtake.
//! - **At most `workers` builds take their turn at once, and at most
//!   `workers` upload ahead of theirs**, across apps, oldest app first.
//! - **A refused key pauses every start** until the pause ends; then the
//!   key is read again. With `once`, a refused key ends the run once no
//!   worker is left.
//! - **Cancel** stops a running build's worker first and cancels it in the
//!   store once the worker has ended; a waiting build is cancelled at once.
//!
//! Knows build ids, app secrets and arrivals; nothing about the store,
//! PatchKit, files or tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// It already has a version on PatchKit, so it holds the app until it
    /// ends.
    pub holds_app: bool,
    /// Its next step is one it takes before its turn (validation, the
    /// upload): it runs in [`Lane::Ahead`].
    pub before_turn: bool,
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

/// Which part of a build a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Validation and the upload, before the build's turn on its app.
    Ahead,
    /// From the draft until the build is live (or fails).
    Turn,
}

impl Lane {
    /// The lane's name in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Ahead => "ahead",
            Lane::Turn => "turn",
        }
    }
}

/// How a worker ended, as far as scheduling cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEnded {
    /// The build is finished (published, draft, failed, cancelled).
    Finished,
    /// The build waits and runs again (a retry time, a stop at shutdown,
    /// the end of its lane's part).
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
    /// A reload brought another API key: the builds paused for the old
    /// one's refusal may start now.
    KeyChanged,
    /// Stop: no new work, stop every worker.
    Shutdown,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker for the build's turn ([`Lane::Turn`]).
    Start(BuildId),
    /// Start a worker for the build's work before its turn
    /// ([`Lane::Ahead`]): it ends when the upload is done.
    StartAhead(BuildId),
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
    /// The build as it was when it started.
    info: Waiting,
    lane: Lane,
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
    /// Builds whose last worker ended on the key's refusal.
    key_refused: HashSet<BuildId>,
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
            key_refused: HashSet::new(),
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

    /// The lane the build runs in, when it runs.
    pub fn lane(&self, id: BuildId) -> Option<Lane> {
        self.running.get(&id).map(|r| r.lane)
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
        self.candidates()
            .into_iter()
            .filter_map(|(w, _)| w.not_before)
            .min()
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
                self.key_refused.remove(&id);
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
                        self.key_refused.insert(id);
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
            Input::KeyChanged => {
                self.key_paused_until = None;
                for id in std::mem::take(&mut self.key_refused) {
                    if let Some(w) = self.waiting.get_mut(&id) {
                        w.not_before = None;
                    }
                }
            }
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

    /// The builds that may start once their retry time has come and a
    /// worker is free, with their lane: per app, the first build in queue
    /// order takes its turn when its upload is done, and the first build
    /// with work before its turn does that work, each lane while the app
    /// has no worker in it.
    fn candidates(&self) -> Vec<(&Waiting, Lane)> {
        // Every build of each app, waiting or running, in queue order.
        let mut apps: BTreeMap<&str, Vec<(&Waiting, Option<Lane>)>> = BTreeMap::new();
        for w in self.waiting.values() {
            apps.entry(&w.app).or_default().push((w, None));
        }
        for r in self.running.values() {
            apps.entry(&r.info.app)
                .or_default()
                .push((&r.info, Some(r.lane)));
        }
        let mut found = Vec::new();
        for queue in apps.values_mut() {
            queue.sort_by_key(|(w, _)| w.order());
            let busy = |lane| queue.iter().any(|(_, l)| *l == Some(lane));
            if let Some(&(head, None)) = queue.first()
                && !head.before_turn
                && !busy(Lane::Turn)
                && !self.older_settling(head)
            {
                found.push((head, Lane::Turn));
            }
            if !busy(Lane::Ahead)
                && let Some(&(next, None)) = queue.iter().find(|(w, _)| w.before_turn)
            {
                found.push((next, Lane::Ahead));
            }
        }
        found
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
        let mut ready: Vec<(&Waiting, Lane)> = self
            .candidates()
            .into_iter()
            .filter(|(w, _)| w.not_before.is_none_or(|at| at <= now))
            .collect();
        // Across apps, the oldest build goes first when workers are short.
        ready.sort_by_key(|(w, _)| w.order());
        let mut free = [Lane::Turn, Lane::Ahead].map(|lane| {
            let running = self.running.values().filter(|r| r.lane == lane).count();
            self.workers.saturating_sub(running)
        });
        let mut start = Vec::new();
        for (w, lane) in ready {
            let free = &mut free[usize::from(lane == Lane::Ahead)];
            if *free > 0 {
                *free -= 1;
                start.push((w.id, lane));
            }
        }
        for (id, lane) in start {
            let Some(info) = self.waiting.remove(&id) else {
                continue;
            };
            self.running.insert(
                id,
                Running {
                    info,
                    lane,
                    cancels: Vec::new(),
                    then: None,
                },
            );
            actions.push(match lane {
                Lane::Turn => Action::Start(id),
                Lane::Ahead => Action::StartAhead(id),
            });
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
            before_turn: false,
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

    /// A build with its validation and upload still to do.
    fn fresh(id: u64, app: &str, t: i128) -> Waiting {
        Waiting {
            before_turn: true,
            ..build(id, app, t)
        }
    }

    fn ahead(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::StartAhead(id) => Some(id.0),
                _ => None,
            })
            .collect()
    }

    /// The worker of a build running ahead ended with its upload done.
    fn upload_done(id: u64, app: &str, t: i128) -> Input {
        Input::WorkerEnded(BuildId(id), WorkerEnded::Again(build(id, app, t)))
    }

    #[test]
    fn the_next_build_uploads_while_the_one_before_takes_its_turn() {
        let mut s = Scheduler::new(2, false, 1000);
        let a = s.handle(
            0,
            [
                Input::Waiting(fresh(2, "a", 20)),
                Input::Waiting(fresh(1, "a", 10)),
                Input::Waiting(fresh(3, "a", 30)),
            ],
        );
        // One upload per app, oldest first; nobody's turn yet.
        assert_eq!((starts(&a), ahead(&a)), (vec![], vec![1]));
        assert_eq!(s.lane(BuildId(1)), Some(Lane::Ahead));
        let a = s.handle(1, [upload_done(1, "a", 10)]);
        assert_eq!((starts(&a), ahead(&a)), (vec![1], vec![2]));
        // Build 2's upload is done first: it waits for build 1, and build 3
        // uploads.
        let a = s.handle(2, [upload_done(2, "a", 20)]);
        assert_eq!((starts(&a), ahead(&a)), (vec![], vec![3]));
        let a = s.handle(3, [Input::WorkerEnded(BuildId(1), WorkerEnded::Finished)]);
        assert_eq!((starts(&a), ahead(&a)), (vec![2], vec![]));
        let a = s.handle(4, [Input::WorkerEnded(BuildId(2), WorkerEnded::Finished)]);
        assert!(a.is_empty(), "build 3 still uploads: {a:?}");
        let a = s.handle(5, [upload_done(3, "a", 30)]);
        assert_eq!((starts(&a), ahead(&a)), (vec![3], vec![]));
    }

    #[test]
    fn the_first_build_still_uploading_holds_the_turn_of_newer_uploaded_ones() {
        let mut s = Scheduler::new(2, false, 1000);
        // Build 2 is uploaded (a restart), build 1 is older and still has
        // its upload to do: build 2 must not take the turn first.
        let a = s.handle(
            0,
            [
                Input::Waiting(build(2, "a", 20)),
                Input::Waiting(fresh(1, "a", 10)),
            ],
        );
        assert_eq!((starts(&a), ahead(&a)), (vec![], vec![1]));
        let a = s.handle(1, [upload_done(1, "a", 10)]);
        assert_eq!((starts(&a), ahead(&a)), (vec![1], vec![]));
    }

    #[test]
    fn each_lane_has_its_own_worker_limit_oldest_app_first() {
        let mut s = Scheduler::new(1, false, 1000);
        let a = s.handle(
            0,
            [
                Input::Waiting(build(1, "a", 10)),
                Input::Waiting(fresh(2, "a", 20)),
                Input::Waiting(fresh(3, "b", 15)),
                Input::Waiting(build(4, "c", 5)),
            ],
        );
        assert_eq!((starts(&a), ahead(&a)), (vec![4], vec![3]));
        let a = s.handle(1, [Input::WorkerEnded(BuildId(3), WorkerEnded::Finished)]);
        assert_eq!((starts(&a), ahead(&a)), (vec![], vec![2]));
        let a = s.handle(2, [Input::WorkerEnded(BuildId(4), WorkerEnded::Finished)]);
        assert_eq!((starts(&a), ahead(&a)), (vec![1], vec![]));
    }

    #[test]
    fn uploads_go_ahead_while_an_older_file_settles_or_the_head_waits_to_retry() {
        let mut s = Scheduler::new(2, false, 1000);
        let a = s.handle(
            0,
            [
                Input::Settling {
                    file: file("000.zip"),
                    app: "a".into(),
                    arrival: arrival(5),
                },
                Input::Waiting(build(1, "a", 10)),
                Input::Waiting(fresh(2, "a", 20)),
            ],
        );
        assert_eq!((starts(&a), ahead(&a)), (vec![], vec![2]));
        let mut later = build(1, "a", 10);
        later.not_before = Some(500);
        let a = s.handle(
            1,
            [
                Input::Settled(file("000.zip")),
                Input::Waiting(later),
                upload_done(2, "a", 20),
            ],
        );
        assert!(a.is_empty(), "build 1 keeps its turn: {a:?}");
        assert_eq!(s.next_wake(), Some(500));
        let a = s.handle(500, []);
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn a_build_cancelled_while_uploading_ahead_is_stopped_then_cancelled() {
        let mut s = Scheduler::new(2, false, 1000);
        s.handle(
            0,
            [
                Input::Waiting(build(1, "a", 10)),
                Input::Waiting(fresh(2, "a", 20)),
            ],
        );
        let a = s.handle(
            1,
            [Input::Cancel {
                id: BuildId(2),
                reply: 7,
            }],
        );
        assert_eq!(a, vec![Action::Stop(BuildId(2))]);
        let a = s.handle(
            2,
            [Input::WorkerEnded(
                BuildId(2),
                WorkerEnded::Again(fresh(2, "a", 20)),
            )],
        );
        assert_eq!(
            a,
            vec![Action::Cancel {
                id: BuildId(2),
                replies: vec![7]
            }]
        );
        assert_eq!(s.running_count(), 1);
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
    fn a_new_key_from_a_reload_ends_the_pause_and_the_refused_builds_wait() {
        let mut s = Scheduler::new(4, false, 60_000);
        let mut refused = build(1, "a", 1);
        refused.not_before = Some(60_010);
        let mut backing_off = build(2, "b", 2);
        backing_off.not_before = Some(9_000);
        s.handle(0, [Input::Waiting(build(1, "a", 1))]);
        let a = s.handle(
            10,
            [
                Input::WorkerEnded(BuildId(1), WorkerEnded::KeyRefused(refused)),
                Input::Waiting(backing_off),
            ],
        );
        assert!(starts(&a).is_empty());
        assert!(s.key_paused());

        let a = s.handle(20, [Input::KeyChanged]);
        assert!(!s.key_paused());
        // The key was just read: no second read.
        assert!(!a.contains(&Action::ReadKeyAgain), "{a:?}");
        // The refused build starts at once; a build waiting out another
        // failure's backoff keeps its time.
        assert_eq!(starts(&a), vec![1]);
        assert_eq!(s.next_wake(), Some(9_000));
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
