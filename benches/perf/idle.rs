//! Wake-ups of an idle daemon: context switches of all its threads over
//! 30 s, with one rule folder watched and nothing to do.

use std::time::Duration;

use super::support::{
    DaemonProcess, DaemonSetup, SandboxProcess, context_switches, temp_dir, verdict,
};

/// Long enough to include every periodic check (the store's health check
/// runs every 5 s) several times.
const WINDOW: Duration = Duration::from_secs(30);
/// The bound, per second.
const MAX_PER_SECOND: f64 = 2.0;

pub fn run() {
    let dir = temp_dir("idle");
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
    // Start-up (the first scan, connection pools) is not idleness.
    std::thread::sleep(Duration::from_secs(2));
    let before = context_switches(daemon.pid());
    std::thread::sleep(WINDOW);
    let after = context_switches(daemon.pid());
    let window = WINDOW.as_secs_f64();
    let mut total = 0;
    for (name, n) in &after {
        let earlier = before
            .iter()
            .find(|(b, _)| b == name)
            .map_or(0, |(_, b)| *b);
        let woke = n.saturating_sub(earlier);
        total += woke;
        if woke > 0 {
            println!("  {name:<18} {:>6.2}/s", woke as f64 / window);
        }
    }
    let rate = total as f64 / window;
    println!(
        "idle wake-ups {rate:.2}/s over {window:.0} s (bound {MAX_PER_SECOND}/s, ratio {:.2}): {}",
        rate / MAX_PER_SECOND,
        verdict(rate <= MAX_PER_SECOND)
    );
}
