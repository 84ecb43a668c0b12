//! `retry` never makes an older build the live one by accident: not when
//! it is asked (a newer build is live), and not later, when the retried
//! build's turn comes after a newer build went live meanwhile.

#[macro_use]
mod harness;

use std::time::Duration;

use harness::{Setup, app, until};
use patchkit_autopublish::sandbox::{OutcomeRule, ProcessingOutcome};

/// Build `a` fails in processing; `b` (newer) is dropped and is processing
/// when `a` is retried, which is allowed since nothing newer is live yet.
/// `b` goes live first; when `a`'s processing then finishes, it is not
/// published over `b`: it fails saying why, and only `retry --force`
/// publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_build_is_not_published_over_a_newer_one_that_went_live_meanwhile() {
    let s = Setup::new(1)
        .sandbox(|c| {
            c.job_duration(Duration::from_millis(1500)).outcome(
                OutcomeRule::any()
                    .label("a")
                    .processing(ProcessingOutcome::Error {
                        message: "broken".into(),
                    }),
            )
        })
        .start()
        .await;
    let daemon = s.spawn(false, None);
    let a = s.drop_zip(0, "a", 20_000);
    let failed = s.until_state("a", "failed").await;
    s.sandbox().set_outcomes(Vec::new());
    let b = s.drop_zip(0, "b", 20_000);
    s.until_state("b", "processing").await;

    let id = failed["id"].as_str().unwrap().to_owned();
    let out = s.run_cli(&["retry", &id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let b_version = s.until_published(&app(0), "b").await;
    let refused = s.until_state("a", "failed").await;
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("arrived after this one"), "{reason}");
    assert!(reason.contains("--force"), "{reason}");
    let snap = s.snapshot();
    let live = snap.app(&app(0)).unwrap().current_version;
    assert_eq!(live, b_version, "b stays live");
    assert!(
        !snap
            .versions(&app(0))
            .iter()
            .any(|v| v.label == "a" && v.published)
    );

    let out = s.run_cli(&["retry", "--force", &id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let a_version = s.until_published(&app(0), "a").await;
    until("a is live", || {
        s.snapshot().app(&app(0)).unwrap().current_version == a_version
    })
    .await;
    drop((a, b));
    daemon.stop().await;
}
