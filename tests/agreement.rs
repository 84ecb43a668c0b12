//! Every report agrees: while one build uploads, processes and publishes,
//! `status`, `status --json`, systemd's STATUS= line, the metrics page, the
//! webhook events and the log name the same stage, version and progress.
//!
//! The real binary runs against the sandbox with a datagram socket of the
//! test as its `NOTIFY_SOCKET`, a webhook receiver of the test and metrics on
//! a port of its choosing. Each phase is held still while the reports are
//! read: as soon as the sandbox has seen the phase begin (a chunk, the
//! `content_file` call, the publish call), every request starts failing
//! with 500 or 503, so the build stays where it is, retrying one request,
//! until the test lifts the fault. That also shows what an operator sees
//! during an outage shorter than `retry_give_up`: the request's attempt, its
//! last error and the next try, cleared once PatchKit answers again.

mod harness;

use std::future::Future;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{CHUNK_ROUTE, Daemon, LIMIT, PUBLISH, Scenario, Setup, chunks};
use patchkit_autopublish::sandbox::FaultConfig;
use serde_json::Value;

/// The label of the build the test follows.
const LABEL: &str = "agree-1";
/// Its rule.
const RULE: &str = "rule-0";
/// The route that starts processing.
const CONTENT_FILE: &str = "PUT /1/apps/{secret}/versions/{id}/content_file";

/// The systemd side of `NOTIFY_SOCKET`: a datagram socket the daemon sends
/// READY=1, STATUS=... to, read at once by a thread as systemd does (a
/// socket nobody reads fills up, and then the sender waits).
struct Systemd {
    /// The newest STATUS= received.
    status: Arc<Mutex<String>>,
}

impl Systemd {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        let status = Arc::new(Mutex::new(String::new()));
        let newest = status.clone();
        // Ends with the test process; it only ever reads.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                for line in text.lines() {
                    if let Some(line) = line.strip_prefix("STATUS=") {
                        *newest.lock().unwrap() = line.to_owned();
                    }
                }
            }
        });
        Systemd { status }
    }

    /// The newest STATUS= line.
    fn status(&self) -> String {
        self.status.lock().unwrap().clone()
    }
}

/// A webhook endpoint keeping every JSON body posted to it.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Hook { url, bodies }
    }

    /// The newest event of the build.
    fn last_event(&self) -> Option<Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies.iter().rev().find(|b| b["label"] == LABEL).cloned()
    }
}

/// What the test holds while the daemon runs.
struct Run {
    s: Scenario,
    daemon: Daemon,
    systemd: Systemd,
    hook: Hook,
    metrics_url: String,
}

