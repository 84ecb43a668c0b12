//! The Prometheus metrics: every series the daemon exports, and `GET
//! /metrics` serving them in the Prometheus text format 0.0.4.
//!
//! Owns each metric's name, type, labels, help text and buckets
//! ([`Metrics`]); the encoding is the Prometheus project's own client
//! (`prometheus-client`). Counters and histograms are fed by the
//! [`Observer`] as things happen. The gauges that describe the present
//! (builds by state, upload throughput, request retries under way) are set
//! from the observer's live view at each scrape ([`Present`]), so they
//! cannot drift from `status`. Knows nothing about the store, the pipeline
//! or PatchKit beyond the names of stages, states and endpoints.
//!
//! ```text
//! # HELP patchkit_autopublish_published_total Builds published (or scheduled), by rule.
//! # TYPE patchkit_autopublish_published_total counter
//! patchkit_autopublish_published_total{rule="mygame-windows"} 3
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::observe::Observer;
use crate::patchkit::{Endpoint, RetryClass};
use crate::state::Stage;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric name starts with this.
pub const PREFIX: &str = "patchkit_autopublish";

/// The names of the states an unfinished build can be in, as
/// `patchkit_autopublish_builds{state}` shows them (every one exists for
/// every rule, at 0 when no build is in it).
pub const UNFINISHED_STATES: [&str; 10] = [
    "queued",
    "validated",
    "creating_version",
    "version_ready",
    "uploading",
    "uploaded",
    "processing",
    "processed",
    "publishing",
    "linking",
];

/// The stages timed by `stage_duration_seconds`, in pipeline order. (The
/// check of processing messages has no state of its own: it is part of
/// `publish`.)
pub const TIMED_STAGES: [Stage; 6] = [
    Stage::Validate,
    Stage::CreateVersion,
    Stage::Upload,
    Stage::Process,
    Stage::Publish,
    Stage::Channels,
];

/// Drop-to-live buckets, in seconds: from half a minute (a small build on a
/// fast link) to a day (a huge build behind a long processing queue). The
/// 24 h alert covers anything longer.
const DROP_TO_LIVE_BUCKETS: [f64; 12] = [
    30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];

/// Stage duration buckets, in seconds: validation of a small ZIP takes a
/// fraction of a second, an upload of gigabytes or a processing queue hours.
const STAGE_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// The label name of a stage.
pub fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Validate => "validate",
        Stage::CreateVersion => "create_version",
        Stage::Upload => "upload",
        Stage::Process => "process",
        Stage::Check => "check",
        Stage::Publish => "publish",
        Stage::Channels => "channels",
    }
}

/// The label name of an endpoint.
pub fn endpoint_label(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::GetApp => "get_app",
        Endpoint::ListApps => "list_apps",
        Endpoint::CreateApp => "create_app",
        Endpoint::ListVersions => "list_versions",
        Endpoint::GetVersion => "get_version",
        Endpoint::CreateVersion => "create_version",
        Endpoint::PatchVersion => "patch_version",
        Endpoint::CreateUpload => "create_upload",
        Endpoint::UploadChunk => "chunk",
        Endpoint::StartProcessing => "content_file",
        Endpoint::GetJob => "job",
        Endpoint::Publish => "publish",
        Endpoint::LinkVersion => "link_version",
        Endpoint::AcquireLock => "acquire_lock",
    }
}

