//! What happens to a build file once its build is over: kept, deleted or
//! moved after publishing; kept or moved (with `<file>.error.txt` beside it)
//! after a failure.
//!
//! A file is only touched while it is still the file the build took (same
//! size and modification time): a newer build dropped at the same path is
//! never deleted or moved by an older build's ending. Disposal runs after
//! the build's final state is stored, and again at startup for builds whose
//! disposal a crash interrupted, so it is written to be repeated.

use std::path::{Path, PathBuf};

use crate::config::{AfterPublish, OnFailure, Rule};
use crate::state::{BuildState, FileIdentity};
use crate::store::Build;

/// Applies the rule's disposal to a finished build's file.
pub async fn finished(rule: &Rule, build: &Build) {
    let target = match (&build.state, &rule.after_publish, &rule.on_failure) {
        (BuildState::Published { .. } | BuildState::Scheduled { .. }, AfterPublish::Keep, _) => {
            return;
        }
        (BuildState::Published { .. } | BuildState::Scheduled { .. }, AfterPublish::Delete, _) => {
            None
        }
        (BuildState::Published { .. } | BuildState::Scheduled { .. }, AfterPublish::Move(d), _) => {
            Some(d.clone())
        }
        (BuildState::Failed { .. }, _, OnFailure::Move(d)) => Some(d.clone()),
        _ => return,
    };
    if !still_the_same(&build.identity).await {
        return;
    }
    let result = match target {
        None => tokio::fs::remove_file(&build.file).await.map(|()| None),
        Some(dir) => move_into(&build.file, &dir).await.map(Some),
    };
    match result {
        Ok(None) => {
            tracing::info!(build = %build.id, file = %build.file.display(), "deleted the published file")
        }
        Ok(Some(moved)) => {
            tracing::info!(build = %build.id, to = %moved.display(), "moved the build file");
            if let BuildState::Failed { .. } = build.state {
                write_error_note(build, &moved).await;
            }
        }
        Err(err) => tracing::error!(
            build = %build.id, file = %build.file.display(),
            "cannot move or delete the build file: {err}; check the folder permissions \
             (under systemd, ReadWritePaths= must include the folders)"
        ),
    }
}

async fn still_the_same(identity: &FileIdentity) -> bool {
    match tokio::fs::metadata(&identity.path).await {
        Ok(meta) => FileIdentity::from_metadata(&identity.path, &meta).same_content(identity),
        Err(_) => false,
    }
}

/// Moves `file` into `dir` (created if needed) under a free name, copying
/// across file systems when a rename cannot.
async fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut target = dir.join(&name);
    let mut n = 1;
    while tokio::fs::try_exists(&target).await.unwrap_or(false) {
        target = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    match tokio::fs::rename(file, &target).await {
        Ok(()) => Ok(target),
        // EXDEV: another file system. Copy under a temporary name (an
        // interrupted copy never looks like the build), rename, then remove
        // the original.
        Err(e) if e.raw_os_error() == Some(18) => {
            let mut partial = target.as_os_str().to_owned();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            tokio::fs::copy(file, &partial).await?;
            tokio::fs::rename(&partial, &target).await?;
            tokio::fs::remove_file(file).await?;
            Ok(target)
        }
        Err(e) => Err(e),
    }
}

async fn write_error_note(build: &Build, moved: &Path) {
    let BuildState::Failed {
        stage,
        reason,
        version_id,
        ..
    } = &build.state
    else {
        return;
    };
    let version = match version_id {
        Some(v) => format!("{v} (still a draft on PatchKit; the next build of this app reuses it)"),
        None => "none created".into(),
    };
    let note = format!(
        "patchkit-autopublish could not publish this build.\n\n\
         File:     {file}\n\
         Rule:     {rule}\n\
         Build:    {id}\n\
         Label:    {label}\n\
         Stage:    {stage}\n\
         Version:  {version}\n\n\
         Why:\n{reason}\n\n\
         What to do:\n\
         Fix the cause above, then drop the fixed build into the rule folder again.\n\
         To publish this same file after fixing something outside it (the API key, the\n\
         app's draft), move it back to {file} and run:\n    \
         patchkit-autopublish retry {id}\n",
        file = build.file.display(),
        rule = build.rule,
        id = build.id,
        label = build.label,
    );
    let mut note_path = moved.as_os_str().to_owned();
    note_path.push(".error.txt");
    if let Err(err) = tokio::fs::write(&note_path, note).await {
        tracing::error!(file = %PathBuf::from(&note_path).display(), "cannot write the error note: {err}");
    }
}
