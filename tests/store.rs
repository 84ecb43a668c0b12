//! The build store against real sled databases in temporary directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use patchkit_autopublish::state::{BuildState, FileIdentity, Stage};
use patchkit_autopublish::store::record::{decode_build, encode_build};
use patchkit_autopublish::store::{
    Build, BuildId, Enqueued, ListFilter, NewBuild, Store, StoreError,
};

/// Opens the store in `dir`, retrying briefly while a store just dropped in
/// this process still holds sled's lock (its background threads can outlive
/// the handle for a moment). Test-only: the daemon opens once.
fn reopen(dir: &Path) -> Store {
    for _ in 0..50 {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
    panic!("{} stayed locked", dir.display());
}

fn identity(path: &str, size: u64, mtime_ns: i128) -> FileIdentity {
    FileIdentity {
        path: PathBuf::from(path),
        size,
        mtime_ns,
        inode: 77,
    }
}

fn new_build(app: &str, path: &str, mtime_ns: i128) -> NewBuild {
    NewBuild {
        rule: "windows".into(),
        app_secret: app.into(),
        file: PathBuf::from(path),
        identity: identity(path, 25, mtime_ns),
        label: "1.0.0".into(),
        changelog: None,
        publish: true,
    }
}

async fn enqueue_new(store: &Store, new: NewBuild) -> Build {
    match store.enqueue(new).await.unwrap() {
        Enqueued::New(b) => *b,
        Enqueued::Existing(id) => panic!("build {id} already existed"),
    }
}

/// Moves a build through `steps`, each a pure transition of the state before.
async fn advance(
    store: &Store,
    mut build: Build,
    steps: &[&dyn Fn(&BuildState) -> BuildState],
) -> Build {
    for step in steps {
        let next = step(&build.state);
        build = store
            .transition(build.id, &build.state, next)
            .await
            .unwrap();
    }
    build
}

/// A folder named through a symlink, through `./`, or the other way round
/// after the config changed: its files are the ones already recorded.
#[tokio::test]
async fn a_file_seen_through_another_spelling_of_its_folder_is_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    let real = dir.path().join("builds");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let at = |folder: &std::path::Path| {
        let path = folder.join("game.zip");
        new_build("app", path.to_str().unwrap(), 1)
    };

    let first = enqueue_new(&store, at(&real)).await;
    for other in [link.clone(), real.join("."), link.join("..").join("builds")] {
        assert_eq!(
            store.enqueue(at(&other)).await.unwrap(),
            Enqueued::Existing(first.id),
            "{}",
            other.display()
        );
        assert_eq!(
            store.find_by_identity(&at(&other).identity).unwrap(),
            Some(first.id)
        );
    }
    // Recorded through the symlink first: the real folder finds it too.
    let second = enqueue_new(
        &store,
        new_build("app", link.join("b.zip").to_str().unwrap(), 1),
    )
    .await;
    assert_eq!(
        store
            .enqueue(new_build("app", real.join("b.zip").to_str().unwrap(), 1))
            .await
            .unwrap(),
        Enqueued::Existing(second.id)
    );
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn the_same_file_is_enqueued_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let first = enqueue_new(&store, new_build("app", "/b/game.zip", 1)).await;
    assert_eq!(first.state, BuildState::Queued);
    assert_eq!(
        store
            .enqueue(new_build("app", "/b/game.zip", 1))
            .await
            .unwrap(),
        Enqueued::Existing(first.id)
    );
    // Another inode with the same path, size and mtime is the same file.
    let mut moved = new_build("app", "/b/game.zip", 1);
    moved.identity.inode = 999;
    assert_eq!(
        store.enqueue(moved).await.unwrap(),
        Enqueued::Existing(first.id)
    );
    // A new file at the same path (new mtime) is a new build.
    let second = enqueue_new(&store, new_build("app", "/b/game.zip", 2)).await;
    assert!(second.id > first.id);
    assert_eq!(store.len(), 2);
    assert_eq!(
        store
            .find_by_identity(&identity("/b/game.zip", 25, 2))
            .unwrap(),
        Some(second.id)
    );
    assert_eq!(
        store
            .find_by_identity(&identity("/b/other.zip", 25, 2))
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_transition_from_the_wrong_state_conflicts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let build = enqueue_new(&store, new_build("app", "/b/a.zip", 1)).await;
    let build = advance(&store, build, &[&|s| s.validated().unwrap()]).await;

    let stale = BuildState::Queued;
    let err = store
        .transition(build.id, &stale, stale.validated().unwrap())
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict { id, found } => {
            assert_eq!(id, build.id);
            assert_eq!(*found, BuildState::Validated);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(store.get(build.id).unwrap().unwrap(), build);

    let missing = BuildId(build.id.0 + 1000);
    assert!(matches!(
        store.transition(missing, &stale, BuildState::Validated).await,
        Err(StoreError::NotFound { id }) if id == missing
    ));
}

#[tokio::test]
async fn attempts_go_through_the_same_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let build = enqueue_new(&store, new_build("app", "/b/a.zip", 1)).await;

    let b = store
        .record_attempt(build.id, &BuildState::Queued, "timeout".into(), Some(5))
        .await
        .unwrap();
    let b2 = store
        .record_attempt(b.id, &BuildState::Queued, "503".into(), Some(9))
        .await
        .unwrap();
    assert_eq!(
        (b2.attempts, b2.last_error.as_deref(), b2.next_attempt_at),
        (2, Some("503"), Some(9))
    );
    assert!(matches!(
        store
            .record_attempt(b.id, &BuildState::Validated, "x".into(), None)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let cleared = store
        .clear_attempts(b.id, &BuildState::Queued)
        .await
        .unwrap();
    assert_eq!(
        (
            cleared.attempts,
            cleared.last_error,
            cleared.next_attempt_at
        ),
        (0, None, None)
    );
}

#[tokio::test]
async fn a_transition_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let build = enqueue_new(&store, new_build("app", "/b/a.zip", 1)).await;
    let id = build.id;
    let uploading = advance(
        &store,
        build,
        &[
            &|s| s.validated().unwrap(),
            &|s| {
                s.upload_started(34, 25, 10, identity("/b/a.zip", 25, 1))
                    .unwrap()
            },
            &|s| s.chunk_acknowledged(10).unwrap(),
        ],
    )
    .await;
    drop(store);

    let store = reopen(dir.path());
    let reread = store.get(id).unwrap().unwrap();
    assert_eq!(reread, uploading);
    assert!(matches!(
        reread.state,
        BuildState::Uploading {
            acknowledged: 10,
            ..
        }
    ));
    assert_eq!(store.unfinished().unwrap(), vec![uploading]);
}

#[tokio::test]
async fn a_second_open_names_the_directory_and_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();

    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    let shown = dir.path().display().to_string();
    assert!(
        message.contains(&format!("state directory {shown} is in use")),
        "{message}"
    );
    assert!(message.contains("lock on"), "{message}");
    assert!(message.contains("use another state_dir"), "{message}");
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let build = enqueue_new(&store, new_build("app", "/b/a.zip", 1)).await;
    drop(store);

    // Write a record from the future behind the store's back.
    let db = open_raw(dir.path());
    let future = br#"{"v":5,"id":0,"something":"new"}"#;
    db.open_tree("builds")
        .unwrap()
        .insert(build.id.to_key(), &future[..])
        .unwrap();
    db.flush().unwrap();
    drop(db);

    // Opening reads every record, so the store refuses to start rather than
    // skip a build it cannot understand.
    let err = open_err(dir.path());
    assert!(
        matches!(&err, StoreError::UnsupportedSchema { version: 5, key }
            if key == &format!("build {} in {}", build.id, dir.path().join("db").display())),
        "{err:?}"
    );
    assert!(err.to_string().contains("schema version 5"), "{err}");
    assert!(
        decode_build("x", future)
            .is_err_and(|e| matches!(e, StoreError::UnsupportedSchema { version: 5, .. }))
    );

    // And a database whose schema version is from the future is not opened.
    let db = open_raw(dir.path());
    db.open_tree("meta")
        .unwrap()
        .insert("schema_version", "5")
        .unwrap();
    db.flush().unwrap();
    drop(db);
    let err = open_err(dir.path());
    assert!(
        matches!(err, StoreError::UnsupportedSchema { version: 5, .. }),
        "{err:?}"
    );
}

/// The error of opening the store in `dir`, retrying like `reopen` while the
/// lock is still held.
fn open_err(dir: &Path) -> StoreError {
    for _ in 0..50 {
        match Store::open(dir) {
            Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return e,
            Ok(_) => panic!("{} opened", dir.display()),
        }
    }
    panic!("{} stayed locked", dir.display());
}

/// Opens the sled database under a state directory directly, retrying like
/// `reopen`.
fn open_raw(dir: &Path) -> sled::Db {
    for _ in 0..50 {
        match sled::open(dir.join("db")) {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    panic!("could not open {} with sled", dir.display());
}

#[test]
fn records_without_a_version_or_with_garbage_are_corrupt_not_panics() {
    for raw in [&br#"{"id":1}"#[..], b"not json", b""] {
        assert!(matches!(
            decode_build("build 1", raw),
            Err(StoreError::Corrupt { .. })
        ));
    }
}

#[tokio::test]
async fn builds_of_an_app_come_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a1 = enqueue_new(&store, new_build("app-a", "/b/1.zip", 1)).await;
    let b1 = enqueue_new(&store, new_build("app-b", "/b/2.zip", 1)).await;
    let a2 = enqueue_new(&store, new_build("app-a", "/b/3.zip", 1)).await;
    // A secret that extends another must not leak into its listing.
    let _ = enqueue_new(&store, new_build("app-aa", "/b/4.zip", 1)).await;
    let a3 = enqueue_new(&store, new_build("app-a", "/b/5.zip", 1)).await;

    let ids = |v: Vec<Build>| v.into_iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.by_app("app-a").unwrap()),
        vec![a1.id, a2.id, a3.id]
    );
    assert_eq!(ids(store.by_app("app-b").unwrap()), vec![b1.id]);
    assert!(store.by_app("nobody").unwrap().is_empty());
    let all = ids(store.list(&ListFilter::default()).unwrap());
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    let filtered = store
        .list(&ListFilter {
            app_secret: Some("app-b".into()),
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(ids(filtered), vec![b1.id]);
}

#[tokio::test]
async fn seq_counters_are_per_rule_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.next_seq("win").await.unwrap(), 1);
    assert_eq!(store.next_seq("win").await.unwrap(), 2);
    assert_eq!(store.next_seq("mac").await.unwrap(), 1);
    drop(store);

    let store = reopen(dir.path());
    assert_eq!(store.next_seq("win").await.unwrap(), 3);
    assert_eq!(store.next_seq("mac").await.unwrap(), 2);
}

