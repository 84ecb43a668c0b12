//! The `/1/` endpoints of the main listener.
//!
//! Owns request validation and the JSON answers of the PatchKit API v1 as the
//! contract describes them, including the error shape shared with the other
//! sandbox modules. It does not count requests, check keys for existence or
//! inject faults (the gate does that before a handler runs), and it never
//! serves chunks (the upload listener does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Form, Json, Router};
use serde_json::{Value, json};

use super::archive;
use super::config::{ProcessingOutcome, Variant};
use super::state::{App, Job, Processing, Publish, Shared, Version};

/// An API error: a status and the `{"message", "symbol"}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    symbol: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, symbol: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            symbol,
            message: message.into(),
        }
    }

    pub fn bad_request(symbol: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, symbol, message)
    }

    pub fn forbidden(symbol: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, symbol, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"message": self.message, "symbol": self.symbol})),
        )
            .into_response()
    }
}

/// The API key a request carried, already known to be valid (the gate
/// answers 401 to an unknown one).
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Option<String>);

impl Caller {
    /// The key of a private endpoint: 401 without one.
    pub fn require(&self) -> Result<&str, ApiError> {
        self.0.as_deref().ok_or_else(|| {
            ApiError::unauthorized("this endpoint needs an API key (X-Api-Key header)")
        })
    }
}

/// A form body, urlencoded or multipart; any other content type is a 400.
pub(crate) struct FormData(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase());
        match content_type.as_deref() {
            Some(ct) if ct.starts_with("application/x-www-form-urlencoded") => {
                let Form(map) = Form::<HashMap<String, String>>::from_request(req, state)
                    .await
                    .map_err(|e| ApiError::bad_request("bad_form", e.body_text()))?;
                Ok(Self(map))
            }
            Some(ct) if ct.starts_with("multipart/form-data") => {
                let mut multipart = Multipart::from_request(req, state)
                    .await
                    .map_err(|e| ApiError::bad_request("bad_form", e.body_text()))?;
                let mut map = HashMap::new();
                while let Some(field) = multipart
                    .next_field()
                    .await
                    .map_err(|e| ApiError::bad_request("bad_form", e.body_text()))?
                {
                    let name = field.name().unwrap_or_default().to_owned();
                    let value = field
                        .text()
                        .await
                        .map_err(|e| ApiError::bad_request("bad_form", e.body_text()))?;
                    map.insert(name, value);
                }
                Ok(Self(map))
            }
            None => {
                // A bodiless POST (publish, for one) carries no content type;
                // a body without one is refused like any non-form body.
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .map_err(|e| ApiError::bad_request("bad_form", e.to_string()))?;
                if body.is_empty() {
                    Ok(Self(HashMap::new()))
                } else {
                    Err(ApiError::bad_request(
                        "bad_content_type",
                        "request body without a Content-Type: send form data",
                    ))
                }
            }
            Some(other) => Err(ApiError::bad_request(
                "bad_content_type",
                format!(
                    "unsupported Content-Type {other}: send application/x-www-form-urlencoded or multipart/form-data"
                ),
            )),
        }
    }
}

impl FormData {
    fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.0.get(name).map(|s| s.trim()) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::bad_request(
                "missing_parameter",
                format!("parameter {name} is required"),
            )),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(
                "bad_parameter",
                format!("parameter {name} must be \"true\" or \"false\", got {other:?}"),
            )),
        }
    }
}

/// The `/1/` routes of the main listener.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/1/apps", get(list_apps).post(create_app))
        .route("/1/apps/{secret}", get(get_app))
        .route(
            "/1/apps/{secret}/versions",
            get(list_versions).post(create_version),
        )
        .route(
            "/1/apps/{secret}/versions/{id}",
            get(get_version).patch(patch_version),
        )
        .route(
            "/1/apps/{secret}/versions/{id}/content_file",
            put(content_file),
        )
        .route(
            "/1/apps/{secret}/versions/{id}/publish",
            post(publish).put(publish),
        )
        .route("/1/apps/{secret}/versions/{id}/link", post(link_version))
        .route("/1/global_locks/acquire", post(acquire_lock))
        .route("/1/uploads", post(create_upload))
        .route("/1/background_jobs/{guid}", get(get_job))
}

