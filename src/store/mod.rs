//! The durable store of builds: the only writer of build records.
//!
//! Owns the sled database in `state_dir/db`, its trees and the on-disk record
//! format (`record`). Knows nothing about HTTP, notify or rules: it records
//! what the stages report and answers queries.
//!
//! # Architecture invariants
//! - **One writer.** [`Store::transition`] (and the attempt bookkeeping that
//!   goes through the same compare-and-swap path) is the only code that
//!   changes a build record after it is enqueued. It swaps only from the
//!   state the caller expects, then flushes, then returns: a stage performs
//!   the side effect that depends on a state only after `transition` returned.
//! - **One process.** A state directory is used by one process at a time,
//!   enforced by an exclusive lock on `state_dir/lock` (and sled's own lock on
//!   its files). A second [`Store::open`] fails with [`StoreError::Locked`].
//! - **A file is enqueued once.** The identity index is written in the same
//!   transaction as the record and is never pruned.
//!
//! # Trees
//! - `builds`: build id (8 bytes, big-endian, so key order is arrival order)
//!   -> JSON record `{"v":1,...}` (see `record`).
//! - `by_identity`: `FileIdentity::dedupe_key` -> build id.
//! - `by_app`: app secret (length-prefixed) + build id -> empty, per-app
//!   arrival order.
//! - `meta`: `schema_version` (ASCII decimal), `seq/<rule>` counters
//!   (u64 big-endian) and `disposed/<build id>` (the `updated_at` at which
//!   the build's file was dealt with, so a restart does not do it twice).
//!
//! # Blocking
//! sled works from its page cache, and the records are small and few, so the
//! synchronous calls here (`get`, `list`, `find_by_identity`, ...) return in
//! microseconds and are fine on an async thread; a cold page can mean one
//! disk read. The calls that wait for the disk (`enqueue`, `transition`,
//! `record_attempt`, `clear_attempts`, `next_seq`, `prune_finished`, `flush`)
//! are `async` and wait on sled's flush future. [`Store::open`] blocks (it
//! reads the whole log); call it before the runtime gets busy or from
//! `spawn_blocking`.
//!
//! # Recovery on open
//! Nothing is rewritten on open. Every state is either a fact recorded after
//! its side effect succeeded or an intent recorded before it, and each stage
//! resumes from it: `Validated` looks for a draft with the build's label
//! before creating one; `Uploading` resumes from `acknowledged` after checking
//! the file still matches its identity; `Processing { job_guid: None }` asks
//! the version whether processing started; `Publishing` asks the version
//! whether it is published. Rewriting any of these on load would lose the
//! information the stage needs, so `open` only checks the schema version and
//! logs what is unfinished. Reading the unfinished builds decodes every
//! record, so a record written by a newer release stops the open with
//! [`StoreError::UnsupportedSchema`] instead of being skipped.

mod build;
pub mod record;

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub use build::{Build, BuildId, Enqueued, NewBuild, ParseBuildIdError};

use crate::state::{BuildState, FileIdentity};
use record::{CURRENT_VERSION, decode_build, encode_build};

/// sled's page cache size. The records are a few hundred bytes each; 8 MiB
/// holds tens of thousands of them, far more than a retention window keeps.
const CACHE_CAPACITY: u64 = 8 * 1024 * 1024;

