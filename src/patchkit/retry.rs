//! When to try again: capped exponential backoff with full jitter.
//!
//! Owns the delay arithmetic ([`RetryPolicy::delay`]), the per-operation
//! budget ([`Backoff`]) and a retry loop for API calls ([`RetryPolicy::run`]).
//! The pipeline reuses all three for its own waits. Knows nothing about which
//! calls are safe to repeat: callers decide that (see
//! [`Endpoint::retry_safe`](super::Endpoint::retry_safe)).
//!
//! Also owns the report of each request retry ([`RequestRetry`]) to whoever
//! watches the task that sends it ([`watched`], [`RetryWatch`]): a retry
//! loop lives inside one request, so without this report an outage shorter
//! than the give-up time would be visible only in the log. A task run
//! [`stoppable`] stops waiting between retries when it is told to stop.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, Endpoint, ErrorKind};

/// How long to wait between attempts, and when to stop.
///
/// The delay before retry `attempt` (0-based) is drawn uniformly from
/// `[0, min(cap, base * 2^attempt)]` ("full jitter"), so many clients that
/// failed together do not come back together. A server's `Retry-After` is a
/// floor on that delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// The largest ceiling, whatever the attempt.
    pub cap: Duration,
    /// Stop when the next wait would end more than this long after the first
    /// attempt began. `None`: never stop.
    pub give_up: Option<Duration>,
}

impl Default for RetryPolicy {
    /// `base` 1 s: a blip (a reset connection, one 502) is retried almost at
    /// once. `cap` 60 s: during an outage we knock about once a minute, which
    /// costs the server nothing and notices recovery quickly. `give_up` 15
    /// min: rides out a deploy or a router reboot, yet a failure that
    /// persists reaches the operator (and the pipeline's own, slower retry)
    /// within the quarter hour.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            give_up: Some(Duration::from_secs(15 * 60)),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay before retry `attempt` (0-based):
    /// `min(cap, base * 2^attempt)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        2u32.checked_pow(attempt)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay before retry `attempt` (0-based): a random duration in
    /// `[0, ceiling(attempt)]`, whole milliseconds, at least `retry_after`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(attempt, retry_after, &mut rand::rng())
    }

    /// [`delay`](Self::delay) with the caller's random source (for tests).
    pub fn delay_with<R: Rng + ?Sized>(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.random_range(0..=ceiling_ms));
        jittered.max(retry_after.unwrap_or_default())
    }

    /// A fresh budget for one operation, starting now.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            attempt: 0,
            started: Instant::now(),
        }
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or the
    /// policy gives up (then the last error is returned). Each retry logs one
    /// warning naming the endpoint, the attempt, the delay and the error.
    ///
    /// Use it only for operations that are safe to repeat.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut backoff = self.backoff();
        loop {
            let err = match op().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_transient() => err,
                Err(err) => return Err(err),
            };
            let Some(delay) = backoff.next_delay(err.retry_after()) else {
                return Err(err);
            };
            log_retry(err.endpoint(), backoff.attempts(), delay, &err);
            // Nothing is in flight while waiting: a stopping task need not
            // wait out the delay, and gets the last failure.
            match STOP.try_with(CancellationToken::clone) {
                Ok(stop) => tokio::select! {
                    () = stop.cancelled() => return Err(err),
                    () = tokio::time::sleep(delay) => {}
                },
                Err(_) => tokio::time::sleep(delay).await,
            }
        }
    }
}

/// The retry budget of one operation: counts attempts and watches the
/// give-up deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The policy in force.
    policy: RetryPolicy,
    /// Delays handed out so far.
    attempt: u32,
    /// When the operation began (tokio's clock, so paused-time tests work).
    started: Instant,
}

impl Backoff {
    /// The delay before the next attempt, or `None` when the policy gives up
    /// (the wait would end past `give_up`).
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let delay = self.policy.delay(self.attempt, retry_after);
        if let Some(limit) = self.policy.give_up
            && self.started.elapsed() + delay > limit
        {
            return None;
        }
        self.attempt = self.attempt.saturating_add(1);
        Some(delay)
    }

    /// Retries granted so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Time since the operation began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The one warning line per retry, and the report of it to the task's
