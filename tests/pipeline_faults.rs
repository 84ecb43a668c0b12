//! The pipeline under hostile conditions: kills at random moments of an
//! upload, a PatchKit that fails, drops and refuses requests at random, a
//! refused API key, SIGTERM mid-upload, and a second daemon on the same
//! state. Every file still ends up published exactly once.

#[macro_use]
mod harness;

use std::time::{Duration, Instant};

use harness::{CHUNK, CHUNK_ROUTE, CREATE_UPLOAD, CREATE_VERSION, Dropped, Setup, chunks, until};
use patchkit_autopublish::sandbox::FaultConfig;
use patchkit_autopublish::state::BuildState;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// Latency on every sandbox request, so that an upload of a few chunks
/// lasts long enough to be interrupted.
fn slow(latency_ms: u64, jitter_ms: u64) -> FaultConfig {
    FaultConfig {
        latency: Duration::from_millis(latency_ms),
        jitter: Duration::from_millis(jitter_ms),
        ..FaultConfig::seeded(7)
    }
}

each_variant! {
    async fn kills_at_random_moments_of_an_upload_lose_at_most_a_chunk_each(variant) {
        let s = Setup::new(1).variant(variant)
            .sandbox(|c| c.faults(slow(60, 40)))
            .start()
            .await;
        let file = s.drop_zip(0, "game-1.0", chunks(8));
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut kills = 0;
        for _ in 0..4 {
            let sent = s.snapshot().total(CHUNK_ROUTE);
            let mut daemon = s.spawn(true, None);
            // This run is uploading once the sandbox sees one more chunk.
            until("a chunk from this run", || {
                s.snapshot().total(CHUNK_ROUTE) > sent || daemon.try_wait().is_some()
            })
            .await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
            if daemon.try_wait().is_some() {
                break;
            }
            daemon.kill().await;
            kills += 1;
        }
        s.run_child_ok().await;

        assert!(kills >= 2, "the upload outran the kills");
        let snap = s.snapshot();
        s.assert_published_in_order("app-0", &[&file]);
        assert_eq!(snap.count(CREATE_VERSION, "201"), 1);
        assert_eq!(snap.count(CREATE_UPLOAD, "201"), 1, "{}", s.logs());
        let twice: u64 = snap.uploads.iter().map(|u| u.received_twice).sum();
        eprintln!("{kills} kills, {twice} bytes sent twice");
        assert!(
            twice <= kills * CHUNK,
            "{twice} bytes twice after {kills} kills"
        );
    }
}

each_variant! {
    async fn thirty_builds_through_random_faults_are_each_published_once_in_order(variant) {
        const APPS: usize = 3;
        const PER_APP: usize = 10;
        let s = Setup::new(APPS).variant(variant)
            .sandbox(|c| {
                c.faults(FaultConfig {
                    fail_5xx: 0.10,
                    drop_before: 0.025,
                    drop_after: 0.025,
                    chunk_412: 0.05,
                    ..FaultConfig::seeded(2024)
                })
            })
            .start()
            .await;
        let files: Vec<Vec<Dropped>> = (0..APPS)
            .map(|a| {
                (0..PER_APP)
                    .map(|n| s.drop_zip(a, &format!("game-{a}-{n:02}"), chunks(1 + (n % 2) as u64)))
                    .collect()
            })
            .collect();
        let arrival: Vec<&Dropped> = (0..PER_APP)
            .flat_map(|n| files.iter().map(move |f| &f[n]))
            .collect();
        s.enqueue(&arrival).await;

        let started = Instant::now();
        s.run_once().await;
        let elapsed = started.elapsed();

        for (a, app_files) in files.iter().enumerate() {
            let refs: Vec<&Dropped> = app_files.iter().collect();
            s.assert_published_in_order(&harness::app(a), &refs);
        }
        for build in s.builds().await {
            assert!(
                matches!(build.state, BuildState::Published { .. }),
                "build {}: {}",
                build.id,
                build.state
            );
        }
        let snap = s.snapshot();
        assert_eq!(snap.count(CREATE_VERSION, "403"), 0);
        // Three apps interleave their requests, so which request draws which
        // fault varies from run to run; only the common faults are sure to
        // fire (a 412 needs one of the few dozen chunks to draw it).
        let f = &snap.faults;
        assert!(
            f.injected_5xx > 0 && f.dropped_before > 0 && f.dropped_after > 0,
            "{f:?}"
        );
        eprintln!("{} builds through {f:?} in {elapsed:?}", APPS * PER_APP);
    }
}

