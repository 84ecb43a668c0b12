//! The JSON shapes of PatchKit API v1, as we read and send them.
//!
//! Owns deserialisation that tolerates every variant the contract lists
//! (`false`/`null` for "no version", upload ids as numbers or numeric
//! strings, `null` where an array or string is expected) and ignores unknown
//! fields, so a server that adds a field never breaks us. Knows nothing about
//! HTTP; the client turns a body into these types and back.
//!
//! PatchKit's own 2018 Swagger file lists fewer keys than the vendor guide,
//! and the real service has never been observed directly, so a body decodes
//! whenever `id` is there. A key that only some decisions need is kept as an
//! `Option` and read through an accessor that names it when it is missing
//! ([`MissingKey`]); the stage turns that into a retried step, never a wrong
//! decision and never a failed build. What each key is needed for:
//!
//! | type       | key                            | required for                         | when absent or `null`        |
//! |------------|--------------------------------|--------------------------------------|------------------------------|
//! | App        | `id`, `name`, `platform`       | nothing (shown only)                 | 0 / empty                    |
//! | App        | `secret`                       | nothing (we address apps by ours)    | empty                        |
//! | App        | `processing_version`           | following processing after a restart | no version being processed   |
//! | App        | `publishing_version`           | nothing (shown only)                 | none                         |
//! | App        | `is_channel`                   | refusing channel apps                | not a channel                |
//! | App        | `allow_channel_direct_publish` | refusing channel apps                | not allowed                  |
//! | App        | `parent_group`                 | naming the group in the message      | unknown group                |
//! | AppVersion | `id`                           | everything                           | **body refused**             |
//! | AppVersion | `draft`                        | finding drafts, checking our version | **step retried**             |
//! | AppVersion | `published`, `pending_publish` | following a publish                  | **step retried**             |
//! | AppVersion | `has_processing_error`         | deciding a version may be published  | **step retried**             |
//! | AppVersion | `publish_time`                 | seeing a scheduled publish           | 0: not scheduled             |
//! | AppVersion | `label`, `changelog`           | matching drafts to builds            | empty                        |
//! | AppVersion | `processing_started_at`, `processing_finished_at` | following processing | not started / not finished |
//! | AppVersion | `processing_progress`          | progress shown, a hint of running    | unknown                      |
//! | AppVersion | `processing_messages`          | deciding a version may be published  | no messages                  |
//! | AppVersion | `publish_progress`, `publish_date`, `publish_when_processed` | shown | 0 / false            |
//! | message    | `severity`                     | deciding a version may be published  | unknown: **blocks**          |
//!
//! A message severity other than `info`, `warning` and `error` (or none)
//! blocks publishing like `error` and is shown with its name: a severity
//! added after the guide was written may well be worse than `error`, and a
//! build held back for a person to look at costs less than a broken build
//! published to every player.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An application, as `GET /1/apps/{secret}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// Numeric id; the API addresses apps by `secret` instead.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: u64,
    /// The app secret: how every app endpoint names the app.
    #[serde(default, deserialize_with = "null_as_default")]
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
    /// A channel app: it normally gets its versions from its group app.
    /// Absent on servers that predate channels: not a channel.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_channel: bool,
    /// A channel app that may also take uploads of its own. Absent: not
    /// allowed (the safe reading for a channel).
    #[serde(default, deserialize_with = "null_as_default")]
    pub allow_channel_direct_publish: bool,
    /// The group app a channel belongs to, when PatchKit names it.
    #[serde(default)]
    pub parent_group: Option<ParentGroup>,
}

impl App {
    /// A channel app that refuses direct uploads: PatchKit's `pkt` stops
    /// before uploading to one, and so do we.
    pub fn refuses_direct_uploads(&self) -> bool {
        self.is_channel && !self.allow_channel_direct_publish
    }
}

/// The group app of a channel app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentGroup {
    /// The group app's secret.
    #[serde(default, deserialize_with = "null_as_default")]
    pub secret: String,
    /// The group app's name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
}

