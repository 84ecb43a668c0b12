//! `Linking -> Published`: feed the rule's channel apps from the live group
//! version, as PatchKit's `pkt channel push` does.
//!
//! For each channel, in the rule's order: find it among the group app's
//! channels (by secret, name or display name), take PatchKit's lock on it,
//! find or create its draft, `POST .../link` the draft to the group
//! version, follow the job, check the processing messages, publish, and
//! follow the publish. Each channel's step is recorded in the build's
//! coordination record before its side effect, so a crash anywhere resumes
//! from PatchKit's state: a draft created after the recorded intent with
//! the build's label is adopted, a link whose answer was lost is recognised
//! by the channel's `processing_version`, a publish under way is followed,
//! not sent again.
//!
//! A channel that cannot be fed fails the build in the `channels` stage,
//! naming it; the group version stays live, and `retry` feeds only the
//! channels not yet live.

use crate::patchkit::{AppVersion, Endpoint, ErrorKind, PublishState, VersionPatch};
use crate::state::{BuildState, Stage};
use crate::store::{Build, ChannelProgress, ChannelStep, Coordination};

use super::coordinate::{Gate, gate_app};
use super::draft::{DraftPlan, in_the_way_reason, plan_draft};
use super::{PollBackoff, StageCtx, StepError, advance, missing};

/// A publish that shows no sign of starting after this many polls was
/// refused (as in the publish stage).
const QUIET_POLLS_BEFORE_REFUSED: u32 = 5;

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let BuildState::Linking {
        version_id: group_version,
        published_at,
        ..
    } = build.state
    else {
        return Ok(build.clone());
    };
    let mut record = ctx.store.coordination(build.id)?;
    if prepare(&mut record, &ctx.channels) {
        ctx.store.set_coordination(build.id, &record).await?;
    }
    for i in 0..record.channels.len() {
        match feed(ctx, build, group_version, &mut record, i).await {
            Ok(()) => {}
            Err(StepError::Fail { reason, .. }) => {
                let channel = &record.channels[i];
                let reason = format!(
                    "version {group_version} is live on app {}, but channel {:?} could not be \
                     fed: {reason}",
                    build.app_secret, channel.channel
                );
                record.channels[i].step = ChannelStep::Failed {
                    version_id: channel.step.version_id(),
                    reason: reason.clone(),
                };
                ctx.store.set_coordination(build.id, &record).await?;
                return Err(StepError::fail(Stage::Channels, reason));
            }
            Err(other) => return Err(other),
        }
    }
    let published_at = match published_at {
        0 => ctx
            .client
            .get_version(&build.app_secret, group_version)
            .await
            .map(|v| u64::try_from(v.publish_date).unwrap_or(0))?,
        at => at,
    };
    tracing::info!(
        build = %build.id, version = group_version,
        "every channel is live: {}",
        record
            .channels
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    advance(ctx, build, build.state.channels_published(published_at)).await
}

/// Sets up the channel list on the first run, and on a retry sends failed
/// channels back to their last good step. Returns whether it changed.
fn prepare(record: &mut Coordination, configured: &[String]) -> bool {
    if record.channels.is_empty() {
        record.channels = configured
            .iter()
            .map(|c| ChannelProgress {
                channel: c.clone(),
                secret: None,
                step: ChannelStep::Pending,
            })
            .collect();
        return !record.channels.is_empty();
    }
    let mut changed = false;
    for channel in &mut record.channels {
        if let ChannelStep::Failed { version_id, .. } = &channel.step {
            channel.step = match version_id {
                Some(v) => ChannelStep::Ready { version_id: *v },
                None => ChannelStep::Pending,
            };
            changed = true;
        }
    }
    changed
}

/// Takes channel `i` to its published version.
async fn feed(
    ctx: &StageCtx,
    build: &Build,
    group_version: u64,
    record: &mut Coordination,
    i: usize,
) -> Result<(), StepError> {
    if matches!(record.channels[i].step, ChannelStep::Published { .. }) {
        return Ok(());
    }
    let secret = match record.channels[i].secret.clone() {
        Some(secret) => secret,
        None => {
            let secret = resolve(ctx, build, &record.channels[i].channel).await?;
            record.channels[i].secret = Some(secret.clone());
            ctx.store.set_coordination(build.id, record).await?;
            secret
        }
    };
    let busy_check = record.channels[i].step.version_id().is_none();
    if let Gate::Wait(waiting) = gate_app(ctx, build, &secret, busy_check).await? {
        return Err(StepError::Waiting(waiting));
    }
    // The gate may have rewritten the record (a wait that ended).
    let owner = {
        let fresh = ctx.store.coordination(build.id)?;
        record.owner = fresh.owner.clone();
        record.waiting = fresh.waiting;
        fresh.owner
    };
    loop {
        let next = match record.channels[i].step.clone() {
            ChannelStep::Published { .. } => break,
            ChannelStep::Pending | ChannelStep::Failed { .. } => {
                draft(ctx, build, &secret, None, record, i).await?
            }
            ChannelStep::Creating { after_id } => {
                draft(ctx, build, &secret, Some(after_id), record, i).await?
            }
            ChannelStep::Ready { version_id } => {
                link(ctx, build, &secret, version_id, group_version, record, i).await?
            }
            ChannelStep::Linking {
                version_id,
                job_guid,
            } => {
                if processed(ctx, build, &secret, version_id, job_guid.as_deref()).await? {
                    ChannelStep::Publishing { version_id }
                } else {
                    // The link never started: link again.
                    ChannelStep::Ready { version_id }
                }
            }
            ChannelStep::Publishing { version_id } => {
                publish(ctx, build, &secret, version_id).await?;
                ChannelStep::Published { version_id }
            }
        };
        record.channels[i].step = next;
        ctx.store.set_coordination(build.id, record).await?;
        tracing::info!(
            build = %build.id, label = %build.label, "channel {}", record.channels[i]
        );
    }
    if let Some(owner) = owner {
        ctx.lock.release(&secret, &owner);
    }
    Ok(())
}

