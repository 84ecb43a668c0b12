//! `Uploaded { version_id: None } -> CreatingVersion -> Uploaded { version
//! }`: find or create the draft version for a build whose upload is done,
//! at its turn on the app. (A `CreatingVersion` recorded without an upload
//! ends in `VersionReady`, and the upload follows the draft.)
//!
//! First the app itself is read: a secret PatchKit does not know fails the
//! build naming the secret, and a channel app that takes no direct uploads
//! fails it before anything is created. Then, since PatchKit allows one
//! draft per app and cannot delete versions, the app's versions are listed
//! and `draft::plan_draft` decides:
//! - the draft this build's recorded intent created is adopted (a crash
//!   between the request and recording its answer left it);
//! - a draft left by one of this daemon's own failed or cancelled builds is
//!   reused (relabelled), since nobody else will ever publish it;
//! - any other draft, whatever its label, follows the rule's
//!   `existing_draft`: `fail` names it and stops, `take_over` relabels it and
//!   uploads over it;
//! - with no draft, the intent is recorded, then the version is created.
//!   That call is never repeated blindly: after any failure the next try
//!   lists again first. A 403 is looked up: a draft that appeared is planned
//!   again, and with none the key's access to the app is examined.

use crate::patchkit::{AppVersion, Endpoint, ErrorKind, VersionPatch};
use crate::state::{BuildState, Stage};
use crate::store::Build;

use super::draft::{DraftPlan, KnownDraft, Owner, in_the_way_reason, plan_draft};
use super::{StageCtx, StepError, advance, explain_forbidden, missing};

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let secret = &build.app_secret;
    check_app(ctx, build, Stage::CreateVersion).await?;
    let versions = match ctx.client.list_versions(secret).await {
        Ok(v) => v,
        Err(e) if e.kind() == ErrorKind::Forbidden => {
            return Err(explain_forbidden(ctx, build, Stage::CreateVersion, e).await);
        }
        Err(e) => return Err(e.into()),
    };
    let intent = match build.state {
        BuildState::CreatingVersion { after_id, .. } => Some(after_id),
        _ => None,
    };
    let known = known_drafts(ctx, build)?;
    let plan = plan_draft(&versions, &build.label, intent, &known, ctx.existing_draft)
        .map_err(|m| missing(Endpoint::ListVersions, m))?;
    match plan {
        DraftPlan::Adopt(mine) => {
            tracing::info!(
                build = %build.id, version = mine.id, label = %build.label,
                "adopting the draft version this build asked for before a restart"
            );
            advance(ctx, build, build.state.version_ready(mine.id)).await
        }
        DraftPlan::Reuse(draft, _) => {
            // Routine: a draft our own failed or cancelled build left.
            tracing::info!(
                build = %build.id, version = draft.id, old_label = %draft.label,
                label = %build.label, "reusing the draft version an earlier build of ours left"
            );
            take_over(ctx, build, draft).await?;
            advance(ctx, build, build.state.version_ready(draft.id)).await
        }
        DraftPlan::TakeOver(draft) => {
            // Someone else's work is relabelled: worth a person's attention.
            tracing::warn!(
                build = %build.id, version = draft.id, old_label = %draft.label,
                label = %build.label, "taking over the app's existing draft version"
            );
            take_over(ctx, build, draft).await?;
            advance(ctx, build, build.state.version_ready(draft.id)).await
        }
        DraftPlan::Wait(draft, record) => Err(StepError::Busy(match record {
            Some(k) => format!(
                "the app's draft version {} {:?} belongs to build {}, still running; waiting \
                 for it",
                draft.id, draft.label, k.build
            ),
            None => format!(
                "the app's draft version {} {:?} is being published; waiting for it to finish",
                draft.id, draft.label
            ),
        })),
        DraftPlan::InTheWay(draft, record) => Err(StepError::fail(
            Stage::CreateVersion,
            format!(
                "{}; then run `patchkit-autopublish retry {}`",
                in_the_way_reason(secret, draft, record, &ctx.rule_name),
                build.id
            ),
        )),
        DraftPlan::Create => create(ctx, build, &versions).await,
    }
}

