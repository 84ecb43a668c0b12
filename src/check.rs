//! `check`: everything that can be verified before the first build, without
//! changing anything.
//!
//! The config is valid; the key can be read; for every rule PatchKit knows
//! the app, the app takes uploads (not a channel fed by its group app), the
//! key may manage it, and no draft stands in the way (decided by the same
//! `stages::draft::plan_draft` the pipeline uses); and the files each rule
//! would take now. Every problem is listed with what to do. The key is read
//! where a daemon started from this shell would, or where the systemd
//! service will (`--as-service`: the credential its unit loads).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::{CREDENTIAL_NAME, Config, KeyError, KeyOrigin};
use crate::control::{self, BuildRow, Request};
use crate::patchkit::{ApiKey, Client, ErrorKind};
use crate::service_unit::ServiceUnit;
use crate::stages::draft::{DraftPlan, KnownDraft, Owner, in_the_way_reason, plan_draft};
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

/// Where `check` reads the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlace {
    /// Where a daemon started from this shell reads it: the systemd
    /// credential when `$CREDENTIALS_DIRECTORY` is set, else the config's
    /// source.
    Shell,
    /// Where the systemd service will read it: the credential its unit
    /// loads. The installed unit, or this unit file.
    Unit(Option<PathBuf>),
    /// This file, as the service's credential.
    Credential(PathBuf),
}

/// Checks a loaded config against PatchKit and the disk, reading the key
/// from the environment and the config.
pub async fn check(config: &Config) -> Report {
    check_with(config, &KeyPlace::Shell).await
}

