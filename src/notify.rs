//! Webhook notifications: build events posted to Slack, Discord or any
//! endpoint that takes JSON.
//!
//! Owns the payload of each format ([`payload`]), which hooks want which
//! event ([`wants`]) and delivery: a POST with a timeout, retried with capped
//! exponential backoff and jitter on connection errors, 5xx and 429, then
//! given up with one warning.
//!
//! Knows [`BuildEvent`]s from the [`Observer`] and the `[[notify]]` config;
//! nothing about the store, the pipeline or PatchKit.
//!
//! Architecture invariants:
//! - Delivery never blocks the pipeline. The observer's broadcast channel is
//!   drained by one task that only spawns deliveries; each delivery runs in
//!   its own task, and each hook has its own limit of deliveries in flight,
//!   so a dead webhook delays neither the pipeline nor other hooks.
//! - A webhook URL is never logged whole: Slack and Discord put a token in
//!   the path. Logs name a hook by [`Notify::redacted_url`], and transport
//!   errors are stripped of their URL before they are shown.
//!
//! # Payloads
//!
//! `json` posts one object with stable field names:
//!
//! ```json
//! {"event":"published","time":"2026-03-01T12:00:00Z","build":"42",
//!  "rule":"mygame-windows","app":"a1b2c3","label":"1.4.2",
//!  "state":"published","stage":"publish","version_id":12,"file":"Game.zip",
//!  "size_bytes":536870912,"size":"512 MiB","duration_seconds":372.0,
//!  "duration":"6m 12s","attempts":0,"messages":["Missing icon"],"reason":null}
//! ```
//!
//! `messages` holds the processing warnings of the state, or for a failed
//! build its reason. `reason` says why a `failed`, `stuck` or `warning` event
//! happened (`null` otherwise). `version_id` is `null` before a version
//! exists.
//!
//! `slack` posts `{"text": "..."}` and `discord` posts `{"content": "...",
//! "allowed_mentions": {"parse": []}}` (no label or message can ping
//! anyone), both a few readable lines:
//!
//! ```text
//! :white_check_mark: *mygame-windows* 1.4.2 published as version 12 (512 MiB, 6m 12s)
//! Game.zip (536870912 bytes), build 42, app a1b2c3
//! Warnings: Missing icon
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Notify, NotifyFormat};
use crate::observe::{BuildEvent, EventKind, Observer};
use crate::patchkit::RetryPolicy;
use crate::state::BuildState;

/// Discord refuses a message whose `content` is longer than this many
/// characters.
const DISCORD_LIMIT: usize = 2000;

/// Slack accepts up to 40,000 characters but asks for at most 4,000 "for best
/// results"; longer text is hard to read in a channel anyway.
const SLACK_LIMIT: usize = 4000;

/// The longest `Retry-After` we honour. A hook that asks for an hour would
/// hold its delivery slot that long; a minute is the whole retry budget.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How much of a refusing webhook's answer goes into the warning: enough for
/// Slack's `invalid_payload` or Discord's JSON error, not a whole HTML page.
const BODY_IN_LOG: usize = 200;

/// How a delivery is attempted. [`Delivery::default`] is what the daemon
/// uses; tests shorten the waits.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The longest one POST may take, connection included.
    pub timeout: Duration,
    /// Attempts per delivery, the first included.
    pub tries: u32,
    /// The waits between attempts (its `give_up` is not used: `tries` is).
    pub backoff: RetryPolicy,
    /// Deliveries in flight per hook. More events for a hook that is that
    /// far behind are dropped, with a warning.
    pub max_in_flight: usize,
}

impl Default for Delivery {
    /// `timeout` 10 s: webhook receivers answer in well under a second; ten
    /// rides out a slow TLS handshake without holding a slot for long.
    /// `tries` 5 with waits of at most 4, 8, 16 and 30 s (full jitter): about
    /// a minute from first to last try at worst, enough for a webhook
    /// service's blip or restart, short enough that a notification is not
    /// delivered long after the fact. `max_in_flight` 32: far more than a
    /// healthy hook ever has (events come a few per build), few enough that a
    /// dead hook holds a bounded number of tasks.
    fn default() -> Self {
        Delivery {
            timeout: Duration::from_secs(10),
            tries: 5,
            backoff: RetryPolicy {
                base: Duration::from_secs(4),
                cap: Duration::from_secs(30),
                give_up: None,
            },
            max_in_flight: 32,
        }
    }
}

