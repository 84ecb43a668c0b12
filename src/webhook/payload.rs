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
//!  "duration":"6m 12s","attempts":0,"messages":["Missing icon"],"reason":null,
//!  "host":"build-1","app_name":"My Game","app_url":"https://panel.patchkit.net/apps/7"}
//! ```
//!
//! `messages` holds the processing warnings of the state, or for a failed
//! build its reason. `reason` says why a `failed`, `stuck` or `warning` event
//! happened (`null` otherwise). `version_id` is `null` before a version
//! exists. `app_name` and `app_url` are `null` until PatchKit has told this
//! daemon about the app. Control characters in text from outside (labels,
//! file names, messages) are escaped (`\n`), in every format.
//!
//! `slack` posts a headline as `text` and one attachment whose `color` says
//! the outcome (published green, failed red, warning and stuck amber) around
//! Block Kit blocks: the facts as fields, the messages, and a context line
//! with the build, the host and a link to the app in PatchKit's panel.
//! `discord` posts one embed: the headline as its title (linking to the app),
//! a colour, the messages as its description, the facts as inline fields,
//! the host in its footer; `allowed_mentions` is empty, so no label or
//! message can ping anyone.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::NotifyFormat;
use crate::observe::{BuildEvent, EventKind};
use crate::state::BuildState;
use crate::text::escaped;

/// What the message says around a build event that the build record does
/// not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The host name of the machine the daemon runs on.
    pub host: String,
    /// The app's name, when PatchKit has told us.
    pub app_name: Option<String>,
    /// The app's page in PatchKit's panel, when its id is known.
    pub app_url: Option<String>,
}

/// Discord's limits on an embed, in characters: a longer part gets the
/// whole message refused.
mod discord {
    pub const TITLE: usize = 256;
    pub const DESCRIPTION: usize = 4096;
    pub const FIELD_VALUE: usize = 1024;
    pub const FOOTER: usize = 2048;
}

/// Slack's limits on a block's text, in characters: a `section` text takes
/// 3000, a field 2000; the top-level `text` is read in a notification, so
/// it stays short.
mod slack {
    pub const SECTION: usize = 3000;
    pub const FIELD: usize = 2000;
    pub const HEADLINE: usize = 300;
}

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
    label: String,
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
    reason: Option<String>,
    /// The host name of the machine the daemon runs on.
    host: &'a str,
    /// The app's name, once PatchKit has told us.
    app_name: Option<&'a str>,
    /// The app's page in PatchKit's panel, once its id is known.
    app_url: Option<&'a str>,
}

/// How an event looks in chat: its colour and mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Published,
    Scheduled,
    Failed,
    Warning,
    Stuck,
    Changed,
}

impl Outcome {
    fn of(event: &BuildEvent) -> Outcome {
        match (event.kind, &event.build.state) {
            (EventKind::Published, BuildState::Scheduled { .. }) => Outcome::Scheduled,
            (EventKind::Published, _) => Outcome::Published,
            (EventKind::Failed, _) => Outcome::Failed,
            (EventKind::Warning, _) => Outcome::Warning,
            (EventKind::Stuck, _) => Outcome::Stuck,
            (EventKind::StateChanged, _) => Outcome::Changed,
        }
    }

    /// The colour as `0xRRGGBB`: Slack's own green, red and amber, a blue
    /// for a publish that waits for its time, grey for a plain change.
    fn rgb(self) -> u32 {
        match self {
            Outcome::Published => 0x2eb67d,
            Outcome::Scheduled => 0x36c5f0,
            Outcome::Failed => 0xe01e5a,
            Outcome::Warning | Outcome::Stuck => 0xecb22e,
            Outcome::Changed => 0x868686,
        }
    }

    /// Slack's emoji short name (Slack turns it into the emoji).
    fn slack_mark(self) -> &'static str {
        match self {
            Outcome::Published => ":white_check_mark:",
            Outcome::Scheduled => ":calendar:",
            Outcome::Failed => ":x:",
            Outcome::Warning => ":warning:",
            Outcome::Stuck => ":hourglass:",
            Outcome::Changed => ":arrow_forward:",
        }
    }

    /// The emoji itself: Discord does not expand short names in embeds.
    fn emoji(self) -> &'static str {
        match self {
            Outcome::Published => "✅",
            Outcome::Scheduled => "📅",
            Outcome::Failed => "❌",
            Outcome::Warning => "⚠️",
            Outcome::Stuck => "⏳",
            Outcome::Changed => "▶️",
        }
    }
}

