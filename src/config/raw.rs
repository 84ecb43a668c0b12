//! The config file as written: serde types with `deny_unknown_fields`.
//!
//! Every field is optional and spanned, so that the validation in
//! `config::validate` can say which are missing and point at the line of a
//! bad value. Nothing here checks meaning; that is the validator's job.

use serde::Deserialize;
use toml::Spanned;

use super::problems::Expected;

/// How a person writes a duration, for type errors.
const DURATION: &str = "a duration in quotes, such as \"30s\" or \"2m 30s\"";
/// How a person writes a path.
const PATH: &str = "a path in quotes, such as \"/srv/builds/mygame\"";
/// How a person writes a yes/no setting.
const BOOL: &str = "true or false (without quotes)";

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
    pub panel_url: Option<Spanned<String>>,
}

impl Expected for RawPatchkit {
    fn expected(key: &str) -> Option<&'static str> {
        Some(match key {
            "api_url" | "upload_url" => "a URL in quotes, such as \"https://api2.patchkit.net\"",
            "api_key_env" => {
                "the name of an environment variable in quotes, such as \"PATCHKIT_API_KEY\""
            }
            "api_key_file" => PATH,
            "allow_insecure_http" => BOOL,
            "request_timeout" | "connect_timeout" | "stall_timeout" | "retry_base"
            | "retry_cap" => DURATION,
            "retry_give_up" => "a duration in quotes, such as \"2m\", or \"never\"",
            _ => return None,
        })
    }
}

impl Expected for RawDaemon {
    fn expected(key: &str) -> Option<&'static str> {
        Some(match key {
            "state_dir" | "log_dir" => PATH,
            "workers" => "a whole number from 1 to 64, such as 2 (without quotes)",
            "log_keep" => "a whole number of daily files, such as 14 (without quotes)",
            "chunk_size" => "a size in quotes, such as \"10MiB\"",
            "settle" | "rescan" | "shutdown_timeout" | "poll_interval" | "auth_retry"
            | "stuck_after" | "keep_finished" => DURATION,
            "log_level" => "a log level in quotes, such as \"info\" or \"debug\"",
            "metrics" => "an address in quotes, such as \"127.0.0.1:9464\"",
            _ => return None,
        })
    }
}

impl Expected for RawRule {
    fn expected(key: &str) -> Option<&'static str> {
        Some(match key {
            "name" => "a name in quotes, such as \"mygame-windows\"",
            "folder" | "done_folder" | "failed_folder" => PATH,
            "pattern" => "a file name pattern in quotes, such as \"*.zip\"",
            "app_secret" => "the app's secret in quotes, as the PatchKit panel shows it",
            "label" | "changelog" => "a template in quotes, such as \"{stem}\"",
            "changelog_file" => "a file name template in quotes, such as \"{stem}.changelog.md\"",
            "publish" | "recursive" => BOOL,
            "existing_draft" => "\"fail\" or \"take_over\"",
            "poll" | "settle" => DURATION,
            "ignore" => "a list of file name patterns, such as [\"*.part\", \".*\"]",
            "filename_regex" => "a regular expression in quotes, such as '^MyGame-.*\\.zip$'",
            "after_publish" => "\"keep\", \"delete\" or \"move\"",
            "on_failure" => "\"keep\" or \"move\"",
            _ => return None,
        })
    }
}

impl Expected for RawNotify {
    fn expected(key: &str) -> Option<&'static str> {
        Some(match key {
            "url" => "a webhook URL in quotes, such as \"https://hooks.slack.com/services/...\"",
            "format" => "\"json\", \"slack\" or \"discord\"",
            "events" => "a list of event names, such as [\"published\", \"failed\"]",
            "rules" => "a list of rule names, such as [\"mygame-windows\"]",
            "panel_url" => "a URL in quotes, such as \"https://panel.patchkit.net\"",
            _ => return None,
        })
    }
}
