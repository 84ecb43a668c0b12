//! The life of one build: the [`BuildState`] enum and its pure transitions.
//!
//! Owns the states a build can be in, the data valid in each, and which
//! moves between them are legal. Every transition is a pure function of the
//! current state and returns either the next state or a [`TransitionError`];
//! nothing here touches the disk, the network or the clock.
//!
//! Deliberately does not know about sled or JSON: the stored form lives in
//! `store::record` and is converted explicitly, so this enum can change shape
//! without silently changing what is on disk. Nor does it write anything:
//! `Store::transition` is the only writer of a build's state.
//!
//! ```text
//! Queued -> Validated -> Uploading (no version) -> Uploaded (no version)
//!          (everything above may happen before the build's turn)
//!   -> CreatingVersion -> Uploaded (version) -> Processing
//!   -> Processed -> Publishing -> Published | Scheduled | Linking
//!                -> Draft (the rule does not publish)
//! a version lost -> Validated; an upload lost -> VersionReady -> Uploading
//! any non-terminal state -> Failed (retry: back to Queued, Validated,
//!   VersionReady or Linking) | Cancelled
//! ```

use std::fmt;
use std::fs::Metadata;
use std::path::PathBuf;

/// A step of the pipeline, in the order a build takes them. Used to say
/// where a build failed or was cancelled, and which step a state belongs
/// to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Checking that the file is a ZIP PatchKit accepts.
    Validate,
    /// Sending the ZIP in chunks (before the draft exists, or again into
    /// an existing draft's new upload).
    Upload,
    /// Creating (or adopting) the draft version, at the build's turn.
    CreateVersion,
    /// Asking PatchKit to process the upload and waiting for its job.
    Process,
    /// Reading the version's processing messages after the job.
    Check,
    /// Publishing the version and waiting for it to go live.
    Publish,
    /// Feeding the rule's channel apps from the live group version.
    Channels,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 7] = [
        Stage::Validate,
        Stage::Upload,
        Stage::CreateVersion,
        Stage::Process,
        Stage::Check,
        Stage::Publish,
        Stage::Channels,
    ];

    /// A short lowercase name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::CreateVersion => "create-version",
            Stage::Upload => "upload",
            Stage::Process => "process",
            Stage::Check => "check",
            Stage::Publish => "publish",
            Stage::Channels => "channels",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What makes a file on disk "the same file": where it is, how big it is,
/// when it was last written and which inode holds it.
///
/// Size and mtime tell a rewritten file from the original; the inode tells a
/// file replaced by rename from one edited in place. Only path, size and mtime
/// form the dedupe key in the store (see `FileIdentity::dedupe_key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// The path the file was found at.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Last modification time, nanoseconds since the Unix epoch (negative
    /// before 1970).
    pub mtime_ns: i128,
    /// The inode number (0 on platforms without one).
    pub inode: u64,
}

impl FileIdentity {
    /// The identity of the file at `path`, from metadata the caller already
    /// read (so the caller decides whether symlinks are followed).
    pub fn from_metadata(path: impl Into<PathBuf>, meta: &Metadata) -> FileIdentity {
        FileIdentity {
            path: path.into(),
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
            inode: inode(meta),
        }
    }

    /// Whether two sightings are of the same content: same size,
    /// modification time and inode. The one test of "the file did not
    /// change" (settling, resuming an upload, disposing of a file); the path
    /// is not part of it, so a file renamed in place is still the same.
    pub fn same_content(&self, other: &FileIdentity) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns && self.inode == other.inode
    }

    /// The key under which the store deduplicates files: path, size and
    /// mtime, without the inode.
    ///
    /// The inode is left out so that copying the same build again with its
    /// timestamps preserved (`rsync -t`, `cp -p`, a move across filesystems)
    /// is recognised as the file already handled, not published twice. A
    /// genuinely new build almost always has a new mtime or size.
    pub fn dedupe_key(&self) -> Vec<u8> {
        let path = path_bytes(&self.path);
        let mut key = Vec::with_capacity(4 + path.len() + 8 + 16);
        // Length-prefixed so that no path can be a prefix of another key.
        key.extend_from_slice(&(path.len() as u32).to_be_bytes());
        key.extend_from_slice(&path);
        key.extend_from_slice(&self.size.to_be_bytes());
        key.extend_from_slice(&self.mtime_ns.to_be_bytes());
        key
    }

    /// The dedupe key of the same file named through its folder's real path
    /// (symlinks, `.` and `..` resolved), when that key is not
    /// [`dedupe_key`](Self::dedupe_key) itself: a rule folder written
    /// another way (through a symlink, as `dir/./x`, after a mount point
    /// moved to a symlink) still names files already handled. `None` when
    /// the folder cannot be resolved (it is gone) or is written that way.
    pub fn resolved_dedupe_key(&self) -> Option<Vec<u8>> {
        let (dir, name) = (self.path.parent()?, self.path.file_name()?);
        let real = std::fs::canonicalize(dir).ok()?.join(name);
        let key = FileIdentity {
            path: real,
            ..self.clone()
        }
        .dedupe_key();
        (key != self.dedupe_key()).then_some(key)
    }
}

/// A build file's place in its app's queue: its modification time (when
/// the copy finished, or the time `rsync -t` kept), then when the watcher
/// first saw it. Not the moment it settled: a file whose settle timer was
/// pushed back by a late event keeps its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arrival {
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// When the watcher first saw the file, Unix ms.
    pub seen_at: u64,
}