/// A key a decision needs is missing from (or `null` in) a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the answer has no {0:?} key, which this step needs to decide")]
pub struct MissingKey(pub &'static str);

/// One version of an app, as `GET /1/apps/{secret}/versions/{id}` returns it.
///
/// Only `id` must be present. The keys a decision needs (`draft`,
/// `published`, `pending_publish`, `has_processing_error`) are `Option`s
/// read through accessors that report a [`MissingKey`]: defaulting them
/// would turn a changed server into a wrong decision. The rest fall back to
/// the values in the module's table.
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
    /// Read it with [`AppVersion::is_draft`].
    #[serde(default)]
    pub draft: Option<bool>,
    /// Unix seconds of publication, 0 while draft.
    #[serde(default, deserialize_with = "null_as_default")]
    pub publish_date: i64,
    /// Publishing is in progress.
    #[serde(default)]
    pub pending_publish: Option<bool>,
    /// The version is publicly available.
    #[serde(default)]
    pub published: Option<bool>,
    /// Publishing progress, 0..1.
    #[serde(default, deserialize_with = "null_as_default")]
    pub publish_progress: f64,
    /// Unix seconds of a scheduled publication, 0 if none (or absent:
    /// PatchKit's Swagger does not list it).
    #[serde(default, deserialize_with = "null_as_default")]
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
    /// Processing progress, 0..1; `None` when the server does not say.
    #[serde(default)]
    pub processing_progress: Option<f64>,
    /// Processing failed critically (no message comes with it).
    #[serde(default)]
    pub has_processing_error: Option<bool>,
    /// Messages from processing; `null` on the wire becomes empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub processing_messages: Vec<ProcessingMessage>,
}

/// Where a version stands in publishing, read from its fields as the
/// contract's "Publishing" section prescribes (`publish_time` absent counts
/// as 0, not scheduled).
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
    /// `draft`, which finding and checking drafts needs.
    pub fn is_draft(&self) -> Result<bool, MissingKey> {
        self.draft.ok_or(MissingKey("draft"))
    }

    /// A version that blocks a new draft: still a draft and neither
    /// published nor scheduled. The one definition of "open draft".
    pub fn is_open_draft(&self) -> Result<bool, MissingKey> {
        Ok(self.is_draft()? && self.published != Some(true) && self.publish_time == 0)
    }

    /// Processing messages that block publishing: severity `error`, and any
    /// severity this daemon does not know (see the module doc).
    pub fn errors(&self) -> impl Iterator<Item = &ProcessingMessage> {
        self.processing_messages
            .iter()
            .filter(|m| matches!(m.severity, Severity::Error | Severity::Other(_)))
    }

    /// Processing messages with severity `warning`: shown, not blocking.
    pub fn warnings(&self) -> impl Iterator<Item = &ProcessingMessage> {
        self.processing_messages
            .iter()
            .filter(|m| m.severity == Severity::Warning)
    }

    /// Processing left nothing that forbids publishing: no critical error and
    /// no blocking message. Needs `has_processing_error`.
    pub fn is_publishable(&self) -> Result<bool, MissingKey> {
        let critical = self
            .has_processing_error
            .ok_or(MissingKey("has_processing_error"))?;
        Ok(!critical && self.errors().next().is_none())
    }

    /// The publishing state, following the contract's rules in order. Needs
    /// `published` and `pending_publish`.
    pub fn publish_state(&self) -> Result<PublishState, MissingKey> {
        let published = self.published.ok_or(MissingKey("published"))?;
        let pending = self.pending_publish.ok_or(MissingKey("pending_publish"))?;
        Ok(if published {
            PublishState::Published
        } else if pending {
            PublishState::Publishing {
                progress: self.publish_progress,
            }
        } else if self.publish_time != 0 {
            PublishState::Scheduled {
                at: self.publish_time,
            }
        } else {
            PublishState::NotPublished
        })
    }
}

/// One entry of `processing_messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessingMessage {
    /// How serious it is.
    #[serde(default = "unknown_severity")]
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
        // A message without a severity is an unknown one: it blocks.
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

/// Body of `POST .../link`.
#[derive(Debug, Deserialize)]
pub(crate) struct LinkStarted {
    /// The job that copies the group version's content.
    pub job_guid: JobGuid,
}

/// The answer of `POST /1/global_locks/acquire` (always 200).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LockAnswer {
    /// `allow` grants the lock; anything else (`deny`, `wait`) means wait.
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
    /// Owners ahead of this one plus one, or 0 for the holder; absent on
    /// some answers.
    #[serde(default)]
    pub queue_position: Option<u64>,
}

