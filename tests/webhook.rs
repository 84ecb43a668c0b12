//! Webhook notifications against a local receiver: each format's body, rule
//! and event filtering, retries, and isolation from a dead webhook.

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use harness::ClosedPort;
use patchkit_autopublish::clock::now_ms;
use patchkit_autopublish::config::{Notify, NotifyFormat};
use patchkit_autopublish::observe::{EventKind, Observer};
use patchkit_autopublish::patchkit::RetryPolicy;
use patchkit_autopublish::state::{BuildState, FileIdentity, Stage};
use patchkit_autopublish::store::{Build, BuildId};
use patchkit_autopublish::webhook::{self, AppInfo, AppLookup, Delivery, Notifier};
use reqwest::Url;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;

/// What the receiver answers on a path.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 at once.
    Ok,
    /// 500 to the first request, 200 after.
    FailOnce,
    /// 404 always.
    NotFound,
    /// Holds the request 30 s.
    Hang,
}

/// A local webhook receiver: records `(path, body)` of each request it
/// answers 2xx, and counts every request.
struct Receiver {
    base: String,
    bodies: mpsc::UnboundedReceiver<(String, Value)>,
    requests: Arc<AtomicU32>,
}

#[derive(Clone)]
struct Shared {
    tx: mpsc::UnboundedSender<(String, Value)>,
    requests: Arc<AtomicU32>,
}

async fn hook(
    State(s): State<Shared>,
    Path(path): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    let answer = match path.as_str() {
        p if p.starts_with("fail-once") => Answer::FailOnce,
        p if p.starts_with("not-found") => Answer::NotFound,
        p if p.starts_with("hang") => Answer::Hang,
        _ => Answer::Ok,
    };
    match answer {
        Answer::FailOnce if n == 0 => return StatusCode::INTERNAL_SERVER_ERROR,
        Answer::NotFound => return StatusCode::NOT_FOUND,
        Answer::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
        _ => {}
    }
    let _ = s.tx.send((path, body));
    StatusCode::OK
}

async fn receiver() -> Receiver {
    let (tx, bodies) = mpsc::unbounded_channel();
    let requests = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/{path}", post(hook))
        .with_state(Shared {
            tx,
            requests: requests.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        base: format!("http://{addr}"),
        bodies,
        requests,
    }
}

impl Receiver {
    fn hook(&self, path: &str, format: NotifyFormat, events: &[EventKind]) -> Notify {
        Notify {
            url: Url::parse(&format!("{}/{path}", self.base)).unwrap(),
            format,
            events: events.to_vec(),
            rules: Vec::new(),
            panel_url: Url::parse("https://panel.example.test/").unwrap(),
        }
    }

    /// The next body, within `within`.
    async fn next_within(&mut self, within: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(within, self.bodies.recv())
            .await
            .ok()
            .flatten()
    }

    async fn next(&mut self) -> (String, Value) {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("a notification within 5 s")
    }

    /// Nothing more arrives for a moment (deliveries of a local receiver
    /// take milliseconds).
    async fn assert_quiet(&mut self) {
        if let Some(extra) = self.next_within(Duration::from_millis(300)).await {
            panic!("unexpected notification {extra:?}");
        }
    }
}

fn build(id: u64, rule: &str, state: BuildState) -> Build {
    let file = std::path::PathBuf::from("/builds/mygame/Game.zip");
    Build {
        id: BuildId(id),
        rule: rule.into(),
        app_secret: "a1b2c3".into(),
        identity: FileIdentity {
            path: file.clone(),
            size: 512 * MIB,
            mtime_ns: 1_700_000_000_000_000_000,
            inode: 7,
        },
        file,
        label: "1.4.2".into(),
        changelog: None,
        publish: true,
        // Taken 6m 12s ago.
        enqueued_at: now_ms() - 372_000,
        updated_at: now_ms(),
        state,
        attempts: 0,
        next_attempt_at: None,
        last_error: None,
    }
}

fn published(warnings: &[&str]) -> BuildState {
    BuildState::Published {
        version_id: 12,
        published_at: 1_772_366_400,
        warnings: warnings.iter().map(|w| w.to_string()).collect(),
    }
}

fn failed() -> BuildState {
    BuildState::Failed {
        stage: Stage::Upload,
        reason: "PatchKit answered 403: the API key cannot write this app".into(),
        attempts: 3,
        version_id: Some(12),
    }
}

fn processed() -> BuildState {
    BuildState::Processed {
        version_id: 12,
        warnings: vec!["Missing icon".into(), "Large file <data.pak>".into()],
    }
}

/// Retries within milliseconds, so a retry test takes no time.
fn quick() -> Delivery {
    Delivery {
        backoff: RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            give_up: None,
        },
        ..Delivery::default()
    }
}

