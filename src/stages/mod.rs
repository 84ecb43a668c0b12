//! The pipeline stages, one file each: `validate`, `upload` (before the
//! build's turn, without a version), `create_version` (at its turn, under
//! PatchKit's lock), `process` (content_file, the job, the messages),
//! `publish` and `channels`.
//!
//! Each stage takes a build in one of its states, performs its side effects
//! and moves the build on through `Store::transition`, which is written and
//! flushed *before* the side effect that depends on it. Every stage starts
//! by asking PatchKit (or the disk) what already happened, so running it
//! again after a crash at any line is safe. A stage never decides whether to
//! retry: it returns a [`StepError`] and `policy` decides.
//!
//! Stages know the client, the store and the rule; they know nothing about
//! workers, scheduling or the watcher.

pub mod channels;
pub mod coordinate;
mod create_version;
pub mod draft;
mod process;
mod publish;
mod upload;
mod validate;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ExistingDraft, Rule};
use crate::observe::Observer;
pub use create_version::channel_reason;

use crate::patchkit::{ApiError, Client, Endpoint, ErrorKind, MissingKey, UploadError};
use crate::state::{BuildState, FileIdentity, Stage};
use crate::store::{Build, Store, StoreError};

/// What a stage needs from the daemon.
#[derive(Clone)]
pub struct StageCtx {
    /// The build records.
    pub store: Store,
    /// The PatchKit client, with the current key.
    pub client: Client,
    /// Bytes per chunk for new uploads (a resumed upload keeps its own).
    pub chunk_size: u64,
    /// First interval between polls of a job or a publish.
    pub poll_interval: Duration,
    /// How long a changed file must stay unchanged before it is uploaded
    /// again.
    pub settle: Duration,
    /// What to do with a draft this build did not create.
    pub existing_draft: ExistingDraft,
    /// The rule's name, for messages (the rule may have left the config).
    pub rule_name: String,
    /// Cancelled on shutdown or when this build is cancelled: stages stop at
    /// the next safe point.
    pub cancel: CancellationToken,
    /// Where progress and state changes are reported.
    pub observer: Observer,
    /// PatchKit's global lock, shared by every build.
    pub lock: crate::global_lock::GlobalLock,
    /// The rule's channel apps, fed once the group version is live.
    pub channels: Vec<String>,
}

impl StageCtx {
    /// Takes the per-rule settings from `rule`, when the rule still exists.
    pub fn with_rule(mut self, rule: Option<&Rule>) -> Self {
        if let Some(rule) = rule {
            self.existing_draft = rule.existing_draft;
            self.rule_name = rule.name.clone();
            self.channels = rule.channels.clone();
        }
        self
    }
}

/// Why a step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// An API call failed; `policy` decides by its class.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// The ZIP could not be read while uploading (disk or network share).
    #[error("{0}")]
    Io(String),
    /// PatchKit is busy with something that must finish first (a publish of
    /// the app's draft in progress): try again later.
    #[error("{0}")]
    Busy(String),
    /// The build cannot go on: it fails with this reason.
    #[error("{reason}")]
    Fail {
        /// Where it failed.
        stage: Stage,
        /// What happened and what to do, for the operator.
        reason: String,
    },
    /// The store could not record the step; the build stays as it was.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Shutdown or cancel: stopped at a safe point.
    #[error("stopped")]
    Cancelled,
    /// The build waits for another publisher (a channel's lock): the
    /// build as stored, with its next try time. Not a failed try.
    #[error("waiting for another publisher")]
    Waiting(Box<Build>),
}

impl StepError {
    fn fail(stage: Stage, reason: impl Into<String>) -> Self {
        StepError::Fail {
            stage,
            reason: reason.into(),
        }
    }
}