#[cfg(unix)]
fn path_bytes(path: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn path_bytes(path: &std::path::Path) -> Vec<u8> {
    path.to_string_lossy().as_bytes().to_vec()
}

#[cfg(unix)]
fn mtime_ns(meta: &Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

#[cfg(not(unix))]
fn mtime_ns(meta: &Metadata) -> i128 {
    use std::time::UNIX_EPOCH;
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        },
        Err(_) => 0,
    }
}

#[cfg(unix)]
fn inode(meta: &Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
fn inode(_meta: &Metadata) -> u64 {
    0
}

/// Where a build is in the pipeline. Each variant carries only the data that
/// is known and valid in that state.
///
/// Terminal states ([`BuildState::is_terminal`]): `Published`, `Scheduled`,
/// `Draft`, `Failed` and `Cancelled`. Of those only `Failed` accepts a move,
/// [`BuildState::retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildState {
    /// Found and recorded; the ZIP has not been checked yet.
    Queued,
    /// The ZIP passed validation; no version exists for it yet, and none
    /// has been asked for since it got here: a draft with this build's
    /// label proves nothing (a person may have made it).
    Validated,
    /// About to ask PatchKit for a new draft version: the intent, recorded
    /// before the request. After a crash, a draft created after this record
    /// (an id above `after_id`) with this build's label is the one the lost
    /// answer named; no other draft is ever taken as this build's own.
    CreatingVersion {
        /// The highest version id of the app when the intent was recorded
        /// (0 for none). PatchKit numbers versions per app in order, so a
        /// draft created by the request has a higher id.
        after_id: u64,
        /// The complete upload the draft gets, when the build uploaded
        /// before its turn.
        upload_id: Option<u64>,
    },
    /// A draft version exists for this build; no upload has started.
    VersionReady {
        /// The PatchKit version id (per app).
        version_id: u64,
    },
    /// Chunks are being sent.
    Uploading {
        /// The PatchKit version id; `None` for an upload made before the
        /// build's turn, which gets its draft afterwards.
        version_id: Option<u64>,
        /// The PatchKit upload id.
        upload_id: u64,
        /// Bytes PatchKit has acknowledged, from the start of the file. Always
        /// a multiple of `chunk_size` or equal to `total`; resume sends from
        /// here.
        acknowledged: u64,
        /// The upload's total size, the file's size.
        total: u64,
        /// Bytes per chunk for this upload (the last chunk may be shorter).
        chunk_size: u64,
        /// The file as it was when the upload began; a resume must check the
        /// file still matches it.
        identity: FileIdentity,
    },
    /// Every byte is acknowledged; processing has not been requested.
    Uploaded {
        /// The PatchKit version id; `None` until the build's turn gives it
        /// a draft.
        version_id: Option<u64>,
        /// The complete upload to attach to the version.
        upload_id: u64,
    },
    /// Processing was requested (`content_file`).
    Processing {
        /// The PatchKit version id.
        version_id: u64,
        /// The upload attached to the version, kept so the request can be
        /// repeated if it never reached PatchKit.
        upload_id: u64,
        /// The processing job; `None` while the `content_file` request is in
        /// flight. After a crash in that window, the version's
        /// `processing_started_at` tells whether to request again or wait.
        job_guid: Option<String>,
        /// The version's `processing_started_at` read just before
        /// `content_file` was sent (`None` if it had never been processed).
        /// A different value afterwards means the request was accepted, even
        /// for a draft that had been processed before.
        prior_started_at: Option<String>,
        /// The version's `processing_finished_at` read at the same time. A
        /// server may leave both times unchanged until a repeated job really
        /// starts, so "finished" counts only when this one changed too.
        prior_finished_at: Option<String>,
    },
    /// Processing finished and the messages allow publishing.
    Processed {
        /// The PatchKit version id.
        version_id: u64,
        /// Warning messages from processing, shown to the user.
        warnings: Vec<String>,
    },
    /// Publishing was requested; waiting for the version to go live.
    Publishing {
        /// The PatchKit version id.
        version_id: u64,
        /// Warning messages from processing.
        warnings: Vec<String>,
    },
    /// The group version is live; the rule's channels are being fed from
    /// it (their progress is in the build's coordination record).
    Linking {
        /// The group app's live version id.
        version_id: u64,
        /// When it went live, Unix seconds (0 when not known, after a
        /// retry).
        published_at: u64,
        /// Warning messages from processing.
        warnings: Vec<String>,
    },
    /// The version is live. Terminal.
    Published {
        /// The PatchKit version id.
        version_id: u64,
        /// When it went live, Unix seconds (the version's `publish_date`).
        published_at: u64,
        /// Warning messages from processing.
        warnings: Vec<String>,
    },
    /// PatchKit will publish the version at a set time. Terminal: nothing is
    /// left for the daemon to do.
    Scheduled {
        /// The PatchKit version id.
        version_id: u64,
        /// When it will go live, Unix seconds (the version's `publish_time`).
        publish_time: u64,
        /// Warning messages from processing.
        warnings: Vec<String>,
    },
    /// Processed and left as a draft because the rule does not publish.
    /// Terminal.
    Draft {
        /// The PatchKit version id.
        version_id: u64,
        /// Warning messages from processing.
        warnings: Vec<String>,
    },
    /// Given up until someone retries it. Terminal.
    Failed {
        /// The stage that failed.
        stage: Stage,
        /// Why, for the user.
        reason: String,
        /// How many attempts the failing stage had.
        attempts: u32,
        /// The version created for this build, if any; a retry reuses it.
        version_id: Option<u64>,
    },
    /// Stopped on request. Terminal.
    Cancelled {
        /// The stage the build was in.
        stage: Stage,
        /// The version created for this build, if any (a draft left behind).
        version_id: Option<u64>,
    },
}