const PLATFORMS: &[&str] = &[
    "windows_x86",
    "windows_x86_64",
    "mac_x86",
    "mac_x86_64",
    "linux_x86",
    "linux_x86_64",
    "android",
    "other",
];

fn version_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("version {raw} not found")))
}

/// The app a private endpoint works on: 401 without a key, 404 for an unknown
/// secret, 403 for someone else's app.
fn owned_app<'a>(
    apps: &'a mut std::collections::BTreeMap<String, App>,
    caller: &Caller,
    secret: &str,
) -> Result<&'a mut App, ApiError> {
    let key = caller.require()?;
    let app = apps
        .get_mut(secret)
        .ok_or_else(|| ApiError::not_found(format!("app {secret} not found")))?;
    if app.owner != key {
        return Err(ApiError::forbidden(
            "forbidden",
            format!("this API key has no access to app {secret}"),
        ));
    }
    Ok(app)
}

fn find_version<'a>(
    versions: &'a mut [Version],
    id: &str,
    secret: &str,
) -> Result<&'a mut Version, ApiError> {
    let id = version_id(id)?;
    versions
        .iter_mut()
        .find(|v| v.id == id)
        .ok_or_else(|| ApiError::not_found(format!("version {id} of app {secret} not found")))
}

async fn get_app(
    State(shared): State<Arc<Shared>>,
    Path(secret): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let state = shared.lock();
    let app = state
        .apps
        .get(&secret)
        .ok_or_else(|| ApiError::not_found(format!("app {secret} not found")))?;
    Ok(Json(app.json(state.has(Variant::SwaggerKeys))))
}

async fn list_apps(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let key = caller.require()?;
    let state = shared.lock();
    let apps: Vec<Value> = state
        .apps
        .values()
        .filter(|a| a.owner == key)
        .map(|a| a.json(state.has(Variant::SwaggerKeys)))
        .collect();
    Ok(Json(Value::Array(apps)))
}

async fn create_app(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    form: FormData,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = caller.require()?.to_owned();
    let name = form.required("name")?;
    let platform = form.required("platform")?;
    if !PLATFORMS.contains(&platform) {
        return Err(ApiError::bad_request(
            "bad_parameter",
            format!(
                "unknown platform {platform:?}; one of {}",
                PLATFORMS.join(", ")
            ),
        ));
    }
    let secret = random_hex(32);
    let mut state = shared.lock();
    let swagger = state.has(Variant::SwaggerKeys);
    let app = state.add_app(&key, &secret, name, platform);
    Ok((StatusCode::CREATED, Json(app.json(swagger))))
}

async fn list_versions(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(secret): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let state = shared.lock();
    let app = state
        .apps
        .get(&secret)
        .ok_or_else(|| ApiError::not_found(format!("app {secret} not found")))?;
    let owner = caller.0.as_deref() == Some(app.owner.as_str());
    let now = Instant::now();
    // Newest first: the contract says not to rely on the order, and a client
    // that does will notice here.
    let versions: Vec<Value> = app
        .versions
        .iter()
        .rev()
        .filter(|v| v.visible_to(owner))
        .map(|v| {
            v.json(
                now,
                &state.jobs,
                state.publish_duration,
                state.has(Variant::SwaggerKeys),
            )
        })
        .collect();
    Ok(Json(Value::Array(versions)))
}