/// One configured hook and its share of deliveries in flight.
#[derive(Debug)]
struct Hook {
    /// The `[[notify]]` entry.
    notify: Notify,
    /// Permits for deliveries in flight, [`Delivery::max_in_flight`] in all.
    slots: Arc<Semaphore>,
}

/// The hook list in force, swapped whole on reload.
type Hooks = Arc<Vec<Arc<Hook>>>;

/// The running notifier: swap its hooks on reload, wait for it on shutdown.
#[derive(Debug)]
pub struct Notifier {
    /// The hooks the dispatch task reads for each event.
    hooks: watch::Sender<Hooks>,
    /// Deliveries in flight per hook, for hooks added later.
    max_in_flight: usize,
    /// The dispatch task; ends after the cancel token fires (or the observer
    /// is gone) and deliveries in flight finish.
    task: JoinHandle<()>,
}

impl Notifier {
    /// Replaces the hooks (a config reload). Events from now on go to the
    /// new list; deliveries in flight finish. A hook that is unchanged keeps
    /// its deliveries-in-flight count.
    pub fn set_hooks(&self, hooks: Vec<Notify>) {
        let max = self.max_in_flight;
        self.hooks.send_modify(|current| {
            let next = hooks
                .into_iter()
                .map(|notify| {
                    current
                        .iter()
                        .find(|h| h.notify == notify)
                        .cloned()
                        .unwrap_or_else(|| hook(notify, max))
                })
                .collect();
            *current = Arc::new(next);
        });
    }

    /// Waits until the notifier has stopped: after the cancel token fires,
    /// events already emitted get one try each (no retries) within the
    /// delivery timeout.
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!("the notification task failed: {e}");
        }
    }
}

fn hook(notify: Notify, max_in_flight: usize) -> Arc<Hook> {
    Arc::new(Hook {
        notify,
        slots: Arc::new(Semaphore::new(max_in_flight)),
    })
}

/// Starts delivering the observer's build events to `hooks`, with the
/// default [`Delivery`]. `None` when there are no hooks (nothing is
/// subscribed); see [`update`] for a reload.
pub fn spawn(
    hooks: Vec<Notify>,
    observer: &Observer,
    cancel: CancellationToken,
) -> Option<Notifier> {
    spawn_with(hooks, observer, cancel, Delivery::default())
}

