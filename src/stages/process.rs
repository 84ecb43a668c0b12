//! `Uploaded -> Processing -> Processed`: attach the upload to the version
//! (`content_file`), wait for PatchKit's job, then read the version's
//! processing messages. Any blocking message, a critical processing error or
//! a failed job fails the build with what PatchKit said; the version is then
//! never published. Warnings are kept and reported.
//!
//! `content_file` is not repeated blindly. The version's processing times
//! are recorded before the request; when the job's id was lost with the
//! answer (a crash, a dropped connection), every signal PatchKit offers
//! tells whether the request went through ([`observe`]): the app's
//! `processing_version`, new processing times on the version, a progress
//! strictly between 0 and 1. A server may leave the times unchanged until a
//! repeated job really starts; `processing_version` covers that window, and
//! "finished" counts only when `processing_finished_at` changed.
//!
//! A refused `content_file` is looked up the same way, never read from its
//! message: a version that is gone sends the build back to create-version;
//! processing under way is followed; otherwise PatchKit does not have the
//! whole upload and the build uploads again.

use crate::patchkit::{AppVersion, Endpoint, ErrorKind, JobGuid};
use crate::state::{BuildState, Stage};
use crate::store::Build;

use super::upload::lose_version;
use super::{PollBackoff, StageCtx, StepError, advance, explain_forbidden, missing};

/// After the job finished (or was forgotten), a version that shows no
/// processing of ours for this many polls never got it: the build uploads
/// again rather than wait forever. A few polls allow for a server that
/// records the result a moment after the job ends.
const QUIET_POLLS_BEFORE_LOST: u32 = 5;

/// The processing times read before `content_file`.
#[derive(Debug, Clone)]
struct Priors {
    started: Option<String>,
    finished: Option<String>,
}

/// What PatchKit shows about the processing this build asked for.
#[derive(Debug)]
enum Seen {
    /// The version is gone or no longer this build's draft.
    Lost,
    /// Nothing shows the request was accepted.
    NotStarted,
    /// Under way, with its progress when the server gives one.
    Running(Option<f64>),
    /// Finished; the version as read.
    Done(Box<AppVersion>),
}

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let mut build = build.clone();
    loop {
        build = match &build.state {
            BuildState::Uploaded {
                version_id: Some(version_id),
                ..
            } => {
                let version = match ctx.client.get_version(&build.app_secret, *version_id).await {
                    Ok(v) => v,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return lose_version(ctx, &build, *version_id).await;
                    }
                    Err(e) => return Err(e.into()),
                };
                let next = build.state.processing_requested(
                    version.processing_started_at.clone(),
                    version.processing_finished_at.clone(),
                );
                advance(ctx, &build, next).await?
            }
            BuildState::Processing {
                version_id,
                upload_id,
                job_guid: None,
                prior_started_at,
                prior_finished_at,
            } => {
                let priors = Priors {
                    started: prior_started_at.clone(),
                    finished: prior_finished_at.clone(),
                };
                match observe(ctx, &build, *version_id, &priors).await? {
                    Seen::Lost => return lose_version(ctx, &build, *version_id).await,
                    Seen::NotStarted => {
                        request(ctx, &build, *version_id, *upload_id, &priors).await?
                    }
                    Seen::Running(_) | Seen::Done(_) => {
                        // Accepted before a crash or a lost answer; the job's
                        // id went with it, so follow the version instead.
                        tracing::info!(build = %build.id, "processing already started; following the version");
                        return follow(ctx, &build, *version_id, &priors, false).await;
                    }
                }
            }
            BuildState::Processing {
                version_id,
                job_guid: Some(guid),
                prior_started_at,
                prior_finished_at,
                ..
            } => {
                let priors = Priors {
                    started: prior_started_at.clone(),
                    finished: prior_finished_at.clone(),
                };
                let known = wait_for_job(ctx, &build, &JobGuid(guid.clone())).await?;
                return follow(ctx, &build, *version_id, &priors, known).await;
            }
            _ => return Ok(build),
        };
    }
}

/// Reads the app and the version and says where the requested processing
/// stands.
async fn observe(
    ctx: &StageCtx,
    build: &Build,
    version_id: u64,
    priors: &Priors,
) -> Result<Seen, StepError> {
    let version = match ctx.client.get_version(&build.app_secret, version_id).await {
        Ok(v) => v,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Seen::Lost),
        Err(e) => return Err(e.into()),
    };
    if !version
        .is_open_draft()
        .map_err(|m| missing(Endpoint::GetVersion, m))?
        || version.label != build.label
    {
        return Ok(Seen::Lost);
    }
    let app = ctx.client.get_app(&build.app_secret).await?;
    Ok(classify(&version, app.processing_version, priors))
}

