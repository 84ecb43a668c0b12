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
//!   its files). A second [`Store::open`] fails with [`StoreError::Locked`];
//!   the daemon's open ([`OpenOptions::daemon`]) first waits a few seconds,
//!   as `status`, `retry` and `cancel` hold the lock for milliseconds.
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
//!   (u64 big-endian), `disposed/<build id>` (the `updated_at` at which
//!   the build's file was dealt with, so a restart does not do it twice) and
//!   the progress counters `progress/writes`, `progress/build_id` (the last
//!   build id handed out: ids are 1, 2, 3, ... across restarts) and
//!   `progress/published` (u64 big-endian), updated in the same transaction
//!   as the write they count.
//!
//! # Integrity
//! Every write bumps the progress counters in its own transaction; after the
//! flush of an enqueue, a change of state, an identity claim, a `{seq}`
//! number or a prune, the counters go to `state_dir/store.watermark` (see
//! `watermark`). Chunk acknowledgements and attempt bookkeeping only bump the
//! counters: their loss is caught by the stages, which ask PatchKit.
//! On open, a store whose counters are below the watermark's lost writes and
//! is refused ([`StoreError::RolledBack`]) before anything is sent, so a
//! published file is never published again because sled's files were
//! damaged. `store recover` is the way out.
//!
//! # Failures
//! A write that fails (disk full, read-only file system, I/O error) is
//! retried briefly; if it keeps failing the store marks itself broken, every
//! later write fails at once, and [`Store::check_still_ours`] reports it so
//! the daemon exits and is restarted with a fresh handle (crash-only). The
//! same check notices a state directory deleted or replaced under a running
//! process (the lock file's device and inode changed).
//!
//! # Blocking
//! sled works from its page cache, and the records are small and few, so the
//! synchronous calls here (`get`, `list`, `find_by_identity`, ...) return in
//! microseconds and are fine on an async thread; a cold page can mean one
//! disk read. The calls that wait for the disk (`enqueue`, `transition`,
//! `record_attempt`, `clear_attempts`, `next_seq`, `prune_finished`, `flush`)
//! are `async` and wait on sled's flush future, then write the watermark on
//! a blocking thread. [`Store::open`] blocks (it reads the whole log, and the
//! daemon's open may wait for the lock); call it from `spawn_blocking`.
//!
//! # Recovery on open
//! Nothing is rewritten on open. Every state is either a fact recorded after
//! its side effect succeeded or an intent recorded before it, and each stage
//! resumes from it: `CreatingVersion` looks for the draft its intent
//! created before creating one; `Uploading` (with or without a version)
//! resumes from `acknowledged` after checking the file still matches its
//! identity; `Processing { job_guid: None }` asks
//! the version whether processing started; `Publishing` asks the version
//! whether it is published. Rewriting any of these on load would lose the
//! information the stage needs, so `open` only checks the schema version and
//! the progress counters against the watermark (see Integrity), and logs
//! what is unfinished. Reading the unfinished builds decodes every
//! record, so a record written by a newer release stops the open with
//! [`StoreError::UnsupportedSchema`] instead of being skipped.

mod build;
pub mod coordination;
mod fault;
pub mod record;
pub mod watermark;

