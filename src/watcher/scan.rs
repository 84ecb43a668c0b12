//! One pass over a rule folder: which files in it are builds for the rule,
//! and what each one looks like right now.
//!
//! This is the cheap half of the watcher: a directory read, a glob test on
//! each name and a `stat` of the names that pass. It decides nothing about
//! settling; the engine compares what two passes saw.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path};

use super::{Take, WatchSpec};
use crate::state::FileIdentity;

/// Where a path sits relative to a rule folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place<'a> {
    /// The rule folder itself.
    Folder,
    /// Inside the folder (directly, or below it for a recursive rule, with
    /// no ignored folder on the way); the last component is this name.
    Inside(&'a OsStr),
    /// Anywhere else: not this rule's business.
    Outside,
}

/// Locates `path` relative to the rule folder, honouring `recursive` and the
/// ignore patterns for the folders in between.
pub(super) fn place<'a>(spec: &WatchSpec, path: &'a Path) -> Place<'a> {
    let Ok(rel) = path.strip_prefix(&spec.folder) else {
        return Place::Outside;
    };
    let mut names = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(name) => names.push(name),
            _ => return Place::Outside,
        }
    }
    let Some((last, dirs)) = names.split_last() else {
        return Place::Folder;
    };
    if !spec.recursive && !dirs.is_empty() {
        return Place::Outside;
    }
    if dirs.iter().any(|dir| spec.names.is_ignored(dir)) {
        return Place::Outside;
    }
    Place::Inside(last)
}

/// Lists the rule's build files in its folder (and below it when the rule
/// is recursive), with their identities: those the rule takes
/// ([`Take::Yes`]) and those it refuses ([`Take::Refused`]: the pattern
/// matches, `filename_regex` does not).
///
/// Costs one directory read per folder, one glob test per name and one
/// `stat` per matching name; symlinks to files are followed, symlinks to
/// folders are not (they could loop). Sub-folders whose name is ignored
/// (`.git`, `.stversions`, ...) are skipped. An unreadable sub-folder is
/// skipped; an unreadable rule folder is an error.
pub fn scan_folder(spec: &WatchSpec) -> io::Result<Vec<(FileIdentity, Take)>> {
    let mut found = Vec::new();
    let mut stack = vec![spec.folder.clone()];
    let mut top = true;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if !top => {
                tracing::debug!(rule = %spec.rule, folder = %dir.display(), "skipping unreadable sub-folder: {err}");
                continue;
            }
            Err(err) => return Err(err),
        };
        top = false;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if spec.recursive && !spec.names.is_ignored(&name) {
                    stack.push(entry.path());
                }
                continue;
            }
            let take = spec.names.takes(&name);
            if take == Take::No {
                continue;
            }
            let path = entry.path();
            // `metadata` follows a symlink to the file it names, which is
            // what an upload would read.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    found.push((FileIdentity::from_metadata(path, &meta), take))
                }
                _ => {}
            }
        }
    }
    Ok(found)
}
