//! Channel publishing: a rule that names channels of its group app feeds
//! each of them from the published group version (draft, link, job,
//! publish), under every sandbox variant; a channel that fails fails the
//! build in the `channels` stage with the group version live, and `retry`
//! feeds only what is not live yet.

#[macro_use]
mod harness;

use harness::{KEY, Setup, app, failure_reason};
use patchkit_autopublish::sandbox::{OutcomeRule, ProcessingOutcome};
use patchkit_autopublish::state::{BuildState, Stage};

fn channel(n: &str) -> String {
    format!("{}-{n}", app(0))
}

each_variant! {
    /// Both channels get a published version with the group version's
    /// content, labelled like the build, and the build ends published.
    async fn every_channel_gets_the_published_group_version(variant) {
        let s = Setup::new(1)
            .variant(variant)
            .rule(0, &format!("channels = [\"{}\", \"{}\"]", channel("beta"), channel("nightly")))
            .start()
            .await;
        for n in ["beta", "nightly"] {
            s.sandbox().add_channel_app(KEY, &channel(n), &app(0), false);
        }
        let file = s.drop_zip(0, "1.0.0", 30_000);
        s.run_once().await;

        let snap = s.snapshot();
        let group = snap.versions(&app(0));
        assert_eq!(group.len(), 1, "{group:#?}");
        assert!(group[0].published);
        assert_eq!(group[0].content_sha256.as_deref(), Some(file.sha256.as_str()));
        for n in ["beta", "nightly"] {
            let versions = snap.versions(&channel(n));
            assert_eq!(versions.len(), 1, "{n}: {versions:#?}");
            assert!(versions[0].published, "{n}: {versions:#?}");
            assert_eq!(versions[0].label, "1.0.0");
            assert_eq!(versions[0].content_sha256, group[0].content_sha256, "{n}");
        }
        let build = s.build_of(&file).await;
        assert!(matches!(build.state, BuildState::Published { .. }), "{:?}", build.state);
        let store = s.open_store().await;
        let record = store.coordination(build.id).unwrap();
        assert_eq!(record.channels.len(), 2);
        assert!(record.channels.iter().all(|c| c.step.name() == "published"), "{record:?}");
        drop(store);
        let rows = s.status_rows();
        let row = rows.iter().find(|r| r["label"] == "1.0.0").unwrap();
        let channels = row["channels"].as_array().unwrap();
        assert_eq!(channels.len(), 2, "{row:#?}");
        assert!(channels.iter().all(|c| c["step"] == "published" && c["version_id"] == 1), "{row:#?}");
    }
}

/// A channel whose processing reports an error fails the build in the
/// `channels` stage, naming the channel, with the group version live and
/// the other channel fed; after the cause is gone, `retry` feeds the failed
/// channel and nothing else again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_channel_fails_the_build_and_retry_feeds_only_that_channel() {
    let s = Setup::new(1)
        .rule(
            0,
            &format!(
                "channels = [\"{}\", \"{}\"]",
                channel("beta"),
                channel("nightly")
            ),
        )
        .start()
        .await;
    for n in ["beta", "nightly"] {
        s.sandbox()
            .add_channel_app(KEY, &channel(n), &app(0), false);
    }
    s.sandbox()
        .set_outcomes(vec![OutcomeRule::any().app(channel("nightly")).processing(
            ProcessingOutcome::Error {
                message: "missing executable".into(),
            },
        )]);
    let file = s.drop_zip(0, "2.0.0", 30_000);
    s.run_once().await;

    let build = s.build_of(&file).await;
    match &build.state {
        BuildState::Failed { stage, .. } => assert_eq!(*stage, Stage::Channels),
        other => panic!("failed in channels: {other:?}"),
    }
    let reason = failure_reason(&build).to_owned();
    assert!(reason.contains(&channel("nightly")), "{reason}");
    assert!(reason.contains("missing executable"), "{reason}");
    assert!(reason.contains("is live"), "{reason}");
    let snap = s.snapshot();
    assert!(snap.versions(&app(0))[0].published);
    assert!(snap.versions(&channel("beta"))[0].published);
    assert!(!snap.versions(&channel("nightly"))[0].published);
    let rows = s.status_rows();
    let channels = rows[0]["channels"].as_array().unwrap().clone();
    assert_eq!(channels[0]["step"], "published", "{channels:#?}");
    assert_eq!(channels[1]["step"], "failed", "{channels:#?}");
    assert!(
        channels[1]["reason"]
            .as_str()
            .unwrap()
            .contains("missing executable")
    );

    s.sandbox().set_outcomes(Vec::new());
    let out = s.cli(&["retry", &build.id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    s.run_once().await;
    let build = s.build_of(&file).await;
    assert!(
        matches!(build.state, BuildState::Published { published_at, .. } if published_at > 0),
        "{:?}",
        build.state
    );
    let snap = s.snapshot();
    assert_eq!(snap.versions(&app(0)).len(), 1);
    let beta = snap.versions(&channel("beta"));
    assert_eq!(beta.len(), 1, "beta was not fed again: {beta:#?}");
    let nightly = snap.versions(&channel("nightly"));
    assert_eq!(nightly.len(), 1, "nightly's draft was reused: {nightly:#?}");
    assert!(nightly[0].published);
    let link_requests: u64 = snap
        .requests
        .get("POST /1/apps/{secret}/versions/{id}/link")
        .map_or(0, |by_status| by_status.values().sum());
    assert_eq!(
        link_requests, 3,
        "beta once, nightly twice: {:?}",
        snap.requests
    );
}

/// A channel the group app does not have is named, before anything is
/// created on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_channel_is_named() {
    let s = Setup::new(1)
        .rule(0, "channels = [\"no-such-channel\"]")
        .start()
        .await;
    let file = s.drop_zip(0, "3.0.0", 20_000);
    s.run_once().await;
    let build = s.build_of(&file).await;
    let reason = failure_reason(&build);
    assert!(reason.contains("\"no-such-channel\""), "{reason}");
    assert!(reason.contains("rule-0"), "{reason}");
}

