//! `demo`: the whole pipeline on one machine, without a PatchKit account.
//!
//! Starts the sandbox on loopback, makes a temporary watch folder and state
//! directory, writes a config for them, drops a sample build ZIP into the
//! folder and runs the real daemon, printing each stage with its progress.
//! With `once` it returns when the sample build is published; otherwise it
//! keeps watching the folder until cancelled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::{self, RunOptions};
use crate::observe::{EventKind, Observer};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::state::BuildState;

const APP: &str = "demo-game";
const KEY: &str = "demo-key";

/// Runs the demo. Returns an error if the sample build does not publish.
pub async fn run(once: bool, cancel: CancellationToken) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("patchkit-autopublish-demo-")
        .tempdir()
        .context("cannot create a temporary folder for the demo")?;
    let sandbox = Sandbox::start(
        SandboxConfig::new(KEY)
            .with_app(APP)
            .job_duration(Duration::from_secs(2))
            .publish_duration(Duration::from_secs(1))
            .data_dir(dir.path().join("sandbox")),
    )
    .await?;
    let drops = dir.path().join("drops");
    std::fs::create_dir_all(&drops)?;
    let config_path = write_config(
        dir.path(),
        &drops,
        &sandbox.main_url(),
        &sandbox.upload_url(),
    )?;
    let config = Config::load(&config_path)?;

    println!("PatchKit sandbox:   {}", sandbox.main_url());
    println!("watch folder:       {}", drops.display());
    println!("config:             {}", config_path.display());
    println!();

    let observer = Observer::new();
    let mut events = observer.subscribe();
    let daemon_cancel = cancel.child_token();
    let daemon = tokio::spawn(daemon::run(
        config,
        RunOptions {
            observer: observer.clone(),
            ..RunOptions::default()
        },
        daemon_cancel.clone(),
    ));

    let sample = write_sample(&drops)?;
    println!(
        "dropped {} ({} bytes)",
        sample.display(),
        std::fs::metadata(&sample)?.len()
    );

    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut running = None;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = ticker.tick() => {
                if let Some(id) = running
                    && let Some(live) = observer.live(id)
                    && let Some(p) = live.progress
                {
                    let rate = live
                        .bytes_per_second
                        .map(|r| format!(", {:.1} MiB/s", r / (1024.0 * 1024.0)))
                        .unwrap_or_default();
                    println!("  {} {:.0}%{rate}", live.state, p * 100.0);
                }
            }
            event = events.recv() => {
                let Ok(event) = event else { continue };
                let build = &event.build;
                match event.kind {
                    EventKind::StateChanged => {
                        running = (!build.state.is_terminal()).then_some(build.id);
                        println!("build {} {}: {}", build.id, build.label, build.state);
                    }
                    EventKind::Published => {
                        if let BuildState::Published { version_id, .. }
                        | BuildState::Scheduled { version_id, .. } = build.state
                        {
                            println!(
                                "build {} is live: version {version_id} of app {APP} ({:.1} s)",
                                build.id, event.duration_seconds
                            );
                        }
                        if once {
                            break Ok(());
                        }
                        println!();
                        println!("drop more ZIPs into {} (Ctrl-C to stop)", drops.display());
                    }
                    EventKind::Failed => {
                        let reason = event.reason.unwrap_or_default();
                        println!("build {} failed: {reason}", build.id);
                        if once {
                            break Err(anyhow::anyhow!("the demo build failed: {reason}"));
                        }
                    }
                    EventKind::Warning | EventKind::Stuck => {
                        println!("build {}: {}", build.id, event.reason.unwrap_or_default());
                    }
                }
            }
        }
    };
    daemon_cancel.cancel();
    daemon.await??;
    sandbox.shutdown().await;
    outcome
}

fn write_config(dir: &Path, drops: &Path, api: &str, upload: &str) -> anyhow::Result<PathBuf> {
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, KEY)?;
    let path = dir.join("config.toml");
    let text = format!(
        r#"# Written by `patchkit-autopublish demo`.
[patchkit]
api_url = "{api}"
upload_url = "{upload}"
api_key_file = "{key}"

[daemon]
state_dir = "{state}"
chunk_size = "1MiB"
settle = "1s"
poll_interval = "250ms"

[[rule]]
name = "demo"
folder = "{drops}"
app_secret = "{APP}"
label = "{{stem}} (demo {{seq}})"
changelog = "Published by the patchkit-autopublish demo on {{date}}"
"#,
        key = key_file.display(),
        state = dir.join("state").display(),
        drops = drops.display(),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A small but real build: a few files, deflated, about 6 MiB.
fn write_sample(drops: &Path) -> anyhow::Result<PathBuf> {
    let final_path = drops.join("MyGame-1.0.0-win64.zip");
    // Written under a temp name and renamed in, as a build server should.
    let temp = drops.join("MyGame-1.0.0-win64.zip.part");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&temp)?);
    let deflate = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("MyGame.exe", deflate)?;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = vec![0u8; 6 * 1024 * 1024];
    for byte in noise.iter_mut() {
        // xorshift: incompressible bytes, so the upload has several chunks.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    zip.write_all(&noise)?;
    zip.start_file("data/readme.txt", deflate)?;
    zip.write_all(b"A sample build published by the patchkit-autopublish demo.\n")?;
    zip.finish()?;
    std::fs::rename(&temp, &final_path)?;
    Ok(final_path)
}