impl LockAnswer {
    /// Whether the lock is granted. Only an explicit `allow` grants it.
    pub fn allowed(&self) -> bool {
        self.status == "allow"
    }
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

fn unknown_severity() -> Severity {
    Severity::Other(String::new())
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
        assert!(v.is_publishable().unwrap());
        assert_eq!(v.publish_state(), Ok(PublishState::NotPublished));
        assert_eq!(v.is_open_draft(), Ok(true));
    }

    #[test]
    fn version_with_only_the_swagger_keys_parses() {
        let v: AppVersion = serde_json::from_value(json!({
            "id": 3, "label": "1.0", "changelog": "", "draft": true, "publish_date": 0,
            "pending_publish": false, "published": false, "publish_progress": 0,
            "publish_when_processed": false, "processing_started_at": null,
            "processing_finished_at": null, "has_processing_error": false,
            "processing_messages": null
        }))
        .unwrap();
        assert_eq!(v.publish_time, 0, "absent publish_time: not scheduled");
        assert_eq!(v.processing_progress, None, "absent progress: unknown");
        assert!(v.processing_messages.is_empty());
        assert_eq!(v.publish_state(), Ok(PublishState::NotPublished));
        assert_eq!(v.is_publishable(), Ok(true));
    }

    #[test]
    fn a_missing_decision_key_is_named_not_defaulted() {
        let v: AppVersion = serde_json::from_value(json!({"id": 4})).unwrap();
        assert_eq!(v.is_draft(), Err(MissingKey("draft")));
        assert_eq!(v.is_open_draft(), Err(MissingKey("draft")));
        assert_eq!(v.publish_state(), Err(MissingKey("published")));
        assert_eq!(v.is_publishable(), Err(MissingKey("has_processing_error")));
        assert!(
            MissingKey("draft").to_string().contains("\"draft\""),
            "{}",
            MissingKey("draft")
        );
        assert!(serde_json::from_value::<AppVersion>(json!({"label": "x"})).is_err());
    }

    #[test]
    fn an_unknown_or_missing_severity_blocks_publishing() {
        let mut raw = version_json();
        raw["processing_messages"] = json!([{"severity": "critical", "message": "x"}]);
        let v: AppVersion = serde_json::from_value(raw).unwrap();
        assert_eq!(v.is_publishable(), Ok(false));
        let mut raw = version_json();
        raw["processing_messages"] = json!([{"message": "no severity"}]);
        let v: AppVersion = serde_json::from_value(raw).unwrap();
        assert_eq!(v.is_publishable(), Ok(false));
        let mut raw = version_json();
        raw["processing_messages"] = json!([{"severity": "Warning", "message": "w"}]);
        let v: AppVersion = serde_json::from_value(raw).unwrap();
        assert_eq!(v.is_publishable(), Ok(true));
    }

    #[test]
    fn channel_fields_are_read_and_default_to_not_a_channel() {
        let mut raw = app_json(json!(null));
        let app: App = serde_json::from_value(raw.clone()).unwrap();
        assert!(!app.is_channel && !app.refuses_direct_uploads());
        raw["is_channel"] = json!(true);
        raw["parent_group"] = json!({"secret": "grp", "name": "Group"});
        let app: App = serde_json::from_value(raw.clone()).unwrap();
        assert!(app.refuses_direct_uploads());
        assert_eq!(app.parent_group.unwrap().secret, "grp");
        raw["allow_channel_direct_publish"] = json!(true);
        let app: App = serde_json::from_value(raw).unwrap();
        assert!(!app.refuses_direct_uploads());
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
            ["c", "d"]
        );
        assert_eq!(
            v.warnings().map(|m| m.message.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(v.is_publishable(), Ok(false));
    }

    #[test]
    fn publish_states_follow_the_contract() {
        let base: AppVersion = serde_json::from_value(version_json()).unwrap();
        let with = |f: &dyn Fn(&mut AppVersion)| {
            let mut v = base.clone();
            f(&mut v);
            v.publish_state().unwrap()
        };
        assert_eq!(with(&|v| v.published = Some(true)), PublishState::Published);
        assert_eq!(
            with(&|v| {
                v.pending_publish = Some(true);
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
