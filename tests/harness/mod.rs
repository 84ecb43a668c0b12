//! Scenarios for the pipeline tests: a temporary directory with one drop
//! folder per app and a state directory, a strict sandbox with the apps, and
//! a config file pointing the daemon at both, with timings short enough that
//! a whole build takes a fraction of a second.
//!
//! The daemon runs either in-process (`daemon::run`, for scenarios that read
//! the store or steer the sandbox mid-run) or as the real binary (for crash
//! points and signals). Every wait is bounded, so a test that goes wrong
//! fails with the daemon's log instead of hanging.
//!
//! Owns no assertions about a particular scenario beyond the common one:
//! every dropped file is published exactly once with its content.
//!
//! This is the one harness of the test suite: every test file that needs
//! shared help includes it (`mod harness;`, or through `tests/common`, the
//! client tests' layer on top of it). Test ZIPs are written by [`zips`]
//! only. Waits are on conditions (a log line, a build state, a sandbox
//! snapshot, an event), polled or awaited with a deadline; nothing here
//! sleeps hoping something has happened meanwhile.

#![allow(dead_code)] // Each test file uses its own part of the harness.

pub mod zips;

pub use patchkit_autopublish::sandbox::Variant;

/// Writes one test per sandbox variant (and one with none, `contract`)
/// from a body that takes `Option<Variant>`: the pipeline must be right
/// under every plausible answer of the real PatchKit. The tests of one body
/// sit in a module named after it.
#[allow(unused_macros)]
macro_rules! each_variant {
    ($(#[doc = $doc:expr])* async fn $name:ident($v:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($v: Option<$crate::harness::Variant>) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn contract() {
                run(None).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn swagger_keys() {
                run(Some($crate::harness::Variant::SwaggerKeys)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lazy_timestamps() {
                run(Some($crate::harness::Variant::LazyTimestamps)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn content_file_404() {
                run(Some($crate::harness::Variant::ContentFile404)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn forbidden_403() {
                run(Some($crate::harness::Variant::Forbidden403)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn forgetful() {
                run(Some($crate::harness::Variant::Forgetful)).await
            }
        }
    };
}

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use patchkit_autopublish::config::Config;
use patchkit_autopublish::daemon::{self, DaemonError, RunOptions};
use patchkit_autopublish::intake;
use patchkit_autopublish::patchkit::{ApiKey, AppVersion, Client, ClientOptions};
use patchkit_autopublish::sandbox::{Sandbox, SandboxConfig, SandboxHandle, Snapshot};
use patchkit_autopublish::state::BuildState;
use patchkit_autopublish::store::{Build, BuildId, Enqueued, ListFilter, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// The API key the sandbox knows.
pub const KEY: &str = "pipeline-key";
/// The smallest chunk the config accepts: many chunks from a small file.
pub const CHUNK: u64 = 256 * 1024;
/// The longest any single wait may take before the test fails. Generous for
/// a shared two-core machine; a healthy run takes a small fraction of it.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The route of version creation, as the sandbox counts it.
pub const CREATE_VERSION: &str = "POST /1/apps/{secret}/versions";
/// The route of upload creation.
pub const CREATE_UPLOAD: &str = "POST /1/uploads";
/// The route of publishing.
pub const PUBLISH: &str = "POST /1/apps/{secret}/versions/{id}/publish";
/// The route of chunk uploads.
pub const CHUNK_ROUTE: &str = "POST /1/uploads/{id}/chunk";

/// What a scenario starts with; change it with the builder methods.
pub struct Setup {
    apps: usize,
    workers: usize,
    settle: &'static str,
    auth_retry: &'static str,
    shutdown_timeout: &'static str,
    /// `[patchkit] retry_base`, `retry_cap` and `retry_give_up`.
    retry: [&'static str; 3],
    /// Extra `key = value` lines for the rule of each app.
    rule_lines: Vec<Vec<String>>,
    sandbox: SandboxConfig,
    /// The sandbox variant in force, if any.
    variant: Option<Variant>,
}

impl Setup {
    /// `apps` apps (`app-0`, `app-1`...), each with its own rule and drop
    /// folder; processing and publishing take 20 ms.
    pub fn new(apps: usize) -> Self {
        let mut sandbox = SandboxConfig::new(KEY)
            .job_duration(Duration::from_millis(20))
            .publish_duration(Duration::from_millis(20));
        for i in 0..apps {
            sandbox = sandbox.with_app(app(i));
        }
        Self {
            apps,
            workers: apps.max(1),
            settle: "1s",
            auth_retry: "1s",
            shutdown_timeout: "5s",
            retry: ["5ms", "100ms", "2m"],
            rule_lines: vec![Vec::new(); apps],
            sandbox,
            variant: None,
        }
    }

    /// Runs the sandbox under this variant (none: the contract's answers).
    pub fn variant(mut self, variant: Option<Variant>) -> Self {
        if let Some(v) = variant {
            self.sandbox = self.sandbox.variant(v);
        }
        self.variant = variant;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn shutdown_timeout(mut self, d: &'static str) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// The request retry policy: `[patchkit] retry_base`, `retry_cap` and
    /// `retry_give_up`.
    pub fn retry(mut self, base: &'static str, cap: &'static str, give_up: &'static str) -> Self {
        self.retry = [base, cap, give_up];
        self
    }

    pub fn auth_retry(mut self, d: &'static str) -> Self {
        self.auth_retry = d;
        self
    }

    /// Adds a line such as `publish = false` to the rule of app `i`.
    pub fn rule(mut self, i: usize, line: &str) -> Self {
        self.rule_lines[i].push(line.to_owned());
        self
    }

    /// Changes the sandbox (faults, outcomes, durations).
    pub fn sandbox(mut self, f: impl FnOnce(SandboxConfig) -> SandboxConfig) -> Self {
        self.sandbox = f(self.sandbox);
        self
    }

    pub async fn start(self) -> Scenario {
        let dir = tempfile::Builder::new()
            .prefix("pipeline-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        let sb = Sandbox::start(self.sandbox).await.unwrap();
        let key_file = root.join("api-key");
        std::fs::write(&key_file, KEY).unwrap();
        let mut text = format!(
            r#"[patchkit]
api_url = "{api}"
upload_url = "{upload}"
api_key_file = "{key}"
request_timeout = "10s"
connect_timeout = "2s"
stall_timeout = "5s"
retry_base = "{retry_base}"
retry_cap = "{retry_cap}"
retry_give_up = "{retry_give_up}"

[daemon]
state_dir = "{state}"
workers = {workers}
chunk_size = "256KiB"
settle = "{settle}"
rescan = "1h"
shutdown_timeout = "{shutdown}"
poll_interval = "20ms"
auth_retry = "{auth_retry}"
"#,
            api = sb.main_url(),
            upload = sb.upload_url(),
            key = key_file.display(),
            state = root.join("state").display(),
            workers = self.workers,
            settle = self.settle,
            shutdown = self.shutdown_timeout,
            auth_retry = self.auth_retry,
            retry_base = self.retry[0],
            retry_cap = self.retry[1],
            retry_give_up = self.retry[2],
        );
        for (i, lines) in self.rule_lines.iter().enumerate() {
            let folder = root.join("drops").join(app(i));
            std::fs::create_dir_all(&folder).unwrap();
            text.push_str(&format!(
                "\n[[rule]]\nname = \"rule-{i}\"\nfolder = \"{}\"\napp_secret = \"{}\"\n\
                 label = \"{{stem}}\"\n",
                folder.display(),
                app(i)
            ));
            for line in lines {
                text.push_str(line);
                text.push('\n');
            }
        }
        let config = root.join("config.toml");
        std::fs::write(&config, text).unwrap();
        Scenario {
            dir,
            sb,
            config,
            apps: self.apps,
            runs: AtomicUsize::new(0),
            variant: self.variant,
        }
    }
}

/// The secret of app `i`.
pub fn app(i: usize) -> String {
    format!("app-{i}")
}

/// A ZIP payload that makes the file span exactly `n` chunks.
pub fn chunks(n: u64) -> u64 {
    n * CHUNK - CHUNK / 2
}

/// A build file put in a drop folder.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// The app secret of its rule.
    pub app: String,
    pub path: PathBuf,
    /// The version label the rule gives it (the file stem).
    pub label: String,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
}

/// A running scenario. The sandbox and the temporary directory live as long
/// as it does.
pub struct Scenario {
    pub dir: tempfile::TempDir,
    pub sb: SandboxHandle,
    /// The config file.
    pub config: PathBuf,
    apps: usize,
    /// Child runs so far, to name their logs.
    runs: AtomicUsize,
    /// The sandbox variant in force, if any.
    pub variant: Option<Variant>,
}

impl Scenario {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn load_config(&self) -> Config {
        Config::load(&self.config).unwrap()
    }

    /// Writes `key` into the key file the config names.
    pub fn write_key(&self, key: &str) {
        std::fs::write(self.dir.path().join("api-key"), key).unwrap();
    }

    /// Writes a valid STORE ZIP named `{label}.zip` into app `i`'s folder,
    /// with `payload` bytes of content unique to the label.
    pub fn drop_zip(&self, i: usize, label: &str, payload: u64) -> Dropped {
        let folder = self.dir.path().join("drops").join(app(i));
        let path = folder.join(format!("{label}.zip"));
        let sha256 = write_zip(&path, label, payload);
        Dropped {
            app: app(i),
            path,
            label: label.to_owned(),
            sha256,
        }
    }

    /// Records the files as builds in this order, as the watcher would have
    /// on their arrival.
    pub async fn enqueue(&self, files: &[&Dropped]) -> Vec<BuildId> {
        let config = self.load_config();
        let store = self.open_store().await;
        let mut ids = Vec::new();
        for file in files {
            let rule = config
                .rules
                .iter()
                .find(|r| r.app_secret == file.app)
                .unwrap();
            match intake::enqueue_file(&store, rule, &file.path)
                .await
                .unwrap()
            {
                Enqueued::New(build) => ids.push(build.id),
                Enqueued::Existing(id) => panic!("{} was already build {id}", file.path.display()),
            }
        }
        ids
    }

    /// Runs the daemon in-process with `--once` to the end.
    pub async fn run_once(&self) {
        self.run_once_within(LIMIT).await
    }

    /// Runs the daemon in-process with `--once` to the end, within `limit`.
    pub async fn run_once_within(&self, limit: Duration) {
        tokio::time::timeout(limit, self.run_in_process(CancellationToken::new()))
            .await
            .expect("the daemon finished every build in time")
    }

    /// Runs the daemon in-process with `--once` until it is done or `cancel`
    /// fires.
    /// Builds that fail are the scenario's business: the run's error for
    /// them is accepted here.
    pub async fn run_in_process(&self, cancel: CancellationToken) {
        match self.run_daemon(true, cancel).await {
            Ok(()) | Err(DaemonError::BuildsFailed { .. }) => {}
            Err(e) => panic!("the daemon stopped: {e}"),
        }
    }

    /// Runs the daemon in this process in watch mode until `cancel` fires.
    pub async fn run_watching(&self, cancel: CancellationToken) {
        self.run_daemon(false, cancel)
            .await
            .unwrap_or_else(|e| panic!("the daemon stopped: {e}"))
    }

    /// Runs the daemon in this process and returns how it ended.
    pub async fn run_daemon(
        &self,
        once: bool,
        cancel: CancellationToken,
    ) -> Result<(), DaemonError> {
        // A store this process dropped a moment ago may still hold sled's
        // lock for a moment; nothing has happened before the store is open,
        // so starting again is safe.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let opts = RunOptions {
                once,
                ..Default::default()
            };
            match daemon::run(self.load_config(), opts, cancel.clone()).await {
                Err(DaemonError::Store(StoreError::Locked { .. })) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => return other,
            }
        }
    }

    /// Opens the store (the daemon must not be running in this process).
    pub async fn open_store(&self) -> Store {
        let dir = self.state_dir();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Store::open(&dir) {
                    Ok(store) => return store,
                    Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => panic!("open {}: {e}", dir.display()),
                }
            }
        })
        .await
        .unwrap()
    }

    /// Every build record, in id order.
    pub async fn builds(&self) -> Vec<Build> {
        let store = self.open_store().await;
        store.list(&ListFilter::default()).unwrap()
    }

    /// The build record of a file.
    pub async fn build_of(&self, file: &Dropped) -> Build {
        let builds = self.builds().await;
        builds
            .into_iter()
            .find(|b| b.file == file.path)
            .unwrap_or_else(|| panic!("no build for {}", file.path.display()))
    }

    /// Starts the real binary on this config: `run --once`, or `run` when
    /// `once` is false, with the crash point armed when given.
    pub fn spawn(&self, once: bool, crashpoint: Option<&str>) -> Daemon {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.path().join(format!("daemon-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"));
        cmd.arg("run").arg("--config").arg(&self.config);
        if once {
            cmd.arg("--once");
        }
        cmd.env_remove(patchkit_autopublish::crashpoint::ENV);
        if let Some(point) = crashpoint {
            cmd.env(patchkit_autopublish::crashpoint::ENV, point);
        }
        spawn_logged(cmd, log)
    }

    /// Runs `run --once` in a child to its end.
    pub async fn run_child(&self, crashpoint: Option<&str>) -> ExitStatus {
        self.spawn(true, crashpoint).wait(LIMIT).await
    }

    /// Runs the child to completion and fails the test unless it exits 0.
    pub async fn run_child_ok(&self) {
        let status = self.run_child(None).await;
        assert_eq!(status.code(), Some(0), "{status:?}\n{}", self.logs());
    }

    /// Runs a CLI command (`retry`, `cancel`...) on this config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove(patchkit_autopublish::crashpoint::ENV)
            .output()
            .unwrap()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.sb.snapshot()
    }

    /// Every child log so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in 0..self.runs.load(Ordering::SeqCst) {
            let log = self.dir.path().join(format!("daemon-{n}.log"));
            out.push_str(&format!("--- run {n}\n"));
            out.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        out
    }

    /// A client with the right key, to prepare the sandbox as a person would.
    pub fn client(&self) -> Client {
        let opts = ClientOptions::new(
            self.sb.main_url().parse().unwrap(),
            self.sb.upload_url().parse().unwrap(),
            ApiKey::new(KEY).unwrap(),
        );
        Client::new(opts).unwrap()
    }

    /// Creates a draft version on an app, as someone else would.
    pub async fn create_draft(&self, app: &str, label: &str) -> AppVersion {
        self.client()
            .create_version(app, label, None)
            .await
            .unwrap()
    }

    /// Asserts the app's published versions are exactly these files, in
    /// this order, each with its content, and that no other version exists.
    pub fn assert_published_in_order(&self, app: &str, files: &[&Dropped]) {
        let snap = self.snapshot();
        let versions = snap.versions(app);
        let got: Vec<(&str, bool, Option<&str>)> = versions
            .iter()
            .map(|v| (v.label.as_str(), v.published, v.content_sha256.as_deref()))
            .collect();
        let want: Vec<(&str, bool, Option<&str>)> = files
            .iter()
            .map(|f| (f.label.as_str(), true, Some(f.sha256.as_str())))
            .collect();
        assert_eq!(got, want, "versions of {app}\n{}", self.logs());
    }

    /// Whether PatchKit forgets its drafts and uploads when it restarts.
    pub fn forgetful(&self) -> bool {
        self.variant == Some(Variant::Forgetful)
    }

    /// Restarts PatchKit while the daemon is down (with the `forgetful`
    /// variant it forgets every draft, upload and job).
    pub fn restart_patchkit(&self) {
        self.sb.restart();
    }

    /// The sandbox, to steer it (channel apps, outcomes) mid-scenario.
    pub fn sandbox(&self) -> &SandboxHandle {
        &self.sb
    }

    /// The invariants after a crash and a restart, for one file on its own
    /// app: one version, published with the file's content; one version
    /// created; at most `max_uploads` uploads created; at most one chunk
    /// received twice. When PatchKit forgot its drafts in between, the work
    /// before the restart was lost with them: then only the outcome counts
    /// (one version, published once, with the file's content).
    pub fn assert_recovered(&self, file: &Dropped, max_uploads: u64, context: &str) {
        let snap = self.snapshot();
        let logs = || format!("{context}\n{}", self.logs());
        let versions = snap.versions(&file.app);
        assert_eq!(versions.len(), 1, "{versions:?}\n{}", logs());
        assert!(versions[0].published, "{:?}\n{}", versions[0], logs());
        assert_eq!(
            versions[0].content_sha256.as_deref(),
            Some(file.sha256.as_str()),
            "{}",
            logs()
        );
        if self.forgetful() {
            return;
        }
        assert_eq!(snap.count(CREATE_VERSION, "201"), 1, "{}", logs());
        let uploads = snap.count(CREATE_UPLOAD, "200") + snap.count(CREATE_UPLOAD, "201");
        assert!(
            (1..=max_uploads).contains(&uploads),
            "{uploads} uploads\n{}",
            logs()
        );
        let twice: u64 = snap.uploads.iter().map(|u| u.received_twice).sum();
        assert!(twice <= CHUNK, "{twice} bytes sent twice\n{}", logs());
        assert_eq!(snap.total(PUBLISH), 1, "{}", logs());
    }
}

/// The real daemon binary, running.
pub struct Daemon {
    child: Child,
    /// Its stderr.
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited, and how.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the exit, failing the test (and killing the child) after
    /// `limit`.
    pub async fn wait(mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the daemon did not exit within {limit:?}\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// SIGKILLs it and waits for the exit.
    pub async fn kill(mut self) -> ExitStatus {
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
        status
    }
}

/// Polls `check` every 5 ms until it holds, failing the test after
/// [`LIMIT`]. For conditions the test cannot be told about any other way
/// (another process's progress, seen through the sandbox).
pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes a STORE ZIP with one entry of `payload` pseudo-random bytes
/// derived from `seed`, under a temporary name renamed in, and returns the
/// SHA-256 of the file. See [`zips`] for other shapes.
pub fn write_zip(path: &Path, seed: &str, payload: u64) -> String {
    zips::Zip::seeded(seed, payload).write(path)
}

/// The state of a build, by name.
pub fn state_name(build: &Build) -> &'static str {
    build.state.name()
}

/// The reason of a failed build, or a panic naming its state.
pub fn failure_reason(build: &Build) -> &str {
    match &build.state {
        BuildState::Failed { reason, .. } => reason,
        other => panic!("build {} is {other}, not failed", build.id),
    }
}

// ---------------------------------------------------------------------------
// Operations tests (`tests/cli.rs`, `tests/ops.rs`): the config edited
// between runs, the daemon as a watching child with extra environment, the
// CLI with its output captured, and waits on logs, sockets and build states.
// Every captured output is checked for the API key on the way.
// ---------------------------------------------------------------------------

/// What a CLI command printed, with its exit code.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    fn from(output: std::process::Output) -> Self {
        let out = CliOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert_no_key("CLI stdout", &out.stdout);
        assert_no_key("CLI stderr", &out.stderr);
        out
    }
}

/// Fails the test if `text` holds the sandbox's API key.
pub fn assert_no_key(what: &str, text: &str) {
    assert!(!text.contains(KEY), "{what} shows the API key:\n{text}");
}

/// A loopback address where nothing listens, held for as long as the value
/// lives: a socket bound without `listen`. Connections to it are refused,
/// and no other test can take the port meanwhile (the socket does not set
/// `SO_REUSEADDR`), unlike a port bound, released and hoped to stay free.
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Self { socket }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.socket.local_addr().unwrap()
    }
}

impl Scenario {
    /// Rewrites the config file through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
    }

    /// Adds `line` (such as `metrics = "..."`) to the `[daemon]` section.
    pub fn daemon_line(&self, line: &str) {
        self.edit_config(|text| text.replacen("[daemon]\n", &format!("[daemon]\n{line}\n"), 1));
    }

    /// Appends sections (such as `[[notify]]`) to the config.
    pub fn append_config(&self, sections: &str) {
        self.edit_config(|text| format!("{text}\n{sections}\n"));
    }

    /// Starts the real binary watching (`run`), with extra environment
    /// variables; its stderr goes to the next run log like [`Self::spawn`].
    pub fn spawn_env(&self, env: &[(&str, &str)]) -> Daemon {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.path().join(format!("daemon-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"));
        cmd.arg("run").arg("--config").arg(&self.config);
        cmd.env_remove(patchkit_autopublish::crashpoint::ENV)
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info");
        for (name, value) in env {
            cmd.env(name, value);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Runs a CLI command on this config and captures what it printed.
    pub fn run_cli(&self, args: &[&str]) -> CliOutput {
        CliOutput::from(self.cli(args))
    }

    /// `status --json --all`, parsed.
    pub fn status_rows(&self) -> Vec<serde_json::Value> {
        let out = self.run_cli(&["status", "--json", "--all"]);
        assert_eq!(out.code, Some(0), "status: {out:?}\n{}", self.logs());
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// Waits until `status` shows the build labelled `label` in `state`, and
    /// returns its row. Polls the CLI every 50 ms: each poll starts a
    /// process, and a debug build of it takes a few milliseconds to answer.
    pub async fn until_state(&self, label: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let rows = self.status_rows();
            if let Some(row) = rows
                .iter()
                .find(|r| r["label"] == label && r["state"] == state)
            {
                return row.clone();
            }
            assert!(
                Instant::now() < deadline,
                "build {label} never became {state}: {rows:#?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until app `app` has a published version labelled `label`, and
    /// returns its id.
    pub async fn until_published(&self, app: &str, label: &str) -> u64 {
        let mut id = 0;
        until(&format!("{label} published on {app}"), || {
            let snap = self.snapshot();
            match snap
                .versions(app)
                .iter()
                .find(|v| v.label == label && v.published)
            {
                Some(v) => {
                    id = v.id;
                    true
                }
                None => false,
            }
        })
        .await;
        id
    }

    /// Waits until the running daemon's control socket exists.
    pub async fn until_socket(&self) -> PathBuf {
        let path = self.state_dir().join("control.sock");
        until("the control socket", || path.exists()).await;
        path
    }

    /// Every run log so far, checked for the API key.
    pub fn logs_without_key(&self) -> String {
        let logs = self.logs();
        assert_no_key("a daemon log", &logs);
        logs
    }
}

impl Daemon {
    /// What it wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log holds `needle` `times` times.
    pub async fn until_log(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + LIMIT;
        while self.log_text().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?} {times} time(s):\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the log names the address the metrics are served on
    /// (configured as port 0, so the daemon picked a free one) and returns
    /// the URL of the page.
    pub async fn metrics_url(&self) -> String {
        const SAID: &str = "metrics at http://";
        self.until_log(SAID, 1).await;
        let text = self.log_text();
        let rest = &text[text.find(SAID).unwrap() + SAID.len()..];
        let addr = rest.split("/metrics").next().unwrap();
        format!("http://{addr}/metrics")
    }

    /// SIGTERM, then waits for a clean exit (code 0).
    pub async fn stop(self) {
        self.signal("TERM");
        let log = self.log.clone();
        let status = self.wait(LIMIT).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

// ---------------------------------------------------------------------------
// Watch mode: the daemon running in-process with its real watcher, for the
// end-to-end tests of folders, settling and rules (tests/watch_e2e.rs).
// ---------------------------------------------------------------------------

/// How long a watch-mode test waits for one outcome (a build event, a
/// daemon start or stop). A healthy run needs a settle period, a two-second
/// folder retry at most and a fraction of a second per build; the rest is
/// room for a busy two-core machine.
pub const WATCH_WAIT: Duration = Duration::from_secs(60);

impl Setup {
    /// Sets the daemon's `settle` (the default, "0s", suits `--once` runs on
    /// files that are complete before the daemon starts).
    pub fn settle(mut self, d: &'static str) -> Self {
        self.settle = d;
        self
    }
}

impl Scenario {
    /// The drop folder of app `i`'s rule.
    pub fn folder(&self, i: usize) -> PathBuf {
        self.dir.path().join("drops").join(app(i))
    }

    /// Sets `key = value` (`value` written as TOML) in the rule of app `i`,
    /// replacing the key's line if the rule has one.
    pub fn set_rule_key(&self, i: usize, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let start = text
            .find(&format!("name = \"rule-{i}\"\n"))
            .unwrap_or_else(|| panic!("no rule-{i} in the config"));
        let end = text[start..]
            .find("\n[[rule]]")
            .map_or(text.len(), |e| start + e);
        let prefix = format!("{key} = ");
        let mut lines: Vec<String> = text[start..end].lines().map(str::to_owned).collect();
        match lines.iter_mut().find(|l| l.starts_with(&prefix)) {
            Some(line) => *line = format!("{prefix}{value}"),
            None => lines.push(format!("{prefix}{value}")),
        }
        let edited = format!("{}{}\n{}", &text[..start], lines.join("\n"), &text[end..]);
        std::fs::write(&self.config, edited).unwrap();
    }

    /// Starts the daemon in watch mode in-process on the current config and
    /// returns once its event loop answers.
    pub async fn watch(&self) -> Watching {
        // A store the previous run in this process dropped a moment ago may
        // still hold sled's lock; nothing has happened before the store is
        // open, so starting again is safe.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let observer = patchkit_autopublish::observe::Observer::new();
            let events = observer.subscribe();
            let (commands, command_rx) = tokio::sync::mpsc::channel(8);
            let (reloads, reload_rx) = tokio::sync::mpsc::channel(8);
            let cancel = CancellationToken::new();
            let opts = RunOptions {
                once: false,
                commands: Some(command_rx),
                reloads: Some(reload_rx),
                observer,
            };
            let task = tokio::spawn(daemon::run(self.load_config(), opts, cancel.clone()));
            let (tx, rx) = tokio::sync::oneshot::channel();
            commands
                .send(patchkit_autopublish::control::ControlCommand::Status(tx))
                .await
                .expect("the command channel is open until the daemon ends");
            if let Ok(Ok(_)) = tokio::time::timeout(WATCH_WAIT, rx).await {
                return Watching {
                    cancel,
                    task,
                    events,
                    commands,
                    reloads,
                    seen: Vec::new(),
                };
            }
            cancel.cancel();
            match tokio::time::timeout(WATCH_WAIT, task).await {
                Ok(Ok(Err(DaemonError::Store(StoreError::Locked { .. }))))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("the daemon did not start: {other:?}"),
            }
        }
    }
}

/// The daemon running in watch mode in this process.
pub struct Watching {
    /// Stops it.
    cancel: CancellationToken,
    /// `daemon::run`.
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    /// Its build events.
    events: tokio::sync::broadcast::Receiver<patchkit_autopublish::observe::BuildEvent>,
    /// Its control commands.
    commands: tokio::sync::mpsc::Sender<patchkit_autopublish::control::ControlCommand>,
    /// Its config reloads.
    reloads: tokio::sync::mpsc::Sender<Result<Config, patchkit_autopublish::config::ConfigError>>,
    /// Every build event received so far, in order.
    pub seen: Vec<patchkit_autopublish::observe::BuildEvent>,
}

impl Watching {
    /// The first build event matching `pred`, received before or within
    /// [`WATCH_WAIT`]; fails the test naming `what` otherwise.
    pub async fn event(
        &mut self,
        what: &str,
        pred: impl Fn(&patchkit_autopublish::observe::BuildEvent) -> bool,
    ) -> patchkit_autopublish::observe::BuildEvent {
        use tokio::sync::broadcast::error::RecvError;
        self.drain();
        if let Some(event) = self.seen.iter().find(|e| pred(e)) {
            return event.clone();
        }
        let deadline = tokio::time::Instant::now() + WATCH_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) => {
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(Err(RecvError::Lagged(n))) => panic!("{n} build events were missed"),
                Ok(Err(RecvError::Closed)) => panic!("the daemon ended before {what}"),
                Err(_) => panic!(
                    "no {what} within {WATCH_WAIT:?}; events so far:\n{}",
                    self.history()
                ),
            }
        }
    }

    /// Takes the events already waiting into `seen`, without waiting.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
    }

    /// The events so far, one line each, for failure messages.
    pub fn history(&self) -> String {
        self.seen
            .iter()
            .map(|e| {
                format!(
                    "  {} {} {:?} {}",
                    e.build.id,
                    e.kind.as_str(),
                    e.build.file.file_name().unwrap_or_default(),
                    e.build.state
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The build of the file at `path` once it is published.
    pub async fn published(&mut self, path: &Path) -> Build {
        use patchkit_autopublish::observe::EventKind;
        let what = format!("publication of {}", path.display());
        self.event(&what, |e| {
            e.kind == EventKind::Published && e.build.file == path
        })
        .await
        .build
    }

    /// The build of the file at `path` once it has failed.
    pub async fn failed(&mut self, path: &Path) -> Build {
        use patchkit_autopublish::observe::EventKind;
        let what = format!("failure of {}", path.display());
        self.event(&what, |e| {
            e.kind == EventKind::Failed && e.build.file == path
        })
        .await
        .build
    }

    /// The ids of the builds taken for the file at `path` so far.
    pub fn builds_of(&mut self, path: &Path) -> Vec<BuildId> {
        self.drain();
        let mut ids: Vec<BuildId> = self
            .seen
            .iter()
            .filter(|e| e.build.file == path)
            .map(|e| e.build.id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The unfinished builds, as `status` shows them.
    pub async fn status(&self) -> Vec<Build> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(patchkit_autopublish::control::ControlCommand::Status(tx))
            .await
            .expect("the daemon is running");
        tokio::time::timeout(WATCH_WAIT, rx)
            .await
            .expect("the daemon answers status in time")
            .expect("the daemon answers status")
    }

    /// Waits until the daemon has no unfinished build (polling `status`:
    /// the sandbox may show a version published a moment before the
    /// daemon records it).
    pub async fn until_idle(&self) {
        let deadline = Instant::now() + WATCH_WAIT;
        while !self.status().await.is_empty() {
            assert!(Instant::now() < deadline, "builds still unfinished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cancels a build through the running daemon, as `cancel` does.
    pub async fn cancel(
        &self,
        id: BuildId,
    ) -> Result<Build, patchkit_autopublish::control::ControlError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(patchkit_autopublish::control::ControlCommand::Cancel(
                id, tx,
            ))
            .await
            .expect("the daemon is running");
        tokio::time::timeout(WATCH_WAIT, rx)
            .await
            .expect("the daemon answers cancel in time")
            .expect("the daemon answers cancel")
    }

    /// Hands the daemon a reloaded config, as SIGHUP does.
    pub async fn reload(&self, config: Result<Config, patchkit_autopublish::config::ConfigError>) {
        self.reloads
            .send(config)
            .await
            .expect("the daemon takes reloads while it runs");
    }

    /// Stops the daemon as SIGTERM does and waits for a clean end.
    pub async fn stop(self) {
        self.cancel.cancel();
        match tokio::time::timeout(WATCH_WAIT, self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the daemon did not stop cleanly: {other:?}"),
        }
    }
}

/// Another daemon of the same scenario: its own config, state directory and
/// drop folder, publishing to the same sandbox and apps, as a second build
/// server would.
pub struct Peer {
    /// Its config file.
    pub config: PathBuf,
    /// Its drop folder for app `0`.
    pub folder: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
    logs: PathBuf,
    runs: AtomicUsize,
}

impl Scenario {
    /// A second daemon named `name` for app 0, with a config copied from this
    /// one (same sandbox, key and timings) and its own state and folder.
    pub fn peer(&self, name: &str) -> Peer {
        let root = self.dir.path().join(name);
        let state = root.join("state");
        let folder = root.join("drops");
        std::fs::create_dir_all(&folder).unwrap();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mine_state = self.state_dir();
        let mine_folder = self.dir.path().join("drops").join(app(0));
        let text = text
            .replace(
                &format!("\"{}\"", mine_state.display()),
                &format!("\"{}\"", state.display()),
            )
            .replace(
                &format!("\"{}\"", mine_folder.display()),
                &format!("\"{}\"", folder.display()),
            );
        let config = root.join("config.toml");
        std::fs::write(&config, text).unwrap();
        Peer {
            config,
            folder,
            state,
            logs: root,
            runs: AtomicUsize::new(0),
        }
    }
}

impl Peer {
    /// Starts the real binary watching on this peer's config.
    pub fn spawn(&self) -> Daemon {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let log = self.logs.join(format!("daemon-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"));
        cmd.arg("run").arg("--config").arg(&self.config);
        cmd.env_remove(patchkit_autopublish::crashpoint::ENV);
        spawn_logged(cmd, log)
    }

    /// Drops a ZIP labelled `label` into this peer's folder.
    pub fn drop_zip(&self, label: &str, payload: u64) -> Dropped {
        let path = self.folder.join(format!("{label}.zip"));
        let sha256 = write_zip(&path, label, payload);
        Dropped {
            app: app(0),
            path,
            label: label.to_owned(),
            sha256,
        }
    }

    /// `status --json --all` of this peer, parsed.
    pub fn status_rows(&self) -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
            .args(["status", "--json", "--all", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "status: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Starts `cmd` as a daemon at `info` level, its stderr into `log`.
fn spawn_logged(mut cmd: Command, log: PathBuf) -> Daemon {
    let child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Daemon { child, log }
}
