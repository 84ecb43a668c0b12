//! `Uploaded -> Processing -> Processed`: attach the upload to the version
//! (`content_file`), wait for PatchKit's job, then read the version's
//! processing messages. Any error, a critical processing error or a failed
//! job fails the build with what PatchKit said; the version is then never
//! published. Warnings are kept and reported.
//!
//! `content_file` is not repeated blindly: the version's
//! `processing_started_at` is recorded before the request, and a different
//! value afterwards means PatchKit accepted it, even if the answer was lost.

use crate::patchkit::{AppVersion, ErrorKind, JobGuid};
use crate::state::{BuildState, Stage};
use crate::store::Build;

use super::{PollBackoff, StageCtx, StepError, advance};

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let mut build = build.clone();
    loop {
        build = match &build.state {
            BuildState::Uploaded { version_id, .. } => {
                let version = ctx
                    .client
                    .get_version(&build.app_secret, *version_id)
                    .await?;
                let prior = version.processing_started_at.clone();
                advance(ctx, &build, build.state.processing_requested(prior)).await?
            }
            BuildState::Processing {
                version_id,
                upload_id,
                job_guid: None,
                prior_started_at,
            } => {
                let version = ctx
                    .client
                    .get_version(&build.app_secret, *version_id)
                    .await?;
                if version.processing_started_at.is_some()
                    && version.processing_started_at != *prior_started_at
                {
                    // Accepted before a crash; the job's id was lost with the
                    // answer, so follow the version instead.
                    tracing::info!(build = %build.id, "processing already started; following the version");
                    let done = wait_for_version(ctx, &build, *version_id).await?;
                    return check(ctx, &build, &done).await;
                }
                request(ctx, &build, *version_id, *upload_id).await?
            }
            BuildState::Processing {
                version_id,
                job_guid: Some(guid),
                ..
            } => {
                wait_for_job(ctx, &build, &JobGuid(guid.clone())).await?;
                let done = wait_for_version(ctx, &build, *version_id).await?;
                return check(ctx, &build, &done).await;
            }
            _ => return Ok(build),
        };
    }
}

/// Sends `content_file` and records the job.
async fn request(
    ctx: &StageCtx,
    build: &Build,
    version_id: u64,
    upload_id: u64,
) -> Result<Build, StepError> {
    let upload = crate::patchkit::UploadId(upload_id);
    match ctx
        .client
        .start_processing(&build.app_secret, version_id, upload)
        .await
    {
        Ok(guid) => {
            crate::crashpoint::hit("after-content-file");
            tracing::debug!(build = %build.id, job = %guid.0, "processing job started");
            advance(ctx, build, build.state.job_started(guid.0)).await
        }
        Err(e)
            if e.kind() == ErrorKind::BadRequest
                && (e.message().contains("incomplete") || e.message().contains("not found")) =>
        {
            tracing::warn!(
                build = %build.id, error = %e,
                "PatchKit does not have the whole upload; uploading again"
            );
            advance(ctx, build, build.state.upload_lost()).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Polls the job until it is finished; a failed job fails the build.
async fn wait_for_job(ctx: &StageCtx, build: &Build, guid: &JobGuid) -> Result<(), StepError> {
    let mut backoff = PollBackoff::new(ctx.poll_interval);
    loop {
        let job = match ctx.client.get_job(guid).await {
            Ok(job) => job,
            // A job PatchKit no longer knows: the version tells the rest.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
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
            return Ok(());
        }
        ctx.observer.stage_progress(build.id, job.progress);
        tracing::debug!(
            build = %build.id, progress = job.progress,
            status = job.status_message.as_deref().unwrap_or(""), "processing"
        );
        backoff.wait(ctx).await?;
    }
}

/// Polls the version until PatchKit records the end of processing.
async fn wait_for_version(
    ctx: &StageCtx,
    build: &Build,
    version_id: u64,
) -> Result<AppVersion, StepError> {
    let mut backoff = PollBackoff::new(ctx.poll_interval);
    loop {
        let version = ctx
            .client
            .get_version(&build.app_secret, version_id)
            .await?;
        if version.is_processing_done() {
            return Ok(version);
        }
        ctx.observer
            .stage_progress(build.id, version.processing_progress);
        backoff.wait(ctx).await?;
    }
}

/// Reads the processing result: errors fail the build, warnings are kept.
async fn check(ctx: &StageCtx, build: &Build, version: &AppVersion) -> Result<Build, StepError> {
    if version.has_processing_error {
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
    let errors: Vec<&str> = version.errors().map(|m| m.message.as_str()).collect();
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
