//! The control socket: how `status`, `retry` and `cancel` reach a running
//! daemon.
//!
//! A Unix socket `control.sock` in the state directory, mode 0600 (only the
//! daemon's user may ask). One JSON request per line, one JSON answer per
//! line: `{"cmd":"status","all":false}`, `{"cmd":"retry","build":"42"}`,
//! `{"cmd":"cancel","build":"42"}`. Status is answered from the store and
//! the observer; retry and cancel go through the daemon's event loop, which
//! owns the running builds.
//!
//! When no daemon runs, the CLI reads the store itself; [`status_rows`] is
//! shared by both paths so the output is the same.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::observe::{Observer, RequestRetryStatus};
use crate::scheduler::Lane;
use crate::state::{BuildState, FileIdentity};
use crate::store::{Build, BuildId, ChannelStep, Coordination, ListFilter, Store, StoreError};

/// The socket's file name in the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Finished builds younger than this are shown by `status` without
/// `--all`: what happened today is what an operator asks about.
const RECENT: Duration = Duration::from_secs(24 * 60 * 60);

/// A request to the running daemon.
#[derive(Debug)]
pub enum ControlCommand {
    /// Start a failed build again, from a fresh upload; `true`: even over a
    /// newer build that is live.
    Retry(BuildId, bool, oneshot::Sender<Result<Build, ControlError>>),
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
    #[error(
        "build {id} ({label}) arrived before build {newer} ({newer_label}), which is live as \
         version {version} of app {app}: retrying it would make the older build the live one. \
         `retry --force {id}` publishes it anyway"
    )]
    NewerIsLive {
        id: BuildId,
        label: String,
        newer: BuildId,
        newer_label: String,
        version: u64,
        app: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Retries a failed build in the store (the daemon's loop, or the CLI
/// when no daemon runs). A build with a known version reuses it with a fresh
/// upload. Unless `force`, a build is not retried when a build of its app
/// that arrived after it is live: that would roll production back.
pub async fn retry_build(store: &Store, id: BuildId, force: bool) -> Result<Build, ControlError> {
    let build = store.get(id)?.ok_or(ControlError::Unknown(id))?;
    let next = build.state.retry().map_err(|_| ControlError::NotFailed {
        id,
        state: build.state.name(),
    })?;
    if !force && let Some(newer) = newer_live(store, &build)? {
        return Err(ControlError::NewerIsLive {
            id,
            label: build.label,
            newer: newer.id,
            version: newer.state.version_id().unwrap_or_default(),
            newer_label: newer.label,
            app: build.app_secret,
        });
    }
    // The publish stage checks again when the build's turn comes: a newer
    // build may go live while this one waits. `--force` is remembered for
    // that check.
    let mut record = store.coordination(id)?;
    if record.force != force || !record.retried {
        record.force = force;
        record.retried = true;
        store.set_coordination(id, &record).await?;
    }
    let build = store.transition(id, &build.state, next).await?;
    Ok(store.clear_attempts(id, &build.state).await?)
}

/// The newest live (published or scheduled) build of `build`'s app that
/// arrived after it, if any. Arrival: the file's modification time, then
/// the build id.
pub fn newer_live(store: &Store, build: &Build) -> Result<Option<Build>, StoreError> {
    let arrival = |b: &Build| (b.identity.mtime_ns, b.id);
    Ok(store
        .by_app(&build.app_secret)?
        .into_iter()
        .filter(|b| {
            matches!(
                b.state,
                BuildState::Published { .. }
                    | BuildState::Scheduled { .. }
                    | BuildState::Linking { .. }
            )
        })
        .filter(|b| arrival(b) > arrival(build))
        .max_by_key(arrival))
}

/// Cancels a build in the store; no worker may be running it.
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

/// A request on the socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status {
        #[serde(default)]
        all: bool,
    },
    Retry {
        build: String,
        /// Even over a newer build that is live.
        #[serde(default)]
        force: bool,
    },
    Cancel {
        build: String,
    },
}

/// An answer on the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The builds asked about (status) or changed (retry, cancel).
    #[serde(default)]
    pub builds: Vec<BuildRow>,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
}