each_variant! {
    async fn a_refused_key_pauses_every_build_until_the_key_file_is_fixed(variant) {
        const WORKERS: u64 = 2;
        let s = Setup::new(2).variant(variant).workers(WORKERS as usize).start().await;
        s.write_key("a-revoked-key");
        let files = [
            s.drop_zip(0, "game-1.0", chunks(1)),
            s.drop_zip(0, "game-1.1", chunks(1)),
            s.drop_zip(1, "game-2.0", chunks(1)),
        ];
        s.enqueue(&[&files[0], &files[1], &files[2]]).await;
        let refused = |snap: &patchkit_autopublish::sandbox::Snapshot| -> u64 {
            snap.requests.values().filter_map(|s| s.get("401")).sum()
        };

        let started = Instant::now();
        let cancel = CancellationToken::new();
        let fix = async {
            // The window the refusals are counted over, not a wait for an event.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let seen = refused(&s.snapshot());
            let elapsed = started.elapsed().as_secs();
            s.write_key(harness::KEY);
            harness::until("every build published after the key was fixed", || {
                let snap = s.snapshot();
                ["app-0", "app-1"]
                    .iter()
                    .map(|app| snap.versions(app).iter().filter(|v| v.published).count())
                    .sum::<usize>()
                    == 3
            })
            .await;
            cancel.cancel();
            (seen, elapsed)
        };
        let ((seen, elapsed), ()) = tokio::time::timeout(harness::LIMIT, async {
            tokio::join!(fix, s.run_watching(cancel.clone()))
        })
        .await
        .expect("the builds finished once the key was fixed");

        // auth_retry is 1 s: one try per worker per pause, not a storm.
        eprintln!("{seen} refused requests in {elapsed} s");
        assert!(seen >= 1, "the key was never tried");
        assert!(
            seen <= WORKERS * (elapsed + 2),
            "{seen} refused requests in {elapsed} s"
        );
        s.assert_published_in_order("app-0", &[&files[0], &files[1]]);
        s.assert_published_in_order("app-1", &[&files[2]]);
    }
}

each_variant! {
    async fn sigterm_mid_upload_exits_cleanly_and_the_restart_resumes(variant) {
        let s = Setup::new(1).variant(variant)
            .shutdown_timeout("2s")
            .sandbox(|c| c.faults(slow(80, 0)))
            .start()
            .await;
        let file = s.drop_zip(0, "game-1.0", chunks(8));
        let daemon = s.spawn(true, None);
        until("two chunks", || s.snapshot().total(CHUNK_ROUTE) >= 2).await;
        daemon.signal("TERM");
        let status = daemon.wait(Duration::from_secs(2 + 3)).await;
        assert_eq!(status.code(), Some(0), "{status:?}\n{}", s.logs());

        let build = s.build_of(&file).await;
        match build.state {
            BuildState::Uploading {
                acknowledged,
                total,
                ..
            } => assert!(acknowledged > 0 && acknowledged < total, "{}", build.state),
            other => panic!("stopped in {other}, not mid-upload\n{}", s.logs()),
        }

        s.run_child_ok().await;
        s.assert_recovered(&file, 1, "after SIGTERM");
    }
}

