//! One full scan of a rule folder of 10,000 files (half of them builds),
//! against a plain `read_dir` + `metadata` loop over the same folder in the
//! same run. Prints times and their ratio; asserts nothing.
//!
//! `cargo bench --bench scan`

use std::time::{Duration, Instant};

use globset::Glob;
use patchkit_autopublish::watcher::{WatchSpec, scan_folder};

const FILES: usize = 10_000;
/// Best of several runs, so a busy machine shows the cost of the work and
/// not of whatever else ran at that moment.
const RUNS: usize = 7;

fn best(mut run: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut count = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        count = run();
        best = best.min(started.elapsed());
    }
    (best, count)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 0..FILES {
        let name = if i % 2 == 0 {
            format!("build-{i:05}.zip")
        } else {
            format!("notes-{i:05}.txt")
        };
        std::fs::write(dir.path().join(name), b"x").expect("write file");
    }
    let spec = WatchSpec::new(
        "bench",
        dir.path(),
        Glob::new("build-*.zip").expect("glob").compile_matcher(),
    );

    let (baseline, listed) = best(|| {
        std::fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .count()
    });
    let (scan, matched) = best(|| scan_folder(&spec).expect("scan").len());

    println!("folder of {FILES} files, best of {RUNS} runs");
    println!("  read_dir + metadata (baseline): {baseline:>10.2?}  ({listed} entries)");
    println!("  watcher scan:                   {scan:>10.2?}  ({matched} builds)");
    println!(
        "  ratio scan / baseline:          {:>10.2}",
        scan.as_secs_f64() / baseline.as_secs_f64()
    );
}