#[tokio::test]
async fn pruning_removes_old_finished_builds_but_remembers_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let done = enqueue_new(&store, new_build("app", "/b/1.zip", 1)).await;
    let done = advance(&store, done, &[&|s| s.cancelled().unwrap()]).await;
    let failed = enqueue_new(&store, new_build("app", "/b/2.zip", 1)).await;
    let failed = advance(
        &store,
        failed,
        &[&|s| s.failed(Stage::Validate, "not a zip", 1).unwrap()],
    )
    .await;
    let live = enqueue_new(&store, new_build("app", "/b/3.zip", 1)).await;

    // Nothing is older than an hour.
    assert_eq!(
        store
            .prune_finished(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    let after_all = failed.updated_at.max(done.updated_at) + 1;
    assert_eq!(store.prune_finished_before(after_all).await.unwrap(), 2);

    assert_eq!(store.len(), 1);
    assert_eq!(store.get(done.id).unwrap(), None);
    assert_eq!(store.get(failed.id).unwrap(), None);
    assert_eq!(store.get(live.id).unwrap().unwrap(), live);
    let app: Vec<BuildId> = store
        .by_app("app")
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(app, vec![live.id]);
    // The pruned build's file is still known: it is not enqueued again.
    assert_eq!(
        store
            .enqueue(new_build("app", "/b/1.zip", 1))
            .await
            .unwrap(),
        Enqueued::Existing(done.id)
    );
}

/// The v1 record fixtures and the domain values they stand for.
fn v1_fixtures() -> Vec<(&'static str, Build)> {
    let identity = FileIdentity {
        path: PathBuf::from("/srv/builds/win/Game-1.4.2-win64.zip"),
        size: 104_857_600,
        mtime_ns: 1_763_000_000_123_456_789,
        inode: 1_048_577,
    };
    let base = Build {
        id: BuildId(7),
        rule: "windows".into(),
        app_secret: "f1e2d3c4b5a6".into(),
        file: identity.path.clone(),
        identity: identity.clone(),
        label: "1.4.2 (build 31)".into(),
        changelog: Some("Fixes the \"crash on start\" bug.\nFaster loading.".into()),
        publish: true,
        enqueued_at: 1_763_000_100_000,
        updated_at: 1_763_000_100_000,
        state: BuildState::Queued,
        attempts: 0,
        next_attempt_at: None,
        last_error: None,
    };
    let warnings = vec!["Executable is not signed.".to_string()];
    vec![
        ("v1_queued.json", base.clone()),
        (
            "v1_uploading.json",
            Build {
                updated_at: 1_763_000_160_500,
                state: BuildState::Uploading {
                    version_id: Some(12),
                    upload_id: 90_001,
                    acknowledged: 41_943_040,
                    total: 104_857_600,
                    chunk_size: 10_485_760,
                    identity: identity.clone(),
                },
                attempts: 2,
                next_attempt_at: Some(1_763_000_170_500),
                last_error: Some("chunk 4: HTTP 503 Service Unavailable".into()),
                ..base.clone()
            },
        ),
        (
            "v1_processing.json",
            Build {
                updated_at: 1_763_000_400_000,
                state: BuildState::Processing {
                    version_id: 12,
                    upload_id: 90_001,
                    job_guid: Some("5c1d2c7e-8a3b-4f4e-9d61-0f6f1a2b3c4d".into()),
                    prior_started_at: None,
                    prior_finished_at: None,
                },
                ..base.clone()
            },
        ),
        (
            "v1_published.json",
            Build {
                updated_at: 1_763_000_900_000,
                state: BuildState::Published {
                    version_id: 12,
                    published_at: 1_763_000_899,
                    warnings: warnings.clone(),
                },
                ..base.clone()
            },
        ),
        (
            "v1_failed.json",
            Build {
                publish: false,
                changelog: None,
                updated_at: 1_763_000_500_000,
                state: BuildState::Failed {
                    stage: Stage::Check,
                    reason: "processing reported an error: Missing executable".into(),
                    attempts: 1,
                    version_id: Some(12),
                },
                attempts: 1,
                last_error: Some("processing reported an error: Missing executable".into()),
                ..base.clone()
            },
        ),
        (
            "v1_cancelled.json",
            Build {
                updated_at: 1_763_000_200_000,
                state: BuildState::Cancelled {
                    stage: Stage::CreateVersion,
                    version_id: None,
                },
                ..base
            },
        ),
    ]
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/store")
        .join(name);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The files end with a newline for editors; the stored record does not.
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    bytes
}

#[test]
fn v1_fixtures_decode_to_the_expected_builds() {
    for (name, expected) in v1_fixtures() {
        let decoded = decode_build(name, &fixture(name)).unwrap();
        assert_eq!(decoded, expected, "{name}");
    }
}

#[test]
fn encoding_gives_exactly_the_v1_fixtures() {
    for (name, build) in v1_fixtures() {
        let encoded = encode_build(&build).unwrap();
        assert_eq!(
            String::from_utf8(encoded).unwrap(),
            String::from_utf8(fixture(name)).unwrap(),
            "{name}: the stored format changed; a change needs a new schema version"
        );
    }
}

#[tokio::test]
async fn build_ids_are_small_and_sequential_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for round in 0..3 {
        let store = reopen(dir.path());
        for i in 0..2 {
            let b = enqueue_new(&store, new_build("app", &format!("/b/{round}-{i}.zip"), 1)).await;
            ids.push(b.id.0);
        }
        // A file seen again takes no id.
        let again = store
            .enqueue(new_build("app", &format!("/b/{round}-0.zip"), 1))
            .await
            .unwrap();
        assert!(matches!(again, Enqueued::Existing(_)));
        drop(store);
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_store_without_the_id_counter_continues_after_its_highest_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path());
    enqueue_new(&store, new_build("app", "/b/a.zip", 1)).await;
    drop(store);

    // The store as an older release left it: sled's generated ids, one of
    // them only in the identity index (its record was pruned), no progress
    // counters and no watermark.
    let db = open_raw(dir.path());
    let builds = db.open_tree("builds").unwrap();
    let (key, record) = builds.iter().next().unwrap().unwrap();
    builds.remove(&key).unwrap();
    let old = decode_build("old", &record).unwrap();
    let moved = Build {
        id: BuildId(2_000_001),
        ..old
    };
    builds
        .insert(moved.id.to_key(), encode_build(&moved).unwrap())
        .unwrap();
    let by_identity = db.open_tree("by_identity").unwrap();
    by_identity
        .insert(b"pruned-file", &BuildId(4_000_003).to_key()[..])
        .unwrap();
    let meta = db.open_tree("meta").unwrap();
    for key in ["progress/writes", "progress/build_id", "progress/published"] {
        meta.remove(key).unwrap();
    }
    db.flush().unwrap();
    drop((builds, by_identity, meta, db));
    std::fs::remove_file(dir.path().join("store.watermark")).unwrap();

    let store = reopen(dir.path());
    let next = enqueue_new(&store, new_build("app", "/b/b.zip", 1)).await;
    assert_eq!(next.id, BuildId(4_000_004));
    let after = enqueue_new(&store, new_build("app", "/b/c.zip", 1)).await;
    assert_eq!(after.id, BuildId(4_000_005));
}

