//! How builds end: PatchKit's processing verdicts, rules that keep drafts,
//! drafts already on the app, an operator's retry and cancel, and the order
//! and concurrency of builds across apps. The daemon runs in-process with
//! `--once` against the sandbox; the store and the sandbox tell the outcome.

#[macro_use]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harness::{
    CREATE_UPLOAD, CREATE_VERSION, Dropped, Scenario, Setup, Variant, chunks, failure_reason,
};
use patchkit_autopublish::sandbox::{OutcomeRule, ProcessingOutcome};
use patchkit_autopublish::state::BuildState;
use tokio_util::sync::CancellationToken;

/// One app whose processing ends with `outcome`, one build run to its end.
async fn processed_with(
    outcome: ProcessingOutcome,
    variant: Option<Variant>,
) -> (Scenario, Dropped) {
    let s = Setup::new(1)
        .variant(variant)
        .sandbox(|c| c.outcome(OutcomeRule::any().processing(outcome)))
        .start()
        .await;
    let file = s.drop_zip(0, "game-1.0", chunks(1));
    s.run_once().await;
    (s, file)
}

/// The build failed in processing with a reason containing every `part`,
/// and its version was never published.
async fn assert_failed_unpublished(s: &Scenario, file: &Dropped, parts: &[&str]) {
    let build = s.build_of(file).await;
    let reason = failure_reason(&build);
    for part in parts {
        assert!(reason.contains(part), "{part:?} not in {reason:?}");
    }
    let snap = s.snapshot();
    let versions = snap.versions(&file.app);
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(versions[0].processed && !versions[0].published && versions[0].draft);
    assert_eq!(build.state.version_id(), Some(versions[0].id));
}

each_variant! {
    async fn a_processing_error_flag_fails_the_build_unpublished(variant) {
        let (s, file) = processed_with(ProcessingOutcome::HasProcessingError, variant).await;
        assert_failed_unpublished(&s, &file, &["processing error", "retry"]).await;
    }
}

each_variant! {
    async fn an_error_message_fails_the_build_with_it(variant) {
        let message = "the launcher executable is missing".to_owned();
        let (s, file) = processed_with(ProcessingOutcome::Error {
            message: message.clone(),
        }, variant)
        .await;
        assert_failed_unpublished(&s, &file, &[&message]).await;
    }
}

each_variant! {
    async fn a_failed_job_fails_the_build_with_its_status_and_message(variant) {
        let (s, file) = processed_with(ProcessingOutcome::JobFailure {
            status: 3,
            message: "worker ran out of disk".into(),
        }, variant)
        .await;
        assert_failed_unpublished(&s, &file, &["status 3", "worker ran out of disk"]).await;
    }
}

each_variant! {
    async fn a_warning_is_published_and_kept_with_the_build(variant) {
        let (s, file) = processed_with(ProcessingOutcome::Warning {
            message: "the build is larger than the last one".into(),
        }, variant)
        .await;
        s.assert_published_in_order(&file.app, &[&file]);
        match s.build_of(&file).await.state {
            BuildState::Published { warnings, .. } => {
                assert_eq!(warnings, ["the build is larger than the last one"])
            }
            other => panic!("{other}"),
        }
    }
}

each_variant! {
    async fn a_rule_that_does_not_publish_leaves_a_processed_draft(variant) {
        let s = Setup::new(1).variant(variant).rule(0, "publish = false").start().await;
        let file = s.drop_zip(0, "game-1.0", chunks(1));
        s.run_once().await;
        let build = s.build_of(&file).await;
        assert!(
            matches!(build.state, BuildState::Draft { .. }),
            "{}",
            build.state
        );
        let snap = s.snapshot();
        let v = &snap.versions("app-0")[0];
        assert!(v.processed && v.draft && !v.published, "{v:?}");
        assert_eq!(v.content_sha256.as_deref(), Some(file.sha256.as_str()));
        assert_eq!(snap.total(harness::PUBLISH), 0);
    }
}