/// [`spawn`] with the caller's delivery settings.
pub fn spawn_with(
    hooks: Vec<Notify>,
    observer: &Observer,
    cancel: CancellationToken,
    delivery: Delivery,
) -> Option<Notifier> {
    if hooks.is_empty() {
        return None;
    }
    let max_in_flight = delivery.max_in_flight.max(1);
    let list: Hooks = Arc::new(hooks.into_iter().map(|n| hook(n, max_in_flight)).collect());
    let (tx, rx) = watch::channel(list);
    let dispatcher = Dispatcher {
        hooks: rx,
        http: reqwest::Client::builder()
            .user_agent(concat!("patchkit-autopublish/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS settings builds"),
        delivery: Arc::new(delivery),
        cancel,
        tracker: TaskTracker::new(),
    };
    let task = tokio::spawn(dispatcher.run(observer.subscribe()));
    Some(Notifier {
        hooks: tx,
        max_in_flight,
        task,
    })
}

/// Applies a reloaded hook list: swaps the hooks of a running notifier, or
/// starts one if none was running and there now are hooks.
pub fn update(
    notifier: &mut Option<Notifier>,
    hooks: Vec<Notify>,
    observer: &Observer,
    cancel: &CancellationToken,
) {
    match notifier {
        Some(running) => running.set_hooks(hooks),
        None => *notifier = spawn(hooks, observer, cancel.clone()),
    }
}

/// Whether `hook` is sent `event`: its kind is in the hook's `events` and
/// the build's rule in its `rules` (or `rules` is empty).
pub fn wants(hook: &Notify, event: &BuildEvent) -> bool {
    hook.events.contains(&event.kind)
        && (hook.rules.is_empty() || hook.rules.contains(&event.build.rule))
}

/// The drain side of the broadcast channel.
struct Dispatcher {
    /// The hooks in force.
    hooks: watch::Receiver<Hooks>,
    /// Shared by every delivery (one connection pool).
    http: reqwest::Client,
    /// Timeouts and retries.
    delivery: Arc<Delivery>,
    /// Stop reading events; stop retrying.
    cancel: CancellationToken,
    /// Deliveries in flight, waited for on shutdown.
    tracker: TaskTracker,
}

impl Dispatcher {
    async fn run(self, mut events: broadcast::Receiver<BuildEvent>) {
        loop {
            let received = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                received = events.recv() => received,
            };
            match received {
                Ok(event) => self.dispatch(&event),
                Err(RecvError::Lagged(missed)) => lagged(missed),
                Err(RecvError::Closed) => break,
            }
        }
        // Events emitted before shutdown (a build's final failure, say) are
        // still sent, once each.
        loop {
            match events.try_recv() {
                Ok(event) => self.dispatch(&event),
                Err(TryRecvError::Lagged(missed)) => lagged(missed),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        self.tracker.close();
        // A final try is bounded by the POST timeout; the margin covers
        // building the payloads.
        let grace = self.delivery.timeout + Duration::from_secs(1);
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "notifications: {} deliveries still running at shutdown were abandoned",
                self.tracker.len()
            );
        }
    }

    /// Starts one delivery per hook that wants `event`; never waits.
    fn dispatch(&self, event: &BuildEvent) {
        let hooks = self.hooks.borrow().clone();
        let time = SystemTime::now();
        for hook in hooks.iter().filter(|h| wants(&h.notify, event)) {
            let Ok(slot) = hook.slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    hook = %hook.notify.redacted_url(),
                    event = event.kind.as_str(),
                    build = %event.build.id,
                    "notification dropped: {} deliveries to this hook are still pending \
                     (is it down?)",
                    self.delivery.max_in_flight
                );
                continue;
            };
            let body = payload(hook.notify.format, event, time);
            let job = Job {
                http: self.http.clone(),
                hook: hook.clone(),
                body,
                what: format!("{} of build {}", event.kind.as_str(), event.build.id),
                delivery: self.delivery.clone(),
                cancel: self.cancel.clone(),
            };
            self.tracker.spawn(async move {
                job.run().await;
                drop(slot);
            });
        }
    }
}

fn lagged(missed: u64) {
    tracing::warn!(
        "notifications: {missed} build events were missed because the notifier fell behind; \
         those notifications are not sent"
    );
}

/// One event to one hook.
struct Job {
    /// The shared client.
    http: reqwest::Client,
    /// Where to.
    hook: Arc<Hook>,
    /// The payload.
    body: Value,
    /// "published of build 42", for logs.
    what: String,
    /// Timeouts and retries.
    delivery: Arc<Delivery>,
    /// No more retries after this fires.
    cancel: CancellationToken,
}

/// What one POST came to.
enum Outcome {
    /// 2xx.
    Delivered,
    /// Worth another try (connection error, timeout, 5xx, 429).
    Retry {
        problem: String,
        retry_after: Option<Duration>,
    },
    /// Another try would get the same answer (4xx other than 429).
    Refused(String),
}

impl Job {
    async fn run(self) {
        let url = self.hook.notify.redacted_url();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let problem = match self.post().await {
                Outcome::Delivered => {
                    tracing::debug!(hook = %url, "notification sent: {}", self.what);
                    return;
                }
                Outcome::Refused(problem) => {
                    tracing::warn!(
                        hook = %url,
                        "notification refused, not retried: {}: {problem}",
                        self.what
                    );
                    return;
                }
                Outcome::Retry {
                    problem,
                    retry_after,
                } => {
                    if attempt >= self.delivery.tries {
                        tracing::warn!(
                            hook = %url,
                            "notification given up after {attempt} tries: {}: {problem}",
                            self.what
                        );
                        return;
                    }
                    let delay = self
                        .delivery
                        .backoff
                        .delay(attempt - 1, retry_after.map(|d| d.min(MAX_RETRY_AFTER)));
                    tracing::debug!(
                        hook = %url,
                        "notification failed ({problem}); try {} in {}",
                        attempt + 1,
                        humantime::format_duration(delay)
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = self.cancel.cancelled() => problem,
                    }
                }
            };
            tracing::warn!(
                hook = %url,
                "notification not sent, shutting down: {}: {problem}",
                self.what
            );
            return;
        }
    }

    async fn post(&self) -> Outcome {
        let sent = self
            .http
            .post(self.hook.notify.url.clone())
            .timeout(self.delivery.timeout)
            .json(&self.body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Retry {
                    problem: transport_error(e, self.delivery.timeout),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let text: String = text.trim().chars().take(BODY_IN_LOG).collect();
        let problem = if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        };
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Outcome::Retry {
                problem,
                retry_after,
            }
        } else {
            Outcome::Refused(problem)
        }
    }
}