/// Records the intent (once), then asks PatchKit for a new draft.
async fn create(
    ctx: &StageCtx,
    build: &Build,
    versions: &[AppVersion],
) -> Result<Build, StepError> {
    let build = match build.state {
        BuildState::Uploaded {
            version_id: None, ..
        } => {
            let after_id = versions.iter().map(|v| v.id).max().unwrap_or(0);
            advance(ctx, build, build.state.creating_version(after_id)).await?
        }
        _ => build.clone(),
    };
    let secret = &build.app_secret;
    let created = match ctx
        .client
        .create_version(secret, &build.label, build.changelog.as_deref())
        .await
    {
        Ok(v) => v,
        Err(e) if e.kind() == ErrorKind::Forbidden => {
            // PatchKit answers 403 both for "a draft exists" and for "this
            // key may not": the version list tells which.
            let versions = ctx.client.list_versions(secret).await?;
            let mut draft = None;
            for v in &versions {
                if v.is_open_draft()
                    .map_err(|m| missing(Endpoint::ListVersions, m))?
                {
                    draft = Some(v);
                }
            }
            return Err(match draft {
                Some(d) => StepError::Busy(format!(
                    "a draft version {} {:?} appeared while this build created one; planning \
                     again",
                    d.id, d.label
                )),
                None => explain_forbidden(ctx, &build, Stage::CreateVersion, e).await,
            });
        }
        Err(e) => return Err(e.into()),
    };
    crate::crashpoint::hit("after-create-version");
    tracing::debug!(build = %build.id, version = created.id, "created draft version");
    advance(ctx, &build, build.state.version_ready(created.id)).await
}

/// Reads the app: PatchKit must know it, and it must take uploads.
pub(super) async fn check_app(
    ctx: &StageCtx,
    build: &Build,
    stage: Stage,
) -> Result<(), StepError> {
    let app = ctx.client.get_app(&build.app_secret).await?;
    if app.refuses_direct_uploads() {
        return Err(StepError::fail(stage, channel_reason(&app, &ctx.rule_name)));
    }
    Ok(())
}

/// Why a channel app gets no upload, and what to configure instead.
pub fn channel_reason(app: &crate::patchkit::App, rule: &str) -> String {
    let group = match &app.parent_group {
        Some(g) if !g.secret.is_empty() => format!("its group app {:?} ({})", g.name, g.secret),
        _ => "its group app".to_owned(),
    };
    format!(
        "app {} is a channel: it gets its builds from {group}, and PatchKit does not allow \
         uploading to it directly (allow_channel_direct_publish is off). Set app_secret in rule \
         {rule:?} to the group app's secret, or allow direct publishing on the channel in the \
         PatchKit panel",
        app.secret
    )
}

/// What the store says about the app's other builds' versions.
fn known_drafts(ctx: &StageCtx, build: &Build) -> Result<Vec<KnownDraft>, StepError> {
    Ok(ctx
        .store
        .by_app(&build.app_secret)?
        .into_iter()
        .filter(|b| b.id != build.id)
        .filter_map(|b| {
            let owner = match b.state {
                BuildState::Failed { .. } | BuildState::Cancelled { .. } => Owner::Abandoned,
                BuildState::Draft { .. } => Owner::Kept,
                BuildState::Published { .. } | BuildState::Scheduled { .. } => return None,
                _ => Owner::Active,
            };
            Some(KnownDraft {
                version_id: b.state.version_id()?,
                build: b.id.to_string(),
                rule: b.rule.clone(),
                label: b.label.clone(),
                owner,
            })
        })
        // Newest first: a version id that several builds recorded (a draft
        // reused) belongs to the latest.
        .rev()
        .collect())
}

/// Relabels someone else's (or an abandoned) draft as this build's.
async fn take_over(ctx: &StageCtx, build: &Build, draft: &AppVersion) -> Result<(), StepError> {
    let patch = VersionPatch {
        label: Some(build.label.clone()),
        changelog: Some(build.changelog.clone().unwrap_or_default()),
        publish_when_processed: Some(false),
    };
    ctx.client
        .patch_version(&build.app_secret, draft.id, &patch)
        .await?;
    crate::crashpoint::hit("after-take-over");
    Ok(())
}
