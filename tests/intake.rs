//! Intake: each app's builds go live in the order their files arrived,
//! under a burst and after files were dropped while the daemon was stopped,
//! in watch mode and with `--once`; both modes give the same answer for the
//! same folder contents; `--once` reports failures in its exit code; a file
//! two rules would take is taken by neither.

mod harness;

use std::time::{Duration, SystemTime};

use harness::*;
use patchkit_autopublish::store::Build;

const APPS: usize = 3;
const BURST: usize = 20;
/// Sixty builds in one `--once` run: room for a busy two-core machine (a
/// quiet one needs a few seconds).
const BURST_LIMIT: Duration = Duration::from_secs(240);

/// Copies `BURST` builds for each of `APPS` apps within about a second, the
/// apps interleaved, as an rsync of a backlog does. Each file is written in
/// two pieces, so its events straddle a settle check.
fn burst(s: &Scenario) -> Vec<Vec<Dropped>> {
    let mut per_app: Vec<Vec<Dropped>> = vec![Vec::new(); APPS];
    for n in 0..BURST {
        for (i, files) in per_app.iter_mut().enumerate() {
            files.push(s.drop_zip(i, &format!("b{n:03}"), 2000));
        }
        // The pause is the scenario: the burst spread over about a second.
        std::thread::sleep(Duration::from_millis(15));
    }
    per_app
}

/// Files for app 0 whose names sort in another order than their ages: the
/// arrival is the modification time, set here an hour back, a minute apart.
fn shuffled_and_aged(s: &Scenario) -> Vec<Dropped> {
    // Arrival order, oldest first; the names are deliberately out of order.
    let names = ["m-07", "c-19", "x-02", "a-11", "q-05", "f-13"];
    let base = SystemTime::now() - Duration::from_secs(3600);
    names
        .iter()
        .enumerate()
        .map(|(age, name)| {
            let file = s.drop_zip(0, name, 1500);
            std::fs::File::options()
                .write(true)
                .open(&file.path)
                .unwrap()
                .set_modified(base + Duration::from_secs(60 * age as u64))
                .unwrap();
            file
        })
        .collect()
}

