//! `check`: everything that can be verified before the first build, without
//! changing anything.
//!
//! The config is valid; the key can be read; for every rule PatchKit knows
//! the app, the app takes uploads (not a channel fed by its group app), the
//! key may manage it, and no draft stands in the way (decided by the same
//! `stages::draft::plan_draft` the pipeline uses); and the files each rule
//! would take now. Every problem is listed with what to do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::control::{self, BuildRow, Request};
use crate::patchkit::{Client, ErrorKind};
use crate::stages::draft::{DraftPlan, KnownDraft, Owner, in_the_way_reason, plan_draft};
use crate::store::Store;
use crate::watcher::scan_folder;

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
            Ok(app) if app.refuses_direct_uploads() => {
                report.problem(format!(
                    "{who}: {}",
                    crate::stages::channel_reason(&app, &rule.name)
                ));
                files_now(&mut report, &who, rule, &known);
                continue;
            }
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
                    let known: Vec<KnownDraft> = builds
                        .iter()
                        .filter(|b| b.app == rule.app_secret)
                        .filter_map(|b| {
                            let owner = match b.state.as_str() {
                                "failed" | "cancelled" => Owner::Abandoned,
                                "draft" => Owner::Kept,
                                "published" | "scheduled" => return None,
                                _ => Owner::Active,
                            };
                            Some(KnownDraft {
                                version_id: b.version_id?,
                                build: b.id.clone(),
                                rule: b.rule.clone(),
                                label: b.label.clone(),
                                owner,
                            })
                        })
                        .rev()
                        .collect();
                    // No build of this rule has recorded an intent yet: the
                    // plan is the one the rule's next build will follow.
                    match plan_draft(&versions, "", None, &known, rule.existing_draft) {
                        Ok(DraftPlan::Create) => {}
                        Ok(DraftPlan::Adopt(_)) => {}
                        Ok(DraftPlan::Reuse(d, k)) => report.ok(format!(
                            "{who}: the app has draft version {} {:?}, left by this daemon's \
                             build {}; the next build reuses it",
                            d.id, d.label, k.build
                        )),
                        Ok(DraftPlan::Wait(d, Some(k))) => report.ok(format!(
                            "{who}: the app has draft version {} {:?} of this daemon's build {}",
                            d.id, d.label, k.build
                        )),
                        Ok(DraftPlan::Wait(d, None)) => report.warn(format!(
                            "{who}: the app's draft version {} {:?} is being published; the \
                             next build waits for it",
                            d.id, d.label
                        )),
                        Ok(DraftPlan::TakeOver(d)) => report.warn(format!(
                            "{who}: the app has draft version {} {:?}; the next build takes it \
                             over (existing_draft = \"take_over\")",
                            d.id, d.label
                        )),
                        Ok(DraftPlan::InTheWay(d, k)) => report.problem(format!(
                            "{who}: {}: the next build stops until then",
                            in_the_way_reason(&rule.app_secret, d, k, &rule.name)
                        )),
                        Err(missing) => report.warn(format!(
                            "{who}: cannot tell whether a draft is in the way: {missing}"
                        )),
                    }
                }
                Err(err) if err.kind() == ErrorKind::Unauthorized => {
                    key_works = false;
                    report.problem(refused(config, &err));
                }
                // A 403 is a wrong key on some servers, or a key of another
                // account: the key's own app list tells which.
                Err(err) if err.kind() == ErrorKind::Forbidden => match client.list_apps().await {
                    Err(e) if e.kind() == ErrorKind::Unauthorized => {
                        key_works = false;
                        report.problem(refused(config, &e));
                    }
                    Ok(apps) if apps.iter().any(|a| a.secret == rule.app_secret) => {
                        report.problem(format!(
                            "{who}: the API key's account owns app {}, yet PatchKit \
                                 refuses to list its versions ({err}); the account may lack \
                                 API access for it (a plan setting)",
                            rule.app_secret
                        ))
                    }
                    _ => report.problem(format!(
                        "{who}: the API key may not manage app {} ({err}): it is not one \
                             of the key's account's apps; use the key of the account that \
                             owns the app",
                        rule.app_secret
                    )),
                },
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

/// The known builds by file path and size, as "id (state)".
fn by_file(rows: &[BuildRow]) -> HashMap<(PathBuf, u64), String> {
    rows.iter()
        .map(|r| {
            (
                (r.file.clone(), r.size_bytes),
                format!("{} ({})", r.id, r.state),
            )
        })
        .collect()
}

fn files_now(
    report: &mut Report,
    who: &str,
    rule: &crate::config::Rule,
    known: &HashMap<(PathBuf, u64), String>,
) {
    let mut spec = crate::watcher::WatchSpec::new(&rule.name, &rule.folder, rule.matcher.clone());
    spec.recursive = rule.recursive;
    if let Some(ignore) = &rule.ignore {
        spec.ignore = ignore.clone();
    }
    match scan_folder(&spec) {
        Ok(files) => {
            let taken: Vec<_> = files
                .iter()
                .filter(|(path, _)| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| rule.matches(n))
                })
                .collect();
            let new = taken
                .iter()
                .filter(|(path, id)| !known.contains_key(&(path.clone(), id.size)))
                .count();
            report.ok(format!(
                "{who}: folder {} has {} build file(s) matching {:?}, {new} not yet taken",
                rule.folder.display(),
                taken.len(),
                rule.pattern
            ));
            for (path, id) in taken {
                let note = match known.get(&(path.clone(), id.size)) {
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
