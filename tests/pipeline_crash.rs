//! A build survives the process dying at any moment: after every durable
//! record update and in every window between a PatchKit side effect and its
//! record. Each case kills the real binary with a crash point (SIGKILL, no
//! flush, no destructors), restarts it without one, and checks that the file
//! ends up published exactly once, with nothing created twice.
//!
//! Every case runs under each sandbox variant; with `forgetful`, PatchKit
//! restarts while the daemon is down and forgets its drafts, uploads and
//! jobs, and the daemon must find its way back by itself.

#[macro_use]
mod harness;

use std::os::unix::process::ExitStatusExt as _;

use harness::{Dropped, Scenario, Setup, Variant, chunks};
use patchkit_autopublish::sandbox::{OutcomeRule, ProcessingOutcome};

/// The file every crash case publishes: six chunks.
const CHUNKS: u64 = 6;

/// One app, one six-chunk build in its folder.
async fn one_build(variant: Option<Variant>) -> (Scenario, Dropped) {
    let s = Setup::new(1).variant(variant).start().await;
    let file = s.drop_zip(0, "game-1.0", chunks(CHUNKS));
    (s, file)
}

/// Runs with `point` armed. Returns false if the run finished without
/// reaching it; otherwise checks the kill, restarts PatchKit (which may
/// forget, under the `forgetful` variant) and the daemon, and returns true.
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
    s.restart_patchkit();
    s.run_child_ok().await;
    true
}

/// Crashes at `point` on a fresh scenario and checks the invariants.
async fn crash_at(point: &str, max_uploads: u64, variant: Option<Variant>) {
    let (s, file) = one_build(variant).await;
    assert!(
        crash_and_restart(&s, point).await,
        "{point} was never reached\n{}",
        s.logs()
    );
    s.assert_recovered(&file, max_uploads, point);
}

each_variant! {
    async fn a_crash_after_any_store_write_resumes_to_one_published_version(variant) {
        // Queued -> Validated -> Uploading, one write per chunk, Uploaded,
        // CreatingVersion, Uploaded with the version, Processing twice
        // (requested, job), Processed, Publishing, Published: the crash
        // point must have been reached at least this often.
        let expected = 10 + CHUNKS;
        let mut n = 1;
        loop {
            let (s, file) = one_build(variant).await;
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
}

each_variant! {
    async fn a_crash_after_creating_the_version_adopts_the_draft(variant) {
        crash_at("after-create-version", 1, variant).await;
    }
}

each_variant! {
    async fn a_crash_after_creating_the_upload_starts_one_more_upload_at_most(variant) {
        crash_at("after-create-upload", 2, variant).await;
    }
}

each_variant! {
    async fn a_crash_before_an_ack_is_written_resends_that_chunk_only(variant) {
        for k in [1, 3, CHUNKS] {
            crash_at(&format!("before-ack-write#{k}"), 1, variant).await;
        }
    }
}

each_variant! {
    async fn a_crash_after_content_file_follows_the_started_processing(variant) {
        crash_at("after-content-file", 1, variant).await;
    }
}

each_variant! {
    async fn a_crash_after_the_publish_request_does_not_publish_twice(variant) {
        crash_at("after-publish", 1, variant).await;
    }
}

each_variant! {
    async fn a_crash_after_taking_over_a_draft_adopts_it_relabelled(variant) {
        let s = Setup::new(1).variant(variant)
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
}

each_variant! {
    async fn a_crash_after_content_file_of_a_retried_build_follows_the_new_processing(variant) {
        // The version was processed once already (with an error), so only a
        // changed processing_started_at tells the restart that the new request
        // went through.
        let s = Setup::new(1).variant(variant)
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
        // One content_file per try; a PatchKit that forgot the draft in
        // the crash needs one more for the draft made again.
        let snap = s.snapshot();
        let expected = if s.forgetful() { 3 } else { 2 };
        assert_eq!(
            snap.total("PUT /1/apps/{secret}/versions/{id}/content_file"),
            expected,
            "{}",
            s.logs()
        );
    }
}