/// One build as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildRow {
    pub id: String,
    pub rule: String,
    pub app: String,
    pub label: String,
    pub file: PathBuf,
    pub size_bytes: u64,
    /// The state's name (`uploading`, `published`, ...).
    pub state: String,
    /// The pipeline stage it is in or ended in.
    pub stage: String,
    /// The state in one line, e.g. `uploading v12 45% (...)`.
    pub detail: String,
    pub version_id: Option<u64>,
    /// Percent within the current stage, when known.
    pub progress_percent: Option<f64>,
    pub bytes_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub attempts: u32,
    /// When the next try is due (Unix ms), while waiting to retry.
    pub next_attempt_at: Option<u64>,
    pub last_error: Option<String>,
    /// A request to PatchKit failing and being sent again right now (a
    /// running build during an outage), until it is answered.
    #[serde(default)]
    pub request_retry: Option<RequestRetryStatus>,
    /// Processing warnings.
    pub warnings: Vec<String>,
    /// Why it failed.
    pub reason: Option<String>,
    pub enqueued_at: u64,
    pub updated_at: u64,
    /// The file's modification time when it was taken, nanoseconds since
    /// the Unix epoch: with `file` and `size_bytes`, what makes a file the
    /// same one again.
    #[serde(default)]
    pub file_mtime_ns: i64,
    /// What the build waits for (another publisher holding PatchKit's lock
    /// on the app, or processing on it), while it waits.
    #[serde(default)]
    pub waiting: Option<String>,
    /// How long it has waited so far, seconds.
    #[serde(default)]
    pub waiting_seconds: Option<u64>,
    /// Each channel the rule feeds, and where it is.
    #[serde(default)]
    pub channels: Vec<ChannelRow>,
    /// The worker running the build now: `ahead` (validating or uploading
    /// before its turn on the app) or `turn` (from the draft on); `None`
    /// while it waits.
    #[serde(default)]
    pub worker: Option<String>,
}

/// One channel of a build, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRow {
    /// The channel as the rule names it.
    pub channel: String,
    /// Its step (`pending`, `linking`, `published`, `failed`, ...).
    pub step: String,
    /// The channel's version, once it has one.
    pub version_id: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
}

impl BuildRow {
    /// The identity the build was taken with, as far as a row tells (the
    /// inode is not shown): enough for [`FileIdentity::dedupe_key`].
    pub fn identity(&self) -> FileIdentity {
        FileIdentity {
            path: self.file.clone(),
            size: self.size_bytes,
            mtime_ns: i128::from(self.file_mtime_ns),
            inode: 0,
        }
    }
}

impl BuildRow {
    /// The row for a build, with live progress when the observer has it
    /// (a finished build has none, whatever its last stage reported).
    pub fn new(build: &Build, observer: Option<&Observer>) -> BuildRow {
        let live = observer
            .filter(|_| !build.state.is_terminal())
            .and_then(|o| o.live(build.id));
        let (mut progress, warnings, reason) = match &build.state {
            BuildState::Uploading {
                acknowledged,
                total,
                ..
            } => (
                Some(*acknowledged as f64 * 100.0 / (*total).max(1) as f64),
                Vec::new(),
                None,
            ),
            BuildState::Processed { warnings, .. }
            | BuildState::Publishing { warnings, .. }
            | BuildState::Published { warnings, .. }
            | BuildState::Scheduled { warnings, .. }
            | BuildState::Draft { warnings, .. } => (None, warnings.clone(), None),
            BuildState::Failed { reason, .. } => (None, Vec::new(), Some(reason.clone())),
            _ => (None, Vec::new(), None),
        };
        if let Some(p) = live.as_ref().and_then(|l| l.progress) {
            progress = Some(p * 100.0);
        }
        BuildRow {
            id: build.id.to_string(),
            rule: build.rule.clone(),
            app: build.app_secret.clone(),
            label: build.label.clone(),
            file: build.file.clone(),
            size_bytes: build.identity.size,
            state: build.state.name().to_owned(),
            stage: build.state.stage().to_string(),
            detail: build.state.to_string(),
            version_id: build.state.version_id(),
            progress_percent: progress,
            bytes_per_second: live.as_ref().and_then(|l| l.bytes_per_second),
            eta_seconds: live.as_ref().and_then(|l| l.eta_seconds),
            attempts: build.attempts,
            next_attempt_at: build.next_attempt_at,
            last_error: build.last_error.clone(),
            request_retry: live.as_ref().and_then(|l| l.request_retry.clone()),
            warnings,
            reason,
            enqueued_at: build.enqueued_at,
            updated_at: build.updated_at,
            file_mtime_ns: i64::try_from(build.identity.mtime_ns).unwrap_or(i64::MAX),
            waiting: None,
            waiting_seconds: None,
            channels: Vec::new(),
            worker: observer
                .and_then(|o| o.lane(build.id))
                .map(|lane| lane.as_str().to_owned()),
        }
    }

