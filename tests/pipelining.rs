//! Upload-first pipelining: the next build of an app uploads, without a
//! version, while the build before it processes and publishes; it gets its
//! draft (and PatchKit's lock) only at its turn. Versions are still created,
//! processed and published one at a time in arrival order, a crash anywhere
//! resumes both builds, and a build cancelled or failed before its turn
//! leaves no draft behind.
//!
//! The real binary against the sandbox, read through `status --json` and
//! the sandbox's own state.

#[macro_use]
mod harness;

use std::time::{Duration, Instant};

use harness::{
    CHUNK, CREATE_UPLOAD, CREATE_VERSION, Dropped, LIMIT, PUBLISH, Scenario, Setup, Variant, app,
    chunks,
};
use patchkit_autopublish::sandbox::FaultConfig;
use serde_json::Value;

/// Processing long enough that the next build's upload fits inside it.
const JOB: Duration = Duration::from_secs(2);

fn row<'a>(rows: &'a [Value], label: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["label"] == label)
}

/// Polls `status --json` until one answer satisfies `check`, and returns
/// that answer: each answer is one consistent view of the daemon.
async fn until_rows(s: &Scenario, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let rows = s.status_rows();
        if check(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}: {rows:#?}\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn uploads(s: &Scenario) -> u64 {
    let snap = s.snapshot();
    snap.count(CREATE_UPLOAD, "200") + snap.count(CREATE_UPLOAD, "201")
}

each_variant! {
    async fn the_next_build_uploads_while_the_one_before_processes(variant) {
        let s = Setup::new(1)
            .variant(variant)
            .sandbox(|c| c.job_duration(JOB))
            .start()
            .await;
        let files: Vec<Dropped> = ["night-1", "night-2", "night-3"]
            .iter()
            .map(|label| s.drop_zip(0, label, chunks(6)))
            .collect();
        let daemon = s.spawn(false, None);

        // One view in which build 1 takes its turn (its version processes)
        // while build 2 has its whole upload and no version yet.
        let rows = until_rows(&s, "night-2 uploaded while night-1 processes", |rows| {
            let (Some(one), Some(two)) = (row(rows, "night-1"), row(rows, "night-2")) else {
                return false;
            };
            // The upload's worker ends a moment after its last record.
            one["state"] == "processing" && two["state"] == "uploaded" && two["worker"].is_null()
        })
        .await;
        let (one, two) = (row(&rows, "night-1").unwrap(), row(&rows, "night-2").unwrap());
        assert_eq!(one["worker"], "turn", "{rows:#?}");
        assert!(two["version_id"].is_null(), "{rows:#?}");
        assert_eq!(two["stage"], "create-version", "{rows:#?}");
        let after = format!(
            "its turn on app {} comes after build {}",
            app(0),
            one["id"].as_str().unwrap()
        );
        assert!(
            two["waiting"].as_str().is_some_and(|w| w.contains(&after)),
            "{rows:#?}"
        );
        assert!(
            two["detail"].as_str().unwrap().contains("the draft comes at its turn"),
            "{rows:#?}"
        );
        // Meanwhile the third build uploads ahead, or waits for the upload
        // lane; it never has a version before build 2.
        let three = row(&rows, "night-3").unwrap();
        assert!(three["version_id"].is_null(), "{rows:#?}");

        for f in &files {
            s.until_published(&app(0), &f.label).await;
        }
        daemon.stop().await;
        s.assert_published_in_order(&app(0), &files.iter().collect::<Vec<_>>());
        // One version and one upload per build: nothing was created early
        // and refused, nothing uploaded twice.
        let snap = s.snapshot();
        assert_eq!(snap.count(CREATE_VERSION, "201"), 3, "{}", s.logs());
        assert_eq!(uploads(&s), 3, "{}", s.logs());
        assert_eq!(snap.total(PUBLISH), 3, "{}", s.logs());
    }
}

/// A build whose upload has yet to start while another build of its app
/// uploads says which one it waits for.
#[tokio::test]
async fn a_build_waiting_for_its_apps_upload_lane_names_the_upload_ahead() {
    let s = Setup::new(1)
        .sandbox(|c| {
            c.faults(FaultConfig {
                latency: Duration::from_millis(100),
                ..FaultConfig::seeded(3)
            })
        })
        .start()
        .await;
    let files: Vec<Dropped> = ["night-1", "night-2"]
        .iter()
        .map(|label| s.drop_zip(0, label, chunks(24)))
        .collect();
    let daemon = s.spawn(false, None);
    let rows = until_rows(&s, "night-1 uploading ahead of night-2", |rows| {
        let (Some(one), Some(two)) = (row(rows, "night-1"), row(rows, "night-2")) else {
            return false;
        };
        one["worker"] == "ahead" && two["worker"].is_null() && !two["waiting"].is_null()
    })
    .await;
    let (one, two) = (
        row(&rows, "night-1").unwrap(),
        row(&rows, "night-2").unwrap(),
    );
    assert!(
        ["queued", "validated"].contains(&two["state"].as_str().unwrap()),
        "{rows:#?}"
    );
    assert_eq!(
        two["waiting"],
        format!(
            "its upload comes after build {}'s (app {} uploads one build at a time)",
            one["id"].as_str().unwrap(),
            app(0)
        ),
        "{rows:#?}"
    );
    // The text table says it too (night-1's upload has 2 s to go).
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = s.run_cli(&["status"]).stdout;
        if text.contains("its upload comes after build") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for f in &files {
        s.until_published(&app(0), &f.label).await;
    }
    daemon.stop().await;
    s.assert_published_in_order(&app(0), &files.iter().collect::<Vec<_>>());
}

/// `status` (text) says how many uploads are in flight and how many builds
/// wait for their turn with their upload done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_the_uploads_in_flight_and_the_builds_waiting_their_turn() {
    let s = Setup::new(1)
        .sandbox(|c| c.job_duration(Duration::from_secs(20)))
        .start()
        .await;
    s.drop_zip(0, "one", chunks(2));
    s.drop_zip(0, "two", chunks(2));
    let daemon = s.spawn(false, None);
    s.until_state("two", "uploaded").await;
    let out = s.run_cli(&["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(
            "uploads in flight: 0 (0 ahead of their build's turn); uploaded and waiting for \
             their turn: 1"
        ),
        "{}",
        out.stdout
    );
    daemon.stop().await;
}