const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
const SEQ_PREFIX: &[u8] = b"seq/";
const DISPOSED_PREFIX: &[u8] = b"disposed/";

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another `Store` in this one) has the directory.
    #[error(
        "state directory {} is in use by another patchkit-autopublish process \
         (lock on {} is held{}); stop it or use another state_dir",
        dir.display(),
        lock.display(),
        holder.map(|pid| format!(" by pid {pid}")).unwrap_or_default()
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The file whose lock is held.
        lock: PathBuf,
        /// The pid recorded by the holder, when known.
        holder: Option<u32>,
    },
    /// The state directory or its lock file could not be used.
    #[error("cannot use {}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record or the database was written by a newer schema than this
    /// binary reads.
    #[error(
        "{key} has schema version {version}, but this patchkit-autopublish reads \
         versions up to {CURRENT_VERSION}; run a newer release with this state_dir"
    )]
    UnsupportedSchema {
        /// What was read (a build id or a meta key).
        key: String,
        /// The version found.
        version: u64,
    },
    /// A stored value could not be read.
    #[error("{key} is corrupt: {reason}")]
    Corrupt {
        /// What was read.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A build could not be encoded (its path is not UTF-8).
    #[error("cannot store build {id}")]
    Encode {
        /// The build.
        id: BuildId,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No build has this id (never had, or it was pruned).
    #[error("build {id} not found")]
    NotFound {
        /// The id asked for.
        id: BuildId,
    },
    /// The build is not in the state the caller expected: someone else moved
    /// it first. Nothing was written.
    #[error("build {id} changed under us: it is now {found}")]
    Conflict {
        /// The build.
        id: BuildId,
        /// The state it is actually in.
        found: Box<BuildState>,
    },
    /// sled failed.
    #[error("database error")]
    Sled(#[from] sled::Error),
}

/// Which builds [`Store::list`] returns. The default is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// `Some(true)`: only terminal builds; `Some(false)`: only unfinished.
    pub finished: Option<bool>,
    /// Only builds of this rule.
    pub rule: Option<String>,
    /// Only builds of this app.
    pub app_secret: Option<String>,
}

impl ListFilter {
    fn matches(&self, b: &Build) -> bool {
        self.finished.is_none_or(|f| b.state.is_terminal() == f)
            && self.rule.as_ref().is_none_or(|r| *r == b.rule)
            && self.app_secret.as_ref().is_none_or(|a| *a == b.app_secret)
    }
}

/// The build store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The database; `builds`, `by_identity`, `by_app` and `meta` are its
    /// trees.
    db: sled::Db,
    /// Build id -> record.
    builds: sled::Tree,
    /// File dedupe key -> build id.
    by_identity: sled::Tree,
    /// App secret + build id -> empty.
    by_app: sled::Tree,
    /// Schema version and counters.
    meta: sled::Tree,
    /// The state directory.
    dir: PathBuf,
    /// Told every record written, after it is flushed: the change feed
    /// that keeps the observer (status, metrics, events) in step with the
    /// store.
    listener: std::sync::RwLock<Option<ChangeListener>>,
    /// Holds the exclusive lock on `state_dir/lock` while the store is open.
    /// Declared last so it is released after the database is dropped.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // sled flushes in the background every 500 ms; a last explicit flush
        // makes a clean shutdown lose nothing even on power loss right after.
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "could not flush the build store on close");
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// A function told about every build record the store writes.
pub type ChangeListener = Arc<dyn Fn(&Build) + Send + Sync>;

impl Store {
    /// Tells `listener` about every build record written from now on (new,
    /// transitioned, attempts recorded or cleared), right after the write is
    /// flushed: a change and its announcement are one operation.
    pub fn on_change(&self, listener: impl Fn(&Build) + Send + Sync + 'static) {
        *self.inner.listener.write().expect("store listener lock") = Some(Arc::new(listener));
    }

    fn announce(&self, build: &Build) {
        let listener = self
            .inner
            .listener
            .read()
            .expect("store listener lock")
            .clone();
        if let Some(listener) = listener {
            listener(build);
        }
    }

    /// Opens (creating if needed) the store in `state_dir`. Blocks.
    ///
    /// Fails with [`StoreError::Locked`] if another process, or another open
    /// `Store` in this process, uses the directory, and with
    /// [`StoreError::UnsupportedSchema`] if a newer release wrote it.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = state_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let lock = take_lock(&dir)?;

