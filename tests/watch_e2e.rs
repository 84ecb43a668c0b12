//! The daemon in watch mode, end to end: the real watcher on real folders,
//! the real daemon in-process and the strict sandbox over real sockets.
//! Each test drops files the way people and build machines do and checks
//! what PatchKit ends up with, what the store recorded and what happened to
//! the files.
//!
//! Absence (a file never taken, a build never repeated) is shown with a
//! sentinel: a build dropped after the scenario settles after it, so by the
//! time the sentinel is published the scenario has had its chance.

mod harness;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use harness::zips::{Zip, sha256};
use harness::{
    CREATE_UPLOAD, CREATE_VERSION, Dropped, PUBLISH, Scenario, Setup, Watching, app,
    failure_reason, until,
};
use patchkit_autopublish::config::{Config, Problem};
use patchkit_autopublish::state::{BuildState, Stage};

/// Long enough that the pauses between the pieces of a slow write
/// ([`PAUSE`]) never look like a finished file on a busy machine, short
/// enough to keep every test quick.
const SETTLE: &str = "1s";
const SETTLE_DURATION: Duration = Duration::from_secs(1);
/// The pause between two pieces of a slow write: well under [`SETTLE`].
const PAUSE: Duration = Duration::from_millis(200);

/// A STORE ZIP of one entry with `payload` bytes derived from `seed`.
fn zip_bytes(seed: &str, payload: u64) -> Vec<u8> {
    Zip::seeded(seed, payload).bytes()
}

/// What the assertions of the harness need to know about a file the test
/// wrote itself.
fn dropped(i: usize, path: &Path, bytes: &[u8]) -> Dropped {
    Dropped {
        app: app(i),
        path: path.to_owned(),
        label: path.file_stem().unwrap().to_string_lossy().into_owned(),
        sha256: sha256(bytes),
    }
}

/// Writes `bytes` to `path` in `pieces` appends, [`PAUSE`] apart, checking
/// after each pause that the daemon has not taken the file yet.
async fn write_in_pieces(d: &mut Watching, path: &Path, bytes: &[u8], pieces: usize) {
    let mut file = std::fs::File::create(path).unwrap();
    for piece in bytes.chunks(bytes.len().div_ceil(pieces)) {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        // The pause is the point: a writer that stalls between pieces.
        tokio::time::sleep(PAUSE).await;
        assert!(
            d.builds_of(path).is_empty(),
            "{} was taken before its last byte:\n{}",
            path.display(),
            d.history()
        );
    }
}

