//! The JSON shapes of PatchKit API v1, as we read and send them.
//!
//! Owns deserialisation that tolerates every variant the contract lists
//! (`false`/`null` for "no version", upload ids as numbers or numeric
//! strings, `null` where an array or string is expected) and ignores unknown
//! fields, so a server that adds a field never breaks us. Knows nothing about
//! HTTP; the client turns a body into these types and back.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An application, as `GET /1/apps/{secret}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// Numeric id; the API addresses apps by `secret` instead.
    pub id: u64,
    /// The app secret: how every app endpoint names the app.
    pub secret: String,
    /// Internal name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Name shown to players, when set.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Target platform, e.g. `windows_x86_64` (kept as text: the list grows).
    #[serde(default, deserialize_with = "null_as_default")]
    pub platform: String,
    /// Id of the published version, 0 when nothing has been published.
    #[serde(default, deserialize_with = "null_as_default")]
    pub current_version: u64,
    /// Version being processed, if any (the API sends an id, `false` or `null`).
    #[serde(default, deserialize_with = "version_ref")]
    pub processing_version: Option<u64>,
    /// Version being published, if any (an id, `false` or `null`).
    #[serde(default, deserialize_with = "version_ref")]
    pub publishing_version: Option<u64>,
}

/// One version of an app, as `GET /1/apps/{secret}/versions/{id}` returns it.
///
/// The fields the pipeline decides on (`id`, `draft`, `published`,
/// `pending_publish`, `publish_time`, `has_processing_error`) must be present:
/// defaulting them would turn a changed server into a wrong decision. The rest
/// fall back to empty values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppVersion {
    /// Per-app sequential id, starting at 1.
    pub id: u64,
    /// Version label shown to players.
    #[serde(default, deserialize_with = "null_as_default")]
    pub label: String,
    /// Changelog text.
    #[serde(default, deserialize_with = "null_as_default")]
    pub changelog: String,
    /// True until the version is published; an app has at most one draft.
    #[serde(deserialize_with = "null_as_default")]
    pub draft: bool,
    /// Unix seconds of publication, 0 while draft.
    #[serde(default, deserialize_with = "null_as_default")]
    pub publish_date: i64,
    /// Publishing is in progress.
    #[serde(deserialize_with = "null_as_default")]
    pub pending_publish: bool,
    /// The version is publicly available.
    #[serde(deserialize_with = "null_as_default")]
    pub published: bool,
    /// Publishing progress, 0..1.
    #[serde(default, deserialize_with = "null_as_default")]
    pub publish_progress: f64,
    /// Unix seconds of a scheduled publication, 0 if none.
    #[serde(deserialize_with = "null_as_default")]
    pub publish_time: i64,
    /// The server publishes by itself once processing succeeds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub publish_when_processed: bool,
    /// ISO-8601 time processing started, if it has.
    #[serde(default)]
    pub processing_started_at: Option<String>,
    /// ISO-8601 time processing finished, if it has.
    #[serde(default)]
    pub processing_finished_at: Option<String>,
    /// Processing progress, 0..1.
    #[serde(default, deserialize_with = "null_as_default")]
    pub processing_progress: f64,
    /// Processing failed critically (no message comes with it).
    #[serde(deserialize_with = "null_as_default")]
    pub has_processing_error: bool,
    /// Messages from processing; `null` on the wire becomes empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub processing_messages: Vec<ProcessingMessage>,
}

/// Where a version stands in publishing, read from its fields as the
/// contract's "Publishing" section prescribes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PublishState {
    /// `published: true`.
    Published,
    /// `pending_publish: true`, with `publish_progress`.
    Publishing {
        /// 0..1.
        progress: f64,
    },
    /// Not yet public but scheduled: done from our side.
    Scheduled {
        /// Unix seconds.
        at: i64,
    },
    /// Not published, not pending, not scheduled: never asked, or refused.
    NotPublished,
}