/// The secret of channel `name` of the build's group app: a channel whose
/// secret, name or display name it is. A server that does not say which
/// apps are channels (no `is_channel` or `parent_group`) is trusted with a
/// secret; the link then tells.
async fn resolve(ctx: &StageCtx, build: &Build, name: &str) -> Result<String, StepError> {
    let apps = ctx.client.list_apps().await?;
    find_channel(&apps, &build.app_secret, name, &ctx.rule_name)
        .map_err(|reason| StepError::fail(Stage::Channels, reason))
}

/// Finds channel `name` of group app `group` among the key's `apps`: its
/// secret, or why it is not one (naming `rule`). Used by the stage and by
/// `check`.
pub fn find_channel(
    apps: &[crate::patchkit::App],
    group: &str,
    name: &str,
    rule: &str,
) -> Result<String, String> {
    let of_group = |a: &crate::patchkit::App| {
        a.is_channel && a.parent_group.as_ref().is_some_and(|g| g.secret == group)
    };
    if let Some(app) = apps.iter().find(|a| {
        of_group(a)
            && (a.secret == name || a.name == name || a.display_name.as_deref() == Some(name))
    }) {
        return Ok(app.secret.clone());
    }
    match apps.iter().find(|a| a.secret == name) {
        Some(app) if app.parent_group.is_none() && !app.is_channel => Ok(app.secret.clone()),
        Some(app) => Err(format!(
            "app {} is not a channel of app {group}; list channels of the group app in rule \
             {rule:?} (their secrets or names)",
            app.secret
        )),
        None => Err(format!(
            "no channel of app {group} is named {name:?} among the API key's apps; check the \
             channel's name or secret in the PatchKit panel and in rule {rule:?}"
        )),
    }
}

/// Finds or creates the channel's draft; the intent is recorded before a
/// create.
async fn draft(
    ctx: &StageCtx,
    build: &Build,
    secret: &str,
    intent: Option<u64>,
    record: &mut Coordination,
    i: usize,
) -> Result<ChannelStep, StepError> {
    let versions = ctx.client.list_versions(secret).await?;
    let plan = plan_draft(&versions, &build.label, intent, &[], ctx.existing_draft)
        .map_err(|m| missing(Endpoint::ListVersions, m))?;
    let version_id = match plan {
        DraftPlan::Adopt(mine) => mine.id,
        DraftPlan::Reuse(draft, _) | DraftPlan::TakeOver(draft) => {
            tracing::warn!(
                build = %build.id, channel = %secret, version = draft.id,
                old_label = %draft.label, "taking over the channel's existing draft version"
            );
            relabel(ctx, build, secret, draft).await?;
            draft.id
        }
        DraftPlan::Wait(draft, _) => {
            return Err(StepError::Busy(format!(
                "channel {secret}'s draft version {} is being published; waiting for it",
                draft.id
            )));
        }
        DraftPlan::InTheWay(draft, known) => {
            return Err(StepError::fail(
                Stage::Channels,
                in_the_way_reason(secret, draft, known, &ctx.rule_name),
            ));
        }
        DraftPlan::Create => {
            let after_id = versions.iter().map(|v| v.id).max().unwrap_or(0);
            record.channels[i].step = ChannelStep::Creating { after_id };
            ctx.store.set_coordination(build.id, record).await?;
            let created = ctx
                .client
                .create_version(secret, &build.label, build.changelog.as_deref())
                .await?;
            created.id
        }
    };
    Ok(ChannelStep::Ready { version_id })
}

async fn relabel(
    ctx: &StageCtx,
    build: &Build,
    secret: &str,
    draft: &AppVersion,
) -> Result<(), StepError> {
    let patch = VersionPatch {
        label: Some(build.label.clone()),
        changelog: Some(build.changelog.clone().unwrap_or_default()),
        publish_when_processed: Some(false),
    };
    ctx.client.patch_version(secret, draft.id, &patch).await?;
    Ok(())
}

