//! `Queued -> Validated`: the file is still the one that was found (or has
//! settled again after changing), and it is a ZIP PatchKit can take.
//! Nothing is sent to PatchKit for a file that fails here; the archive's
//! warnings (names PatchKit may refuse) are logged and the build goes on.

use crate::archive;
use crate::state::Stage;
use crate::store::Build;

use super::{StageCtx, StepError, advance, follow_changed_file, identity_now};

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let now = identity_now(build, Stage::Validate).await?;
    if !now.same_content(&build.identity) {
        follow_changed_file(ctx, build, Stage::Validate, now).await?;
    }
    let path = build.file.clone();
    let checked = tokio::task::spawn_blocking(move || archive::validate(&path))
        .await
        .map_err(|e| StepError::Io(format!("validation task failed: {e}")))?;
    match checked {
        Err(err) => return Err(StepError::fail(Stage::Validate, err.to_string())),
        // Warnings do not stop the build; they go to the log at warn level,
        // where an operator reading why a version misbehaves will see them.
        Ok(summary) => {
            for warning in &summary.warnings {
                tracing::warn!(build = %build.id, rule = %build.rule, "{warning}");
            }
        }
    }
    advance(ctx, build, build.state.validated()).await
}
