//! `Validated -> Uploading -> Uploaded`: the ZIP, in chunks, resumably,
//! before the build has a version: an upload needs none (PatchKit's own
//! upload widget fills the upload first), so a build uploads while the
//! app's builds before it process and publish, and gets its draft at its
//! turn. A build that has a version and needs a new upload (PatchKit lost
//! it, a retry) takes `VersionReady -> Uploading -> Uploaded` instead.
//!
//! PatchKit cannot say how much of an upload it has, so the acknowledged
//! offset is written to the store after every chunk it accepts; a restart
//! resumes from there with the same upload id. Before resuming, the file must
//! still be the one the upload started from (size, mtime, inode): a changed
//! file gets a fresh upload once it has settled, so no upload ever mixes
//! two versions of a file. After the last chunk the same checks run again,
//! plus the file's change time (ctime), which also catches a rewrite in
//! place that put the size and mtime back. A chunk whose acknowledgement
//! was lost is sent again: same bytes, same range, harmless.
//!
//! PatchKit may forget a version or an upload (a draft deleted in the panel,
//! a restore from backup). A recorded version that is gone or no longer
//! this build's draft sends the build back to create-version; an upload
//! that is gone (404 on a chunk) is started afresh once the version is known
//! to be still there.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use crate::archive;
use crate::patchkit::{
    AckSink, BoxError, Endpoint, ErrorKind, UploadError, UploadId, UploadRequest,
};
use crate::state::{BuildState, FileIdentity, Stage};
use crate::store::Build;

use super::{StageCtx, StepError, advance, follow_changed_file, identity_now, missing};

/// Upload progress is logged at most this often, so a 20 GiB upload writes
/// a few hundred lines, not thousands.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub(super) async fn run(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let mut build = build.clone();
    loop {
        build = match &build.state {
            BuildState::Validated => start_first(ctx, &build).await?,
            BuildState::VersionReady { version_id } => start(ctx, &build, *version_id).await?,
            BuildState::Uploading { .. } => send(ctx, &build).await?,
            _ => return Ok(build),
        };
    }
}

/// Checks the app takes uploads (a channel app or a secret PatchKit does
/// not know fails here, before any byte is sent), then opens an upload
/// with no version yet.
async fn start_first(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    super::create_version::check_app(ctx, build, Stage::Upload).await?;
    open_current(ctx, build).await
}

/// Checks the app still takes uploads and the version is still this
/// build's draft, then opens an upload.
async fn start(ctx: &StageCtx, build: &Build, version_id: u64) -> Result<Build, StepError> {
    super::create_version::check_app(ctx, build, Stage::Upload).await?;
    if !version_is_ours(ctx, build, version_id).await? {
        return lose_version(ctx, build, version_id).await;
    }
    open_current(ctx, build).await
}

/// Opens an upload for the file as it is now, once a changed file has
/// settled and passed validation again.
async fn open_current(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let mut identity = identity_now(build, Stage::Upload).await?;
    if !identity.same_content(&build.identity) {
        identity = follow_changed_file(ctx, build, Stage::Upload, identity).await?;
        revalidate(build).await?;
    }
    open_upload(ctx, build, identity).await
}