async fn get_version(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((secret, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let state = shared.lock();
    let app = state
        .apps
        .get(&secret)
        .ok_or_else(|| ApiError::not_found(format!("app {secret} not found")))?;
    let owner = caller.0.as_deref() == Some(app.owner.as_str());
    let id = version_id(&id)?;
    let version = app
        .versions
        .iter()
        .find(|v| v.id == id && v.visible_to(owner))
        .ok_or_else(|| ApiError::not_found(format!("version {id} of app {secret} not found")))?;
    Ok(Json(version.json(
        Instant::now(),
        &state.jobs,
        state.publish_duration,
        state.has(Variant::SwaggerKeys),
    )))
}

async fn create_version(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(secret): Path<String>,
    form: FormData,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut state = shared.lock();
    let app = owned_app(&mut state.apps, &caller, &secret)?;
    let label = form.required("label")?.to_owned();
    if let Some(draft) = app.versions.iter().find(|v| v.is_draft()) {
        return Err(ApiError::forbidden(
            "draft_exists",
            format!(
                "draft version already exists (id {}, label {:?})",
                draft.id, draft.label
            ),
        ));
    }
    let id = app.versions.last().map_or(1, |v| v.id + 1);
    app.versions.push(Version {
        id,
        label,
        changelog: form.0.get("changelog").cloned().unwrap_or_default(),
        publish_when_processed: false,
        processing: Processing::None,
        publish: Publish::None,
        upload_id: None,
        content: None,
    });
    let state = &*state;
    let version = state.apps[&secret].versions.last().expect("just pushed");
    Ok((
        StatusCode::CREATED,
        Json(version.json(
            Instant::now(),
            &state.jobs,
            state.publish_duration,
            state.has(Variant::SwaggerKeys),
        )),
    ))
}

async fn patch_version(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((secret, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Json<Value>, ApiError> {
    let mut guard = shared.lock();
    let state = &mut *guard;
    let swagger = state.has(Variant::SwaggerKeys);
    let app = owned_app(&mut state.apps, &caller, &secret)?;
    let version = find_version(&mut app.versions, &id, &secret)?;
    if !version.is_draft() {
        return Err(ApiError::forbidden(
            "not_draft",
            format!(
                "version {} is not a draft and cannot be changed",
                version.id
            ),
        ));
    }
    let publish_when_processed = form.boolean("publish_when_processed")?;
    if let Some(label) = form.0.get("label") {
        if label.trim().is_empty() {
            return Err(ApiError::bad_request(
                "bad_parameter",
                "label cannot be empty",
            ));
        }
        version.label = label.clone();
    }
    if let Some(changelog) = form.0.get("changelog") {
        version.changelog = changelog.clone();
    }
    if let Some(flag) = publish_when_processed {
        version.publish_when_processed = flag;
    }
    Ok(Json(version.json(
        Instant::now(),
        &state.jobs,
        state.publish_duration,
        swagger,
    )))
}

async fn create_upload(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    form: FormData,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = caller.require()?.to_owned();
    let raw = form.required("total_size_bytes")?;
    let total: u64 = raw.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_parameter",
            format!("total_size_bytes must be a positive integer, got {raw:?}"),
        )
    })?;
    if total == 0 {
        return Err(ApiError::bad_request(
            "bad_parameter",
            "total_size_bytes must be at least 1",
        ));
    }
    let dir = shared.data_dir.clone();
    let id = shared.lock().add_upload(&key, total, &dir);
    let path = dir.join(format!("upload-{id}.bin"));
    // The file is sized up front so chunks can land at any offset.
    let file = std::fs::File::create(&path).and_then(|f| f.set_len(total));
    if let Err(e) = file {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("cannot create upload file {}: {e}", path.display()),
        ));
    }
    // The contract allows the id as an int or a numeric string; alternating
    // makes every client prove it accepts both.
    let id_json = if id % 2 == 1 {
        json!(id)
    } else {
        json!(id.to_string())
    };
    Ok((StatusCode::CREATED, Json(json!({ "id": id_json }))))
}

/// Checks that `content_file` may start; returns the upload's path.
fn check_content_file(
    state: &mut super::state::State,
    caller: &Caller,
    secret: &str,
    id: &str,
    upload_id: u64,
) -> Result<std::path::PathBuf, ApiError> {
    let key = caller.require()?.to_owned();
    let app = owned_app(&mut state.apps, caller, secret)?;
    let version = find_version(&mut app.versions, id, secret)?;
    if !version.is_draft() {
        return Err(ApiError::forbidden(
            "not_draft",
            format!("version {} is not a draft", version.id),
        ));
    }
    if version.is_running() {
        return Err(ApiError::bad_request(
            "job_running",
            format!("version {} is already being processed", version.id),
        ));
    }
    if version.is_pending() {
        return Err(ApiError::bad_request(
            "publish_pending",
            format!("version {} is being published", version.id),
        ));
    }
    let upload = state
        .uploads
        .get(&upload_id)
        .filter(|u| u.owner == key)
        .ok_or_else(|| {
            ApiError::bad_request("bad_upload", format!("upload {upload_id} not found"))
        })?;
    if !upload.complete() {
        return Err(ApiError::bad_request(
            "upload_incomplete",
            format!(
                "upload {upload_id} is incomplete: {} of {} bytes held",
                upload.ranges.iter().map(|(s, e)| e - s).sum::<u64>(),
                upload.total
            ),
        ));
    }
    Ok(upload.path.clone())
}

