//! Upload throughput and memory: our client against a plain sequential loop.
//!
//! Run with `cargo bench --bench upload`. Cargo builds the project's binary
//! in release mode first (binaries are built for benchmarks), and this
//! benchmark starts it as `patchkit-autopublish sandbox` in a separate process,
//! so the sandbox's memory and CPU accounting stay out of the client's.
//!
//! It writes a 1 GiB ZIP to a temporary directory (it stays in the page cache
//! for every run), then uploads it in 10 MiB chunks over loopback, each run in
//! a fresh child process of this benchmark so each side's peak RSS (`VmHWM`)
//! is its own:
//! - `ours`: [`Client::upload_file`], which reads and hashes the next chunk
//!   while the current one is on the wire;
//! - `baseline`: read a chunk into a `Vec`, compute its MD5 (the same MD5
//!   code as ours, so only the loop differs), one reqwest multipart POST with
//!   `Content-Range`, wait for the answer, next.
//!
//! The sides alternate (baseline, ours, baseline, ours, ...) so drift in the
//! machine's load touches both alike. It prints every run, then each side's
//! best and mean MiB/s, their ratio (ours / baseline) and our peak RSS, and
//! exits with status 1 when our best is below 0.95 × the baseline's best or
//! our peak RSS is above 64 MiB. The best run is compared because on a shared
//! machine the slow runs measure the neighbours' load, not the uploader.
//! The sandbox writes every upload to disk; each upload file is deleted after
//! its run and the whole directory at the end, so the disk needs about 2 GiB
//! free.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use patchkit_autopublish::patchkit::{
    ApiKey, Client, ClientOptions, UploadRequest, chunk_ranges, md5_hex,
};
use reqwest::multipart::{Form, Part};
use tokio_util::sync::CancellationToken;

/// The size of a large game build, and long enough (seconds per run) that
/// per-request and start-up costs do not decide the result.
const FILE_SIZE: u64 = 1 << 30;
/// PatchKit's recommended chunk size, which the daemon uses.
const CHUNK_SIZE: NonZeroU64 = NonZeroU64::new(10 << 20).unwrap();
/// Three runs per side: enough to see noise, short enough (about a minute in
/// all) to run often.
const ROUNDS: usize = 3;
/// The sandbox's one account.
const KEY: &str = "bench-key";
/// Ours must reach this fraction of the baseline's throughput...
const MIN_RATIO: f64 = 0.95;
/// ...with a peak RSS of at most this many MiB.
const MAX_RSS_MIB: f64 = 64.0;

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--side") {
        Some(at) => child(&args[at + 1..]),
        None => parent(),
    }
}

/// Which upload loop a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Baseline,
    Ours,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Baseline => "baseline",
            Side::Ours => "ours",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    side: Side,
    mib_per_s: f64,
    peak_rss_mib: f64,
}

fn parent() {
    let dir = tempfile::Builder::new()
        .prefix("patchkit-upload-bench-")
        .tempdir()
        .expect("temp dir");
    let file = dir.path().join("build.zip");
    let started = Instant::now();
    common::write_zip(&file, FILE_SIZE, 42).expect("writing the 1 GiB ZIP");
    println!(
        "wrote {} MiB in {:.1} s to {}",
        FILE_SIZE >> 20,
        started.elapsed().as_secs_f64(),
        file.display()
    );

    let data_dir = dir.path().join("sandbox");
    let sandbox = SandboxProcess::start(&data_dir);
    println!("sandbox: api {} upload {}", sandbox.api, sandbox.upload);

    let mut runs = Vec::new();
    for _ in 0..ROUNDS {
        for side in [Side::Baseline, Side::Ours] {
            let run = measure(side, &sandbox, &file);
            println!(
                "{:<8} {:>7.1} MiB/s  peak RSS {:>5.1} MiB",
                side.name(),
                run.mib_per_s,
                run.peak_rss_mib
            );
            runs.push(run);
            // The sandbox keeps each upload as a 1 GiB file; only the state
            // is needed afterwards.
            for entry in std::fs::read_dir(data_dir.join("uploads")).expect("uploads dir") {
                let _ = std::fs::remove_file(entry.expect("entry").path());
            }
        }
    }
    drop(sandbox);
    drop(dir);

    let stats = |side: Side| {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.side == side).collect();
        let best = mine.iter().map(|r| r.mib_per_s).fold(0.0, f64::max);
        let mean = mine.iter().map(|r| r.mib_per_s).sum::<f64>() / mine.len() as f64;
        let rss = mine.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
        (best, mean, rss)
    };
    let (base_best, base_mean, base_rss) = stats(Side::Baseline);
    let (ours_best, ours_mean, ours_rss) = stats(Side::Ours);
    let ratio = ours_best / base_best;
    println!();
    println!("1 GiB in 10 MiB chunks over loopback, best (mean) of {ROUNDS} runs:");
    println!("  baseline {base_best:7.1} MiB/s ({base_mean:.1})  peak RSS {base_rss:.1} MiB");
    println!("  ours     {ours_best:7.1} MiB/s ({ours_mean:.1})  peak RSS {ours_rss:.1} MiB");
    println!(
        "  ratio ours/baseline {ratio:.3} (means {:.3})",
        ours_mean / base_mean
    );
    let fast = ratio >= MIN_RATIO;
    let lean = ours_rss <= MAX_RSS_MIB;
    println!(
        "  throughput >= {MIN_RATIO} x baseline: {}; peak RSS <= {MAX_RSS_MIB} MiB: {}",
        verdict(fast),
        verdict(lean)
    );
    if !(fast && lean) {
        std::process::exit(1);
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Runs one side in a child process and reads its result line.
fn measure(side: Side, sandbox: &SandboxProcess, file: &Path) -> Run {
    let exe = std::env::current_exe().expect("own path");
    let output = Command::new(exe)
        .args(["--side", side.name(), "--api", &sandbox.api])
        .args(["--upload", &sandbox.upload, "--file"])
        .arg(file)
        .stderr(Stdio::inherit())
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} run failed: {stdout}",
        side.name()
    );
    let fields: Vec<f64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout:?}"))
        .split_whitespace()
        .map(|f| f.parse().expect("number"))
        .collect();
    Run {
        side,
        mib_per_s: fields[0],
        peak_rss_mib: fields[1],
    }
}