/// A transport error without its URL (which may hold a token), with its
/// causes.
fn transport_error(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let e = e.without_url();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    // A refused or unreachable address says it all in its innermost cause;
    // the layers above it repeat "error sending request".
    if e.is_connect()
        && let Some(root) = causes.last()
    {
        return format!("cannot connect: {root}");
    }
    std::iter::once(e.to_string())
        .chain(causes)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The JSON body of the `json` format. Field names are a public contract:
/// add fields, never rename or remove them.
#[derive(Debug, Serialize)]
struct JsonPayload<'a> {
    /// `state_changed`, `published`, `failed`, `warning` or `stuck`.
    event: &'static str,
    /// When the notifier handled the event, RFC 3339 UTC.
    time: String,
    /// The build id, as a string (ids are 64-bit).
    build: String,
    /// The rule's name.
    rule: &'a str,
    /// The PatchKit app secret.
    app: &'a str,
    /// The version label.
    label: &'a str,
    /// The build's state name.
    state: &'static str,
    /// The pipeline stage the state belongs to (for `failed`, where it
    /// failed).
    stage: &'static str,
    /// The PatchKit version id, once one exists.
    version_id: Option<u64>,
    /// The ZIP's file name.
    file: String,
    /// The ZIP's size in bytes.
    size_bytes: u64,
    /// The size for people, e.g. `512 MiB`.
    size: String,
    /// Seconds from the build being taken to this event.
    duration_seconds: f64,
    /// The same for people, e.g. `6m 12s`.
    duration: String,
    /// Tries of the current (or failed) step.
    attempts: u32,
    /// Processing warnings, or the failure reason.
    messages: Vec<String>,
    /// Why a `failed`, `stuck` or `warning` event happened.
    reason: Option<&'a str>,
}

/// The body posted to a hook of `format` for `event`, as of `time`.
pub fn payload(format: NotifyFormat, event: &BuildEvent, time: SystemTime) -> Value {
    match format {
        NotifyFormat::Json => {
            serde_json::to_value(json_payload(event, time)).expect("the payload serializes")
        }
        NotifyFormat::Slack => json!({ "text": text(event, Markup::Slack) }),
        NotifyFormat::Discord => json!({
            "content": text(event, Markup::Discord),
            // Labels and messages are not ours: never let them ping a channel.
            "allowed_mentions": { "parse": [] },
        }),
    }
}

fn json_payload(event: &BuildEvent, time: SystemTime) -> JsonPayload<'_> {
    let b = &event.build;
    JsonPayload {
        event: event.kind.as_str(),
        time: humantime::format_rfc3339_seconds(time).to_string(),
        build: b.id.to_string(),
        rule: &b.rule,
        app: &b.app_secret,
        label: &b.label,
        state: b.state.name(),
        stage: b.state.stage().as_str(),
        version_id: b.state.version_id(),
        file: file_name(event),
        size_bytes: b.identity.size,
        size: human_size(b.identity.size),
        duration_seconds: event.duration_seconds,
        duration: human_duration(event.duration_seconds),
        attempts: attempts(&b.state, b.attempts),
        messages: messages(&b.state),
        reason: event.reason.as_deref(),
    }
}

/// The processing warnings of the state, or the failure reason.
fn messages(state: &BuildState) -> Vec<String> {
    match state {
        BuildState::Processed { warnings, .. }
        | BuildState::Publishing { warnings, .. }
        | BuildState::Published { warnings, .. }
        | BuildState::Scheduled { warnings, .. }
        | BuildState::Draft { warnings, .. } => warnings.clone(),
        BuildState::Failed { reason, .. } => vec![reason.clone()],
        _ => Vec::new(),
    }
}

