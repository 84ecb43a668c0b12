//! The rule folders: whether each is there, how it is watched (one inotify
//! instance for every inotify rule, a poll watcher per polled rule), and
//! what to say when a folder goes missing, comes back, or cannot be
//! watched.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use notify::{PollWatcher, RecursiveMode, Watcher as _};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::engine::{Engine, Flow, FolderState, MIN_RESCAN, Mode, Source, handler};
use super::{FALLBACK_POLL, FOLDER_RETRY, WatchEvent};

impl Engine {
    /// Records what a folder check found, reporting a folder that went
    /// missing or came back.
    pub(super) async fn apply_folder(&mut self, name: &str, state: io::Result<(u64, u64)>) -> Flow {
        let Some(rule) = self.rules.get_mut(name) else {
            return Ok(());
        };
        let folder = rule.spec.folder.clone();
        match (rule.folder, state) {
            (FolderState::Present(old), Ok(id)) if old == id => Ok(()),
            (FolderState::Present(_), Ok(id)) => {
                info!(rule = name, folder = %folder.display(), "rule folder was replaced; watching the new one");
                rule.folder = FolderState::Present(id);
                rule.poller = None;
                self.unwatch_inotify(&folder);
                Ok(())
            }
            (FolderState::Unknown, Ok(id)) => {
                rule.folder = FolderState::Present(id);
                Ok(())
            }
            (FolderState::Missing, Ok(id)) => {
                info!(rule = name, folder = %folder.display(), "rule folder is back; watching it again");
                rule.folder = FolderState::Present(id);
                self.emit(WatchEvent::FolderBack {
                    rule: name.to_owned(),
                    folder,
                })
                .await
            }
            (FolderState::Missing, Err(_)) => Ok(()),
            (FolderState::Unknown | FolderState::Present(_), Err(err)) => {
                warn!(
                    rule = name,
                    folder = %folder.display(),
                    "rule folder is missing ({err}); create or mount it. Looking for it again every {}",
                    humantime::format_duration(FOLDER_RETRY)
                );
                rule.folder = FolderState::Missing;
                rule.poller = None;
                self.forget_pending(name).await?;
                self.emit(WatchEvent::FolderMissing {
                    rule: name.to_owned(),
                    folder,
                })
                .await
            }
        }
    }

    pub(super) fn unwatch_inotify(&mut self, folder: &Path) {
        if self.inotify_folders.remove(folder).is_some() {
            // Fails when the kernel already dropped the watch (the folder
            // was deleted); either way it is gone.
            let _ = self.inotify.unwatch(folder);
        }
    }

    /// Makes the notify watches match the rules: one inotify watch per
    /// present folder in inotify mode, one poll watcher per present rule
    /// in poll mode.
    pub(super) async fn reconcile_watches(&mut self) -> Flow {
        if self.opts.drain {
            // `--once` reads the folders; it does not watch them.
            return Ok(());
        }
        let mut wanted: HashMap<PathBuf, RecursiveMode> = HashMap::new();
        for rule in self.rules.values() {
            if rule.present() && rule.mode == Mode::Inotify {
                let mode = wanted
                    .entry(rule.spec.folder.clone())
                    .or_insert(RecursiveMode::NonRecursive);
                if rule.spec.recursive {
                    *mode = RecursiveMode::Recursive;
                }
            }
        }
        let stale: Vec<PathBuf> = self
            .inotify_folders
            .iter()
            .filter(|(folder, mode)| wanted.get(*folder) != Some(*mode))
            .map(|(folder, _)| folder.clone())
            .collect();
        for folder in stale {
            self.unwatch_inotify(&folder);
        }
        for (folder, mode) in wanted {
            if self.inotify_folders.contains_key(&folder) {
                continue;
            }
            match self.inotify.watch(&folder, mode) {
                Ok(()) => {
                    debug!(folder = %folder.display(), ?mode, "inotify watch added");
                    self.inotify_folders.insert(folder.clone(), mode);
                    for rule in self.rules.values_mut() {
                        if rule.spec.folder == folder {
                            rule.last_error = None;
                        }
                    }
                }
                Err(err) => self.watch_failed(&folder, err).await?,
            }
        }
        for (name, rule) in self.rules.iter_mut() {
            match (rule.mode, rule.present(), rule.poller.is_some()) {
                (Mode::Poll(interval), true, false) => {
                    let config = notify::Config::default().with_poll_interval(interval);
                    let source = Source::Poll(name.clone());
                    match PollWatcher::new(handler(self.fs_tx.clone(), source), config) {
                        Ok(mut poller) => {
                            let mode = if rule.spec.recursive {
                                RecursiveMode::Recursive
                            } else {
                                RecursiveMode::NonRecursive
                            };
                            // A poll watcher reports a failure to read the
                            // folder through its handler, not here.
                            let _ = poller.watch(&rule.spec.folder, mode);
                            debug!(rule = %name, interval = ?interval, "polling rule folder");
                            rule.poller = Some(poller);
                        }
                        Err(err) => warn!(rule = %name, "cannot start the poll watcher: {err}"),
                    }
                }
                (_, false, true) | (Mode::Inotify, _, true) => rule.poller = None,
                _ => {}
            }
        }
        Ok(())
    }