/// The body posted to a hook of `format` for `event`, as of `time`.
pub fn payload(format: NotifyFormat, event: &BuildEvent, time: SystemTime, facts: &Facts) -> Value {
    match format {
        NotifyFormat::Json => {
            serde_json::to_value(json_payload(event, time, facts)).expect("the payload serializes")
        }
        NotifyFormat::Slack => slack_payload(event, facts),
        NotifyFormat::Discord => discord_payload(event, time, facts),
    }
}

fn json_payload<'a>(event: &'a BuildEvent, time: SystemTime, facts: &'a Facts) -> JsonPayload<'a> {
    let b = &event.build;
    JsonPayload {
        event: event.kind.as_str(),
        time: humantime::format_rfc3339_seconds(time).to_string(),
        build: b.id.to_string(),
        rule: &b.rule,
        app: &b.app_secret,
        label: escaped(&b.label).into_owned(),
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
        reason: event.reason.as_deref().map(|r| escaped(r).into_owned()),
        host: &facts.host,
        app_name: facts.app_name.as_deref(),
        app_url: facts.app_url.as_deref(),
    }
}

/// The processing warnings of the state, or the failure reason, escaped.
fn messages(state: &BuildState) -> Vec<String> {
    let said = match state {
        BuildState::Processed { warnings, .. }
        | BuildState::Publishing { warnings, .. }
        | BuildState::Published { warnings, .. }
        | BuildState::Scheduled { warnings, .. }
        | BuildState::Draft { warnings, .. } => warnings.as_slice(),
        BuildState::Failed { reason, .. } => std::slice::from_ref(reason),
        _ => &[],
    };
    said.iter().map(|s| escaped(s).into_owned()).collect()
}

/// A failed state counts the failing stage's tries itself; otherwise the
/// record's counter of the current step holds them.
fn attempts(state: &BuildState, recorded: u32) -> u32 {
    match state {
        BuildState::Failed { attempts, .. } => *attempts,
        _ => recorded,
    }
}

