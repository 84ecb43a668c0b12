//! A switch that makes store writes fail, for tests of a full or broken
//! disk without root or a small file system.
//!
//! With `PATCHKIT_AUTOPUBLISH_STORE_FAULT=PATH` set, every store write fails
//! with "No space left on device" while `PATH` exists, the way sled reports
//! a full disk. Removing the file is space coming back. Without the variable
//! a write costs one check of a cached `None`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The environment variable that names the switch file.
pub const ENV: &str = "PATCHKIT_AUTOPUBLISH_STORE_FAULT";

fn switch() -> Option<&'static PathBuf> {
    static SWITCH: OnceLock<Option<PathBuf>> = OnceLock::new();
    SWITCH
        .get_or_init(|| std::env::var_os(ENV).map(PathBuf::from))
        .as_ref()
}

/// Fails like a full disk while the switch file exists.
pub fn check(_dir: &Path) -> std::io::Result<()> {
    match switch() {
        Some(path) if path.exists() => Err(std::io::Error::from_raw_os_error(libc_enospc())),
        _ => Ok(()),
    }
}

/// ENOSPC on Linux and the BSDs.
fn libc_enospc() -> i32 {
    28
}
