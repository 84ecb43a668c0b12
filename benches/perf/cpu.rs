//! CPU per byte: the daemon's user + system CPU time from the drop of a
//! 1 GiB ZIP to its upload's end, against `md5sum` on the same file (the
//! floor: read it and hash it once), measured in the same run.

use std::process::Command;
use std::time::Duration;

use super::support::{
    DaemonProcess, DaemonSetup, SandboxProcess, child_cpu_seconds, cpu_seconds, status_value,
    temp_dir, verdict, write_zip,
};

/// Large enough that start-up and per-request costs are noise.
const FILE_SIZE: u64 = 1 << 30;
/// The bound: at most this many times `md5sum`'s CPU time.
const MAX_RATIO: f64 = 1.3;
/// Peak RSS bound of the daemon for this upload, in MiB.
const MAX_RSS_MIB: f64 = 48.0;

pub fn run() {
    let dir = temp_dir("cpu");
    let file = dir.path().join("build.zip");
    write_zip(&file, FILE_SIZE, 7);
    // Both sides read the file from the page cache: md5sum runs once to
    // bring it in, then is measured before and after the daemon (the lower
    // figure is the floor, the machine being shared).
    let md5sum = || child_cpu_seconds(Command::new("md5sum").arg(&file));
    md5sum();
    let before = md5sum();

    let sandbox = SandboxProcess::start(&dir.path().join("sandbox"), &[]);
    let daemon = DaemonProcess::start(
        &dir.path().join("daemon"),
        &DaemonSetup {
            api: &sandbox.api,
            upload: &sandbox.upload,
            chunk_size: "10MiB",
            settle: "1s",
        },
    );
    let pid = daemon.pid();
    let start_cpu = cpu_seconds(pid);
    daemon.drop_file(&file);
    let uploading = daemon.wait_for_line("observe: uploading", Duration::from_secs(60));
    let uploaded = daemon.wait_for_line("observe: uploaded", Duration::from_secs(300));
    let used = cpu_seconds(pid) - start_cpu;
    let rss_mib = status_value(pid, "VmHWM") as f64 / 1024.0;
    drop(daemon);
    drop(sandbox);
    let after = md5sum();

    let floor = before.min(after);
    let gib = FILE_SIZE as f64 / (1u64 << 30) as f64;
    let ratio = used / floor;
    let wall = super::support::secs_between(uploading, uploaded);
    println!("md5sum:  {before:.2} s and {after:.2} s CPU per GiB");
    println!(
        "daemon:  {:.2} s CPU per GiB (drop to uploaded; upload {wall:.1} s, {:.0} MiB/s)",
        used / gib,
        super::support::mib(FILE_SIZE) / wall
    );
    println!(
        "ratio daemon/md5sum {ratio:.2} (bound {MAX_RATIO}): {}",
        verdict(ratio <= MAX_RATIO)
    );
    println!(
        "daemon peak RSS {rss_mib:.1} MiB (bound {MAX_RSS_MIB}): {}",
        verdict(rss_mib < MAX_RSS_MIB)
    );
}