impl AppVersion {
    /// Processing messages with severity `error`: each one blocks publishing.
    pub fn errors(&self) -> impl Iterator<Item = &ProcessingMessage> {
        self.processing_messages
            .iter()
            .filter(|m| m.severity == Severity::Error)
    }

    /// Processing messages with severity `warning`: shown, not blocking.
    pub fn warnings(&self) -> impl Iterator<Item = &ProcessingMessage> {
        self.processing_messages
            .iter()
            .filter(|m| m.severity == Severity::Warning)
    }

    /// The server recorded the end of processing. The background job is the
    /// authority while it runs; this is for reading a version afterwards.
    pub fn is_processing_done(&self) -> bool {
        self.processing_finished_at.is_some()
    }

    /// Processing left nothing that forbids publishing: no critical error and
    /// no `error` message.
    pub fn is_publishable(&self) -> bool {
        !self.has_processing_error && self.errors().next().is_none()
    }

    /// The publishing state, following the contract's rules in order.
    pub fn publish_state(&self) -> PublishState {
        if self.published {
            PublishState::Published
        } else if self.pending_publish {
            PublishState::Publishing {
                progress: self.publish_progress,
            }
        } else if self.publish_time != 0 {
            PublishState::Scheduled {
                at: self.publish_time,
            }
        } else {
            PublishState::NotPublished
        }
    }
}

/// One entry of `processing_messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessingMessage {
    /// How serious it is.
    pub severity: Severity,
    /// Text for the user.
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
}

/// Severity of a processing message. Values we do not know are kept, not
/// refused: a new severity must not make a version unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    /// `info`.
    Info,
    /// `warning`: shown to the user, does not block.
    Warning,
    /// `error`: blocks publishing.
    Error,
    /// Anything else, as sent.
    Other(String),
}

impl Severity {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Other(s) => s,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Severity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Option::<String>::deserialize(d)?.unwrap_or_default();
        Ok(match raw.to_ascii_lowercase().as_str() {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "error" => Severity::Error,
            _ => Severity::Other(raw),
        })
    }
}

/// A background job, as `GET /1/background_jobs/{guid}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    #[serde(default)]
    pub guid: Option<JobGuid>,
    /// ISO-8601 start time, if started.
    #[serde(default)]
    pub time_started: Option<String>,
    /// ISO-8601 end time, if finished.
    #[serde(default)]
    pub time_finished: Option<String>,
    /// Progress, 0..1.
    #[serde(default, deserialize_with = "null_as_default")]
    pub progress: f64,
    /// Waiting for a worker.
    #[serde(default, deserialize_with = "null_as_default")]
    pub pending: bool,
    /// The only sign that the job is done.
    #[serde(deserialize_with = "null_as_default")]
    pub finished: bool,
    /// 0 is normal; anything else is a failure explained by `status_message`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: i64,
    /// What the job is doing, or why it failed.
    #[serde(default)]
    pub status_message: Option<String>,
}

impl Job {
    /// Finished with status 0.
    pub fn succeeded(&self) -> bool {
        self.finished && self.status == 0
    }

    /// Finished with a non-zero status.
    pub fn failed(&self) -> bool {
        self.finished && self.status != 0
    }
}

/// The guid of a background job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobGuid(pub String);

impl fmt::Display for JobGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of an upload. The API sends it as a number or a numeric string;
/// both become this number. Serialises as a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UploadId(pub u64);

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for UploadId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(UploadId(n)),
            Raw::Text(s) => {
                s.trim().parse().map(UploadId).map_err(|_| {
                    serde::de::Error::custom(format!("upload id {s:?} is not a number"))
                })
            }
        }
    }
}

/// Fields to change on a version (`PATCH /1/apps/{secret}/versions/{id}`).
/// `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionPatch {
    /// New label.
    pub label: Option<String>,
    /// New changelog.
    pub changelog: Option<String>,
    /// Ask the server to publish by itself once processing succeeds.
    pub publish_when_processed: Option<bool>,
}

