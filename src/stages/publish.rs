//! `Processed -> Publishing -> Published | Scheduled`, or `Processed ->
//! Draft` when the rule does not publish.
//!
//! Publishing is not a job: the version is polled. The version is read
//! before `publish` is sent, so after a crash a publish already under way,
//! done or scheduled is recognised and never sent twice. A version PatchKit
//! no longer has (404) sends the build back to create-version; a refused
//! `publish` is looked up on the version, not read from its message.

use crate::patchkit::{Endpoint, ErrorKind, PublishState};
use crate::state::{BuildState, Stage};
use crate::store::Build;

use super::upload::lose_version;
use super::{PollBackoff, StageCtx, StepError, advance, missing};

/// After `publish` was accepted, a version that shows no sign of publishing
/// this many polls in a row was refused. A few polls allow for a server
/// that records the request a moment after answering it.
const QUIET_POLLS_BEFORE_REFUSED: u32 = 5;

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    match &build.state {
        BuildState::Processed { version_id, .. } if !build.publish => {
            tracing::info!(
                build = %build.id, version = version_id,
                "processed; left as a draft because the rule does not publish"
            );
            advance(ctx, build, build.state.kept_as_draft()).await
        }
        BuildState::Processed { .. } => {
            refuse_rollback(ctx, build)?;
            let publishing = advance(ctx, build, build.state.publish_requested()).await?;
            follow(ctx, &publishing).await
        }
        BuildState::Publishing { .. } => follow(ctx, build).await,
        _ => Ok(build.clone()),
    }
}

/// A retried build whose app already has a newer build live (it was
/// retried while a newer one ran) is not published over it unless `retry
/// --force` said so: that would roll the app back. A build taken for the
/// first time goes out in the order the files were taken, as always.
fn refuse_rollback(ctx: &StageCtx, build: &Build) -> Result<(), StepError> {
    let record = ctx.store.coordination(build.id)?;
    if !record.retried || record.force {
        return Ok(());
    }
    let Some(newer) = crate::control::newer_live(&ctx.store, build)? else {
        return Ok(());
    };
    Err(StepError::fail(
        Stage::Publish,
        format!(
            "build {} ({:?}) arrived after this one and is already live as version {} of app \
             {}: publishing this older build would make it the live one. The processed \
             version is left as a draft; run `patchkit-autopublish retry --force {}` to \
             publish it anyway",
            newer.id,
            newer.label,
            newer.state.version_id().unwrap_or_default(),
            build.app_secret,
            build.id
        ),
    ))
}

/// Reads the version, sends `publish` if nothing is under way, and polls
/// until it is published or scheduled.
async fn follow(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let Some(version_id) = build.state.version_id() else {
        return Ok(build.clone());
    };
    let mut backoff = PollBackoff::new(ctx.poll_interval);
    let mut sent = false;
    let mut quiet = 0;
    let mut refused: Option<crate::patchkit::ApiError> = None;
    loop {
        let version = match ctx.client.get_version(&build.app_secret, version_id).await {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return lose_version(ctx, build, version_id).await;
            }
            Err(e) => return Err(e.into()),
        };
        let state = version
            .publish_state()
            .map_err(|m| missing(Endpoint::GetVersion, m))?;
        match state {
            PublishState::Published => {
                let at = u64::try_from(version.publish_date).unwrap_or(0);
                if !ctx.channels.is_empty() {
                    tracing::info!(
                        build = %build.id, version = version_id,
                        "published; feeding the channels {}", ctx.channels.join(", ")
                    );
                    return advance(ctx, build, build.state.linking(at)).await;
                }
                return advance(ctx, build, build.state.published(at)).await;
            }
            PublishState::Scheduled { at } => {
                let at = u64::try_from(at).unwrap_or(0);
                if !ctx.channels.is_empty() {
                    tracing::warn!(
                        build = %build.id, version = version_id,
                        "the version is scheduled, not live, so its channels ({}) are not fed; \
                         feed them with pkt once it is live",
                        ctx.channels.join(", ")
                    );
                }
                tracing::info!(
                    build = %build.id, version = version_id, publish_time = at,
                    "scheduled: PatchKit publishes it at the set time"
                );
                return advance(ctx, build, build.state.scheduled(at)).await;
            }
            PublishState::Publishing { progress } => {
                quiet = 0;
                ctx.observer.stage_progress(build.id, progress);
                tracing::debug!(build = %build.id, progress, "publishing");
            }
            PublishState::NotPublished if !sent => {
                match ctx.client.publish(&build.app_secret, version_id).await {
                    Ok(()) => {}
                    // Refused: the next read of the version says whether it
                    // is gone, under way after all, or really refused.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::BadRequest | ErrorKind::NotFound | ErrorKind::Forbidden
                        ) =>
                    {
                        tracing::warn!(build = %build.id, error = %e, "publish refused; reading the version");
                        refused = Some(e);
                    }
                    Err(e) => return Err(e.into()),
                }
                crate::crashpoint::hit("after-publish");
                tracing::debug!(build = %build.id, version = version_id, "publish requested");
                sent = true;
            }
            PublishState::NotPublished => {
                quiet += 1;
                if let Some(e) = refused.take() {
                    return Err(e.into());
                }
                if quiet >= QUIET_POLLS_BEFORE_REFUSED {
                    return Err(StepError::fail(
                        Stage::Publish,
                        format!(
                            "PatchKit did not publish version {version_id}: it is neither \
                             published, publishing nor scheduled after the request, so it was \
                             refused or failed. Check the version in the PatchKit panel, then \
                             run `patchkit-autopublish retry {}`",
                            build.id
                        ),
                    ));
                }
            }
        }
        backoff.wait(ctx).await?;
    }
}