impl From<UploadError> for StepError {
    fn from(err: UploadError) -> Self {
        match err {
            UploadError::Api(e) => StepError::Api(e),
            UploadError::Cancelled { .. } => StepError::Cancelled,
            UploadError::Ack(e) => match e.downcast::<StoreError>() {
                Ok(store) => StepError::Store(*store),
                Err(other) => StepError::Io(other.to_string()),
            },
            other @ (UploadError::Io { .. }
            | UploadError::FileChanged { .. }
            | UploadError::Invalid { .. }) => StepError::Io(other.to_string()),
        }
    }
}

/// Runs the stage for the build's current state up to its next durable
/// state (or several, for the upload's chunks) and returns the build as
/// stored afterwards.
pub async fn step(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    if ctx.cancel.is_cancelled() {
        return Err(StepError::Cancelled);
    }
    match run_stage(ctx, build).await {
        // A 403 means different things (a wrong key on some servers, a key
        // of another account, a refused action): PatchKit is asked which.
        Err(StepError::Api(e)) if e.kind() == ErrorKind::Forbidden => {
            Err(explain_forbidden(ctx, build, build.state.stage(), e).await)
        }
        other => other,
    }
}

/// Runs the stage of the build's current state.
async fn run_stage(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    match &build.state {
        BuildState::Queued => validate::run(ctx, build).await,
        BuildState::CreatingVersion { .. }
        | BuildState::Uploaded {
            version_id: None, ..
        } => create_version::run(ctx, build).await,
        BuildState::Validated | BuildState::VersionReady { .. } | BuildState::Uploading { .. } => {
            upload::run(ctx, build).await
        }
        BuildState::Uploaded { .. } | BuildState::Processing { .. } => {
            process::run(ctx, build).await
        }
        BuildState::Processed { .. } | BuildState::Publishing { .. } => {
            publish::run(ctx, build).await
        }
        BuildState::Linking { .. } => channels::run(ctx, build).await,
        BuildState::Published { .. }
        | BuildState::Scheduled { .. }
        | BuildState::Draft { .. }
        | BuildState::Failed { .. }
        | BuildState::Cancelled { .. } => Ok(build.clone()),
    }
}

/// Moves the build from its current state to `next` (from a pure
/// transition), failing the step if the transition is illegal.
async fn advance(
    ctx: &StageCtx,
    build: &Build,
    next: Result<BuildState, crate::state::TransitionError>,
) -> Result<Build, StepError> {
    let next = next.map_err(|e| {
        StepError::fail(
            build.state.stage(),
            format!("internal error: {e}; please report this"),
        )
    })?;
    let build = ctx.store.transition(build.id, &build.state, next).await?;
    ctx.observer.state_changed(&build);
    Ok(build)
}

/// A response that lacks a key the step's decision needs: the step is
/// retried later (the policy treats it as transient), naming the key and the
/// endpoint, rather than deciding on a guessed value or failing the build.
fn missing(endpoint: Endpoint, key: MissingKey) -> StepError {
    StepError::Api(ApiError::new(
        endpoint,
        ErrorKind::Transient { retry_after: None },
        format!("{key}; trying again later"),
    ))
}

/// Turns a 403 on one of the app's endpoints into what it means, found by
/// asking PatchKit rather than by reading the message: a key PatchKit does
/// not accept at all (some servers answer 403 instead of 401 on version
/// endpoints) pauses every build like a 401; a valid key of an account that
/// does not own the app, or an owner's key that is still refused, fails the
/// build saying which.
async fn explain_forbidden(
    ctx: &StageCtx,
    build: &Build,
    stage: Stage,
    err: ApiError,
) -> StepError {
    let secret = &build.app_secret;
    match ctx.client.list_apps().await {
        Err(e) if e.kind() == ErrorKind::Unauthorized || e.is_transient() => StepError::Api(e),
        Ok(apps) if !apps.iter().any(|a| a.secret == *secret) => StepError::fail(
            stage,
            format!(
                "{err}: the API key works, but app {secret} is not one of its account's apps. \
                 Use the API key of the account that owns the app, or correct app_secret in \
                 rule {:?}",
                ctx.rule_name
            ),
        ),
        Ok(_) => StepError::fail(
            stage,
            format!(
                "{err}: the API key works and its account owns app {secret}, so neither the \
                 key nor the secret is wrong; PatchKit refused this step (the account may lack \
                 API access for the app, a plan setting, or the version changed in the panel). \
                 Check the app in the PatchKit panel, then run `patchkit-autopublish retry {}`",
                build.id
            ),
        ),
        Err(other) => StepError::fail(
            stage,
            format!(
                "{err}, and listing the API key's apps to find out why failed too ({other}); \
                 check that the key belongs to the account that owns app {secret}"
            ),
        ),
    }
}