/// PatchKit has told the daemon about app `a1b2c3` (every test build's),
/// and about no other.
fn apps() -> AppLookup {
    Arc::new(|secret| {
        (secret == "a1b2c3").then(|| AppInfo {
            name: "My Game".into(),
            id: 7,
        })
    })
}

fn start(hooks: Vec<Notify>, observer: &Observer) -> (Notifier, CancellationToken) {
    start_with(hooks, observer, apps())
}

fn start_with(
    hooks: Vec<Notify>,
    observer: &Observer,
    apps: AppLookup,
) -> (Notifier, CancellationToken) {
    let cancel = CancellationToken::new();
    let notifier =
        webhook::spawn_with(hooks, observer, apps, cancel.clone(), quick()).expect("hooks");
    (notifier, cancel)
}

/// This machine's name, as the notifier reads it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn no_hooks_no_notifier() {
    let observer = Observer::new();
    assert!(webhook::spawn(Vec::new(), &observer, apps(), CancellationToken::new()).is_none());
}

#[tokio::test]
async fn json_carries_every_field() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let hook = rx.hook("json", NotifyFormat::Json, &[EventKind::Published]);
    let (_n, _cancel) = start(vec![hook], &observer);

    observer.state_changed(&build(42, "mygame-windows", published(&["Missing icon"])));
    let (path, body) = rx.next().await;
    assert_eq!(path, "json");
    let duration = body["duration_seconds"].as_f64().unwrap();
    assert!((372.0..380.0).contains(&duration), "{duration}");
    let time = body["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == 20, "{time}");
    let mut expected = serde_json::json!({
        "event": "published",
        "build": "42",
        "rule": "mygame-windows",
        "app": "a1b2c3",
        "label": "1.4.2",
        "state": "published",
        "stage": "publish",
        "version_id": 12,
        "file": "Game.zip",
        "size_bytes": 536870912,
        "size": "512 MiB",
        "duration": "6m 12s",
        "attempts": 0,
        "messages": ["Missing icon"],
        "reason": null,
        "host": host(),
        "app_name": "My Game",
        "app_url": "https://panel.example.test/apps/7",
    });
    expected["duration_seconds"] = body["duration_seconds"].clone();
    expected["time"] = body["time"].clone();
    assert_eq!(body, expected);
    // The state change itself was not asked for.
    rx.assert_quiet().await;
}

#[tokio::test]
async fn json_failed_has_the_reason_and_attempts() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let hook = rx.hook("json", NotifyFormat::Json, &[EventKind::Failed]);
    let (_n, _cancel) = start(vec![hook], &observer);

    observer.state_changed(&build(43, "mygame-windows", failed()));
    let (_, body) = rx.next().await;
    let reason = "PatchKit answered 403: the API key cannot write this app";
    assert_eq!(body["event"], "failed");
    assert_eq!(body["stage"], "upload");
    assert_eq!(body["attempts"], 3);
    assert_eq!(body["version_id"], 12);
    assert_eq!(body["reason"], reason);
    assert_eq!(body["messages"], serde_json::json!([reason]));
}

