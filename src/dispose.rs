//! What happens to a build file once its build is over: kept, deleted or
//! moved after publishing; kept or moved (with `<file>.error.txt` beside it)
//! after a failure. A retried build's moved file is moved back
//! ([`bring_back`]), and its note goes once it is published.
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
    if matches!(
        build.state,
        BuildState::Published { .. } | BuildState::Scheduled { .. }
    ) {
        // A build published after a retry: the note of its failure is
        // wrong now.
        remove_stale_notes(rule, build).await;
    }
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
            // The copy keeps the build's modification time, so that moving
            // it back (`retry`) gives the file the store knows, not a new
            // build.
            keep_modified(file, &partial).await?;
            tokio::fs::rename(&partial, &target).await?;
            tokio::fs::remove_file(file).await?;
            Ok(target)
        }
        Err(e) => Err(e),
    }
}

/// Gives `copy` the modification time of `original`.
async fn keep_modified(original: &Path, copy: &Path) -> std::io::Result<()> {
    let modified = tokio::fs::metadata(original).await?.modified()?;
    let copy = tokio::fs::OpenOptions::new().write(true).open(copy).await?;
    copy.into_std().await.set_modified(modified)
}

/// Moves a failed build's file back from the rule's `failed_folder` to the
/// path the build took it from, for `retry`, and removes its note. Only the
/// very file the build took is brought back (same size and modification
/// time); nothing is done when the file is already in place, or when
/// something else is there now. Returns where it was found.
pub async fn bring_back(rule: &Rule, build: &Build) -> Option<PathBuf> {
    let OnFailure::Move(dir) = &rule.on_failure else {
        return None;
    };
    if tokio::fs::symlink_metadata(&build.file).await.is_ok() {
        return None;
    }
    let moved = find_moved(dir, build).await?;
    let back = match tokio::fs::rename(&moved, &build.file).await {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            move_into(&moved, build.file.parent().unwrap_or(Path::new("/")))
                .await
                .and_then(|landed| {
                    if landed == build.file {
                        Ok(())
                    } else {
                        Err(std::io::Error::other(format!(
                            "it landed at {} instead",
                            landed.display()
                        )))
                    }
                })
        }
        Err(e) => Err(e),
    };
    match back {
        Ok(()) => {
            remove_note(&moved).await;
            tracing::info!(
                build = %build.id, from = %moved.display(), to = %build.file.display(),
                "moved the failed build's file back for its retry"
            );
            Some(moved)
        }
        Err(err) => {
            tracing::error!(
                build = %build.id, file = %moved.display(),
                "cannot move the failed build's file back to {}: {err}; move it there \
                 yourself (mv keeps its time), the retry then takes it",
                build.file.display()
            );
            None
        }
    }
}

/// The build's file in `dir`, under its own name or the `name.N` a move
/// gave it: the one whose size and modification time are the build's.
async fn find_moved(dir: &Path, build: &Build) -> Option<PathBuf> {
    let name = build.file.file_name()?.to_string_lossy().into_owned();
    let mut n = 0;
    loop {
        let candidate = match n {
            0 => dir.join(&name),
            n => dir.join(format!("{name}.{n}")),
        };
        let Ok(meta) = tokio::fs::metadata(&candidate).await else {
            return None;
        };
        let found = FileIdentity::from_metadata(&candidate, &meta);
        if found.size == build.identity.size && found.mtime_ns == build.identity.mtime_ns {
            return Some(candidate);
        }
        n += 1;
    }
}

/// The note beside a moved file.
fn note_path(moved: &Path) -> PathBuf {
    let mut note = moved.as_os_str().to_owned();
    note.push(".error.txt");
    PathBuf::from(note)
}

async fn remove_note(moved: &Path) {
    let note = note_path(moved);
    match tokio::fs::remove_file(&note).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %note.display(), "cannot remove the error note: {e}"),
    }
}

/// Removes the notes a failure of `build` left in the rule's failed folder
/// (the file was moved back by hand, then retried): each note names its
/// build and file on its first lines, which is how they are recognised.
async fn remove_stale_notes(rule: &Rule, build: &Build) {
    let OnFailure::Move(dir) = &rule.on_failure else {
        return;
    };
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let ours = note_header(build);
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".error.txt") {
            continue;
        }
        let Ok(text) = tokio::fs::read_to_string(&path).await else {
            continue;
        };
        if text.starts_with(&ours) {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => tracing::info!(
                    build = %build.id, file = %path.display(),
                    "removed the error note of the build's earlier failure"
                ),
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cannot remove the error note: {e}")
                }
            }
        }
    }
}

/// The first lines of a build's note: what names the build and its file.
fn note_header(build: &Build) -> String {
    format!(
        "patchkit-autopublish could not publish this build.\n\n\
         File:     {file}\n\
         Rule:     {rule}\n\
         Build:    {id}\n",
        file = shown(&build.file),
        rule = build.rule,
        id = build.id,
    )
}

/// A path as the note shows it: one line, control characters escaped.
fn shown(path: &Path) -> String {
    crate::text::escaped(&path.display().to_string()).into_owned()
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
        "{header}\
         Label:    {label}\n\
         Stage:    {stage}\n\
         Version:  {version}\n\
         Moved to: {moved}\n\n\
         Why:\n{reason}\n\n\
         What to do:\n\
         If the build itself is wrong, fix it and drop the fixed build into the rule\n\
         folder again (it is a new build; this file and note can be deleted).\n\
         If the cause was outside the file (the API key, the app's draft, PatchKit\n\
         being down), fix that and run:\n    \
         patchkit-autopublish retry {id}\n\
         The retry moves this file back to {file} itself\n\
         and deletes this note; once the build is published nothing of it stays here.\n\
         Moving the file back by hand works too, with mv (it keeps the file's time);\n\
         a copy with a new time would be taken as a new build.\n",
        header = note_header(build),
        file = shown(&build.file),
        moved = shown(moved),
        id = build.id,
        label = crate::text::escaped(&build.label),
        reason = crate::text::escaped(reason),
    );
    let note_path = note_path(moved);
    if let Err(err) = tokio::fs::write(&note_path, note).await {
        tracing::error!(file = %note_path.display(), "cannot write the error note: {err}");
    }
}