/// A transition that is not allowed from the current state, or whose
/// arguments contradict it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The move does not exist from this state.
    #[error("cannot {action}: the build is {from}")]
    Illegal {
        /// The current state's name.
        from: &'static str,
        /// What was attempted.
        action: &'static str,
    },
    /// An acknowledgement past the end of the upload.
    #[error("acknowledged offset {offset} is beyond the upload's {total} bytes")]
    BeyondTotal {
        /// The offset offered.
        offset: u64,
        /// The upload's size.
        total: u64,
    },
    /// An acknowledgement behind one already recorded.
    #[error("acknowledged offset {offset} is behind the {acknowledged} bytes already acknowledged")]
    Backwards {
        /// The offset offered.
        offset: u64,
        /// What is already acknowledged.
        acknowledged: u64,
    },
    /// An acknowledgement that does not end a chunk.
    #[error("acknowledged offset {offset} does not end a {chunk_size}-byte chunk of {total} bytes")]
    Misaligned {
        /// The offset offered.
        offset: u64,
        /// The chunk size.
        chunk_size: u64,
        /// The upload's size.
        total: u64,
    },
    /// `uploaded()` before every byte was acknowledged.
    #[error("the upload is incomplete: {acknowledged} of {total} bytes acknowledged")]
    Incomplete {
        /// What is acknowledged.
        acknowledged: u64,
        /// The upload's size.
        total: u64,
    },
    /// An upload whose size or chunk size is unusable.
    #[error(
        "an upload needs a size equal to the file's ({file_size} bytes) and above zero, \
         and a chunk size above zero (got size {total}, chunk size {chunk_size})"
    )]
    BadUpload {
        /// The upload size offered.
        total: u64,
        /// The chunk size offered.
        chunk_size: u64,
        /// The size in the file identity.
        file_size: u64,
    },
}

type Next = Result<BuildState, TransitionError>;