/// The sandbox binary, killed on drop.
struct SandboxProcess {
    child: Child,
    api: String,
    upload: String,
}

impl SandboxProcess {
    fn start(data_dir: &Path) -> SandboxProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
            .args(["sandbox", "--main-port", "0", "--upload-port", "0"])
            .args(["--api-key", KEY, "--data-dir"])
            .arg(data_dir)
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
        // The rest of what it prints is read and dropped: with the pipe
        // closed, its next line would fail and end the sandbox.
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

/// A child run: `--side NAME --api URL --upload URL --file PATH`. Prints
/// `RESULT <MiB/s> <peak RSS MiB>`.
fn child(args: &[String]) {
    let arg = |name: &str| {
        let at = args.iter().position(|a| a == name).expect(name);
        args[at + 1].clone()
    };
    let side = match args[0].as_str() {
        "ours" => Side::Ours,
        "baseline" => Side::Baseline,
        other => panic!("unknown side {other}"),
    };
    let (api, upload, file) = (arg("--api"), arg("--upload"), PathBuf::from(arg("--file")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let seconds = runtime.block_on(async {
        match side {
            Side::Ours => ours(&api, &upload, &file).await,
            Side::Baseline => baseline(&api, &upload, &file).await,
        }
    });
    let mib_per_s = FILE_SIZE as f64 / MIB / seconds;
    println!("RESULT {mib_per_s} {}", peak_rss_kib() as f64 / 1024.0);
}

/// Seconds `upload_file` takes for the whole file.
async fn ours(api: &str, upload: &str, file: &Path) -> f64 {
    let opts = ClientOptions::new(
        api.parse().expect("api url"),
        upload.parse().expect("upload url"),
        ApiKey::new(KEY).expect("key"),
    );
    let client = Client::new(opts).expect("client");
    let id = client
        .create_upload(FILE_SIZE)
        .await
        .expect("create upload");
    let req = UploadRequest {
        upload_id: id,
        path: file.to_owned(),
        total_size: FILE_SIZE,
        start_offset: 0,
        chunk_size: CHUNK_SIZE,
    };
    let (mut acks, mut acked) = tokio::sync::mpsc::channel(1);
    let counter = tokio::spawn(async move {
        let mut last = 0;
        while let Some(offset) = acked.recv().await {
            last = offset;
        }
        last
    });
    let started = Instant::now();
    client
        .upload_file(&req, &mut acks, &CancellationToken::new())
        .await
        .expect("upload_file");
    let seconds = started.elapsed().as_secs_f64();
    drop(acks);
    assert_eq!(counter.await.expect("counter"), FILE_SIZE);
    seconds
}

/// Seconds a plain sequential loop takes for the whole file.
async fn baseline(api: &str, upload: &str, file: &Path) -> f64 {
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{api}/1/uploads"))
        .header("X-Api-Key", KEY)
        .form(&[("total_size_bytes", FILE_SIZE.to_string())])
        .send()
        .await
        .expect("create upload")
        .json()
        .await
        .expect("upload JSON");
    let id = match &created["id"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let url = format!("{upload}/1/uploads/{id}/chunk");
    let mut reader = std::fs::File::open(file).expect("open");
    let started = Instant::now();
    for range in chunk_ranges(FILE_SIZE, CHUNK_SIZE, 0) {
        let mut chunk = vec![0; range.size() as usize];
        reader.read_exact(&mut chunk).expect("read");
        let md5 = md5_hex(&chunk);
        let part = Part::bytes(chunk)
            .file_name("chunk")
            .mime_str("application/octet-stream")
            .expect("mime");
        let form = Form::new().part("chunk", part).text("md5", md5);
        let response = http
            .post(&url)
            .header("X-Api-Key", KEY)
            .header("Content-Range", range.content_range(FILE_SIZE))
            .multipart(form)
            .send()
            .await
            .expect("chunk sent");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        response.bytes().await.expect("answer");
    }
    started.elapsed().as_secs_f64()
}

/// This process's peak resident set size (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}
