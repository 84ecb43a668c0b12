//! What happens to every `/1/` request before and after its handler.
//!
//! Owns request counting (per route template and status), recording where the
//! key came from, refusing unknown keys, and the injected faults: latency,
//! 5xx answers and dropped connections. Fault draws come from one seeded RNG
//! and every request makes the same draws whatever the configuration, so a
//! sequential client meets the same faults on every run. Knows nothing about
//! what the endpoints do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::api::{ApiError, Caller};
use super::chunks::Chunk412;
use super::config::Variant;
use super::state::{Shared, State as SandboxState};

/// Closes the connection a request arrived on (set per connection by the
/// server).
#[derive(Debug, Clone)]
pub(crate) struct ConnKill(pub CancellationToken);

/// The fault decisions for one request.
struct Draws {
    delay: Duration,
    drop_before: bool,
    fail: Option<StatusCode>,
    drop_after: bool,
    chunk_412: bool,
}

impl Draws {
    fn new(state: &mut SandboxState) -> Self {
        let f = state.faults.clone();
        let rng = &mut state.fault_rng;
        let jitter: f64 = rng.random();
        let drop_before = rng.random::<f64>() < f.drop_before;
        let fail = rng.random::<f64>() < f.fail_5xx;
        let which: bool = rng.random();
        let drop_after = rng.random::<f64>() < f.drop_after;
        let chunk_412 = rng.random::<f64>() < f.chunk_412;
        Self {
            delay: f.latency + f.jitter.mul_f64(jitter),
            drop_before,
            fail: fail.then_some(if which {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }),
            drop_after,
            chunk_412,
        }
    }
}

/// The route template of a path the router matched: the segment after each
/// collection name is its parameter.
fn template(path: &str) -> String {
    let mut out = Vec::new();
    let mut previous = "";
    for segment in path.split('/') {
        out.push(match previous {
            "apps" => "{secret}",
            "versions" | "uploads" => "{id}",
            "background_jobs" => "{guid}",
            _ => segment,
        });
        previous = segment;
    }
    out.join("/")
}

pub(crate) fn record(state: &mut SandboxState, route: &str, status: &str) {
    *state
        .stats
        .requests
        .entry(route.to_owned())
        .or_default()
        .entry(status.to_owned())
        .or_default() += 1;
}

/// The endpoints that need no key.
fn is_public(route: &str) -> bool {
    route == "GET /1/apps/{secret}" || route == "GET /1/background_jobs/{guid}"
}

/// The middleware on every `/1/` route of both listeners.
pub(crate) async fn gate(
    State(shared): State<Arc<Shared>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = format!("{} {}", req.method(), template(req.uri().path()));
    let header_key = req
        .headers()
        .get("x-api-key")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let url_key = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .and_then(|Query(q)| q.get("api_key").cloned());
    let mut key = header_key.clone().or(url_key.clone());
    let kill = req.extensions().get::<ConnKill>().cloned();

    let (draws, key_known, forbid) = {
        let mut state = shared.lock();
        state.stats.key_in_header += u64::from(header_key.is_some());
        state.stats.key_in_url += u64::from(url_key.is_some());
        let mut known = key.as_ref().is_none_or(|k| state.accounts.contains(k));
        // The Swagger's "API key invalid or draft version already exists":
        // such a server answers a wrong key on version endpoints with 403,
        // and ignores it on public endpoints ("passing API Key to these
        // endpoints won't harm", the guide says).
        let lenient = state.has(Variant::Forbidden403);
        let forbid = lenient && route.contains("/versions");
        if lenient && !known && is_public(&route) {
            key = None;
            known = true;
        }
        (Draws::new(&mut state), known, forbid)
    };

    if !draws.delay.is_zero() {
        tokio::time::sleep(draws.delay).await;
    }
    if draws.drop_before {
        {
            let mut state = shared.lock();
            record(&mut state, &route, "dropped");
            state.stats.faults.dropped_before += 1;
        }
        return drop_connection(kill).await;
    }
    if let Some(status) = draws.fail {
        // The body is read first so a client still sending a chunk gets the
        // answer rather than a reset.
        let _ = axum::body::to_bytes(req.into_body(), usize::MAX).await;
        {
            let mut state = shared.lock();
            record(&mut state, &route, status.as_str());
            state.stats.faults.injected_5xx += 1;
        }
        return ApiError::new(
            status,
            "unavailable",
            format!("injected fault: {status}, try again"),
        )
        .into_response();
    }
    if !key_known && forbid {
        let _ = axum::body::to_bytes(req.into_body(), usize::MAX).await;
        record(&mut shared.lock(), &route, "403");
        return ApiError::forbidden(
            "forbidden",
            "API key invalid or draft version already exists",
        )
        .into_response();
    }
    if !key_known {
        let _ = axum::body::to_bytes(req.into_body(), usize::MAX).await;
        record(&mut shared.lock(), &route, "401");
        return ApiError::unauthorized("unknown API key").into_response();
    }

    req.extensions_mut().insert(Caller(key));
    req.extensions_mut().insert(Chunk412(draws.chunk_412));
    let response = next.run(req).await;

    if draws.drop_after {
        {
            let mut state = shared.lock();
            record(&mut state, &route, "dropped");
            state.stats.faults.dropped_after += 1;
        }
        return drop_connection(kill).await;
    }
    record(&mut shared.lock(), &route, response.status().as_str());
    response
}

/// Closes the connection without writing a byte of the response: the server
/// drops the connection when its token fires, and this future never resolves
/// so nothing races it onto the wire.
async fn drop_connection(kill: Option<ConnKill>) -> Response {
    match kill {
        Some(kill) => {
            kill.0.cancel();
            std::future::pending().await
        }
        None => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot drop a connection the sandbox does not serve",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn templates() {
        assert_eq!(super::template("/1/apps"), "/1/apps");
        assert_eq!(
            super::template("/1/apps/s3/versions/2/publish"),
            "/1/apps/{secret}/versions/{id}/publish"
        );
        assert_eq!(
            super::template("/1/uploads/7/chunk"),
            "/1/uploads/{id}/chunk"
        );
    }
}