fn assert_each_app_in_order(s: &Scenario, per_app: &[Vec<Dropped>]) {
    for (i, files) in per_app.iter().enumerate() {
        let refs: Vec<&Dropped> = files.iter().collect();
        s.assert_published_in_order(&app(i), &refs);
    }
    assert_eq!(
        s.snapshot().total(CREATE_VERSION),
        (APPS * BURST) as u64,
        "one version per build, none created twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_goes_live_per_app_in_arrival_order_while_watching() {
    let s = Setup::new(APPS).workers(APPS).start().await;
    let mut d = s.watch().await;
    let per_app = burst(&s);
    // Step by step, so each wait is bounded on a busy machine.
    for n in 0..BURST {
        for files in &per_app {
            d.published(&files[n].path).await;
        }
    }
    d.until_idle().await;
    d.stop().await;
    assert_each_app_in_order(&s, &per_app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_goes_live_per_app_in_arrival_order_with_once() {
    let s = Setup::new(APPS).workers(APPS).start().await;
    let per_app = burst(&s);
    s.run_once_within(BURST_LIMIT).await;
    assert_each_app_in_order(&s, &per_app);
    assert!(
        s.builds()
            .await
            .iter()
            .all(|b| b.state.name() == "published")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_names_dropped_while_stopped_go_live_oldest_first_while_watching() {
    let s = Setup::new(1).start().await;
    let files = shuffled_and_aged(&s);
    let mut d = s.watch().await;
    d.published(&files.last().unwrap().path).await;
    d.until_idle().await;
    d.stop().await;
    let refs: Vec<&Dropped> = files.iter().collect();
    s.assert_published_in_order(&app(0), &refs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_names_dropped_while_stopped_go_live_oldest_first_with_once() {
    let s = Setup::new(1).start().await;
    let files = shuffled_and_aged(&s);
    s.run_once().await;
    let refs: Vec<&Dropped> = files.iter().collect();
    s.assert_published_in_order(&app(0), &refs);
}

/// The same folder contents for one scenario: two good builds, a file that
/// is not a ZIP, a ZIP cut short, one refused by `filename_regex`, and a
/// temp name. Returns the files that should be published, in order.
fn mixed_folder(s: &Scenario) -> Vec<Dropped> {
    let good = shuffled_and_aged(s)
        .into_iter()
        .filter(|f| f.label.starts_with('a') || f.label.starts_with('c'))
        .collect::<Vec<_>>();
    let folder = s.folder(0);
    std::fs::write(folder.join("b-notazip.zip"), b"this is no zip").unwrap();
    let whole = std::fs::read(&good[0].path).unwrap();
    std::fs::write(folder.join("b-cut.zip"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(folder.join("other.zip"), &whole).unwrap();
    std::fs::write(folder.join("b-copying.zip.part"), &whole).unwrap();
    // The aged files the rule refuses stay where they are.
    for name in ["m-07", "x-02", "q-05", "f-13"] {
        std::fs::rename(
            folder.join(format!("{name}.zip")),
            folder.join(format!("{name}.skip")),
        )
        .unwrap();
    }
    good
}

/// What the daemon made of a folder: each build's file name and end state
/// (with the stage of a failure), sorted by name.
fn outcome(builds: &[Build]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = builds
        .iter()
        .map(|b| {
            let name = b.file.file_name().unwrap().to_string_lossy().into_owned();
            (name, format!("{} {}", b.state.name(), b.state.stage()))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_and_watch_mode_give_the_same_answer_for_the_same_folder() {
    let setup = || Setup::new(1).rule(0, r"filename_regex = '^[abc]-'");

    let once = setup().start().await;
    let once_good = mixed_folder(&once);
    once.run_once().await;

    let watching = setup().start().await;
    let watch_good = mixed_folder(&watching);
    let mut d = watching.watch().await;
    d.published(&watch_good.last().unwrap().path).await;
    for name in ["b-notazip.zip", "b-cut.zip"] {
        d.failed(&watching.folder(0).join(name)).await;
    }
    d.until_idle().await;
    d.stop().await;

    let (a, b) = (
        outcome(&once.builds().await),
        outcome(&watching.builds().await),
    );
    assert_eq!(a, b, "--once and watch mode disagree");
    assert_eq!(
        a.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        ["a-11.zip", "b-cut.zip", "b-notazip.zip", "c-19.zip"],
        "{a:?}"
    );
    assert!(a[1].1.starts_with("failed"), "{a:?}");
    assert!(a[2].1.starts_with("failed"), "{a:?}");
    once.assert_published_in_order(&app(0), &once_good.iter().collect::<Vec<_>>());
    watching.assert_published_in_order(&app(0), &watch_good.iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_1_when_a_build_failed_and_sums_up_every_build() {
    let s = Setup::new(1).start().await;
    let good = s.drop_zip(0, "a-good", 1000);
    std::fs::write(s.folder(0).join("b-broken.zip"), b"this is no zip").unwrap();
    let status = s.run_child(None).await;
    assert_eq!(status.code(), Some(1), "{status:?}\n{}", s.logs());
    let log = s.logs();
    assert!(log.contains("1 of 2 builds failed"), "{log}");
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("run summary")).collect();
    assert_eq!(summaries.len(), 2, "{log}");
    assert!(
        summaries
            .iter()
            .any(|l| l.contains("a-good") && l.contains("published"))
    );
    assert!(
        summaries
            .iter()
            .any(|l| l.contains("b-broken") && l.contains("failed"))
    );
    s.assert_published_in_order(&app(0), &[&good]);

    // Nothing left to do: the next run succeeds.
    s.run_child_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_two_rules_would_take_through_a_folder_alias_is_taken_by_neither() {
    let s = Setup::new(2).start().await;
    let daemon = s.spawn(false, None);
    daemon.until_log("daemon running", 1).await;
    // Rule 1's folder becomes a symlink to rule 0's while the daemon runs
    // (at start the config would have refused it).
    std::fs::remove_dir(s.folder(1)).unwrap();
    daemon.until_log("rule folder is missing", 1).await;
    std::os::unix::fs::symlink(s.folder(0), s.folder(1)).unwrap();
    daemon.until_log("rule folder is back", 1).await;

    // One inotify watch serves both paths of the folder, so the event
    // reaches one rule; that rule refuses the file.
    let shared = s.drop_zip(0, "shared", 1000);
    daemon.until_log("is taken by rule", 1).await;
    daemon.stop().await;
    // A restart sees the alias in the config and refuses to start, naming
    // both rules, so neither takes the file then either.
    let restart = s.spawn(false, None);
    let log = restart.log.clone();
    let status = restart.wait(LIMIT).await;
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}\n{text}");
    assert!(
        text.contains(r#"[[rule]] "rule-1": it watches the same folder as [[rule]] "rule-0""#),
        "{text}"
    );
    assert!(s.snapshot().versions(&app(0)).is_empty());
    assert!(s.snapshot().versions(&app(1)).is_empty());
    assert!(shared.path.exists(), "the file is left where it is");
    assert!(s.builds().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_build_is_announced_and_leaves_no_live_entry() {
    use patchkit_autopublish::observe::EventKind;
    use patchkit_autopublish::state::BuildState;
    // A slow first build keeps the app busy, so the second waits its turn.
    let s = Setup::new(1)
        .sandbox(|c| c.job_duration(Duration::from_secs(3)))
        .start()
        .await;
    let mut d = s.watch().await;
    let first = s.drop_zip(0, "a-first", 1000);
    d.event("the first build processing", |e| {
        e.build.file == first.path && e.build.state.name() == "processing"
    })
    .await;
    let second = s.drop_zip(0, "b-second", 1000);
    let waiting = d
        .event("the second build queued", |e| e.build.file == second.path)
        .await
        .build;
    assert!(d.status().await.iter().any(|b| b.id == waiting.id));

    let cancelled = d.cancel(waiting.id).await.unwrap();
    assert!(matches!(cancelled.state, BuildState::Cancelled { .. }));
    let event = d
        .event("the cancellation announced", |e| {
            e.kind == EventKind::StateChanged
                && e.build.id == waiting.id
                && e.build.state.name() == "cancelled"
        })
        .await;
    assert_eq!(event.build.id, waiting.id);
    assert!(
        d.status().await.iter().all(|b| b.id != waiting.id),
        "status no longer lists the cancelled build"
    );
    d.published(&first.path).await;
    d.stop().await;
    s.assert_published_in_order(&app(0), &[&first]);
}
