//! The one way a build enters the store: [`enqueue`], with the rule and the
//! identity the watcher settled and checked. The daemon calls it for every
//! watcher candidate; tests call [`enqueue_file`].
//!
//! It renders the rule's label and changelog and records the build as
//! `Queued`, unless the same file (path, size, mtime) was recorded before,
//! at any time: a file is enqueued once. Which names a rule takes is the
//! watcher's decision (`Rule::takes`), made before a file gets here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{Changelog, Rule};
use crate::state::{FileIdentity, Stage};
use crate::store::{Enqueued, NewBuild, Store, StoreError};
use crate::template::{TemplateValues, captures};

/// A changelog file larger than this is refused: it is surely not a
/// changelog (a build log dropped under the wrong name, say).
const MAX_CHANGELOG_BYTES: u64 = 256 * 1024;

/// Why a file could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{} does not match filename_regex of rule {rule:?}, so it is not taken; rename it or \
         change the rule",
        path.display()
    )]
    NoMatch { path: PathBuf, rule: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Records a settled file as a build of `rule`, with the identity the
/// watcher settled and checked. Returns the build, or the id of the build
/// that already has this file.
pub async fn enqueue(
    store: &Store,
    rule: &Rule,
    identity: &FileIdentity,
) -> Result<Enqueued, IntakeError> {
    if let Some(existing) = store.find_by_identity(identity)? {
        return Ok(Enqueued::Existing(existing));
    }
    let path = identity.path.as_path();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let caps = match &rule.names.regex {
        None => BTreeMap::new(),
        Some(re) => captures(re, &file_name).ok_or_else(|| IntakeError::NoMatch {
            path: path.to_owned(),
            rule: rule.name.clone(),
        })?,
    };
    let needs_seq = rule.label.uses_seq()
        || matches!(&rule.changelog, Changelog::Inline(t) | Changelog::Sidecar(t) if t.uses_seq());
    let seq = if needs_seq {
        Some(store.next_seq(&rule.name).await?)
    } else {
        None
    };
    let values = TemplateValues::new(&file_name, SystemTime::now(), seq, caps);
    let label = rule.label.render(&values).trim().to_owned();
    let changelog = match &rule.changelog {
        Changelog::None => None,
        Changelog::Inline(t) => Some(t.render(&values)),
        Changelog::Sidecar(t) => read_sidecar(path, &t.render(&values)).await,
    };
    let new = NewBuild {
        rule: rule.name.clone(),
        app_secret: rule.app_secret.clone(),
        file: path.to_owned(),
        identity: identity.clone(),
        label: label.clone(),
        changelog,
        publish: rule.publish,
    };
    let enqueued = store.enqueue(new).await?;
    if let Enqueued::New(build) = &enqueued {
        tracing::info!(
            build = %build.id, rule = %rule.name, label = %build.label,
            file = %path.display(), "build taken"
        );
        if label.is_empty() {
            let reason = format!(
                "the label template {:?} of rule {:?} renders empty for {file_name}; change the \
                 template (e.g. \"{{stem}}\") or the file name, then drop the file again",
                rule.label.source(),
                rule.name
            );
            let failed = build
                .state
                .failed(Stage::Validate, reason, 1)
                .expect("a queued build can fail");
            let build = store.transition(build.id, &build.state, failed).await?;
            return Ok(Enqueued::New(Box::new(build)));
        }
    }
    Ok(enqueued)
}

/// Records the file at `path` as it is now: for callers that have no
/// watcher (tests, tools). The daemon takes files only through the watcher.
pub async fn enqueue_file(
    store: &Store,
    rule: &Rule,
    path: &Path,
) -> Result<Enqueued, IntakeError> {
    let io = |source| IntakeError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(io)?;
    if !meta.is_file() {
        return Err(IntakeError::NotAFile {
            path: path.to_owned(),
        });
    }
    enqueue(store, rule, &FileIdentity::from_metadata(path, &meta)).await
}

/// Reads the changelog file next to the ZIP. A missing or unreadable one
/// leaves the version without a changelog, with a warning: the build itself
/// is fine.
async fn read_sidecar(zip: &Path, name: &str) -> Option<String> {
    let path = zip.parent().unwrap_or(Path::new(".")).join(name);
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.len() > MAX_CHANGELOG_BYTES => {
            tracing::warn!(
                file = %path.display(),
                "the changelog file is larger than {MAX_CHANGELOG_BYTES} bytes; publishing without a changelog"
            );
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(
                file = %path.display(), error = %e,
                "no changelog file next to the build; publishing without a changelog"
            );
            return None;
        }
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim_end().to_owned()),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the changelog file");
            None
        }
    }
}
