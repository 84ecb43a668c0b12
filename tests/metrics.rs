//! The Prometheus endpoint over a real socket: every series at 0 from the
//! start, counters that count what their names say (one request retry per
//! retry, checked against what the sandbox answered), histograms, the last
//! publish time restored from the store, escaping.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{Setup, chunks};
use patchkit_autopublish::clock::now_ms;
use patchkit_autopublish::daemon::{self, RunOptions};
use patchkit_autopublish::metrics;
use patchkit_autopublish::observe::Observer;
use patchkit_autopublish::patchkit::{Endpoint, RequestRetry, RetryClass};
use patchkit_autopublish::sandbox::FaultConfig;
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

/// The value of the sample `series` (name and labels exactly as written),
/// or a panic showing the page.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series}\n{text}"))
        .parse()
        .unwrap()
}

/// The sum of every sample of the family `name` (counters and gauges).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Every family the daemon exports, with its type.
const FAMILIES: [(&str, &str); 14] = [
    ("patchkit_autopublish_up", "gauge"),
    ("patchkit_autopublish_build_info", "gauge"),
    ("patchkit_autopublish_builds", "gauge"),
    ("patchkit_autopublish_bytes_uploaded_total", "counter"),
    ("patchkit_autopublish_upload_bytes_per_second", "gauge"),
    ("patchkit_autopublish_retries_total", "counter"),
    ("patchkit_autopublish_request_retry_attempt", "gauge"),
    ("patchkit_autopublish_stuck_builds", "gauge"),
    ("patchkit_autopublish_build_retries_total", "counter"),
    ("patchkit_autopublish_failures_total", "counter"),
    ("patchkit_autopublish_published_total", "counter"),
    (
        "patchkit_autopublish_last_success_timestamp_seconds",
        "gauge",
    ),
    ("patchkit_autopublish_drop_to_live_seconds", "histogram"),
    ("patchkit_autopublish_stage_duration_seconds", "histogram"),
];

