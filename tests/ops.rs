//! Operating the daemon, end to end with the real binary: `status` over the
//! control socket and from the store, `retry` and `cancel` both ways,
//! SIGHUP reloads, webhooks, Prometheus metrics and journald log lines.
//!
//! Each test starts a sandbox in this process and the daemon as a child
//! `run` (watching), drops small ZIPs and waits, with a deadline, for what
//! an operator would see. Every log and CLI output is checked for the API
//! key.

mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use harness::{ClosedPort, LIMIT, Setup, chunks};
use patchkit_autopublish::sandbox::{FaultConfig, OutcomeRule, ProcessingOutcome};
use serde_json::Value;
use tokio::sync::mpsc;

/// The processing error the sandbox gives builds labelled `bad-*`.
const PROCESSING_ERROR: &str = "Missing executable Game.exe";

/// A scenario whose `bad-*` builds fail processing with [`PROCESSING_ERROR`].
fn failing_bad(apps: usize) -> Setup {
    Setup::new(apps).sandbox(|c| {
        c.outcome(
            OutcomeRule::any()
                .label("bad-*")
                .processing(ProcessingOutcome::Error {
                    message: PROCESSING_ERROR.into(),
                }),
        )
    })
}

fn field<'a>(row: &'a Value, name: &str) -> &'a Value {
    row.get(name)
        .unwrap_or_else(|| panic!("no {name} in {row:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_builds_from_the_running_daemon_and_from_the_stopped_store() {
    let s = Setup::new(1).start().await;
    let daemon = s.spawn(false, None);
    let socket = s.until_socket().await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    s.drop_zip(0, "first", 1000);
    let first_version = s.until_published("app-0", "first").await;
    // 100 ms per request makes the next build's 20-chunk upload last two
    // seconds, so it is seen early in its upload; then 3 s per request holds
    // it there (a chunk at a time) while the table and the JSON are read.
    s.sb.set_faults(FaultConfig {
        latency: Duration::from_millis(100),
        ..FaultConfig::seeded(1)
    });
    s.drop_zip(0, "second", chunks(20));
    let uploading = s.until_state("second", "uploading").await;
    s.sb.set_faults(FaultConfig {
        latency: Duration::from_secs(3),
        ..FaultConfig::seeded(1)
    });

    let table = s.run_cli(&["status"]);
    assert_eq!(table.code, Some(0), "{table:?}");
    let mut lines = table.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "RULE", "LABEL", "STATE", "PROGRESS", "VERSION", "ATTEMPTS", "LAST", "ERROR"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert!(
        rows.iter()
            .any(|r| r[1..4] == ["rule-0", "first", "published"]),
        "{}",
        table.stdout
    );
    assert!(
        rows.iter()
            .any(|r| r[1..4] == ["rule-0", "second", "uploading"] && r[4].ends_with('%')),
        "{}",
        table.stdout
    );

    let json = s.run_cli(&["status", "--json"]);
    assert_eq!(json.code, Some(0), "{json:?}");
    let rows: Vec<Value> = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for row in &rows {
        for name in [
            "id",
            "rule",
            "label",
            "state",
            "version_id",
            "progress_percent",
            "attempts",
        ] {
            field(row, name);
        }
    }
    let first = rows.iter().find(|r| r["label"] == "first").unwrap();
    assert_eq!(first["state"], "published");
    assert_eq!(first["version_id"], first_version);
    assert_eq!(first["attempts"], 0);
    let progress = uploading["progress_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&progress), "{uploading:#}");
    // Uploads come before the draft, in the lane ahead of the build's turn.
    assert!(uploading["version_id"].is_null(), "{uploading:#}");
    assert_eq!(uploading["worker"], "ahead", "{uploading:#}");

    s.sb.set_faults(FaultConfig::default());
    let second_version = s.until_published("app-0", "second").await;
    let running = s.until_state("second", "published").await;
    daemon.stop().await;
    assert!(!socket.exists(), "the socket outlived the daemon");

    let stopped = s.status_rows();
    let stored = stopped.iter().find(|r| r["id"] == running["id"]).unwrap();
    for name in [
        "id",
        "rule",
        "label",
        "state",
        "version_id",
        "attempts",
        "file",
    ] {
        assert_eq!(
            stored[name], running[name],
            "{name}: {stored:#} vs {running:#}"
        );
    }
    assert_eq!(stored["version_id"], second_version);
    let table = s.run_cli(&["status"]);
    assert_eq!(table.code, Some(0), "{table:?}");
    assert!(table.stdout.starts_with("ID "), "{}", table.stdout);
    assert_eq!(
        table.stdout.matches(" published ").count(),
        2,
        "{}",
        table.stdout
    );
    s.logs_without_key();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_cancel_through_the_socket_and_on_the_stopped_store() {
    // app-0 and app-2: a build failed by processing, retried (through the
    // socket, then on the store). app-1: a slow build with two more queued
    // behind it (one app runs one build at a time), cancelled while queued.
    let s = failing_bad(3).start().await;
    let daemon = s.spawn(false, None);
    s.until_socket().await;
    s.drop_zip(0, "bad-0", 1000);
    s.drop_zip(2, "bad-2", 1000);
    let bad0 = s.until_state("bad-0", "failed").await;
    let bad2 = s.until_state("bad-2", "failed").await;
    for row in [&bad0, &bad2] {
        let reason = row["reason"].as_str().unwrap();
        assert!(reason.contains(PROCESSING_ERROR), "{row:#}");
    }
    let id = |row: &Value| row["id"].as_str().unwrap().to_owned();
    let version = |row: &Value| row["version_id"].as_u64().unwrap();
    s.sb.set_outcomes(Vec::new());

    // Through the running daemon's socket.
    let retried = s.run_cli(&["retry", &id(&bad0)]);
    assert_eq!(retried.code, Some(0), "{retried:?}");
    assert!(
        retried
            .stdout
            .starts_with(&format!("build {}: ", id(&bad0))),
        "{retried:?}"
    );
    assert_eq!(s.until_published("app-0", "bad-0").await, version(&bad0));

    // 150 ms per request keeps `slow` uploading for six seconds, and
    // the two builds after it queued. `later-too` is dropped once `later`
    // is queued, so their ids (and rows) are in that order.
    s.sb.set_faults(FaultConfig {
        latency: Duration::from_millis(150),
        ..FaultConfig::seeded(1)
    });
    s.drop_zip(1, "slow", chunks(40));
    s.until_state("slow", "uploading").await;
    s.drop_zip(1, "later", 1000);
    let later = s.until_state("later", "queued").await;
    s.drop_zip(1, "later-too", 1000);
    let later_too = s.until_state("later-too", "queued").await;
    let cancelled = s.run_cli(&["cancel", &id(&later)]);
    assert_eq!(cancelled.code, Some(0), "{cancelled:?}");
    assert!(cancelled.stdout.contains("cancelled"), "{cancelled:?}");
    s.until_state("later", "cancelled").await;
    // A failed build is finished: it can be retried, not cancelled.
    let refused = s.run_cli(&["cancel", &id(&bad2)]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("already failed"), "{refused:?}");
    for command in ["retry", "cancel"] {
        let unknown = s.run_cli(&[command, "999"]);
        assert_eq!(unknown.code, Some(1), "{unknown:?}");
        assert!(
            unknown.stderr.contains("there is no build 999"),
            "{unknown:?}"
        );
    }
    daemon.stop().await;
    s.sb.set_faults(FaultConfig::default());

    // On the store, with no daemon running.
    let retried = s.run_cli(&["retry", &id(&bad2)]);
    assert_eq!(retried.code, Some(0), "{retried:?}");
    assert!(
        retried
            .stdout
            .starts_with(&format!("build {}: ", id(&bad2))),
        "{retried:?}"
    );
    let cancelled = s.run_cli(&["cancel", &id(&later_too)]);
    assert_eq!(cancelled.code, Some(0), "{cancelled:?}");
    assert!(cancelled.stdout.contains("cancelled"), "{cancelled:?}");
    for command in ["retry", "cancel"] {
        let unknown = s.run_cli(&[command, "999"]);
        assert_eq!(unknown.code, Some(1), "{unknown:?}");
        assert!(
            unknown.stderr.contains("there is no build 999"),
            "{unknown:?}"
        );
    }
    let not_failed = s.run_cli(&["retry", &id(&later_too)]);
    assert_eq!(not_failed.code, Some(1), "{not_failed:?}");
    assert!(not_failed.stderr.contains("not failed"), "{not_failed:?}");
    let bad_id = s.run_cli(&["retry", "build-7"]);
    assert_eq!(bad_id.code, Some(2), "{bad_id:?}");

    // The next run publishes the retried build on its old version and the
    // interrupted one, and leaves the cancelled ones alone.
    s.run_child_ok().await;
    assert_eq!(s.until_published("app-2", "bad-2").await, version(&bad2));
    let labels: Vec<(String, bool)> = s
        .snapshot()
        .versions("app-1")
        .iter()
        .map(|v| (v.label.clone(), v.published))
        .collect();
    assert_eq!(labels, [("slow".to_owned(), true)]);
    let states: Vec<(String, String)> = s
        .status_rows()
        .iter()
        .map(|r| {
            (
                r["label"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    // Ids follow the moment each file settled, which need not be the order
    // two files dropped together arrived in: compare by label.
    let mut states = states;
    states.sort();
    let want = [
        ("bad-0", "published"),
        ("bad-2", "published"),
        ("later", "cancelled"),
        ("later-too", "cancelled"),
        ("slow", "published"),
    ]
    .map(|(l, st)| (l.to_owned(), st.to_owned()));
    assert_eq!(states, want);
    s.logs_without_key();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_rule_and_keeps_the_old_config_when_the_new_one_is_broken() {
    let s = Setup::new(1).start().await;
    let daemon = s.spawn(false, None);
    s.until_socket().await;
    s.drop_zip(0, "a", 1000);
    s.until_published("app-0", "a").await;

    s.edit_config(|t| t.replacen("label = \"{stem}\"", "label = \"nightly-{stem}\"", 1));
    daemon.signal("HUP");
    daemon.until_log("config reloaded", 1).await;
    s.drop_zip(0, "b", 1000);
    s.until_published("app-0", "nightly-b").await;

    s.edit_config(|t| t.replacen("[daemon]", "[daemon", 1));
    let broken_line = std::fs::read_to_string(&s.config)
        .unwrap()
        .lines()
        .position(|l| l == "[daemon")
        .unwrap()
        + 1;
    daemon.signal("HUP");
    daemon.until_log("the new config is refused", 1).await;
    let log = daemon.log_text();
    let place = format!("{}:{broken_line}:", s.config.display());
    assert!(log.contains(&place) && log.contains("TOML syntax"), "{log}");
    s.drop_zip(0, "c", 1000);
    s.until_published("app-0", "nightly-c").await;

    let labels: Vec<String> = s
        .snapshot()
        .versions("app-0")
        .iter()
        .map(|v| v.label.clone())
        .collect();
    assert_eq!(labels, ["a", "nightly-b", "nightly-c"]);
    daemon.stop().await;
    s.logs_without_key();
}

/// A local webhook receiver: every POST to `/{name}` is handed over as
/// `(name, body)`.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/{name}",
            post(
                |State(tx): State<mpsc::UnboundedSender<(String, Value)>>,
                 Path(name): Path<String>,
                 axum::Json(body): axum::Json<Value>| async move {
                    let _ = tx.send((name, body));
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, rx)
}

/// Receives `n` bodies, failing the test after [`LIMIT`].
async fn bodies(
    rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
    n: usize,
) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(LIMIT, rx.recv()).await {
            Ok(Some(body)) => got.push(body),
            _ => panic!("only {} of {n} webhook calls arrived: {got:#?}", got.len()),
        }
    }
    got
}

fn notify_section(url: &str, format: &str) -> String {
    format!("[[notify]]\nurl = \"{url}\"\nformat = \"{format}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_published_and_failed_in_each_format() {
    let s = failing_bad(1).start().await;
    let (base, mut rx) = receiver().await;
    for format in ["json", "slack", "discord"] {
        s.append_config(&notify_section(&format!("{base}/{format}"), format));
    }
    let daemon = s.spawn(false, None);
    s.until_socket().await;

    s.drop_zip(0, "good-1", 1000);
    let version = s.until_published("app-0", "good-1").await;
    let published = bodies(&mut rx, 3).await;
    let body = |got: &[(String, Value)], name: &str| {
        got.iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("nothing on /{name}: {got:#?}"))
    };
    let json = body(&published, "json");
    assert_eq!(json["event"], "published", "{json:#}");
    assert_eq!(json["rule"], "rule-0");
    assert_eq!(json["label"], "good-1");
    assert_eq!(json["version_id"], version);
    assert_eq!(json["app"], "app-0");
    // The sandbox names each app after its secret; the link goes to the
    // app's page by its id.
    assert_eq!(json["app_name"], "app-0", "{json:#}");
    let link = json["app_url"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with("https://panel.patchkit.net/apps/") && link.len() > 32,
        "{link}"
    );
    assert!(!json["host"].as_str().unwrap().is_empty(), "{json:#}");
    let slack = body(&published, "slack");
    let text = slack["text"].as_str().unwrap();
    for part in ["*app-0*", "good-1", &format!("version {version}")] {
        assert!(text.contains(part), "{part} not in {text}");
    }
    assert_eq!(slack["attachments"][0]["color"], "#2eb67d", "{slack:#}");
    let blocks = slack["attachments"][0]["blocks"].to_string();
    assert!(
        blocks.contains("rule-0") && blocks.contains(&link),
        "{blocks}"
    );
    let discord = body(&published, "discord");
    let embed = &discord["embeds"][0];
    let title = embed["title"].as_str().unwrap();
    for part in ["app-0", "good-1", &format!("version {version}")] {
        assert!(title.contains(part), "{part} not in {title}");
    }
    assert_eq!(embed["url"], link.as_str());
    assert_eq!(embed["color"], 0x2eb67d);
    assert_eq!(discord["allowed_mentions"]["parse"], serde_json::json!([]));

    // Last on this app: its failed draft stays, and nothing comes after it.
    s.drop_zip(0, "bad-1", 1000);
    let failed = bodies(&mut rx, 3).await;
    let json = body(&failed, "json");
    assert_eq!(json["event"], "failed", "{json:#}");
    assert_eq!(json["label"], "bad-1");
    assert!(
        json["reason"].as_str().unwrap().contains(PROCESSING_ERROR),
        "{json:#}"
    );
    for name in ["slack", "discord"] {
        let text = body(&failed, name).to_string();
        assert!(
            text.contains("bad-1") && text.contains(PROCESSING_ERROR),
            "{text}"
        );
    }
    assert_eq!(body(&failed, "slack")["attachments"][0]["color"], "#e01e5a");
    assert_eq!(body(&failed, "discord")["embeds"][0]["color"], 0xe01e5a);
    daemon.stop().await;
    s.logs_without_key();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_does_not_delay_publishing() {
    let s = Setup::new(1).start().await;
    let (base, mut rx) = receiver().await;
    // A hook that accepts connections and never answers: each delivery
    // holds its connection until the 10 s delivery timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    s.append_config(&notify_section(
        &format!("http://{silent_addr}/hook"),
        "json",
    ));
    // A hook on a port nobody listens on: refused, retried for a minute.
    // The port stays bound (never listening) until the test ends, so
    // nothing else can start listening there meanwhile.
    let closed = ClosedPort::new();
    s.append_config(&notify_section(
        &format!("http://{}/hook", closed.addr()),
        "slack",
    ));
    s.append_config(&notify_section(&format!("{base}/live"), "json"));
    let daemon = s.spawn(false, None);
    // Watching, so each drop is seen by its event rather than the startup
    // scan.
    daemon.until_log("daemon running", 1).await;

    let mut took = Vec::new();
    for label in ["one", "two", "three"] {
        let dropped = Instant::now();
        s.drop_zip(0, label, 1000);
        s.until_published("app-0", label).await;
        took.push(dropped.elapsed());
        let (_, body) = &bodies(&mut rx, 1).await[0];
        assert_eq!(body["label"], label, "{body:#}");
    }
    eprintln!("drop to published with dead hooks: {took:?}");
    // A build here takes a settle period (1 s) and well under a second
    // more; a publish held up by a dead hook would take the 10 s delivery
    // timeout.
    for t in &took {
        assert!(*t < Duration::from_secs(6), "{took:?}\n{}", s.logs());
    }
    // Deliveries to the silent hook are still waiting for an answer; a
    // graceful stop would wait up to their timeout, which is not what this
    // test is about.
    daemon.kill().await;
    s.logs_without_key();
}

/// The value of one sample in a Prometheus text page, if present.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn scrape(url: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        match reqwest::get(url).await {
            Ok(r) if r.status().is_success() => return r.text().await.unwrap(),
            other => {
                assert!(Instant::now() < deadline, "cannot scrape {url}: {other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_published_builds_and_uploaded_bytes() {
    let s = Setup::new(1).start().await;
    // Port 0: the daemon binds a free port itself and logs it, so no other
    // process can take the port between choosing and binding it.
    s.daemon_line("metrics = \"127.0.0.1:0\"");
    let daemon = s.spawn(false, None);
    let url = daemon.metrics_url().await;
    const PUBLISHED: &str = "patchkit_autopublish_published_total{rule=\"rule-0\"}";
    const BYTES: &str = "patchkit_autopublish_bytes_uploaded_total{rule=\"rule-0\"}";

    let before = scrape(&url).await;
    assert_eq!(
        sample(&before, "patchkit_autopublish_up"),
        Some(1.0),
        "{before}"
    );
    // Every rule's series exist from the start, at 0.
    assert_eq!(sample(&before, PUBLISHED), Some(0.0), "{before}");
    assert_eq!(sample(&before, BYTES), Some(0.0), "{before}");

    let file = s.drop_zip(0, "measured", chunks(2));
    let size = std::fs::metadata(&file.path).unwrap().len() as f64;
    s.until_published("app-0", "measured").await;
    // The daemon counts the publish once it has seen it, a poll after the
    // sandbox made it.
    let deadline = Instant::now() + LIMIT;
    let after = loop {
        let page = scrape(&url).await;
        if sample(&page, PUBLISHED) == Some(1.0) {
            break page;
        }
        assert!(Instant::now() < deadline, "{page}\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&after, BYTES), Some(size), "{after}");
    assert!(
        sample(
            &after,
            "patchkit_autopublish_last_success_timestamp_seconds{rule=\"rule-0\"}"
        )
        .is_some_and(|t| t > 0.0),
        "{after}"
    );
    daemon.stop().await;
    s.logs_without_key();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_lines_carry_their_priority_and_no_colours() {
    let s = Setup::new(1)
        .rule(0, r"filename_regex = '^Game-(?P<version>[0-9.]+)\.zip$'")
        .start()
        .await;
    let daemon = s.spawn_env(&[("JOURNAL_STREAM", "1:1")]);
    s.until_socket().await;
    s.drop_zip(0, "Game-1.0", 1000);
    s.until_published("app-0", "Game-1.0").await;
    // A file the rule's regex refuses: one warning.
    s.drop_zip(0, "Other", 1000);
    daemon.until_log("Other.zip", 1).await;
    // A broken config on SIGHUP: an error, several lines long.
    s.edit_config(|t| {
        t.replacen("workers = 1", "workers = 0", 1)
            .replacen("[daemon]", "[daemon", 1)
    });
    daemon.signal("HUP");
    daemon.until_log("the new config is refused", 1).await;
    let log = daemon.log.clone();
    daemon.stop().await;

    s.logs_without_key();
    let log = std::fs::read_to_string(log).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(!line.contains('\x1b'), "ANSI escape in {line:?}");
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(p, _)| p)
            .unwrap_or_else(|| panic!("no priority prefix: {line:?}\n{log}"));
        assert!(["3", "4", "6"].contains(&priority), "{line:?}");
        // journald adds its own timestamp.
        assert!(!line[3..].starts_with("20"), "timestamp in {line:?}");
        seen.insert(priority.to_owned());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["3", "4", "6"],
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_at_start_is_logged_as_errors_under_journald() {
    let s = Setup::new(1).start().await;
    s.edit_config(|t| {
        t.replacen("workers = 1", "workers = 0", 1).replacen(
            "settle = \"1s\"",
            "settle = \"soon\"",
            1,
        )
    });
    let status = s.spawn_env(&[("JOURNAL_STREAM", "1:1")]).wait(LIMIT).await;
    assert_eq!(status.code(), Some(2), "{}", s.logs());

    let log = s.logs_without_key();
    let lines: Vec<&str> = log.lines().skip(1).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        assert!(line.starts_with("<3>"), "{line:?} in\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retry_and_cancel_need_only_the_state_dir() {
    let s = Setup::new(1)
        .sandbox(|c| {
            c.outcome(OutcomeRule::any().processing(ProcessingOutcome::HasProcessingError))
        })
        .start()
        .await;
    s.drop_zip(0, "bad", 1000);
    s.run_once().await;
    // An edit in progress breaks the config; the daemon would run on the
    // one it loaded, and the operator still needs status.
    s.edit_config(|text| text.replacen("workers = 1", "workers = \"many\"", 1));

    let status = s.run_cli(&["status", "--json", "--all"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        status.stderr.contains("workers"),
        "the problem is named: {status:?}"
    );
    assert!(
        status.stderr.contains("using the state directory"),
        "{status:?}"
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{status:?}");
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(rows[0]["state"], "failed");

    s.sb.set_outcomes(Vec::new());
    let retried = s.run_cli(&["retry", &id]);
    assert_eq!(retried.code, Some(0), "{retried:?}");

    // With no config at all, --state-dir says where.
    let state_dir = s.state_dir();
    let dir = state_dir.to_str().unwrap();
    let cancelled = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
        .args([
            "cancel",
            &id,
            "--config",
            "/nonexistent/config.toml",
            "--state-dir",
            dir,
        ])
        .output()
        .unwrap();
    assert!(cancelled.status.success(), "{cancelled:?}");
    assert!(String::from_utf8_lossy(&cancelled.stdout).contains("cancelled"));
    let missing = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
        .args(["status", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--state-dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_does_not_roll_back_a_newer_live_build_without_force() {
    let s = failing_bad(1).start().await;
    // 1.5.0 arrives first and fails; 1.5.1 goes live after it.
    s.drop_zip(0, "bad-1.5.0", 1000);
    s.run_once().await;
    s.drop_zip(0, "good-1.5.1", 1000);
    s.run_once().await;
    let live = s.until_published("app-0", "good-1.5.1").await;
    let rows = s.status_rows();
    let old = rows.iter().find(|r| r["label"] == "bad-1.5.0").unwrap();
    let old_id = old["id"].as_str().unwrap().to_owned();
    s.sb.set_outcomes(Vec::new());

    let refused = s.run_cli(&["retry", &old_id]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains(&format!("live as version {live}"))
            && refused.stderr.contains("--force"),
        "{refused:?}"
    );
    let still: Vec<Value> = s.status_rows();
    let old = still.iter().find(|r| r["label"] == "bad-1.5.0").unwrap();
    assert_eq!(old["state"], "failed", "a refused retry changes nothing");

    let forced = s.run_cli(&["retry", "--force", &old_id]);
    assert_eq!(forced.code, Some(0), "{forced:?}");
    s.run_once().await;
    s.until_published("app-0", "bad-1.5.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_log_dir_is_created_without_a_spurious_error() {
    let s = Setup::new(1).start().await;
    let logs = s.dir.path().join("logs/daemon");
    s.daemon_line(&format!("log_dir = {:?}", logs.display().to_string()));
    s.drop_zip(0, "game", 1000);
    s.run_child_ok().await;
    let stderr = s.logs();
    assert!(
        !stderr.contains("Error reading the log directory"),
        "{stderr}"
    );
    let files: Vec<_> = std::fs::read_dir(&logs).unwrap().collect();
    assert_eq!(files.len(), 1, "one daily log file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_with_control_characters_forges_no_log_line_label_or_status_row() {
    let s = Setup::new(1).start().await;
    let daemon = s.spawn(false, None);
    s.until_socket().await;
    // A name that would start a fake log line and repaint a terminal.
    let forged = "2026-01-01T00:00:00.000000Z ERROR patchkit_autopublish: forged";
    let name = format!("Game\n{forged}\u{1b}[2J\r");
    s.drop_zip(0, &name, 1000);
    let label = format!("Game{forged}[2J");
    s.until_published("app-0", &label).await;
    daemon.stop().await;

    let logs = s.logs_without_key();
    assert!(logs.contains("Game\\n2026-01-01T00:00:00"), "{logs}");
    for line in logs.lines() {
        assert!(!line.starts_with("2026-01-01"), "forged line {line:?}");
        assert!(!line.contains('\u{1b}') && !line.contains('\r'), "{line:?}");
    }
    let status = s.run_cli(&["status", "--all"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    let rows: Vec<&str> = status.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "a header and one row: {rows:#?}");
    assert!(rows[1].contains(&label), "{rows:#?}");
    let json = s.status_rows();
    assert_eq!(json[0]["label"], label.as_str());
}

/// The lines of `check`'s report that mention `needle`.
fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_every_file_it_ignores_with_the_reason() {
    use std::os::unix::fs::symlink;
    let s = Setup::new(2)
        .rule(0, r"filename_regex = '^Game-[0-9.]+\.zip$'")
        .start()
        .await;
    let folder = s.folder(0);
    s.drop_zip(0, "Game-1.0", 1000);
    s.drop_zip(0, "Other", 1000);
    harness::write_zip(&folder.join("Game-1.1.ZIP"), "upper", 1000);
    harness::write_zip(&folder.join("Game-1.2.zip.part"), "part", 1000);
    harness::write_zip(&folder.join(".Game-1.3.zip"), "hidden", 1000);
    symlink("/nonexistent/Game-1.4.zip", folder.join("Game-1.4.zip")).unwrap();
    std::fs::create_dir(folder.join("Game-1.5.zip")).unwrap();
    let fifo = std::ffi::CString::new(folder.join("Game-1.6.zip").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::write(folder.join("notes.txt"), "x").unwrap();
    // A build of rule 1's folder that rule 0 also takes, through a symlink:
    // the daemon takes it for neither.
    let shared = s.drop_zip(1, "Game-2.0", 1000);
    symlink(&shared.path, folder.join("Game-2.0.zip")).unwrap();

    let out = s.run_cli(&["check"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let report = &out.stdout;
    let expect = [
        ("Game-1.0.zip", "would be taken now"),
        ("Other.zip", "not filename_regex"),
        (
            "Game-1.1.ZIP",
            "does not match \"*.zip\", which is case-sensitive",
        ),
        ("Game-1.2.zip.part", "not matching \"*.zip\""),
        (".Game-1.3.zip", "ignore list"),
        (
            "Game-1.4.zip",
            "a symlink to /nonexistent/Game-1.4.zip, which does not exist",
        ),
        ("Game-1.5.zip", "a folder, not a ZIP file"),
        ("Game-1.6.zip", "a FIFO (named pipe), not a ZIP file"),
        ("notes.txt", "not matching \"*.zip\""),
        ("Game-2.0.zip", "is also taken by rule(s) [\"rule-1\"]"),
    ];
    for (file, reason) in expect {
        let lines = lines_with(report, file);
        assert!(
            lines.iter().any(|l| l.contains(reason)),
            "{file}: no line says {reason:?}:\n{report}"
        );
    }
    // Likely mistakes are warnings; the two rules taking one file is a
    // problem, named from both sides.
    for file in [
        "Game-1.1.ZIP",
        "Game-1.4.zip",
        "Game-1.5.zip",
        "Game-1.6.zip",
    ] {
        assert!(
            lines_with(report, file)[0].starts_with("warning  rule \"rule-0\""),
            "{report}"
        );
    }
    assert_eq!(
        lines_with(report, "is also taken by rule(s)").len(),
        2,
        "{report}"
    );
    assert!(out.stderr.contains("2 problem(s) found"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_what_run_would_refuse_at_start() {
    let s = Setup::new(1).start().await;
    // An address in use, and folders that cannot be created.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    s.daemon_line(&format!("metrics = \"{addr}\""));
    s.daemon_line("log_dir = \"/proc/no-such/logs\"");
    let out = s.run_cli(&["check"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let problems: Vec<&str> = lines_with(&out.stdout, "problem ");
    assert_eq!(problems.len(), 2, "{out:?}");
    assert!(
        problems[0].contains("[daemon] log_dir: cannot write in /proc"),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains(&format!("[daemon] metrics: cannot listen on {addr}")),
        "{problems:#?}"
    );
    // `run` refuses the same config, and `check` said so first.
    let run = s.run_cli(&["run", "--once"]);
    assert_ne!(run.code, Some(0), "{run:?}");

    // A state directory whose control socket path is too long for a Unix
    // socket: `run` could not listen, so the config is refused for both.
    drop(taken);
    s.edit_config(|t| {
        t.lines()
            .filter(|l| !l.starts_with("metrics") && !l.starts_with("log_dir"))
            .map(|l| {
                if l.starts_with("state_dir") {
                    format!("state_dir = \"/tmp/{}\"", "s".repeat(100))
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    for command in ["check", "run"] {
        let out = s.run_cli(&[command]);
        assert_eq!(out.code, Some(2), "{command}: {out:?}");
        assert!(
            out.stderr
                .contains("[daemon] state_dir: the control socket"),
            "{command}: {out:?}"
        );
    }
}

/// A rule 0 that moves failed files to a `failed` folder and refuses a
/// draft in its way; the app has a draft made by hand. Returns the folder.
async fn failing_on_a_foreign_draft(s: &harness::Scenario) -> std::path::PathBuf {
    let failed = s.dir.path().join("failed");
    s.set_rule_key(0, "on_failure", r#""move""#);
    s.set_rule_key(
        0,
        "failed_folder",
        &format!("{:?}", failed.display().to_string()),
    );
    s.create_draft("app-0", "made-by-hand").await;
    failed
}

/// Waits until `path` exists (or, with `gone`, no longer exists).
async fn until_file(path: &std::path::Path, gone: bool) {
    harness::until(&format!("{} exists: {}", path.display(), !gone), || {
        path.exists() != gone
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_moves_a_moved_file_back_and_removes_its_note() {
    let s = Setup::new(1).start().await;
    let failed = failing_on_a_foreign_draft(&s).await;
    let daemon = s.spawn(false, None);
    s.until_socket().await;
    let file = s.drop_zip(0, "Game-1", 1000);
    let row = s.until_state("Game-1", "failed").await;
    let id = row["id"].as_str().unwrap().to_owned();
    let moved = failed.join("Game-1.zip");
    let note = failed.join("Game-1.zip.error.txt");
    until_file(&note, false).await;
    assert!(!file.path.exists());

    // The note's advice fits a moved file: retry brings it back itself.
    let text = std::fs::read_to_string(&note).unwrap();
    assert!(
        text.contains(&format!("patchkit-autopublish retry {id}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "The retry moves this file back to {}",
            file.path.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("Moved to: {}", moved.display())),
        "{text}"
    );

    // The operator fixes the cause (lets the build take the draft over),
    // then retries.
    s.set_rule_key(0, "existing_draft", r#""take_over""#);
    daemon.signal("HUP");
    daemon.until_log("config reloaded", 1).await;
    let out = s.run_cli(&["retry", &id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    s.until_published("app-0", "Game-1").await;
    daemon.stop().await;

    assert!(file.path.exists(), "the file is back where it was dropped");
    assert!(
        !moved.exists() && !note.exists(),
        "{:?}",
        std::fs::read_dir(&failed).unwrap().collect::<Vec<_>>()
    );
    let rows = s.status_rows();
    assert_eq!(
        rows.len(),
        1,
        "one build, not a second for the file moved back: {rows:#?}"
    );
    s.logs_without_key();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_goes_once_a_file_moved_back_by_hand_is_published() {
    let s = Setup::new(1).start().await;
    let failed = failing_on_a_foreign_draft(&s).await;
    let daemon = s.spawn(false, None);
    s.until_socket().await;
    let file = s.drop_zip(0, "Game-1", 1000);
    let row = s.until_state("Game-1", "failed").await;
    let id = row["id"].as_str().unwrap().to_owned();
    let note = failed.join("Game-1.zip.error.txt");
    until_file(&note, false).await;

    // Moved back with mv, as the note allows: the same file, not a new build.
    std::fs::rename(failed.join("Game-1.zip"), &file.path).unwrap();
    s.set_rule_key(0, "existing_draft", r#""take_over""#);
    daemon.signal("HUP");
    daemon.until_log("config reloaded", 1).await;
    let out = s.run_cli(&["retry", &id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    s.until_published("app-0", "Game-1").await;
    until_file(&note, true).await;
    daemon.stop().await;
    assert_eq!(s.status_rows().len(), 1);
}
