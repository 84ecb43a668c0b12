//! The answers of the real PatchKit that our contract leaves open: a
//! PatchKit that forgets a build's draft and upload while it runs, channel
//! apps, and a 403 that must be looked up rather than read. The daemon runs
//! in-process with `--once` against the sandbox, as the other pipeline
//! tests do.

#[macro_use]
mod harness;

use std::num::NonZeroU64;
use std::time::Duration;

use harness::{CHUNK, Dropped, KEY, Scenario, Setup, Variant, chunks, failure_reason, until};
use patchkit_autopublish::patchkit::{AckFn, UploadRequest};
use patchkit_autopublish::sandbox::FaultConfig;
use patchkit_autopublish::state::{BuildState, FileIdentity};

/// Records `file` as a build and uploads it, as the daemon does before the
/// build's turn: the build is left `Uploaded` with no version.
async fn uploaded_before_its_turn(s: &Scenario, file: &Dropped) {
    let id = s.enqueue(&[file]).await[0];
    let client = s.client();
    let meta = std::fs::metadata(&file.path).unwrap();
    let identity = FileIdentity::from_metadata(&file.path, &meta);
    let upload = client.create_upload(meta.len()).await.unwrap();
    let request = UploadRequest {
        upload_id: upload,
        path: file.path.clone(),
        total_size: meta.len(),
        start_offset: 0,
        chunk_size: NonZeroU64::new(CHUNK).unwrap(),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    client
        .upload_file(&request, &mut AckFn(|_| Ok(())), &cancel)
        .await
        .unwrap();
    let store = s.open_store().await;
    let mut build = store.get(id).unwrap().unwrap();
    let steps = [
        |s: &BuildState, _: u64, _: &FileIdentity| s.validated(),
        |s: &BuildState, upload: u64, identity: &FileIdentity| {
            s.upload_started(upload, identity.size, CHUNK, identity.clone())
        },
        |s: &BuildState, _: u64, identity: &FileIdentity| s.chunk_acknowledged(identity.size),
        |s: &BuildState, _: u64, _: &FileIdentity| s.uploaded(),
    ];
    for step in steps {
        let next = step(&build.state, upload.0, &identity).unwrap();
        build = store.transition(id, &build.state, next).await.unwrap();
    }
    assert!(!build.state.before_turn() && build.state.version_id().is_none());
}

/// PatchKit is restored from an older backup while a build uploads: its
/// upload is gone. The build uploads again (it has no draft yet: uploads
/// come first), then creates its one version and publishes, by itself,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patchkit_forgetting_a_build_mid_upload_is_recovered_without_a_retry() {
    let s = Setup::new(1)
        .variant(Some(Variant::Forgetful))
        .sandbox(|c| {
            // Slow enough chunks that the restart lands mid-upload.
            c.faults(FaultConfig {
                latency: Duration::from_millis(15),
                ..FaultConfig::seeded(1)
            })
        })
        .start()
        .await;
    let file = s.drop_zip(0, "game-1.0", chunks(12));
    let run = s.run_once();
    let forget = async {
        until("two chunks received", || {
            s.snapshot().uploads.iter().any(|u| u.received >= 2 * CHUNK)
        })
        .await;
        s.restart_patchkit();
        assert!(s.snapshot().uploads.is_empty(), "the sandbox forgot");
    };
    tokio::join!(run, forget);

    s.assert_published_in_order("app-0", &[&file]);
    let build = s.build_of(&file).await;
    assert!(
        matches!(build.state, BuildState::Published { .. }),
        "{}",
        build.state
    );
    let snap = s.snapshot();
    assert_eq!(snap.count(harness::CREATE_VERSION, "201"), 1);
    assert_eq!(
        snap.count(harness::CREATE_UPLOAD, "201") + snap.count(harness::CREATE_UPLOAD, "200"),
        2,
        "uploaded again once"
    );
    assert_eq!(snap.total(harness::PUBLISH), 1);
}