use std::fs::{File, OpenOptions as OpenOptions_, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub use build::{Build, BuildId, Enqueued, NewBuild, ParseBuildIdError};
pub use coordination::{ChannelProgress, ChannelStep, Coordination, Wait, WaitReason};

use crate::state::{BuildState, FileIdentity};
use record::{CURRENT_VERSION, decode_build, encode_build};
pub use watermark::Progress;

/// sled's page cache size. The records are a few hundred bytes each; 8 MiB
/// holds tens of thousands of them, far more than a retention window keeps.
const CACHE_CAPACITY: u64 = 8 * 1024 * 1024;

const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// One sled transaction or flush at a time, in this process (sled's
/// concurrency control and its I/O pool are process-wide, so this spans
/// stores). A transaction takes sled's global write lock; a flush holds its
/// read side while it waits, on a thread of sled's I/O pool, for an I/O
/// buffer that another pool thread writes. A transaction queued behind a
/// flush stops the pool's other threads at the read side; enough flushes at
/// once (two daemons' stores, each lane flushing) take every pool thread.
/// Either way no thread is left to write the buffer and nothing ends. A
/// flush makes every earlier write durable, so flushes in a row cost little.
static SLED_GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SEQ_PREFIX: &[u8] = b"seq/";
const DISPOSED_PREFIX: &[u8] = b"disposed/";
/// Prefix of the coordination records in `meta` (`coordination/<build id>`).
const COORDINATION_PREFIX: &[u8] = b"coordination/";
const WRITES_KEY: &[u8] = b"progress/writes";
const BUILD_ID_KEY: &[u8] = b"progress/build_id";
const PUBLISHED_KEY: &[u8] = b"progress/published";

/// How often the daemon should call [`Store::check_still_ours`] at the least:
/// a state directory deleted or replaced is noticed within this (well within
/// the minute an operator can expect), at the cost of one `stat`.
pub const HEALTH_CHECK: Duration = Duration::from_secs(5);

/// Pauses between tries of a failing write. Long enough for a log rotation
/// or a cleanup job to free space, short enough that a worker does not hang:
/// after the last one the store gives up and the daemon restarts.
const WRITE_RETRIES: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// How long [`OpenOptions::daemon`] waits for a lock held by someone else:
/// `status`, `retry` and `cancel` hold it for milliseconds when no daemon
/// runs, so a daemon starting next to them waits instead of failing.
pub const DAEMON_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The command to run when the store is damaged, as messages print it.
pub const RECOVER_COMMAND: &str = "patchkit-autopublish store recover -c CONFIG";

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another `Store` in this one) has the directory.
    #[error(
        "state directory {} is in use by another patchkit-autopublish process \
         (lock on {} is held{}); stop it or use another state_dir",
        dir.display(),
        lock.display(),
        holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default()
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The file whose lock is held.
        lock: PathBuf,
        /// The holder's pid and command (`pid 42 (run)`), when known.
        holder: Option<String>,
    },
    /// sled could not open its files.
    #[error(
        "cannot open the build store {}: {}. If the disk is fine (space, permissions, \
         kernel log), the store is damaged: run `{RECOVER_COMMAND}`, or restore the whole state \
         directory from a backup",
        db.display(),
        sled_text(error)
    )]
    Unreadable {
        /// The sled directory.
        db: PathBuf,
        /// What sled said (in the message, not a separate cause, so the
        /// advice comes last).
        error: sled::Error,
    },
    /// The store holds less than its watermark says it wrote: records were
    /// lost or rolled back while the daemon was stopped.
    #[error(
        "the build store {} lost records: it holds {found}, but {} says {expected}. Starting \
         would send builds to PatchKit again, so nothing was sent. Run `{RECOVER_COMMAND}`: it \
         keeps what the store holds and marks unfinished builds and unknown files in the rule \
         folders as failed, so nothing is published twice. Or restore the whole state directory \
         from a backup (builds published since that backup would be published again)",
        dir.join("db").display(),
        watermark::path(dir).display()
    )]
    RolledBack {
        /// The state directory.
        dir: PathBuf,
        /// What the store holds.
        found: Progress,
        /// What the watermark says was written.
        expected: Progress,
    },
    /// The state directory was deleted or replaced under this process.
    #[error(
        "the state directory {} was deleted or replaced while this process used it ({why}); \
         stopping without touching it. Start the daemon again: it takes the directory as it \
         is now",
        dir.display()
    )]
    Gone {
        /// The state directory.
        dir: PathBuf,
        /// What was seen.
        why: String,
    },
    /// Writes kept failing; the store takes no more.
    #[error(
        "the build store in {} could not be written ({cause}); stopping so that a restart \
         opens it afresh (systemd restarts the service). Free space or fix the disk under {}; \
         builds resume from their last recorded step",
        dir.display(),
        dir.display()
    )]
    Broken {
        /// The state directory.
        dir: PathBuf,
        /// The last write error.
        cause: String,
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
    #[error(
        "{key} is corrupt: {reason}; the build store is damaged: run `{RECOVER_COMMAND}`, or \
         restore the whole state directory from a backup"
    )]
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
    #[error(
        "the build store in {} failed: {}; check the disk under it (space, permissions, \
         kernel log)",
        dir.display(),
        sled_text(error)
    )]
    Sled {
        /// The state directory.
        dir: PathBuf,
        /// What sled said (in the message, so the advice comes last).
        error: sled::Error,
    },
}

/// sled's error in words: its corruption error prints internals
/// ("at file offset None backtrace ()") that tell an operator nothing.
fn sled_text(error: &sled::Error) -> String {
    match error {
        sled::Error::Corruption { .. } => "sled found corrupted data in its files".into(),
        other => other.to_string(),
    }
}

/// How [`Store::open_with`] opens a store. The default waits for nothing
/// and refuses a damaged store.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// How long to wait for a lock held by another process.
    pub lock_wait: Duration,
    /// Open a store that is behind its watermark (for `store recover`).
    pub accept_rollback: bool,
}