/// The single build of a slowly written file: taken once, with its final
/// size, published with the final content.
async fn assert_taken_once_whole(s: &Scenario, d: &mut Watching, path: &Path, bytes: &[u8]) {
    let build = d.published(path).await;
    assert_eq!(build.identity.size, bytes.len() as u64);
    assert_eq!(d.builds_of(path), vec![build.id], "{}", d.history());
    s.assert_published_in_order(&app(0), &[&dropped(0, path, bytes)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_written_in_pieces_is_taken_once_after_its_last_byte() {
    let s = Setup::new(1).settle(SETTLE).start().await;
    let mut d = s.watch().await;
    let path = s.folder(0).join("slow.zip");
    // Two chunks' worth, written in ten appends over about two seconds.
    let bytes = zip_bytes("slow", 400_000);
    write_in_pieces(&mut d, &path, &bytes, 10).await;
    assert_taken_once_whole(&s, &mut d, &path, &bytes).await;
    d.stop().await;
    assert_eq!(s.builds().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_name_renamed_in_is_published_after_settle_and_the_temp_name_never() {
    let s = Setup::new(1).settle(SETTLE).start().await;
    let mut d = s.watch().await;
    let part = s.folder(0).join("x.zip.part");
    let bytes = zip_bytes("x", 1000);
    std::fs::write(&part, &bytes).unwrap();
    let sentinel = s.drop_zip(0, "sentinel", 1000);
    d.published(&sentinel.path).await;

    let path = s.folder(0).join("x.zip");
    std::fs::rename(&part, &path).unwrap();
    let renamed = Instant::now();
    d.event("x.zip taken", |e| e.build.file == path).await;
    let taken_after = renamed.elapsed();
    d.published(&path).await;
    // Taken by the rename's event one settle period later, not by a rescan
    // (an hour away).
    assert!(
        taken_after >= SETTLE_DURATION,
        "taken after {taken_after:?}"
    );
    assert!(
        taken_after < SETTLE_DURATION + Duration::from_secs(5),
        "taken after {taken_after:?}"
    );
    d.stop().await;
    let files: Vec<_> = s.builds().await.into_iter().map(|b| b.file).collect();
    assert_eq!(files, vec![sentinel.path.clone(), path.clone()]);
    s.assert_published_in_order(&app(0), &[&sentinel, &dropped(0, &path, &bytes)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_zips_dropped_at_once_are_published_once_each() {
    let started = Instant::now();
    let s = Setup::new(1).settle(SETTLE).workers(2).start().await;
    let d = s.watch().await;
    let files: Vec<Dropped> = (0..100)
        .map(|n| s.drop_zip(0, &format!("build-{n:03}"), 1000))
        .collect();
    until("a hundred published versions", || {
        let snap = s.snapshot();
        snap.versions(&app(0))
            .iter()
            .filter(|v| v.published)
            .count()
            >= 100
    })
    .await;
    d.until_idle().await;
    d.stop().await;

    let builds = s.builds().await;
    assert_eq!(builds.len(), 100);
    assert!(builds.iter().all(|b| b.state.name() == "published"));
    let snap = s.snapshot();
    assert_eq!(snap.count(CREATE_VERSION, "201"), 100);
    assert_eq!(snap.total(PUBLISH), 100);
    let mut got: Vec<(String, Option<String>)> = snap
        .versions(&app(0))
        .iter()
        .map(|v| (v.label.clone(), v.content_sha256.clone()))
        .collect();
    got.sort();
    let want: Vec<(String, Option<String>)> = files
        .iter()
        .map(|f| (f.label.clone(), Some(f.sha256.clone())))
        .collect();
    assert_eq!(got, want);
    eprintln!("a hundred builds published in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_dropped_while_stopped_are_found_and_kept_files_are_not_published_again() {
    let s = Setup::new(1).settle(SETTLE).start().await;
    let early = s.drop_zip(0, "early", 1000);
    let mut d = s.watch().await;
    d.published(&early.path).await;
    d.stop().await;

    // Both files are in the folder at the next start and settle together:
    // once `later` is published, `early` has been looked at again.
    let later = s.drop_zip(0, "later", 1000);
    let mut d = s.watch().await;
    d.published(&later.path).await;
    assert!(d.builds_of(&early.path).is_empty(), "{}", d.history());
    d.stop().await;

    assert!(
        early.path.exists(),
        "after_publish = \"keep\" leaves the file"
    );
    assert_eq!(s.builds().await.len(), 2);
    s.assert_published_in_order(&app(0), &[&early, &later]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_folder_created_late_deleted_or_replaced_is_watched() {
    // Rule 1's folder is there throughout; its builds mark points in time.
    let s = Setup::new(2).settle(SETTLE).start().await;
    let folder = s.folder(0);
    std::fs::remove_dir(&folder).unwrap();
    let marker = s.drop_zip(1, "marker-0", 1000);
    let mut d = s.watch().await;
    // The first check of every folder, which found rule 0's missing, came
    // before the marker's settle.
    d.published(&marker.path).await;

    std::fs::create_dir(&folder).unwrap();
    let created = s.drop_zip(0, "created", 1000);
    d.published(&created.path).await;

    // Deleted, noticed as missing (the marker settles after the deletion
    // was handled), then created again.
    std::fs::remove_dir_all(&folder).unwrap();
    let marker = s.drop_zip(1, "marker-1", 1000);
    d.published(&marker.path).await;
    std::fs::create_dir(&folder).unwrap();
    let recreated = s.drop_zip(0, "recreated", 1000);
    d.published(&recreated.path).await;

    // Replaced in one go: deleted and created again at once.
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::create_dir(&folder).unwrap();
    let replaced = s.drop_zip(0, "replaced", 1000);
    d.published(&replaced.path).await;
    d.stop().await;

    s.assert_published_in_order(&app(0), &[&created, &recreated, &replaced]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_folder_finds_and_settles_files_the_same_way() {
    let s = Setup::new(1)
        .settle(SETTLE)
        .rule(0, "poll = \"200ms\"")
        .start()
        .await;
    let mut d = s.watch().await;
    let path = s.folder(0).join("polled.zip");
    let bytes = zip_bytes("polled", 300_000);
    write_in_pieces(&mut d, &path, &bytes, 6).await;
    assert_taken_once_whole(&s, &mut d, &path, &bytes).await;
    d.stop().await;
    assert_eq!(s.builds().await.len(), 1);
}

/// Offsets of the general purpose flags and the compression method in the
/// local header (at the start of a one-entry ZIP) and in the central header.
fn patch_headers(zip: &mut [u8], patch: impl Fn(&mut [u8], usize, usize)) {
    patch(zip, 6, 8);
    let central = zip
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("a ZIP has a central directory");
    patch(zip, central + 8, central + 10);
}

/// A one-entry STORE ZIP whose payload cannot be mistaken for a header.
fn plain_zip() -> Vec<u8> {
    Zip::filled(b'x', 1000).bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_zips_fail_validation_with_their_reason_and_upload_nothing() {
    let valid = plain_zip();
    let no_entries = Zip::empty().bytes();
    let mut deflate64 = valid.clone();
    patch_headers(&mut deflate64, |z, _, method| z[method] = 9);
    let mut encrypted = valid.clone();
    patch_headers(&mut encrypted, |z, flags, _| z[flags] |= 1);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text.zip",
            b"release notes, not a build".to_vec(),
            "is not a ZIP archive",
        ),
        ("zero.zip", Vec::new(), "is empty (0 bytes)"),
        (
            "truncated.zip",
            valid[..valid.len() / 2].to_vec(),
            "looks truncated",
        ),
        ("no-entries.zip", no_entries, "is a ZIP with no entries"),
        ("deflate64.zip", deflate64, "DEFLATE64 (method 9)"),
        ("encrypted.zip", encrypted, "is encrypted"),
    ];

    let s = Setup::new(1).settle(SETTLE).start().await;
    let mut d = s.watch().await;
    for (name, bytes, _) in &cases {
        std::fs::write(s.folder(0).join(name), bytes).unwrap();
    }
    for (name, _, message) in &cases {
        let build = d.failed(&s.folder(0).join(name)).await;
        let reason = failure_reason(&build);
        assert!(reason.contains(message), "{name}: {reason:?}");
        assert!(
            matches!(
                build.state,
                BuildState::Failed {
                    stage: Stage::Validate,
                    ..
                }
            ),
            "{name}: {}",
            build.state
        );
    }
    d.stop().await;

    assert_eq!(s.builds().await.len(), cases.len());
    let snap = s.snapshot();
    assert!(snap.versions(&app(0)).is_empty());
    assert_eq!(snap.total(CREATE_VERSION), 0);
    assert_eq!(snap.total(CREATE_UPLOAD), 0);
    assert!(snap.uploads.is_empty());
}

/// Today's UTC date, as `{date}` renders it.
fn utc_date(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_form_renders_as_documented() {
    let s = Setup::new(3).settle(SETTLE).start().await;
    s.set_rule_key(
        0,
        "filename_regex",
        r"'^Game-(?P<version>[0-9.]+)-(?P<platform>[a-z0-9]+)\.zip$'",
    );
    s.set_rule_key(
        0,
        "label",
        r#""{version} on {platform} #{seq} ({stem} / {filename})""#,
    );
    s.set_rule_key(
        0,
        "changelog",
        r#""Taken {date} at {time} ({datetime}), build {seq}""#,
    );
    s.set_rule_key(1, "changelog_file", r#""{stem}.changelog.md""#);
    s.set_rule_key(2, "filename_regex", r"'^(?P<tag>[a-z]*)build\.zip$'");
    s.set_rule_key(2, "label", r#""{tag}""#);
    let before = SystemTime::now();
    let mut d = s.watch().await;

    let first = s.drop_zip(0, "Game-1.2-win64", 1000);
    let stray = s.drop_zip(0, "notes", 1000);
    let notes = "Fixed the save bug.\n\nNew level: *The Dunes*.";
    std::fs::write(s.folder(1).join("1.0.changelog.md"), notes).unwrap();
    let documented = s.drop_zip(1, "1.0", 1000);
    let untagged = s.drop_zip(2, "build", 1000);

    let build = d.published(&first.path).await;
    assert_eq!(
        build.label,
        "1.2 on win64 #1 (Game-1.2-win64 / Game-1.2-win64.zip)"
    );
    let changelog = build.changelog.clone().unwrap();
    let after = SystemTime::now();
    let re = regex::Regex::new(
        r"^Taken (\d{4}-\d\d-\d\d) at (\d\d:\d\d:\d\d) \((\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\), build 1$",
    )
    .unwrap();
    let caps = re
        .captures(&changelog)
        .unwrap_or_else(|| panic!("{changelog:?}"));
    assert!([utc_date(before), utc_date(after)].contains(&caps[1].to_owned()));
    assert_eq!(&caps[3], format!("{}T{}Z", &caps[1], &caps[2]));
    let taken = humantime::parse_rfc3339(&caps[3]).unwrap();
    let second = Duration::from_secs(1);
    assert!(taken + second > before && taken <= after, "{changelog:?}");

    let build = d.published(&documented.path).await;
    assert_eq!(build.label, "1.0");
    let snap = s.snapshot();
    assert_eq!(snap.versions(&app(0))[0].changelog, changelog);
    assert_eq!(snap.versions(&app(1))[0].changelog, notes);

    let reason = failure_reason(&d.failed(&untagged.path).await).to_owned();
    assert!(reason.contains("renders empty"), "{reason}");

    // `{seq}` counts per rule, across builds and restarts.
    let next = s.drop_zip(0, "Game-1.3-linux64", 1000);
    assert!(d.published(&next.path).await.label.contains("#2"));
    assert!(d.builds_of(&stray.path).is_empty(), "{}", d.history());
    d.stop().await;
    let mut d = s.watch().await;
    let last = s.drop_zip(0, "Game-1.4-mac", 1000);
    assert_eq!(
        d.published(&last.path).await.label,
        "1.4 on mac #3 (Game-1.4-mac / Game-1.4-mac.zip)"
    );
    d.stop().await;

    let builds = s.builds().await;
    assert!(builds.iter().all(|b| b.file != stray.path));
    assert_eq!(builds.len(), 5);
    assert!(s.snapshot().versions(&app(2)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_deleted_moved_or_moved_with_an_error_note_as_the_rule_says() {
    let s = Setup::new(3).settle(SETTLE).start().await;
    let done = s.dir.path().join("done");
    let failed = s.dir.path().join("failed");
    s.set_rule_key(0, "after_publish", r#""delete""#);
    s.set_rule_key(1, "after_publish", r#""move""#);
    s.set_rule_key(
        1,
        "done_folder",
        &format!("{:?}", done.display().to_string()),
    );
    s.set_rule_key(2, "on_failure", r#""move""#);
    s.set_rule_key(
        2,
        "failed_folder",
        &format!("{:?}", failed.display().to_string()),
    );
    let mut d = s.watch().await;

    let deleted = s.drop_zip(0, "deleted", 1000);
    let moved = s.drop_zip(1, "moved", 1000);
    let broken = s.folder(2).join("broken.zip");
    std::fs::write(&broken, "not a zip").unwrap();
    d.published(&deleted.path).await;
    d.published(&moved.path).await;
    let build = d.failed(&broken).await;

    // The file is disposed of right after the build's final state is
    // stored, just after the event.
    until("the published file deleted", || !deleted.path.exists()).await;
    let moved_to = done.join("moved.zip");
    until("the published file moved", || {
        moved_to.exists() && !moved.path.exists()
    })
    .await;
    assert_eq!(sha256(&std::fs::read(&moved_to).unwrap()), moved.sha256);
    let note = failed.join("broken.zip.error.txt");
    until("the failed file moved with its note", || {
        note.exists() && !broken.exists()
    })
    .await;
    assert_eq!(
        std::fs::read(failed.join("broken.zip")).unwrap(),
        b"not a zip"
    );
    d.stop().await;

    let note = std::fs::read_to_string(&note).unwrap();
    assert!(note.contains(failure_reason(&build)), "{note}");
    assert!(note.contains("is not a ZIP archive"), "{note}");
    assert!(note.contains("What to do"), "{note}");
    assert!(note.contains("drop the fixed build"), "{note}");

    // The note says to move the file back before `retry`: a restart in
    // between must not move it away again.
    std::fs::rename(failed.join("broken.zip"), &broken).unwrap();
    let mut d = s.watch().await;
    let sentinel = s.drop_zip(2, "sentinel", 1000);
    d.published(&sentinel.path).await;
    d.stop().await;
    assert!(broken.exists(), "the file moved back was moved away again");
}

fn problem(text: &str) -> Problem {
    match Config::parse(text, Path::new("/etc/pka/config.toml")) {
        Ok(_) => panic!("expected the config to be refused:\n{text}"),
        Err(err) => match err.problems() {
            // A message is one readable sentence, not a wrapped source line.
            [one] if one.message.contains("  ") => panic!("stray spaces in {one}"),
            [one] => one.clone(),
            more => panic!("expected one problem, got {more:?}"),
        },
    }
}

#[test]
fn rule_config_errors_name_their_line_and_what_is_expected() {
    let rule = "[[rule]]\nname = \"game\"\nfolder = \"/srv/game\"\napp_secret = \"abc\"\n";

    let p = problem(&format!(
        "{rule}\n[[rule]]\nname = \"demo\"\nfolder = \"/srv/game\"\npattern = \"demo-*.zip\"\n\
         app_secret = \"def\"\n"
    ));
    assert_eq!(p.line, 6, "{p}");
    assert!(
        p.message.contains("same folder as [[rule]] \"game\""),
        "{p}"
    );
    assert!(p.message.contains("own folder"), "{p}");

    let p = problem(&format!("{rule}after_publish = \"move\"\n"));
    assert_eq!(p.line, 5, "{p}");
    assert!(p.message.contains("needs done_folder"), "{p}");

    let p = problem(&format!(
        "{rule}filename_regex = '^Game-(?P<v>[0-9.+\\.zip$'\n"
    ));
    assert_eq!(p.line, 5, "{p}");
    assert!(p.message.contains("not a valid regular expression"), "{p}");
    assert!(p.message.contains("expected e.g."), "{p}");

    let p = problem(&format!(
        "{rule}filename_regex = '^Game-(?P<version>[0-9.]+)\\.zip$'\nlabel = \"v{{ver}}\"\n"
    ));
    assert_eq!(p.line, 6, "{p}");
    assert!(p.message.contains("unknown placeholder {ver}"), "{p}");
    assert!(p.message.contains("{version}"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_new_files_spares_builds_in_flight_and_a_bad_one_changes_nothing() {
    // Processing takes long enough that the reload surely lands while the
    // first build is in it.
    let s = Setup::new(1)
        .settle(SETTLE)
        .sandbox(|c| c.job_duration(Duration::from_millis(300)))
        .start()
        .await;
    let mut d = s.watch().await;
    let before = s.drop_zip(0, "before", 1000);
    d.event("the first build processing", |e| {
        e.build.file == before.path && e.build.state.name() == "processing"
    })
    .await;
    s.set_rule_key(0, "label", r#""new-{stem}""#);
    d.reload(Ok(s.load_config())).await;
    let after = s.drop_zip(0, "after", 1000);
    assert_eq!(d.published(&before.path).await.label, "before");
    assert_eq!(d.published(&after.path).await.label, "new-after");

    let refused = Config::parse("[[rule]]\nname = 7\n", &s.config).unwrap_err();
    d.reload(Err(refused)).await;
    let kept = s.drop_zip(0, "kept", 1000);
    assert_eq!(d.published(&kept.path).await.label, "new-kept");
    d.stop().await;

    let snap = s.snapshot();
    let labels: Vec<&str> = snap
        .versions(&app(0))
        .iter()
        .filter(|v| v.published)
        .map(|v| v.label.as_str())
        .collect();
    assert_eq!(labels, ["before", "new-after", "new-kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_refused_by_filename_regex_is_taken_once_the_rule_is_changed_and_reloaded() {
    let s = Setup::new(1).settle(SETTLE).start().await;
    s.set_rule_key(0, "filename_regex", r"'^Game-[0-9.]+\.zip$'");
    let mut d = s.watch().await;
    let refused = s.drop_zip(0, "game_1.5", 1000);
    let sentinel = s.drop_zip(0, "Game-1.4", 1000);
    d.published(&sentinel.path).await;
    assert!(d.builds_of(&refused.path).is_empty(), "{}", d.history());

    // The refusal says "rename it or change the rule": change the rule.
    s.set_rule_key(0, "filename_regex", r"'^(Game-|game_)[0-9.]+\.zip$'");
    d.reload(Ok(s.load_config())).await;
    d.published(&refused.path).await;
    d.stop().await;
    s.assert_published_in_order(&app(0), &[&sentinel, &refused]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_folder_the_rule_watches_is_refused_and_an_ignored_one_publishes_once() {
    let s = Setup::new(1)
        .settle(SETTLE)
        .rule(0, "recursive = true")
        .start()
        .await;
    let set_done = |name: &str| {
        let done = s.folder(0).join(name);
        s.set_rule_key(
            0,
            "done_folder",
            &format!("{:?}", done.display().to_string()),
        );
        done
    };
    s.set_rule_key(0, "after_publish", r#""move""#);

    // Moved files would be found again in the rule's own tree: refused.
    set_done("published");
    let err = Config::load(&s.config).unwrap_err();
    let [p] = err.problems() else { panic!("{err}") };
    let text = std::fs::read_to_string(&s.config).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("done_folder"))
        .unwrap()
        + 1;
    assert_eq!(p.line, line, "{p}");
    assert!(p.message.contains("published again"), "{p}");
    assert!(p.message.contains("choose a folder outside"), "{p}");

    // Under a name the rule ignores, moved files stay out of its sight.
    let done = set_done(".published");
    let mut d = s.watch().await;
    let first = s.drop_zip(0, "first", 1000);
    d.published(&first.path).await;
    until("the file moved", || done.join("first.zip").exists()).await;
    let sentinel = s.drop_zip(0, "sentinel", 1000);
    d.published(&sentinel.path).await;
    d.stop().await;
    let files: Vec<_> = s.builds().await.into_iter().map(|b| b.file).collect();
    assert_eq!(files, [first.path.clone(), sentinel.path.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_dropped_while_stopped_reach_patchkit_oldest_first() {
    let s = Setup::new(1).settle(SETTLE).start().await;
    // Names sort the other way round from their ages.
    let files = [
        s.drop_zip(0, "c-oldest", 1000),
        s.drop_zip(0, "b-middle", 1000),
        s.drop_zip(0, "a-newest", 1000),
    ];
    let base = SystemTime::now() - Duration::from_secs(3600);
    for (age, file) in files.iter().enumerate() {
        std::fs::File::options()
            .write(true)
            .open(&file.path)
            .unwrap()
            .set_modified(base + Duration::from_secs(60 * age as u64))
            .unwrap();
    }
    let mut d = s.watch().await;
    for file in &files {
        d.published(&file.path).await;
    }
    d.stop().await;
    let labels: Vec<String> = s
        .snapshot()
        .versions(&app(0))
        .iter()
        .map(|v| v.label.clone())
        .collect();
    assert_eq!(labels, ["c-oldest", "b-middle", "a-newest"]);
}