/// A store with three published builds and one in its upload, closed.
async fn store_with_history(dir: &Path) -> Vec<Build> {
    let store = reopen(dir);
    let mut builds = Vec::new();
    for i in 0..4u64 {
        let path = format!("/b/{i}.zip");
        let build = enqueue_new(&store, new_build("app", &path, 1)).await;
        let upload = identity(&path, 25, 1);
        let mut steps: Vec<&dyn Fn(&BuildState) -> BuildState> = vec![&|s| s.validated().unwrap()];
        let start = move |s: &BuildState| s.upload_started(34, 25, 10, upload.clone()).unwrap();
        steps.push(&start);
        steps.push(&|s| s.chunk_acknowledged(10).unwrap());
        if i < 3 {
            steps.extend_from_slice(&[
                &|s: &BuildState| s.chunk_acknowledged(25).unwrap(),
                &|s: &BuildState| s.uploaded().unwrap(),
                &|s: &BuildState| s.creating_version(11).unwrap(),
                &|s: &BuildState| s.version_ready(12).unwrap(),
                &|s: &BuildState| s.processing_requested(None, None).unwrap(),
                &|s: &BuildState| s.job_started("job").unwrap(),
                &|s: &BuildState| s.processed(Vec::new()).unwrap(),
                &|s: &BuildState| s.publish_requested().unwrap(),
                &|s: &BuildState| s.published(1_700_000_000).unwrap(),
            ]);
        }
        builds.push(advance(&store, build, &steps).await);
    }
    let progress = store.progress().unwrap();
    assert_eq!(progress.last_build_id, 4);
    assert_eq!(progress.published, 3);
    drop(store);
    builds
}