impl VersionPatch {
    /// The form fields to send, booleans as `"true"`/`"false"`.
    pub(crate) fn form(&self) -> Vec<(&'static str, String)> {
        let mut form = Vec::new();
        if let Some(label) = &self.label {
            form.push(("label", label.clone()));
        }
        if let Some(changelog) = &self.changelog {
            form.push(("changelog", changelog.clone()));
        }
        if let Some(flag) = self.publish_when_processed {
            form.push(("publish_when_processed", flag.to_string()));
        }
        form
    }
}

/// Body of `POST /1/uploads`.
#[derive(Debug, Deserialize)]
pub(crate) struct CreatedUpload {
    /// The new upload.
    pub id: UploadId,
}

/// Body of `PUT .../content_file`.
#[derive(Debug, Deserialize)]
pub(crate) struct StartedJob {
    /// The processing job.
    pub job_guid: JobGuid,
}

/// An error body: `{"message": ..., "symbol": ...}`, either may be missing.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    /// Human readable reason.
    #[serde(default)]
    pub message: Option<String>,
    /// Machine readable reason, when the server gives one.
    #[serde(default)]
    pub symbol: Option<String>,
}

/// `null` becomes the type's default (an empty string, 0, false, no items).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A version reference: an id, or `false`/`null` for "none".
fn version_ref<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Id(u64),
        Flag(bool),
    }
    match Option::<Raw>::deserialize(d)? {
        None | Some(Raw::Flag(false)) => Ok(None),
        Some(Raw::Id(id)) => Ok(Some(id)),
        Some(Raw::Flag(true)) => Err(serde::de::Error::custom(
            "expected a version id, false or null, found true",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app_json(processing: serde_json::Value) -> serde_json::Value {
        json!({
            "id": 7, "secret": "abc", "name": "game", "display_name": null,
            "platform": "windows_x86_64", "current_version": 0,
            "processing_version": processing, "publishing_version": processing,
            "some_future_field": {"nested": true}
        })
    }

    #[test]
    fn app_version_refs_accept_int_false_and_null() {
        for (wire, expected) in [
            (json!(3), Some(3)),
            (json!(false), None),
            (json!(null), None),
        ] {
            let app: App = serde_json::from_value(app_json(wire)).unwrap();
            assert_eq!(app.processing_version, expected);
            assert_eq!(app.publishing_version, expected);
        }
        assert!(serde_json::from_value::<App>(app_json(json!(true))).is_err());
    }

    #[test]
    fn app_from_the_guide_create_example_parses() {
        let app: App = serde_json::from_value(json!({
            "id": 1, "secret": "secret_string", "platform": "windows_x86_64", "name": "my_new_app"
        }))
        .unwrap();
        assert_eq!(app.secret, "secret_string");
        assert_eq!(app.current_version, 0);
        assert_eq!(app.processing_version, None);
    }

    fn version_json() -> serde_json::Value {
        json!({
            "id": 2, "label": "1.0", "changelog": null, "draft": true, "publish_date": 0,
            "pending_publish": false, "published": false, "publish_progress": 0,
            "publish_time": 0, "publish_when_processed": false,
            "processing_started_at": "2021-10-19T11:14:50.176Z", "processing_finished_at": null,
            "processing_progress": 0.5, "has_processing_error": false,
            "processing_messages": null, "unknown": 1
        })
    }

    #[test]
    fn version_with_nulls_parses() {
        let v: AppVersion = serde_json::from_value(version_json()).unwrap();
        assert_eq!(v.id, 2);
        assert_eq!(v.changelog, "");
        assert!(v.processing_messages.is_empty());
        assert_eq!(
            v.processing_started_at.as_deref(),
            Some("2021-10-19T11:14:50.176Z")
        );
        assert!(!v.is_processing_done());
        assert!(v.is_publishable());
        assert_eq!(v.publish_state(), PublishState::NotPublished);
    }

    #[test]
    fn version_messages_are_classified() {
        let mut raw = version_json();
        raw["processing_messages"] = json!([
            {"severity": "info", "message": "a"},
            {"severity": "warning", "message": "b"},
            {"severity": "error", "message": "c"},
            {"severity": "fatal", "message": "d"},
        ]);
        raw["processing_finished_at"] = json!("2021-10-19T11:20:00Z");
        let v: AppVersion = serde_json::from_value(raw).unwrap();
        assert_eq!(
            v.processing_messages
                .iter()
                .map(|m| m.severity.clone())
                .collect::<Vec<_>>(),
            vec![
                Severity::Info,
                Severity::Warning,
                Severity::Error,
                Severity::Other("fatal".into())
            ]
        );
        assert_eq!(
            v.errors().map(|m| m.message.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(
            v.warnings().map(|m| m.message.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(!v.is_publishable());
        assert!(v.is_processing_done());
    }

    #[test]
    fn version_without_a_decision_field_is_refused() {
        let mut raw = version_json();
        raw.as_object_mut().unwrap().remove("published");
        assert!(serde_json::from_value::<AppVersion>(raw).is_err());
    }

    #[test]
    fn publish_states_follow_the_contract() {
        let base: AppVersion = serde_json::from_value(version_json()).unwrap();
        let with = |f: &dyn Fn(&mut AppVersion)| {
            let mut v = base.clone();
            f(&mut v);
            v.publish_state()
        };
        assert_eq!(with(&|v| v.published = true), PublishState::Published);
        assert_eq!(
            with(&|v| {
                v.pending_publish = true;
                v.publish_progress = 0.25;
            }),
            PublishState::Publishing { progress: 0.25 }
        );
        assert_eq!(
            with(&|v| v.publish_time = 1_900_000_000),
            PublishState::Scheduled { at: 1_900_000_000 }
        );
    }

    #[test]
    fn upload_id_accepts_number_and_numeric_string() {
        let a: CreatedUpload = serde_json::from_str(r#"{"id": 42}"#).unwrap();
        let b: CreatedUpload = serde_json::from_str(r#"{"id": "42"}"#).unwrap();
        assert_eq!(a.id, UploadId(42));
        assert_eq!(b.id, UploadId(42));
        assert!(serde_json::from_str::<CreatedUpload>(r#"{"id": "x1"}"#).is_err());
        assert!(serde_json::from_str::<CreatedUpload>(r#"{"id": -1}"#).is_err());
        assert_eq!(serde_json::to_string(&UploadId(42)).unwrap(), "42");
    }

    #[test]
    fn job_parses_the_guide_example() {
        let job: Job = serde_json::from_value(json!({
            "guid": "5776de94-56dc-4e8a-8992-1c1d9da1410c",
            "time_started": "2021-10-19T11:14:50.176Z", "time_finished": null,
            "progress": 0.1, "pending": true, "finished": false, "status": 0,
            "status_message": "waiting for free worker..."
        }))
        .unwrap();
        assert!(!job.succeeded() && !job.failed());
        let done: Job = serde_json::from_value(json!({
            "finished": true, "status": 3, "status_message": "broken zip"
        }))
        .unwrap();
        assert!(done.failed());
        let started: StartedJob = serde_json::from_value(json!({"job_guid": "g-1"})).unwrap();
        assert_eq!(started.job_guid, JobGuid("g-1".into()));
    }

    #[test]
    fn error_body_symbol_is_optional() {
        let e: ErrorBody = serde_json::from_str(r#"{"message": "nope"}"#).unwrap();
        assert_eq!(e.message.as_deref(), Some("nope"));
        assert_eq!(e.symbol, None);
        let e: ErrorBody =
            serde_json::from_str(r#"{"message": "m", "symbol": "draft_exists", "x": 1}"#).unwrap();
        assert_eq!(e.symbol.as_deref(), Some("draft_exists"));
    }

    #[test]
    fn version_patch_sends_only_set_fields() {
        assert!(VersionPatch::default().form().is_empty());
        let patch = VersionPatch {
            label: Some("2.0".into()),
            changelog: None,
            publish_when_processed: Some(true),
        };
        assert_eq!(
            patch.form(),
            vec![
                ("label", "2.0".to_owned()),
                ("publish_when_processed", "true".to_owned())
            ]
        );
    }
}