/// A failed state counts the failing stage's tries itself; otherwise the
/// record's counter of the current step holds them.
fn attempts(state: &BuildState, recorded: u32) -> u32 {
    match state {
        BuildState::Failed { attempts, .. } => *attempts,
        _ => recorded,
    }
}

fn file_name(event: &BuildEvent) -> String {
    let file = &event.build.file;
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string())
}

/// `512 MiB`, `1.5 GiB`, `900 B`: binary units, one decimal at most.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// `6m 12s`: whole seconds.
fn human_duration(seconds: f64) -> String {
    let secs = if seconds.is_finite() && seconds > 0.0 {
        seconds.round() as u64
    } else {
        0
    };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Chat markup: how to embolden, what to escape, how long a message may be.
#[derive(Debug, Clone, Copy)]
enum Markup {
    Slack,
    Discord,
}

impl Markup {
    fn bold(self, s: &str) -> String {
        match self {
            Markup::Slack => format!("*{}*", self.escape(s)),
            Markup::Discord => format!("**{}**", self.escape(s)),
        }
    }

    /// Text from outside (labels, file names, PatchKit's messages) shown as
    /// is: Slack needs `&`, `<` and `>` escaped (its link and mention
    /// syntax); Discord's markdown characters are backslash-escaped.
    fn escape(self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match (self, c) {
                (Markup::Slack, '&') => out.push_str("&amp;"),
                (Markup::Slack, '<') => out.push_str("&lt;"),
                (Markup::Slack, '>') => out.push_str("&gt;"),
                (Markup::Discord, '\\' | '*' | '_' | '~' | '`' | '|' | '>') => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        out
    }

    fn limit(self) -> usize {
        match self {
            Markup::Slack => SLACK_LIMIT,
            Markup::Discord => DISCORD_LIMIT,
        }
    }
}

/// The chat message: a headline, a details line, and the messages if any.
fn text(event: &BuildEvent, m: Markup) -> String {
    let b = &event.build;
    let who = format!("{} {}", m.bold(&b.rule), m.escape(&b.label));
    let facts = format!(
        "{}, {}",
        human_size(b.identity.size),
        human_duration(event.duration_seconds)
    );
    let version = b
        .state
        .version_id()
        .map(|v| format!(" as version {v}"))
        .unwrap_or_default();
    let reason = event.reason.as_deref().unwrap_or("");
    let headline = match (event.kind, &b.state) {
        (EventKind::Published, BuildState::Scheduled { publish_time, .. }) => format!(
            ":calendar: {who} scheduled{version} for {} ({facts})",
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(*publish_time)
            )
        ),
        (EventKind::Published, _) => {
            format!(":white_check_mark: {who} published{version} ({facts})")
        }
        (EventKind::Failed, state) => format!(
            ":x: {who} failed in {} after {} attempt(s) ({facts})",
            state.stage(),
            attempts(state, b.attempts)
        ),
        (EventKind::Warning, state) => format!(
            ":warning: {who} processed{version} with {} warning(s)",
            messages(state).len()
        ),
        (EventKind::Stuck, _) => format!(":hourglass: {who} is stuck: {}", m.escape(reason)),
        (EventKind::StateChanged, state) => {
            format!(
                ":arrow_forward: {who}: {} ({facts})",
                m.escape(&state.to_string())
            )
        }
    };
    let mut lines = vec![
        headline,
        format!(
            "{} ({} bytes), build {}, app {}",
            m.escape(&file_name(event)),
            b.identity.size,
            b.id,
            m.escape(&b.app_secret)
        ),
    ];
    let said = messages(&b.state);
    if !said.is_empty() {
        let said: Vec<String> = said.iter().map(|s| m.escape(s)).collect();
        let title = if matches!(b.state, BuildState::Failed { .. }) {
            "Error"
        } else {
            "Warnings"
        };
        lines.push(format!("{title}: {}", said.join("; ")));
    }
    truncate(lines.join("\n"), m.limit())
}

/// At most `limit` characters, the last an ellipsis when cut.
fn truncate(text: String, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text;
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(900), "900 B");
        assert_eq!(human_size(512 * 1024 * 1024), "512 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("ééé".into(), 3), "ééé");
        assert_eq!(truncate("éééé".into(), 3), "éé…");
    }
}
