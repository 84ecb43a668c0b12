//! Settling: each file the rules take is followed by a timer until it has
//! kept the same identity for its rule's `settle` with no event in between,
//! then its ZIP is checked and it is emitted, once per identity.
//!
//! A file that looks like an unfinished copy (empty, or a ZIP whose end is
//! missing) gets [`super::unfinished_grace`] more before it is emitted as
//! invalid; an event on it in the meantime puts it back on the normal
//! timer. Files settled in one batch are emitted in arrival order.

use std::io;
use std::path::{Path, PathBuf};

use tokio::time::Instant;
use tracing::{debug, error, info};

use super::Take;
use super::engine::{Engine, Flow, Key, TimerKey, blocking};
use super::scan::{Place, place};
use super::{Candidate, WatchEvent, unfinished_grace};
use crate::archive::{self, ArchiveError, ArchiveSummary};
use crate::clock::now_ms;
use crate::state::{Arrival, FileIdentity};

/// A file the settle timer is following.
#[derive(Debug)]
pub(super) struct Pending {
    /// What the last check saw; `None` until the first check.
    pub(super) seen: Option<FileIdentity>,
    /// An event arrived since the last check.
    pub(super) touched: bool,
    /// This entry's slot in `Engine::timers`.
    pub(super) timer: TimerKey,
    /// When the watcher first saw the file, Unix ms.
    pub(super) first_seen: u64,
    /// It looked like an unfinished copy at its last check and waits out
    /// the grace period.
    pub(super) unfinished: bool,
    /// The modification time last announced in `WatchEvent::Settling`.
    pub(super) announced: Option<i128>,
}

/// What a settle check found.
enum FileCheck {
    Gone,
    NotAFile {
        folder: bool,
    },
    Unreadable(io::Error),
    /// Different from the last check (or first seen, or an event came in
    /// between): wait another settle period.
    Changed(FileIdentity),
    /// Unchanged for the settle period; the ZIP check's verdict, and the
    /// path as the file system resolves it.
    Settled(
        FileIdentity,
        Box<Result<ArchiveSummary, ArchiveError>>,
        Option<PathBuf>,
    ),
}

impl Engine {
    /// A scan saw a file the rule takes: follow it unless it was already
    /// emitted as is. Returns the `Settling` event to send for a new one.
    pub(super) fn seen_by_scan(
        &mut self,
        rule: &str,
        identity: FileIdentity,
        due: Instant,
    ) -> Option<WatchEvent> {
        let key = (rule.to_owned(), identity.path.clone());
        if let Some(pending) = self.pending.get_mut(&key) {
            if !pending
                .seen
                .as_ref()
                .is_some_and(|seen| seen.same_content(&identity))
            {
                pending.touched = true;
            }
            return None;
        }
        if self.emitted.contains(&(key.0.clone(), identity.clone())) {
            return None;
        }
        debug!(rule, path = %key.1.display(), "scan found a file to settle");
        let timer = self.arm(key.clone(), due);
        let first_seen = now_ms();
        let arrival = Arrival {
            mtime_ns: identity.mtime_ns,
            seen_at: first_seen,
        };
        self.pending.insert(
            key.clone(),
            Pending {
                announced: Some(identity.mtime_ns),
                seen: Some(identity),
                touched: false,
                timer,
                first_seen,
                unfinished: false,
            },
        );
        Some(WatchEvent::Settling {
            rule: key.0,
            path: key.1,
            arrival,
        })
    }