/// A refusal of `content_file` as this sandbox's variants word it: with
/// `content-file-404`, every refusal but a missing key is a 404 that says
/// nothing of the reason.
fn refusal<T>(state: &super::state::State, checked: Result<T, ApiError>) -> Result<T, ApiError> {
    checked.map_err(|e| {
        if state.has(Variant::ContentFile404) && e.status != StatusCode::UNAUTHORIZED {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "record_not_found",
                "Couldn't find the requested resource",
            )
        } else {
            e
        }
    })
}

async fn content_file(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((secret, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Json<Value>, ApiError> {
    let raw = form.required("upload_id")?;
    let upload_id: u64 = raw.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_parameter",
            format!("upload_id must be an integer, got {raw:?}"),
        )
    })?;
    let path = {
        let mut state = shared.lock();
        let checked = check_content_file(&mut state, &caller, &secret, &id, upload_id);
        refusal(&state, checked)?
    };
    // The file is read outside the lock: a big build must not stall every
    // other request while it is hashed.
    let analysis = tokio::task::spawn_blocking(move || archive::analyze(&path))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                format!("cannot read upload {upload_id}: {e}"),
            )
        })?;
    let mut guard = shared.lock();
    // Checked again: another request may have started a job meanwhile.
    let checked = check_content_file(&mut guard, &caller, &secret, &id, upload_id);
    refusal(&guard, checked)?;
    let guid = start_job(&mut guard, &secret, &id, Some(upload_id), analysis)?;
    Ok(Json(json!({ "job_guid": guid })))
}

/// Starts processing `analysis` as the new content of draft `id` of app
/// `secret` (already checked by the caller): a job that settles with the
/// clock, its outcome decided now by the outcome rules.
fn start_job(
    state: &mut super::state::State,
    secret: &str,
    id: &str,
    upload_id: Option<u64>,
    analysis: archive::Analysis,
) -> Result<String, ApiError> {
    let duration = state.job_duration;
    let queue = if state.has(Variant::LazyTimestamps) {
        duration / 2
    } else {
        std::time::Duration::ZERO
    };
    let app = state.apps.get_mut(secret).expect("checked by the caller");
    let version = find_version(&mut app.versions, id, secret)?;
    let outcome = super::config::rule_for(&state.outcomes, secret, &version.label).processing;
    let guid = uuid_like();
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let failure = match &outcome {
        ProcessingOutcome::JobFailure { status, message } => Some((*status, message.clone())),
        _ => None,
    };
    let previous = match &version.processing {
        Processing::Done {
            started_wall,
            finished_wall,
            ..
        } => (Some(*started_wall), Some(*finished_wall)),
        _ => (None, None),
    };
    version.upload_id = upload_id;
    version.content = None;
    if matches!(version.publish, Publish::Refused) {
        version.publish = Publish::None;
    }
    version.processing = Processing::Running {
        guid: guid.clone(),
        started,
        started_wall,
        queue,
        previous,
        analysis,
        outcome,
    };
    state.jobs.insert(
        guid.clone(),
        Job {
            guid: guid.clone(),
            started,
            started_wall,
            duration,
            queue,
            failure,
        },
    );
    Ok(guid)
}