/// The ZIP's file name, escaped.
fn file_name(event: &BuildEvent) -> String {
    let file = &event.build.file;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    escaped(&name).into_owned()
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

/// Chat markup: how to embolden and what to escape.
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
    /// is: control characters escaped; Slack needs `&`, `<` and `>` escaped
    /// (its link and mention syntax); Discord's markdown characters are
    /// backslash-escaped.
    fn escape(self, s: &str) -> String {
        let s = escaped(s);
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match (self, c) {
                (Markup::Slack, '&') => out.push_str("&amp;"),
                (Markup::Slack, '<') => out.push_str("&lt;"),
                (Markup::Slack, '>') => out.push_str("&gt;"),
                (Markup::Discord, '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '[' | ']') => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        out
    }
}

/// The app as the message names it: PatchKit's name for it, else the rule.
fn app_name<'a>(event: &'a BuildEvent, facts: &'a Facts) -> &'a str {
    facts.app_name.as_deref().unwrap_or(&event.build.rule)
}

/// The headline without its mark: "My Game 1.4.2 published as version 12".
fn headline(event: &BuildEvent, facts: &Facts, m: Markup) -> String {
    let b = &event.build;
    let who = format!("{} {}", m.bold(app_name(event, facts)), m.escape(&b.label));
    let version = b
        .state
        .version_id()
        .map(|v| format!(" as version {v}"))
        .unwrap_or_default();
    match (Outcome::of(event), &b.state) {
        (Outcome::Scheduled, BuildState::Scheduled { publish_time, .. }) => format!(
            "{who} scheduled{version} for {}",
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(*publish_time)
            )
        ),
        (Outcome::Published | Outcome::Scheduled, _) => format!("{who} published{version}"),
        (Outcome::Failed, state) => format!(
            "{who} failed in {} after {} attempt(s)",
            state.stage(),
            attempts(state, b.attempts)
        ),
        (Outcome::Warning, state) => format!(
            "{who} processed{version} with {} warning(s)",
            messages(state).len()
        ),
        (Outcome::Stuck, _) => format!(
            "{who} is stuck: {}",
            m.escape(event.reason.as_deref().unwrap_or("no progress"))
        ),
        (Outcome::Changed, state) => format!("{who}: {}", m.escape(&state.to_string())),
    }
}

/// The facts every message shows, as (name, value) with the value marked
/// up.
fn fields(event: &BuildEvent, m: Markup) -> Vec<(&'static str, String)> {
    let b = &event.build;
    let mut out = vec![("Rule", m.escape(&b.rule))];
    if let Some(v) = b.state.version_id() {
        out.push(("Version", v.to_string()));
    }
    out.push((
        "File",
        format!(
            "{} ({})",
            m.escape(&file_name(event)),
            human_size(b.identity.size)
        ),
    ));
    out.push(("Took", human_duration(event.duration_seconds)));
    if matches!(b.state, BuildState::Failed { .. }) {
        out.push(("Stage", b.state.stage().to_string()));
    }
    out
}

/// The messages under their title ("Warnings" or "Error"), one per line.
fn said(event: &BuildEvent, m: Markup) -> Option<(&'static str, String)> {
    let said = messages(&event.build.state);
    if said.is_empty() {
        return None;
    }
    let title = match event.build.state {
        BuildState::Failed { .. } => "Error",
        _ => "Warnings",
    };
    let lines: Vec<String> = said.iter().map(|s| format!("• {}", m.escape(s))).collect();
    Some((title, lines.join("\n")))
}

fn slack_payload(event: &BuildEvent, facts: &Facts) -> Value {
    let m = Markup::Slack;
    let outcome = Outcome::of(event);
    let headline = format!("{} {}", outcome.slack_mark(), headline(event, facts, m));
    let fields: Vec<Value> = fields(event, m)
        .into_iter()
        .map(|(name, value)| {
            json!({"type": "mrkdwn", "text": truncate(format!("*{name}*\n{value}"), slack::FIELD)})
        })
        .collect();
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(headline.clone(), slack::SECTION)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if let Some((title, text)) = said(event, m) {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(format!("*{title}*\n{text}"), slack::SECTION)},
        }));
    }
    let mut context = format!(
        "build {} · app `{}` · on {}",
        event.build.id,
        m.escape(&event.build.app_secret),
        m.escape(&facts.host)
    );
    if let Some(url) = &facts.app_url {
        context.push_str(&format!(" · <{url}|open in PatchKit>"));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));
    json!({
        // Shown in notifications, and above the attachment.
        "text": truncate(headline, slack::HEADLINE),
        "attachments": [{
            "color": format!("#{:06x}", outcome.rgb()),
            "blocks": blocks,
        }],
    })
}

fn discord_payload(event: &BuildEvent, time: SystemTime, facts: &Facts) -> Value {
    let m = Markup::Discord;
    let outcome = Outcome::of(event);
    // Embed titles show no markdown: the plain headline, marked by emoji.
    let title = format!(
        "{} {}",
        outcome.emoji(),
        headline(event, facts, m).replace("**", "")
    );
    let mut fields: Vec<Value> = fields(event, m)
        .into_iter()
        .map(|(name, value)| {
            json!({"name": name, "value": truncate(value, discord::FIELD_VALUE), "inline": true})
        })
        .collect();
    fields.push(json!({"name": "Build", "value": event.build.id.to_string(), "inline": true}));
    let mut embed = json!({
        "title": truncate(title, discord::TITLE),
        "color": outcome.rgb(),
        "fields": fields,
        "footer": {"text": truncate(
            format!("patchkit-autopublish on {} · app {}", escaped(&facts.host), event.build.app_secret),
            discord::FOOTER,
        )},
        "timestamp": humantime::format_rfc3339_seconds(time).to_string(),
    });
    if let Some(url) = &facts.app_url {
        embed["url"] = json!(url);
    }
    if let Some((title, text)) = said(event, m) {
        embed["description"] = json!(truncate(
            format!("**{title}**\n{text}"),
            discord::DESCRIPTION
        ));
    }
    json!({
        "embeds": [embed],
        // Labels and messages are not ours: never let them ping a channel.
        "allowed_mentions": { "parse": [] },
    })
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