#[tokio::test]
async fn every_series_is_described_and_starts_at_zero() {
    let observer = Observer::new();
    observer.add_rules(["win", "mac"]);
    let (addr, _cancel) = start(&observer).await;
    let text = scrape(addr).await;
    for (name, kind) in FAMILIES {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} HELP\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} TYPE\n{text}"
        );
    }
    assert_eq!(value(&text, "patchkit_autopublish_up"), 1.0);
    assert_eq!(
        value(
            &text,
            &format!(
                "patchkit_autopublish_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    for rule in ["win", "mac"] {
        for state in metrics::UNFINISHED_STATES {
            let series =
                format!("patchkit_autopublish_builds{{rule=\"{rule}\",state=\"{state}\"}}");
            assert_eq!(value(&text, &series), 0.0);
        }
        for family in [
            "bytes_uploaded_total",
            "upload_bytes_per_second",
            "request_retry_attempt",
            "stuck_builds",
            "build_retries_total",
            "failures_total",
            "published_total",
            "last_success_timestamp_seconds",
            "drop_to_live_seconds_count",
        ] {
            let series = format!("patchkit_autopublish_{family}{{rule=\"{rule}\"}}");
            assert_eq!(value(&text, &series), 0.0);
        }
        for stage in ["validate", "create_version", "upload", "process", "publish"] {
            let series = format!(
                "patchkit_autopublish_stage_duration_seconds_count{{rule=\"{rule}\",stage=\"{stage}\"}}"
            );
            assert_eq!(value(&text, &series), 0.0);
        }
    }
    for (endpoint, class) in [
        ("chunk", "transient"),
        ("chunk", "rate_limited"),
        ("chunk", "chunk_mismatch"),
        ("job", "transient"),
        ("get_version", "transient"),
        ("create_upload", "transient"),
    ] {
        let series = format!(
            "patchkit_autopublish_retries_total{{endpoint=\"{endpoint}\",class=\"{class}\"}}"
        );
        assert_eq!(value(&text, &series), 0.0);
    }
    assert!(text.ends_with('\n'));
}

#[tokio::test]
async fn counters_gauges_and_histograms_move_with_the_observer() {
    let observer = Observer::new();
    observer.add_rules(["win", "mac"]);
    let (addr, _cancel) = start(&observer).await;

    let identity = FileIdentity {
        path: "/builds/Game.zip".into(),
        size: 100,
        mtime_ns: 0,
        inode: 1,
    };
    let ready = build(1, "win", BuildState::VersionReady { version_id: 3 });
    let uploading = build(
        1,
        "win",
        BuildState::VersionReady { version_id: 3 }
            .upload_started(9, 100, 50, identity)
            .unwrap(),
    );
    let queued = build(2, "mac", BuildState::Queued);
    observer.state_changed(&ready);
    observer.worker_started(&ready, patchkit_autopublish::scheduler::Lane::Turn);
    observer.state_changed(&uploading);
    observer.upload_progress(BuildId(1), 50, 100, 50, Duration::from_secs(1), 50);
    observer.state_changed(&queued);
    let text = scrape(addr).await;
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_builds{rule=\"win\",state=\"uploading\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_builds{rule=\"mac\",state=\"queued\"}"
        ),
        1.0
    );
    assert_eq!(sum(&text, "patchkit_autopublish_builds"), 2.0);
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_upload_bytes_per_second{rule=\"win\"}"
        ),
        50.0
    );
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_bytes_uploaded_total{rule=\"win\"}"
        ),
        50.0
    );

    // A request retried three times, then answered.
    let watch = observer.retry_watch(&uploading);
    for attempt in 1..=3 {
        watch.retrying(&RequestRetry {
            endpoint: Endpoint::UploadChunk,
            class: RetryClass::Transient,
            attempt,
            delay: Duration::from_secs(4),
            error: "POST /1/uploads/{id}/chunk: 503 Service Unavailable".into(),
        });
    }
    let live = observer.live(BuildId(1)).unwrap();
    // While the request fails, no speed is claimed.
    assert!(live.bytes_per_second.is_none() && live.eta_seconds.is_none());
    let retry = live.request_retry.expect("the retry is shown");
    assert_eq!(retry.attempt, 3);
    assert_eq!(retry.class, "transient");
    assert_eq!(retry.endpoint, "POST /1/uploads/{id}/chunk");
    assert!(retry.next_try_at >= now_ms() + 3000, "{retry:?}");
    assert!(
        observer
            .summary(std::slice::from_ref(&uploading), 0)
            .contains("attempt 3")
    );
    let text = scrape(addr).await;
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_retries_total{endpoint=\"chunk\",class=\"transient\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_request_retry_attempt{rule=\"win\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_upload_bytes_per_second{rule=\"win\"}"
        ),
        0.0
    );
    watch.answered();
    // Answered: the speed of the upload is shown again.
    assert_eq!(
        observer.live(BuildId(1)).unwrap().bytes_per_second,
        Some(50.0)
    );
    assert!(observer.live(BuildId(1)).unwrap().request_retry.is_none());
    let text = scrape(addr).await;
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_request_retry_attempt{rule=\"win\"}"
        ),
        0.0
    );
    observer.build_retried(&uploading);

    // Through processing to live: each completed stage is timed once.
    observer.upload_progress(BuildId(1), 100, 100, 100, Duration::from_secs(2), 50);
    let uploaded = BuildState::Uploaded {
        version_id: Some(3),
        upload_id: 9,
    };
    let steps = [
        uploaded,
        BuildState::Processed {
            version_id: 3,
            warnings: Vec::new(),
        },
        published(),
    ];
    for state in steps {
        observer.state_changed(&build(1, "win", state));
    }
    observer.state_changed(&build(4, "mac", failed()));

    let before = now_ms() / 1000;
    let text = scrape(addr).await;
    let series = |s: &str| value(&text, s);
    assert_eq!(sum(&text, "patchkit_autopublish_builds"), 1.0);
    assert_eq!(
        series("patchkit_autopublish_bytes_uploaded_total{rule=\"win\"}"),
        100.0
    );
    assert_eq!(
        series("patchkit_autopublish_upload_bytes_per_second{rule=\"win\"}"),
        0.0
    );
    assert_eq!(
        series("patchkit_autopublish_build_retries_total{rule=\"win\"}"),
        1.0
    );
    assert_eq!(
        series("patchkit_autopublish_published_total{rule=\"win\"}"),
        1.0
    );
    assert_eq!(
        series("patchkit_autopublish_published_total{rule=\"mac\"}"),
        0.0
    );
    assert_eq!(
        series("patchkit_autopublish_failures_total{rule=\"mac\"}"),
        1.0
    );
    let last = series("patchkit_autopublish_last_success_timestamp_seconds{rule=\"win\"}");
    assert!((last as u64).abs_diff(before) <= 2, "{last}");
    assert_eq!(
        series("patchkit_autopublish_drop_to_live_seconds_count{rule=\"win\"}"),
        1.0
    );
    for (stage, n) in [
        ("validate", 0.0),
        ("create_version", 0.0),
        ("upload", 1.0),
        ("process", 1.0),
        ("publish", 1.0),
    ] {
        assert_eq!(
            series(&format!(
                "patchkit_autopublish_stage_duration_seconds_count{{rule=\"win\",stage=\"{stage}\"}}"
            )),
            n,
            "{stage}\n{text}"
        );
    }
    // The failed build's stage was not completed: not timed.
    assert_eq!(
        sum(&text, "patchkit_autopublish_stage_duration_seconds_count"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_retry_counts_once_and_the_last_publish_survives_a_restart() {
    // Half the requests fail with 500 or 503 before PatchKit acts on them.
    let s = Setup::new(1)
        .sandbox(|c| {
            c.faults(FaultConfig {
                fail_5xx: 0.5,
                ..FaultConfig::seeded(11)
            })
        })
        .start()
        .await;
    s.drop_zip(0, "1.0", chunks(8));
    let observer = Observer::new();
    let opts = RunOptions {
        once: true,
        observer: observer.clone(),
        ..Default::default()
    };
    daemon::run(s.load_config(), opts, CancellationToken::new())
        .await
        .unwrap();
    let text = metrics::render(&observer);
    let snap = s.snapshot();
    assert!(snap.versions("app-0").iter().any(|v| v.published), "{text}");
    // Every failed answer to a request the client repeats by itself is one
    // retry, under its endpoint.
    let mut expected_total = 0;
    for (endpoint, label) in [
        (Endpoint::GetApp, "get_app"),
        (Endpoint::ListVersions, "list_versions"),
        (Endpoint::GetVersion, "get_version"),
        (Endpoint::CreateUpload, "create_upload"),
        (Endpoint::UploadChunk, "chunk"),
        (Endpoint::GetJob, "job"),
        (Endpoint::AcquireLock, "acquire_lock"),
    ] {
        let route = endpoint.to_string();
        let failed = snap.count(&route, "500") + snap.count(&route, "503");
        expected_total += failed;
        assert_eq!(
            value(
                &text,
                &format!(
                    "patchkit_autopublish_retries_total{{endpoint=\"{label}\",class=\"transient\"}}"
                )
            ),
            failed as f64,
            "{route}\n{text}"
        );
    }
    assert!(
        expected_total >= 3,
        "the faults fired only {expected_total} times"
    );
    assert_eq!(
        sum(&text, "patchkit_autopublish_retries_total"),
        expected_total as f64
    );
    // Create version, content_file and publish are not repeated blindly:
    // each failure is a build retry instead.
    let step_failures: u64 = [
        Endpoint::CreateVersion,
        Endpoint::StartProcessing,
        Endpoint::Publish,
    ]
    .iter()
    .map(|e| snap.count(&e.to_string(), "500") + snap.count(&e.to_string(), "503"))
    .sum();
    assert!(
        value(
            &text,
            "patchkit_autopublish_build_retries_total{rule=\"rule-0\"}"
        ) >= step_failures as f64,
        "{step_failures}\n{text}"
    );
    let published_at = value(
        &text,
        "patchkit_autopublish_last_success_timestamp_seconds{rule=\"rule-0\"}",
    );
    assert!(published_at > 0.0, "{text}");
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_drop_to_live_seconds_count{rule=\"rule-0\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_stage_duration_seconds_count{rule=\"rule-0\",stage=\"validate\"}"
        ),
        1.0
    );

    // A new daemon knows when the rule last published, from the store.
    let observer = Observer::new();
    let opts = RunOptions {
        once: true,
        observer: observer.clone(),
        ..Default::default()
    };
    daemon::run(s.load_config(), opts, CancellationToken::new())
        .await
        .unwrap();
    let text = metrics::render(&observer);
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_last_success_timestamp_seconds{rule=\"rule-0\"}"
        ),
        published_at
    );
    assert_eq!(
        value(
            &text,
            "patchkit_autopublish_published_total{rule=\"rule-0\"}"
        ),
        0.0
    );
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

/// The metric names a monitoring file uses: every `patchkit_autopublish_...`
/// token, a histogram's `_bucket`, `_sum` and `_count` read as its family.
fn names_used(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("patchkit_autopublish_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The alert rules parse as Prometheus rule groups, the dashboard as
/// Grafana JSON, and every series either uses is on the page of a running
/// daemon; the dashboard shows every family the daemon exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alert_rules_use_the_series_a_daemon_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/monitoring");
    let alerts = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap();

    let docs = yaml_rust2::YamlLoader::load_from_str(&alerts).expect("alerts.yml is YAML");
    let groups = docs[0]["groups"].as_vec().expect("a groups list");
    let mut alert_names = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "{group:?}");
        for rule in group["rules"].as_vec().expect("a rules list") {
            let name = rule["alert"].as_str().expect("an alert name");
            assert!(
                rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{name}"
            );
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
            alert_names.push(name.to_owned());
        }
    }
    for wanted in [
        "PatchkitNothingPublished24h",
        "PatchkitBuildFailed",
        "PatchkitBuildStuck",
    ] {
        assert!(alert_names.iter().any(|n| n == wanted), "{alert_names:?}");
    }

    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "{panel:#}"
        );
    }

    // The page of a running daemon with one rule.
    let s = Setup::new(1).start().await;
    s.daemon_line("metrics = \"127.0.0.1:0\"");
    let daemon = s.spawn_env(&[]);
    let url = daemon.metrics_url().await;
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    daemon.stop().await;
    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert!(exported.len() >= 14, "{text}");
    for (file, used) in [
        ("alerts.yml", names_used(&alerts)),
        ("grafana-dashboard.json", names_used(&dashboard)),
    ] {
        for name in &used {
            assert!(
                exported.contains(name),
                "{file} uses {name}, which the daemon does not export:\n{text}"
            );
        }
    }
    let shown = names_used(&dashboard);
    for name in &exported {
        assert!(shown.contains(name), "the dashboard does not show {name}");
    }
    // Every rule's series are there before anything happened.
    assert!(
        text.contains("patchkit_autopublish_last_success_timestamp_seconds{rule=\"rule-0\"} 0\n"),
        "{text}"
    );
}
