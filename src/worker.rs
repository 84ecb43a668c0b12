//! Drives one build, stage after stage, until it is finished, must wait, or
//! is stopped. The worker owns the build while it runs: the daemon starts at
//! most one worker per build and per app.
//!
//! Knows the stages and the retry policy; nothing about scheduling, the
//! watcher or signals.

use std::time::Duration;

use crate::clock::now_ms;

use crate::patchkit::RetryPolicy;
use crate::policy::{Decision, decide};
use crate::scheduler::Lane;
use crate::stages::coordinate::{Gate, gate, needs_lock};
use crate::stages::{StageCtx, StepError, step};
use crate::store::{Build, BuildId, StoreError};
use tokio_util::sync::CancellationToken;

/// How a worker ended.
#[derive(Debug)]
pub enum WorkerEnd {
    /// The build reached a terminal state (published, scheduled, draft,
    /// failed or cancelled).
    Finished(Build),
    /// A step failed in a way worth repeating; the record says when.
    Retry(Build),
    /// The build's next step belongs to the other lane: its upload is done
    /// and it waits for its turn, or its turn sent it back to upload.
    LaneDone(Build),
    /// PatchKit refused the API key; the record says when to try again.
    KeyRefused(Build),
    /// Stopped by shutdown or a cancel request, at a safe point.
    Stopped(BuildId),
    /// The store could not be written; the build is as last recorded.
    StoreFailed(BuildId, StoreError),
}

/// Runs `build` until it finishes or must wait. `key_retry` is the pause
/// after a refused key. Every request retry made on the way is reported to
/// the observer as the build's own. A finished build's hold on PatchKit's
/// global lock is let go.
pub async fn drive(
    ctx: StageCtx,
    build: Build,
    lane: Lane,
    retry: RetryPolicy,
    key_retry: Duration,
) -> WorkerEnd {
    let observer = ctx.observer.clone();
    let id = build.id;
    observer.worker_started(&build, lane);
    let watch = observer.retry_watch(&build);
    let end = crate::patchkit::watched(
        watch,
        crate::patchkit::stoppable(
            ctx.cancel.clone(),
            drive_build(ctx.clone(), build, lane, retry, key_retry),
        ),
    )
    .await;
    // Stopped mid-retry (shutdown, cancel): nothing is being retried now.
    observer.request_settled(id);
    observer.worker_ended(id);
    if let WorkerEnd::Finished(build) = &end
        && let Ok(record) = ctx.store.coordination(build.id)
        && let Some(owner) = &record.owner
    {
        ctx.lock.release_all(owner);
    }
    end
}