/// Checks a loaded config against PatchKit and the disk, reading the key
/// from `place`.
pub async fn check_with(config: &Config, place: &KeyPlace) -> Report {
    let mut report = Report::default();
    report.ok(format!(
        "config {} ({} rules)",
        config.path.display(),
        config.rules.len()
    ));
    // What the daemon needs of this machine, checked before the key: a
    // missing key must not hide a state directory it could not write.
    let (builds, running) = known_builds(config, &mut report).await;
    startup(config, running, &mut report).await;
    let known = by_file(&builds);
    let claims = claims(config);
    let Some((key, origin)) = load_key(config, place, &mut report) else {
        // Without a key PatchKit cannot be asked; the folders still can.
        for rule in &config.rules {
            files_now(
                &mut report,
                &format!("rule {:?}", rule.name),
                rule,
                &known,
                &claims,
            );
        }
        return report;
    };
    let client = match Client::new(check_options(config, key)) {
        Ok(client) => client,
        Err(err) => {
            report.problem(format!("cannot set up the PatchKit client: {err}"));
            return report;
        }
    };
    let mut key_works = true;
    let mut reachable = true;
    for rule in &config.rules {
        let who = format!("rule {:?}", rule.name);
        if !reachable {
            files_now(&mut report, &who, rule, &known, &claims);
            continue;
        }
        match client.get_app(&rule.app_secret).await {
            Ok(app) if app.refuses_direct_uploads() => {
                report.problem(format!(
                    "{who}: {}",
                    crate::stages::channel_reason(&app, &rule.name)
                ));
                files_now(&mut report, &who, rule, &known, &claims);
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
                    report.problem(refused(&origin, &err));
                }
                files_now(&mut report, &who, rule, &known, &claims);
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
            // PatchKit cannot be reached at all: every other rule would say
            // the same after the same wait.
            Err(err) if err.is_transient() && err.status().is_none() => {
                report.problem(unreachable(config, &err));
                reachable = false;
                files_now(&mut report, &who, rule, &known, &claims);
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
                    report.problem(refused(&origin, &err));
                }
                // A 403 is a wrong key on some servers, or a key of another
                // account: the key's own app list tells which.
                Err(err) if err.kind() == ErrorKind::Forbidden => match client.list_apps().await {
                    Err(e) if e.kind() == ErrorKind::Unauthorized => {
                        key_works = false;
                        report.problem(refused(&origin, &e));
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
        if key_works && !rule.channels.is_empty() {
            match client.list_apps().await {
                Ok(apps) => {
                    for name in &rule.channels {
                        match crate::stages::channels::find_channel(
                            &apps,
                            &rule.app_secret,
                            name,
                            &rule.name,
                        ) {
                            Ok(secret) => report.ok(format!(
                                "{who}: channel {name:?} is app {secret}, fed after each publish"
                            )),
                            Err(reason) => report.problem(format!("{who}: {reason}")),
                        }
                    }
                }
                Err(err) => report.problem(format!("{who}: cannot list the key's apps: {err}")),
            }
        }
        files_now(&mut report, &who, rule, &known, &claims);
    }
    report
}

fn refused(origin: &KeyOrigin, err: &crate::patchkit::ApiError) -> String {
    let place = match origin {
        KeyOrigin::Env(name) => format!("the environment variable {name}"),
        KeyOrigin::File(path) | KeyOrigin::Credential(path) => format!("{}", path.display()),
    };
    format!(
        "PatchKit refused the API key ({err}); copy the key from your PatchKit account page \
         into {place}"
    )
}

/// Warns when every user may read the API key file (a group bit is left
/// alone: 640 with the daemon's group is a sound setup).
fn warn_if_readable_by_others(path: &Path, report: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        report.warn(format!(
            "the API key file {} can be read by every user (mode {mode:03o}); run `chmod 600 {}` \
             (or 640, with the daemon's group owning it)",
            path.display(),
            path.display()
        ));
    }
}

/// Reads the key from `place`, reporting where it came from or why it
/// cannot be read.
fn load_key(config: &Config, place: &KeyPlace, report: &mut Report) -> Option<(ApiKey, KeyOrigin)> {
    let (path, named_by) = match place {
        KeyPlace::Shell => {
            return match config.patchkit.load_key() {
                Ok((key, origin)) => {
                    report.ok(format!("API key read from {origin}"));
                    if let KeyOrigin::File(path) = &origin {
                        warn_if_readable_by_others(path, report);
                    }
                    Some((key, origin))
                }
                Err(err) => {
                    report.problem(format!("{err}"));
                    None
                }
            };
        }
        KeyPlace::Credential(path) => (path.clone(), "given with --credential".to_owned()),
        KeyPlace::Unit(file) => {
            let unit = match file {
                Some(file) => ServiceUnit::from_file(file),
                None => ServiceUnit::installed(),
            };
            let unit = match unit {
                Ok(unit) => unit,
                Err(err) => {
                    report.problem(err.to_string());
                    return None;
                }
            };
            let files: Vec<String> = unit.files.iter().map(|f| f.display().to_string()).collect();
            report.ok(format!("unit {}", files.join(" + ")));
            unit_config(config, &unit, report);
            match unit.credential_path() {
                Some(Ok(path)) => {
                    let set_in = unit.credential.as_ref().map(|(_, f)| f.display());
                    let named_by = format!(
                        "named by LoadCredential= in {}",
                        set_in.map(|f| f.to_string()).unwrap_or_default()
                    );
                    (path, named_by)
                }
                Some(Err(err)) => {
                    report.problem(err);
                    return None;
                }
                None => {
                    report.problem(format!(
                        "the unit passes no credential {CREDENTIAL_NAME}, so the service would \
                         look for the key in its own environment; add \
                         `LoadCredential={CREDENTIAL_NAME}:/etc/patchkit-autopublish/api-key` \
                         to the unit (the packaged unit has it)"
                    ));
                    return None;
                }
            }
        }
    };
    match crate::config::load_credential(&path) {
        Ok((key, origin)) => {
            report.ok(format!(
                "API key read from the credential file {} ({named_by}), as systemd will read it",
                path.display()
            ));
            credential_mode(&path, report);
            Some((key, origin))
        }
        Err(KeyError::Unreadable { cause: source, .. }) => {
            let why = if source.kind() == std::io::ErrorKind::PermissionDenied {
                "; systemd reads credentials as root, so run this check as root"
            } else {
                ""
            };
            report.problem(format!(
                "cannot read the credential file {} ({named_by}): {source}{why}; write the API \
                 key from your PatchKit account page into it (owned by root, chmod 600)",
                path.display()
            ));
            None
        }
        Err(err) => {
            report.problem(format!("{err} ({named_by})"));
            None
        }
    }
}

/// Warns when the unit's `ExecStart=` runs another config than the one
/// checked: the check would pass for a file the service never reads.
fn unit_config(config: &Config, unit: &ServiceUnit, report: &mut Report) {
    let Some(theirs) = &unit.config else {
        return;
    };
    let same = |a: &Path, b: &Path| {
        a == b || std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
    };
    if !same(theirs, &config.path) {
        report.warn(format!(
            "the unit runs the config {}, not {}; check that one with --config {}",
            theirs.display(),
            config.path.display(),
            theirs.display()
        ));
    }
}

/// Warns when other users may read the key.
fn credential_mode(path: &Path, report: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        report.warn(format!(
            "the credential file {} may be read by other users (mode {:o}); `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o7777,
            path.display()
        ));
    }
}

/// The files the store already has builds for, by path and size, with the
/// build id: from the running daemon, or from the store when none runs (and
/// only if it exists: `check` creates nothing). Says whether a daemon
/// answered; a store `run` would refuse is a problem.
async fn known_builds(config: &Config, report: &mut Report) -> (Vec<BuildRow>, bool) {
    let dir = &config.daemon.state_dir;
    match control::ask(dir, &Request::Status { all: true }).await {
        Ok(Some(response)) if response.ok => {
            report.ok(format!("a daemon is running on {}", dir.display()));
            (response.builds, true)
        }
        _ if dir.join("db").exists() => {
            let dir = dir.clone();
            match tokio::task::spawn_blocking(move || Store::open(dir)).await {
                Ok(Ok(store)) => (
                    control::status_rows(&store, None, true).unwrap_or_default(),
                    false,
                ),
                Ok(Err(err)) => {
                    report.problem(format!("the daemon could not start: {err}"));
                    (Vec::new(), false)
                }
                Err(_) => (Vec::new(), false),
            }
        }
        _ => (Vec::new(), false),
    }
}

/// What `run` needs at start besides the config, the key and PatchKit: a
/// state directory and a log folder it may write, and the metrics address
/// free to listen on. Checked without creating anything.
async fn startup(config: &Config, running: bool, report: &mut Report) {
    let d = &config.daemon;
    if !running {
        writable(&d.state_dir, "[daemon] state_dir", report);
    }
    if let Some(dir) = &d.log_dir {
        writable(dir, "[daemon] log_dir", report);
    }
    match (d.metrics, running) {
        (None, _) => {}
        (Some(addr), true) => report.ok(format!(
            "[daemon] metrics: {addr} is the running daemon's to serve"
        )),
        (Some(addr), false) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                drop(listener);
                report.ok(format!("[daemon] metrics: {addr} is free to listen on"));
            }
            Err(err) => report.problem(format!(
                "[daemon] metrics: cannot listen on {addr}: {err}; the daemon would not \
                 start. Choose a free port, or an address of this machine"
            )),
        },
    }
}

