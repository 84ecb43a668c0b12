//! `check`: everything that can be verified before the first build, without
//! changing anything.
//!
//! The config is valid; the key can be read; for every rule PatchKit knows
//! the app, the key may manage it, and no draft stands in the way; and the
//! files each rule would take now. Every problem is listed with what to do.

use std::collections::HashMap;
use std::path::Path;

use crate::config::{Config, ExistingDraft};
use crate::control::{self, BuildRow, Request};
use crate::patchkit::{Client, ErrorKind};
use crate::store::Store;
use crate::watcher::{Take, scan_folder};

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Lines for the operator, in order.
    pub lines: Vec<String>,
    /// Problems that make the daemon fail or stall.
    pub problems: usize,
}

impl Report {
    fn ok(&mut self, line: String) {
        self.lines.push(format!("ok       {line}"));
    }

    fn warn(&mut self, line: String) {
        self.lines.push(format!("warning  {line}"));
    }

    fn problem(&mut self, line: String) {
        self.problems += 1;
        self.lines.push(format!("problem  {line}"));
    }
}

/// Checks a loaded config against PatchKit and the disk.
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    report.ok(format!(
        "config {} ({} rules)",
        config.path.display(),
        config.rules.len()
    ));
    let key = match config.patchkit.load_key() {
        Ok((key, origin)) => {
            report.ok(format!("API key read from {origin}"));
            key
        }
        Err(err) => {
            report.problem(format!("{err}"));
            return report;
        }
    };
    let client = match Client::new(config.patchkit.client_options(key)) {
        Ok(client) => client,
        Err(err) => {
            report.problem(format!("cannot set up the PatchKit client: {err}"));
            return report;
        }
    };
    let builds = known_builds(config).await;
    let known = by_file(&builds);
    let mut key_works = true;
    for rule in &config.rules {
        let who = format!("rule {:?}", rule.name);
        match client.get_app(&rule.app_secret).await {
            Ok(app) => report.ok(format!(
                "{who}: app {:?} ({}) exists",
                app.name, app.platform
            )),
            // A wrong key may be refused at the first request, before the
            // version list below would say so.
            Err(err) if err.kind() == ErrorKind::Unauthorized => {
                if key_works {
                    key_works = false;
                    report.problem(refused(config, &err));
                }
                files_now(&mut report, &who, rule, &known);
                continue;
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {
                report.problem(format!(
                    "{who}: PatchKit has no app with secret {}; copy the secret from the \
                     PatchKit panel",
                    rule.app_secret
                ));
                continue;
            }
            Err(err) => {
                report.problem(format!("{who}: cannot read the app: {err}"));
                continue;
            }
        }
        if key_works {
            match client.list_versions(&rule.app_secret).await {
                Ok(versions) => {
                    report.ok(format!("{who}: the API key may manage the app"));
                    for draft in versions.iter().filter(|v| v.draft && !v.published) {
                        let what = format!(
                            "{who}: the app has draft version {} {:?}",
                            draft.id, draft.label
                        );
                        let owner = builds
                            .iter()
                            .find(|b| b.app == rule.app_secret && b.version_id == Some(draft.id));
                        match (owner.map(|b| b.state.as_str()), rule.existing_draft) {
                            (Some("failed" | "cancelled"), _) => report.ok(format!(
                                "{what}, left by this daemon's build {}; the next build \
                                 reuses it",
                                owner.map(|b| b.id.as_str()).unwrap_or_default()
                            )),
                            (Some(state), _) if state != "draft" => report.ok(format!(
                                "{what}, of this daemon's build {} ({state})",
                                owner.map(|b| b.id.as_str()).unwrap_or_default()
                            )),
                            (_, ExistingDraft::TakeOver) => report.warn(format!(
                                "{what}; the next build takes it over (existing_draft = \
                                 \"take_over\")"
                            )),
                            (_, ExistingDraft::Fail) => report.problem(format!(
                                "{what}, and PatchKit allows one draft per app: the next build \
                                 stops until it is published or deleted in the PatchKit panel \
                                 (or set existing_draft = \"take_over\")"
                            )),
                        }
                    }
                }
                Err(err) if err.kind() == ErrorKind::Unauthorized => {
                    key_works = false;
                    report.problem(refused(config, &err));
                }
                Err(err) if err.kind() == ErrorKind::Forbidden => report.problem(format!(
                    "{who}: the API key may not manage app {} ({err}); use the key of the \
                     account that owns the app",
                    rule.app_secret
                )),
                Err(err) => report.problem(format!("{who}: cannot list versions: {err}")),
            }
        }
        files_now(&mut report, &who, rule, &known);
    }
    report
}

