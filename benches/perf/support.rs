//! What every performance benchmark needs: the sandbox and the daemon as
//! separate processes of the release binary (so each one's CPU, wake-ups and
//! memory are its own), the daemon's log read as a timeline, `/proc`
//! counters, and a link emulator between the daemon and the sandbox.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The sandbox's one account.
pub const KEY: &str = "perf-key";
/// The one app the benchmarks publish to.
pub const APP: &str = "perf-app";

const MIB: f64 = 1024.0 * 1024.0;

/// Bytes as MiB, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// The release binary cargo built for this benchmark, or the one named by
/// `PERF_BIN` (to measure another release the same way).
fn binary() -> PathBuf {
    std::env::var_os("PERF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_patchkit-autopublish")))
}

/// `patchkit-autopublish sandbox` in its own process, killed on drop.
pub struct SandboxProcess {
    child: Child,
    /// Its API URL.
    pub api: String,
    /// Its upload host URL.
    pub upload: String,
}

impl SandboxProcess {
    /// Starts a sandbox with [`APP`] and these extra flags
    /// (`--job-duration`, ...), its uploads kept under `data_dir`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> SandboxProcess {
        let mut child = Command::new(binary())
            .args(["sandbox", "--api-key", KEY, "--app", APP, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sandbox starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut url_after = |label: &str| loop {
            let line = lines
                .next()
                .expect("the sandbox prints its URLs")
                .expect("stdout");
            if let Some(url) = line.trim().strip_prefix(label) {
                return url.trim().to_owned();
            }
        };
        let api = url_after("api:");
        let upload = url_after("upload:");
        // The rest of what it prints is read and dropped: a closed pipe
        // would fail its next print.
        std::thread::spawn(move || lines.for_each(drop));
        SandboxProcess { child, api, upload }
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the daemon's config says beyond the URLs.
pub struct DaemonSetup<'a> {
    /// API URL (the sandbox's, or a link emulator's in front of it).
    pub api: &'a str,
    /// Upload host URL.
    pub upload: &'a str,
    /// `chunk_size`.
    pub chunk_size: &'a str,
    /// `settle`.
    pub settle: &'a str,
}

/// `patchkit-autopublish run` in its own process with one rule for [`APP`],
/// its log (stdout, info level) in a file; killed on drop.
pub struct DaemonProcess {
    child: Child,
    /// The rule's drop folder.
    pub drops: PathBuf,
    log: PathBuf,
}

impl DaemonProcess {
    /// Writes a config under `root` and starts the daemon on it; returns once
    /// it logs that it is running.
    pub fn start(root: &Path, setup: &DaemonSetup) -> DaemonProcess {
        let drops = root.join("drops");
        std::fs::create_dir_all(&drops).expect("drop folder");
        let key = root.join("api-key");
        std::fs::write(&key, KEY).expect("key file");
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"[patchkit]
api_url = "{api}"
upload_url = "{upload}"
api_key_file = "{key}"

[daemon]
state_dir = "{state}"
chunk_size = "{chunk}"
settle = "{settle}"
log_level = "info"

[[rule]]
name = "perf"
folder = "{drops}"
app_secret = "{APP}"
label = "{{stem}}"
"#,
                api = setup.api,
                upload = setup.upload,
                key = key.display(),
                state = root.join("state").display(),
                chunk = setup.chunk_size,
                settle = setup.settle,
                drops = drops.display(),
            ),
        )
        .expect("config");
        let log = root.join("daemon.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary())
            .args(["run", "-c"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("daemon starts");
        let daemon = DaemonProcess { child, drops, log };
        daemon.wait_for_line("daemon running", Duration::from_secs(30));
        daemon
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (polling the log every 10 ms, at most `limit`) until `count`
    /// lines contain `text`; returns their timestamps.
    pub fn wait_for_lines(&self, text: &str, count: usize, limit: Duration) -> Vec<SystemTime> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            let found: Vec<SystemTime> = log
                .lines()
                .filter(|l| l.contains(text))
                .map(|l| timestamp(l).unwrap_or_else(|| panic!("no timestamp in {l:?}")))
                .collect();
            if found.len() >= count {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "{count} log line(s) with {text:?} did not come within {limit:?}; log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`wait_for_lines`](Self::wait_for_lines) for one line.
    pub fn wait_for_line(&self, text: &str, limit: Duration) -> SystemTime {
        self.wait_for_lines(text, 1, limit)[0]
    }

    /// Puts `file` into the drop folder as a hard link (no copy, so the
    /// file's pages stay in the page cache and its mtime stays put).
    pub fn drop_file(&self, file: &Path) {
        let name = file.file_name().expect("file name");
        std::fs::hard_link(file, self.drops.join(name)).expect("hard link into the drop folder");
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The time at the start of a log line (`2026-01-01T00:00:00.123456Z ...`).
fn timestamp(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// Seconds from `a` to `b` (negative if `b` is earlier).
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// User + system CPU seconds of process `pid` so far (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name may hold spaces; the fields after it do not.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after it.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// A value of `/proc/PID/status`, in KiB for the memory lines.
pub fn status_value(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status_field(&status, key)
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Context switches (voluntary + involuntary) of every thread of `pid` now,
/// by thread name (threads of one name summed).
pub fn context_switches(pid: u32) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue; // the thread ended
        };
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let switches = status_field(&status, "voluntary_ctxt_switches")
            + status_field(&status, "nonvoluntary_ctxt_switches");
        let name = name.trim().to_owned();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, n)) => *n += switches,
            None => out.push((name, switches)),
        }
    }
    out.sort();
    out
}

/// User + system CPU seconds `command` takes: the growth of this process's
/// waited-for children's rusage across its run (no other child is reaped
/// meanwhile: the others run until the end of a benchmark).
pub fn child_cpu_seconds(command: &mut Command) -> f64 {
    let before = children_cpu_seconds();
    let status = command
        .stdout(Stdio::null())
        .status()
        .expect("command runs");
    assert!(status.success(), "{command:?} failed: {status}");
    children_cpu_seconds() - before
}

fn children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// How a [`Link`] treats the bytes it carries.
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    /// Added to each direction: a round trip gets twice this.
    pub one_way_delay: Duration,
    /// Bytes per second through the link, all connections and both
    /// directions' data counted separately (None: unlimited).
    pub rate: Option<f64>,
}

/// A TCP proxy on loopback that behaves like a far or narrow link: every
/// byte is delayed by the one-way delay in each direction, and the bytes
/// from the client to the server are paced at the link's rate, shared by
/// all connections (a link is one pipe, whoever uses it). Answers are small,
/// so they are only delayed. Runs on its own runtime thread until dropped.
///
/// It also times the client: on each connection, from the moment an answer
/// was handed to the client until the client's next request began to
/// arrive ([`Link::client_gaps`]). With requests in series on a
/// connection, that is what the client adds per request beyond the link
/// and the server.
pub struct Link {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    gaps: Arc<Mutex<Vec<Duration>>>,
    server_gaps: Arc<Mutex<Vec<Duration>>>,
    _runtime: tokio::runtime::Runtime,
}

/// What both directions of one connection share.
struct Conn {
    /// When the last bytes of an answer were handed to the client, if the
    /// client has not sent anything since.
    answered_at: Mutex<Option<Instant>>,
    /// When the last bytes of a request were handed to the server, if the
    /// server has not answered since.
    delivered_at: Mutex<Option<Instant>>,
    /// Every client gap measured on the link.
    gaps: Arc<Mutex<Vec<Duration>>>,
    /// Every server gap: from a request's last byte to its answer's first.
    server_gaps: Arc<Mutex<Vec<Duration>>>,
}

impl Link {
    /// Starts a link in front of `target` (an `http://host:port` URL).
    pub fn start(target: &str, shape: LinkShape) -> Link {
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("link runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("link listens");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        // The time the link is busy until: pacing is shared by connections.
        let busy_until = Arc::new(Mutex::new(Instant::now()));
        let gaps = Arc::new(Mutex::new(Vec::new()));
        let all_gaps = Arc::clone(&gaps);
        let server_gaps = Arc::new(Mutex::new(Vec::new()));
        let all_server_gaps = Arc::clone(&server_gaps);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let busy = Arc::clone(&busy_until);
                let conn = Arc::new(Conn {
                    answered_at: Mutex::new(None),
                    delivered_at: Mutex::new(None),
                    gaps: Arc::clone(&all_gaps),
                    server_gaps: Arc::clone(&all_server_gaps),
                });
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = Direction::Up(busy, Arc::clone(&conn));
                    tokio::spawn(carry(client_read, server_write, shape, up));
                    tokio::spawn(carry(
                        server_read,
                        client_write,
                        shape,
                        Direction::Down(conn),
                    ));
                });
            }
        });
        Link {
            url,
            gaps,
            server_gaps,
            _runtime: runtime,
        }
    }

    /// The server's time per request so far: from a request's last byte
    /// reaching it to its answer's first byte leaving it.
    pub fn server_gaps(&self) -> Vec<Duration> {
        self.server_gaps.lock().expect("gaps").clone()
    }

    /// The client gaps measured so far, in the order they happened.
    pub fn client_gaps(&self) -> Vec<Duration> {
        self.gaps.lock().expect("gaps").clone()
    }
}

