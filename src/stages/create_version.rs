//! `Validated -> VersionReady`: find or create the build's draft version.
//!
//! PatchKit allows one draft per app and cannot delete versions, so this
//! stage lists the app's versions before it creates anything:
//! - a draft with this build's label is adopted (a crash after a create
//!   left it, or an earlier try of this very build);
//! - a draft left by one of this daemon's own failed or cancelled builds is
//!   reused (relabelled), since nobody else will ever publish it;
//! - any other draft follows the rule's `existing_draft`: `fail` names it and
//!   stops, `take_over` relabels it and uploads over it;
//! - with no draft, a version is created. That call is never repeated
//!   blindly: after any failure the next try lists again first.

use crate::config::ExistingDraft;
use crate::patchkit::{AppVersion, ErrorKind, VersionPatch};
use crate::state::{BuildState, Stage};
use crate::store::Build;

use super::{StageCtx, StepError, advance};

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let secret = &build.app_secret;
    let versions = ctx.client.list_versions(secret).await?;
    let drafts: Vec<&AppVersion> = versions.iter().filter(|v| is_open_draft(v)).collect();

    let same_label = drafts.iter().find(|v| v.label == build.label);
    // A draft with our label is ours to adopt, unless another of our builds
    // kept it as a draft for a person to publish.
    let kept_by_other = match same_label {
        Some(v) => {
            owner_of(ctx, build, v.id)?.is_some_and(|b| matches!(b.state, BuildState::Draft { .. }))
        }
        None => false,
    };
    if let Some(mine) = same_label.filter(|_| !kept_by_other) {
        tracing::info!(
            build = %build.id, version = mine.id, label = %build.label,
            "adopting the draft version with this build's label"
        );
        return advance(ctx, build, build.state.version_ready(mine.id)).await;
    }

    if let Some(draft) = drafts.first() {
        if draft.pending_publish {
            return Err(StepError::Busy(format!(
                "the app's draft version {} {:?} is being published; waiting for it to finish",
                draft.id, draft.label
            )));
        }
        let owner = owner_of(ctx, build, draft.id)?;
        let abandoned = owner.as_ref().is_some_and(|b| {
            matches!(
                b.state,
                BuildState::Failed { .. } | BuildState::Cancelled { .. }
            )
        });
        if abandoned || ctx.existing_draft == ExistingDraft::TakeOver {
            take_over(ctx, build, draft).await?;
            return advance(ctx, build, build.state.version_ready(draft.id)).await;
        }
        let whose = match owner {
            Some(b) => format!(
                " (left as a draft by build {} of rule {:?}, which does not publish)",
                b.id, b.rule
            ),
            None => " (not created by this daemon)".to_owned(),
        };
        return Err(StepError::fail(
            Stage::CreateVersion,
            format!(
                "app {secret} already has draft version {} {:?}{whose}, and PatchKit allows one \
                 draft per app. Publish or delete that draft in the PatchKit panel, or set \
                 existing_draft = \"take_over\" in rule {:?}; then run `patchkit-autopublish \
                 retry {}`",
                draft.id, draft.label, ctx.rule_name, build.id
            ),
        ));
    }

    let created = match ctx
        .client
        .create_version(secret, &build.label, build.changelog.as_deref())
        .await
    {
        Ok(v) => v,
        // Someone created a draft between our list and our create: list
        // again on the next try rather than guess.
        Err(e) if e.kind() == ErrorKind::Forbidden && e.message().contains("draft") => {
            return Err(StepError::Busy(format!(
                "a draft version appeared while creating one ({e}); looking again"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    crate::crashpoint::hit("after-create-version");
    tracing::debug!(build = %build.id, version = created.id, "created draft version");
    advance(ctx, build, build.state.version_ready(created.id)).await
}

/// A version that blocks a new draft: still a draft and neither published
/// nor scheduled.
fn is_open_draft(v: &AppVersion) -> bool {
    v.draft && !v.published && v.publish_time == 0
}

/// The other build of this app, in this store, that owns version `id`.
fn owner_of(ctx: &StageCtx, build: &Build, id: u64) -> Result<Option<Build>, StepError> {
    Ok(ctx
        .store
        .by_app(&build.app_secret)?
        .into_iter()
        .rev()
        .find(|b| b.id != build.id && b.state.version_id() == Some(id)))
}

/// Relabels someone else's (or an abandoned) draft as this build's.
async fn take_over(ctx: &StageCtx, build: &Build, draft: &AppVersion) -> Result<(), StepError> {
    tracing::warn!(
        build = %build.id, version = draft.id, old_label = %draft.label, label = %build.label,
        "taking over the app's existing draft version"
    );
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