/// Whether the recorded version is still there, an open draft and
/// labelled for this build. A 404 means PatchKit no longer has it.
pub(super) async fn version_is_ours(
    ctx: &StageCtx,
    build: &Build,
    version_id: u64,
) -> Result<bool, StepError> {
    match ctx.client.get_version(&build.app_secret, version_id).await {
        Ok(v) => Ok(v
            .is_open_draft()
            .map_err(|m| missing(Endpoint::GetVersion, m))?
            && v.label == build.label),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn lose_version(
    ctx: &StageCtx,
    build: &Build,
    version_id: u64,
) -> Result<Build, StepError> {
    tracing::warn!(
        build = %build.id, version = version_id,
        "the recorded version is no longer this build's draft; finding or creating one again"
    );
    advance(ctx, build, build.state.version_lost()).await
}

/// Creates an upload for the file as it is now and records it.
async fn open_upload(
    ctx: &StageCtx,
    build: &Build,
    identity: FileIdentity,
) -> Result<Build, StepError> {
    let upload_id = ctx.client.create_upload(identity.size).await?;
    crate::crashpoint::hit("after-create-upload");
    tracing::debug!(build = %build.id, upload = upload_id.0, bytes = identity.size, "upload opened");
    let chunk_size = ctx.chunk_size;
    let size = identity.size;
    advance(
        ctx,
        build,
        build
            .state
            .upload_started(upload_id.0, size, chunk_size, identity),
    )
    .await
}

/// Sends the chunks from the acknowledged offset to the end.
async fn send(ctx: &StageCtx, build: &Build) -> Result<Build, StepError> {
    let BuildState::Uploading {
        upload_id,
        acknowledged,
        total,
        chunk_size,
        identity,
        ..
    } = &build.state
    else {
        return Ok(build.clone());
    };
    let now = identity_now(build, Stage::Upload).await?;
    if !now.same_content(identity) {
        let changed = follow_changed_file(ctx, build, Stage::Upload, now).await?;
        revalidate(build).await?;
        return open_upload(ctx, build, changed).await;
    }
    if acknowledged == total {
        return advance(ctx, build, build.state.uploaded()).await;
    }
    if *acknowledged > 0 {
        tracing::info!(
            build = %build.id, upload = upload_id, from = acknowledged, total,
            "resuming upload"
        );
    }
    let request = UploadRequest {
        upload_id: UploadId(*upload_id),
        path: build.file.clone(),
        total_size: *total,
        start_offset: *acknowledged,
        chunk_size: NonZeroU64::new(*chunk_size).unwrap_or(NonZeroU64::MIN),
    };
    // Size, mtime and inode miss a file rewritten in place with its size
    // and mtime put back (`cp -p` over it, `rsync --inplace -t`); its
    // change time (ctime) moves on any write.
    let changed_at = status_changed_ns(&build.file).await;
    let mut sink = StoreAck {
        ctx: ctx.clone(),
        build: build.clone(),
        started: Instant::now(),
        started_at: *acknowledged,
        last_log: Instant::now(),
    };
    let result = ctx
        .client
        .upload_file(&request, &mut sink, &ctx.cancel)
        .await;
    let latest = sink.build;
    match result {
        Ok(()) => {}
        Err(UploadError::Api(e)) if e.kind() == ErrorKind::NotFound => {
            // PatchKit forgot the upload (expired, or PatchKit's state was
            // restored): it may have forgotten the version too, and then
            // the upload would be for nothing.
            if let Some(version_id) = latest.state.version_id()
                && !version_is_ours(ctx, &latest, version_id).await?
            {
                return lose_version(ctx, &latest, version_id).await;
            }
            tracing::warn!(build = %build.id, error = %e, "the upload is gone; starting a new one");
            return open_upload(ctx, &latest, identity.clone()).await;
        }
        // The size changed under the reader: the identity check above sorts
        // it out on the next pass.
        Err(UploadError::FileChanged { .. }) => return Ok(latest),
        Err(e) => return Err(e.into()),
    }
    // A file rewritten in place during the upload keeps its size but not
    // its mtime: what was sent may mix two builds, so send it again.
    let after = identity_now(&latest, Stage::Upload).await?;
    if !after.same_content(identity) {
        tracing::warn!(build = %build.id, "the file changed during the upload; uploading it again");
        return Ok(latest);
    }
    if status_changed_ns(&latest.file).await != changed_at {
        tracing::warn!(
            build = %build.id, file = %build.file.display(),
            "the file was rewritten during the upload with its size and modification time put \
             back (its change time moved): what was sent may mix two builds, so the file as it \
             is now is checked and uploaded again"
        );
        revalidate(&latest).await?;
        return open_upload(ctx, &latest, after).await;
    }
    advance(ctx, &latest, latest.state.uploaded()).await
}

/// The file's status change time (ctime), nanoseconds since the Unix
/// epoch: it moves on every write, whatever the writer does to the mtime.
/// `None` where it cannot be read (the checks around it then decide).
async fn status_changed_ns(path: &std::path::Path) -> Option<i128> {
    use std::os::unix::fs::MetadataExt;
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some(i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()))
}

/// Validates the ZIP again after the file changed.
async fn revalidate(build: &Build) -> Result<(), StepError> {
    let path = build.file.clone();
    tokio::task::spawn_blocking(move || archive::validate(&path))
        .await
        .map_err(|e| StepError::Io(format!("validation task failed: {e}")))?
        .map_err(|e| StepError::fail(Stage::Upload, e.to_string()))?;
    Ok(())
}

/// Writes every acknowledged offset to the store, while the next chunk is
/// on the wire; the upload ends only after the last one is written.
struct StoreAck {
    ctx: StageCtx,
    /// The build as last written.
    build: Build,
    started: Instant,
    started_at: u64,
    last_log: Instant,
}

impl AckSink for StoreAck {
    async fn acknowledged(&mut self, offset: u64) -> Result<(), BoxError> {
        crate::crashpoint::hit("before-ack-write");
        let before = match self.build.state {
            BuildState::Uploading { acknowledged, .. } => acknowledged,
            _ => offset,
        };
        let next = self.build.state.chunk_acknowledged(offset)?;
        self.build = self
            .ctx
            .store
            .transition(self.build.id, &self.build.state, next)
            .await?;
        if let BuildState::Uploading { total, .. } = self.build.state {
            self.ctx.observer.upload_progress(
                self.build.id,
                offset,
                total,
                offset - self.started_at,
                self.started.elapsed(),
                offset - before,
            );
        }
        if self.last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            self.last_log = Instant::now();
            log_progress(&self.build, offset, self.started, self.started_at);
        }
        Ok(())
    }
}

fn log_progress(build: &Build, offset: u64, started: Instant, started_at: u64) {
    let BuildState::Uploading { total, .. } = build.state else {
        return;
    };
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = (offset - started_at) as f64 / secs;
    let percent = offset as f64 * 100.0 / total.max(1) as f64;
    let eta = if rate > 0.0 {
        format!("{:.0}s", (total - offset) as f64 / rate)
    } else {
        "unknown".into()
    };
    tracing::info!(
        build = %build.id, rule = %build.rule, label = %build.label,
        "uploading: {percent:.0}%, {:.1} MiB/s, ETA {eta}",
        rate / (1024.0 * 1024.0)
    );
}
