//! Builds per hour: three 60 MiB builds of one app dropped together, uploads
//! over a 10 MiB/s link, 5 s processing, 1 s publishing. The time from the
//! drop until all three are live, against two bounds (both include the
//! settle time): the serial one (each build uploads, processes and publishes
//! after the last one is live) and the overlapped one (each build's upload
//! runs while the build before it processes and publishes).

use std::fs::File;
use std::time::{Duration, SystemTime};

use super::support::{
    DaemonProcess, DaemonSetup, Link, LinkShape, SandboxProcess, secs_between, temp_dir, verdict,
    write_zip,
};

const BUILDS: usize = 3;
const SIZE: u64 = 60 << 20;
/// The link's rate, bytes per second.
const RATE: f64 = 10.0 * 1024.0 * 1024.0;
const PROCESS: f64 = 5.0;
const PUBLISH: f64 = 1.0;
const SETTLE: f64 = 2.0;
/// Pipelining is done when all are live within this many times the
/// overlapped bound.
const TARGET: f64 = 1.2;

pub fn run() {
    let dir = temp_dir("pipeline");
    let files: Vec<_> = (0..BUILDS)
        .map(|i| {
            let file = dir.path().join(format!("build-{i}.zip"));
            write_zip(&file, SIZE, 100 + i as u64);
            // Arrival order is the files' modification time.
            let mtime = SystemTime::now() - Duration::from_secs(60 - i as u64);
            File::options()
                .write(true)
                .open(&file)
                .and_then(|f| f.set_modified(mtime))
                .expect("setting the mtime");
            file
        })
        .collect();
    let sandbox = SandboxProcess::start(
        &dir.path().join("sandbox"),
        &["--job-duration", "5s", "--publish-duration", "1s"],
    );
    let link = Link::start(
        &sandbox.upload,
        LinkShape {
            one_way_delay: Duration::ZERO,
            rate: Some(RATE),
        },
    );
    let daemon = DaemonProcess::start(
        &dir.path().join("daemon"),
        &DaemonSetup {
            api: &sandbox.api,
            upload: &link.url,
            chunk_size: "10MiB",
            settle: "2s",
        },
    );
    let dropped = SystemTime::now();
    for file in &files {
        daemon.drop_file(file);
    }
    let live = daemon.wait_for_lines("observe: published", BUILDS, Duration::from_secs(180));
    let took = secs_between(dropped, live[BUILDS - 1]);

    let upload = SIZE as f64 / RATE;
    let after = PROCESS + PUBLISH;
    let serial = SETTLE + BUILDS as f64 * (upload + after);
    let overlapped = SETTLE + upload + (BUILDS - 1) as f64 * upload.max(after) + after;
    println!(
        "{BUILDS} builds of {} MiB at {} MiB/s, {PROCESS} s processing, {PUBLISH} s publishing, {SETTLE} s settle",
        SIZE >> 20,
        RATE / 1024.0 / 1024.0
    );
    for (i, at) in live.iter().enumerate() {
        println!(
            "  build {} live after {:.1} s",
            i + 1,
            secs_between(dropped, *at)
        );
    }
    println!(
        "all live after {took:.1} s: {:.2} x the serial bound ({serial:.0} s), {:.2} x the overlapped bound ({overlapped:.0} s)",
        took / serial,
        took / overlapped
    );
    println!(
        "within {TARGET} x the overlapped bound: {}",
        verdict(took <= TARGET * overlapped)
    );
}
