//! What a webhook receives: the body of each format for a build event.
//!
//! # Payloads
//!
//! `json` posts one object with stable field names:
//!
//! ```json
//! {"event":"published","time":"2026-03-01T12:00:00Z","build":"42",
//!  "rule":"mygame-windows","app":"a1b2c3","label":"1.4.2",
//!  "state":"published","stage":"publish","version_id":12,"file":"Game.zip",
//!  "size_bytes":536870912,"size":"512 MiB","duration_seconds":372.0,
//!  "duration":"6m 12s","attempts":0,"messages":["Missing icon"],"reason":null}
//! ```
//!
//! `messages` holds the processing warnings of the state, or for a failed
//! build its reason. `reason` says why a `failed`, `stuck` or `warning` event
//! happened (`null` otherwise). `version_id` is `null` before a version
//! exists.
//!
//! `slack` posts `{"text": "..."}` and `discord` posts `{"content": "...",
//! "allowed_mentions": {"parse": []}}` (no label or message can ping
//! anyone), both a few readable lines:
//!
//! ```text
//! :white_check_mark: *mygame-windows* 1.4.2 published as version 12 (512 MiB, 6m 12s)
//! Game.zip (536870912 bytes), build 42, app a1b2c3
//! Warnings: Missing icon
//! ```

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::NotifyFormat;
use crate::observe::{BuildEvent, EventKind};
use crate::state::BuildState;

/// Discord refuses a message whose `content` is longer than this many
/// characters.
const DISCORD_LIMIT: usize = 2000;

/// Slack accepts up to 40,000 characters but asks for at most 4,000 "for best
/// results"; longer text is hard to read in a channel anyway.
const SLACK_LIMIT: usize = 4000;

/// The JSON body of the `json` format. Field names are a public contract:
/// add fields, never rename or remove them.
#[derive(Debug, Serialize)]
struct JsonPayload<'a> {
    /// `state_changed`, `published`, `failed`, `warning` or `stuck`.
    event: &'static str,
    /// When the notifier handled the event, RFC 3339 UTC.
    time: String,
    /// The build id, as a string (ids are 64-bit).
    build: String,
    /// The rule's name.
    rule: &'a str,
    /// The PatchKit app secret.
    app: &'a str,
    /// The version label.
    label: &'a str,
    /// The build's state name.
    state: &'static str,
    /// The pipeline stage the state belongs to (for `failed`, where it
    /// failed).
    stage: &'static str,
    /// The PatchKit version id, once one exists.
    version_id: Option<u64>,
    /// The ZIP's file name.
    file: String,
    /// The ZIP's size in bytes.
    size_bytes: u64,
    /// The size for people, e.g. `512 MiB`.
    size: String,
    /// Seconds from the build being taken to this event.
    duration_seconds: f64,
    /// The same for people, e.g. `6m 12s`.
    duration: String,
    /// Tries of the current (or failed) step.
    attempts: u32,
    /// Processing warnings, or the failure reason.
    messages: Vec<String>,
    /// Why a `failed`, `stuck` or `warning` event happened.
    reason: Option<&'a str>,
}

/// The body posted to a hook of `format` for `event`, as of `time`.
pub fn payload(format: NotifyFormat, event: &BuildEvent, time: SystemTime) -> Value {
    match format {
        NotifyFormat::Json => {
            serde_json::to_value(json_payload(event, time)).expect("the payload serializes")
        }
        NotifyFormat::Slack => json!({ "text": text(event, Markup::Slack) }),
        NotifyFormat::Discord => json!({
            "content": text(event, Markup::Discord),
            // Labels and messages are not ours: never let them ping a channel.
            "allowed_mentions": { "parse": [] },
        }),
    }
}

fn json_payload(event: &BuildEvent, time: SystemTime) -> JsonPayload<'_> {
    let b = &event.build;
    JsonPayload {
        event: event.kind.as_str(),
        time: humantime::format_rfc3339_seconds(time).to_string(),
        build: b.id.to_string(),
        rule: &b.rule,
        app: &b.app_secret,
        label: &b.label,
        state: b.state.name(),
        stage: b.state.stage().as_str(),
        version_id: b.state.version_id(),
        file: file_name(event),
        size_bytes: b.identity.size,
        size: human_size(b.identity.size),
        duration_seconds: event.duration_seconds,
        duration: human_duration(event.duration_seconds),
        attempts: attempts(&b.state, b.attempts),
        messages: messages(&b.state),
        reason: event.reason.as_deref(),
    }
}