impl BuildState {
    /// A short snake_case name of the variant, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Validated => "validated",
            BuildState::CreatingVersion { .. } => "creating_version",
            BuildState::VersionReady { .. } => "version_ready",
            BuildState::Uploading { .. } => "uploading",
            BuildState::Uploaded { .. } => "uploaded",
            BuildState::Processing { .. } => "processing",
            BuildState::Processed { .. } => "processed",
            BuildState::Publishing { .. } => "publishing",
            BuildState::Linking { .. } => "linking",
            BuildState::Published { .. } => "published",
            BuildState::Scheduled { .. } => "scheduled",
            BuildState::Draft { .. } => "draft",
            BuildState::Failed { .. } => "failed",
            BuildState::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether the build has something on PatchKit (a version or an
    /// upload), so its app's next build must wait for it whatever arrived
    /// earlier.
    pub fn holds_app(&self) -> bool {
        !self.before_turn()
            && !matches!(
                self,
                BuildState::Uploaded {
                    version_id: None,
                    ..
                }
            )
            && !self.is_terminal()
    }

    /// Whether the build's next step is one it may take before its turn on
    /// the app: validation and an upload without a version. Everything
    /// from the draft on waits for the app's builds before it.
    pub fn before_turn(&self) -> bool {
        matches!(
            self,
            BuildState::Queued
                | BuildState::Validated
                | BuildState::Uploading {
                    version_id: None,
                    ..
                }
        )
    }

    /// Whether the daemon has nothing more to do with this build. Only
    /// `Failed` can leave a terminal state, and only through [`retry`].
    ///
    /// [`retry`]: BuildState::retry
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            BuildState::Published { .. }
                | BuildState::Scheduled { .. }
                | BuildState::Draft { .. }
                | BuildState::Failed { .. }
                | BuildState::Cancelled { .. }
        )
    }

    /// The stage this state belongs to: for a live build the stage that is
    /// running or runs next, for a finished one the stage it ended in.
    pub fn stage(&self) -> Stage {
        match self {
            BuildState::Queued => Stage::Validate,
            BuildState::Validated
            | BuildState::VersionReady { .. }
            | BuildState::Uploading { .. } => Stage::Upload,
            BuildState::CreatingVersion { .. }
            | BuildState::Uploaded {
                version_id: None, ..
            } => Stage::CreateVersion,
            BuildState::Uploaded { .. } | BuildState::Processing { .. } => Stage::Process,
            BuildState::Processed { .. } => Stage::Publish,
            BuildState::Linking { .. } => Stage::Channels,
            BuildState::Publishing { .. }
            | BuildState::Published { .. }
            | BuildState::Scheduled { .. }
            | BuildState::Draft { .. } => Stage::Publish,
            BuildState::Failed { stage, .. } | BuildState::Cancelled { stage, .. } => *stage,
        }
    }

    /// The PatchKit version id, once one is known.
    pub fn version_id(&self) -> Option<u64> {
        match self {
            BuildState::Queued | BuildState::Validated | BuildState::CreatingVersion { .. } => None,
            BuildState::Uploading { version_id, .. } | BuildState::Uploaded { version_id, .. } => {
                *version_id
            }
            BuildState::VersionReady { version_id }
            | BuildState::Processing { version_id, .. }
            | BuildState::Processed { version_id, .. }
            | BuildState::Publishing { version_id, .. }
            | BuildState::Linking { version_id, .. }
            | BuildState::Published { version_id, .. }
            | BuildState::Scheduled { version_id, .. }
            | BuildState::Draft { version_id, .. } => Some(*version_id),
            BuildState::Failed { version_id, .. } | BuildState::Cancelled { version_id, .. } => {
                *version_id
            }
        }
    }

    fn illegal(&self, action: &'static str) -> TransitionError {
        TransitionError::Illegal {
            from: self.name(),
            action,
        }
    }

    /// `Queued -> Validated`: the ZIP passed validation.
    pub fn validated(&self) -> Next {
        match self {
            BuildState::Queued => Ok(BuildState::Validated),
            _ => Err(self.illegal("mark validated")),
        }
    }

    /// `Uploaded { version_id: None } -> CreatingVersion`: the intent to
    /// create a draft, recorded before the request, with the upload it is
    /// for. `after_id` is the app's highest version id as listed just
    /// before.
    pub fn creating_version(&self, after_id: u64) -> Next {
        match self {
            BuildState::Uploaded {
                version_id: None,
                upload_id,
            } => Ok(BuildState::CreatingVersion {
                after_id,
                upload_id: Some(*upload_id),
            }),
            _ => Err(self.illegal("record the intent to create a version")),
        }
    }

    /// A draft version was created, adopted or taken over for the build's
    /// finished upload: `Uploaded { None } | CreatingVersion { upload } ->
    /// Uploaded { version }`, ready for `content_file`. A `CreatingVersion`
    /// recorded without an upload (by a release that created the draft
    /// first) goes to `VersionReady`, and the upload follows.
    pub fn version_ready(&self, version_id: u64) -> Next {
        match self {
            BuildState::CreatingVersion {
                upload_id: None, ..
            } => Ok(BuildState::VersionReady { version_id }),
            BuildState::CreatingVersion {
                upload_id: Some(upload_id),
                ..
            }
            | BuildState::Uploaded {
                version_id: None,
                upload_id,
            } => Ok(BuildState::Uploaded {
                version_id: Some(version_id),
                upload_id: *upload_id,
            }),
            _ => Err(self.illegal("record a version")),
        }
    }

    /// `Validated -> Uploading { version_id: None }` (an upload before the
    /// draft), `VersionReady -> Uploading`, or `Uploading -> Uploading` with
    /// a new upload (the previous one cannot be resumed, e.g. the file
    /// changed). The version, or its absence, is kept; `total` must equal
    /// the identity's size.
    pub fn upload_started(
        &self,
        upload_id: u64,
        total: u64,
        chunk_size: u64,
        identity: FileIdentity,
    ) -> Next {
        let version_id = match self {
            BuildState::Validated => None,
            BuildState::VersionReady { version_id } => Some(*version_id),
            BuildState::Uploading { version_id, .. } => *version_id,
            _ => return Err(self.illegal("start an upload")),
        };
        if total == 0 || chunk_size == 0 || total != identity.size {
            return Err(TransitionError::BadUpload {
                total,
                chunk_size,
                file_size: identity.size,
            });
        }
        Ok(BuildState::Uploading {
            version_id,
            upload_id,
            acknowledged: 0,
            total,
            chunk_size,
            identity,
        })
    }

    /// `Uploading -> Uploading`: PatchKit acknowledged every byte before
    /// `offset`. Offsets never go back, never pass `total` and always end a
    /// chunk; acknowledging the current offset again is a no-op, so a chunk
    /// re-sent after a crash is harmless.
    pub fn chunk_acknowledged(&self, offset: u64) -> Next {
        let BuildState::Uploading {
            acknowledged,
            total,
            chunk_size,
            ..
        } = self
        else {
            return Err(self.illegal("acknowledge a chunk"));
        };
        let (acknowledged, total, chunk_size) = (*acknowledged, *total, *chunk_size);
        if offset > total {
            return Err(TransitionError::BeyondTotal { offset, total });
        }
        if offset < acknowledged {
            return Err(TransitionError::Backwards {
                offset,
                acknowledged,
            });
        }
        if offset != total && !offset.is_multiple_of(chunk_size) {
            return Err(TransitionError::Misaligned {
                offset,
                chunk_size,
                total,
            });
        }
        let mut next = self.clone();
        if let BuildState::Uploading { acknowledged, .. } = &mut next {
            *acknowledged = offset;
        }
        Ok(next)
    }

    /// `Uploading -> Uploaded`: only once every byte is acknowledged.
    pub fn uploaded(&self) -> Next {
        match self {
            BuildState::Uploading {
                version_id,
                upload_id,
                acknowledged,
                total,
                ..
            } => {
                if acknowledged != total {
                    return Err(TransitionError::Incomplete {
                        acknowledged: *acknowledged,
                        total: *total,
                    });
                }
                Ok(BuildState::Uploaded {
                    version_id: *version_id,
                    upload_id: *upload_id,
                })
            }
            _ => Err(self.illegal("finish the upload")),
        }
    }

    /// `Uploaded { version } -> Processing { job_guid: None }`: about to
    /// send `content_file`. `prior_started_at` is the version's
    /// `processing_started_at` as read just before.
    pub fn processing_requested(
        &self,
        prior_started_at: Option<String>,
        prior_finished_at: Option<String>,
    ) -> Next {
        match self {
            BuildState::Uploaded {
                version_id: Some(version_id),
                upload_id,
            } => Ok(BuildState::Processing {
                version_id: *version_id,
                upload_id: *upload_id,
                job_guid: None,
                prior_started_at,
                prior_finished_at,
            }),
            _ => Err(self.illegal("request processing")),
        }
    }

    /// `VersionReady | Uploading | Uploaded | Processing | Processed |
    /// Publishing -> Validated`: the recorded version is no longer this
    /// build's draft (PatchKit forgot it, or it was deleted, published or
    /// relabelled by someone else), so create-version must find or create
    /// one again. Everything after it (upload, processing) is redone.
    pub fn version_lost(&self) -> Next {
        match self {
            BuildState::VersionReady { .. }
            | BuildState::Uploading {
                version_id: Some(_),
                ..
            }
            | BuildState::Uploaded {
                version_id: Some(_),
                ..
            }
            | BuildState::Processing { .. }
            | BuildState::Processed { .. }
            | BuildState::Publishing { .. } => Ok(BuildState::Validated),
            _ => Err(self.illegal("give up the version")),
        }
    }

    /// `Uploaded | Processing -> VersionReady`: PatchKit does not have the
    /// whole upload (it refused `content_file` as incomplete, or forgot the
    /// upload), so the version gets a fresh upload.
    pub fn upload_lost(&self) -> Next {
        match self {
            BuildState::Uploaded {
                version_id: Some(version_id),
                ..
            }
            | BuildState::Processing { version_id, .. } => Ok(BuildState::VersionReady {
                version_id: *version_id,
            }),
            _ => Err(self.illegal("upload again")),
        }
    }

    /// `Processing { None } -> Processing { Some(guid) }`: PatchKit answered
    /// with its job.
    pub fn job_started(&self, job_guid: impl Into<String>) -> Next {
        match self {
            BuildState::Processing {
                version_id,
                upload_id,
                job_guid: None,
                prior_started_at,
                prior_finished_at,
            } => Ok(BuildState::Processing {
                version_id: *version_id,
                upload_id: *upload_id,
                job_guid: Some(job_guid.into()),
                // Kept: if PatchKit forgets the job, the version is followed
                // with them.
                prior_started_at: prior_started_at.clone(),
                prior_finished_at: prior_finished_at.clone(),
            }),
            _ => Err(self.illegal("record a processing job")),
        }
    }

    /// `Processing -> Processed`: the job finished and the messages allow
    /// publishing. Allowed without a job guid too, for a restart that found
    /// processing already finished on the version.
    pub fn processed(&self, warnings: Vec<String>) -> Next {
        match self {
            BuildState::Processing { version_id, .. } => Ok(BuildState::Processed {
                version_id: *version_id,
                warnings,
            }),
            _ => Err(self.illegal("mark processed")),
        }
    }

    /// `Processed -> Publishing`: about to ask PatchKit to publish.
    pub fn publish_requested(&self) -> Next {
        match self {
            BuildState::Processed {
                version_id,
                warnings,
            } => Ok(BuildState::Publishing {
                version_id: *version_id,
                warnings: warnings.clone(),
            }),
            _ => Err(self.illegal("request publishing")),
        }
    }

    /// `Publishing -> Published`: the version is live since `published_at`
    /// (Unix seconds).
    pub fn published(&self, published_at: u64) -> Next {
        match self {
            BuildState::Publishing {
                version_id,
                warnings,
            } => Ok(BuildState::Published {
                version_id: *version_id,
                published_at,
                warnings: warnings.clone(),
            }),
            _ => Err(self.illegal("mark published")),
        }
    }

    /// `Publishing -> Linking`: the group version is live since
    /// `published_at`; the rule's channels are fed next.
    pub fn linking(&self, published_at: u64) -> Next {
        match self {
            BuildState::Publishing {
                version_id,
                warnings,
            } => Ok(BuildState::Linking {
                version_id: *version_id,
                published_at,
                warnings: warnings.clone(),
            }),
            _ => Err(self.illegal("feed channels")),
        }
    }

    /// `Linking -> Published`: every channel is live too. `published_at`
    /// is the group version's time (the recorded one, or read again when a
    /// retry lost it).
    pub fn channels_published(&self, published_at: u64) -> Next {
        match self {
            BuildState::Linking {
                version_id,
                warnings,
                ..
            } => Ok(BuildState::Published {
                version_id: *version_id,
                published_at,
                warnings: warnings.clone(),
            }),
            _ => Err(self.illegal("mark channels published")),
        }
    }

    /// `Publishing -> Scheduled`: PatchKit will publish at `publish_time`
    /// (Unix seconds).
    pub fn scheduled(&self, publish_time: u64) -> Next {
        match self {
            BuildState::Publishing {
                version_id,
                warnings,
            } => Ok(BuildState::Scheduled {
                version_id: *version_id,
                publish_time,
                warnings: warnings.clone(),
            }),
            _ => Err(self.illegal("mark scheduled")),
        }
    }

    /// `Processed -> Draft`: the rule does not publish.
    pub fn kept_as_draft(&self) -> Next {
        match self {
            BuildState::Processed {
                version_id,
                warnings,
            } => Ok(BuildState::Draft {
                version_id: *version_id,
                warnings: warnings.clone(),
            }),
            _ => Err(self.illegal("keep as draft")),
        }
    }

    /// Any non-terminal state `-> Failed`. `attempts` is how many tries the
    /// failing stage had (the build record's attempt counter plus this one);
    /// the state itself does not carry a history to count from. A known
    /// version id is kept for the retry.
    pub fn failed(&self, stage: Stage, reason: impl Into<String>, attempts: u32) -> Next {
        if self.is_terminal() {
            return Err(self.illegal("fail"));
        }
        Ok(BuildState::Failed {
            stage,
            reason: reason.into(),
            attempts,
            version_id: self.version_id(),
        })
    }

    /// `Failed -> Queued | Validated | VersionReady | Linking`: start again.
    ///
    /// A build that failed feeding its channels has a live group version:
    /// it goes back to `Linking`, and only the channels not yet live are
    /// fed again.
    ///
    /// A retried build always starts a fresh upload. With a known version it
    /// goes back to `VersionReady`, so the version is reused, not created
    /// again (PatchKit allows one draft per app). Without one, a build that
    /// failed validation is validated again (`Queued`); any other goes to
    /// `Validated`: it uploads again, then looks for its draft at its turn.
    pub fn retry(&self) -> Next {
        match self {
            // The group version is live: only the channels are fed again.
            BuildState::Failed {
                stage: Stage::Channels,
                version_id: Some(version_id),
                ..
            } => Ok(BuildState::Linking {
                version_id: *version_id,
                published_at: 0,
                warnings: Vec::new(),
            }),
            BuildState::Failed {
                version_id: Some(version_id),
                ..
            } => Ok(BuildState::VersionReady {
                version_id: *version_id,
            }),
            BuildState::Failed {
                stage: Stage::Validate,
                version_id: None,
                ..
            } => Ok(BuildState::Queued),
            BuildState::Failed {
                version_id: None, ..
            } => Ok(BuildState::Validated),
            _ => Err(self.illegal("retry")),
        }
    }

    /// Any non-terminal state `-> Cancelled`.
    pub fn cancelled(&self) -> Next {
        if self.is_terminal() {
            return Err(self.illegal("cancel"));
        }
        Ok(BuildState::Cancelled {
            stage: self.stage(),
            version_id: self.version_id(),
        })
    }
}

