//! The inspection data tests assert on.
//!
//! Owns the plain, serializable picture of a sandbox at one instant: apps and
//! their versions, uploads, request counts and key placement. It is built by
//! the state module and served as JSON by `/_sandbox/state`; it holds no
//! references into the live state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A sandbox's state at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every app, in secret order.
    pub apps: Vec<AppInfo>,
    /// Every upload, in id order.
    pub uploads: Vec<UploadInfo>,
    /// Requests per `"METHOD /route/{template}"`, then per status code (or
    /// `"dropped"` for a connection the fault injector closed).
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests that carried the key in the `X-Api-Key` header.
    pub key_in_header: u64,
    /// Requests that carried the key in the `api_key` query parameter.
    pub key_in_url: u64,
    /// How often each fault fired.
    pub faults: FaultCounts,
    /// PatchKit's global lock: every resource somebody queues for.
    #[serde(default)]
    pub locks: Vec<super::locks::LockInfo>,
}

/// How often each injected fault fired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Connections closed before the handler ran.
    pub dropped_before: u64,
    /// Connections closed after the handler ran.
    pub dropped_after: u64,
    /// Injected 500 and 503 answers.
    pub injected_5xx: u64,
    /// Injected 412 answers to good chunks.
    pub injected_412: u64,
}

/// One app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppInfo {
    /// The app's secret.
    pub secret: String,
    /// The API key that owns it.
    pub owner: String,
    /// Its name.
    pub name: String,
    /// The id of the version published last, 0 for none.
    pub current_version: u64,
    /// Its versions in id order.
    pub versions: Vec<VersionInfo>,
}

/// One version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Per-app sequential id.
    pub id: u64,
    /// Label.
    pub label: String,
    /// Changelog.
    pub changelog: String,
    /// Still a draft (neither published nor scheduled).
    pub draft: bool,
    /// Published.
    pub published: bool,
    /// Scheduled for a future `publish_time`.
    pub scheduled: bool,
    /// A publish is in progress.
    pub pending_publish: bool,
    /// Unix seconds of a scheduled publish, 0 for none.
    pub publish_time: u64,
    /// Whether the server publishes it once processing succeeds.
    pub publish_when_processed: bool,
    /// Processing has finished (successfully or not).
    pub processed: bool,
    /// `has_processing_error` as the API shows it.
    pub has_processing_error: bool,
    /// Processing messages as `(severity, message)`.
    pub processing_messages: Vec<(String, String)>,
    /// SHA-256 of the processed content, once processing finished.
    pub content_sha256: Option<String>,
    /// Size of the processed content, once processing finished.
    pub content_size: Option<u64>,
    /// The upload last attached with `content_file`.
    pub upload_id: Option<u64>,
}

/// One upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// Upload id.
    pub id: u64,
    /// `total_size_bytes` given at creation.
    pub total: u64,
    /// Bytes of all accepted chunks, counting repeats.
    pub received: u64,
    /// Bytes accepted that overlapped bytes already held.
    pub received_twice: u64,
    /// Every byte of `[0, total)` has arrived.
    pub complete: bool,
}

impl Snapshot {
    /// The app with this secret.
    pub fn app(&self, secret: &str) -> Option<&AppInfo> {
        self.apps.iter().find(|a| a.secret == secret)
    }

    /// The versions of an app in id order; empty for an unknown app.
    pub fn versions(&self, secret: &str) -> &[VersionInfo] {
        self.app(secret).map_or(&[], |a| a.versions.as_slice())
    }

    /// One version of an app.
    pub fn version(&self, secret: &str, id: u64) -> Option<&VersionInfo> {
        self.versions(secret).iter().find(|v| v.id == id)
    }

    /// The upload with this id.
    pub fn upload(&self, id: u64) -> Option<&UploadInfo> {
        self.uploads.iter().find(|u| u.id == id)
    }

    /// How many requests to `route` ended with `status` (`"201"`,
    /// `"dropped"`...).
    pub fn count(&self, route: &str, status: &str) -> u64 {
        self.requests
            .get(route)
            .and_then(|s| s.get(status))
            .copied()
            .unwrap_or(0)
    }

    /// How many requests to `route` arrived, whatever their outcome.
    pub fn total(&self, route: &str) -> u64 {
        self.requests.get(route).map_or(0, |s| s.values().sum())
    }
}
