//! The Prometheus endpoint over a real socket: format, values, escaping.

use std::net::SocketAddr;
use std::time::Duration;

use patchkit_autopublish::clock::now_ms;
use patchkit_autopublish::metrics;
use patchkit_autopublish::observe::Observer;
use patchkit_autopublish::state::{BuildState, FileIdentity, Stage};
use patchkit_autopublish::store::{Build, BuildId};
use tokio_util::sync::CancellationToken;

fn build(id: u64, rule: &str, state: BuildState) -> Build {
    let file = std::path::PathBuf::from("/builds/Game.zip");
    Build {
        id: BuildId(id),
        rule: rule.into(),
        app_secret: "a1b2c3".into(),
        identity: FileIdentity {
            path: file.clone(),
            size: 100,
            mtime_ns: 0,
            inode: 1,
        },
        file,
        label: "1.0".into(),
        changelog: None,
        publish: true,
        enqueued_at: now_ms(),
        updated_at: now_ms(),
        state,
        attempts: 0,
        next_attempt_at: None,
        last_error: None,
    }
}

fn published() -> BuildState {
    BuildState::Published {
        version_id: 3,
        published_at: 1_772_366_400,
        warnings: Vec::new(),
    }
}

fn failed() -> BuildState {
    BuildState::Failed {
        stage: Stage::Process,
        reason: "processing failed".into(),
        attempts: 1,
        version_id: Some(3),
    }
}

async fn start(observer: &Observer) -> (SocketAddr, CancellationToken) {
    let cancel = CancellationToken::new();
    let (addr, _task) = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        observer.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();
    (addr, cancel)
}

async fn scrape(addr: SocketAddr) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The sample lines (no comments), for exact comparison.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[tokio::test]
async fn every_metric_is_described_and_starts_at_zero() {
    let observer = Observer::new();
    let (addr, _cancel) = start(&observer).await;
    let text = scrape(addr).await;
    for (name, kind) in [
        ("patchkit_autopublish_up", "gauge"),
        ("patchkit_autopublish_builds", "gauge"),
        ("patchkit_autopublish_bytes_uploaded_total", "counter"),
        ("patchkit_autopublish_retries_total", "counter"),
        ("patchkit_autopublish_failures_total", "counter"),
        ("patchkit_autopublish_published_total", "counter"),
        (
            "patchkit_autopublish_last_success_timestamp_seconds",
            "gauge",
        ),
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} HELP\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} TYPE\n{text}"
        );
    }
    assert_eq!(
        samples(&text),
        [
            "patchkit_autopublish_up 1",
            "patchkit_autopublish_bytes_uploaded_total 0"
        ]
    );
    assert!(text.ends_with('\n'));
}

#[tokio::test]
async fn counters_move_with_the_observer() {
    let observer = Observer::new();
    let (addr, _cancel) = start(&observer).await;

    let uploading = build(
        1,
        "win",
        BuildState::VersionReady { version_id: 3 }
            .upload_started(
                9,
                100,
                50,
                FileIdentity {
                    path: "/builds/Game.zip".into(),
                    size: 100,
                    mtime_ns: 0,
                    inode: 1,
                },
            )
            .unwrap(),
    );
    let queued = build(2, "mac", BuildState::Queued);
    observer.state_changed(&uploading);
    observer.upload_progress(BuildId(1), 50, 100, 50, Duration::from_secs(1), 50);
    observer.upload_progress(BuildId(1), 100, 100, 100, Duration::from_secs(2), 50);
    observer.retried("transient");
    observer.retried("transient");
    observer.retried("auth");
    observer.state_changed(&queued);
    observer.state_changed(&build(3, "win", published()));
    observer.state_changed(&build(4, "mac", failed()));

    let before = now_ms() / 1000;
    let text = scrape(addr).await;
    let lines = samples(&text);
    let last_success = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("patchkit_autopublish_last_success_timestamp_seconds{rule=\"win\"} ")
        })
        .unwrap_or_else(|| panic!("{text}"));
    let last_success: u64 = last_success.parse().unwrap();
    assert!(last_success.abs_diff(before) <= 2, "{last_success}");
    let last_success_line = format!(
        "patchkit_autopublish_last_success_timestamp_seconds{{rule=\"win\"}} {last_success}"
    );
    assert_eq!(
        lines,
        [
            "patchkit_autopublish_up 1",
            "patchkit_autopublish_builds{state=\"queued\"} 1",
            "patchkit_autopublish_builds{state=\"uploading\"} 1",
            "patchkit_autopublish_bytes_uploaded_total 100",
            "patchkit_autopublish_retries_total{class=\"auth\"} 1",
            "patchkit_autopublish_retries_total{class=\"transient\"} 2",
            "patchkit_autopublish_failures_total{rule=\"mac\"} 1",
            "patchkit_autopublish_published_total{rule=\"win\"} 1",
            last_success_line.as_str(),
        ]
    );

    // Counters only go up; the gauge follows the builds' states.
    observer.state_changed(&build(5, "win", published()));
    observer.state_changed(&build(1, "win", published()));
    let text = scrape(addr).await;
    assert!(text.contains("\npatchkit_autopublish_published_total{rule=\"win\"} 3\n"));
    assert!(!text.contains("state=\"uploading\""), "{text}");
}

#[tokio::test]
async fn label_values_are_escaped() {
    let observer = Observer::new();
    let (addr, _cancel) = start(&observer).await;
    observer.state_changed(&build(1, "say \"hi\"\\now\nplease", failed()));
    let text = scrape(addr).await;
    assert!(
        text.contains(
            "\npatchkit_autopublish_failures_total{rule=\"say \\\"hi\\\"\\\\now\\nplease\"} 1\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let observer = Observer::new();
    let (addr, _cancel) = start(&observer).await;
    for path in ["/", "/metric", "/metrics/x"] {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn a_busy_address_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = metrics::serve(addr, Observer::new(), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn cancel_stops_the_server() {
    let observer = Observer::new();
    let cancel = CancellationToken::new();
    let (addr, task) = metrics::serve("127.0.0.1:0".parse().unwrap(), observer, cancel.clone())
        .await
        .unwrap();
    scrape(addr).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stops")
        .unwrap();
    assert!(
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .is_err()
    );
}