impl fmt::Display for BuildState {
    /// One line for status output, e.g. `uploading v12 45% (47185920/104857600 bytes)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildState::Queued | BuildState::Validated => f.write_str(self.name()),
            BuildState::CreatingVersion { .. } => f.write_str("creating version"),
            BuildState::VersionReady { version_id } => write!(f, "version_ready v{version_id}"),
            BuildState::Uploading {
                version_id,
                acknowledged,
                total,
                ..
            } => {
                let percent =
                    (u128::from(*acknowledged) * 100 / u128::from((*total).max(1))) as u64;
                match version_id {
                    Some(v) => write!(
                        f,
                        "uploading v{v} {percent}% ({acknowledged}/{total} bytes)"
                    ),
                    None => write!(
                        f,
                        "uploading {percent}% ({acknowledged}/{total} bytes; the draft comes at \
                         its turn)"
                    ),
                }
            }
            BuildState::Uploaded {
                version_id: None,
                upload_id,
            } => write!(
                f,
                "uploaded (upload {upload_id}); the draft comes at its turn"
            ),
            BuildState::Uploaded {
                version_id: Some(version_id),
                upload_id,
            } => write!(f, "upload {upload_id} attached to v{version_id}"),
            BuildState::Processed { version_id, .. }
            | BuildState::Publishing { version_id, .. }
            | BuildState::Draft { version_id, .. } => write!(f, "{} v{version_id}", self.name()),
            BuildState::Linking { version_id, .. } => {
                write!(f, "v{version_id} live; feeding channels")
            }
            BuildState::Processing {
                version_id,
                job_guid,
                ..
            } => match job_guid {
                Some(guid) => write!(f, "processing v{version_id} (job {guid})"),
                None => write!(f, "processing v{version_id} (requesting)"),
            },
            BuildState::Published {
                version_id,
                published_at,
                ..
            } => write!(f, "published v{version_id} at {}", unix_s(*published_at)),
            BuildState::Scheduled {
                version_id,
                publish_time,
                ..
            } => write!(f, "scheduled v{version_id} for {}", unix_s(*publish_time)),
            BuildState::Failed {
                stage,
                reason,
                attempts,
                ..
            } => write!(f, "failed in {stage} after {attempts} attempt(s): {reason}"),
            BuildState::Cancelled { stage, .. } => write!(f, "cancelled in {stage}"),
        }
    }
}