/// Reports whether this user may create and write files in `dir`, or
/// create `dir` in its nearest existing parent.
fn writable(dir: &Path, field: &str, report: &mut Report) {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    // Permission bits do not tell (root, read-only mounts, /proc): a
    // folder made and removed at once does.
    let probe = existing.join(format!(
        ".patchkit-autopublish-check.{}",
        std::process::id()
    ));
    let tried = std::fs::create_dir(&probe).map(|()| {
        let _ = std::fs::remove_dir(&probe);
    });
    match tried {
        Ok(()) => {
            let note = if existing == dir {
                String::new()
            } else {
                format!(" (the daemon creates it in {})", existing.display())
            };
            report.ok(format!("{field}: {} is writable{note}", dir.display()));
        }
        Err(err) => report.problem(format!(
            "{field}: cannot write in {} ({}), so the daemon could not start; create {} and \
             let the daemon's user write to it (under systemd: ReadWritePaths=)",
            existing.display(),
            err,
            dir.display()
        )),
    }
}

/// How long `check` keeps trying one request before it reports PatchKit
/// unreachable: an operator at a terminal wants the answer in seconds, not
/// the daemon's patience of minutes.
const CHECK_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(8);

/// The daemon's client settings with `check`'s short patience.
fn check_options(config: &Config, key: ApiKey) -> crate::patchkit::ClientOptions {
    let mut opts = config.patchkit.client_options(key);
    opts.connect_timeout = opts.connect_timeout.min(std::time::Duration::from_secs(4));
    opts.request_timeout = opts.request_timeout.min(CHECK_GIVE_UP);
    opts.retry.base = opts.retry.base.min(std::time::Duration::from_millis(500));
    opts.retry.cap = opts.retry.cap.min(std::time::Duration::from_secs(2));
    opts.retry.give_up = Some(CHECK_GIVE_UP);
    opts
}