/// `POST /1/apps/{channel}/versions/{id}/link`: gives a channel's draft the
/// content of a published version of its group app, through a job like
/// `content_file`'s.
async fn link_version(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((secret, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Json<Value>, ApiError> {
    let source = form.required("source_app_secret")?.to_owned();
    let raw = form.required("source_app_version_id")?;
    let source_id: u64 = raw.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_parameter",
            format!("source_app_version_id must be an integer, got {raw:?}"),
        )
    })?;
    let mut guard = shared.lock();
    let state = &mut *guard;
    let app = owned_app(&mut state.apps, &caller, &secret)?;
    if !app.is_channel || app.parent_group.as_ref().map(|(s, _)| s) != Some(&source) {
        return Err(ApiError::bad_request(
            "not_a_channel",
            format!("app {secret} is not a channel of app {source}"),
        ));
    }
    let version = find_version(&mut app.versions, &id, &secret)?;
    if !version.is_draft() {
        return Err(ApiError::forbidden(
            "not_draft",
            format!("version {} is not a draft", version.id),
        ));
    }
    if version.is_running() || version.is_pending() {
        return Err(ApiError::bad_request(
            "job_running",
            format!("version {} is being processed or published", version.id),
        ));
    }
    let group = state
        .apps
        .get(&source)
        .ok_or_else(|| ApiError::not_found(format!("app {source} not found")))?;
    let content = group
        .versions
        .iter()
        .find(|v| v.id == source_id)
        .filter(|v| !v.is_draft())
        .and_then(|v| v.content.clone())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_source_version",
                format!("version {source_id} of app {source} is not published"),
            )
        })?;
    let analysis = archive::Analysis {
        sha256: content.0,
        size: content.1,
        errors: Vec::new(),
    };
    let guid = start_job(state, &secret, &id, None, analysis)?;
    Ok(Json(json!({ "job_guid": guid })))
}

/// `POST /1/global_locks/acquire`: always 200, `allow` for the owner at the
/// head of the resource's queue, `deny` with the queue position otherwise.
async fn acquire_lock(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    form: FormData,
) -> Result<Json<Value>, ApiError> {
    caller.require()?;
    let resource = form.required("resource")?.to_owned();
    let owner = form.required("owner")?.to_owned();
    let mut state = shared.lock();
    if state.has(Variant::NoGlobalLock) {
        return Err(ApiError::not_found(
            "no route for POST /1/global_locks/acquire on this host",
        ));
    }
    let answer = state.locks.acquire(&resource, &owner, Instant::now());
    Ok(Json(json!({
        "status": if answer.allowed { "allow" } else { "deny" },
        "queue_position": answer.position,
        "resource": resource,
        "owner": owner,
    })))
}

async fn get_job(
    State(shared): State<Arc<Shared>>,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let state = shared.lock();
    state
        .job_json(&guid, Instant::now())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("background job {guid} not found")))
}

async fn publish(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((secret, id)): Path<(String, String)>,
    _form: FormData,
) -> Result<Json<Value>, ApiError> {
    let mut guard = shared.lock();
    let state = &mut *guard;
    let swagger = state.has(Variant::SwaggerKeys);
    let rules = state.outcomes.clone();
    let app = owned_app(&mut state.apps, &caller, &secret)?;
    let version = find_version(&mut app.versions, &id, &secret)?;
    let vid = version.id;
    match &version.publish {
        Publish::Published { .. } => {
            return Err(ApiError::forbidden(
                "already_published",
                format!("version {vid} already published"),
            ));
        }
        Publish::Scheduled { .. } => {
            return Err(ApiError::forbidden(
                "already_scheduled",
                format!("version {vid} is already scheduled for publishing"),
            ));
        }
        Publish::Pending { .. } => {
            return Err(ApiError::bad_request(
                "publish_pending",
                format!("version {vid} is already being published"),
            ));
        }
        Publish::None | Publish::Refused => {}
    }
    match &version.processing {
        Processing::None => {
            return Err(ApiError::bad_request(
                "not_processed",
                format!("version {vid} has no content: upload and process a file first"),
            ));
        }
        Processing::Running { .. } => {
            return Err(ApiError::bad_request(
                "processing",
                format!("version {vid} is still processing"),
            ));
        }
        Processing::Done {
            messages,
            has_error,
            job_failed,
            ..
        } => {
            if *job_failed || *has_error || messages.iter().any(|(s, _)| s == "error") {
                return Err(ApiError::bad_request(
                    "processing_error",
                    format!("version {vid} has processing errors and cannot be published"),
                ));
            }
        }
    }
    let outcome = super::config::rule_for(&rules, &secret, &version.label).publish;
    version.publish = Publish::Pending {
        started: Instant::now(),
        outcome,
    };
    Ok(Json(version.json(
        Instant::now(),
        &state.jobs,
        state.publish_duration,
        swagger,
    )))
}

fn random_hex(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("below 16"))
        .collect()
}

/// A random version-4-shaped UUID string, as PatchKit's job guids are.
fn uuid_like() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