fn unix_s(secs: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(i64::MAX as u64 / 2)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn identity(size: u64) -> FileIdentity {
        FileIdentity {
            path: PathBuf::from("/builds/game.zip"),
            size,
            mtime_ns: 1_700_000_000_123_456_789,
            inode: 42,
        }
    }

    #[test]
    fn upload_first_then_the_draft_at_its_turn() {
        let s = BuildState::Queued.validated().unwrap();
        assert!(s.before_turn() && !s.holds_app());
        let s = s.upload_started(3, 25, 10, identity(25)).unwrap();
        assert!(s.before_turn() && !s.holds_app());
        assert_eq!(s.version_id(), None);
        let s = s.chunk_acknowledged(20).unwrap();
        let s = s.chunk_acknowledged(25).unwrap().uploaded().unwrap();
        // Done uploading: the rest waits for its turn, and holds nothing yet.
        assert!(!s.before_turn() && !s.holds_app());
        assert_eq!(s.stage(), Stage::CreateVersion);
        assert!(s.processing_requested(None, None).is_err());
        let intent = s.creating_version(6).unwrap();
        assert_eq!(
            intent,
            BuildState::CreatingVersion {
                after_id: 6,
                upload_id: Some(3)
            }
        );
        assert!(intent.holds_app());
        let ready = BuildState::Uploaded {
            version_id: Some(7),
            upload_id: 3,
        };
        assert_eq!(intent.version_ready(7).unwrap(), ready);
        // A draft reused or taken over, without an intent.
        assert_eq!(s.version_ready(7).unwrap(), ready);
        let s = ready.processing_requested(None, None).unwrap();
        assert_eq!(s.version_id(), Some(7));
        // Cancelled or failed before the turn: no version to leave behind.
        let uploading = BuildState::Validated
            .upload_started(3, 25, 10, identity(25))
            .unwrap();
        assert_eq!(
            uploading.cancelled().unwrap(),
            BuildState::Cancelled {
                stage: Stage::Upload,
                version_id: None
            }
        );
        assert_eq!(
            uploading.failed(Stage::Upload, "x", 1).unwrap().retry(),
            Ok(BuildState::Validated)
        );
    }

    #[test]
    fn happy_path_to_published() {
        let s = BuildState::CreatingVersion {
            after_id: 6,
            upload_id: None,
        };
        let s = s.version_ready(7).unwrap();
        let s = s.upload_started(3, 25, 10, identity(25)).unwrap();
        let s = s.chunk_acknowledged(10).unwrap();
        let s = s.chunk_acknowledged(20).unwrap();
        assert!(matches!(
            s.uploaded(),
            Err(TransitionError::Incomplete { .. })
        ));
        let s = s.chunk_acknowledged(25).unwrap();
        let s = s.uploaded().unwrap();
        let s = s.processing_requested(None, None).unwrap();
        let s = s.job_started("guid-1").unwrap();
        let s = s.processed(vec!["w".into()]).unwrap();
        let s = s.publish_requested().unwrap();
        let s = s.published(1_700_000_000).unwrap();
        assert!(s.is_terminal());
        assert_eq!(s.version_id(), Some(7));
        assert_eq!(s.stage(), Stage::Publish);
    }

    #[test]
    fn publish_before_processed_is_refused() {
        let s = BuildState::Uploaded {
            version_id: Some(1),
            upload_id: 2,
        };
        assert_eq!(
            s.publish_requested(),
            Err(TransitionError::Illegal {
                from: "uploaded",
                action: "request publishing"
            })
        );
    }

    #[test]
    fn acknowledgements_are_checked() {
        let s = BuildState::VersionReady { version_id: 1 }
            .upload_started(9, 25, 10, identity(25))
            .unwrap()
            .chunk_acknowledged(20)
            .unwrap();
        assert!(matches!(
            s.chunk_acknowledged(30),
            Err(TransitionError::BeyondTotal { .. })
        ));
        assert!(matches!(
            s.chunk_acknowledged(10),
            Err(TransitionError::Backwards { .. })
        ));
        assert!(matches!(
            s.chunk_acknowledged(23),
            Err(TransitionError::Misaligned { .. })
        ));
        assert_eq!(s.chunk_acknowledged(20).unwrap(), s);
    }

    #[test]
    fn upload_size_must_match_the_file() {
        let s = BuildState::VersionReady { version_id: 1 };
        assert!(s.upload_started(1, 24, 10, identity(25)).is_err());
        assert!(s.upload_started(1, 25, 0, identity(25)).is_err());
    }

    #[test]
    fn retry_keeps_the_version() {
        let failed = BuildState::VersionReady { version_id: 4 }
            .failed(Stage::Upload, "boom", 3)
            .unwrap();
        assert_eq!(
            failed.retry().unwrap(),
            BuildState::VersionReady { version_id: 4 }
        );
        let failed = BuildState::Queued
            .failed(Stage::Validate, "not a zip", 1)
            .unwrap();
        assert_eq!(failed.retry().unwrap(), BuildState::Queued);
        let failed = BuildState::Validated
            .failed(Stage::CreateVersion, "403", 5)
            .unwrap();
        assert_eq!(failed.retry().unwrap(), BuildState::Validated);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The happy-path next step from wherever the build is, so that
        /// random sequences reach the late states too.
        Forward,
        Validated,
        VersionReady(u64),
        CreatingVersion(u64),
        UploadStarted {
            upload_id: u64,
            total: u64,
            chunk: u64,
        },
        Ack(u64),
        AckNextChunk,
        Uploaded,
        ProcessingRequested,
        JobStarted(String),
        Processed(Vec<String>),
        PublishRequested,
        Published(u64),
        Scheduled(u64),
        KeptAsDraft,
        Failed(usize),
        Retry,
        Cancelled,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Forward),
            1 => Just(Op::Validated),
            1 => (1u64..5).prop_map(Op::VersionReady),
            1 => (0u64..5).prop_map(Op::CreatingVersion),
            1 => (1u64..5, 0u64..60, 0u64..12).prop_map(|(upload_id, total, chunk)| {
                Op::UploadStarted {
                    upload_id,
                    total,
                    chunk,
                }
            }),
            1 => (0u64..70).prop_map(Op::Ack),
            1 => Just(Op::AckNextChunk),
            1 => Just(Op::AckNextChunk),
            1 => Just(Op::Uploaded),
            1 => Just(Op::ProcessingRequested),
            1 => "[a-f0-9]{4}".prop_map(Op::JobStarted),
            1 => proptest::collection::vec("[a-z]{1,3}", 0..3).prop_map(Op::Processed),
            1 => Just(Op::PublishRequested),
            1 => (0u64..2_000_000_000).prop_map(Op::Published),
            1 => (0u64..2_000_000_000).prop_map(Op::Scheduled),
            1 => Just(Op::KeptAsDraft),
            1 => (0usize..Stage::ALL.len()).prop_map(Op::Failed),
            1 => Just(Op::Retry),
            1 => Just(Op::Cancelled),
        ]
    }

    fn forward(s: &BuildState) -> Next {
        match s {
            BuildState::Queued => s.validated(),
            BuildState::Validated => s.upload_started(1, 25, 10, identity(25)),
            BuildState::Uploaded {
                version_id: None, ..
            } => s.creating_version(0),
            BuildState::CreatingVersion { .. } => s.version_ready(1),
            BuildState::VersionReady { .. } => s.upload_started(1, 25, 10, identity(25)),
            BuildState::Uploading {
                acknowledged,
                total,
                chunk_size,
                ..
            } if acknowledged < total => {
                s.chunk_acknowledged((acknowledged + chunk_size).min(*total))
            }
            BuildState::Uploading { .. } => s.uploaded(),
            BuildState::Uploaded { .. } => s.processing_requested(None, None),
            BuildState::Processing { job_guid: None, .. } => s.job_started("guid"),
            BuildState::Processing { .. } => s.processed(vec!["warning".into()]),
            BuildState::Processed { .. } => s.publish_requested(),
            BuildState::Publishing { .. } => s.published(1_763_000_000),
            BuildState::Failed { .. } => s.retry(),
            _ => s.cancelled(),
        }
    }

    fn apply(s: &BuildState, op: &Op) -> Next {
        match op {
            Op::Forward => forward(s),
            Op::Validated => s.validated(),
            Op::VersionReady(v) => s.version_ready(*v),
            Op::CreatingVersion(after) => s.creating_version(*after),
            Op::UploadStarted {
                upload_id,
                total,
                chunk,
            } => s.upload_started(*upload_id, *total, *chunk, identity(*total)),
            Op::Ack(offset) => s.chunk_acknowledged(*offset),
            Op::AckNextChunk => match s {
                BuildState::Uploading {
                    acknowledged,
                    total,
                    chunk_size,
                    ..
                } => s.chunk_acknowledged((acknowledged + chunk_size).min(*total)),
                _ => s.chunk_acknowledged(0),
            },
            Op::Uploaded => s.uploaded(),
            Op::ProcessingRequested => s.processing_requested(None, None),
            Op::JobStarted(g) => s.job_started(g.clone()),
            Op::Processed(w) => s.processed(w.clone()),
            Op::PublishRequested => s.publish_requested(),
            Op::Published(t) => s.published(*t),
            Op::Scheduled(t) => s.scheduled(*t),
            Op::KeptAsDraft => s.kept_as_draft(),
            Op::Failed(i) => s.failed(Stage::ALL[*i], "reason", 1),
            Op::Retry => s.retry(),
            Op::Cancelled => s.cancelled(),
        }
    }

    /// Properties that hold for every state on its own.
    fn check_state(s: &BuildState) {
        // Work before the turn never has a draft, and only the turn's
        // states hold the app.
        if s.before_turn() {
            assert_eq!(s.version_id(), None, "{s:?}");
            assert!(!s.holds_app(), "{s:?}");
        }
        if s.version_id().is_some() && !s.is_terminal() {
            assert!(s.holds_app(), "{s:?}");
        }
        if let BuildState::Uploading {
            acknowledged,
            total,
            chunk_size,
            identity,
            ..
        } = s
        {
            assert!(acknowledged <= total);
            assert!(*total > 0 && *chunk_size > 0);
            assert_eq!(*total, identity.size);
            assert!(acknowledged == total || acknowledged % chunk_size == 0);
        }
    }

    /// Properties of one accepted move.
    fn check_move(prev: &BuildState, op: &Op, next: &BuildState) {
        if prev.is_terminal() {
            // Only Failed moves on, and only to where `retry` leads.
            assert!(
                matches!(prev, BuildState::Failed { .. }) && prev.retry().as_ref() == Ok(next),
                "terminal {prev:?} accepted {op:?}"
            );
        }
        if let Some(v) = prev.version_id() {
            // Once a version exists it is never forgotten or swapped.
            assert_eq!(next.version_id(), Some(v), "{prev:?} -> {next:?}");
        }
        if let (
            BuildState::Uploading {
                upload_id: a,
                acknowledged: before,
                ..
            },
            BuildState::Uploading {
                upload_id: b,
                acknowledged: after,
                ..
            },
        ) = (prev, next)
            && a == b
            && !matches!(op, Op::UploadStarted { .. })
        {
            assert!(after >= before, "acknowledged went back");
        }
        if let BuildState::Uploaded { upload_id, .. } = next {
            // Only a complete upload is ever attached to a draft.
            assert!(
                matches!(
                    prev,
                    BuildState::Uploading { acknowledged, total, .. } if acknowledged == total
                ) || matches!(
                    prev,
                    BuildState::Uploaded { version_id: None, upload_id: u }
                        | BuildState::CreatingVersion { upload_id: Some(u), .. } if u == upload_id
                ),
                "{prev:?} -> {next:?}"
            );
        }
        if matches!(
            next,
            BuildState::Publishing { .. }
                | BuildState::Published { .. }
                | BuildState::Scheduled { .. }
        ) {
            assert!(matches!(
                prev,
                BuildState::Processed { .. } | BuildState::Publishing { .. }
            ));
        }
    }

    proptest! {
        #[test]
        fn random_sequences_stay_legal(ops in proptest::collection::vec(op(), 0..80)) {
            let mut s = BuildState::Queued;
            for op in &ops {
                match apply(&s, op) {
                    Ok(next) => {
                        check_state(&next);
                        check_move(&s, op, &next);
                        s = next;
                    }
                    Err(_) => {
                        // A refused move leaves the state as it was.
                        check_state(&s);
                    }
                }
            }
        }
    }
}