impl OpenOptions {
    /// For the daemon: waits [`DAEMON_LOCK_WAIT`] for a CLI command that
    /// holds the lock.
    pub fn daemon() -> OpenOptions {
        OpenOptions {
            lock_wait: DAEMON_LOCK_WAIT,
            accept_rollback: false,
        }
    }
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
    /// Device and inode of `state_dir/lock` as opened: if the path names
    /// another file later, the directory was deleted or replaced.
    lock_id: (u64, u64),
    /// Set when writes kept failing: no write is tried after it.
    broken: OnceLock<String>,
    /// Set when the state directory was found deleted or replaced: no write
    /// is tried after it either.
    gone: OnceLock<String>,
    /// The highest progress written to the watermark; the mutex also keeps
    /// two writers of the file apart.
    watermark: Mutex<Progress>,
    /// Holds the exclusive lock on `state_dir/lock` while the store is open.
    /// Declared last so it is released after the database is dropped.
    _lock: File,
}

impl Inner {
    /// See [`Store::check_still_ours`].
    fn check_still_ours(&self) -> Result<(), StoreError> {
        if let Some(why) = self.gone.get() {
            return Err(StoreError::Gone {
                dir: self.dir.clone(),
                why: why.clone(),
            });
        }
        if let Some(cause) = self.broken.get() {
            return Err(StoreError::Broken {
                dir: self.dir.clone(),
                cause: cause.clone(),
            });
        }
        let lock = self.dir.join("lock");
        let why = match std::fs::metadata(&lock) {
            Ok(m) if (m.dev(), m.ino()) == self.lock_id => return Ok(()),
            Ok(_) => format!("{} is another file now", lock.display()),
            Err(e) => format!("{}: {e}", lock.display()),
        };
        // Nothing more is written through this handle: whatever is at the
        // path now belongs to someone else.
        let _ = self.gone.set(why.clone());
        Err(StoreError::Gone {
            dir: self.dir.clone(),
            why,
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every write was flushed when it was made; a last explicit flush
        // costs nothing and covers any write a future caller forgets to flush.
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

    /// Opens (creating if needed) the store in `state_dir`. Blocks. Does not
    /// wait for a lock held by another process.
    ///
    /// Fails with [`StoreError::Locked`] if another process, or another open
    /// `Store` in this process, uses the directory, with
    /// [`StoreError::UnsupportedSchema`] if a newer release wrote it, and with
    /// [`StoreError::RolledBack`] if it holds less than its watermark says.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(state_dir, &OpenOptions::default())
    }

    /// Opens the store as `options` say. Blocks (up to `lock_wait` for the
    /// lock, then while sled reads its log).
    pub fn open_with(
        state_dir: impl AsRef<Path>,
        options: &OpenOptions,
    ) -> Result<Store, StoreError> {
        let dir = state_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let lock = take_lock(&dir, options)?;
        let lock_id = lock
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| StoreError::Io {
                path: dir.join("lock"),
                source,
            })?;

        let db_path = dir.join("db");
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(CACHE_CAPACITY)
            // Every write here is flushed before it returns, so sled's
            // background flusher would only wake the process (twice a second,
            // idle or not) to find nothing to write.
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                if is_lock_error(&e) {
                    StoreError::Locked {
                        dir: dir.clone(),
                        lock: db_path.clone(),
                        holder: None,
                    }
                } else {
                    StoreError::Unreadable {
                        db: db_path.clone(),
                        error: e,
                    }
                }
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|error| StoreError::Unreadable {
                db: db_path.clone(),
                error,
            })
        };
        let store = Store {
            inner: Arc::new(Inner {
                builds: tree("builds")?,
                by_identity: tree("by_identity")?,
                by_app: tree("by_app")?,
                meta: tree("meta")?,
                db,
                dir,
                listener: std::sync::RwLock::new(None),
                lock_id,
                broken: OnceLock::new(),
                gone: OnceLock::new(),
                watermark: Mutex::new(Progress::default()),
                _lock: lock,
            }),
        };
        store.check_schema()?;
        store.check_progress(options.accept_rollback)?;
        store.log_recovery()?;
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A sled error, naming the store.
    fn sled(&self, error: sled::Error) -> StoreError {
        StoreError::Sled {
            dir: self.inner.dir.clone(),
            error,
        }
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let key = "meta/schema_version";
        match self
            .inner
            .meta
            .get(SCHEMA_VERSION_KEY)
            .map_err(|e| self.sled(e))?
        {
            None => {
                self.inner
                    .meta
                    .insert(SCHEMA_VERSION_KEY, CURRENT_VERSION.to_string().as_bytes())
                    .map_err(|e| self.sled(e))?;
                self.inner.db.flush().map_err(|e| self.sled(e))?;
                Ok(())
            }
            Some(raw) => {
                let version: u64 = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: format!("{key} in {}", self.inner.dir.display()),
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

    /// The progress the store holds. A store from a release before the
    /// counters has none: its last build id is the highest id it refers to,
    /// its published count the delivered records it still holds.
    fn stored_progress(&self) -> Result<(Progress, bool), StoreError> {
        let inner = &self.inner;
        let get = |key: &[u8]| -> Result<Option<u64>, StoreError> {
            Ok(inner
                .meta
                .get(key)
                .map_err(|e| self.sled(e))?
                .map(|v| read_u64(&v)))
        };
        let (writes, build_id, published) =
            (get(WRITES_KEY)?, get(BUILD_ID_KEY)?, get(PUBLISHED_KEY)?);
        let complete = writes.is_some() && build_id.is_some() && published.is_some();
        let build_id = match build_id {
            Some(id) => id,
            None => {
                let mut max = match inner.builds.last().map_err(|e| self.sled(e))? {
                    Some((key, _)) => BuildId::from_key(&key).map_or(0, |id| id.0),
                    None => 0,
                };
                // Pruned builds live on in the identity index; their ids are
                // never handed out again.
                for entry in inner.by_identity.iter() {
                    let (_, raw) = entry.map_err(|e| self.sled(e))?;
                    if let Some(id) = BuildId::from_key(&raw) {
                        max = max.max(id.0);
                    }
                }
                max
            }
        };
        let published = match published {
            Some(n) => n,
            None => self
                .list(&ListFilter::default())?
                .iter()
                .filter(|b| is_delivered(&b.state))
                .count() as u64,
        };
        Ok((
            Progress {
                writes: writes.unwrap_or(0),
                last_build_id: build_id,
                published,
            },
            complete,
        ))
    }

    /// Compares the store with its watermark; refuses a store that lost
    /// writes (unless `accept`), then records the counters in both places.
    fn check_progress(&self, accept: bool) -> Result<(), StoreError> {
        let dir = &self.inner.dir;
        let (found, complete) = self.stored_progress()?;
        let expected = watermark::read(dir).map_err(|e| StoreError::Corrupt {
            key: watermark::path(dir).display().to_string(),
            reason: e.to_string(),
        })?;
        let mut found = found;
        let mut complete = complete;
        if let Some(expected) = expected
            && found.behind(&expected)
        {
            if !accept {
                return Err(StoreError::RolledBack {
                    dir: dir.clone(),
                    found,
                    expected,
                });
            }
            // Recovery keeps what the store holds but not its counters: ids
            // handed out before the loss are not handed out again, and the
            // watermark does not go back.
            tracing::warn!(
                dir = %dir.display(),
                "opening a store that lost records: it holds {found}, the watermark says {expected}"
            );
            found = Progress {
                writes: found.writes.max(expected.writes),
                last_build_id: found.last_build_id.max(expected.last_build_id),
                published: found.published.max(expected.published),
            };
            complete = false;
        }
        if !complete {
            let meta = &self.inner.meta;
            for (key, value) in [
                (WRITES_KEY, found.writes),
                (BUILD_ID_KEY, found.last_build_id),
                (PUBLISHED_KEY, found.published),
            ] {
                meta.insert(key, &value.to_be_bytes())
                    .map_err(|e| self.sled(e))?;
            }
            self.inner.db.flush().map_err(|e| self.sled(e))?;
        }
        watermark::write(dir, found).map_err(|source| StoreError::Io {
            path: watermark::path(dir),
            source,
        })?;
        *self.inner.watermark.lock().expect("watermark lock") = found;
        Ok(())
    }

    /// The store's progress counters as they are now.
    pub fn progress(&self) -> Result<Progress, StoreError> {
        Ok(self.stored_progress()?.0)
    }

    /// Whether this store can still be used: not broken by failing writes,
    /// and its state directory is still the one it opened (the lock file has
    /// the same device and inode). A daemon calls it at least every
    /// [`HEALTH_CHECK`] and exits on an error.
    pub fn check_still_ours(&self) -> Result<(), StoreError> {
        self.inner.check_still_ours()
    }

    /// Runs a write (`op` returns its result and the progress it committed),
    /// flushes it and records the progress in the watermark. A failing step
    /// is tried again after each of [`WRITE_RETRIES`] (the write itself until
    /// it is applied, then only the flush, so it is never applied twice);
    /// after the last the store is marked broken. Logical errors (conflict,
    /// not found, ...) are returned at once.
    async fn write<T>(
        &self,
        op: impl Fn() -> Result<(T, Option<Progress>), StoreError>,
    ) -> Result<T, StoreError> {
        let mut pauses = WRITE_RETRIES.iter();
        let (value, progress) = loop {
            self.check_not_broken()?;
            let attempt = {
                let _alone = SLED_GATE.lock().await;
                op()
            };
            match attempt {
                Ok(applied) => break applied,
                Err(e) if is_write_failure(&e) => self.pause_or_break(&mut pauses, e).await?,
                Err(e) => return Err(e),
            }
        };
        loop {
            self.check_not_broken()?;
            match self.commit(progress).await {
                Ok(()) => return Ok(value),
                Err(e @ StoreError::Gone { .. }) => return Err(e),
                Err(e) => self.pause_or_break(&mut pauses, e).await?,
            }
        }
    }

    fn check_not_broken(&self) -> Result<(), StoreError> {
        if let Some(why) = self.inner.gone.get() {
            return Err(StoreError::Gone {
                dir: self.inner.dir.clone(),
                why: why.clone(),
            });
        }
        match self.inner.broken.get() {
            Some(cause) => Err(StoreError::Broken {
                dir: self.inner.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Waits the next pause after a failed write, or marks the store broken
    /// when there is none left.
    async fn pause_or_break(
        &self,
        pauses: &mut std::slice::Iter<'_, Duration>,
        error: StoreError,
    ) -> Result<(), StoreError> {
        let dir = &self.inner.dir;
        let cause = match &error {
            StoreError::Sled { error, .. } => sled_text(error),
            StoreError::Io { path, source } => format!("{}: {source}", path.display()),
            other => other.to_string(),
        };
        if let Some(pause) = pauses.next() {
            tracing::warn!(
                "the build store in {} could not be written ({cause}); trying again in {}",
                dir.display(),
                humantime::format_duration(*pause)
            );
            tokio::time::sleep(*pause).await;
            return Ok(());
        }
        let _ = self.inner.broken.set(cause.clone());
        Err(StoreError::Broken {
            dir: dir.clone(),
            cause,
        })
    }

    /// Flushes, then writes `progress` to the watermark if it is ahead of
    /// what the file holds.
    async fn commit(&self, progress: Option<Progress>) -> Result<(), StoreError> {
        fault::check(&self.inner.dir).map_err(|source| StoreError::Io {
            path: self.inner.dir.join("db"),
            source,
        })?;
        self.flush().await?;
        let Some(progress) = progress else {
            return Ok(());
        };
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut written = inner.watermark.lock().expect("watermark lock");
            if progress.writes <= written.writes {
                return Ok(());
            }
            // sled writes through its open files, the watermark by path: if
            // the directory was replaced, the path is someone else's store.
            inner.check_still_ours()?;
            watermark::write(&inner.dir, progress).map_err(|source| StoreError::Io {
                path: watermark::path(&inner.dir),
                source,
            })?;
            *written = progress;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io {
            path: watermark::path(&self.inner.dir),
            source: std::io::Error::other(e),
        })?
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
    /// The record, its index entries and the next build id are written in
    /// one transaction and flushed before this returns.
    pub async fn enqueue(&self, new: NewBuild) -> Result<Enqueued, StoreError> {
        let inner = &self.inner;
        let identity_key = new.identity.dedupe_key();
        // Look first, so that rescans of known files cost no transaction
        // (and no path resolution).
        if let Some(id) = self.find_by_key(&identity_key)? {
            return Ok(Enqueued::Existing(id));
        }
        // The same file seen through another spelling of its folder.
        let resolved_key = new.identity.resolved_dedupe_key();
        if let Some(key) = &resolved_key
            && let Some(id) = self.find_by_key(key)?
        {
            return Ok(Enqueued::Existing(id));
        }
        let keys: Vec<Vec<u8>> = std::iter::once(identity_key).chain(resolved_key).collect();
        let now = now_ms();
        let template = Build {
            id: BuildId(0),
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
        enum Abort {
            Existing(sled::IVec),
            Failed(StoreError),
        }
        let outcome = self
            .write(|| {
                // The closure may run more than once: it only reads and
                // writes the transaction's trees.
                let result = (
                    &inner.builds,
                    &inner.by_identity,
                    &inner.by_app,
                    &inner.meta,
                )
                    .transaction(|(builds, by_identity, by_app, meta)| {
                        for key in &keys {
                            if let Some(existing) = by_identity.get(key)? {
                                return Err(ConflictableTransactionError::Abort(Abort::Existing(
                                    existing,
                                )));
                            }
                        }
                        let mut progress = read_progress(meta)?;
                        progress.writes += 1;
                        progress.last_build_id += 1;
                        let mut build = template.clone();
                        build.id = BuildId(progress.last_build_id);
                        let record = encode_build(&build)
                            .map_err(|e| ConflictableTransactionError::Abort(Abort::Failed(e)))?;
                        let id_key = build.id.to_key();
                        for key in &keys {
                            by_identity.insert(key.as_slice(), &id_key[..])?;
                        }
                        builds.insert(&id_key[..], record)?;
                        by_app.insert(app_key(&build.app_secret, build.id), &[][..])?;
                        write_progress(meta, &progress)?;
                        Ok((build, progress))
                    });
                match result {
                    Ok((build, progress)) => Ok((Enqueued::New(Box::new(build)), Some(progress))),
                    Err(TransactionError::Abort(Abort::Existing(raw))) => Ok((
                        Enqueued::Existing(decode_id("by_identity entry", &raw)?),
                        None,
                    )),
                    Err(TransactionError::Abort(Abort::Failed(e))) => Err(e),
                    Err(TransactionError::Storage(e)) => Err(self.sled(e)),
                }
            })
            .await?;
        if let Enqueued::New(build) = &outcome {
            self.announce(build);
        }
        Ok(outcome)
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

    /// Sets when the build runs again without counting a failed try: a wait
    /// for another publisher, not an error.
    pub async fn wait_until(
        &self,
        id: BuildId,
        expected: &BuildState,
        at: u64,
    ) -> Result<Build, StoreError> {
        self.update(id, expected, |b| b.next_attempt_at = Some(at))
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

    /// The one write path for existing records: in one transaction, read,
    /// check the state, apply `change`, write it and count it; then flush.
    async fn update(
        &self,
        id: BuildId,
        expected: &BuildState,
        change: impl Fn(&mut Build),
    ) -> Result<Build, StoreError> {
        let inner = &self.inner;
        let key = id.to_key();
        let name = self.record_key(id);
        let build = self
            .write(|| {
                let result = (&inner.builds, &inner.meta).transaction(|(builds, meta)| {
                    let abort = ConflictableTransactionError::Abort;
                    let Some(old) = builds.get(key)? else {
                        return Err(abort(StoreError::NotFound { id }));
                    };
                    let current = decode_build(&name, &old).map_err(abort)?;
                    if current.state != *expected {
                        return Err(abort(StoreError::Conflict {
                            id,
                            found: Box::new(current.state),
                        }));
                    }
                    let mut build = current.clone();
                    change(&mut build);
                    // Never let updated_at go back if the clock does.
                    build.updated_at = now_ms().max(current.updated_at);
                    builds.insert(&key[..], encode_build(&build).map_err(abort)?)?;
                    let mut progress = read_progress(meta)?;
                    progress.writes += 1;
                    if is_delivered(&build.state) && !is_delivered(&current.state) {
                        progress.published += 1;
                    }
                    write_progress(meta, &progress)?;
                    // The watermark costs two fsyncs; a chunk acknowledged or
                    // an attempt counted is re-checked with PatchKit on
                    // resume, so only a change of state needs it.
                    let moved = build.state.name() != current.state.name();
                    Ok((build, moved.then_some(progress)))
                });
                match result {
                    Ok((build, progress)) => Ok((build, progress)),
                    Err(TransactionError::Abort(e)) => Err(e),
                    Err(TransactionError::Storage(e)) => Err(self.sled(e)),
                }
            })
            .await?;
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
        let keys: Vec<Vec<u8>> = std::iter::once(identity.dedupe_key())
            .chain(identity.resolved_dedupe_key())
            .collect();
        let inner = &self.inner;
        let holder = self
            .write(|| {
                let result =
                    (&inner.by_identity, &inner.meta).transaction(|(by_identity, meta)| {
                        for key in &keys {
                            if let Some(current) = by_identity.get(key)?
                                && current != id.to_key()[..]
                            {
                                return Ok((Some(current), None));
                            }
                        }
                        for key in &keys {
                            by_identity.insert(key.as_slice(), &id.to_key()[..])?;
                        }
                        let mut progress = read_progress(meta)?;
                        progress.writes += 1;
                        write_progress(meta, &progress)?;
                        Ok((None, Some(progress)))
                    });
                match result {
                    Ok(done) => Ok(done),
                    Err(TransactionError::Abort(())) => {
                        unreachable!("the transaction never aborts")
                    }
                    Err(TransactionError::Storage(e)) => Err(self.sled(e)),
                }
            })
            .await?;
        let holder = holder
            .map(|raw| decode_id("by_identity entry", &raw))
            .transpose()?;
        Ok(holder.filter(|other| *other != id))
    }

    /// The build with this id, if it exists.
    pub fn get(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        self.inner
            .builds
            .get(id.to_key())
            .map_err(|e| self.sled(e))?
            .map(|raw| decode_build(&self.record_key(id), &raw))
            .transpose()
    }

    /// The builds that match `filter`, oldest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Build>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.builds.iter() {
            let (key, raw) = entry.map_err(|e| self.sled(e))?;
            let name = BuildId::from_key(&key)
                .map(|id| self.record_key(id))
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
            let (key, _) = entry.map_err(|e| self.sled(e))?;
            let id = decode_id("by_app entry", &key[prefix.len()..])?;
            match self.get(id)? {
                Some(b) => out.push(b),
                None => {
                    return Err(StoreError::Corrupt {
                        key: format!(
                            "by_app entry for build {id} in {}",
                            self.inner.dir.display()
                        ),
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
        match self.find_by_key(&identity.dedupe_key())? {
            Some(id) => Ok(Some(id)),
            None => match identity.resolved_dedupe_key() {
                Some(key) => self.find_by_key(&key),
                None => Ok(None),
            },
        }
    }

    fn find_by_key(&self, key: &[u8]) -> Result<Option<BuildId>, StoreError> {
        self.inner
            .by_identity
            .get(key)
            .map_err(|e| self.sled(e))?
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
        self.write(|| {
            let result = self.inner.meta.transaction(|meta| {
                let n = meta
                    .get(&key)?
                    .map_or(0, |old| read_u64(&old))
                    .saturating_add(1);
                meta.insert(key.as_slice(), &n.to_be_bytes())?;
                let mut progress = read_progress(meta)?;
                progress.writes += 1;
                write_progress(meta, &progress)?;
                Ok((n, progress))
            });
            match result {
                Ok((n, progress)) => Ok((n, Some(progress))),
                Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
                Err(TransactionError::Storage(e)) => Err(self.sled(e)),
            }
        })
        .await
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
        let mut old = Vec::new();
        for entry in inner.builds.iter() {
            let (key, raw) = entry.map_err(|e| self.sled(e))?;
            let Some(id) = BuildId::from_key(&key) else {
                continue;
            };
            let build = decode_build(&self.record_key(id), &raw)?;
            if build.state.is_terminal() && build.updated_at < cutoff {
                old.push((key, raw, app_key(&build.app_secret, id)));
            }
        }
        let mut pruned = 0;
        for (key, raw, app_key) in old {
            // Delete only if the record is still exactly what we judged: a
            // retry in between makes the build live again.
            let removed = self
                .write(|| {
                    let result = (&inner.builds, &inner.by_app, &inner.meta).transaction(
                        |(builds, by_app, meta)| match builds.get(&key)? {
                            Some(now) if now == raw => {
                                builds.remove(&key)?;
                                by_app.remove(app_key.as_slice())?;
                                let mut progress = read_progress(meta)?;
                                progress.writes += 1;
                                write_progress(meta, &progress)?;
                                Ok(Some(progress))
                            }
                            _ => Ok(None),
                        },
                    );
                    match result {
                        Ok(progress) => Ok((progress.is_some(), progress)),
                        Err(TransactionError::Abort(())) => {
                            unreachable!("the transaction never aborts")
                        }
                        Err(TransactionError::Storage(e)) => Err(self.sled(e)),
                    }
                })
                .await?;
            if removed {
                pruned += 1;
                let mut disposed = DISPOSED_PREFIX.to_vec();
                disposed.extend_from_slice(&key);
                inner.meta.remove(disposed).map_err(|e| self.sled(e))?;
                let mut coordination = COORDINATION_PREFIX.to_vec();
                coordination.extend_from_slice(&key);
                inner.meta.remove(coordination).map_err(|e| self.sled(e))?;
            }
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
        self.inner
            .meta
            .insert(key, &updated_at.to_be_bytes())
            .map_err(|e| self.sled(e))?;
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
            .get(key)
            .map_err(|e| self.sled(e))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .is_some_and(|v| u64::from_be_bytes(v) == updated_at))
    }

    /// The coordination record of build `id` (empty when none was written).
    pub fn coordination(&self, id: BuildId) -> Result<Coordination, StoreError> {
        let mut key = COORDINATION_PREFIX.to_vec();
        key.extend_from_slice(&id.to_key());
        match self.inner.meta.get(key).map_err(|e| self.sled(e))? {
            None => Ok(Coordination::default()),
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
                key: format!("coordination of {}", self.record_key(id)),
                reason: e.to_string(),
            }),
        }
    }

    /// Replaces the coordination record of build `id` and waits until it is
    /// on disk: it is written before the side effect it announces.
    pub async fn set_coordination(
        &self,
        id: BuildId,
        record: &Coordination,
    ) -> Result<(), StoreError> {
        let mut key = COORDINATION_PREFIX.to_vec();
        key.extend_from_slice(&id.to_key());
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            key: format!("coordination of {}", self.record_key(id)),
            reason: e.to_string(),
        })?;
        self.inner
            .meta
            .insert(key, bytes)
            .map_err(|e| self.sled(e))?;
        self.flush().await?;
        if let Some(build) = self.get(id)? {
            self.announce(&build);
        }
        Ok(())
    }

    /// Waits until every write so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _alone = SLED_GATE.lock().await;
        self.inner
            .db
            .flush_async()
            .await
            .map_err(|e| self.sled(e))?;
        Ok(())
    }

    /// How a record is named in errors: its id and the store's directory.
    fn record_key(&self, id: BuildId) -> String {
        format!("build {id} in {}", self.inner.dir.join("db").display())
    }
}

/// Whether a state means the build reached PatchKit for good: a store that
/// loses one of these could publish its file again.
fn is_delivered(state: &BuildState) -> bool {
    matches!(
        state,
        BuildState::Published { .. } | BuildState::Scheduled { .. } | BuildState::Draft { .. }
    )
}

/// Whether an error is the disk refusing a write (worth trying again, and
/// fatal if it persists) rather than a logical outcome.
fn is_write_failure(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled { .. } | StoreError::Io { .. })
}

/// A u64 counter as stored (8 bytes big-endian); anything else reads as 0
/// and is rewritten by the next write.
fn read_u64(raw: &[u8]) -> u64 {
    <[u8; 8]>::try_from(raw).map_or(0, u64::from_be_bytes)
}

fn read_progress(
    meta: &sled::transaction::TransactionalTree,
) -> Result<Progress, sled::transaction::UnabortableTransactionError> {
    let get = |key: &[u8]| -> Result<u64, sled::transaction::UnabortableTransactionError> {
        Ok(meta.get(key)?.map_or(0, |v| read_u64(&v)))
    };
    Ok(Progress {
        writes: get(WRITES_KEY)?,
        last_build_id: get(BUILD_ID_KEY)?,
        published: get(PUBLISHED_KEY)?,
    })
}

fn write_progress(
    meta: &sled::transaction::TransactionalTree,
    progress: &Progress,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    meta.insert(WRITES_KEY, &progress.writes.to_be_bytes())?;
    meta.insert(BUILD_ID_KEY, &progress.last_build_id.to_be_bytes())?;
    meta.insert(PUBLISHED_KEY, &progress.published.to_be_bytes())?;
    Ok(())
}

/// Takes the exclusive lock on `dir/lock`, waiting up to
/// `options.lock_wait` for another holder, and writes our pid into it.
fn take_lock(dir: &Path, options: &OpenOptions) -> Result<File, StoreError> {
    let path = dir.join("lock");
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions_::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let deadline = Instant::now() + options.lock_wait;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = (&file)
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| describe_holder(&text));
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        dir: dir.to_path_buf(),
                        lock: path.clone(),
                        holder,
                    });
                }
                if !told {
                    told = true;
                    tracing::info!(
                        lock = %path.display(),
                        holder = holder.as_deref().unwrap_or("another process"),
                        "the state directory is in use; waiting up to {} for it",
                        humantime::format_duration(options.lock_wait)
                    );
                }
                // A CLI command holds the lock for milliseconds; poll often
                // enough that the wait is barely noticed.
                std::thread::sleep(Duration::from_millis(50));
                file.rewind().map_err(io)?;
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

/// `pid 42 (status)` from a lock file holding `42`: the command comes from
/// the holder's command line where `/proc` shows it.
fn describe_holder(text: &str) -> Option<String> {
    let pid: u32 = text.trim().parse().ok()?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|raw| {
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.get(1).filter(|a| !a.starts_with('-')).cloned()
        });
    Some(match command {
        Some(command) => format!("pid {pid} ({command})"),
        None => format!("pid {pid}"),
    })
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