each_variant! {
    async fn a_draft_made_by_hand_with_the_builds_label_is_in_the_way(variant) {
        // A label proves nothing: only a draft this build asked for is its
        // own. With existing_draft = "fail" the person's draft is left as
        // it is; with "take_over" it is taken over like any other.
        let s = Setup::new(2).variant(variant)
            .rule(1, r#"existing_draft = "take_over""#)
            .start()
            .await;
        let client = s.client();
        let by_hand = client
            .create_version("app-0", "coll", Some("human-made"))
            .await
            .unwrap();
        let taken = client
            .create_version("app-1", "coll", Some("human-made"))
            .await
            .unwrap();
        let refused = s.drop_zip(0, "coll", chunks(1));
        let over = s.drop_zip(1, "coll", chunks(1));
        s.run_once().await;

        let reason = failure_reason(&s.build_of(&refused).await).to_owned();
        assert!(
            reason.contains(&format!("draft version {} \"coll\"", by_hand.id))
                && reason.contains("existing_draft"),
            "{reason}"
        );
        let snap = s.snapshot();
        assert_eq!(snap.versions("app-0").len(), 1);
        let untouched = &snap.versions("app-0")[0];
        assert!(untouched.draft && !untouched.published && untouched.upload_id.is_none());
        assert_eq!(untouched.changelog, "human-made");

        s.assert_published_in_order("app-1", &[&over]);
        assert_eq!(snap.versions("app-1")[0].id, taken.id);
        assert_eq!(snap.count(CREATE_VERSION, "201"), 2, "only the test's drafts");
    }
}

each_variant! {
    async fn a_foreign_draft_fails_the_build_by_default_and_is_taken_over_when_asked(variant) {
        let s = Setup::new(2).variant(variant)
            .rule(1, r#"existing_draft = "take_over""#)
            .start()
            .await;
        let kept = s.create_draft("app-0", "hotfix-by-hand").await;
        let taken = s.create_draft("app-1", "hotfix-by-hand").await;
        let refused = s.drop_zip(0, "game-1.0", chunks(1));
        let over = s.drop_zip(1, "game-1.0", chunks(1));
        s.run_once().await;

        let reason = failure_reason(&s.build_of(&refused).await).to_owned();
        assert!(
            reason.contains(&format!("draft version {} \"hotfix-by-hand\"", kept.id)),
            "{reason}"
        );
        let snap = s.snapshot();
        let untouched = &snap.versions("app-0")[0];
        assert_eq!(snap.versions("app-0").len(), 1);
        assert_eq!(untouched.label, "hotfix-by-hand");
        assert!(untouched.draft && untouched.upload_id.is_none());

        s.assert_published_in_order("app-1", &[&over]);
        assert_eq!(snap.versions("app-1")[0].id, taken.id);
        assert_eq!(
            snap.count(CREATE_VERSION, "201"),
            2,
            "only the test's drafts"
        );
    }
}

each_variant! {
    async fn the_draft_of_an_own_failed_build_is_reused_by_the_next_build(variant) {
        let s =
            Setup::new(1).variant(variant)
                .sandbox(|c| {
                    c.outcome(OutcomeRule::any().label("broken-*").processing(
                        ProcessingOutcome::Error {
                            message: "broken".into(),
                        },
                    ))
                })
                .start()
                .await;
        let broken = s.drop_zip(0, "broken-1.0", chunks(1));
        s.run_once().await;
        let failed = s.build_of(&broken).await;
        failure_reason(&failed);

        let good = s.drop_zip(0, "game-1.1", chunks(2));
        s.run_once().await;
        s.assert_published_in_order("app-0", &[&good]);
        let snap = s.snapshot();
        assert_eq!(
            Some(snap.versions("app-0")[0].id),
            failed.state.version_id()
        );
        assert_eq!(snap.count(CREATE_VERSION, "201"), 1);
    }
}

each_variant! {
    async fn a_retried_build_reuses_its_version_and_publishes(variant) {
        let s = Setup::new(1).variant(variant)
            .sandbox(|c| {
                c.outcome(OutcomeRule::any().processing(ProcessingOutcome::HasProcessingError))
            })
            .start()
            .await;
        let file = s.drop_zip(0, "game-1.0", chunks(2));
        s.run_once().await;
        let failed = s.build_of(&file).await;
        failure_reason(&failed);

        // PatchKit's processing recovers; the operator retries from the CLI.
        s.sb.set_outcomes(Vec::new());
        let out = s.cli(&["retry", &failed.id.to_string()]);
        assert!(out.status.success(), "{out:?}");
        s.run_once().await;

        s.assert_published_in_order("app-0", &[&file]);
        let snap = s.snapshot();
        assert_eq!(
            Some(snap.versions("app-0")[0].id),
            failed.state.version_id()
        );
        assert_eq!(snap.count(CREATE_VERSION, "201"), 1);
        assert_eq!(snap.count(CREATE_UPLOAD, "201"), 2, "a fresh upload");
    }
}

each_variant! {
    async fn a_cancelled_queued_build_uploads_nothing(variant) {
        let s = Setup::new(1).variant(variant).start().await;
        let file = s.drop_zip(0, "game-1.0", chunks(1));
        let ids = s.enqueue(&[&file]).await;
        let store = s.open_store().await;
        let cancelled = patchkit_autopublish::control::cancel_build(&store, ids[0]).await.unwrap();
        assert!(matches!(cancelled.state, BuildState::Cancelled { .. }));
        drop(store);

        // The file is still in the folder: it is not taken again.
        s.run_once().await;
        let builds = s.builds().await;
        assert_eq!(builds.len(), 1);
        assert!(matches!(builds[0].state, BuildState::Cancelled { .. }));
        let snap = s.snapshot();
        assert!(snap.versions("app-0").is_empty());
        assert!(snap.uploads.is_empty());
    }
}

each_variant! {
    async fn builds_of_one_app_go_one_at_a_time_within_the_worker_limit(variant) {
        const APPS: usize = 3;
        let s = Setup::new(APPS).variant(variant)
            .workers(2)
            .sandbox(|c| {
                c.job_duration(Duration::from_millis(50))
                    .publish_duration(Duration::from_millis(50))
            })
            .start()
            .await;
        let files: Vec<Vec<Dropped>> = (0..APPS)
            .map(|a| {
                (0..3)
                    .map(|n| s.drop_zip(a, &format!("game-{a}-{n}"), chunks(1)))
                    .collect()
            })
            .collect();
        // Arrival interleaves the apps.
        let order: Vec<&Dropped> = (0..3)
            .flat_map(|n| files.iter().map(move |f| &f[n]))
            .collect();
        s.enqueue(&order).await;

        let most = Arc::new(AtomicUsize::new(0));
        let done = CancellationToken::new();
        let watch = {
            let (sb, most, done) = (s.sb.clone(), most.clone(), done.clone());
            tokio::spawn(async move {
                // Every build in flight holds its app's open draft, from its
                // creation to its publication.
                while !done.is_cancelled() {
                    let open = sb
                        .snapshot()
                        .apps
                        .iter()
                        .filter(|a| a.versions.iter().any(|v| v.draft))
                        .count();
                    most.fetch_max(open, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        s.run_once().await;
        done.cancel();
        watch.await.unwrap();

        for (a, app_files) in files.iter().enumerate() {
            let refs: Vec<&Dropped> = app_files.iter().collect();
            s.assert_published_in_order(&harness::app(a), &refs);
        }
        let snap = s.snapshot();
        assert_eq!(snap.count(CREATE_VERSION, "403"), 0, "{:?}", snap.requests);
        assert_eq!(most.load(Ordering::SeqCst), 2, "two workers, both used");
    }
}
