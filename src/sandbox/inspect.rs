//! The `/_sandbox/` inspection and control API of the main listener.
//!
//! Owns the HTTP face of what [`SandboxHandle`](super::SandboxHandle) offers
//! in Rust: the state snapshot, faults, outcome rules, accounts and apps. No
//! key is needed and no fault applies, so a test can always look and steer.
//! Bodies here are JSON: this is the sandbox's own API, not PatchKit's.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::api::ApiError;
use super::config::{FaultConfig, OutcomeRule};
use super::snapshot::Snapshot;
use super::state::Shared;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox/state", get(state))
        .route("/_sandbox/faults", put(faults))
        .route("/_sandbox/outcomes", put(outcomes))
        .route(
            "/_sandbox/accounts/{key}",
            post(add_account).delete(revoke_key),
        )
        .route("/_sandbox/apps", post(add_app))
        .route("/_sandbox/restart", post(restart))
}

async fn state(State(shared): State<Arc<Shared>>) -> Json<Snapshot> {
    Json(shared.lock().snapshot())
}

async fn faults(State(shared): State<Arc<Shared>>, Json(f): Json<FaultConfig>) -> StatusCode {
    shared.lock().set_faults(f);
    StatusCode::NO_CONTENT
}

async fn outcomes(
    State(shared): State<Arc<Shared>>,
    Json(rules): Json<Vec<OutcomeRule>>,
) -> Result<StatusCode, ApiError> {
    for rule in &rules {
        rule.validate()
            .map_err(|e| ApiError::bad_request("bad_rule", e))?;
    }
    shared.lock().outcomes = rules;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_account(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> StatusCode {
    shared.lock().accounts.insert(key);
    StatusCode::NO_CONTENT
}

async fn revoke_key(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> StatusCode {
    shared.lock().accounts.remove(&key);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    owner: String,
    secret: String,
    /// Makes it a channel app of this group app.
    #[serde(default)]
    channel_of: Option<String>,
    /// For a channel: whether it takes direct uploads.
    #[serde(default)]
    allow_channel_direct_publish: bool,
}

async fn add_app(State(shared): State<Arc<Shared>>, Json(app): Json<NewApp>) -> StatusCode {
    let mut state = shared.lock();
    match &app.channel_of {
        Some(group) => super::add_channel_app(
            &mut state,
            &app.owner,
            &app.secret,
            group,
            app.allow_channel_direct_publish,
        ),
        None => super::add_app(&mut state, &app.owner, &app.secret),
    }
    StatusCode::NO_CONTENT
}

/// `POST /_sandbox/restart`: what a restart of the service loses (all
/// drafts, uploads and jobs with the `forgetful` variant, else nothing).
async fn restart(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.lock().restart();
    StatusCode::NO_CONTENT
}