/// A version deleted in the panel after the build failed in processing: the
/// operator's retry creates a new one instead of failing on the old id, and
/// nothing blames the app secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_patchkit_forgot_the_version_creates_a_new_one() {
    use patchkit_autopublish::sandbox::{OutcomeRule, ProcessingOutcome};
    let s = Setup::new(1)
        .variant(Some(Variant::Forgetful))
        .sandbox(|c| {
            c.outcome(OutcomeRule::any().processing(ProcessingOutcome::HasProcessingError))
        })
        .start()
        .await;
    let file = s.drop_zip(0, "game-1.0", chunks(2));
    s.run_once().await;
    let failed = s.build_of(&file).await;
    failure_reason(&failed);

    s.sb.set_outcomes(Vec::new());
    s.restart_patchkit();
    let out = s.cli(&["retry", &failed.id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    s.run_once().await;

    s.assert_published_in_order("app-0", &[&file]);
    let build = s.build_of(&file).await;
    assert!(
        !build
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("app_secret"),
        "{:?}",
        build.last_error
    );
}

/// A channel app that takes no direct uploads: the build fails before
/// anything is created, naming the group app, and `check` says so too.
/// Allowed direct publishing, the retried build publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_app_gets_no_upload_and_check_names_its_group() {
    let s = Setup::new(1).start().await;
    s.sb.add_channel_app(KEY, "app-0", "group-0", false);
    let file = s.drop_zip(0, "game-1.0", chunks(1));
    s.run_once().await;

    let build = s.build_of(&file).await;
    let reason = failure_reason(&build);
    for part in [
        "channel",
        "group-0",
        "app_secret",
        "allow direct publishing",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason:?}");
    }
    let snap = s.snapshot();
    assert!(snap.versions("app-0").is_empty(), "no version");
    assert!(snap.uploads.is_empty(), "no upload");

    let check = s.run_cli(&["check"]);
    assert_ne!(check.code, Some(0), "{check:?}");
    assert!(
        check.stdout.contains("is a channel") && check.stdout.contains("group-0"),
        "{check:?}"
    );

    s.sb.add_channel_app(KEY, "app-0", "group-0", true);
    let out = s.cli(&["retry", &build.id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    s.run_once().await;
    s.assert_published_in_order("app-0", &[&file]);
}

each_variant! {
    /// The rule names an app of another account: PatchKit answers 403, and
    /// the build fails saying the key works but the app is not its
    /// account's, whatever PatchKit's wording.
    async fn an_app_of_another_account_is_named_as_an_access_problem(variant) {
        let s = Setup::new(1).variant(variant).start().await;
        s.sb.add_account("other-key");
        s.sb.add_app("other-key", "foreign-app");
        s.set_rule_key(0, "app_secret", "\"foreign-app\"");
        let file = s.drop_zip(0, "game-1.0", chunks(1));
        s.run_once().await;

        let reason = failure_reason(&s.build_of(&file).await).to_owned();
        assert!(
            reason.contains("not one of its account's apps") && reason.contains("foreign-app"),
            "{reason}"
        );
        assert!(s.snapshot().versions("foreign-app").is_empty());
    }
}

/// A server that answers a wrong key with 403 on the version endpoints
/// (and ignores it on public ones): the daemon finds out that the key is
/// refused and pauses like for a 401, keeping the build; `--once` ends with
/// the key error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_answered_with_403_pauses_like_a_refused_key() {
    let s = Setup::new(1)
        .variant(Some(Variant::Forbidden403))
        .start()
        .await;
    // With PatchKit's lock on, the lock's own 401 says it first; this case
    // is about a server whose version endpoints answer 403.
    s.edit_config(|t| t.replacen("[patchkit]\n", "[patchkit]\nglobal_lock = false\n", 1));
    let file = s.drop_zip(0, "game-1.0", chunks(1));
    // The upload (whose endpoint answers a wrong key with 401) is done
    // while the key was right: the key goes wrong before the build's turn,
    // whose first request is the version list.
    uploaded_before_its_turn(&s, &file).await;
    s.write_key("not-the-key");
    let ended = s
        .run_daemon(true, tokio_util::sync::CancellationToken::new())
        .await;
    assert!(ended.is_err(), "the run ends with the key error");
    let build = s.build_of(&file).await;
    assert!(
        !matches!(build.state, BuildState::Failed { .. }),
        "the build waits for the key: {}",
        build.state
    );
    let snap = s.snapshot();
    assert!(
        snap.count("GET /1/apps/{secret}/versions", "403") >= 1,
        "{:?}",
        snap.requests
    );

    s.write_key(KEY);
    s.run_once().await;
    s.assert_published_in_order("app-0", &[&file]);
}
