//! `store recover`: makes a damaged build store usable again without
//! publishing anything twice.
//!
//! A store refused at start (it lost records, or sled cannot read it) is
//! kept as far as it can be read; one that cannot be opened at all is moved
//! aside (`db.damaged-<unix time>`) and started afresh. Then everything the
//! store can no longer vouch for is marked failed, with the reason, and its
//! file is left where it is:
//! - its unfinished builds, which may have gone further on PatchKit than the
//!   surviving records say;
//! - every file in the rule folders the store does not know, which may have
//!   been published under a record that was lost.
//!
//! An operator checks PatchKit and runs `retry ID` for what was not
//! published. Owns no pipeline logic: it uses the store, intake and the
//! watcher's folder scan, and never talks to PatchKit.

use std::path::PathBuf;

use crate::config::Config;
use crate::intake;
use crate::store::{Build, Enqueued, OpenOptions, Store, StoreError};
use crate::watcher::Take;

/// What `store recover` did.
#[derive(Debug, Default)]
pub struct Report {
    /// Why the store needed recovering; `None` when it did not.
    pub damage: Option<String>,
    /// Where the unreadable database was moved, if it was.
    pub moved_aside: Option<PathBuf>,
    /// Records kept as they were.
    pub kept: usize,
    /// Unfinished builds marked failed.
    pub unfinished: Vec<Build>,
    /// Files in the rule folders the store did not know, recorded as failed.
    pub unknown_files: Vec<Build>,
}

/// Why recovery could not run.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    // The causes are in the messages and not `source`s, so `main`'s
    // `{:#}` says each once.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot move the damaged store {} aside: {cause}", path.display())]
    MoveAside {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Recovers the store of `config`'s state directory. The daemon must be
/// stopped (the store's lock says so if not).
pub async fn recover(config: &Config) -> Result<Report, RecoverError> {
    let dir = config.daemon.state_dir.clone();
    let mut report = Report::default();
    let store = match open(&dir, false).await {
        Ok(_) => return Ok(report),
        Err(StoreError::RolledBack {
            found, expected, ..
        }) => {
            report.damage = Some(format!(
                "the store holds {found}, its watermark says {expected}"
            ));
            open(&dir, true).await?
        }
        Err(err @ (StoreError::Unreadable { .. } | StoreError::Corrupt { .. })) => {
            report.damage = Some(err.to_string());
            let db = dir.join("db");
            let aside = dir.join(format!("db.damaged-{}", crate::clock::now_ms() / 1000));
            std::fs::rename(&db, &aside).map_err(|cause| RecoverError::MoveAside {
                path: db.clone(),
                cause,
            })?;
            report.moved_aside = Some(aside);
            open(&dir, true).await?
        }
        Err(err) => return Err(err.into()),
    };
    report.kept = store.len();

    for build in store.unfinished()? {
        let reason = format!(
            "the build store was recovered after losing records, and this build may have gone \
             further on PatchKit than its record says: check the app's versions, then `retry {}` \
             if it was not published",
            build.id
        );
        report.unfinished.push(fail(&store, &build, reason).await?);
    }

    for rule in &config.rules {
        let spec = rule.watch_spec();
        let files = tokio::task::spawn_blocking(move || crate::watcher::scan_folder(&spec))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let files = match files {
            Ok(files) => files,
            Err(err) => {
                tracing::warn!(
                    rule = %rule.name, folder = %rule.folder.display(),
                    "cannot read the rule folder: {err}"
                );
                continue;
            }
        };
        let taken = files
            .into_iter()
            .filter(|(_, take)| *take == Take::Yes)
            .map(|(identity, _)| identity);
        for identity in taken {
            match intake::enqueue(&store, rule, &identity).await {
                Ok(Enqueued::New(build)) => {
                    let reason = format!(
                        "found by store recover: the damaged store may have published this file \
                         already; check the app's versions on PatchKit, then `retry {}` to \
                         publish it",
                        build.id
                    );
                    report
                        .unknown_files
                        .push(fail(&store, &build, reason).await?);
                }
                Ok(Enqueued::Existing(_)) => {}
                Err(err) => tracing::warn!(rule = %rule.name, "{err}"),
            }
        }
    }
    store.flush().await?;
    Ok(report)
}

/// Marks a build failed and its file as dealt with, so the daemon leaves
/// the file where it is for the operator to look at.
async fn fail(store: &Store, build: &Build, reason: String) -> Result<Build, StoreError> {
    let stage = build.state.stage();
    let next = build
        .state
        .failed(stage, reason, build.attempts)
        .map_err(|e| StoreError::Corrupt {
            key: format!("build {}", build.id),
            reason: e.to_string(),
        })?;
    let failed = store.transition(build.id, &build.state, next).await?;
    store.mark_disposed(failed.id, failed.updated_at)?;
    Ok(failed)
}

async fn open(dir: &std::path::Path, accept_rollback: bool) -> Result<Store, StoreError> {
    let dir = dir.to_path_buf();
    let options = OpenOptions {
        accept_rollback,
        ..OpenOptions::default()
    };
    tokio::task::spawn_blocking(move || Store::open_with(dir, &options))
        .await
        .expect("the store open task does not panic")
}

impl Report {
    /// The lines `store recover` prints.
    pub fn lines(&self) -> Vec<String> {
        let Some(damage) = &self.damage else {
            return vec![
                "the build store is consistent with its watermark: nothing to recover".into(),
            ];
        };
        let mut out = vec![format!("damage found: {damage}")];
        if let Some(aside) = &self.moved_aside {
            out.push(format!(
                "the unreadable database was moved to {} (keep it for a post-mortem, or delete it)",
                aside.display()
            ));
        }
        out.push(format!("{} record(s) kept as they were", self.kept));
        let line = |b: &Build| {
            format!(
                "  build {} ({}, {}): failed, file left at {}",
                b.id,
                b.rule,
                b.label,
                b.file.display()
            )
        };
        out.push(format!(
            "{} unfinished build(s) marked failed",
            self.unfinished.len()
        ));
        out.extend(self.unfinished.iter().map(line));
        out.push(format!(
            "{} file(s) in the rule folders the store did not know, recorded as failed",
            self.unknown_files.len()
        ));
        out.extend(self.unknown_files.iter().map(line));
        if !self.unfinished.is_empty() || !self.unknown_files.is_empty() {
            out.push(
                "check each on PatchKit; `patchkit-autopublish retry ID` publishes one that is \
                 not there yet"
                    .into(),
            );
        }
        out.push("the daemon can start again".into());
        out
    }
}
