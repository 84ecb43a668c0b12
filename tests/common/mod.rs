//! The client tests' layer on the shared harness (`tests/harness`): a
//! sandbox with an app and a client pointed at it, ZIP files of an exact
//! size, and bounded waits on a condition. Used by the client tests and the
//! upload benchmark; the ZIPs and the waits are the harness's own.
//!
//! Each test binary uses a different subset of these helpers, so the ones a
//! binary does not call would otherwise warn as dead code.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patchkit_autopublish::patchkit::{ApiKey, Client, ClientOptions, RetryPolicy};
use patchkit_autopublish::sandbox::{Sandbox, SandboxConfig, SandboxHandle};

#[path = "../harness/mod.rs"]
mod harness;

// Re-exported for the binaries that use them; the others would warn.
#[allow(unused_imports)]
pub use harness::{until, zips, zips::sha256_file};

/// The key of the account that owns [`APP`].
pub const KEY: &str = "client-test-key";
/// An app owned by [`KEY`].
pub const APP: &str = "client-test-app";
/// A second account, whose app [`KEY`] may not touch.
pub const OTHER_KEY: &str = "other-key";
/// The app owned by [`OTHER_KEY`].
pub const OTHER_APP: &str = "other-app";

/// A sandbox, a client for it and a directory for test files.
pub struct Env {
    /// The running sandbox.
    pub sb: SandboxHandle,
    /// A client with [`KEY`] and [`quick_retries`].
    pub client: Client,
    /// Where test ZIPs are written; deleted on drop.
    pub dir: tempfile::TempDir,
}

/// The sandbox every test starts from: [`APP`] owned by [`KEY`], [`OTHER_APP`]
/// owned by [`OTHER_KEY`], the sandbox's short test durations, no faults.
pub fn config() -> SandboxConfig {
    SandboxConfig::new(KEY)
        .with_app(APP)
        .with_account(OTHER_KEY, [OTHER_APP])
}

/// Starts [`config`] and a client for it.
pub async fn start() -> Env {
    start_with(config()).await
}

/// Starts a sandbox with `config` and a client with [`KEY`].
pub async fn start_with(config: SandboxConfig) -> Env {
    let sb = Sandbox::start(config).await.expect("sandbox starts");
    let client = Client::new(options(&sb, KEY)).expect("client builds");
    let dir = tempfile::tempdir().expect("temp dir");
    Env { sb, client, dir }
}

/// Client options for `sb` with `key`, [`quick_retries`] and short timeouts.
pub fn options(sb: &SandboxHandle, key: &str) -> ClientOptions {
    let mut opts = ClientOptions::new(
        sb.main_url().parse().expect("main url"),
        sb.upload_url().parse().expect("upload url"),
        ApiKey::new(key).expect("non-blank key"),
    );
    opts.retry = quick_retries();
    // Far above any latency the tests inject (tens of milliseconds), so only
    // the stall test, which sets its own, ever sees a stall.
    opts.stall_timeout = Duration::from_secs(5);
    opts.request_timeout = Duration::from_secs(10);
    opts.connect_timeout = Duration::from_secs(2);
    opts
}

/// Retries after 1 to 50 ms, so fault tests run in well under a second;
/// giving up after 20 s turns a client that retries forever into a failure
/// rather than a hung test.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(2),
        cap: Duration::from_millis(50),
        give_up: Some(Duration::from_secs(20)),
    }
}

/// A ZIP written for a test.
#[derive(Debug, Clone)]
pub struct TestZip {
    /// Where it is.
    pub path: PathBuf,
    /// Its exact size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
}

impl Env {
    /// A valid ZIP of exactly `size` bytes in the test directory.
    pub fn zip(&self, size: u64) -> TestZip {
        let path = self.dir.path().join(format!("build-{size}.zip"));
        write_zip(&path, size, size).expect("zip written");
        let sha256 = sha256_file(&path).expect("zip hashed");
        TestZip { path, size, sha256 }
    }
}

/// Writes a ZIP of exactly `size` bytes holding one STORE entry of
/// pseudo-random bytes (seeded with `seed`, so different files differ and
/// every chunk of a file has its own MD5). STORE keeps writing as fast as
/// the disk, which matters for the benchmark's gigabyte.
pub fn write_zip(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    zips::write_exact(path, size, seed)
}