/// The Slack and Discord bodies of the next event, whichever came first.
async fn next_pair(rx: &mut Receiver) -> (Value, Value) {
    let mut pair = [rx.next().await, rx.next().await];
    pair.sort_by(|a, b| a.0.cmp(&b.0));
    let [(discord_path, discord), (slack_path, slack)] = pair;
    assert_eq!(
        (discord_path.as_str(), slack_path.as_str()),
        ("discord", "slack")
    );
    (slack, discord)
}

/// Every chat format, every event kind.
fn chat_hooks(rx: &Receiver) -> Vec<Notify> {
    let all = [
        EventKind::Published,
        EventKind::Failed,
        EventKind::Warning,
        EventKind::Stuck,
    ];
    vec![
        rx.hook("slack", NotifyFormat::Slack, &all),
        rx.hook("discord", NotifyFormat::Discord, &all),
    ]
}

#[tokio::test]
async fn slack_gets_blocks_in_an_attachment_coloured_by_outcome() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let (_n, _cancel) = start(chat_hooks(&rx), &observer);
    let host = host();

    observer.state_changed(&build(42, "mygame-windows", published(&["Missing icon"])));
    let (slack, _) = next_pair(&mut rx).await;
    let expected = serde_json::json!({
        "text": ":white_check_mark: *My Game* 1.4.2 published as version 12",
        "attachments": [{
            "color": "#2eb67d",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": ":white_check_mark: *My Game* 1.4.2 published as version 12"}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": "*Rule*\nmygame-windows"},
                    {"type": "mrkdwn", "text": "*Version*\n12"},
                    {"type": "mrkdwn", "text": "*File*\nGame.zip (512 MiB)"},
                    {"type": "mrkdwn", "text": "*Took*\n6m 12s"},
                ]},
                {"type": "section", "text": {"type": "mrkdwn", "text": "*Warnings*\n• Missing icon"}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                    "build 42 · app `a1b2c3` · on {host} · \
                     <https://panel.example.test/apps/7|open in PatchKit>"
                )}]},
            ],
        }],
    });
    assert_eq!(slack, expected, "{slack:#}");

    observer.state_changed(&build(43, "mygame-windows", failed()));
    let (slack, _) = next_pair(&mut rx).await;
    assert_eq!(
        slack["text"],
        ":x: *My Game* 1.4.2 failed in upload after 3 attempt(s)"
    );
    let attachment = &slack["attachments"][0];
    assert_eq!(attachment["color"], "#e01e5a");
    assert_eq!(
        attachment["blocks"][1]["fields"][4]["text"], "*Stage*\nupload",
        "{slack:#}"
    );
    assert_eq!(
        attachment["blocks"][2]["text"]["text"],
        "*Error*\n• PatchKit answered 403: the API key cannot write this app"
    );

    // Processed with warnings: a Warning event (the state change is not
    // asked for), amber; `<` and `>` escaped.
    observer.state_changed(&build(44, "mygame-windows", processed()));
    let (slack, _) = next_pair(&mut rx).await;
    assert_eq!(
        slack["text"],
        ":warning: *My Game* 1.4.2 processed as version 12 with 2 warning(s)"
    );
    assert_eq!(slack["attachments"][0]["color"], "#ecb22e");
    assert_eq!(
        slack["attachments"][0]["blocks"][2]["text"]["text"],
        "*Warnings*\n• Missing icon\n• Large file &lt;data.pak&gt;"
    );

    observer.stuck(
        &build(
            45,
            "mygame_windows",
            BuildState::VersionReady { version_id: 12 },
        ),
        Duration::from_secs(1800),
    );
    let (slack, _) = next_pair(&mut rx).await;
    assert_eq!(
        slack["text"],
        ":hourglass: *My Game* 1.4.2 is stuck: no progress for 30m while version_ready"
    );
    assert_eq!(slack["attachments"][0]["color"], "#ecb22e");
    rx.assert_quiet().await;
}