fn refused(config: &Config, err: &crate::patchkit::ApiError) -> String {
    format!(
        "PatchKit refused the API key ({err}); copy the key from your PatchKit account page \
         into {}",
        key_place(config)
    )
}

fn key_place(config: &Config) -> String {
    match &config.patchkit.key_source {
        crate::config::KeySource::Env(name) => format!("the environment variable {name}"),
        crate::config::KeySource::File(path) => format!("{}", path.display()),
    }
}

/// The files the store already has builds for, by path and size, with the
/// build id: from the running daemon, or from the store when none runs (and
/// only if it exists: `check` creates nothing).
async fn known_builds(config: &Config) -> Vec<BuildRow> {
    let dir = &config.daemon.state_dir;
    match control::ask(dir, &Request::Status { all: true }).await {
        Ok(Some(response)) if response.ok => response.builds,
        _ if dir.join("db").exists() => {
            let dir = dir.clone();
            match tokio::task::spawn_blocking(move || Store::open(dir)).await {
                Ok(Ok(store)) => control::status_rows(&store, None, true).unwrap_or_default(),
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// The known builds by the store's file key (path, size, modification
/// time), as "id (state)".
fn by_file(rows: &[BuildRow]) -> HashMap<Vec<u8>, String> {
    rows.iter()
        .map(|r| (r.identity().dedupe_key(), format!("{} ({})", r.id, r.state)))
        .collect()
}

fn files_now(
    report: &mut Report,
    who: &str,
    rule: &crate::config::Rule,
    known: &HashMap<Vec<u8>, String>,
) {
    let spec = rule.watch_spec();
    match scan_folder(&spec) {
        Ok(files) => {
            let (taken, refused): (Vec<_>, Vec<_>) = files
                .iter()
                .map(|(id, take)| ((&id.path, id), *take))
                .partition(|(_, take)| *take == Take::Yes);
            let taken: Vec<_> = taken.into_iter().map(|(file, _)| file).collect();
            for ((path, _), _) in &refused {
                report.warn(format!(
                    "{who}: {} matches {:?} but not filename_regex, so it is not taken; rename \
                     it or change the rule",
                    display_name(path, &rule.folder),
                    rule.pattern
                ));
            }
            let new = taken
                .iter()
                .filter(|(_, id)| !known.contains_key(&id.dedupe_key()))
                .count();
            report.ok(format!(
                "{who}: folder {} has {} build file(s) matching {:?}, {new} not yet taken",
                rule.folder.display(),
                taken.len(),
                rule.pattern
            ));
            for (path, id) in taken {
                let note = match known.get(&id.dedupe_key()) {
                    Some(build) => format!("already build {build}"),
                    None => "would be taken now".to_owned(),
                };
                report.lines.push(format!(
                    "           {} ({} bytes): {note}",
                    display_name(path, &rule.folder),
                    id.size
                ));
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => report.warn(format!(
            "{who}: folder {} does not exist yet; it is watched once it appears",
            rule.folder.display()
        )),
        Err(err) => report.problem(format!(
            "{who}: cannot read folder {}: {err}; the daemon's user needs read access (and \
             write access to move or delete files)",
            rule.folder.display()
        )),
    }
}

fn display_name(path: &Path, folder: &Path) -> String {
    path.strip_prefix(folder)
        .unwrap_or(path)
        .display()
        .to_string()
}
