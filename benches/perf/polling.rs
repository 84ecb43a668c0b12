//! Polling: how long a build waits after its processing job ended before it
//! moves on, for jobs of 0.3 s, 5 s and 30 s, against 0.5 s + 10% of the
//! job's duration. Also the publish that follows (0.3 s in the sandbox).
//!
//! The job's start is taken as the moment the daemon recorded that it was
//! about to request `content_file` (an upper bound on the wait: the request
//! itself counts against the daemon).

use std::time::Duration;

use super::support::{
    DaemonProcess, DaemonSetup, SandboxProcess, secs_between, temp_dir, verdict, write_zip,
};

/// Job durations to measure, seconds.
const JOBS: [f64; 3] = [0.3, 5.0, 30.0];
/// How long the sandbox takes to publish, seconds.
const PUBLISH: f64 = 0.3;

/// The bound on the wait after a step of `duration` seconds.
fn bound(duration: f64) -> f64 {
    0.5 + 0.1 * duration
}

pub fn run() {
    for job in JOBS {
        let dir = temp_dir("polling");
        let file = dir.path().join("poll.zip");
        write_zip(&file, 1 << 20, 3);
        let sandbox = SandboxProcess::start(
            &dir.path().join("sandbox"),
            &[
                "--job-duration",
                &format!("{}ms", (job * 1000.0) as u64),
                "--publish-duration",
                &format!("{}ms", (PUBLISH * 1000.0) as u64),
            ],
        );
        let daemon = DaemonProcess::start(
            &dir.path().join("daemon"),
            &DaemonSetup {
                api: &sandbox.api,
                upload: &sandbox.upload,
                chunk_size: "10MiB",
                settle: "1s",
            },
        );
        daemon.drop_file(&file);
        let limit = Duration::from_secs_f64(job * 2.0 + 30.0);
        let requested = daemon.wait_for_line("(requesting)", limit);
        let processed = daemon.wait_for_line("observe: processed", limit);
        let publishing = daemon.wait_for_line("observe: publishing", limit);
        let published = daemon.wait_for_line("observe: published", limit);
        let job_wait = secs_between(requested, processed) - job;
        let publish_wait = secs_between(publishing, published) - PUBLISH;
        println!(
            "job {job:>4.1} s: waited {job_wait:.3} s after it (bound {:.2} s, ratio {:.2}): {}",
            bound(job),
            job_wait / bound(job),
            verdict(job_wait <= bound(job))
        );
        println!(
            "  publish {PUBLISH} s: waited {publish_wait:.3} s after it (bound {:.2} s): {}",
            bound(PUBLISH),
            verdict(publish_wait <= bound(PUBLISH))
        );
    }
}