#[tokio::test]
async fn discord_gets_an_embed_coloured_by_outcome_with_fields() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let (_n, _cancel) = start(chat_hooks(&rx), &observer);
    let host = host();

    observer.state_changed(&build(42, "mygame_windows", published(&["Missing *icon*"])));
    let (_, discord) = next_pair(&mut rx).await;
    let embed = &discord["embeds"][0];
    let time = embed["timestamp"].as_str().unwrap().to_owned();
    let expected = serde_json::json!({
        "embeds": [{
            "title": "✅ My Game 1.4.2 published as version 12",
            "url": "https://panel.example.test/apps/7",
            "color": 0x2eb67d,
            "description": "**Warnings**\n• Missing \\*icon\\*",
            "fields": [
                {"name": "Rule", "value": "mygame\\_windows", "inline": true},
                {"name": "Version", "value": "12", "inline": true},
                {"name": "File", "value": "Game.zip (512 MiB)", "inline": true},
                {"name": "Took", "value": "6m 12s", "inline": true},
                {"name": "Build", "value": "42", "inline": true},
            ],
            "footer": {"text": format!("patchkit-autopublish on {host} · app a1b2c3")},
            "timestamp": time,
        }],
        // Nobody can be pinged.
        "allowed_mentions": {"parse": []},
    });
    assert_eq!(discord, expected, "{discord:#}");
    assert!(time.ends_with('Z') && time.len() == 20, "{time}");

    observer.state_changed(&build(43, "mygame-windows", failed()));
    let (_, discord) = next_pair(&mut rx).await;
    let embed = &discord["embeds"][0];
    assert_eq!(
        embed["title"],
        "❌ My Game 1.4.2 failed in upload after 3 attempt(s)"
    );
    assert_eq!(embed["color"], 0xe01e5a);
    assert_eq!(
        embed["description"],
        "**Error**\n• PatchKit answered 403: the API key cannot write this app"
    );

    observer.state_changed(&build(44, "mygame-windows", processed()));
    let (_, discord) = next_pair(&mut rx).await;
    assert_eq!(discord["embeds"][0]["color"], 0xecb22e);
    // A `>` could start a quote; it is escaped.
    assert_eq!(
        discord["embeds"][0]["description"],
        "**Warnings**\n• Missing icon\n• Large file <data.pak\\>"
    );
    rx.assert_quiet().await;
}

#[tokio::test]
async fn an_app_patchkit_has_not_named_yet_is_called_by_its_rule_without_a_link() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let json = rx.hook("json", NotifyFormat::Json, &[EventKind::Published]);
    let mut hooks = chat_hooks(&rx);
    hooks.push(json);
    let (_n, _cancel) = start_with(hooks, &observer, webhook::no_apps());

    observer.state_changed(&build(42, "mygame-windows", published(&[])));
    let mut got = [rx.next().await, rx.next().await, rx.next().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let [(_, discord), (_, json), (_, slack)] = got;
    assert_eq!(
        slack["text"],
        ":white_check_mark: *mygame-windows* 1.4.2 published as version 12"
    );
    let context = slack["attachments"][0]["blocks"][2]["elements"][0]["text"]
        .as_str()
        .unwrap();
    assert!(!context.contains("open in PatchKit"), "{context}");
    let embed = &discord["embeds"][0];
    assert_eq!(
        embed["title"],
        "✅ mygame-windows 1.4.2 published as version 12"
    );
    assert!(embed.get("url").is_none(), "{embed:#}");
    assert_eq!(json["app_name"], Value::Null);
    assert_eq!(json["app_url"], Value::Null);
}

