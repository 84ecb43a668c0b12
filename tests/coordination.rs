//! Sharing an app with other publishers through PatchKit's global lock:
//! a person holding the lock as `pkt` would, two daemons (two build
//! servers, two stores) feeding one app, a lock lost while held, and a
//! server without the lock. The daemons are the real binary, watching,
//! against the sandbox's lock.

#[macro_use]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harness::{Setup, Variant, app, until};
use patchkit_autopublish::global_lock::{Ensure, GlobalLock, resources};
use tokio_util::sync::CancellationToken;

/// Asks PatchKit's lock again and again as a person's `pkt` would, until
/// `stop` fires; counts its requests in `asked`.
fn hold_as_a_person(
    client: patchkit_autopublish::patchkit::Client,
    stop: CancellationToken,
    asked: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        loop {
            for resource in resources(&app(0)) {
                asked.fetch_add(1, Ordering::SeqCst);
                let answer = client.acquire_lock(&resource, "person").await.unwrap();
                assert!(answer.allowed(), "the person holds the lock: {answer:?}");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
}

fn set_lock_refresh(s: &harness::Scenario) {
    s.edit_config(|t| t.replacen("[patchkit]\n", "[patchkit]\nlock_refresh = \"1s\"\n", 1));
}

/// A person holds the app's lock (as `pkt push` does): the daemon creates
/// nothing, says in `status` that it waits and where in the queue, keeps its
/// place across a restart, and publishes once the person lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_waits_for_a_person_holding_the_lock_then_publishes() {
    let s = Setup::new(1)
        .sandbox(|c| c.lock_timeout(Duration::from_secs(2)))
        .start()
        .await;
    set_lock_refresh(&s);
    s.daemon_line("stuck_after = \"2s\"");
    let person = CancellationToken::new();
    let asked = Arc::new(AtomicU64::new(0));
    hold_as_a_person(s.client(), person.clone(), asked.clone());
    // Acquire requests the daemon sent: all of them but the person's.
    let daemon_asked = || -> u64 {
        let all: u64 = s
            .snapshot()
            .requests
            .get("POST /1/global_locks/acquire")
            .map_or(0, |by_status| by_status.values().sum());
        all - asked.load(Ordering::SeqCst).min(all)
    };
    until("the person holds the lock", || {
        s.snapshot().locks.iter().any(|l| l.owners == ["person"])
    })
    .await;

    let daemon = s.spawn(false, None);
    let file = s.drop_zip(0, "nightly-1", 40_000);
    let waiting = |rows: &[serde_json::Value]| {
        rows.iter()
            .find(|r| r["label"] == "nightly-1")
            .and_then(|r| r["waiting"].as_str().map(str::to_owned))
    };
    let mut said = None;
    until("status says the build waits for the lock", || {
        said = waiting(&s.status_rows());
        said.is_some()
    })
    .await;
    assert_eq!(
        said.unwrap(),
        format!("waiting for PatchKit's lock on app {} (position 1)", app(0))
    );
    // Nothing was created while the person holds the app, and the daemon
    // queues on pkt's resource name first.
    let snap = s.snapshot();
    assert!(
        snap.versions(&app(0)).is_empty(),
        "{:?}",
        snap.versions(&app(0))
    );
    let queue = snap.locks.iter().find(|l| l.resource == app(0)).unwrap();
    assert_eq!(queue.owners.len(), 2, "{queue:?}");
    assert_eq!(queue.owners[0], "person");
    let owner = queue.owners[1].clone();

    // A restart keeps the wait and the place in the queue: the same owner
    // asks again, nobody new joins.
    daemon.stop().await;
    let before = daemon_asked();
    let daemon = s.spawn(false, None);
    daemon.until_log("daemon running", 1).await;
    until("the restarted daemon asks again", || {
        daemon_asked() > before
    })
    .await;
    assert!(waiting(&s.status_rows()).is_some());
    let queue = s
        .snapshot()
        .locks
        .into_iter()
        .find(|l| l.resource == app(0))
        .unwrap();
    assert_eq!(queue.owners, ["person".to_owned(), owner.clone()]);

    // The wait outlasts stuck_after: reported as stuck, once, with what it
    // waits for (the wait's start survived the restart).
    const STUCK: &str = "another publisher (pkt, another daemon, a person) holds the app";
    daemon.until_log(STUCK, 1).await;

    // The person is done: their lock times out, the daemon gets it and
    // publishes, and says how long it waited.
    person.cancel();
    s.until_published(&app(0), "nightly-1").await;
    s.until_state("nightly-1", "published").await;
    daemon.until_log("done waiting after", 1).await;
    s.assert_published_in_order(&app(0), &[&file]);
    let rows = s.status_rows();
    assert!(waiting(&rows).is_none(), "{rows:#?}");
    // A finished build shows no progress of its last stage.
    assert!(rows[0]["progress_percent"].is_null(), "{rows:#?}");
    let log = daemon.log_text();
    assert_eq!(log.matches(STUCK).count(), 1, "{log}");
    assert!(
        log.contains(&format!(
            "waiting for PatchKit's lock on app {} (position 1) for",
            app(0)
        )),
        "{log}"
    );
    daemon.stop().await;
}

/// Two build servers, each with its own daemon, store and folder, feed one
/// app with builds dropped in turns. Every build is published exactly once,
/// each server's in the order it arrived there, and none fails on the other
/// server's draft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_feeding_one_app_publish_every_build_once_in_order() {
    let s = Setup::new(1)
        .sandbox(|c| {
            c.job_duration(Duration::from_millis(300))
                .publish_duration(Duration::from_millis(200))
                .lock_timeout(Duration::from_secs(2))
        })
        .start()
        .await;
    set_lock_refresh(&s);
    let peer = s.peer("server-b");
    let a = s.spawn(false, None);
    let b = peer.spawn();
    a.until_log("daemon running", 1).await;
    b.until_log("daemon running", 1).await;

    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for n in 1..=3 {
        from_a.push(s.drop_zip(0, &format!("a-{n}"), 60_000));
        from_b.push(peer.drop_zip(&format!("b-{n}"), 60_000));
    }
    let deadline = std::time::Instant::now() + harness::LIMIT;
    for file in from_a.iter().chain(&from_b) {
        while !s
            .snapshot()
            .versions(&app(0))
            .iter()
            .any(|v| v.label == file.label && v.published)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never published\n--- server a\n{}\n--- server b\n{}",
                file.label,
                a.log_text(),
                b.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let snap = s.snapshot();
    let versions = snap.versions(&app(0));
    assert_eq!(versions.len(), 6, "one version per build: {versions:#?}");
    for file in from_a.iter().chain(&from_b) {
        let mine: Vec<_> = versions.iter().filter(|v| v.label == file.label).collect();
        assert_eq!(
            mine.len(),
            1,
            "{} published once: {versions:#?}",
            file.label
        );
        assert!(mine[0].published);
    }
    for server in [&from_a, &from_b] {
        let ids: Vec<u64> = server
            .iter()
            .map(|f| versions.iter().find(|v| v.label == f.label).unwrap().id)
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "each server's builds go live in their arrival order: {ids:?}"
        );
    }
    // Each daemon sees its own three builds live, none failed.
    until("both daemons report their builds published", || {
        [s.status_rows(), peer.status_rows()]
            .iter()
            .all(|rows| rows.len() == 3 && rows.iter().all(|r| r["state"] == "published"))
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A lock that PatchKit dropped (not refreshed in time) is noticed at the
/// next refresh: the hold's token fires so the build stops before its next
/// side effect, and asking again queues behind the new holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_fires_its_token_at_the_next_refresh() {
    let s = Setup::new(1)
        .sandbox(|c| c.lock_timeout(Duration::from_millis(300)))
        .start()
        .await;
    let client = s.client();
    let keeper = GlobalLock::new(true, Duration::from_secs(1));
    let Ensure::Held(lost) = keeper.ensure(&client, &app(0), "daemon").await.unwrap() else {
        panic!("a free lock is granted");
    };
    assert_eq!(keeper.held(), [app(0)]);
    // Without refreshes the daemon's place times out and someone else
    // takes the lock.
    let mut taken = false;
    while !taken {
        taken = client
            .acquire_lock(&app(0), "someone-else")
            .await
            .unwrap()
            .allowed();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!lost.is_cancelled());
    keeper.refresh_once().await;
    assert!(lost.is_cancelled(), "the refresh found the lock lost");
    assert!(keeper.held().is_empty());
    match keeper.ensure(&client, &app(0), "daemon").await.unwrap() {
        Ensure::Wait { position } => assert_eq!(position, Some(1)),
        other => panic!("the daemon queues behind the new holder: {other:?}"),
    }
}

/// A server without the global lock (404): said once, clearly, and every
/// build is published anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_lock_is_named_once_and_builds_go_on() {
    let s = Setup::new(1)
        .variant(Some(Variant::NoGlobalLock))
        .start()
        .await;
    let daemon = s.spawn(false, None);
    let first = s.drop_zip(0, "one", 20_000);
    let second = s.drop_zip(0, "two", 20_000);
    s.until_published(&app(0), "one").await;
    s.until_published(&app(0), "two").await;
    s.assert_published_in_order(&app(0), &[&first, &second]);
    let log = daemon.log_text();
    assert_eq!(
        log.matches("this server has no global lock").count(),
        1,
        "{log}"
    );
    daemon.stop().await;
}