    /// An event on a file the rule takes: start following it, or note that
    /// it changed.
    pub(super) fn nudged(&mut self, key: Key, now: Instant) {
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.touched = true;
            if pending.unfinished {
                // The copy goes on: back to the normal settle timer.
                pending.unfinished = false;
                let old = pending.timer;
                self.timers.remove(&old);
                let due = now + self.settle_of(&key.0);
                let timer = self.arm(key.clone(), due);
                if let Some(pending) = self.pending.get_mut(&key) {
                    pending.timer = timer;
                }
            }
            return;
        }
        debug!(rule = %key.0, path = %key.1.display(), "file event; settling");
        let timer = self.arm(key.clone(), now);
        self.pending.insert(
            key,
            Pending {
                seen: None,
                touched: false,
                timer,
                first_seen: now_ms(),
                unfinished: false,
                announced: None,
            },
        );
    }

    pub(super) fn arm(&mut self, key: Key, due: Instant) -> TimerKey {
        let timer = (due, self.next_timer_id);
        self.next_timer_id += 1;
        self.timers.insert(timer, key);
        timer
    }

    /// Stops following every file of a rule (it was removed or changed, or
    /// its folder went missing), telling the daemon.
    pub(super) async fn forget_pending(&mut self, rule: &str) -> Flow {
        let keys: Vec<Key> = self
            .pending
            .keys()
            .filter(|(name, _)| name == rule)
            .cloned()
            .collect();
        for key in keys {
            if let Some(pending) = self.pending.remove(&key) {
                self.timers.remove(&pending.timer);
            }
            self.emit(WatchEvent::Abandoned {
                rule: key.0,
                path: key.1,
            })
            .await?;
        }
        Ok(())
    }

    /// Checks every file whose settle timer is due, in one blocking batch.
    pub(super) async fn check_due(&mut self) -> Flow {
        let now = Instant::now();
        let mut jobs = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(pending) = self.pending.get(&key) {
                let stable = if pending.touched {
                    None
                } else {
                    pending.seen.clone()
                };
                jobs.push((key, stable));
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let outcomes = blocking(move || {
            jobs.into_iter()
                .map(|(key, stable)| {
                    let outcome = check_file(&key.1, stable.as_ref());
                    (key, outcome)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let now = Instant::now();
        let mut settled = Vec::new();
        for (key, outcome) in outcomes {
            match outcome {
                FileCheck::Gone => {
                    debug!(rule = %key.0, path = %key.1.display(), "file went away before settling");
                    self.let_go(key).await?;
                }
                FileCheck::NotAFile { folder } => {
                    if folder && self.rules.get(&key.0).is_some_and(|r| r.spec.recursive) {
                        self.scan_soon.insert(key.0.clone());
                    }
                    self.let_go(key).await?;
                }
                FileCheck::Unreadable(err) => {
                    debug!(rule = %key.0, path = %key.1.display(), "cannot stat file: {err}");
                    self.let_go(key).await?;
                }
                FileCheck::Changed(id) => {
                    if self.emitted.contains(&(key.0.clone(), id.clone())) {
                        self.let_go(key).await?;
                        continue;
                    }
                    let due = now + self.settle_of(&key.0);
                    let timer = self.arm(key.clone(), due);
                    let Some(pending) = self.pending.get_mut(&key) else {
                        continue;
                    };
                    let mtime = id.mtime_ns;
                    pending.seen = Some(id);
                    pending.touched = false;
                    pending.unfinished = false;
                    pending.timer = timer;
                    if pending.announced != Some(mtime) {
                        pending.announced = Some(mtime);
                        let arrival = Arrival {
                            mtime_ns: mtime,
                            seen_at: pending.first_seen,
                        };
                        self.emit(WatchEvent::Settling {
                            rule: key.0,
                            path: key.1,
                            arrival,
                        })
                        .await?;
                    }
                }
                FileCheck::Settled(id, verdict, real) => {
                    let looks_unfinished = matches!(
                        *verdict,
                        Err(ArchiveError::Truncated { .. } | ArchiveError::EmptyFile { .. })
                    );
                    let Some(pending) = self.pending.get(&key) else {
                        continue;
                    };
                    if looks_unfinished && !pending.unfinished {
                        let grace = unfinished_grace(self.settle_of(&key.0));
                        info!(
                            rule = %key.0, file = %key.1.display(),
                            "the file looks like an unfinished copy; looking again in {}",
                            humantime::format_duration(grace)
                        );
                        let timer = self.arm(key.clone(), now + grace);
                        if let Some(pending) = self.pending.get_mut(&key) {
                            pending.unfinished = true;
                            pending.timer = timer;
                        }
                        continue;
                    }
                    let arrival = Arrival {
                        mtime_ns: id.mtime_ns,
                        seen_at: pending.first_seen,
                    };
                    self.pending.remove(&key);
                    settled.push((key, id, arrival, verdict, real));
                }
            }
        }
        // Files that settled together go out in arrival order.
        settled.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        for ((rule, path), identity, arrival, verdict, real) in settled {
            let candidate = Candidate {
                rule,
                path,
                identity,
                arrival,
            };
            match real.map(|real| self.also_taken_by(&candidate.rule, &real)) {
                Some(others) if !others.is_empty() => self.refuse_shared(candidate, others).await?,
                _ => self.take(candidate, *verdict).await?,
            }
        }
        Ok(())
    }

    /// The other rules whose folders (as the file system resolves them)
    /// hold `real` and whose names take it.
    fn also_taken_by(&self, rule: &str, real: &Path) -> Vec<String> {
        self.rules
            .iter()
            .filter(|(name, _)| name.as_str() != rule)
            .filter(|(_, other)| {
                let Some(folder) = &other.canonical else {
                    return false;
                };
                let mut spec = other.spec.clone();
                spec.folder = folder.clone();
                matches!(place(&spec, real), Place::Inside(name) if spec.names.takes(name) == Take::Yes)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A file two rules would take (aliased folders, overlapping patterns)
    /// is taken by neither: once per content, the error names them all.
    async fn refuse_shared(&mut self, candidate: Candidate, others: Vec<String>) -> Flow {
        if self
            .emitted
            .insert((candidate.rule.clone(), candidate.identity.clone()))
        {
            error!(
                rule = %candidate.rule,
                "{} is taken by rule {:?} and by rule(s) {:?} (the same folder on disk, or \
                 patterns that both match it); it is not taken at all, so it is never published \
                 twice. Give each rule its own folder, or patterns that cannot match the same \
                 file, and drop the file again",
                candidate.path.display(),
                candidate.rule,
                others
            );
        }
        self.emit(WatchEvent::Abandoned {
            rule: candidate.rule,
            path: candidate.path,
        })
        .await
    }

    /// Stops following a file that was not taken, telling the daemon.
    async fn let_go(&mut self, key: Key) -> Flow {
        if let Some(pending) = self.pending.remove(&key) {
            self.timers.remove(&pending.timer);
        }
        self.emit(WatchEvent::Abandoned {
            rule: key.0,
            path: key.1,
        })
        .await
    }

    async fn take(
        &mut self,
        candidate: Candidate,
        verdict: Result<ArchiveSummary, ArchiveError>,
    ) -> Flow {
        if !self.rules.contains_key(&candidate.rule)
            || !self
                .emitted
                .insert((candidate.rule.clone(), candidate.identity.clone()))
        {
            return self
                .emit(WatchEvent::Abandoned {
                    rule: candidate.rule,
                    path: candidate.path,
                })
                .await;
        }
        let event = match verdict {
            Ok(summary) => {
                debug!(
                    rule = %candidate.rule,
                    path = %candidate.path.display(),
                    size = candidate.identity.size,
                    entries = summary.entries,
                    "build file settled"
                );
                WatchEvent::Candidate(candidate)
            }
            Err(error) => WatchEvent::Invalid { candidate, error },
        };
        self.emit(event).await
    }
}

/// Looks at a file again; `stable` is what the previous check saw if no
/// event arrived since. Blocking.
fn check_file(path: &Path, stable: Option<&FileIdentity>) -> FileCheck {
    let id = match stat_file(path) {
        Ok(id) => id,
        Err(outcome) => return outcome,
    };
    if !stable.is_some_and(|seen| seen.same_content(&id)) {
        return FileCheck::Changed(id);
    }
    let verdict = archive::validate(path);
    // A write that started while the central directory was being read
    // would make the verdict stale.
    match stat_file(path) {
        Ok(after) if after.same_content(&id) => {
            FileCheck::Settled(id, Box::new(verdict), std::fs::canonicalize(path).ok())
        }
        Ok(after) => FileCheck::Changed(after),
        Err(outcome) => outcome,
    }
}

fn stat_file(path: &Path) -> Result<FileIdentity, FileCheck> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(FileIdentity::from_metadata(PathBuf::from(path), &meta)),
        Ok(meta) => Err(FileCheck::NotAFile {
            folder: meta.is_dir(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(FileCheck::Gone),
        Err(err) => Err(FileCheck::Unreadable(err)),
    }
}