/// The endpoints the client sends again by itself, each with the classes it
/// can be retried for: the request-retry series that exist from the start.
/// (Create version, content_file and publish are never repeated blindly:
/// the stage re-reads PatchKit's state and that shows as a build retry.)
fn retried_requests() -> impl Iterator<Item = (Endpoint, RetryClass)> {
    const REPEATED: [Endpoint; 9] = [
        Endpoint::GetApp,
        Endpoint::ListApps,
        Endpoint::ListVersions,
        Endpoint::GetVersion,
        Endpoint::PatchVersion,
        Endpoint::CreateUpload,
        Endpoint::UploadChunk,
        Endpoint::GetJob,
        Endpoint::AcquireLock,
    ];
    REPEATED.into_iter().flat_map(|endpoint| {
        RetryClass::ALL
            .into_iter()
            .filter(move |class| {
                *class != RetryClass::ChunkMismatch || endpoint == Endpoint::UploadChunk
            })
            .map(move |class| (endpoint, class))
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleState {
    rule: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleStage {
    rule: String,
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What the present-tense gauges show, read from the observer's live view
/// at a scrape.
#[derive(Debug, Default, Clone)]
pub struct Present {
    /// Unfinished builds, by rule and state name.
    pub builds: BTreeMap<(String, &'static str), i64>,
    /// Summed bytes per second of the uploads under way, by rule.
    pub upload_bytes_per_second: BTreeMap<String, f64>,
    /// The attempt number of a request being retried right now, by rule
    /// (the highest when several builds of a rule retry).
    pub request_retry_attempt: BTreeMap<String, i64>,
    /// Running builds reported stuck and not moved since, by rule.
    pub stuck_builds: BTreeMap<String, i64>,
}

/// Every series the daemon exports. Updates are lock-free atomics (a few
/// per chunk at most); the rule list and a scrape take a short lock.
pub struct Metrics {
    /// What a scrape encodes.
    registry: Registry,
    /// Rules known so far: their series exist from the start, at 0.
    rules: Mutex<BTreeSet<String>>,
    /// Serialises scrapes, so refreshing the gauges and encoding them is one
    /// step even when two scrapers come at once.
    scrape: Mutex<()>,
    builds: Family<RuleState, Gauge>,
    bytes_uploaded: Family<RuleLabel, Counter>,
    upload_rate: Family<RuleLabel, F64Gauge>,
    request_retries: Family<RequestLabels, Counter>,
    request_retry_attempt: Family<RuleLabel, Gauge>,
    stuck_builds: Family<RuleLabel, Gauge>,
    build_retries: Family<RuleLabel, Counter>,
    failures: Family<RuleLabel, Counter>,
    published: Family<RuleLabel, Counter>,
    last_success: Family<RuleLabel, Gauge>,
    drop_to_live: HistogramFamily<RuleLabel>,
    stage_duration: HistogramFamily<RuleStage>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered; the series without a rule label exist at
    /// once, the per-rule ones when [`add_rules`](Self::add_rules) names
    /// the rules.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("up", "1 while the daemon is running", up);
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the version label says which release runs",
            build_info,
        );
        let metrics = Metrics {
            registry,
            rules: Mutex::new(BTreeSet::new()),
            scrape: Mutex::new(()),
            builds: Family::default(),
            bytes_uploaded: Family::default(),
            upload_rate: Family::default(),
            request_retries: Family::default(),
            request_retry_attempt: Family::default(),
            stuck_builds: Family::default(),
            build_retries: Family::default(),
            failures: Family::default(),
            published: Family::default(),
            last_success: Family::default(),
            drop_to_live: Family::new_with_constructor(|| Histogram::new(DROP_TO_LIVE_BUCKETS)),
            stage_duration: Family::new_with_constructor(|| Histogram::new(STAGE_BUCKETS)),
        };
        for (endpoint, class) in retried_requests() {
            let _ = metrics.request_retries.get_or_create(&RequestLabels {
                endpoint: endpoint_label(endpoint),
                class: class.as_str(),
            });
        }
        metrics.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "builds",
            "Unfinished builds, by rule and state",
            self.builds.clone(),
        );
        r.register(
            "bytes_uploaded",
            "Bytes acknowledged by PatchKit, by rule",
            self.bytes_uploaded.clone(),
        );
        r.register(
            "upload_bytes_per_second",
            "Upload throughput of the uploads under way, by rule (0 when none uploads)",
            self.upload_rate.clone(),
        );
        r.register(
            "retries",
            "Requests to PatchKit sent again after a failure, one per retry, by endpoint and class",
            self.request_retries.clone(),
        );
        r.register(
            "request_retry_attempt",
            "The attempt number of a request to PatchKit being retried right now, by rule (0 when \
             none)",
            self.request_retry_attempt.clone(),
        );
        r.register(
            "stuck_builds",
            "Running builds that made no progress for stuck_after (each also sent a stuck event), \
             by rule",
            self.stuck_builds.clone(),
        );
        r.register(
            "build_retries",
            "Times a build's stage failed and the build was set to try it again later, by rule",
            self.build_retries.clone(),
        );
        r.register(
            "failures",
            "Builds that failed, by rule",
            self.failures.clone(),
        );
        r.register(
            "published",
            "Builds published (or scheduled), by rule",
            self.published.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the newest publish (or scheduled publish), by rule; 0 when none is \
             known",
            self.last_success.clone(),
        );
        r.register(
            "drop_to_live_seconds",
            "Seconds from a build being taken to its version going live, by rule",
            self.drop_to_live.clone(),
        );
        r.register(
            "stage_duration_seconds",
            "Seconds a build spent in a stage it completed (waits between attempts included), \
             by rule and stage",
            self.stage_duration.clone(),
        );
        self
    }

    /// Creates every per-rule series of these rules at 0 (rules already
    /// known keep their values).
    pub fn add_rules<'a>(&self, rules: impl IntoIterator<Item = &'a str>) {
        let mut known = self.rules.lock().expect("metrics lock");
        for rule in rules {
            if known.insert(rule.to_owned()) {
                self.create_rule(rule);
            }
        }
    }

    fn create_rule(&self, rule: &str) {
        let label = RuleLabel { rule: rule.into() };
        for state in UNFINISHED_STATES {
            let _ = self.builds.get_or_create(&RuleState {
                rule: rule.into(),
                state,
            });
        }
        for stage in TIMED_STAGES {
            let _ = self.stage_duration.get_or_create(&RuleStage {
                rule: rule.into(),
                stage: stage_label(stage),
            });
        }
        let _ = self.bytes_uploaded.get_or_create(&label);
        let _ = self.upload_rate.get_or_create(&label);
        let _ = self.request_retry_attempt.get_or_create(&label);
        let _ = self.build_retries.get_or_create(&label);
        let _ = self.stuck_builds.get_or_create(&label);
        let _ = self.failures.get_or_create(&label);
        let _ = self.published.get_or_create(&label);
        let _ = self.last_success.get_or_create(&label);
        let _ = self.drop_to_live.get_or_create(&label);
    }

    fn rule(&self, rule: &str) -> RuleLabel {
        self.add_rules([rule]);
        RuleLabel { rule: rule.into() }
    }

    /// Sets the newest publish time of a rule, unless a newer one is known.
    pub fn set_last_success(&self, rule: &str, unix_seconds: u64) {
        let gauge = self.last_success.get_or_create_owned(&self.rule(rule));
        let seconds = i64::try_from(unix_seconds).unwrap_or(i64::MAX);
        if gauge.get() < seconds {
            gauge.set(seconds);
        }
    }

    /// A build of `rule` was published (or scheduled) at `unix_seconds`;
    /// `drop_to_live` is its time from being taken, when it went live.
    pub fn published(&self, rule: &str, unix_seconds: u64, drop_to_live: Option<Duration>) {
        let label = self.rule(rule);
        self.published.get_or_create(&label).inc();
        self.set_last_success(rule, unix_seconds);
        if let Some(d) = drop_to_live {
            self.drop_to_live
                .get_or_create(&label)
                .observe(d.as_secs_f64());
        }
    }

    /// A build of `rule` failed.
    pub fn failed(&self, rule: &str) {
        self.failures.get_or_create(&self.rule(rule)).inc();
    }

    /// A build of `rule` completed `stage` in `took`.
    pub fn stage_done(&self, rule: &str, stage: Stage, took: Duration) {
        self.add_rules([rule]);
        self.stage_duration
            .get_or_create(&RuleStage {
                rule: rule.into(),
                stage: stage_label(stage),
            })
            .observe(took.as_secs_f64());
    }

    /// PatchKit acknowledged `bytes` more of an upload of `rule`.
    pub fn uploaded(&self, rule: &str, bytes: u64) {
        self.bytes_uploaded
            .get_or_create(&self.rule(rule))
            .inc_by(bytes);
    }

    /// A request is about to be sent again.
    pub fn request_retried(&self, endpoint: Endpoint, class: RetryClass) {
        self.request_retries
            .get_or_create(&RequestLabels {
                endpoint: endpoint_label(endpoint),
                class: class.as_str(),
            })
            .inc();
    }

    /// A build of `rule` will try its stage again later.
    pub fn build_retried(&self, rule: &str) {
        self.build_retries.get_or_create(&self.rule(rule)).inc();
    }

    /// Every series in the text format, with the present-tense gauges set
    /// from `present` first.
    pub fn render(&self, present: &Present) -> String {
        let _one_scrape = self.scrape.lock().expect("metrics lock");
        let rules: Vec<String> = {
            let known = self.rules.lock().expect("metrics lock");
            known.iter().cloned().collect()
        };
        for rule in &rules {
            for state in UNFINISHED_STATES {
                let n = present
                    .builds
                    .get(&(rule.clone(), state))
                    .copied()
                    .unwrap_or(0);
                self.builds
                    .get_or_create(&RuleState {
                        rule: rule.clone(),
                        state,
                    })
                    .set(n);
            }
            let label = RuleLabel { rule: rule.clone() };
            let rate = present
                .upload_bytes_per_second
                .get(rule)
                .copied()
                .unwrap_or(0.0);
            self.upload_rate.get_or_create(&label).set(rate);
            let attempt = present
                .request_retry_attempt
                .get(rule)
                .copied()
                .unwrap_or(0);
            self.request_retry_attempt
                .get_or_create(&label)
                .set(attempt);
            let stuck = present.stuck_builds.get(rule).copied().unwrap_or(0);
            self.stuck_builds.get_or_create(&label).set(stuck);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr` until `cancel` fires. Returns the address
/// bound (the port is chosen when `addr` has port 0) and the server task.
/// Fails, naming the address, when it cannot listen there.
pub async fn serve(
    addr: SocketAddr,
    observer: Observer,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr}: {e} (check [daemon] metrics)"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(observer);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("the metrics server on {bound} stopped: {e}");
        }
    });
    Ok((bound, task))
}

async fn scrape(
    axum::extract::State(observer): axum::extract::State<Observer>,
) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&observer),
    )
}

/// The metrics page now.
pub fn render(observer: &Observer) -> String {
    observer.metrics().render(&observer.present())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_gets_every_series_at_zero() {
        let m = Metrics::new();
        m.add_rules(["win"]);
        let text = m.render(&Present::default());
        for state in UNFINISHED_STATES {
            assert!(
                text.contains(&format!(
                    "patchkit_autopublish_builds{{rule=\"win\",state=\"{state}\"}} 0\n"
                )),
                "{state}\n{text}"
            );
        }
        for line in [
            "patchkit_autopublish_published_total{rule=\"win\"} 0\n",
            "patchkit_autopublish_failures_total{rule=\"win\"} 0\n",
            "patchkit_autopublish_build_retries_total{rule=\"win\"} 0\n",
            "patchkit_autopublish_bytes_uploaded_total{rule=\"win\"} 0\n",
            "patchkit_autopublish_upload_bytes_per_second{rule=\"win\"} 0.0\n",
            "patchkit_autopublish_request_retry_attempt{rule=\"win\"} 0\n",
            "patchkit_autopublish_last_success_timestamp_seconds{rule=\"win\"} 0\n",
            "patchkit_autopublish_drop_to_live_seconds_count{rule=\"win\"} 0\n",
            "patchkit_autopublish_stage_duration_seconds_count{rule=\"win\",stage=\"upload\"} 0\n",
            "patchkit_autopublish_retries_total{endpoint=\"chunk\",class=\"chunk_mismatch\"} 0\n",
            "patchkit_autopublish_retries_total{endpoint=\"job\",class=\"rate_limited\"} 0\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
        assert!(!text.contains("endpoint=\"job\",class=\"chunk_mismatch\""));
    }

    #[test]
    fn last_success_only_moves_forward() {
        let m = Metrics::new();
        m.set_last_success("win", 200);
        m.set_last_success("win", 100);
        let text = m.render(&Present::default());
        assert!(
            text.contains(
                "patchkit_autopublish_last_success_timestamp_seconds{rule=\"win\"} 200\n"
            )
        );
    }
}