/// Says that PatchKit cannot be reached, naming the host and the root
/// cause (name lookup, refused, TLS, time-out, proxy) once.
fn unreachable(config: &Config, err: &crate::patchkit::ApiError) -> String {
    let host = config.patchkit.api_url.host_str().unwrap_or("?");
    let mut causes: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        next = e.source();
    }
    let proxy = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()));
    let via = match proxy {
        Some(_) => " through the proxy set in the environment",
        None => "",
    };
    format!(
        "cannot reach PatchKit at {host}{via} ({}): {}; check the address (api_url), DNS, the \
         firewall{}",
        config.patchkit.api_url,
        causes.join(": "),
        if via.is_empty() { "" } else { " and the proxy" }
    )
}

/// The known builds by the store's file key (path, size, modification
/// time), as "id (state)".
fn by_file(rows: &[BuildRow]) -> HashMap<Vec<u8>, String> {
    rows.iter()
        .flat_map(|r| {
            let identity = r.identity();
            let known = format!("{} ({})", r.id, r.state);
            std::iter::once(identity.dedupe_key())
                .chain(identity.resolved_dedupe_key())
                .map(move |key| (key, known.clone()))
        })
        .collect()
}

/// The known build of a file seen now, under its folder as written or as
/// resolved (see [`FileIdentity::resolved_dedupe_key`]).
fn known_build<'a>(
    known: &'a HashMap<Vec<u8>, String>,
    id: &crate::state::FileIdentity,
) -> Option<&'a String> {
    known
        .get(&id.dedupe_key())
        .or_else(|| known.get(&id.resolved_dedupe_key()?))
}

/// Which rules take each file, by its canonical path: two rules whose
/// folders are one on disk (a symlink, a bind mount) both take its files,
/// and the daemon then takes them for neither.
fn claims(config: &Config) -> HashMap<PathBuf, Vec<String>> {
    let mut claims: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for rule in &config.rules {
        let Ok(files) = scan_folder(&rule.watch_spec()) else {
            continue;
        };
        for (id, take) in files {
            if take == Take::Yes
                && let Ok(real) = std::fs::canonicalize(&id.path)
            {
                claims.entry(real).or_default().push(rule.name.clone());
            }
        }
    }
    claims
}