/// The sled data file of a state directory.
fn data_file(dir: &Path) -> PathBuf {
    dir.join("db").join("db")
}

/// Asserts that opening `dir` is refused as damaged, with a message that
/// names the store and the way out.
fn assert_refused_as_damaged(dir: &Path, how: &str) -> String {
    let err = open_err(dir);
    assert!(
        matches!(
            err,
            StoreError::RolledBack { .. } | StoreError::Unreadable { .. }
        ),
        "{how}: {err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.join("db").display().to_string()),
        "{how}: {msg}"
    );
    assert!(msg.contains("store recover"), "{how}: {msg}");
    assert!(
        msg.contains("state directory from a backup"),
        "{how}: {msg}"
    );
    assert!(!msg.contains("database error"), "{how}: {msg}");
    msg
}

#[tokio::test]
async fn an_emptied_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with_history(dir.path()).await;
    std::fs::write(data_file(dir.path()), b"").unwrap();
    assert_refused_as_damaged(dir.path(), "emptied");
}

#[tokio::test]
async fn a_truncated_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with_history(dir.path()).await;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(data_file(dir.path()))
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len * 2 / 3).unwrap();
    drop(file);
    assert_refused_as_damaged(dir.path(), "truncated");
}

#[tokio::test]
async fn a_partly_overwritten_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with_history(dir.path()).await;
    let mut bytes = std::fs::read(data_file(dir.path())).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 512] {
        *b = 0xA5;
    }
    std::fs::write(data_file(dir.path()), bytes).unwrap();
    assert_refused_as_damaged(dir.path(), "overwritten");
}