#[tokio::test]
async fn control_characters_reach_no_payload_raw() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let json = rx.hook("json", NotifyFormat::Json, &[EventKind::Failed]);
    let mut hooks: Vec<Notify> = chat_hooks(&rx);
    hooks.push(json);
    let (_n, _cancel) = start(hooks, &observer);

    let mut b = build(
        42,
        "mygame-windows",
        BuildState::Failed {
            stage: Stage::Validate,
            reason: "Game\nForged.zip is not a ZIP".into(),
            attempts: 1,
            version_id: None,
        },
    );
    b.file = std::path::PathBuf::from("/builds/Game\nForged\u{1b}[31m.zip");
    b.label = "1.4\r\u{202e}2".into();
    observer.state_changed(&b);
    let mut got = [rx.next().await, rx.next().await, rx.next().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let [(_, discord), (_, json), (_, slack)] = got;
    assert_eq!(json["file"], "Game\\nForged\\u{1b}[31m.zip");
    assert_eq!(json["label"], "1.4\\r\\u{202e}2");
    assert_eq!(json["reason"], "Game\\nForged.zip is not a ZIP");
    assert_eq!(json["messages"][0], "Game\\nForged.zip is not a ZIP");
    for body in [&slack, &discord, &json] {
        let mut texts = Vec::new();
        collect_strings(body, &mut texts);
        for text in texts {
            // Our own line breaks separate a title from its lines; none
            // comes from the file name, the label or the reason.
            assert!(
                !text.contains("Forged\u{1b}")
                    && !text.contains('\r')
                    && !text.contains('\u{202e}'),
                "{text:?}"
            );
            assert!(!text.contains("Game\nForged"), "{text:?}");
        }
    }
}

/// Every string in a JSON value.
fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn discord_description_is_cut_to_its_limit() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let hook = rx.hook("discord", NotifyFormat::Discord, &[EventKind::Published]);
    let (_n, _cancel) = start(vec![hook], &observer);

    let long = "é".repeat(5000);
    observer.state_changed(&build(42, "r", published(&[&long])));
    let (_, body) = rx.next().await;
    let description = body["embeds"][0]["description"].as_str().unwrap();
    assert_eq!(description.chars().count(), 4096);
    assert!(description.ends_with('…'));
}