/// The rules of [`observe`], pure.
fn classify(version: &AppVersion, processing_version: Option<u64>, priors: &Priors) -> Seen {
    let fresh = |now: &Option<String>, before: &Option<String>| now.is_some() && now != before;
    if processing_version == Some(version.id) {
        return Seen::Running(version.processing_progress);
    }
    if fresh(&version.processing_finished_at, &priors.finished) {
        return Seen::Done(Box::new(version.clone()));
    }
    if fresh(&version.processing_started_at, &priors.started) {
        return Seen::Running(version.processing_progress);
    }
    // pkt's own reading of a version: strictly between 0 and 1 is running.
    match version.processing_progress {
        Some(p) if p > 0.0 && p < 1.0 => Seen::Running(Some(p)),
        _ => Seen::NotStarted,
    }
}

/// Sends `content_file` and records the job; a refusal is looked up.
async fn request(
    ctx: &StageCtx,
    build: &Build,
    version_id: u64,
    upload_id: u64,
    priors: &Priors,
) -> Result<Build, StepError> {
    let upload = crate::patchkit::UploadId(upload_id);
    let err = match ctx
        .client
        .start_processing(&build.app_secret, version_id, upload)
        .await
    {
        Ok(guid) => {
            crate::crashpoint::hit("after-content-file");
            tracing::debug!(build = %build.id, job = %guid.0, "processing job started");
            return advance(ctx, build, build.state.job_started(guid.0)).await;
        }
        Err(e) => e,
    };
    if !matches!(
        err.kind(),
        ErrorKind::BadRequest | ErrorKind::NotFound | ErrorKind::Forbidden
    ) {
        return Err(err.into());
    }
    match observe(ctx, build, version_id, priors).await? {
        Seen::Lost => lose_version(ctx, build, version_id).await,
        // Our earlier request is under way after all: follow it.
        Seen::Running(_) | Seen::Done(_) => Ok(build.clone()),
        Seen::NotStarted if err.kind() == ErrorKind::Forbidden => {
            Err(explain_forbidden(ctx, build, Stage::Process, err).await)
        }
        Seen::NotStarted => {
            tracing::warn!(
                build = %build.id, error = %err,
                "PatchKit refused to process the upload and shows no processing of this \
                 version, so it does not have the whole upload; uploading again"
            );
            advance(ctx, build, build.state.upload_lost()).await
        }
    }
}

/// Polls the job until it is finished; a failed job fails the build.
/// Returns false if PatchKit no longer knows the job.
async fn wait_for_job(ctx: &StageCtx, build: &Build, guid: &JobGuid) -> Result<bool, StepError> {
    let mut backoff = PollBackoff::new(ctx.poll_interval);
    loop {
        let job = match ctx.client.get_job(guid).await {
            Ok(job) => job,
            // A job PatchKit no longer knows: the version tells the rest.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if job.finished {
            if job.status != 0 {
                return Err(StepError::fail(
                    Stage::Process,
                    format!(
                        "PatchKit's processing job {} failed (status {}): {}. Re-uploading \
                         often helps: run `patchkit-autopublish retry {}`",
                        guid.0,
                        job.status,
                        job.status_message.as_deref().unwrap_or("no message"),
                        build.id
                    ),
                ));
            }
            return Ok(true);
        }
        ctx.observer.stage_progress(build.id, job.progress);
        tracing::debug!(
            build = %build.id, progress = job.progress,
            status = job.status_message.as_deref().unwrap_or(""), "processing"
        );
        backoff.wait(ctx).await?;
    }
}

/// Polls the version until PatchKit shows the processing finished, then
/// checks the result. `job_finished`: the job said it finished, so a
/// finished version counts even with unchanged times (a server that never
/// updates them).
async fn follow(
    ctx: &StageCtx,
    build: &Build,
    version_id: u64,
    priors: &Priors,
    job_finished: bool,
) -> Result<Build, StepError> {
    let mut backoff = PollBackoff::new(ctx.poll_interval);
    let mut quiet = 0;
    loop {
        match observe(ctx, build, version_id, priors).await? {
            Seen::Lost => return lose_version(ctx, build, version_id).await,
            Seen::Done(version) => return check(ctx, build, &version).await,
            Seen::Running(progress) => {
                quiet = 0;
                if let Some(p) = progress {
                    ctx.observer.stage_progress(build.id, p);
                }
            }
            Seen::NotStarted => {
                if job_finished {
                    let version = ctx
                        .client
                        .get_version(&build.app_secret, version_id)
                        .await?;
                    if version.processing_finished_at.is_some() {
                        return check(ctx, build, &version).await;
                    }
                }
                quiet += 1;
                if quiet >= QUIET_POLLS_BEFORE_LOST {
                    tracing::warn!(
                        build = %build.id, version = version_id,
                        "PatchKit shows no processing of this version although it was \
                         requested; uploading again"
                    );
                    return advance(ctx, build, build.state.upload_lost()).await;
                }
            }
        }
        backoff.wait(ctx).await?;
    }
}