/// Polls `check` every 20 ms until it gives a value, failing the test with
/// the last reason and the daemon's log after [`LIMIT`].
async fn eventually<T, F, Fut>(daemon: &Daemon, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + LIMIT;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => panic!(
                "{what} never held: {why}\n--- daemon log\n{}",
                daemon.log_text()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The value of one sample on the metrics page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of a family.
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Run {
    async fn start() -> Run {
        // Processing and publishing last long enough for the test to hold
        // them still before PatchKit finishes; 20 ms per request makes the
        // upload of 40 chunks last most of a second.
        let s = Setup::new(1)
            .sandbox(|c| {
                c.job_duration(Duration::from_secs(3))
                    .publish_duration(Duration::from_secs(3))
                    .faults(FaultConfig {
                        latency: Duration::from_millis(20),
                        ..FaultConfig::seeded(1)
                    })
            })
            .start()
            .await;
        let hook = Hook::start().await;
        s.daemon_line("metrics = \"127.0.0.1:0\"");
        // A held phase makes no progress: after a second the build is
        // reported stuck, and that event names its state and version.
        s.daemon_line("stuck_after = \"1s\"");
        s.append_config(&format!(
            "[[notify]]\nurl = \"{}\"\nformat = \"json\"\n\
             events = [\"published\", \"failed\", \"warning\", \"stuck\"]\n",
            hook.url
        ));
        let notify = s.dir.path().join("notify.sock");
        let systemd = Systemd::bind(&notify);
        let daemon = s.spawn_env(&[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
        let metrics_url = daemon.metrics_url().await;
        s.until_socket().await;
        Run {
            s,
            daemon,
            systemd,
            hook,
            metrics_url,
        }
    }

    /// Every request fails from now on (500 or 503), until [`Self::lift`].
    fn outage(&self) {
        self.s.sb.set_faults(FaultConfig {
            fail_5xx: 1.0,
            ..FaultConfig::seeded(2)
        });
    }

    /// PatchKit answers again.
    fn lift(&self) {
        self.s.sb.set_faults(FaultConfig::seeded(3));
    }

    /// Waits until the sandbox counts a successful call of `route`.
    async fn until_called(&self, route: &str) {
        let s = &self.s;
        eventually(
            &self.daemon,
            &format!("a successful {route}"),
            || async move {
                let snap = s.snapshot();
                let ok = snap.count(route, "200") + snap.count(route, "201");
                if ok > 0 {
                    Ok(())
                } else {
                    Err(format!("{:?}", snap.requests.get(route)))
                }
            },
        )
        .await
    }

    /// The build's row in `status --json`.
    fn row(&self) -> Option<Value> {
        self.s
            .status_rows()
            .into_iter()
            .find(|r| r["label"] == LABEL)
    }

    async fn scrape(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `status --json` shows the build in `state` retrying a
    /// request, then reads every other report and checks it says the same.
    async fn agree_while_held(&mut self, state: &str) {
        let row = eventually(
            &self.daemon,
            &format!("{state} with a request retry"),
            || {
                let row = self.row();
                async move {
                    match row {
                        Some(r) if r["state"] == state && r["request_retry"].is_object() => Ok(r),
                        other => Err(format!("{other:#?}")),
                    }
                }
            },
        )
        .await;
        // An upload comes before the draft: no version yet while uploading.
        let version = row["version_id"].as_u64();
        assert_eq!(version.is_none(), state == "uploading", "{row:#}");
        let stage = row["stage"].as_str().unwrap().to_owned();

        // status --json: the retry under way, with its error and next try.
        let retry = &row["request_retry"];
        assert!(retry["attempt"].as_u64().unwrap() >= 1, "{row:#}");
        assert_eq!(retry["class"], "transient", "{row:#}");
        let error = retry["last_error"].as_str().unwrap();
        assert!(error.contains("500") || error.contains("503"), "{row:#}");
        assert!(retry["next_try_at"].as_u64().unwrap() > 0, "{row:#}");

        // status: the same state and version, and the retry in words.
        let out = self.s.run_cli(&["status"]);
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(LABEL))
            .unwrap_or_else(|| panic!("{out:?}"))
            .to_owned();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[3], state, "{line}");
        if let Some(version) = version {
            assert!(cells.contains(&version.to_string().as_str()), "{line}");
        }
        assert!(
            line.contains("attempt ")
                && line.contains("last error: ")
                && line.contains("next try in"),
            "{line}"
        );

        // STATUS=: the state, and the progress `status` shows.
        let progress = row["progress_percent"]
            .as_f64()
            .map(|p| format!(": {p:.0}%"));
        let want = format!("{state} {RULE} {LABEL}");
        let systemd = &self.systemd;
        let line = eventually(&self.daemon, &format!("STATUS= {want}"), || {
            let line = systemd.status();
            let progress = progress.clone();
            let want = want.clone();
            async move {
                let shows_progress = progress.as_ref().is_none_or(|p| line.contains(p.as_str()));
                if line.starts_with(&want) && shows_progress && line.contains("retrying") {
                    Ok(line)
                } else {
                    Err(line)
                }
            }
        })
        .await;
        assert!(line.contains("attempt "), "{line}");

        // Metrics: one unfinished build, in this state; a request retrying.
        let text = eventually(&self.daemon, &format!("metrics in {state}"), || async {
            let text = self.scrape().await;
            let here = sample(
                &text,
                &format!("patchkit_autopublish_builds{{rule=\"{RULE}\",state=\"{state}\"}}"),
            );
            if here == Some(1.0) && family_sum(&text, "patchkit_autopublish_builds") == 1.0 {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await;
        let attempt = sample(
            &text,
            &format!("patchkit_autopublish_request_retry_attempt{{rule=\"{RULE}\"}}"),
        );
        assert!(attempt.is_some_and(|a| a >= 1.0), "{text}");
        if state == "uploading" {
            // The bytes counted are the bytes the store holds as acknowledged.
            let detail = row["detail"].as_str().unwrap();
            let acknowledged: f64 = detail
                .split('(')
                .nth(1)
                .and_then(|d| d.split('/').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{detail}"));
            assert_eq!(
                sample(
                    &text,
                    &format!("patchkit_autopublish_bytes_uploaded_total{{rule=\"{RULE}\"}}")
                ),
                Some(acknowledged),
                "{detail}\n{text}"
            );
        }

        // Webhook: the stuck event of the held phase names the state, stage
        // and version.
        let hook = &self.hook;
        let event = eventually(&self.daemon, &format!("a stuck event in {state}"), || {
            let event = hook.last_event();
            async move {
                match event {
                    Some(e) if e["event"] == "stuck" && e["state"] == state => Ok(e),
                    other => Err(format!("{other:#?}")),
                }
            }
        })
        .await;
        assert!(
            event["reason"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!("while {state}"))),
            "{event:#}"
        );
        assert_eq!(event["stage"], stage.as_str(), "{event:#}");
        let text = self.scrape().await;
        assert_eq!(
            sample(
                &text,
                &format!("patchkit_autopublish_stuck_builds{{rule=\"{RULE}\"}}")
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(event["version_id"], serde_json::json!(version), "{event:#}");
        assert_eq!(event["build"], row["id"], "{event:#}");

        // Log: the newest state line of the build, and the stuck warning.
        let log = self.daemon.log_text();
        let said = log
            .lines()
            .rev()
            .find(|l| l.contains(" INFO patchkit_autopublish::observe: ") && l.contains(LABEL))
            .unwrap_or_else(|| panic!("no state line\n{log}"));
        let shown = match version {
            Some(v) => format!("observe: {state} v{v}"),
            None => format!("observe: {state} "),
        };
        assert!(said.contains(&shown), "{said}");
        let warned = log
            .lines()
            .rev()
            .find(|l| l.contains("no progress for") && l.contains(LABEL))
            .unwrap_or_else(|| panic!("no stuck warning\n{log}"));
        assert!(warned.contains(&format!("while {state};")), "{warned}");

        // Still held: everything above was read in this one state.
        let again = self.row().unwrap();
        assert_eq!(again["state"], state, "{again:#}");
        assert_eq!(again["version_id"], serde_json::json!(version), "{again:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_agrees_while_a_build_uploads_processes_and_publishes() {
    let mut run = Run::start().await;
    run.s.drop_zip(0, LABEL, chunks(40));

    // Uploading, held after the first chunk.
    run.until_called(CHUNK_ROUTE).await;
    run.outage();
    run.agree_while_held("uploading").await;
    run.lift();

    // Processing, held once PatchKit took the content_file call.
    run.until_called(CONTENT_FILE).await;
    run.outage();
    run.agree_while_held("processing").await;
    run.lift();

    // Publishing, held once PatchKit took the publish call.
    run.until_called(PUBLISH).await;
    run.outage();
    run.agree_while_held("publishing").await;
    run.lift();

    // Published: every report says so, and nothing is retrying any more.
    let version = run.s.until_published("app-0", LABEL).await;
    let row = eventually(&run.daemon, "published in status", || {
        let row = run.row();
        async move {
            match row {
                Some(r) if r["state"] == "published" => Ok(r),
                other => Err(format!("{other:#?}")),
            }
        }
    })
    .await;
    assert_eq!(row["version_id"], version);
    assert!(row["request_retry"].is_null(), "{row:#}");
    let systemd = &run.systemd;
    eventually(&run.daemon, "an idle STATUS=", || {
        let line = systemd.status();
        async move {
            if line.starts_with("idle") {
                Ok(())
            } else {
                Err(line)
            }
        }
    })
    .await;
    let text = run.scrape().await;
    assert_eq!(
        family_sum(&text, "patchkit_autopublish_builds"),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("patchkit_autopublish_published_total{{rule=\"{RULE}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("patchkit_autopublish_request_retry_attempt{{rule=\"{RULE}\"}}")
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("patchkit_autopublish_stuck_builds{{rule=\"{RULE}\"}}")
        ),
        Some(0.0)
    );
    for stage in ["validate", "create_version", "upload", "process", "publish"] {
        assert_eq!(
            sample(
                &text,
                &format!(
                    "patchkit_autopublish_stage_duration_seconds_count{{rule=\"{RULE}\",stage=\"{stage}\"}}"
                )
            ),
            Some(1.0),
            "{stage}\n{text}"
        );
    }
    let hook = &run.hook;
    let event = eventually(&run.daemon, "the published event", || {
        let event = hook.last_event();
        async move {
            match event {
                Some(e) if e["event"] == "published" => Ok(e),
                other => Err(format!("{other:#?}")),
            }
        }
    })
    .await;
    assert_eq!(event["version_id"], version);
    let log = run.daemon.log_text();
    assert!(
        log.contains(&format!("observe: published v{version}")),
        "{log}"
    );
    run.daemon.stop().await;
    run.s.logs_without_key();
}