fn files_now(
    report: &mut Report,
    who: &str,
    rule: &crate::config::Rule,
    known: &HashMap<Vec<u8>, String>,
    claims: &HashMap<PathBuf, Vec<String>>,
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
                    shown_name(path, &rule.folder),
                    rule.pattern
                ));
            }
            let new = taken
                .iter()
                .filter(|(_, id)| known_build(known, id).is_none())
                .count();
            report.ok(format!(
                "{who}: folder {} has {} build file(s) matching {:?}, {new} not yet taken",
                rule.folder.display(),
                taken.len(),
                rule.pattern
            ));
            for (path, id) in taken {
                let others: Vec<&String> = std::fs::canonicalize(path)
                    .ok()
                    .and_then(|real| claims.get(&real))
                    .map(|rules| rules.iter().filter(|r| **r != rule.name).collect())
                    .unwrap_or_default();
                if !others.is_empty() {
                    report.problem(format!(
                        "{who}: {} is also taken by rule(s) {others:?} (it is the same file \
                         on disk), so the daemon takes it for neither; give each rule its own \
                         folder, patterns that cannot meet, or no symlink into the other's",
                        shown_name(path, &rule.folder)
                    ));
                    continue;
                }
                let note = match known_build(known, id) {
                    Some(build) => format!("already build {build}"),
                    None => "would be taken now".to_owned(),
                };
                report.lines.push(format!(
                    "           {} ({} bytes): {note}",
                    shown_name(path, &rule.folder),
                    id.size
                ));
            }
            for (likely_mistake, line) in ignored(rule) {
                match likely_mistake {
                    true => report.warn(format!("{who}: {line}")),
                    false => report.lines.push(format!("           {line}")),
                }
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

/// A path inside a rule folder as the report shows it: relative to the
/// folder, control characters escaped.
fn shown_name(path: &Path, folder: &Path) -> String {
    let name = path
        .strip_prefix(folder)
        .unwrap_or(path)
        .display()
        .to_string();
    crate::text::escaped(&name).into_owned()
}

/// Names in the folder of no interest to a rule that `ignored` lists by name
/// at most; the rest are counted. A build folder also holds changelogs and
/// `.error.txt` files; a few names show what they are.
const OTHER_NAMES_SHOWN: usize = 10;

/// Every entry of the rule's folder (and its sub-folders, for a recursive
/// rule) that the rule does not take, with the reason, as report lines:
/// names like builds that the pattern misses only by case, names in the
/// ignore list, folders, FIFOs, sockets and devices named like builds, and
/// symlinks that lead nowhere. Names `filename_regex` refuses are warned
/// about already; other names are summed up. Each line comes with whether
/// it is likely a mistake (a build that will never be published).
fn ignored(rule: &crate::config::Rule) -> Vec<(bool, String)> {
    let spec = rule.watch_spec();
    let loose = globset::GlobBuilder::new(&rule.pattern)
        .case_insensitive(true)
        .literal_separator(true)
        .build()
        .ok()
        .map(|g| g.compile_matcher());
    let mut lines = Vec::new();
    let mut others = Vec::new();
    let mut stack = vec![spec.folder.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let path = entry.path();
            let shown = shown_name(&path, &rule.folder);
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let matches = spec.names.matcher.is_match(Path::new(&name));
            if kind.is_dir() {
                if spec.recursive && !spec.names.is_ignored(&name) {
                    stack.push(path);
                } else if matches {
                    lines.push((
                        true,
                        format!("{shown}: not taken: a folder, not a ZIP file"),
                    ));
                }
                continue;
            }
            let mut mistake = true;
            let reason = if !matches {
                match &loose {
                    Some(loose) if loose.is_match(Path::new(&name)) => format!(
                        "not taken: does not match {:?}, which is case-sensitive; rename it or \
                         change the pattern",
                        rule.pattern
                    ),
                    _ => {
                        others.push(shown);
                        continue;
                    }
                }
            } else if spec.names.is_ignored(&name) {
                mistake = false;
                "not taken: its name is in the rule's ignore list (temporary and hidden \
                 files); rename it when it is complete"
                    .to_owned()
            } else if kind.is_symlink() {
                match std::fs::metadata(&path) {
                    Err(_) => {
                        let target = std::fs::read_link(&path)
                            .map(|t| crate::text::escaped(&t.display().to_string()).into_owned())
                            .unwrap_or_default();
                        format!("not taken: a symlink to {target}, which does not exist")
                    }
                    Ok(meta) if meta.is_dir() => {
                        "not taken: a symlink to a folder, not a ZIP file".to_owned()
                    }
                    Ok(meta) if !meta.is_file() => {
                        "not taken: a symlink to a FIFO, socket or device, not a ZIP file"
                            .to_owned()
                    }
                    Ok(_) => continue,
                }
            } else if !kind.is_file() {
                use std::os::unix::fs::FileTypeExt;
                let what = if kind.is_fifo() {
                    "a FIFO (named pipe)"
                } else if kind.is_socket() {
                    "a socket"
                } else {
                    "a device"
                };
                format!("not taken: {what}, not a ZIP file")
            } else {
                // Taken, or refused by filename_regex: reported above.
                continue;
            };
            lines.push((mistake, format!("{shown}: {reason}")));
        }
    }
    if !others.is_empty() {
        let mut names: Vec<&str> = others
            .iter()
            .map(String::as_str)
            .take(OTHER_NAMES_SHOWN)
            .collect();
        if others.len() > OTHER_NAMES_SHOWN {
            names.push("...");
        }
        lines.push((
            false,
            format!(
                "{} other file(s) not matching {:?}, not taken: {}",
                others.len(),
                rule.pattern,
                names.join(", ")
            ),
        ));
    }
    lines
}