/// Sleeps for `delay` unless cancelled first.
async fn pause(ctx: &StageCtx, delay: Duration) -> Result<(), StepError> {
    tokio::select! {
        _ = ctx.cancel.cancelled() => Err(StepError::Cancelled),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

/// Poll intervals for jobs and publishing: `first` plus a tenth of the time
/// waited so far, at most [`POLL_CAP`]. A build therefore goes live at most
/// `first` plus 10% of PatchKit's own time after PatchKit is done, while an
/// hour-long job costs a few hundred requests rather than thousands.
struct PollBackoff {
    first: Duration,
    started: tokio::time::Instant,
}

/// The longest pause between two polls: a job of hours is still seen
/// finished within seconds.
const POLL_CAP: Duration = Duration::from_secs(10);

impl PollBackoff {
    fn new(first: Duration) -> Self {
        Self {
            first,
            started: tokio::time::Instant::now(),
        }
    }

    /// The pause before the next poll.
    fn next(&self) -> Duration {
        (self.first + self.started.elapsed() / 10).min(POLL_CAP.max(self.first))
    }

    async fn wait(&mut self, ctx: &StageCtx) -> Result<(), StepError> {
        pause(ctx, self.next()).await
    }
}

/// Reads the file's identity now. A file that is gone fails the build.
async fn identity_now(build: &Build, stage: Stage) -> Result<FileIdentity, StepError> {
    let path = build.file.clone();
    let meta = tokio::fs::metadata(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StepError::fail(
                stage,
                format!(
                    "{} is gone: it was moved or deleted before it was uploaded; drop it again \
                     to publish it",
                    path.display()
                ),
            )
        } else {
            StepError::Io(format!("cannot read {}: {e}", path.display()))
        }
    })?;
    Ok(FileIdentity::from_metadata(path, &meta))
}

/// The file changed since `expected` was recorded. The build goes on with
/// the new content, once it has stayed unchanged for `settle` (it may still
/// be being written), unless another build already took the new file: then
/// this one fails, naming it, so the file is published once.
async fn follow_changed_file(
    ctx: &StageCtx,
    build: &Build,
    stage: Stage,
    mut current: FileIdentity,
) -> Result<FileIdentity, StepError> {
    tracing::warn!(
        build = %build.id,
        file = %build.file.display(),
        "the file changed since it was taken; waiting for it to settle before uploading it anew"
    );
    loop {
        if let Some(other) = ctx.store.claim_identity(build.id, &current).await? {
            return Err(StepError::fail(
                stage,
                format!(
                    "{} changed after this build took it; the new file is build {other}, which \
                     publishes it instead",
                    build.file.display()
                ),
            ));
        }
        pause(ctx, ctx.settle).await?;
        let again = identity_now(build, stage).await?;
        if again.same_content(&current) {
            return Ok(current);
        }
        current = again;
    }
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn polls_lag_by_at_most_the_first_interval_plus_a_tenth_of_the_wait() {
        let first = Duration::from_millis(250);
        let backoff = PollBackoff::new(first);
        assert_eq!(backoff.next(), first);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(backoff.next(), Duration::from_millis(750));
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(backoff.next(), Duration::from_millis(6250));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(backoff.next(), POLL_CAP);
    }
}
