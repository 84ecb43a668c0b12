//! `Queued -> Validated`: the file is still the one that was found (or has
//! settled again after changing), and it is a ZIP PatchKit can take.
//! Nothing is sent to PatchKit for a file that fails here.

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
    if let Err(err) = checked {
        return Err(StepError::fail(Stage::Validate, err.to_string()));
    }
    advance(ctx, build, build.state.validated()).await
}
