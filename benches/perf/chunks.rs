//! Time per chunk beyond the link: a 200 MiB upload in 10 MiB chunks over a
//! link with a 60 ms round trip and 40 MiB/s.
//!
//! The figure is the daemon's own: on the link, the time from each answer
//! reaching the daemon to its next chunk starting to arrive (reading,
//! hashing and recording the offset must all be done or overlapped by
//! then). The whole upload's time is also set against transfer plus one
//! round trip per chunk, the bound of a sequential chunk protocol with an
//! instant server; the difference beyond the daemon's gaps is the
//! sandbox's own time per chunk (receiving, hashing, writing to disk).

use std::time::Duration;

use super::support::{
    DaemonProcess, DaemonSetup, Link, LinkShape, SandboxProcess, mib, secs_between, temp_dir,
    verdict, write_zip,
};

const FILE_SIZE: u64 = 200 << 20;
const CHUNK: u64 = 10 << 20;
/// Round trip added by the link.
const RTT: Duration = Duration::from_millis(60);
/// The link's rate, bytes per second.
const RATE: f64 = 40.0 * 1024.0 * 1024.0;
/// The bound on the time per chunk beyond transfer and round trip.
const MAX_OVERHEAD: Duration = Duration::from_millis(10);

pub fn run() {
    let dir = temp_dir("chunks");
    let file = dir.path().join("far.zip");
    write_zip(&file, FILE_SIZE, 11);
    let sandbox = SandboxProcess::start(&dir.path().join("sandbox"), &[]);
    let link = Link::start(
        &sandbox.upload,
        LinkShape {
            one_way_delay: RTT / 2,
            rate: Some(RATE),
        },
    );
    let daemon = DaemonProcess::start(
        &dir.path().join("daemon"),
        &DaemonSetup {
            api: &sandbox.api,
            upload: &link.url,
            chunk_size: "10MiB",
            settle: "1s",
        },
    );
    daemon.drop_file(&file);
    let started = daemon.wait_for_line("observe: uploading", Duration::from_secs(60));
    let ended = daemon.wait_for_line("observe: uploaded", Duration::from_secs(300));
    let took = secs_between(started, ended);

    let gaps = link.client_gaps();
    let server = link.server_gaps();
    let server_mean = server.iter().sum::<Duration>() / server.len().max(1) as u32;
    let chunks = FILE_SIZE.div_ceil(CHUNK);
    let transfer = FILE_SIZE as f64 / RATE;
    let bound = transfer + chunks as f64 * RTT.as_secs_f64();
    let mean = gaps.iter().sum::<Duration>() / gaps.len().max(1) as u32;
    let worst = gaps.iter().max().copied().unwrap_or_default();
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    println!(
        "{:.0} MiB in {chunks} chunks, {} ms round trip, {:.0} MiB/s: {took:.2} s",
        mib(FILE_SIZE),
        RTT.as_millis(),
        RATE / 1024.0 / 1024.0
    );
    println!(
        "link alone {transfer:.2} s; transfer + one round trip per chunk {bound:.2} s; ratio {:.3}",
        took / bound
    );
    println!(
        "beyond that bound {:.1} ms per chunk: the daemon's gaps and the sandbox's own time \
         ({:.1} ms per chunk from its last byte in to its answer out)",
        (took - bound) * 1000.0 / chunks as f64,
        server_mean.as_secs_f64() * 1000.0
    );
    println!(
        "daemon's gap per chunk: mean {:.1} ms, median {:.1} ms, worst {:.1} ms over {} chunks \
         (bound {} ms on the mean, ratio {:.2}): {}",
        mean.as_secs_f64() * 1000.0,
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
        gaps.len(),
        MAX_OVERHEAD.as_millis(),
        mean.as_secs_f64() / MAX_OVERHEAD.as_secs_f64(),
        verdict(mean <= MAX_OVERHEAD)
    );
}