/// Links the channel's draft to the group version, unless the version is
/// already past that (published, or being published).
async fn link(
    ctx: &StageCtx,
    build: &Build,
    secret: &str,
    version_id: u64,
    group_version: u64,
    record: &mut Coordination,
    i: usize,
) -> Result<ChannelStep, StepError> {
    let version = ctx.client.get_version(secret, version_id).await?;
    match version
        .publish_state()
        .map_err(|m| missing(Endpoint::GetVersion, m))?
    {
        PublishState::Published | PublishState::Scheduled { .. } => {
            return Ok(ChannelStep::Published { version_id });
        }
        PublishState::Publishing { .. } => return Ok(ChannelStep::Publishing { version_id }),
        PublishState::NotPublished => {}
    }
    record.channels[i].step = ChannelStep::Linking {
        version_id,
        job_guid: None,
    };
    ctx.store.set_coordination(build.id, record).await?;
    match ctx
        .client
        .link_version(secret, version_id, &build.app_secret, group_version)
        .await
    {
        Ok(guid) => Ok(ChannelStep::Linking {
            version_id,
            job_guid: Some(guid.0),
        }),
        // Refused, or the answer lost: the channel's state says whether a
        // link is under way; `processed` waits for it or fails.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::BadRequest | ErrorKind::Forbidden | ErrorKind::NotFound
            ) =>
        {
            let app = ctx.client.get_app(secret).await?;
            if app.processing_version == Some(version_id) {
                Ok(ChannelStep::Linking {
                    version_id,
                    job_guid: None,
                })
            } else {
                Err(e.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits for the link's processing to finish and checks its messages.
/// False when the version shows nothing processed: the link never started.
async fn processed(
    ctx: &StageCtx,
    build: &Build,
    secret: &str,
    version_id: u64,
    job_guid: Option<&str>,
) -> Result<bool, StepError> {
    let mut backoff = PollBackoff::new(ctx.poll_interval);
    if let Some(guid) = job_guid {
        let guid = crate::patchkit::JobGuid(guid.to_owned());
        loop {
            let job = match ctx.client.get_job(&guid).await {
                Ok(job) => job,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => return Err(e.into()),
            };
            if job.finished {
                if job.status != 0 {
                    return Err(StepError::fail(
                        Stage::Channels,
                        format!(
                            "PatchKit's link job {} failed (status {}): {}",
                            guid.0,
                            job.status,
                            job.status_message.as_deref().unwrap_or("no message")
                        ),
                    ));
                }
                break;
            }
            ctx.observer.stage_progress(build.id, job.progress);
            backoff.wait(ctx).await?;
        }
    }
    // The job is done (or unknown): wait until the channel no longer shows
    // it processing, then read the result.
    loop {
        let app = ctx.client.get_app(secret).await?;
        if app.processing_version != Some(version_id) {
            break;
        }
        backoff.wait(ctx).await?;
    }
    let version = ctx.client.get_version(secret, version_id).await?;
    if version.processing_finished_at.is_none() {
        return Ok(false);
    }
    let errors: Vec<String> = version.errors().map(|m| m.message.clone()).collect();
    if version.has_processing_error == Some(true) || !errors.is_empty() {
        return Err(StepError::fail(
            Stage::Channels,
            format!(
                "PatchKit's processing of channel {secret}'s version {version_id} reported \
                 errors: {}",
                if errors.is_empty() {
                    "no message".to_owned()
                } else {
                    errors.join("; ")
                }
            ),
        ));
    }
    for warning in version.warnings() {
        tracing::warn!(
            build = %build.id, channel = %secret, version = version_id,
            "processing warning: {}", warning.message
        );
    }
    Ok(true)
}

/// Publishes the channel's version (unless under way) and follows it.
async fn publish(
    ctx: &StageCtx,
    build: &Build,
    secret: &str,
    version_id: u64,
) -> Result<(), StepError> {
    let mut backoff = PollBackoff::new(ctx.poll_interval);
    let mut sent = false;
    let mut quiet = 0;
    loop {
        let version = ctx.client.get_version(secret, version_id).await?;
        match version
            .publish_state()
            .map_err(|m| missing(Endpoint::GetVersion, m))?
        {
            PublishState::Published | PublishState::Scheduled { .. } => return Ok(()),
            PublishState::Publishing { progress } => {
                quiet = 0;
                ctx.observer.stage_progress(build.id, progress);
            }
            PublishState::NotPublished if !sent => {
                match ctx.client.publish(secret, version_id).await {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::BadRequest | ErrorKind::NotFound | ErrorKind::Forbidden
                        ) =>
                    {
                        tracing::warn!(
                            build = %build.id, channel = %secret, error = %e,
                            "publish refused; reading the version"
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
                sent = true;
            }
            PublishState::NotPublished => {
                quiet += 1;
                if quiet >= QUIET_POLLS_BEFORE_REFUSED {
                    return Err(StepError::fail(
                        Stage::Channels,
                        format!(
                            "PatchKit did not publish channel {secret}'s version {version_id} \
                             after the request"
                        ),
                    ));
                }
            }
        }
        backoff.wait(ctx).await?;
    }
}