/// Reads the processing result: blocking messages fail the build, warnings
/// are kept.
async fn check(ctx: &StageCtx, build: &Build, version: &AppVersion) -> Result<Build, StepError> {
    let critical = version.has_processing_error.ok_or_else(|| {
        missing(
            Endpoint::GetVersion,
            crate::patchkit::MissingKey("has_processing_error"),
        )
    })?;
    if critical {
        return Err(StepError::fail(
            Stage::Check,
            format!(
                "PatchKit reported a processing error for version {} without a message; the \
                 version is not published. Re-uploading usually helps: run \
                 `patchkit-autopublish retry {}`",
                version.id, build.id
            ),
        ));
    }
    let errors: Vec<String> = version
        .errors()
        .map(|m| match m.severity {
            crate::patchkit::Severity::Error => m.message.clone(),
            ref other => format!(
                "{} (severity {:?}, unknown to this daemon, blocks publishing)",
                m.message,
                other.as_str()
            ),
        })
        .collect();
    if !errors.is_empty() {
        return Err(StepError::fail(
            Stage::Check,
            format!(
                "PatchKit's processing of version {} reported errors, so it is not published: \
                 {}. Fix the build and drop it again",
                version.id,
                errors.join("; ")
            ),
        ));
    }
    let warnings: Vec<String> = version.warnings().map(|m| m.message.clone()).collect();
    for warning in &warnings {
        tracing::warn!(build = %build.id, version = version.id, "processing warning: {warning}");
    }
    advance(ctx, build, build.state.processed(warnings)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn version(started: Option<&str>, finished: Option<&str>, progress: Option<f64>) -> AppVersion {
        serde_json::from_value(json!({
            "id": 5, "draft": true, "published": false, "pending_publish": false,
            "has_processing_error": false,
            "processing_started_at": started, "processing_finished_at": finished,
            "processing_progress": progress,
        }))
        .unwrap()
    }

    fn priors(started: Option<&str>, finished: Option<&str>) -> Priors {
        Priors {
            started: started.map(Into::into),
            finished: finished.map(Into::into),
        }
    }

    #[test]
    fn a_first_processing_shows_in_its_times() {
        let p = priors(None, None);
        assert!(matches!(
            classify(&version(None, None, None), None, &p),
            Seen::NotStarted
        ));
        assert!(matches!(
            classify(&version(Some("t1"), None, None), None, &p),
            Seen::Running(_)
        ));
        assert!(matches!(
            classify(&version(Some("t1"), Some("t2"), None), None, &p),
            Seen::Done(_)
        ));
    }

    #[test]
    fn a_repeated_processing_with_unchanged_times_is_seen_through_the_app() {
        let p = priors(Some("t1"), Some("t2"));
        let old = version(Some("t1"), Some("t2"), None);
        // The server keeps the old times until the job starts: only the
        // app's processing_version shows it.
        assert!(matches!(classify(&old, Some(5), &p), Seen::Running(_)));
        assert!(matches!(classify(&old, None, &p), Seen::NotStarted));
        assert!(matches!(classify(&old, Some(4), &p), Seen::NotStarted));
        // Started anew, the old end time still shown: running, not done.
        assert!(matches!(
            classify(&version(Some("t3"), Some("t2"), None), None, &p),
            Seen::Running(_)
        ));
        assert!(matches!(
            classify(&version(Some("t3"), Some("t4"), None), None, &p),
            Seen::Done(_)
        ));
    }

    #[test]
    fn progress_between_zero_and_one_means_running() {
        let p = priors(None, None);
        assert!(matches!(
            classify(&version(None, None, Some(0.5)), None, &p),
            Seen::Running(Some(_))
        ));
        assert!(matches!(
            classify(&version(None, None, Some(0.0)), None, &p),
            Seen::NotStarted
        ));
    }
}