        let db_path = dir.join("db");
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| {
                if is_lock_error(&e) {
                    StoreError::Locked {
                        dir: dir.clone(),
                        lock: db_path.clone(),
                        holder: None,
                    }
                } else {
                    StoreError::Sled(e)
                }
            })?;
        let store = Store {
            inner: Arc::new(Inner {
                builds: db.open_tree("builds")?,
                by_identity: db.open_tree("by_identity")?,
                by_app: db.open_tree("by_app")?,
                meta: db.open_tree("meta")?,
                db,
                dir,
                listener: std::sync::RwLock::new(None),
                _lock: lock,
            }),
        };
        store.check_schema()?;
        store.log_recovery()?;
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let key = "meta/schema_version";
        match self.inner.meta.get(SCHEMA_VERSION_KEY)? {
            None => {
                self.inner
                    .meta
                    .insert(SCHEMA_VERSION_KEY, CURRENT_VERSION.to_string().as_bytes())?;
                self.inner.db.flush()?;
                Ok(())
            }
            Some(raw) => {
                let version: u64 = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: key.into(),
                        reason: format!("{:?} is not a version number", raw.as_ref()),
                    })?;
                if version > CURRENT_VERSION {
                    return Err(StoreError::UnsupportedSchema {
                        key: key.into(),
                        version,
                    });
                }
                Ok(())
            }
        }
    }

    fn log_recovery(&self) -> Result<(), StoreError> {
        let unfinished = self.unfinished()?;
        for b in &unfinished {
            tracing::info!(build = %b.id, state = %b.state, "resuming unfinished build");
        }
        tracing::info!(
            builds = self.len(),
            unfinished = unfinished.len(),
            dir = %self.inner.dir.display(),
            "build store open"
        );
        Ok(())
    }

    /// Records a new build in state `Queued`, unless a build with the same
    /// file identity (path, size, mtime) was recorded before, at any time.
    /// The record and its index entries are written in one transaction and
    /// flushed before this returns.
    pub async fn enqueue(&self, new: NewBuild) -> Result<Enqueued, StoreError> {
        let inner = &self.inner;
        let identity_key = new.identity.dedupe_key();
        // Look first, so that rescans of known files do not use up ids.
        if let Some(id) = self.find_by_key(&identity_key)? {
            return Ok(Enqueued::Existing(id));
        }

        let id = BuildId(inner.db.generate_id()?);
        let now = now_ms();
        let build = Build {
            id,
            rule: new.rule,
            app_secret: new.app_secret,
            file: new.file,
            identity: new.identity,
            label: new.label,
            changelog: new.changelog,
            publish: new.publish,
            enqueued_at: now,
            updated_at: now,
            state: BuildState::Queued,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
        };
        let record = encode_build(&build)?;
        let id_key = id.to_key();
        let app_key = app_key(&build.app_secret, id);

        // The closure may run more than once: it only reads and writes the
        // transaction's trees.
        let outcome = (&inner.builds, &inner.by_identity, &inner.by_app).transaction(
            |(builds, by_identity, by_app)| {
                if let Some(existing) = by_identity.get(&identity_key)? {
                    return Err(ConflictableTransactionError::Abort(existing));
                }
                by_identity.insert(identity_key.as_slice(), &id_key[..])?;
                builds.insert(&id_key[..], record.as_slice())?;
                by_app.insert(app_key.as_slice(), &[][..])?;
                Ok(())
            },
        );
        match outcome {
            Ok(()) => {
                inner.db.flush_async().await?;
                self.announce(&build);
                Ok(Enqueued::New(Box::new(build)))
            }
            Err(TransactionError::Abort(existing)) => Ok(Enqueued::Existing(decode_id(
                "by_identity entry",
                &existing,
            )?)),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Moves build `id` from `expected` to `next`, flushes, and returns the
    /// new record. The only way a build's state changes.
    ///
    /// Fails with [`StoreError::Conflict`] (writing nothing) if the stored
    /// state is not `expected`. `next` should come from one of the pure
    /// transitions on `expected` (`expected.uploaded()?` and so on). Attempt
    /// bookkeeping is left as it is; see [`Store::clear_attempts`].
    pub async fn transition(
        &self,
        id: BuildId,
        expected: &BuildState,
        next: BuildState,
    ) -> Result<Build, StoreError> {
        self.update(id, expected, |b| b.state = next.clone()).await
    }

    /// Records a failed try of the current step without changing the state:
    /// one more attempt, its error, and when to try again. Same
    /// compare-and-swap and flush as [`Store::transition`].
    pub async fn record_attempt(
        &self,
        id: BuildId,
        expected: &BuildState,
        error: String,
        next_attempt_at: Option<u64>,
    ) -> Result<Build, StoreError> {
        self.update(id, expected, |b| {
            b.attempts = b.attempts.saturating_add(1);
            b.last_error = Some(error.clone());
            b.next_attempt_at = next_attempt_at;
        })
        .await
    }

    /// Resets the attempt count, last error and retry time, e.g. after a step
    /// succeeded or on an operator's retry.
    pub async fn clear_attempts(
        &self,
        id: BuildId,
        expected: &BuildState,
    ) -> Result<Build, StoreError> {
        self.update(id, expected, |b| {
            b.attempts = 0;
            b.last_error = None;
            b.next_attempt_at = None;
        })
        .await
    }

    /// The one write path for existing records: read, check the state, apply
    /// `change`, compare-and-swap the bytes read, retry if the bytes changed
    /// under us while the state stayed, then flush.
    async fn update(
        &self,
        id: BuildId,
        expected: &BuildState,
        change: impl Fn(&mut Build),
    ) -> Result<Build, StoreError> {
        let inner = &self.inner;
        let key = id.to_key();
        let build = loop {
            let Some(old) = inner.builds.get(key)? else {
                return Err(StoreError::NotFound { id });
            };
            let current = decode_build(&record_key(id), &old)?;
            if current.state != *expected {
                return Err(StoreError::Conflict {
                    id,
                    found: Box::new(current.state),
                });
            }
            let mut build = current.clone();
            change(&mut build);
            // Never let updated_at go back if the clock does.
            build.updated_at = now_ms().max(current.updated_at);
            let new = encode_build(&build)?;
            match inner.builds.compare_and_swap(key, Some(&old), Some(new))? {
                Ok(()) => break build,
                // Another write landed between our read and our swap; read
                // again and re-check the state.
                Err(_) => continue,
            }
        };
        inner.db.flush_async().await?;
        crate::crashpoint::hit("after-store-write");
        self.announce(&build);
        Ok(build)
    }

    /// Records that `identity` (a new version of the file) belongs to build
    /// `id`, unless another build has it already: then returns that build.
    /// Used when a file changed under a build that resumes with the new
    /// content, so the watcher does not enqueue the same file again.
    pub async fn claim_identity(
        &self,
        id: BuildId,
        identity: &FileIdentity,
    ) -> Result<Option<BuildId>, StoreError> {
        let key = identity.dedupe_key();
        let claimed =
            self.inner
                .by_identity
                .compare_and_swap(&key, None::<&[u8]>, Some(&id.to_key()[..]))?;
        match claimed {
            Ok(()) => {
                self.inner.db.flush_async().await?;
                Ok(None)
            }
            Err(current) => {
                let holder = current
                    .current
                    .map(|raw| decode_id("by_identity entry", &raw))
                    .transpose()?;
                Ok(holder.filter(|other| *other != id))
            }
        }
    }

    /// The build with this id, if it exists.
    pub fn get(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        self.inner
            .builds
            .get(id.to_key())?
            .map(|raw| decode_build(&record_key(id), &raw))
            .transpose()
    }

    /// The builds that match `filter`, oldest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Build>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.builds.iter() {
            let (key, raw) = entry?;
            let name = BuildId::from_key(&key)
                .map(record_key)
                .unwrap_or_else(|| format!("build key {:?}", key.as_ref()));
            let build = decode_build(&name, &raw)?;
            if filter.matches(&build) {
                out.push(build);
            }
        }
        Ok(out)
    }

    /// The builds that are not terminal, oldest first: the daemon's work.
    pub fn unfinished(&self) -> Result<Vec<Build>, StoreError> {
        self.list(&ListFilter {
            finished: Some(false),
            ..ListFilter::default()
        })
    }

    /// The builds of one app, in arrival order (the order PatchKit must see
    /// them in, one draft at a time).
    pub fn by_app(&self, app_secret: &str) -> Result<Vec<Build>, StoreError> {
        let prefix = app_prefix(app_secret);
        let mut out = Vec::new();
        for entry in self.inner.by_app.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let id = decode_id("by_app entry", &key[prefix.len()..])?;
            match self.get(id)? {
                Some(b) => out.push(b),
                None => {
                    return Err(StoreError::Corrupt {
                        key: format!("by_app entry for build {id}"),
                        reason: "the build it points to does not exist".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The build recorded for this file identity (path, size and mtime; the
    /// inode is not compared), even if its record was pruned since.
    pub fn find_by_identity(&self, identity: &FileIdentity) -> Result<Option<BuildId>, StoreError> {
        self.find_by_key(&identity.dedupe_key())
    }

    fn find_by_key(&self, key: &[u8]) -> Result<Option<BuildId>, StoreError> {
        self.inner
            .by_identity
            .get(key)?
            .map(|raw| decode_id("by_identity entry", &raw))
            .transpose()
    }

    /// How many build records there are.
    pub fn len(&self) -> usize {
        self.inner.builds.len()
    }

    /// Whether there are no build records.
    pub fn is_empty(&self) -> bool {
        self.inner.builds.is_empty()
    }

    /// The next number of the rule's `{seq}` counter: 1, 2, 3, ... Durable
    /// before it returns, so a number is never handed out twice, though one
    /// may be skipped if the caller crashes before using it.
    pub async fn next_seq(&self, rule: &str) -> Result<u64, StoreError> {
        let mut key = SEQ_PREFIX.to_vec();
        key.extend_from_slice(rule.as_bytes());
        let value = self.inner.meta.update_and_fetch(&key, |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            Some(n.saturating_add(1).to_be_bytes().to_vec())
        })?;
        let n = value
            .as_deref()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt {
                key: format!("meta/seq/{rule}"),
                reason: "not an 8-byte counter".into(),
            })?;
        self.inner.db.flush_async().await?;
        Ok(n)
    }

    /// Deletes terminal builds last updated more than `older_than` ago and
    /// returns how many. Their identity index entries are kept, so a file
    /// left in the build folder is never enqueued (and published) again.
    pub async fn prune_finished(&self, older_than: Duration) -> Result<usize, StoreError> {
        let cutoff =
            now_ms().saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
        self.prune_finished_before(cutoff).await
    }

    /// Deletes terminal builds last updated before `cutoff` (Unix ms).
    pub async fn prune_finished_before(&self, cutoff: u64) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let mut pruned = 0;
        for entry in inner.builds.iter() {
            let (key, raw) = entry?;
            let Some(id) = BuildId::from_key(&key) else {
                continue;
            };
            let build = decode_build(&record_key(id), &raw)?;
            if !build.state.is_terminal() || build.updated_at >= cutoff {
                continue;
            }
            let app_key = app_key(&build.app_secret, id);
            // Delete only if the record is still exactly what we judged: a
            // retry in between makes the build live again.
            let outcome =
                (&inner.builds, &inner.by_app).transaction(|(builds, by_app)| {
                    match builds.get(&key)? {
                        Some(now) if now == raw => {
                            builds.remove(&key)?;
                            by_app.remove(app_key.as_slice())?;
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                });
            match outcome {
                Ok(true) => {
                    pruned += 1;
                    let mut disposed = DISPOSED_PREFIX.to_vec();
                    disposed.extend_from_slice(&key);
                    inner.meta.remove(disposed)?;
                }
                Ok(false) | Err(TransactionError::Abort(())) => {}
                Err(TransactionError::Storage(e)) => return Err(e.into()),
            }
        }
        if pruned > 0 {
            inner.db.flush_async().await?;
        }
        Ok(pruned)
    }

    /// Records that the file of build `id`, as it ended at `updated_at`, was
    /// dealt with (kept, moved or deleted), so a restart does not do it
    /// again, e.g. to a file an operator moved back to retry it. Not a state
    /// change: it lives in `meta`, beside the record.
    pub fn mark_disposed(&self, id: BuildId, updated_at: u64) -> Result<(), StoreError> {
        let mut key = DISPOSED_PREFIX.to_vec();
        key.extend_from_slice(&id.to_key());
        self.inner.meta.insert(key, &updated_at.to_be_bytes())?;
        Ok(())
    }

    /// Whether the file of build `id` was dealt with when it ended at
    /// `updated_at`.
    pub fn is_disposed(&self, id: BuildId, updated_at: u64) -> Result<bool, StoreError> {
        let mut key = DISPOSED_PREFIX.to_vec();
        key.extend_from_slice(&id.to_key());
        Ok(self
            .inner
            .meta
            .get(key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .is_some_and(|v| u64::from_be_bytes(v) == updated_at))
    }

    /// Waits until every write so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush_async().await?;
        Ok(())
    }
}

/// Takes the exclusive lock on `dir/lock` and writes our pid into it.
fn take_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("lock");
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let holder = file
                .read_to_string(&mut pid)
                .ok()
                .and_then(|_| pid.trim().parse().ok());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                lock: path.clone(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

/// sled reports a held lock as an `Io` error of kind `Other` whose message
/// starts "could not acquire lock" (sled 0.34 `config.rs`), wrapping fs2's
/// `WouldBlock`.
fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

fn record_key(id: BuildId) -> String {
    format!("build {id}")
}

fn decode_id(what: &str, raw: &[u8]) -> Result<BuildId, StoreError> {
    BuildId::from_key(raw).ok_or_else(|| StoreError::Corrupt {
        key: what.into(),
        reason: format!("{raw:?} is not an 8-byte build id"),
    })
}

/// The `by_app` key prefix of an app: its length (u32 big-endian), then its
/// bytes, so no secret's prefix is a prefix of another's.
fn app_prefix(app_secret: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + app_secret.len() + 8);
    key.extend_from_slice(&(app_secret.len() as u32).to_be_bytes());
    key.extend_from_slice(app_secret.as_bytes());
    key
}

fn app_key(app_secret: &str, id: BuildId) -> Vec<u8> {
    let mut key = app_prefix(app_secret);
    key.extend_from_slice(&id.to_key());
    key
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
