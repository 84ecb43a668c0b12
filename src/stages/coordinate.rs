//! Before each step from the draft lookup to the publish: PatchKit's global
//! lock on the build's app, and no one else's version processing or
//! publishing on it.
//!
//! The build's owner id is chosen once and recorded before it is first
//! sent, so after a crash the build asks with the same id and keeps its
//! place. A wait is recorded (what for, since when) and the build runs again
//! after the lock's refresh interval, without counting a failed try; the
//! wait ends, and is logged as ended, when the lock is held.

use tokio_util::sync::CancellationToken;

use crate::clock::{millis, now_ms};
use crate::global_lock::Ensure;
use crate::state::BuildState;
use crate::store::{Build, Wait, WaitReason};

use super::{StageCtx, StepError};

/// Whether the build may take its next step.
pub enum Gate {
    /// Go on; the token, when there is one, fires if the lock is lost.
    Go(Option<CancellationToken>),
    /// Wait: the build as stored, with its next try time.
    Wait(Box<Build>),
}

/// Whether a build in `state` needs its app's lock for its next step: from
/// the draft lookup until its version is live. Validation and an upload
/// made before the draft need none; feeding channels takes each channel's
/// own lock instead.
pub fn needs_lock(state: &BuildState) -> bool {
    !state.before_turn() && !matches!(state, BuildState::Linking { .. }) && !state.is_terminal()
}

/// Takes (or confirms) the lock on the build's app for its next step.
pub async fn gate(ctx: &StageCtx, build: &Build) -> Result<Gate, StepError> {
    let busy_check = build.state.version_id().is_none();
    gate_app(ctx, build, &build.app_secret, busy_check).await
}

/// Takes (or confirms) the lock on `app` (the build's app or one of its
/// channels) for the build; with `busy_check`, also waits while `app`
/// processes or publishes someone else's version.
pub async fn gate_app(
    ctx: &StageCtx,
    build: &Build,
    app: &str,
    busy_check: bool,
) -> Result<Gate, StepError> {
    let mut record = ctx.store.coordination(build.id)?;
    let owner = match &record.owner {
        Some(owner) => owner.clone(),
        None => {
            // The app's previous build here may have left its lock to take
            // over, in this run or before a restart: then this build keeps
            // the daemon's place instead of queueing behind it until
            // PatchKit's time-out.
            let owner = match ctx.lock.handover(app) {
                Some(owner) => owner,
                None => previous_owner(ctx, build)?.unwrap_or_else(new_owner),
            };
            record.owner = Some(owner.clone());
            ctx.store.set_coordination(build.id, &record).await?;
            owner
        }
    };
    let (wait, lost) = match ctx.lock.ensure(&ctx.client, app, &owner).await? {
        Ensure::Wait { position } => (
            Some(WaitReason::Lock {
                app: app.to_owned(),
                position,
            }),
            None,
        ),
        Ensure::Held(lost) if busy_check => (app_busy(ctx, app).await?, Some(lost)),
        Ensure::Held(lost) => (None, Some(lost)),
        Ensure::Off => (None, None),
    };
    match wait {
        None => {
            if let Some(done) = record.waiting.take() {
                tracing::info!(
                    build = %build.id, label = %build.label,
                    "done waiting after {}: {}",
                    humantime::format_duration(std::time::Duration::from_secs(
                        now_ms().saturating_sub(done.since_ms) / 1000
                    )),
                    done.reason
                );
                ctx.store.set_coordination(build.id, &record).await?;
            }
            Ok(Gate::Go(lost))
        }
        Some(reason) => {
            let changed = record.waiting.as_ref().map(|w| &w.reason) != Some(&reason);
            if changed {
                let since_ms = record.waiting.as_ref().map_or_else(now_ms, |w| w.since_ms);
                tracing::info!(build = %build.id, label = %build.label, "{reason}");
                record.waiting = Some(Wait { since_ms, reason });
                ctx.store.set_coordination(build.id, &record).await?;
            }
            let at = now_ms().saturating_add(millis(ctx.lock.refresh_interval()));
            let stored = ctx.store.wait_until(build.id, &build.state, at).await?;
            Ok(Gate::Wait(Box::new(stored)))
        }
    }
}

/// With the lock held and no version of its own yet, the build waits while
/// the app processes or publishes a version someone else sent (PatchKit's
/// tools check this too: a version may have been sent without the lock).
async fn app_busy(ctx: &StageCtx, secret: &str) -> Result<Option<WaitReason>, StepError> {
    let app = ctx.client.get_app(secret).await?;
    Ok(app
        .processing_version
        .or(app.publishing_version)
        .map(|version| WaitReason::AppBusy {
            app: secret.to_owned(),
            version,
        }))
}

/// The owner id of the newest other build of the same app that has one.
/// Builds of an app run one at a time, so sharing it is safe.
fn previous_owner(ctx: &StageCtx, build: &Build) -> Result<Option<String>, StepError> {
    let mut others = ctx.store.by_app(&build.app_secret)?;
    others.retain(|b| b.id != build.id);
    others.sort_by_key(|b| std::cmp::Reverse(b.id));
    for other in others {
        if let Some(owner) = ctx.store.coordination(other.id)?.owner {
            return Ok(Some(owner));
        }
    }
    Ok(None)
}

/// A fresh owner id, shaped like the UUIDs PatchKit's tools send.
fn new_owner() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let h: String = (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("below 16"))
        .collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