#[tokio::test]
async fn garbage_in_sleds_conf_is_refused_naming_the_store() {
    let dir = tempfile::tempdir().unwrap();
    store_with_history(dir.path()).await;
    std::fs::write(dir.path().join("db").join("conf"), b"\x00garbage\xff\xfe").unwrap();
    assert_refused_as_damaged(dir.path(), "conf");
}

#[tokio::test]
async fn a_deleted_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with_history(dir.path()).await;
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let err = open_err(dir.path());
    let StoreError::RolledBack {
        found, expected, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(found.last_build_id, 0);
    assert_eq!(expected.last_build_id, 4);
    assert_eq!(expected.published, 3);
    let msg = err.to_string();
    assert!(msg.contains("3 published build(s)"), "{msg}");
    assert!(msg.contains("so nothing was sent"), "{msg}");
    // Refused again: the refusal wrote nothing that would let a second
    // start through.
    assert!(matches!(
        open_err(dir.path()),
        StoreError::RolledBack { .. }
    ));
}

#[tokio::test]
async fn an_older_copy_of_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let store = reopen(dir.path());
    let build = enqueue_new(&store, new_build("app", "/b/0.zip", 1)).await;
    drop(store);
    copy_dir(&dir.path().join("db"), &copy.path().join("db"));
    let store = reopen(dir.path());
    advance(&store, build, &[&|s| s.validated().unwrap()]).await;
    drop(store);
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    copy_dir(&copy.path().join("db"), &dir.path().join("db"));
    assert!(matches!(
        open_err(dir.path()),
        StoreError::RolledBack { .. }
    ));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_daemon_open_waits_for_a_short_holder_of_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path()).unwrap();
    let path = dir.path().to_owned();
    let waiter = std::thread::spawn(move || {
        Store::open_with(&path, &patchkit_autopublish::store::OpenOptions::daemon())
    });
    // `status` holds the store for a moment, then lets go.
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let opened = waiter.join().unwrap();
    assert!(opened.is_ok(), "{:?}", opened.err());
}