    /// Adds what the build's coordination record tells: its wait and its
    /// channels.
    pub fn with_coordination(mut self, record: &Coordination) -> BuildRow {
        if let Some(wait) = &record.waiting {
            self.waiting = Some(wait.reason.to_string());
            self.waiting_seconds = Some(now_ms().saturating_sub(wait.since_ms) / 1000);
        }
        self.channels = record
            .channels
            .iter()
            .map(|c| ChannelRow {
                channel: c.channel.clone(),
                step: c.step.name().to_owned(),
                version_id: c.step.version_id(),
                reason: match &c.step {
                    ChannelStep::Failed { reason, .. } => Some(reason.clone()),
                    _ => None,
                },
            })
            .collect();
        self
    }
}

/// The rows `status` shows: every unfinished build, and finished ones from
/// the last day (all of them with `all`).
pub fn status_rows(
    store: &Store,
    observer: Option<&Observer>,
    all: bool,
) -> Result<Vec<BuildRow>, StoreError> {
    let cutoff = now_ms().saturating_sub(RECENT.as_millis() as u64);
    let builds = store.list(&ListFilter::default())?;
    // The build of each app uploading ahead of its turn right now.
    let uploading: HashMap<&str, BuildId> = builds
        .iter()
        .filter(|b| observer.and_then(|o| o.lane(b.id)) == Some(Lane::Ahead))
        .map(|b| (b.app_secret.as_str(), b.id))
        .collect();
    Ok(builds
        .iter()
        .filter(|b| all || !b.state.is_terminal() || b.updated_at >= cutoff)
        .map(|b| {
            let mut row = BuildRow::new(b, observer);
            if let Ok(record) = store.coordination(b.id) {
                row = row.with_coordination(&record);
            }
            if row.waiting.is_none() && row.worker.is_none() {
                row.waiting = awaiting_turn(b, &builds)
                    .or_else(|| awaiting_upload(b, uploading.get(b.app_secret.as_str())));
            }
            row
        })
        .collect())
}

/// For a build that has yet to upload, while another build of its app
/// uploads: an app uploads one build at a time.
fn awaiting_upload(build: &Build, uploading: Option<&BuildId>) -> Option<String> {
    let other = uploading.filter(|id| **id != build.id)?;
    let upload_to_come = match &build.state {
        BuildState::Queued | BuildState::Validated => true,
        BuildState::Uploading { version_id, .. } => version_id.is_none(),
        _ => false,
    };
    upload_to_come.then(|| {
        format!(
            "its upload comes after build {other}'s (app {} uploads one build at a time)",
            build.app_secret
        )
    })
}

/// For a build whose upload is done and whose draft waits for its turn:
/// which build of its app goes first (the one holding the app, else the
/// oldest unfinished one).
fn awaiting_turn(build: &Build, builds: &[Build]) -> Option<String> {
    if !matches!(
        build.state,
        BuildState::Uploaded {
            version_id: None,
            ..
        }
    ) {
        return None;
    }
    let others: Vec<&Build> = builds
        .iter()
        .filter(|b| b.app_secret == build.app_secret && b.id != build.id)
        .filter(|b| !b.state.is_terminal())
        .collect();
    let first = others
        .iter()
        .find(|b| b.state.holds_app())
        .or_else(|| others.iter().find(|b| b.id < build.id))?;
    Some(format!(
        "upload done; its turn on app {} comes after build {}",
        build.app_secret, first.id
    ))
}

