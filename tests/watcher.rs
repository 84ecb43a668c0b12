//! The watcher on real folders with the real notify backends: a build is
//! taken once, only when complete, whichever way it arrives; temp names,
//! other files and broken ZIPs are never candidates; folders may come and
//! go.
//!
//! Absence is shown with a sentinel: a file dropped after the scenario,
//! whose candidate arrives at least one settle period later. Anything the
//! scenario would wrongly emit is emitted before it.

mod harness;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use globset::{Glob, GlobSetBuilder};
use patchkit_autopublish::watcher::{
    Candidate, MIN_GRACE, WatchEvent, WatchOptions, WatchSpec, Watcher, WatcherHandle, scan_folder,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use harness::zips::Zip;

/// Short enough for quick tests, long enough that the pauses between the
/// writes below (250 ms) never look like a finished file on a busy machine.
const SETTLE: Duration = Duration::from_millis(800);
/// How long any expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

fn glob(pattern: &str) -> globset::GlobMatcher {
    Glob::new(pattern).unwrap().compile_matcher()
}

fn rule(name: &str, folder: &Path, pattern: &str) -> WatchSpec {
    WatchSpec::new(name, folder, glob(pattern))
}

fn options() -> WatchOptions {
    // The periodic rescan is kept out of the way; tests that need a scan
    // ask for one.
    WatchOptions {
        settle: SETTLE,
        rescan: Duration::from_secs(3600),
        drain: false,
    }
}

/// A valid ZIP of about `size` bytes (one stored entry).
fn zip_bytes(size: u64) -> Vec<u8> {
    Zip::filled(7, size).bytes()
}

fn write_zip(path: &Path) -> u64 {
    let bytes = zip_bytes(1000);
    std::fs::write(path, &bytes).unwrap();
    bytes.len() as u64
}

struct Harness {
    handle: WatcherHandle,
    events: mpsc::Receiver<WatchEvent>,
    cancel: CancellationToken,
}

fn start(specs: Vec<WatchSpec>) -> Harness {
    let cancel = CancellationToken::new();
    let (handle, events) = Watcher::start(specs, options(), cancel.clone()).unwrap();
    Harness {
        handle,
        events,
        cancel,
    }
}

impl Harness {
    /// The next event, `Settling` and `Abandoned` notices included.
    async fn next_any(&mut self) -> WatchEvent {
        self.next_within(WAIT).await
    }

    async fn next_within(&mut self, wait: Duration) -> WatchEvent {
        match timeout(wait, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the watcher stopped"),
            Err(_) => panic!("no watcher event within {wait:?}"),
        }
    }

    /// Asserts that no file was taken yet: the events waiting are at most
    /// `Settling` notices.
    fn assert_nothing_taken(&mut self, when: &str) {
        while let Ok(event) = self.events.try_recv() {
            assert!(
                matches!(event, WatchEvent::Settling { .. }),
                "nothing may be taken {when}: {event:?}"
            );
        }
    }

    /// The next event that is not a `Settling` or `Abandoned` notice.
    async fn next(&mut self) -> WatchEvent {
        loop {
            match self.next_any().await {
                WatchEvent::Settling { .. } | WatchEvent::Abandoned { .. } => continue,
                event => return event,
            }
        }
    }

    async fn candidate(&mut self) -> Candidate {
        match self.next().await {
            WatchEvent::Candidate(c) => c,
            other => panic!("expected a candidate, got {other:?}"),
        }
    }

    /// Events until the candidate for `path`, which is not included.
    async fn until_candidate(&mut self, path: &Path) -> Vec<WatchEvent> {
        let mut before = Vec::new();
        loop {
            match self.next().await {
                WatchEvent::Candidate(c) if c.path == path => return before,
                event => before.push(event),
            }
        }
    }

    /// Drops a fresh ZIP in `folder` and returns every event emitted before
    /// its candidate.
    async fn sentinel(&mut self, folder: &Path) -> Vec<WatchEvent> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = folder.join(format!(
            "zz-sentinel-{}.zip",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        write_zip(&path);
        self.until_candidate(&path).await
    }

    /// Waits until the watcher has scanned `folder` and watches it, so what
    /// the test does next arrives as events, not through the startup scan.
    async fn ready(&mut self, folder: &Path) {
        assert!(self.sentinel(folder).await.is_empty());
    }

    async fn stop(self) {
        self.cancel.cancel();
        timeout(WAIT, self.handle.stopped())
            .await
            .expect("the watcher stops on cancel");
    }
}

fn paths(events: &[WatchEvent]) -> Vec<PathBuf> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Candidate(c) => c.path.clone(),
            WatchEvent::Invalid { candidate, .. } => candidate.path.clone(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_zip_written_in_pieces_is_taken_once_after_its_last_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(vec![rule("game", dir.path(), "*.zip")]);
    h.ready(dir.path()).await;
    let path = dir.path().join("build.zip");
    let bytes = zip_bytes(700_000);
    // Seven writes 250 ms apart, each closing the file: every close looks
    // like a finished copy to inotify, only the settle period tells.
    for chunk in bytes.chunks(100_000) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(chunk).unwrap();
        drop(file);
        // The pause is the point: a copy that stalls between pieces.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    h.assert_nothing_taken("before the last byte");
    let c = h.candidate().await;
    assert_eq!(c.path, path);
    assert_eq!(c.rule, "game");
    assert_eq!(c.identity.size, bytes.len() as u64);
    assert!(h.sentinel(dir.path()).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_temp_name_renamed_into_place_is_taken_once_and_the_temp_name_never() {
    let dir = tempfile::tempdir().unwrap();
    // The glob matches the temp names too: only the ignore list keeps them out.
    let mut h = start(vec![rule("game", dir.path(), "*.zip*")]);
    h.ready(dir.path()).await;
    let part = dir.path().join("x.zip.part");
    let hidden = dir.path().join(".y.zip.tmp");
    write_zip(&part);
    write_zip(&hidden);
    std::fs::rename(&part, dir.path().join("x.zip")).unwrap();
    std::fs::rename(&hidden, dir.path().join("y.zip")).unwrap();
    let mut got = HashSet::new();
    got.insert(h.candidate().await.path);
    got.insert(h.candidate().await.path);
    let want: HashSet<_> = [dir.path().join("x.zip"), dir.path().join("y.zip")].into();
    assert_eq!(got, want);
    assert!(h.sentinel(dir.path()).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_hundred_zips_dropped_at_once_give_a_hundred_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(vec![rule("game", dir.path(), "*.zip")]);
    h.ready(dir.path()).await;
    let bytes = zip_bytes(2000);
    for i in 0..100 {
        std::fs::write(dir.path().join(format!("build-{i:03}.zip")), &bytes).unwrap();
    }
    let mut seen = HashSet::new();
    while seen.len() < 100 {
        let c = h.candidate().await;
        assert!(
            seen.insert(c.path.clone()),
            "{} emitted twice",
            c.path.display()
        );
    }
    h.handle.rescan_now().unwrap();
    assert!(h.sentinel(dir.path()).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn files_present_before_start_are_found_by_the_startup_scan() {
    let dir = tempfile::tempdir().unwrap();
    write_zip(&dir.path().join("old-1.zip"));
    write_zip(&dir.path().join("old-2.zip"));
    let started = Instant::now();
    let mut h = start(vec![rule("game", dir.path(), "*.zip")]);
    let mut got = HashSet::new();
    got.insert(h.candidate().await.path);
    got.insert(h.candidate().await.path);
    // Taken after one settle check, never before it.
    assert!(started.elapsed() >= SETTLE);
    assert_eq!(got.len(), 2);
    assert!(h.sentinel(dir.path()).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_folder_created_after_start_or_recreated_is_watched() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("drops");
    let mut h = start(vec![rule("game", &folder, "*.zip")]);
    match h.next().await {
        WatchEvent::FolderMissing { rule, folder: f } => {
            assert_eq!((rule.as_str(), f.as_path()), ("game", folder.as_path()));
        }
        other => panic!("expected FolderMissing, got {other:?}"),
    }
    std::fs::create_dir(&folder).unwrap();
    assert!(matches!(h.next().await, WatchEvent::FolderBack { .. }));
    write_zip(&folder.join("first.zip"));
    assert_eq!(h.candidate().await.path, folder.join("first.zip"));

    std::fs::remove_dir_all(&folder).unwrap();
    assert!(matches!(h.next().await, WatchEvent::FolderMissing { .. }));
    std::fs::create_dir(&folder).unwrap();
    assert!(matches!(h.next().await, WatchEvent::FolderBack { .. }));
    write_zip(&folder.join("second.zip"));
    assert_eq!(h.candidate().await.path, folder.join("second.zip"));
    h.stop().await;
}

#[tokio::test]
async fn polling_finds_files_and_settles_them_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = rule("share", dir.path(), "*.zip");
    spec.poll = Some(Duration::from_millis(200));
    let mut h = start(vec![spec]);
    h.ready(dir.path()).await;
    let path = dir.path().join("build.zip");
    let bytes = zip_bytes(400_000);
    for chunk in bytes.chunks(100_000) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(chunk).unwrap();
        drop(file);
        // The pause is the point: a copy that stalls between pieces.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    h.assert_nothing_taken("before the poll saw it settle");
    let c = h.candidate().await;
    assert_eq!(
        (c.path.as_path(), c.identity.size),
        (path.as_path(), bytes.len() as u64)
    );
    assert!(h.sentinel(dir.path()).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_broken_zip_is_reported_invalid_once_and_a_cut_one_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(vec![rule("game", dir.path(), "*.zip")]);
    let started = std::time::Instant::now();
    std::fs::write(dir.path().join("notes.zip"), b"this is not a zip").unwrap();
    let good = zip_bytes(5000);
    std::fs::write(dir.path().join("cut.zip"), &good[..good.len() / 2]).unwrap();
    // Not a ZIP at all: reported once settled.
    match h.next().await {
        WatchEvent::Invalid { candidate, error } => {
            assert!(!error.to_string().is_empty());
            assert_eq!(candidate.path, dir.path().join("notes.zip"));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    // A ZIP whose end is missing looks like a copy that paused: it is
    // reported only after the grace, whatever `settle` is.
    match h.next_within(MIN_GRACE + WAIT).await {
        WatchEvent::Invalid { candidate, error } => {
            assert!(!error.to_string().is_empty());
            assert_eq!(candidate.path, dir.path().join("cut.zip"));
            assert!(candidate.identity.size > 0);
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(
        started.elapsed() >= MIN_GRACE,
        "the cut ZIP was reported after {:?}, before the grace of {MIN_GRACE:?}",
        started.elapsed()
    );
    h.handle.rescan_now().unwrap();
    h.handle.rescan_now().unwrap();
    assert!(h.sentinel(dir.path()).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn other_names_and_subfolders_follow_the_rule() {
    let flat = tempfile::tempdir().unwrap();
    let deep = tempfile::tempdir().unwrap();
    for dir in [flat.path(), deep.path()] {
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::create_dir(dir.join(".hidden")).unwrap();
        write_zip(&dir.join("top.zip"));
        write_zip(&dir.join("sub/nested.zip"));
        write_zip(&dir.join(".hidden/secret.zip"));
        write_zip(&dir.join("readme.txt"));
        write_zip(&dir.join("~lock.zip"));
        write_zip(&dir.join("dl.zip.crdownload"));
    }
    let mut recursive = rule("deep", deep.path(), "*.zip");
    recursive.recursive = true;
    let mut h = start(vec![rule("flat", flat.path(), "*.zip"), recursive]);
    let mut got: HashSet<PathBuf> = HashSet::new();
    got.extend(paths(&h.sentinel(flat.path()).await));
    got.extend(paths(&h.sentinel(deep.path()).await));
    // Sub-folders that arrive after start, already full: one moved in (its
    // files send no event at all), then one made and filled at once (its
    // files may land before its own watch exists). Each step is settled
    // before the next, so a scan caused by one cannot hide the other.
    let outside = tempfile::tempdir_in(deep.path().parent().unwrap()).unwrap();
    for dir in [flat.path(), deep.path()] {
        let moving = outside.path().join(dir.file_name().unwrap());
        std::fs::create_dir(&moving).unwrap();
        write_zip(&moving.join("moved.zip"));
        std::fs::rename(&moving, dir.join("moved")).unwrap();
    }
    got.extend(paths(&h.sentinel(flat.path()).await));
    got.extend(paths(&h.sentinel(deep.path()).await));
    assert!(got.contains(&deep.path().join("moved/moved.zip")));
    for dir in [flat.path(), deep.path()] {
        std::fs::create_dir(dir.join("made")).unwrap();
        write_zip(&dir.join("made/new.zip"));
    }
    got.extend(paths(&h.sentinel(flat.path()).await));
    got.extend(paths(&h.sentinel(deep.path()).await));
    got.retain(|p| !p.to_string_lossy().contains("zz-sentinel"));
    let want: HashSet<PathBuf> = [
        flat.path().join("top.zip"),
        deep.path().join("top.zip"),
        deep.path().join("sub/nested.zip"),
        deep.path().join("made/new.zip"),
        deep.path().join("moved/moved.zip"),
    ]
    .into();
    assert_eq!(got, want);
    h.stop().await;
}

#[tokio::test]
async fn a_rescan_finds_files_no_event_announced() {
    let quiet = tempfile::tempdir().unwrap();
    let clock = tempfile::tempdir().unwrap();
    // Polling once an hour: after the start, this folder sends no events,
    // as after a notify queue overflow.
    let mut silent = rule("quiet", quiet.path(), "*.zip");
    silent.poll = Some(Duration::from_secs(3600));
    let mut h = start(vec![silent, rule("clock", clock.path(), "*.zip")]);
    h.ready(clock.path()).await;
    let missed = quiet.path().join("missed.zip");
    write_zip(&missed);
    assert!(
        h.sentinel(clock.path()).await.is_empty(),
        "no event, no candidate"
    );
    h.handle.rescan_now().unwrap();
    assert_eq!(h.candidate().await.path, missed);
    h.stop().await;
}

#[tokio::test]
async fn an_updated_rule_set_applies_to_new_files() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut h = start(vec![rule("a", a.path(), "*.zip")]);
    write_zip(&a.path().join("one.zip"));
    assert_eq!(h.candidate().await.path, a.path().join("one.zip"));
    write_zip(&b.path().join("waiting.zip"));
    h.handle
        .update(vec![
            rule("a", a.path(), "*.zip"),
            rule("b", b.path(), "*.zip"),
        ])
        .unwrap();
    let c = h.candidate().await;
    assert_eq!(
        (c.rule.as_str(), c.path),
        ("b", b.path().join("waiting.zip"))
    );
    // Rule "a" was kept: its build is not emitted again.
    assert!(h.sentinel(a.path()).await.is_empty());
    h.stop().await;
}

#[test]
fn ignore_defaults_apply_only_when_a_rule_gives_none() {
    let dir = tempfile::tempdir().unwrap();
    write_zip(&dir.path().join(".dot.zip"));
    write_zip(&dir.path().join("plain.zip"));
    let mut spec = rule("r", dir.path(), "*.zip");
    let found = scan_folder(&spec).unwrap();
    assert_eq!(found.len(), 1);
    let mut own = GlobSetBuilder::new();
    own.add(Glob::new("plain*").unwrap());
    spec.names.ignore = Some(own.build().unwrap());
    let found: Vec<_> = scan_folder(&spec)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id.path)
        .collect();
    assert_eq!(found, vec![dir.path().join(".dot.zip")]);
}
