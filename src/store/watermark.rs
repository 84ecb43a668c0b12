//! The store's progress, kept twice: in sled's `meta` tree, in the same
//! transaction as every write, and in `state_dir/store.watermark`, a small
//! file written after each flush where damage to sled's files cannot reach
//! it.
//!
//! The counters only grow. A store whose counters are below the watermark's
//! lost writes (its log was emptied, truncated or partly overwritten, or an
//! older copy was put in its place): opening it would send builds to PatchKit
//! again, so [`Store::open`](super::Store::open) refuses it.
//!
//! The file is replaced atomically (write a temporary file, fsync it, rename
//! it over the old one, fsync the directory), and only with counters the
//! caller read in a transaction that is already flushed, so the watermark is
//! never ahead of what sled holds on disk.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The watermark's file name in the state directory.
pub const FILE_NAME: &str = "store.watermark";

/// How far the store got: each counter only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Writes committed (enqueues, state changes, identity claims, counters,
    /// prunes).
    pub writes: u64,
    /// The highest build id handed out.
    pub last_build_id: u64,
    /// Builds that reached PatchKit for good: published, scheduled or left
    /// as a draft.
    pub published: u64,
}

impl Progress {
    /// Whether any counter of `self` is below `other`'s: the store lost
    /// writes that `other` saw.
    pub fn behind(&self, other: &Progress) -> bool {
        self.writes < other.writes
            || self.last_build_id < other.last_build_id
            || self.published < other.published
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes, build ids up to {}, {} published build(s)",
            self.writes, self.last_build_id, self.published
        )
    }
}

/// The stored form: versioned like the records.
#[derive(Serialize, Deserialize)]
struct WatermarkV1 {
    v: u64,
    #[serde(flatten)]
    progress: Progress,
}

/// The watermark's path in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the watermark; `Ok(None)` when there is none (a new state directory,
/// or one from a release before the watermark).
pub fn read(state_dir: &Path) -> std::io::Result<Option<Progress>> {
    let path = path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let stored: WatermarkV1 = serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a watermark: {e}", path.display()),
        )
    })?;
    if stored.v != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} has version {}; a newer release wrote it",
                path.display(),
                stored.v
            ),
        ));
    }
    Ok(Some(stored.progress))
}

/// Replaces the watermark with `progress`, durably.
pub fn write(state_dir: &Path, progress: Progress) -> std::io::Result<()> {
    let path = path(state_dir);
    let tmp = state_dir.join(format!("{FILE_NAME}.tmp"));
    let mut text = serde_json::to_vec(&WatermarkV1 { v: 1, progress })?;
    text.push(b'\n');
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(state_dir)?.sync_all()
}