/// Kills the daemon after store write `n` of two pipelined builds, restarts
/// it and checks both are published once, in order.
async fn crash_between_two_builds(variant: Option<Variant>, n: u32) -> bool {
    let s = Setup::new(1)
        .variant(variant)
        .sandbox(|c| c.job_duration(Duration::from_millis(800)))
        .start()
        .await;
    let one = s.drop_zip(0, "one", chunks(6));
    let two = s.drop_zip(0, "two", chunks(6));
    let point = format!("after-store-write#{n}");
    let status = s.run_child(Some(&point)).await;
    if status.code() == Some(0) {
        return false;
    }
    s.restart_patchkit();
    s.run_child_ok().await;
    s.assert_published_in_order(&app(0), &[&one, &two]);
    if !s.forgetful() {
        let snap = s.snapshot();
        let context = format!("{point}\n{}", s.logs());
        assert_eq!(snap.count(CREATE_VERSION, "201"), 2, "{context}");
        // A write is never between an upload's creation and its record.
        assert_eq!(uploads(&s), 2, "{context}");
        assert_eq!(snap.total(PUBLISH), 2, "{context}");
        // The chunk on the wire while its predecessor's offset was written
        // is sent again, no more.
        let twice: u64 = snap.uploads.iter().map(|u| u.received_twice).sum();
        assert!(twice <= CHUNK, "{twice} bytes sent twice\n{context}");
    }
    true
}

each_variant! {
    async fn a_crash_at_any_store_write_of_two_pipelined_builds_publishes_each_once(variant) {
        // Every sixth write from the first to past the last: the crash
        // lands in each phase of both builds, including build 2's upload
        // during build 1's processing.
        let mut n = 1;
        while crash_between_two_builds(variant, n).await {
            n += 6;
        }
        assert!(n > 30, "only {n} writes seen");
    }
}

/// A build cancelled with its upload done, before its turn, and one whose
/// file fails validation: neither leaves a draft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_ended_before_their_turn_leave_no_draft() {
    let s = Setup::new(1)
        .sandbox(|c| c.job_duration(Duration::from_secs(4)))
        .start()
        .await;
    let first = s.drop_zip(0, "first", chunks(2));
    s.drop_zip(0, "second", chunks(2));
    let broken = s.folder(0).join("third.zip");
    std::fs::write(&broken, b"not a zip at all").unwrap();
    let daemon = s.spawn(false, None);
    let second = s.until_state("second", "uploaded").await;
    let id = second["id"].as_str().unwrap().to_owned();
    let out = s.run_cli(&["cancel", &id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    s.until_state("second", "cancelled").await;
    s.until_state("third", "failed").await;
    s.until_published(&app(0), "first").await;
    daemon.stop().await;
    s.assert_published_in_order(&app(0), &[&first]);
    let rows = s.status_rows();
    for label in ["second", "third"] {
        assert!(
            row(&rows, label).unwrap()["version_id"].is_null(),
            "{rows:#?}"
        );
    }
    assert_eq!(s.snapshot().count(CREATE_VERSION, "201"), 1);
}