#[tokio::test]
async fn a_store_whose_directory_is_deleted_or_replaced_takes_no_more_writes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let store = reopen(&dir);
    store.check_still_ours().unwrap();
    enqueue_new(&store, new_build("app", "/b/a.zip", 1)).await;

    // Replaced: the path holds a copy, so the lock file is another inode.
    copy_dir(&dir, &root.path().join("copy"));
    std::fs::rename(&dir, root.path().join("old")).unwrap();
    std::fs::rename(root.path().join("copy"), &dir).unwrap();
    let err = store.check_still_ours().unwrap_err();
    assert!(matches!(err, StoreError::Gone { .. }), "{err:?}");
    assert!(err.to_string().contains("is another file now"), "{err}");
    let watermark = std::fs::read(dir.join("store.watermark")).unwrap();
    assert!(
        store
            .enqueue(new_build("app", "/b/b.zip", 1))
            .await
            .is_err()
    );
    // Nothing reached the directory now at the path.
    assert_eq!(
        std::fs::read(dir.join("store.watermark")).unwrap(),
        watermark
    );

    // Deleted.
    let dir = root.path().join("state2");
    let store = reopen(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let err = store.check_still_ours().unwrap_err();
    assert!(err.to_string().contains("was deleted or replaced"), "{err}");
}