/// The processing warnings of the state, or the failure reason.
fn messages(state: &BuildState) -> Vec<String> {
    match state {
        BuildState::Processed { warnings, .. }
        | BuildState::Publishing { warnings, .. }
        | BuildState::Published { warnings, .. }
        | BuildState::Scheduled { warnings, .. }
        | BuildState::Draft { warnings, .. } => warnings.clone(),
        BuildState::Failed { reason, .. } => vec![reason.clone()],
        _ => Vec::new(),
    }
}

/// A failed state counts the failing stage's tries itself; otherwise the
/// record's counter of the current step holds them.
fn attempts(state: &BuildState, recorded: u32) -> u32 {
    match state {
        BuildState::Failed { attempts, .. } => *attempts,
        _ => recorded,
    }
}

fn file_name(event: &BuildEvent) -> String {
    let file = &event.build.file;
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string())
}

/// `512 MiB`, `1.5 GiB`, `900 B`: binary units, one decimal at most.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// `6m 12s`: whole seconds.
fn human_duration(seconds: f64) -> String {
    let secs = if seconds.is_finite() && seconds > 0.0 {
        seconds.round() as u64
    } else {
        0
    };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Chat markup: how to embolden, what to escape, how long a message may be.
#[derive(Debug, Clone, Copy)]
enum Markup {
    Slack,
    Discord,
}

impl Markup {
    fn bold(self, s: &str) -> String {
        match self {
            Markup::Slack => format!("*{}*", self.escape(s)),
            Markup::Discord => format!("**{}**", self.escape(s)),
        }
    }

    /// Text from outside (labels, file names, PatchKit's messages) shown as
    /// is: Slack needs `&`, `<` and `>` escaped (its link and mention
    /// syntax); Discord's markdown characters are backslash-escaped.
    fn escape(self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match (self, c) {
                (Markup::Slack, '&') => out.push_str("&amp;"),
                (Markup::Slack, '<') => out.push_str("&lt;"),
                (Markup::Slack, '>') => out.push_str("&gt;"),
                (Markup::Discord, '\\' | '*' | '_' | '~' | '`' | '|' | '>') => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        out
    }

    fn limit(self) -> usize {
        match self {
            Markup::Slack => SLACK_LIMIT,
            Markup::Discord => DISCORD_LIMIT,
        }
    }
}

/// The chat message: a headline, a details line, and the messages if any.
fn text(event: &BuildEvent, m: Markup) -> String {
    let b = &event.build;
    let who = format!("{} {}", m.bold(&b.rule), m.escape(&b.label));
    let facts = format!(
        "{}, {}",
        human_size(b.identity.size),
        human_duration(event.duration_seconds)
    );
    let version = b
        .state
        .version_id()
        .map(|v| format!(" as version {v}"))
        .unwrap_or_default();
    let reason = event.reason.as_deref().unwrap_or("");
    let headline = match (event.kind, &b.state) {
        (EventKind::Published, BuildState::Scheduled { publish_time, .. }) => format!(
            ":calendar: {who} scheduled{version} for {} ({facts})",
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(*publish_time)
            )
        ),
        (EventKind::Published, _) => {
            format!(":white_check_mark: {who} published{version} ({facts})")
        }
        (EventKind::Failed, state) => format!(
            ":x: {who} failed in {} after {} attempt(s) ({facts})",
            state.stage(),
            attempts(state, b.attempts)
        ),
        (EventKind::Warning, state) => format!(
            ":warning: {who} processed{version} with {} warning(s)",
            messages(state).len()
        ),
        (EventKind::Stuck, _) => format!(":hourglass: {who} is stuck: {}", m.escape(reason)),
        (EventKind::StateChanged, state) => {
            format!(
                ":arrow_forward: {who}: {} ({facts})",
                m.escape(&state.to_string())
            )
        }
    };
    let mut lines = vec![
        headline,
        format!(
            "{} ({} bytes), build {}, app {}",
            m.escape(&file_name(event)),
            b.identity.size,
            b.id,
            m.escape(&b.app_secret)
        ),
    ];
    let said = messages(&b.state);
    if !said.is_empty() {
        let said: Vec<String> = said.iter().map(|s| m.escape(s)).collect();
        let title = if matches!(b.state, BuildState::Failed { .. }) {
            "Error"
        } else {
            "Warnings"
        };
        lines.push(format!("{title}: {}", said.join("; ")));
    }
    truncate(lines.join("\n"), m.limit())
}

/// At most `limit` characters, the last an ellipsis when cut.
fn truncate(text: String, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text;
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(900), "900 B");
        assert_eq!(human_size(512 * 1024 * 1024), "512 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("ééé".into(), 3), "ééé");
        assert_eq!(truncate("éééé".into(), 3), "éé…");
    }
}
