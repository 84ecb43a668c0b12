//! The daemon on a hostile build server: a store damaged while stopped, a
//! state directory deleted or replaced under it, a disk that refuses
//! writes, monitoring scripts polling `status`, a daemon that does not
//! answer, ids across restarts and ZIP names PatchKit may not like. Each
//! case runs the real binary against the sandbox, the way it was found.

mod harness;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{LIMIT, Scenario, Setup};

/// Every request the sandbox has answered so far.
fn requests(s: &Scenario) -> u64 {
    s.snapshot()
        .requests
        .values()
        .flat_map(|codes| codes.values())
        .sum()
}

/// Copies a directory tree (sled's files and the watermark).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Waits for a watching daemon to be up (its socket answers `status`).
async fn until_running(s: &Scenario) {
    s.until_socket().await;
    let out = s.run_cli(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}\n{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_before_anything_is_sent() {
    let s = Setup::new(1).start().await;
    let a = s.drop_zip(0, "game-1", 4096);
    let b = s.drop_zip(0, "game-2", 4096);
    s.run_child_ok().await;
    s.assert_published_in_order("app-0", &[&a, &b]);
    let good = s.dir.path().join("state-good");
    copy_dir(&s.state_dir(), &good);
    let data = s.state_dir().join("db").join("db");

    type Damage = fn(&Path);
    let cases: [(&str, Damage); 4] = [
        ("emptied", |data| std::fs::write(data, b"").unwrap()),
        ("truncated", |data| {
            let len = std::fs::metadata(data).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(data).unwrap();
            file.set_len(len / 2).unwrap();
        }),
        ("overwritten", |data| {
            let mut bytes = std::fs::read(data).unwrap();
            let at = bytes.len() / 3;
            let end = (at + 4096).min(bytes.len());
            bytes[at..end].fill(0x5A);
            std::fs::write(data, bytes).unwrap();
        }),
        ("conf", |data| {
            let conf = data.parent().unwrap().join("conf");
            std::fs::write(conf, b"\x00\xffnot a sled config").unwrap();
        }),
    ];
    for (how, damage) in cases {
        std::fs::remove_dir_all(s.state_dir()).unwrap();
        copy_dir(&good, &s.state_dir());
        damage(&data);
        let before = requests(&s);
        let mut daemon = s.spawn(false, None);
        let status = daemon_exit(&mut daemon).await;
        let log = daemon.log_text();
        assert_eq!(status, Some(1), "{how}: {log}");
        assert!(
            log.contains("lost records") || log.contains("cannot open the build store"),
            "{how}: {log}"
        );
        assert!(log.contains("store recover"), "{how}: {log}");
        assert!(
            log.contains(&s.state_dir().join("db").display().to_string()),
            "{how}: {log}"
        );
        assert!(!log.contains("database error"), "{how}: {log}");
        assert_eq!(requests(&s), before, "{how}: something was sent\n{log}");
    }

    // The way out: `store recover` on the last damage, then a normal start
    // that publishes nothing again.
    let out = s.run_cli(&["store", "recover"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("damage found"), "{}", out.stdout);
    assert!(out.stdout.contains("moved to"), "{}", out.stdout);
    assert!(
        out.stdout.contains("2 file(s) in the rule folders"),
        "{}",
        out.stdout
    );
    let rows = s.status_rows();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for row in &rows {
        assert_eq!(row["state"], "failed", "{row:#}");
        assert!(
            row["reason"]
                .as_str()
                .unwrap()
                .contains("found by store recover"),
            "{row:#}"
        );
    }
    let again = s.run_cli(&["store", "recover"]);
    assert!(again.stdout.contains("nothing to recover"), "{again:?}");

    let before = requests(&s);
    let daemon = s.spawn(false, None);
    until_running(&s).await;
    daemon.stop().await;
    assert_eq!(s.snapshot().total(harness::PUBLISH), 2);
    assert_eq!(s.snapshot().total(harness::CREATE_VERSION), 2);
    assert!(requests(&s) - before <= 1, "only the key check may be sent");
    s.assert_published_in_order("app-0", &[&a, &b]);
    // The recovered files stay where they are for the operator.
    assert!(a.path.exists() && b.path.exists());

    // A truncated store keeps what it still holds; what it lost or rolled
    // back is marked failed, and nothing goes to PatchKit again.
    std::fs::remove_dir_all(s.state_dir()).unwrap();
    copy_dir(&good, &s.state_dir());
    cases[1].1(&data);
    let out = s.run_cli(&["store", "recover"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("damage found"), "{}", out.stdout);
    let daemon = s.spawn(false, None);
    until_running(&s).await;
    daemon.stop().await;
    assert_eq!(s.snapshot().total(harness::PUBLISH), 2, "{}", s.logs());
    assert_eq!(
        s.snapshot().total(harness::CREATE_VERSION),
        2,
        "{}",
        s.logs()
    );
    for row in s.status_rows() {
        assert!(
            row["state"] == "published" || row["state"] == "failed",
            "{row:#}"
        );
    }
}

/// Waits for a child daemon's exit code, failing after [`LIMIT`].
async fn daemon_exit(daemon: &mut harness::Daemon) -> Option<i32> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = daemon.try_wait() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_deleted_or_replaced_under_the_daemon_stops_it() {
    let s = Setup::new(1).start().await;
    let state = s.state_dir();

    // Deleted.
    let mut daemon = s.spawn(false, None);
    until_running(&s).await;
    let before = requests(&s);
    let gone_at = Instant::now();
    std::fs::remove_dir_all(&state).unwrap();
    let code = daemon_exit(&mut daemon).await;
    let log = daemon.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        gone_at.elapsed() < Duration::from_secs(60),
        "noticed after {:?}",
        gone_at.elapsed()
    );
    assert!(log.contains("was deleted or replaced"), "{log}");
    assert_eq!(requests(&s), before, "{log}");
    // It left nothing behind in the directory's place.
    assert!(!state.exists(), "{log}");

    // Replaced by a copy: the path is there, the lock file is another file.
    let mut daemon = s.spawn(false, None);
    until_running(&s).await;
    let copy = s.dir.path().join("state-copy");
    copy_dir(&state, &copy);
    std::fs::rename(&state, s.dir.path().join("state-old")).unwrap();
    std::fs::rename(&copy, &state).unwrap();
    // A file dropped now must not be taken by the daemon that lost its
    // directory.
    let file = s.drop_zip(0, "game-1", 4096);
    let code = daemon_exit(&mut daemon).await;
    let log = daemon.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is another file now"), "{log}");
    assert!(!log.contains("Free space"), "{log}");
    assert_eq!(s.snapshot().total(harness::CREATE_VERSION), 0, "{log}");

    // The next start takes the directory as it is and does the work.
    let mut daemon = s.spawn(false, None);
    let deadline = Instant::now() + LIMIT;
    while !s
        .snapshot()
        .versions("app-0")
        .iter()
        .any(|v| v.label == "game-1" && v.published)
    {
        assert!(
            daemon.try_wait().is_none() && Instant::now() < deadline,
            "game-1 was not published:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
    s.assert_published_in_order("app-0", &[&file]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_writes_stops_the_daemon_and_a_restart_continues() {
    let s = Setup::new(1).settle("1s").start().await;
    let switch = s.dir.path().join("disk-full");
    let switch_env = switch.display().to_string();
    let env = [("PATCHKIT_AUTOPUBLISH_STORE_FAULT", switch_env.as_str())];
    let mut daemon = s.spawn_env(&env);
    until_running(&s).await;

    // The disk fills up, then a build arrives.
    std::fs::write(&switch, b"").unwrap();
    let file = s.drop_zip(0, "game-1", 300_000);
    let code = daemon_exit(&mut daemon).await;
    let log = daemon.log_text();
    assert_eq!(code, Some(1), "the daemon must exit for systemd: {log}");
    assert!(log.contains("trying again in"), "{log}");
    assert!(log.contains("could not be written"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert_eq!(s.snapshot().total(harness::PUBLISH), 0, "{log}");

    // `status` says the daemon is not running instead of showing the last
    // record as live.
    let out = s.run_cli(&["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("no daemon is running"), "{out:?}");

    // Space comes back; the restart (systemd's) finishes the build without
    // anyone touching it.
    std::fs::remove_file(&switch).unwrap();
    let daemon = s.spawn_env(&env);
    s.until_published("app-0", "game-1").await;
    daemon.stop().await;
    s.assert_published_in_order("app-0", &[&file]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_polled_beside_daemon_starts_never_stops_one() {
    let s = std::sync::Arc::new(Setup::new(1).start().await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A monitoring script: `status` in a loop, as fast as it goes.
    let poller = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = s.cli(&["status"]);
                runs.push((
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            runs
        })
    };
    // cron's `run --once`, twenty times.
    for i in 0..20 {
        let status = s.run_child(None).await;
        assert_eq!(status.code(), Some(0), "start {i}:\n{}", s.logs());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = poller.join().unwrap();
    assert!(runs.len() >= 5, "only {} status calls ran", runs.len());
    for (code, stderr) in &runs {
        assert_eq!(*code, Some(0), "{stderr}");
    }
    assert!(!s.logs().contains("in use by another"), "{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_gives_up_on_a_daemon_that_does_not_answer() {
    let s = Setup::new(1).start().await;
    let daemon = s.spawn(false, None);
    until_running(&s).await;
    // The daemon is stopped (SIGSTOP), as a debugger or a frozen VM leaves it.
    daemon.signal("STOP");
    let started = Instant::now();
    let out = s.run_cli(&["status"]);
    let took = started.elapsed();
    daemon.signal("CONT");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("did not answer"), "{out:?}");
    assert!(out.stderr.contains("control.sock"), "{out:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    daemon.stop().await;

    // Nobody accepts on a socket left in place: the same answer.
    let socket = s.state_dir().join("control.sock");
    let _ = std::fs::remove_file(&socket);
    let _listener = UnixListener::bind(&socket).unwrap();
    let out = s.run_cli(&["retry", "1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("did not answer"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_ids_stay_small_and_sequential_across_restarts() {
    let s = Setup::new(1).start().await;
    for i in 1..=3 {
        s.drop_zip(0, &format!("game-{i}"), 2048);
        s.run_child_ok().await;
    }
    let ids: Vec<String> = s
        .status_rows()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_name_outside_ascii_is_published_with_a_warning_in_the_log() {
    use std::io::Write as _;
    let s = Setup::new(1).start().await;
    let path = s.folder(0).join("game-1.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("Game/Données/niveau-é.pak", options)
        .unwrap();
    zip.write_all(b"payload").unwrap();
    zip.finish().unwrap();

    s.run_child_ok().await;
    assert_eq!(s.snapshot().total(harness::PUBLISH), 1);
    let logs = s.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("outside printable ASCII"))
        .unwrap_or_else(|| panic!("no warning:\n{logs}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("Game/Données/niveau-é.pak"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_with_an_absolute_entry_fails_before_anything_is_sent() {
    let s = Setup::new(1).start().await;
    let path = s.folder(0).join("evil.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("Game/ok.txt", options).unwrap();
    zip.finish().unwrap();
    // The name as `bsdtar -P` writes it, patched in where the zip crate's
    // writer would not put it.
    let mut bytes = std::fs::read(&path).unwrap();
    let from = b"Game/ok.txt";
    let to = b"/etc/ok.txt";
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
    std::fs::write(&path, bytes).unwrap();

    let _ = s.run_child(None).await;
    let rows = s.status_rows();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["state"], "failed");
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(reason.contains("\"/etc/ok.txt\""), "{reason}");
    assert!(reason.contains("absolute path"), "{reason}");
    assert_eq!(s.snapshot().total(harness::CREATE_VERSION), 0);
}