each_variant! {
    async fn a_second_sigterm_exits_at_once_and_the_restart_resumes(variant) {
        let s = Setup::new(1).variant(variant)
            .shutdown_timeout("30s")
            .sandbox(|c| c.faults(slow(100, 0)))
            .start()
            .await;
        let file = s.drop_zip(0, "game-1.0", chunks(8));
        let daemon = s.spawn(true, None);
        until("a chunk", || s.snapshot().total(CHUNK_ROUTE) >= 1).await;
        // From now on each request takes 3 s, so the first SIGTERM has a chunk
        // in flight to wait for.
        s.sb.set_faults(slow(3000, 0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.signal("TERM");
        daemon.until_log("shutdown requested", 1).await;
        let second = Instant::now();
        daemon.signal("TERM");
        let status = daemon.wait(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(1), "{status:?}\n{}", s.logs());
        assert!(
            second.elapsed() < Duration::from_secs(2),
            "the second SIGTERM took {:?}",
            second.elapsed()
        );

        s.sb.set_faults(FaultConfig::default());
        s.run_child_ok().await;
        s.assert_recovered(&file, 1, "after two SIGTERMs");
    }
}

/// A file that is not a ZIP fails its build with the reason, said once in
/// the log (as the build's failure), and again at no later start.
#[tokio::test]
async fn a_broken_zip_is_reported_once() {
    let s = Setup::new(1).start().await;
    let folder = s.state_dir().with_file_name("drops").join(harness::app(0));
    std::fs::write(folder.join("broken.zip"), b"release notes, not a build").unwrap();
    let status = s.run_child(None).await;
    assert_eq!(status.code(), Some(1), "{}", s.logs());
    // `--once` ends with a summary line per build; besides it, one line.
    let said = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains("is not a ZIP archive") && !l.contains("run summary"))
            .map(str::to_owned)
            .collect()
    };
    let lines = said(&s.logs());
    assert_eq!(lines.len(), 1, "{}", s.logs());
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("build failed in validate"),
        "{}",
        lines[0]
    );
    // The next start knows the file: nothing more is said of it.
    s.run_child_ok().await;
    assert_eq!(said(&s.logs()).len(), 1, "{}", s.logs());
}

/// PatchKit refuses the key; the operator fixes the key file and reloads
/// (SIGHUP): the builds go on at once, not after `auth_retry` (10 minutes
/// here).
#[tokio::test]
async fn a_key_fixed_and_reloaded_ends_the_pause_at_once() {
    let s = Setup::new(1).auth_retry("10m").start().await;
    s.write_key("a-revoked-key");
    let file = s.drop_zip(0, "game-1.0", chunks(2));
    let daemon = s.spawn(false, None);
    daemon.until_log("PatchKit refused the API key", 1).await;
    s.write_key(harness::KEY);
    daemon.signal("HUP");
    daemon.until_log("API key read again", 1).await;
    s.until_published(&file.app, &file.label).await;
    daemon.stop().await;
    s.assert_published_in_order(&file.app, &[&file]);
}

/// The rule's folder written another way after its files were published
/// (through `./`, through a symlink to it): the files are known, `check`
/// says so, and nothing is published again.
#[tokio::test]
async fn a_rule_folder_written_another_way_publishes_nothing_again() {
    let s = Setup::new(1).start().await;
    let file = s.drop_zip(0, "game-1.0", chunks(2));
    s.run_child_ok().await;
    assert_eq!(s.snapshot().versions(&file.app).len(), 1, "{}", s.logs());

    let dir = file.path.parent().unwrap().to_owned();
    let link = dir.with_file_name("builds-link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let mut written = format!("folder = \"{}\"", dir.display());
    for spelling in [dir.join(".").join(""), link] {
        let next = format!("folder = \"{}\"", spelling.display());
        s.edit_config(|text| {
            assert!(text.contains(&written), "{text}");
            text.replace(&written, &next)
        });
        written = next;
        let check = s.run_cli(&["check"]);
        assert!(
            check.stdout.contains("already build 1") && !check.stdout.contains("would be taken"),
            "{} ({})\n{}",
            spelling.display(),
            written,
            check.stdout
        );
        s.run_child_ok().await;
    }
    assert_eq!(s.builds().await.len(), 1, "{}", s.logs());
    assert_eq!(s.snapshot().versions(&file.app).len(), 1, "{}", s.logs());
}

