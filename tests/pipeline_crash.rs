//! A build survives the process dying at any moment: after every durable
//! record update and in every window between a PatchKit side effect and its
//! record. Each case kills the real binary with a crash point (SIGKILL, no
//! flush, no destructors), restarts it without one, and checks that the file
//! ends up published exactly once, with nothing created twice.

mod harness;

use std::os::unix::process::ExitStatusExt as _;

use harness::{Dropped, Scenario, Setup, chunks};
use patchkit_autopublish::sandbox::{OutcomeRule, ProcessingOutcome};

/// The file every crash case publishes: six chunks.
const CHUNKS: u64 = 6;

/// One app, one six-chunk build in its folder.
async fn one_build() -> (Scenario, Dropped) {
    let s = Setup::new(1).start().await;
    let file = s.drop_zip(0, "game-1.0", chunks(CHUNKS));
    (s, file)
}

/// Runs with `point` armed. Returns false if the run finished without
/// reaching it; otherwise checks the kill, restarts and returns true.
async fn crash_and_restart(s: &Scenario, point: &str) -> bool {
    let status = s.run_child(Some(point)).await;
    if status.code() == Some(0) {
        return false;
    }
    assert_eq!(
        status.signal(),
        Some(9),
        "{point}: {status:?}\n{}",
        s.logs()
    );
    s.run_child_ok().await;
    true
}

/// Crashes at `point` on a fresh scenario and checks the invariants.
async fn crash_at(point: &str, max_uploads: u64) {
    let (s, file) = one_build().await;
    assert!(
        crash_and_restart(&s, point).await,
        "{point} was never reached\n{}",
        s.logs()
    );
    s.assert_recovered(&file, max_uploads, point);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_store_write_resumes_to_one_published_version() {
    // Queued -> Validated -> VersionReady -> Uploading, one write per chunk,
    // Uploaded, Processing twice (requested, job), Processed, Publishing,
    // Published: the crash point must have been reached at least this often.
    let expected = 9 + CHUNKS;
    let mut n = 1;
    loop {
        let (s, file) = one_build().await;
        let point = format!("after-store-write#{n}");
        if !crash_and_restart(&s, &point).await {
            // The armed run went through without reaching write n: every
            // earlier write has had its crash.
            s.assert_recovered(&file, 1, "clean run");
            break;
        }
        s.assert_recovered(&file, 1, &point);
        n += 1;
    }
    eprintln!("crashed after each of {} store writes", n - 1);
    assert!(
        n > expected,
        "only {} writes seen, expected {expected}",
        n - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_creating_the_version_adopts_the_draft() {
    crash_at("after-create-version", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_creating_the_upload_starts_one_more_upload_at_most() {
    crash_at("after-create-upload", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_an_ack_is_written_resends_that_chunk_only() {
    for k in [1, 3, CHUNKS] {
        crash_at(&format!("before-ack-write#{k}"), 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_content_file_follows_the_started_processing() {
    crash_at("after-content-file", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_publish_request_does_not_publish_twice() {
    crash_at("after-publish", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_taking_over_a_draft_adopts_it_relabelled() {
    let s = Setup::new(1)
        .rule(0, r#"existing_draft = "take_over""#)
        .start()
        .await;
    let foreign = s.create_draft("app-0", "made-by-hand").await;
    let file = s.drop_zip(0, "game-2.0", chunks(2));
    assert!(
        crash_and_restart(&s, "after-take-over").await,
        "{}",
        s.logs()
    );
    // The one version is the foreign draft, created by the test; the daemon
    // created none.
    s.assert_recovered(&file, 1, "after-take-over");
    assert_eq!(s.snapshot().versions("app-0")[0].id, foreign.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_content_file_of_a_retried_build_follows_the_new_processing() {
    // The version was processed once already (with an error), so only a
    // changed processing_started_at tells the restart that the new request
    // went through.
    let s = Setup::new(1)
        .sandbox(|c| {
            c.outcome(OutcomeRule::any().processing(ProcessingOutcome::HasProcessingError))
        })
        .start()
        .await;
    let file = s.drop_zip(0, "game-1.0", chunks(2));
    // The build fails, so the run does.
    let status = s.run_child(None).await;
    assert_eq!(status.code(), Some(1), "{status:?}\n{}", s.logs());
    let failed = s.build_of(&file).await;
    harness::failure_reason(&failed);

    s.sb.set_outcomes(Vec::new());
    let out = s.cli(&["retry", &failed.id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        crash_and_restart(&s, "after-content-file").await,
        "{}",
        s.logs()
    );
    // Two uploads: the first try's and the retry's fresh one.
    s.assert_recovered(&file, 2, "after-content-file of a retry");
    let snap = s.snapshot();
    assert_eq!(
        snap.total("PUT /1/apps/{secret}/versions/{id}/content_file"),
        2
    );
}
