//! How long opening the store and listing every build take with 10,000
//! finished builds, against plain sled doing the same on the same data.
//!
//! Run with `cargo bench --bench store`. Prints figures; asserts nothing
//! about time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use patchkit_autopublish::state::FileIdentity;
use patchkit_autopublish::store::{Enqueued, ListFilter, NewBuild, Store, StoreError};

/// The size of a busy installation's history after a long retention window.
const BUILDS: usize = 10_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");

    let started = Instant::now();
    runtime.block_on(fill(dir.path()));
    println!(
        "setup: {BUILDS} finished builds written in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // Plain sled first: open the database and iterate the builds tree.
    let (sled_open, sled_iter) = {
        let started = Instant::now();
        let db = retry(|| sled::open(dir.path().join("db")).ok());
        let builds = db.open_tree("builds").expect("builds tree");
        let sled_open = started.elapsed();
        let started = Instant::now();
        let mut bytes = 0usize;
        for entry in builds.iter() {
            let (_, value) = entry.expect("sled entry");
            bytes += value.len();
        }
        let sled_iter = started.elapsed();
        assert!(bytes > 0);
        (sled_open, sled_iter)
    };

    let started = Instant::now();
    let store = retry(|| match Store::open(dir.path()) {
        Ok(store) => Some(store),
        Err(StoreError::Locked { .. }) => None,
        Err(e) => panic!("open: {e}"),
    });
    let store_open = started.elapsed();
    let started = Instant::now();
    let all = store.list(&ListFilter::default()).expect("list");
    let store_list = started.elapsed();
    assert_eq!(all.len(), BUILDS);

    println!(
        "open:  store {:>9.6}s   sled {:>9.6}s   ratio {:>6.2}",
        secs(store_open),
        secs(sled_open),
        ratio(store_open, sled_open)
    );
    println!(
        "list:  store {:>9.6}s   sled {:>9.6}s   ratio {:>6.2}",
        secs(store_list),
        secs(sled_iter),
        ratio(store_list, sled_iter)
    );
    println!("(sled = plain sled::open and iteration of the builds tree, same data, same run)");
}

/// Enqueues `BUILDS` builds and cancels each, the cheapest way to a terminal
/// state through the public API.
async fn fill(dir: &Path) {
    let store = Store::open(dir).expect("open");
    for i in 0..BUILDS {
        let path = PathBuf::from(format!("/srv/builds/win/Game-1.{i}-win64.zip"));
        let new = NewBuild {
            rule: "windows".into(),
            app_secret: format!("app-{}", i % 4),
            file: path.clone(),
            identity: FileIdentity {
                path,
                size: 100 << 20,
                mtime_ns: 1_763_000_000_000_000_000 + i as i128,
                inode: i as u64,
            },
            label: format!("1.{i}"),
            changelog: Some("A changelog line of ordinary length.".into()),
            publish: true,
        };
        let Enqueued::New(build) = store.enqueue(new).await.expect("enqueue") else {
            panic!("duplicate");
        };
        let next = build.state.cancelled().expect("cancel");
        store
            .transition(build.id, &build.state, next)
            .await
            .expect("transition");
    }
}

/// Retries `f` while a handle dropped a moment ago still holds sled's lock.
fn retry<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(t) = f() {
            return t;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the database stayed locked");
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