async fn drive_build(
    ctx: StageCtx,
    mut build: Build,
    lane: Lane,
    retry: RetryPolicy,
    key_retry: Duration,
) -> WorkerEnd {
    let id = build.id;
    loop {
        if build.state.is_terminal() {
            return WorkerEnd::Finished(build);
        }
        if build.state.before_turn() != (lane == Lane::Ahead) {
            return WorkerEnd::LaneDone(build);
        }
        let before = build.state.clone();
        let outcome = if needs_lock(&build.state) {
            match gate(&ctx, &build).await {
                Ok(Gate::Go(lost)) => step_holding(&ctx, &build, lost).await,
                Ok(Gate::Wait(waiting)) => return WorkerEnd::Retry(*waiting),
                Err(e) => Err(e),
            }
        } else {
            step(&ctx, &build).await
        };
        let err = match outcome {
            // Stopped (shutdown, cancel) while a request waited to be sent
            // again: nothing was in flight, so this is a safe point too. Not
            // a failure: no attempt is counted and nothing is logged as one.
            Err(StepError::Api(e)) if e.is_transient() && ctx.cancel.is_cancelled() => {
                return WorkerEnd::Stopped(id);
            }
            Ok(next) => {
                build = next;
                if build.attempts > 0 && build.state != before {
                    match ctx.store.clear_attempts(id, &build.state).await {
                        Ok(cleared) => build = cleared,
                        Err(e) => return WorkerEnd::StoreFailed(id, e),
                    }
                }
                continue;
            }
            Err(StepError::Waiting(waiting)) => return WorkerEnd::Retry(*waiting),
            // The lock was lost mid-step: the step stopped at a safe point;
            // queue for the lock again.
            Err(StepError::Cancelled) if !ctx.cancel.is_cancelled() => {
                build = match ctx.store.get(id) {
                    Ok(Some(latest)) => latest,
                    Ok(None) => return WorkerEnd::StoreFailed(id, StoreError::NotFound { id }),
                    Err(e) => return WorkerEnd::StoreFailed(id, e),
                };
                continue;
            }
            Err(err) => err,
        };
        // The step may have moved the build before failing (an upload that
        // recorded chunks); work from the stored record.
        build = match ctx.store.get(id) {
            Ok(Some(latest)) => latest,
            Ok(None) => return WorkerEnd::StoreFailed(id, StoreError::NotFound { id }),
            Err(e) => return WorkerEnd::StoreFailed(id, e),
        };
        let decision = decide(&err, build.attempts, &retry);
        let result = match decision {
            Decision::Retry(delay) => {
                tracing::warn!(
                    build = %id, rule = %build.rule, label = %build.label,
                    stage = %build.state.stage(), attempt = build.attempts + 1,
                    retry_in = ?delay, "{err}; will retry"
                );
                ctx.observer.build_retried(&build);
                record(&ctx, &build, &err, delay)
                    .await
                    .map(WorkerEnd::Retry)
            }
            Decision::PauseForKey => {
                tracing::error!(
                    build = %id, "{err}; PatchKit refused the API key. Every build waits; fix \
                     the key (api_key_env, api_key_file or the systemd credential) and the \
                     daemon retries every {}", humantime::format_duration(key_retry)
                );
                ctx.observer.build_retried(&build);
                record(&ctx, &build, &err, key_retry)
                    .await
                    .map(WorkerEnd::KeyRefused)
            }
            Decision::Fail(reason) => {
                let stage = match &err {
                    StepError::Fail { stage, .. } => *stage,
                    _ => build.state.stage(),
                };
                // The observer logs the failure once, as an error, with its
                // reason, from the stored state.
                let next = build.state.failed(stage, reason, build.attempts + 1);
                match next {
                    Ok(next) => ctx
                        .store
                        .transition(id, &build.state, next)
                        .await
                        .inspect(|b| ctx.observer.state_changed(b))
                        .map(WorkerEnd::Finished),
                    Err(e) => {
                        tracing::error!(build = %id, "cannot mark the build failed: {e}");
                        return WorkerEnd::Stopped(id);
                    }
                }
            }
            Decision::Stop => {
                return match err {
                    StepError::Store(e) => WorkerEnd::StoreFailed(id, e),
                    _ => WorkerEnd::Stopped(id),
                };
            }
        };
        return result.unwrap_or_else(|e| WorkerEnd::StoreFailed(id, e));
    }
}

/// Runs one step while holding PatchKit's lock: when `lost` fires, the step
/// is asked to stop at its next safe point, as on shutdown.
async fn step_holding(
    ctx: &StageCtx,
    build: &Build,
    lost: Option<CancellationToken>,
) -> Result<Build, StepError> {
    let Some(lost) = lost else {
        return step(ctx, build).await;
    };
    let mut held = ctx.clone();
    held.cancel = ctx.cancel.child_token();
    let stop = held.cancel.clone();
    let watch = tokio::spawn(async move {
        lost.cancelled().await;
        stop.cancel();
    });
    let result = step(&held, build).await;
    watch.abort();
    result
}

async fn record(
    ctx: &StageCtx,
    build: &Build,
    err: &StepError,
    delay: Duration,
) -> Result<Build, StoreError> {
    let at = now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    ctx.store
        .record_attempt(build.id, &build.state, err.to_string(), Some(at))
        .await
}
