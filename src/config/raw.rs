//! The config file as written: serde types with `deny_unknown_fields`.
//!
//! Every field is optional and spanned, so that the validation in
//! `config::validate` can say which are missing and point at the line of a
//! bad value. Nothing here checks meaning; that is the validator's job.

use serde::Deserialize;
use toml::Spanned;

/// `[patchkit]`: where the API is and where the key comes from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatchkit {
    pub api_url: Option<Spanned<String>>,
    pub upload_url: Option<Spanned<String>>,
    pub api_key_env: Option<Spanned<String>>,
    pub api_key_file: Option<Spanned<String>>,
    pub allow_insecure_http: Option<Spanned<bool>>,
    pub request_timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub stall_timeout: Option<Spanned<String>>,
    pub retry_base: Option<Spanned<String>>,
    pub retry_cap: Option<Spanned<String>>,
    pub retry_give_up: Option<Spanned<String>>,
    pub global_lock: Option<Spanned<bool>>,
    pub lock_refresh: Option<Spanned<String>>,
}

/// `[daemon]`: how the daemon runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    pub chunk_size: Option<Spanned<String>>,
    pub settle: Option<Spanned<String>>,
    pub rescan: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub poll_interval: Option<Spanned<String>>,
    pub auth_retry: Option<Spanned<String>>,
    pub stuck_after: Option<Spanned<String>>,
    pub keep_finished: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub log_dir: Option<Spanned<String>>,
    pub log_keep: Option<Spanned<i64>>,
    pub metrics: Option<Spanned<String>>,
}

/// One `[[rule]]`: a watched folder and what to do with the builds in it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub folder: Option<Spanned<String>>,
    pub pattern: Option<Spanned<String>>,
    pub app_secret: Option<Spanned<String>>,
    pub label: Option<Spanned<String>>,
    pub publish: Option<Spanned<bool>>,
    pub existing_draft: Option<Spanned<String>>,
    pub recursive: Option<Spanned<bool>>,
    pub poll: Option<Spanned<String>>,
    pub settle: Option<Spanned<String>>,
    pub ignore: Option<Spanned<Vec<String>>>,
    pub filename_regex: Option<Spanned<String>>,
    pub changelog: Option<Spanned<String>>,
    pub changelog_file: Option<Spanned<String>>,
    pub after_publish: Option<Spanned<String>>,
    pub done_folder: Option<Spanned<String>>,
    pub on_failure: Option<Spanned<String>>,
    pub failed_folder: Option<Spanned<String>>,
    pub channels: Option<Spanned<Vec<String>>>,
}

/// One `[[notify]]`: a webhook and the events it wants.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub url: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub events: Option<Spanned<Vec<String>>>,
    pub rules: Option<Spanned<Vec<String>>>,
}