/// [`RetryWatch`]. Never holds the key: errors do not carry it, and neither
/// do endpoints.
pub(crate) fn log_retry(what: impl fmt::Display, attempt: u32, delay: Duration, err: &ApiError) {
    tracing::warn!(
        endpoint = %what,
        attempt,
        delay = %humantime::format_duration(delay),
        "{err}; retry {attempt} in {}",
        humantime::format_duration(delay)
    );
    let retry = RequestRetry {
        endpoint: err.endpoint(),
        class: RetryClass::of(err),
        attempt,
        delay,
        error: err.to_string(),
    };
    // Outside a watched task (a CLI `check`) nobody is told: not an error.
    let _ = WATCH.try_with(|watch| watch.retrying(&retry));
}

/// PatchKit answered a request with success: a retry under way in this task,
/// if any, is over.
pub(crate) fn answered() {
    let _ = WATCH.try_with(|watch| watch.answered());
}

/// Why a request is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryClass {
    /// No connection, a timeout or stall, a broken response, 5xx or 408.
    Transient,
    /// 429: PatchKit asked us to slow down.
    RateLimited,
    /// 412 on a chunk: its bytes arrived damaged.
    ChunkMismatch,
}

impl RetryClass {
    /// Every class, for series that must exist before their first event.
    pub const ALL: [RetryClass; 3] = [
        RetryClass::Transient,
        RetryClass::RateLimited,
        RetryClass::ChunkMismatch,
    ];

    /// The class of a failure that is being retried, from its status code
    /// and kind (never from its message).
    pub fn of(err: &ApiError) -> RetryClass {
        match err.kind() {
            ErrorKind::ChunkMismatch => RetryClass::ChunkMismatch,
            _ if err.status() == Some(StatusCode::TOO_MANY_REQUESTS) => RetryClass::RateLimited,
            _ => RetryClass::Transient,
        }
    }

    /// The name in metrics and `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryClass::Transient => "transient",
            RetryClass::RateLimited => "rate_limited",
            RetryClass::ChunkMismatch => "chunk_mismatch",
        }
    }
}

/// One request that failed and is about to be sent again.
#[derive(Debug, Clone)]
pub struct RequestRetry {
    /// The endpoint called.
    pub endpoint: Endpoint,
    /// Why it is repeated.
    pub class: RetryClass,
    /// Retries of this request so far, this one included (1 = the first).
    pub attempt: u32,
    /// The wait before it is sent again.
    pub delay: Duration,
    /// The failure, as the log says it (never the key).
    pub error: String,
}

/// Told about the request retries of the task it watches (a build's worker).
pub trait RetryWatch: Send + Sync {
    /// A request failed and will be sent again after `retry.delay`.
    fn retrying(&self, retry: &RequestRetry);
    /// A request was answered with success.
    fn answered(&self);
}

tokio::task_local! {
    /// The watch of the current task. A task-local rather than a client
    /// field: one client (one connection pool) serves every build, and the
    /// retry must be told to the build that sent it.
    static WATCH: Arc<dyn RetryWatch>;
}

/// Runs `work` with `watch` told about every request retry made inside it
/// (not in tasks it spawns).
pub async fn watched<F: Future>(watch: Arc<dyn RetryWatch>, work: F) -> F::Output {
    WATCH.scope(watch, work).await
}

tokio::task_local! {
    /// Cancelled when the current task is to stop (shutdown, a cancelled
    /// build): its request retries stop waiting.
    static STOP: CancellationToken;
}

