//! The retry policy, in one place: what happens to a build after a step
//! failed.
//!
//! - Transient failures (no connection, timeouts, 5xx, 429, a busy app, a
//!   file share hiccup) are retried with capped exponential backoff and
//!   full jitter, without giving up: PatchKit answering 500 for an hour
//!   delays the build by an hour, it does not fail it. The attempt count and
//!   the next try time are written to the build record.
//! - 401 pauses every build (they share the key) until the key works again.
//! - Anything else is permanent: the build fails with the server's message,
//!   and a person retries it once the cause is fixed. The stages have
//!   already looked up what they can (a 403 on create version, a forgotten
//!   version or upload), so what reaches here is what they could not
//!   explain. Only a 404 on `GET /1/apps/{secret}` blames the app secret.
//!
//! Knows error classes and delays; nothing about HTTP or sled.

use std::time::Duration;

use crate::patchkit::{Endpoint, ErrorKind, RetryPolicy};
use crate::stages::StepError;

/// What to do with a build whose step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try the step again after this delay.
    Retry(Duration),
    /// The API key was refused: pause every build.
    PauseForKey,
    /// Give up: the build fails with this reason.
    Fail(String),
    /// Nothing to record: the build stopped (shutdown, cancel) or the store
    /// failed, and the daemon decides.
    Stop,
}

/// Decides about a failed step; `attempts` counts earlier failed tries of
/// the same step (0 on the first failure).
pub fn decide(err: &StepError, attempts: u32, retry: &RetryPolicy) -> Decision {
    match err {
        StepError::Api(e) => match e.kind() {
            ErrorKind::Transient { retry_after } => {
                Decision::Retry(retry.delay(attempts, retry_after))
            }
            // The client already resent the chunk several times; the cause
            // is likely on the path (a proxy, a flaky link), so wait first.
            ErrorKind::ChunkMismatch => Decision::Retry(retry.delay(attempts, None)),
            ErrorKind::Unauthorized => Decision::PauseForKey,
            ErrorKind::Forbidden
            | ErrorKind::NotFound
            | ErrorKind::BadRequest
            | ErrorKind::Protocol => Decision::Fail(permanent_reason(e)),
        },
        StepError::Io(_) | StepError::Busy(_) => Decision::Retry(retry.delay(attempts, None)),
        StepError::Fail { reason, .. } => Decision::Fail(reason.clone()),
        StepError::Store(_) | StepError::Cancelled | StepError::Waiting(_) => Decision::Stop,
    }
}

/// The operator's message for a permanent API failure: what PatchKit said
/// and what to look at.
fn permanent_reason(e: &crate::patchkit::ApiError) -> String {
    let hint = match e.kind() {
        ErrorKind::Forbidden => "PatchKit refused the action for this API key",
        ErrorKind::NotFound if e.endpoint() == Endpoint::GetApp => {
            "check the rule's app_secret: PatchKit has no app with that secret"
        }
        ErrorKind::NotFound => "PatchKit no longer has what this step refers to",
        ErrorKind::BadRequest => "PatchKit refused the request as invalid",
        _ => "PatchKit answered something this daemon cannot read; check api_url",
    };
    format!("{e} ({hint})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patchkit::{ApiError, Endpoint};
    use crate::state::Stage;

    fn api(kind: ErrorKind) -> StepError {
        StepError::Api(ApiError::new(Endpoint::GetVersion, kind, "server says no"))
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            give_up: None,
        }
    }

    #[test]
    fn transient_failures_retry_within_the_cap_forever() {
        for attempts in [0, 1, 5, 50, 10_000] {
            match decide(
                &api(ErrorKind::Transient { retry_after: None }),
                attempts,
                &policy(),
            ) {
                Decision::Retry(d) => assert!(d <= Duration::from_secs(60), "{d:?}"),
                other => panic!("attempt {attempts}: {other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let err = api(ErrorKind::Transient {
            retry_after: Some(Duration::from_secs(30)),
        });
        match decide(&err, 0, &policy()) {
            Decision::Retry(d) => assert!(d >= Duration::from_secs(30), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_missing_app_blames_the_secret() {
        let on = |endpoint| {
            decide(
                &StepError::Api(ApiError::new(endpoint, ErrorKind::NotFound, "nope")),
                0,
                &policy(),
            )
        };
        match on(Endpoint::GetApp) {
            Decision::Fail(r) => assert!(r.contains("app_secret"), "{r}"),
            other => panic!("{other:?}"),
        }
        for endpoint in [
            Endpoint::GetVersion,
            Endpoint::StartProcessing,
            Endpoint::GetJob,
        ] {
            match on(endpoint) {
                Decision::Fail(r) => assert!(!r.contains("app_secret"), "{r}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unauthorized_pauses_and_permanent_errors_fail_with_the_message() {
        assert_eq!(
            decide(&api(ErrorKind::Unauthorized), 0, &policy()),
            Decision::PauseForKey
        );
        for kind in [
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::BadRequest,
            ErrorKind::Protocol,
        ] {
            match decide(&api(kind), 0, &policy()) {
                Decision::Fail(reason) => assert!(reason.contains("server says no"), "{reason}"),
                other => panic!("{kind:?}: {other:?}"),
            }
        }
        let fail = StepError::Fail {
            stage: Stage::Check,
            reason: "bad zip".into(),
        };
        assert_eq!(
            decide(&fail, 3, &policy()),
            Decision::Fail("bad zip".into())
        );
        assert_eq!(decide(&StepError::Cancelled, 0, &policy()), Decision::Stop);
    }
}
