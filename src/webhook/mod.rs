//! Webhook notifications: build events posted to Slack, Discord or any
//! endpoint that takes JSON.
//!
//! Owns the payload of each format ([`payload`]), which hooks want which
//! event ([`wants`]) and delivery: a POST with a timeout, retried with capped
//! exponential backoff and jitter on connection errors, 5xx and 429, then
//! given up with one warning.
//!
//! Knows [`BuildEvent`]s from the [`Observer`], the `[[notify]]` config and
//! what the caller's [`AppLookup`] says about an app (its name and id, for
//! the message and the panel link); nothing about the store, the pipeline or
//! PatchKit's API.
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
//! The body of each format is built in `payload.rs` ([`payload`]).

mod payload;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Notify;
use crate::observe::{BuildEvent, Observer};
use crate::patchkit::RetryPolicy;

pub use payload::{Facts, payload};

/// What is known about an app, by its secret: its name and its numeric id
/// (PatchKit's panel addresses apps by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// The app's name.
    pub name: String,
    /// The app's numeric id; 0 when PatchKit did not send it.
    pub id: u64,
}

/// Looks an app up by its secret; `None` until PatchKit has told the daemon
/// about it.
pub type AppLookup = Arc<dyn Fn(&str) -> Option<AppInfo> + Send + Sync>;

/// A lookup that knows no app: messages name the rule instead.
pub fn no_apps() -> AppLookup {
    Arc::new(|_| None)
}

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
    apps: AppLookup,
    cancel: CancellationToken,
) -> Option<Notifier> {
    spawn_with(hooks, observer, apps, cancel, Delivery::default())
}

/// [`spawn`] with the caller's delivery settings.
pub fn spawn_with(
    hooks: Vec<Notify>,
    observer: &Observer,
    apps: AppLookup,
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
        host: host_name(),
        apps,
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
    apps: AppLookup,
    cancel: &CancellationToken,
) {
    match notifier {
        Some(running) => running.set_hooks(hooks),
        None => *notifier = spawn(hooks, observer, apps, cancel.clone()),
    }
}

/// This machine's name, as `hostname` prints it: which of several build
/// machines sent a message.
fn host_name() -> String {
    // The kernel's copy of the name; the daemon runs on Linux only.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "an unnamed host".to_owned())
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
    /// This machine's name, for the messages.
    host: String,
    /// Names and ids of apps, for the messages.
    apps: AppLookup,
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
            let body = payload(
                hook.notify.format,
                event,
                time,
                &self.facts(&hook.notify, event),
            );
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

impl Dispatcher {
    /// What a message to `hook` says beside the build: the host, and the
    /// app's name and panel page when known.
    fn facts(&self, hook: &Notify, event: &BuildEvent) -> Facts {
        let app = (self.apps)(&event.build.app_secret);
        let app_url = app.as_ref().filter(|a| a.id != 0).map(|a| {
            format!(
                "{}/apps/{}",
                hook.panel_url.as_str().trim_end_matches('/'),
                a.id
            )
        });
        Facts {
            host: self.host.clone(),
            app_name: app.map(|a| a.name).filter(|n| !n.trim().is_empty()),
            app_url,
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