/// Runs `work` so that a request retry inside it (not in tasks it spawns)
/// stops waiting when `stop` is cancelled and returns the failure it would
/// have repeated: the caller sees a transient error and `stop` cancelled.
pub async fn stoppable<F: Future>(stop: CancellationToken, work: F) -> F::Output {
    STOP.scope(stop, work).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patchkit::{Endpoint, ErrorKind};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::cell::Cell;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            give_up: None,
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let ms: Vec<u128> = (0..8).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(p.ceiling(31), p.cap);
        assert_eq!(p.ceiling(32), p.cap);
        assert_eq!(p.ceiling(u32::MAX), p.cap);
        let huge = RetryPolicy {
            base: Duration::MAX,
            cap: Duration::MAX,
            give_up: None,
        };
        assert_eq!(huge.ceiling(3), Duration::MAX);
        let _ = huge.delay(3, None);
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_use_all_of_it() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..10 {
            let ceiling = p.ceiling(attempt);
            let delays: Vec<_> = (0..2000)
                .map(|_| p.delay_with(attempt, None, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            // Full jitter: some delays are near 0, some near the ceiling.
            assert!(delays.iter().any(|d| *d < ceiling / 10));
            assert!(delays.iter().any(|d| *d > ceiling * 9 / 10));
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..500 {
            let d = p.delay_with(0, Some(Duration::from_secs(30)), &mut rng);
            assert_eq!(d, Duration::from_secs(30));
            let d = p.delay_with(6, Some(Duration::from_secs(1)), &mut rng);
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(5));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_gives_up_before_sleeping_past_the_limit() {
        let p = RetryPolicy {
            give_up: Some(Duration::from_secs(10)),
            ..policy()
        };
        let mut b = p.backoff();
        assert!(b.next_delay(Some(Duration::from_secs(11))).is_none());
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay(Some(Duration::from_secs(9))).is_some());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(b.next_delay(Some(Duration::from_secs(2))).is_none());
        assert_eq!(b.attempts(), 1);
    }

    fn transient() -> ApiError {
        ApiError::new(
            Endpoint::GetJob,
            ErrorKind::Transient { retry_after: None },
            "timed out",
        )
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_transient_errors_until_success() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let out = policy()
            .run(|| {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 4 { Err(transient()) } else { Ok(n) } }
            })
            .await
            .unwrap();
        assert_eq!(out, 4);
        assert!(started.elapsed() <= Duration::from_millis(100 + 200 + 400));
    }

    /// Records what a watched task reports.
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<String>>);

    impl RetryWatch for Seen {
        fn retrying(&self, r: &RequestRetry) {
            self.0.lock().unwrap().push(format!(
                "{} {} {} {}",
                r.endpoint,
                r.class.as_str(),
                r.attempt,
                r.error
            ));
        }
        fn answered(&self) {
            self.0.lock().unwrap().push("answered".into());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_retry_is_reported_to_the_tasks_watch() {
        let seen = Arc::new(Seen::default());
        let calls = Cell::new(0);
        let rate_limited = || {
            ApiError::from_response(
                Endpoint::GetJob,
                StatusCode::TOO_MANY_REQUESTS,
                &reqwest::header::HeaderMap::new(),
                b"",
            )
        };
        let out = watched(
            seen.clone(),
            policy().run(|| {
                calls.set(calls.get() + 1);
                let n = calls.get();
                let err = if n == 2 { rate_limited() } else { transient() };
                async move {
                    if n < 3 {
                        Err(err)
                    } else {
                        answered();
                        Ok(n)
                    }
                }
            }),
        )
        .await
        .unwrap();
        assert_eq!(out, 3);
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[0].starts_with("GET /1/background_jobs/{guid} transient 1 "),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("GET /1/background_jobs/{guid} rate_limited 2 "),
            "{seen:?}"
        );
        assert_eq!(seen[2], "answered");
        // Outside a watched task nothing is told, and nothing breaks.
        let calls = Cell::new(0);
        policy()
            .run(|| {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 2 { Err(transient()) } else { Ok(()) } }
            })
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_at_other_errors_and_at_give_up() {
        let calls = Cell::new(0);
        let err = policy()
            .run(|| {
                calls.set(calls.get() + 1);
                async { Err::<(), _>(ApiError::new(Endpoint::GetJob, ErrorKind::NotFound, "")) }
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(calls.get(), 1);

        let p = RetryPolicy {
            give_up: Some(Duration::from_secs(60)),
            ..policy()
        };
        let started = Instant::now();
        let err = p
            .run(|| async { Err::<(), _>(transient()) })
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert!(started.elapsed() <= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_task_stops_waiting_to_retry_and_gets_the_failure() {
        let p = RetryPolicy {
            give_up: Some(Duration::from_secs(3600)),
            ..policy()
        };
        let stop = CancellationToken::new();
        let calls = Cell::new(0);
        let started = Instant::now();
        let err = stoppable(
            stop.clone(),
            p.run(|| {
                calls.set(calls.get() + 1);
                // Stopped while the first failure is being answered.
                if calls.get() == 2 {
                    stop.cancel();
                }
                async { Err::<(), _>(transient()) }
            }),
        )
        .await
        .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(calls.get(), 2, "sent again after the stop");
        // One wait (at most the 100 ms ceiling of attempt 0), not the second.
        assert!(started.elapsed() <= Duration::from_millis(100));

        // Stopped before anything: one try, no wait.
        let calls = Cell::new(0);
        let err = stoppable(
            stop.clone(),
            p.run(|| {
                calls.set(calls.get() + 1);
                async { Err::<(), _>(transient()) }
            }),
        )
        .await
        .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(calls.get(), 1);
    }
}
