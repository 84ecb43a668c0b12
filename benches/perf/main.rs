//! Performance benchmarks that print ratios against their bounds.
//!
//! `cargo bench --bench perf` runs them all (about four minutes);
//! `cargo bench --bench perf -- NAME...` runs some of them:
//! - `cpu`: CPU-seconds per GiB uploaded on loopback against `md5sum`
//!   reading the same file, and the daemon's peak RSS;
//! - `idle`: wake-ups per second of an idle daemon over 30 s;
//! - `chunks`: time per chunk beyond transfer plus one round trip, at 60 ms
//!   round trip and 40 MiB/s;
//! - `polling`: time from a processing job's end to the build's next state,
//!   for jobs of 0.3 s, 5 s and 30 s;
//! - `pipeline`: drop to all live of three builds of one app, against the
//!   serial bound and the bound with uploads overlapped.
//!
//! Each one starts the release binary as `sandbox` and as `run` in separate
//! processes, so what is measured is the daemon alone, the way an operator
//! runs it. They print their figures and a verdict per bound; they are not
//! tests, and exit with status 1 only when a benchmark could not run.
//! `PERF_BIN=path` measures another build of the binary instead;
//! `PERF_KEEP=1` keeps each benchmark's directory.

mod chunks;
mod cpu;
mod idle;
mod pipeline;
mod polling;
mod support;

#[path = "../../tests/harness/zips.rs"]
#[allow(dead_code)]
mod zips;

/// Every benchmark, by name, in the order they run.
const ALL: [(&str, fn()); 5] = [
    ("cpu", cpu::run),
    ("idle", idle::run),
    ("chunks", chunks::run),
    ("polling", polling::run),
    ("pipeline", pipeline::run),
];

fn main() {
    // `cargo bench` passes `--bench`; anything else names a benchmark.
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(unknown) = asked.iter().find(|a| !ALL.iter().any(|(n, _)| n == a)) {
        let names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "unknown benchmark {unknown:?}; choose from {}",
            names.join(", ")
        );
        std::process::exit(2);
    }
    for (name, bench) in ALL {
        if asked.is_empty() || asked.iter().any(|a| a == name) {
            // The machine may be shared: say how busy it was.
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let load: Vec<&str> = load.split_whitespace().take(3).collect();
            println!("== {name} (load average {})", load.join(" "));
            bench();
            println!();
        }
    }
}