#[tokio::test]
async fn hooks_get_only_their_rules_and_events() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let mut windows_failures = rx.hook("windows", NotifyFormat::Json, &[EventKind::Failed]);
    windows_failures.rules = vec!["mygame-windows".into()];
    let every_change = rx.hook("changes", NotifyFormat::Json, &[EventKind::StateChanged]);
    let (_n, _cancel) = start(vec![windows_failures, every_change], &observer);

    observer.state_changed(&build(1, "mygame-mac", failed()));
    observer.state_changed(&build(2, "mygame-windows", published(&[])));
    observer.state_changed(&build(3, "mygame-windows", failed()));

    let mut got = Vec::new();
    for _ in 0..4 {
        let (path, body) = rx.next().await;
        got.push((
            path,
            body["event"].as_str().unwrap().to_owned(),
            body["build"].as_str().unwrap().to_owned(),
        ));
    }
    got.sort();
    let want = [
        ("changes", "state_changed", "1"),
        ("changes", "state_changed", "2"),
        ("changes", "state_changed", "3"),
        ("windows", "failed", "3"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
    rx.assert_quiet().await;
}

#[tokio::test]
async fn a_500_is_retried_and_delivered_once() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let hook = rx.hook("fail-once", NotifyFormat::Json, &[EventKind::Published]);
    let (_n, _cancel) = start(vec![hook], &observer);

    observer.state_changed(&build(42, "r", published(&[])));
    let (_, body) = rx.next().await;
    assert_eq!(body["build"], "42");
    rx.assert_quiet().await;
    assert_eq!(rx.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_404_is_not_retried() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let rx = receiver().await;
    let observer = Observer::new();
    let hook = rx.hook("not-found", NotifyFormat::Json, &[EventKind::Published]);
    let (notifier, cancel) = start(vec![hook], &observer);

    observer.state_changed(&build(42, "r", published(&[])));
    // The delivery says it is done with the event; a retry would have come
    // before that.
    logs.until("refused, not retried").await;
    cancel.cancel();
    notifier.join().await;
    assert_eq!(rx.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn dead_webhooks_do_not_delay_a_healthy_one() {
    let mut rx = receiver().await;
    // A port nothing listens on, held so nothing can start listening there.
    let closed = ClosedPort::new();
    let closed_addr = closed.addr();
    let observer = Observer::new();
    let events = [EventKind::Published];
    let mut refused = rx.hook("x", NotifyFormat::Json, &events);
    refused.url = Url::parse(&format!("http://{closed_addr}/hook")).unwrap();
    let hanging = rx.hook("hang", NotifyFormat::Slack, &events);
    let healthy = rx.hook("healthy", NotifyFormat::Json, &events);
    // The default delivery: ten-second timeouts, waits of seconds.
    let cancel = CancellationToken::new();
    let _n = webhook::spawn(
        vec![refused, hanging, healthy],
        &observer,
        apps(),
        cancel.clone(),
    )
    .unwrap();

    for id in 1..=3 {
        let emitted = Instant::now();
        observer.state_changed(&build(id, "r", published(&[])));
        let (path, body) = rx
            .next_within(Duration::from_secs(1))
            .await
            .expect("the healthy hook within a second");
        assert_eq!(
            (path.as_str(), body["build"].as_str()),
            ("healthy", Some(id.to_string().as_str()))
        );
        assert!(emitted.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn reload_swaps_the_hooks() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let old = rx.hook("old", NotifyFormat::Json, &[EventKind::Published]);
    let cancel = CancellationToken::new();
    let mut notifier = None;
    webhook::update(&mut notifier, vec![old], &observer, apps(), &cancel);
    assert!(notifier.is_some());

    observer.state_changed(&build(1, "r", published(&[])));
    assert_eq!(rx.next().await.0, "old");

    let new = rx.hook("new", NotifyFormat::Json, &[EventKind::Published]);
    webhook::update(&mut notifier, vec![new], &observer, apps(), &cancel);
    observer.state_changed(&build(2, "r", published(&[])));
    let (path, body) = rx.next().await;
    assert_eq!((path.as_str(), &body["build"]), ("new", &Value::from("2")));
    rx.assert_quiet().await;
}

#[tokio::test]
async fn shutdown_sends_what_was_emitted_then_stops() {
    let mut rx = receiver().await;
    let observer = Observer::new();
    let hook = rx.hook("json", NotifyFormat::Json, &[EventKind::Failed]);
    let (notifier, cancel) = start(vec![hook], &observer);

    observer.state_changed(&build(7, "r", failed()));
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), notifier.join())
        .await
        .expect("the notifier stops promptly");
    assert_eq!(rx.next().await.1["build"], "7");
}

/// Log lines written while a test runs.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Sends this thread's log lines here until the guard drops. Tests on a
    /// current-thread runtime (the default) have every task log on it.
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Waits until a log line holds `needle`, failing the test after 5 s.
    async fn until(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line said {needle:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn warnings_name_the_hook_without_its_token() {
    let logs = Logs::default();
    let _guard = logs.capture();

    let rx = receiver().await;
    let closed = ClosedPort::new();
    let closed_addr = closed.addr();
    let observer = Observer::new();
    let events = [EventKind::Failed];
    let refused = rx.hook("not-found-T0KEN1", NotifyFormat::Slack, &events);
    let mut dead = rx.hook("x", NotifyFormat::Discord, &events);
    dead.url = Url::parse(&format!("http://{closed_addr}/api/webhooks/1/T0KEN2")).unwrap();
    let (notifier, cancel) = start(vec![refused, dead], &observer);

    observer.state_changed(&build(9, "r", failed()));
    // One refusal; five tries with waits of at most 50 ms, then the warning.
    logs.until("refused, not retried").await;
    logs.until("given up").await;
    cancel.cancel();
    notifier.join().await;

    let text = logs.text();
    assert!(!text.contains("T0KEN"), "{text}");
    let refused_line = text
        .lines()
        .find(|l| l.contains("refused"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(refused_line.contains(&rx.base), "{refused_line}");
    assert!(refused_line.contains("404"), "{refused_line}");
    let dead_line = text
        .lines()
        .find(|l| l.contains("given up after 5 tries"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        dead_line.contains(&format!("http://{closed_addr}")),
        "{dead_line}"
    );
    assert!(dead_line.contains("failed of build 9"), "{dead_line}");
}