/// A build server rewrites the file in place while it uploads, putting its
/// size and mtime back (`cp -p` over it, `rsync --inplace -t`): what was
/// sent mixes two builds, so it is not published; the file as it is now is
/// uploaded again and published, once.
#[tokio::test]
async fn a_file_rewritten_in_place_with_its_mtime_kept_is_uploaded_again_not_mixed() {
    let s = Setup::new(1)
        .sandbox(|c| c.faults(slow(100, 0)))
        .start()
        .await;
    let file = s.drop_zip(0, "game-1.0", chunks(8));
    let mtime = std::fs::metadata(&file.path).unwrap().modified().unwrap();
    let other = s.state_dir().with_file_name("other.zip");
    let other_sha = harness::write_zip(&other, "another build", chunks(8));
    let other_bytes = std::fs::read(&other).unwrap();
    assert_eq!(
        other_bytes.len() as u64,
        std::fs::metadata(&file.path).unwrap().len(),
        "the rewrite must keep the size"
    );
    assert_ne!(other_sha, file.sha256);

    let daemon = s.spawn(false, None);
    until("two chunks", || s.snapshot().total(CHUNK_ROUTE) >= 2).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file.path)
            .unwrap();
        f.write_all(&other_bytes).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let id = s.until_published(&file.app, &file.label).await;
    daemon.stop().await;

    let snap = s.snapshot();
    let versions = snap.versions(&file.app);
    assert_eq!(versions.len(), 1, "{versions:?}\n{}", s.logs());
    assert_eq!(versions[0].id, id);
    assert_eq!(
        versions[0].content_sha256.as_deref(),
        Some(other_sha.as_str()),
        "the published content is not the file as rewritten\n{}",
        s.logs()
    );
    assert!(
        s.logs().contains("rewritten during the upload"),
        "{}",
        s.logs()
    );
}

/// PatchKit answers every request with 5xx and the client waits (up to
/// 10 minutes, the retry ceiling) to send one again: SIGTERM ends that wait
/// at once rather than after it or after `shutdown_timeout`, and the build
/// is neither failed nor charged an attempt.
#[tokio::test]
async fn sigterm_during_a_request_retry_wait_exits_at_once_and_the_restart_publishes() {
    let s = Setup::new(1)
        .retry("10m", "10m", "never")
        .shutdown_timeout("10m")
        .sandbox(|c| {
            c.faults(FaultConfig {
                fail_5xx: 1.0,
                ..FaultConfig::seeded(7)
            })
        })
        .start()
        .await;
    let file = s.drop_zip(0, "game-1.0", chunks(2));
    let daemon = s.spawn(false, None);
    daemon.until_log("; retry 1 in ", 1).await;
    daemon.signal("TERM");
    let status = daemon.wait(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", s.logs());
    let logs = s.logs();
    assert!(
        !logs.contains("did not finish within shutdown_timeout"),
        "{logs}"
    );
    assert!(
        !logs.contains("will retry"),
        "the stop was taken for a failure:\n{logs}"
    );

    let build = s.build_of(&file).await;
    assert_eq!(build.attempts, 0, "{}\n{logs}", build.state);
    assert!(build.state.before_turn(), "{}", build.state);

    s.sb.set_faults(FaultConfig::default());
    s.run_child_ok().await;
    s.assert_recovered(&file, 1, "after SIGTERM in a retry wait");
}

each_variant! {
    async fn a_second_daemon_on_the_same_state_dir_is_refused_naming_the_lock(variant) {
        let s = Setup::new(1).variant(variant).start().await;
        let first = s.spawn(false, None);
        let lock = s.state_dir().join("lock");
        let pid = first.pid().to_string();
        until("the first daemon's lock", || {
            std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == pid)
        })
        .await;

        let second = s.cli(&["run", "--once"]);
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&s.state_dir().display().to_string()) && stderr.contains("lock"),
            "{stderr}"
        );

        first.signal("TERM");
        let status = first.wait(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0), "{}", s.logs());
    }
}

each_variant! {
    async fn with_once_a_refused_key_ends_the_run_with_an_error_and_keeps_the_builds(variant) {
        let s = Setup::new(1).variant(variant).auth_retry("1s").start().await;
        s.write_key("a-revoked-key");
        let file = s.drop_zip(0, "game-1.0", chunks(1));
        s.enqueue(&[&file]).await;
        let ended = tokio::time::timeout(harness::LIMIT, s.run_daemon(true, CancellationToken::new()))
            .await
            .expect("--once returns instead of waiting for a key nobody fixes");
        let err = ended.expect_err("a refused key is an error with --once");
        assert!(err.to_string().contains("refused the API key"), "{err}");
        // The build is kept, unfinished, for the next run.
        let build = s.build_of(&file).await;
        assert!(!build.state.is_terminal(), "{:?}", build.state);
        assert!(build.last_error.unwrap_or_default().contains("401"));
        s.write_key(harness::KEY);
        s.run_in_process(CancellationToken::new()).await;
        s.assert_published_in_order("app-0", &[&file]);
    }
}