    /// Handles a failed inotify watch: the watch limit moves the folder's
    /// rules to polling; a vanished folder is reported missing; anything
    /// else is reported and retried on the next rescan.
    pub(super) async fn watch_failed(&mut self, folder: &Path, err: notify::Error) -> Flow {
        let names: Vec<String> = self
            .rules
            .iter()
            .filter(|(_, rule)| rule.spec.folder == folder && rule.mode == Mode::Inotify)
            .map(|(name, _)| name.clone())
            .collect();
        match err.kind {
            notify::ErrorKind::MaxFilesWatch => {
                // A recursive watch may have been half added.
                let _ = self.inotify.unwatch(folder);
                for name in names {
                    self.fall_back_to_polling(&name).await?;
                }
                Ok(())
            }
            notify::ErrorKind::PathNotFound => {
                for name in names {
                    let gone = io::Error::from(io::ErrorKind::NotFound);
                    self.apply_folder(&name, Err(gone)).await?;
                }
                Ok(())
            }
            _ => {
                for name in names {
                    let message = format!(
                        "cannot watch {}: {err}; new files are found only by the rescan every {} \
                         until this is fixed",
                        folder.display(),
                        humantime::format_duration(self.opts.rescan.max(MIN_RESCAN)),
                    );
                    self.report_error(&name, message).await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn fall_back_to_polling(&mut self, name: &str) -> Flow {
        let Some(rule) = self.rules.get_mut(name) else {
            return Ok(());
        };
        if rule.mode != Mode::Inotify {
            return Ok(());
        }
        rule.mode = Mode::Poll(FALLBACK_POLL);
        let message = format!(
            "cannot watch {}: the inotify watch limit is reached; raise the \
             `fs.inotify.max_user_watches` sysctl (e.g. `sysctl fs.inotify.max_user_watches=524288`, \
             and persist it in /etc/sysctl.d/). Polling this folder every {} meanwhile",
            rule.spec.folder.display(),
            humantime::format_duration(FALLBACK_POLL),
        );
        self.report_error(name, message).await
    }

    pub(super) async fn report_error(&mut self, name: &str, message: String) -> Flow {
        let Some(rule) = self.rules.get_mut(name) else {
            return Ok(());
        };
        if rule.last_error.as_deref() == Some(message.as_str()) {
            return Ok(());
        }
        warn!(rule = name, "{message}");
        rule.last_error = Some(message.clone());
        self.emit(WatchEvent::Error {
            rule: name.to_owned(),
            message,
        })
        .await
    }

    pub(super) fn refresh_retry(&mut self) {
        let any_missing = self
            .rules
            .values()
            .any(|rule| rule.folder == FolderState::Missing);
        self.retry_at = match (any_missing, self.retry_at) {
            (false, _) => None,
            (true, None) => Some(Instant::now() + FOLDER_RETRY),
            (true, at) => at,
        };
    }
}

/// The (device, inode) of a folder, or why it is not a usable folder.
pub(super) fn folder_identity(folder: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(folder)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        Ok((0, 0))
    }
}