/// The socket path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Serves the control socket until `cancel` fires.
pub async fn serve(
    state_dir: &Path,
    store: Store,
    observer: Observer,
    commands: mpsc::Sender<ControlCommand>,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(state_dir);
    // The store lock is held, so no other daemon uses this socket: a file
    // left by a crash is stale.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot create the control socket {}: {e}", path.display()),
        )
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("control socket: {e}");
                        continue;
                    }
                },
            };
            let (store, observer, commands) = (store.clone(), observer.clone(), commands.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &store, &observer, &commands).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn answer(
    stream: UnixStream,
    store: &Store,
    observer: &Observer,
    commands: &mpsc::Sender<ControlCommand>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(request, store, observer, commands).await,
            Err(e) => failure(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

async fn handle(
    request: Request,
    store: &Store,
    observer: &Observer,
    commands: &mpsc::Sender<ControlCommand>,
) -> Response {
    match request {
        Request::Status { all } => match status_rows(store, Some(observer), all) {
            Ok(builds) => Response {
                ok: true,
                builds,
                error: None,
            },
            Err(e) => failure(e.to_string()),
        },
        Request::Retry { build, .. } | Request::Cancel { build }
            if build.parse::<BuildId>().is_err() =>
        {
            failure(format!("{build:?} is not a build id; `status` shows them"))
        }
        Request::Retry { build, force } => {
            let id = build.parse().expect("checked above");
            command(
                commands,
                |reply| ControlCommand::Retry(id, force, reply),
                observer,
            )
            .await
        }
        Request::Cancel { build } => {
            let id = build.parse().expect("checked above");
            command(
                commands,
                |reply| ControlCommand::Cancel(id, reply),
                observer,
            )
            .await
        }
    }
}

async fn command(
    commands: &mpsc::Sender<ControlCommand>,
    make: impl FnOnce(oneshot::Sender<Result<Build, ControlError>>) -> ControlCommand,
    observer: &Observer,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if commands.send(make(tx)).await.is_err() {
        return failure("the daemon is shutting down".into());
    }
    match rx.await {
        Ok(Ok(build)) => Response {
            ok: true,
            builds: vec![BuildRow::new(&build, Some(observer))],
            error: None,
        },
        Ok(Err(e)) => failure(e.to_string()),
        Err(_) => failure("the daemon is shutting down".into()),
    }
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        builds: Vec::new(),
        error: Some(error),
    }
}

/// How long the CLI waits for the daemon's answer. A healthy daemon answers
/// from memory and its store in milliseconds; one that has not answered in
/// this long is stopped (SIGSTOP), wedged or swapping, and waiting longer
/// would only hang a monitoring script.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks a running daemon; `Ok(None)` when none listens on the socket or the
/// daemon closed the connection without answering (it is stopping). Fails
/// with `TimedOut` when the daemon does not answer within [`ASK_TIMEOUT`].
pub async fn ask(state_dir: &Path, request: &Request) -> std::io::Result<Option<Response>> {
    ask_within(state_dir, request, ASK_TIMEOUT).await
}

/// [`ask`] with another time limit.
pub async fn ask_within(
    state_dir: &Path,
    request: &Request,
    limit: Duration,
) -> std::io::Result<Option<Response>> {
    let path = socket_path(state_dir);
    match tokio::time::timeout(limit, exchange(&path, request)).await {
        // A daemon that closes the connection without answering is stopping:
        // it is not there to answer, and its lock goes with it.
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(None)
        }
        Ok(answer) => answer,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the daemon did not answer on {} within {}; it may be stopped or stuck: \
                 look at its log, or restart it (`systemctl restart patchkit-autopublish`)",
                path.display(),
                humantime::format_duration(limit)
            ),
        )),
    }
}

async fn exchange(path: &Path, request: &Request) -> std::io::Result<Option<Response>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot reach the daemon at {}: {e}", path.display()),
            ));
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines.next_line().await?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the socket",
        )
    })?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(std::io::Error::other)
}