/// Which way [`carry`] moves bytes.
enum Direction {
    /// Client to server: paced, with the link's busy-until time.
    Up(Arc<Mutex<Instant>>, Arc<Conn>),
    /// Server to client.
    Down(Arc<Conn>),
}

/// Moves bytes from `from` to `to`, each read delivered `one_way_delay`
/// after the link finished carrying it; paced at the link's rate upwards.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shape: LinkShape,
    direction: Direction,
) {
    // Reads of at most 256 KiB: at 40 MiB/s one is 6 ms of link time, fine
    // grained enough that pacing is smooth.
    const READ: usize = 256 * 1024;
    // Longer than a timer's lateness, shorter than any pause that matters.
    const IDLE: Duration = Duration::from_millis(5);
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let delay = shape.one_way_delay;
    let (conn, down) = match &direction {
        Direction::Down(conn) => (Arc::clone(conn), true),
        Direction::Up(_, conn) => (Arc::clone(conn), false),
    };
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            let mark = if down {
                &conn.answered_at
            } else {
                &conn.delivered_at
            };
            *mark.lock().expect("conn") = Some(Instant::now());
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0; READ];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let sent_at = match &direction {
            Direction::Up(busy, conn) => {
                let now = Instant::now();
                if let Some(answered) = conn.answered_at.lock().expect("conn").take() {
                    conn.gaps.lock().expect("gaps").push(now - answered);
                }
                match shape.rate {
                    Some(rate) => {
                        let done = {
                            let mut until = busy.lock().expect("link lock");
                            // A link idle for a moment starts afresh; a timer
                            // that woke late does not cost the link its
                            // capacity (the bytes are still delivered when
                            // the schedule says).
                            let start = if *until + IDLE < now { now } else { *until };
                            *until = start + Duration::from_secs_f64(n as f64 / rate);
                            *until
                        };
                        // Reading no faster than the link carries keeps the
                        // sender's own buffers full, as a real narrow link
                        // does. A read already due goes on at once (a timer
                        // would round up to the next millisecond, every time).
                        if done > Instant::now() {
                            tokio::time::sleep_until(done.into()).await;
                        }
                        done
                    }
                    None => now,
                }
            }
            Direction::Down(conn) => {
                let now = Instant::now();
                if let Some(delivered) = conn.delivered_at.lock().expect("conn").take() {
                    conn.server_gaps.lock().expect("gaps").push(now - delivered);
                }
                now
            }
        };
        if tx.send((sent_at + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A ZIP of exactly `size` bytes at `path` (pseudo-random content from
/// `seed`), written with the tests' one ZIP writer.
pub fn write_zip(path: &Path, size: u64, seed: u64) {
    crate::zips::write_exact(path, size, seed).expect("writing a ZIP");
}

/// A fresh temporary directory for one benchmark, deleted at its end
/// unless `PERF_KEEP` is set (then its path is printed: the daemon's log and
/// config are in `daemon/`).
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("PERF_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix(&format!("patchkit-perf-{name}-"))
        .disable_cleanup(keep)
        .tempdir()
        .expect("temp dir");
    if keep {
        println!("(kept: {})", dir.path().display());
    }
    dir
}

/// "met" or "MISSED".
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}