mod config {
    use std::path::Path;

    use patchkit_autopublish::config::Config;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("/etc/pka/config.toml")) {
            Ok(_) => panic!("expected the config to be refused"),
            Err(err) => err.problems().iter().map(|p| p.to_string()).collect(),
        }
    }

    const RULE: &str =
        "[[rule]]\nname = \"game\"\nfolder = \"/srv/builds/game\"\napp_secret = \"abc123\"\n";

    #[test]
    fn channels_and_the_lock_have_documented_defaults_and_are_read() {
        let config = Config::parse(RULE, Path::new("/etc/pka/config.toml")).unwrap();
        assert!(config.patchkit.global_lock);
        assert_eq!(config.patchkit.lock_refresh.as_secs(), 30);
        assert!(config.rules[0].channels.is_empty());
        let text = format!(
            "[patchkit]\nglobal_lock = false\nlock_refresh = \"10s\"\n{RULE}channels = [\"beta\", \" nightly \"]\n"
        );
        let config = Config::parse(&text, Path::new("/etc/pka/config.toml")).unwrap();
        assert!(!config.patchkit.global_lock);
        assert_eq!(config.patchkit.lock_refresh.as_secs(), 10);
        assert_eq!(config.rules[0].channels, ["beta", "nightly"]);
    }

    #[test]
    fn bad_channel_lists_and_lock_refreshes_are_named() {
        let found = problems(&format!(
            "{RULE}channels = [\"beta\", \"\", \"beta\"]\npublish = false\n"
        ));
        let all = found.join("\n");
        assert!(all.contains("channels: an empty name"), "{all}");
        assert!(all.contains("\"beta\" is listed twice"), "{all}");
        assert!(all.contains("publish = false"), "{all}");
        let found = problems(&format!("[patchkit]\nlock_refresh = \"5m\"\n{RULE}"));
        assert!(
            found[0].contains("lock_refresh: must be between 1s and 60s"),
            "{found:?}"
        );
    }
}

/// `check` looks each channel up before any build: a channel of the group
/// is named with its secret, a name the group does not have is a problem
/// naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_looks_up_every_channel() {
    let s = Setup::new(1)
        .rule(
            0,
            &format!("channels = [\"{}\", \"gone\"]", channel("beta")),
        )
        .start()
        .await;
    s.sandbox()
        .add_channel_app(KEY, &channel("beta"), &app(0), false);
    let out = s.run_cli(&["check"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains(&format!(
            "channel \"{}\" is app {}, fed after each publish",
            channel("beta"),
            channel("beta")
        )),
        "{text}"
    );
    assert!(
        text.contains("no channel of app app-0 is named \"gone\"") && text.contains("rule-0"),
        "{text}"
    );
}
