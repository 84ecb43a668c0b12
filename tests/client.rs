//! The PatchKit client against the sandbox over real sockets: every endpoint,
//! every error class the sandbox can produce, recovery from every injected
//! fault, resumed and stalled uploads, and where the key travels.
//!
//! Not covered here, because the sandbox cannot produce them: `Protocol`
//! errors (an unparsable body, a cut-off response) and `429`/`Retry-After`.
//! The client's own tests in `src/patchkit/upload/tests.rs` cover both
//! against scripted servers.

mod common;

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use common::{APP, Env, KEY, OTHER_APP, TestZip, start, until};
use patchkit_autopublish::patchkit::{
    AckFn, ApiError, AppVersion, Client, ClientOptions, ErrorKind, Job, RetryPolicy, UploadError,
    UploadId, UploadRequest, VersionPatch, chunk_ranges,
};
use patchkit_autopublish::sandbox::{FaultConfig, Snapshot, UploadInfo, VersionInfo};
use tokio_util::sync::CancellationToken;

/// 256 KiB chunks make a multi-chunk upload of a few MiB take milliseconds.
const CHUNK: u64 = 256 * 1024;
/// Twenty chunks: enough for every seeded fault to fire several times.
const SIZE: u64 = 20 * CHUNK;

const CHUNK_ROUTE: &str = "POST /1/uploads/{id}/chunk";

fn chunk_size() -> NonZeroU64 {
    NonZeroU64::new(CHUNK).unwrap()
}

/// What an upload under faults left behind, once processed without faults.
struct Survived {
    /// The file sent.
    zip: TestZip,
    /// The upload as the sandbox holds it.
    upload: UploadInfo,
    /// The sandbox afterwards.
    snap: Snapshot,
}

impl Env {
    /// A new draft of [`APP`] with a changelog.
    async fn draft(&self, label: &str) -> AppVersion {
        self.client
            .create_version(APP, label, Some("first changelog"))
            .await
            .expect("draft created")
    }

    /// Sends `zip` into upload `id` from `start`, recording every
    /// acknowledged offset; cancels once `cancel_at` bytes are acknowledged.
    async fn send(
        &self,
        id: UploadId,
        zip: &TestZip,
        start: u64,
        cancel_at: Option<u64>,
    ) -> (Result<(), UploadError>, Vec<u64>) {
        let req = UploadRequest {
            upload_id: id,
            path: zip.path.clone(),
            total_size: zip.size,
            start_offset: start,
            chunk_size: chunk_size(),
        };
        let cancel = CancellationToken::new();
        let mut acks = Vec::new();
        let mut sink = AckFn(|offset| {
            acks.push(offset);
            if cancel_at.is_some_and(|at| offset >= at) {
                cancel.cancel();
            }
            Ok(())
        });
        let result = self.client.upload_file(&req, &mut sink, &cancel).await;
        (result, acks)
    }

    /// A new upload holding all of `zip`, checking the acknowledged offsets.
    async fn upload(&self, zip: &TestZip) -> UploadId {
        let id = self.client.create_upload(zip.size).await.expect("upload");
        let (result, acks) = self.send(id, zip, 0, None).await;
        result.expect("upload_file");
        assert_acks(&acks, 0, zip.size);
        id
    }

    /// Starts processing and polls the job until it finishes.
    async fn process(&self, version: u64, upload: UploadId) -> Job {
        let guid = self
            .client
            .start_processing(APP, version, upload)
            .await
            .expect("processing starts");
        let guid = &guid;
        poll("the job finished", || async move {
            let job = self.client.get_job(guid).await.expect("job");
            job.finished.then_some(job)
        })
        .await
    }

    /// Publishes and polls the version until it is published.
    async fn publish(&self, version: u64) -> AppVersion {
        self.client.publish(APP, version).await.expect("publish");
        poll("the version is published", || async move {
            let v = self.client.get_version(APP, version).await.expect("get");
            (v.published == Some(true)).then_some(v)
        })
        .await
    }

    /// A build of `SIZE` bytes, from a new draft to published.
    async fn publish_build(&self, label: &str) -> (AppVersion, TestZip) {
        let zip = self.zip(SIZE);
        let draft = self.draft(label).await;
        let upload = self.upload(&zip).await;
        assert!(self.process(draft.id, upload).await.succeeded());
        (self.publish(draft.id).await, zip)
    }

    /// Uploads a `SIZE`-byte file into a draft while `faults` are on, then
    /// processes it without faults and checks that the content arrived
    /// whole.
    async fn upload_under(&self, faults: FaultConfig) -> Survived {
        let zip = self.zip(SIZE);
        let draft = self.draft("faulty").await;
        self.sb.set_faults(faults);
        let upload = self.upload(&zip).await;
        self.sb.set_faults(FaultConfig::default());
        assert!(self.process(draft.id, upload).await.succeeded());
        let snap = self.sb.snapshot();
        let version = snap.version(APP, draft.id).expect("version");
        assert_eq!(version.content_sha256.as_deref(), Some(&*zip.sha256));
        let upload = snap.upload(upload.0).expect("upload").clone();
        assert!(upload.complete);
        Survived { zip, upload, snap }
    }

    /// The sandbox's view of a version of [`APP`].
    fn version_info(&self, id: u64) -> VersionInfo {
        self.sb
            .snapshot()
            .version(APP, id)
            .expect("version")
            .clone()
    }

    /// A client for the same sandbox with other options.
    fn client_with(&self, change: impl FnOnce(&mut ClientOptions)) -> Client {
        let mut opts = common::options(&self.sb, KEY);
        change(&mut opts);
        Client::new(opts).expect("client")
    }
}

/// Calls `check` every 10 ms until it yields a value (the sandbox's jobs and
/// publishes take 50 ms); panics after 10 s.
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let polled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("timed out waiting until {what}"))
}

/// Acknowledged offsets rise strictly, each at the end of a chunk counted
/// from `start`, the last at `total`.
fn assert_acks(acks: &[u64], start: u64, total: u64) {
    let expected: Vec<u64> = chunk_ranges(total, chunk_size(), start)
        .map(|r| r.end_exclusive())
        .collect();
    assert_eq!(acks, expected, "acknowledged offsets");
}

/// Asserts the error's class and that the server's message reached it.
fn assert_error(err: &ApiError, kind: ErrorKind, message: &str) {
    assert_eq!(err.kind(), kind, "{err}");
    assert!(err.message().contains(message), "{err}");
}

fn transient() -> ErrorKind {
    ErrorKind::Transient { retry_after: None }
}

// ---- every endpoint ----

#[tokio::test]
async fn every_endpoint_from_app_to_published_version() {
    let t = start().await;

    let app = t.client.get_app(APP).await.unwrap();
    assert_eq!((app.secret.as_str(), app.current_version), (APP, 0));
    let created = t
        .client
        .create_app("Second game", "linux_x86_64")
        .await
        .unwrap();
    assert_eq!(created.platform, "linux_x86_64");
    let mine: Vec<String> = t
        .client
        .list_apps()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.secret)
        .collect();
    assert!(mine.contains(&APP.to_owned()) && mine.contains(&created.secret));
    assert!(!mine.contains(&OTHER_APP.to_owned()));
    assert_eq!(
        t.sb.snapshot().app(&created.secret).unwrap().name,
        "Second game"
    );

    assert!(t.client.list_versions(APP).await.unwrap().is_empty());
    let draft = t.draft("1.0.0").await;
    assert!(draft.draft == Some(true) && draft.id == 1 && draft.label == "1.0.0");
    let patch = VersionPatch {
        label: Some("1.0.1".into()),
        changelog: Some("fixed".into()),
        publish_when_processed: Some(false),
    };
    t.client.patch_version(APP, draft.id, &patch).await.unwrap();
    let read = t.client.get_version(APP, draft.id).await.unwrap();
    assert_eq!(
        (read.label.as_str(), read.changelog.as_str()),
        ("1.0.1", "fixed")
    );
    assert_eq!(t.client.list_versions(APP).await.unwrap(), vec![read]);
    let info = t.version_info(draft.id);
    assert!(info.draft && info.label == "1.0.1" && info.changelog == "fixed");

    // The first chunk alone, then the rest with upload_file.
    let zip = t.zip(SIZE);
    let upload = t.client.create_upload(zip.size).await.unwrap();
    let first = chunk_ranges(zip.size, chunk_size(), 0).next().unwrap();
    let bytes = std::fs::read(&zip.path).unwrap();
    let data = bytes::Bytes::copy_from_slice(&bytes[..CHUNK as usize]);
    t.client
        .upload_chunk(upload, first, zip.size, data)
        .await
        .unwrap();
    assert_eq!(t.sb.snapshot().upload(upload.0).unwrap().received, CHUNK);
    let (result, acks) = t.send(upload, &zip, CHUNK, None).await;
    result.unwrap();
    assert_acks(&acks, CHUNK, zip.size);
    let held = t.sb.snapshot().upload(upload.0).unwrap().clone();
    assert_eq!(
        (held.received, held.received_twice, held.complete),
        (SIZE, 0, true)
    );

    let job = t.process(draft.id, upload).await;
    assert!(job.succeeded() && job.progress == 1.0, "{job:?}");
    let info = t.version_info(draft.id);
    assert_eq!(info.content_sha256.as_deref(), Some(&*zip.sha256));
    assert_eq!(
        (info.content_size, info.upload_id),
        (Some(SIZE), Some(upload.0))
    );

    let published = t.publish(draft.id).await;
    assert!(published.draft == Some(false) && published.publish_date > 0);
    let info = t.version_info(draft.id);
    assert!(info.published && !info.draft);
    assert_eq!(
        t.client.get_app(APP).await.unwrap().current_version,
        draft.id
    );
}

#[tokio::test]
async fn the_key_travels_only_in_the_header() {
    let t = start().await;
    t.publish_build("1.0").await;
    let snap = t.sb.snapshot();
    assert_eq!(snap.key_in_url, 0);
    let requests: u64 = snap.requests.values().flat_map(|s| s.values()).sum();
    assert_eq!(snap.key_in_header, requests);

    let opts = common::options(&t.sb, KEY);
    assert!(!format!("{opts:?}").contains(KEY));
    assert!(!format!("{:?}", t.client).contains(KEY));
}

// ---- error classes ----

#[tokio::test]
async fn a_wrong_key_is_unauthorized_and_not_retried() {
    let t = start().await;
    let wrong = Client::new(common::options(&t.sb, "wrong-key")).unwrap();
    let err = wrong.get_app(APP).await.unwrap_err();
    assert_error(&err, ErrorKind::Unauthorized, "unknown API key");
    assert_eq!(t.sb.snapshot().count("GET /1/apps/{secret}", "401"), 1);
    assert_eq!(t.sb.snapshot().total("GET /1/apps/{secret}"), 1);
}

#[tokio::test]
async fn a_second_draft_is_forbidden() {
    let t = start().await;
    t.draft("1.0").await;
    let err = t.client.create_version(APP, "1.1", None).await.unwrap_err();
    assert_error(&err, ErrorKind::Forbidden, "draft version already exists");
    assert_eq!(t.sb.snapshot().versions(APP).len(), 1);
}

#[tokio::test]
async fn another_accounts_app_is_forbidden() {
    let t = start().await;
    let err = t
        .client
        .create_version(OTHER_APP, "1.0", None)
        .await
        .unwrap_err();
    assert_error(&err, ErrorKind::Forbidden, "no access to app");
    assert!(t.sb.snapshot().versions(OTHER_APP).is_empty());
}

#[tokio::test]
async fn unknown_apps_and_versions_are_not_found() {
    let t = start().await;
    let err = t.client.get_app("no-such-app").await.unwrap_err();
    assert_error(&err, ErrorKind::NotFound, "app no-such-app not found");
    let err = t.client.get_version(APP, 42).await.unwrap_err();
    assert_error(&err, ErrorKind::NotFound, "version 42");
}

#[tokio::test]
async fn an_incomplete_upload_cannot_be_processed() {
    let t = start().await;
    let draft = t.draft("1.0").await;
    let upload = t.client.create_upload(SIZE).await.unwrap();
    let err = t
        .client
        .start_processing(APP, draft.id, upload)
        .await
        .unwrap_err();
    assert_error(&err, ErrorKind::BadRequest, "incomplete");
    assert!(!t.version_info(draft.id).processed);
}

#[tokio::test]
async fn an_unprocessed_version_cannot_be_published() {
    let t = start().await;
    let draft = t.draft("1.0").await;
    let err = t.client.publish(APP, draft.id).await.unwrap_err();
    assert_error(
        &err,
        ErrorKind::BadRequest,
        "upload and process a file first",
    );
    assert!(t.version_info(draft.id).draft);
}

#[tokio::test]
async fn a_chunk_whose_md5_keeps_failing_reaches_the_caller() {
    let t = start().await;
    let zip = t.zip(SIZE);
    let upload = t.client.create_upload(zip.size).await.unwrap();
    t.sb.set_faults(FaultConfig {
        chunk_412: 1.0,
        ..FaultConfig::seeded(1)
    });
    let (result, acks) = t.send(upload, &zip, 0, None).await;
    let Err(UploadError::Api(err)) = result else {
        panic!("{result:?}")
    };
    assert_error(&err, ErrorKind::ChunkMismatch, "MD5 mismatch");
    assert!(acks.is_empty());
    let snap = t.sb.snapshot();
    // Resent a bounded number of times, every attempt refused.
    let sent = snap.total(CHUNK_ROUTE);
    assert!((2..=10).contains(&sent), "{sent} attempts");
    assert_eq!(snap.faults.injected_412, sent);
    assert_eq!(snap.upload(upload.0).unwrap().received, 0);
}

// ---- faults: retry-safe calls recover ----

#[tokio::test]
async fn an_upload_survives_5xx_answers() {
    let t = start().await;
    let s = t
        .upload_under(FaultConfig {
            fail_5xx: 0.3,
            ..FaultConfig::seeded(5)
        })
        .await;
    assert!(s.snap.faults.injected_5xx >= 3, "{:?}", s.snap.faults);
    assert_eq!(s.upload.received_twice, 0);
}

#[tokio::test]
async fn an_upload_survives_connections_dropped_before_the_handler() {
    let t = start().await;
    let s = t
        .upload_under(FaultConfig {
            drop_before: 0.2,
            ..FaultConfig::seeded(6)
        })
        .await;
    assert!(s.snap.faults.dropped_before >= 2, "{:?}", s.snap.faults);
    assert_eq!(s.upload.received_twice, 0);
}

#[tokio::test]
async fn an_upload_survives_connections_dropped_after_the_handler() {
    let t = start().await;
    let s = t
        .upload_under(FaultConfig {
            drop_after: 0.2,
            ..FaultConfig::seeded(7)
        })
        .await;
    let lost_acks = s.snap.count(CHUNK_ROUTE, "dropped");
    assert!(lost_acks >= 1, "{:?}", s.snap.faults);
    // Exactly the chunks whose acknowledgement was lost were sent again.
    assert_eq!(s.upload.received_twice, lost_acks * CHUNK);
    assert_eq!(s.upload.received, s.zip.size + lost_acks * CHUNK);
}

#[tokio::test]
async fn an_upload_survives_md5_mismatches() {
    let t = start().await;
    let s = t
        .upload_under(FaultConfig {
            chunk_412: 0.3,
            ..FaultConfig::seeded(8)
        })
        .await;
    assert!(s.snap.faults.injected_412 >= 3, "{:?}", s.snap.faults);
    assert_eq!(s.snap.count(CHUNK_ROUTE, "412"), s.snap.faults.injected_412);
    assert_eq!(s.upload.received_twice, 0);
}

#[tokio::test]
async fn an_upload_survives_every_fault_at_once_with_latency() {
    let t = start().await;
    let faults = FaultConfig {
        fail_5xx: 0.15,
        drop_before: 0.1,
        drop_after: 0.1,
        chunk_412: 0.15,
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(8),
        ..FaultConfig::seeded(9)
    };
    let s = t.upload_under(faults).await;
    let f = &s.snap.faults;
    assert!(
        f.injected_5xx > 0 && f.dropped_before > 0 && f.dropped_after > 0 && f.injected_412 > 0,
        "{f:?}"
    );
    assert!(s.upload.received_twice <= s.snap.count(CHUNK_ROUTE, "dropped") * CHUNK);
}

#[tokio::test]
async fn a_retried_call_that_keeps_failing_returns_its_last_error() {
    let t = start().await;
    let impatient = t.client_with(|o| o.retry.give_up = Some(Duration::from_millis(200)));
    t.sb.set_faults(FaultConfig {
        fail_5xx: 1.0,
        ..FaultConfig::seeded(1)
    });
    let err = impatient.get_app(APP).await.unwrap_err();
    assert_error(&err, transient(), "injected fault");
    assert!(t.sb.snapshot().total("GET /1/apps/{secret}") > 1);
}

// ---- faults: calls that are not safe to repeat are not repeated ----

#[tokio::test]
async fn creating_a_version_is_not_retried() {
    let t = start().await;
    t.sb.set_faults(FaultConfig {
        fail_5xx: 1.0,
        ..FaultConfig::seeded(1)
    });
    let err = t.client.create_version(APP, "1.0", None).await.unwrap_err();
    assert_error(&err, transient(), "injected fault");
    assert_eq!(t.sb.snapshot().total("POST /1/apps/{secret}/versions"), 1);

    // Why: a lost answer may hide a draft that exists.
    t.sb.set_faults(FaultConfig {
        drop_after: 1.0,
        ..FaultConfig::seeded(1)
    });
    let err = t.client.create_version(APP, "1.0", None).await.unwrap_err();
    assert_eq!(err.kind(), transient(), "{err}");
    assert_eq!(t.sb.snapshot().total("POST /1/apps/{secret}/versions"), 2);
    assert_eq!(t.sb.snapshot().versions(APP).len(), 1);
}

#[tokio::test]
async fn starting_processing_is_not_retried() {
    let t = start().await;
    let draft = t.draft("1.0").await;
    let upload = t.upload(&t.zip(SIZE)).await;
    t.sb.set_faults(FaultConfig {
        fail_5xx: 1.0,
        ..FaultConfig::seeded(1)
    });
    let err = t
        .client
        .start_processing(APP, draft.id, upload)
        .await
        .unwrap_err();
    assert_error(&err, transient(), "injected fault");
    let route = "PUT /1/apps/{secret}/versions/{id}/content_file";
    assert_eq!(t.sb.snapshot().total(route), 1);
}

#[tokio::test]
async fn publishing_is_not_retried() {
    let t = start().await;
    let draft = t.draft("1.0").await;
    let upload = t.upload(&t.zip(SIZE)).await;
    assert!(t.process(draft.id, upload).await.succeeded());
    t.sb.set_faults(FaultConfig {
        fail_5xx: 1.0,
        ..FaultConfig::seeded(1)
    });
    let err = t.client.publish(APP, draft.id).await.unwrap_err();
    assert_error(&err, transient(), "injected fault");
    let route = "POST /1/apps/{secret}/versions/{id}/publish";
    assert_eq!(t.sb.snapshot().total(route), 1);
    assert!(t.version_info(draft.id).draft);
}

// ---- resume and stalls ----

#[tokio::test]
async fn a_cancelled_upload_resumes_from_its_acknowledged_offset() {
    let t = start().await;
    let zip = t.zip(SIZE);
    let draft = t.draft("1.0").await;
    let upload = t.client.create_upload(zip.size).await.unwrap();

    let half = SIZE / 2;
    let (result, acks) = t.send(upload, &zip, 0, Some(half)).await;
    let Err(UploadError::Cancelled { acknowledged }) = result else {
        panic!("{result:?}")
    };
    // The offset `half` is recorded while the next chunk is on the wire:
    // that chunk finishes and is recorded too, nothing goes after it.
    assert_eq!(acknowledged, half + CHUNK);
    assert_eq!(acks.last(), Some(&(half + CHUNK)));
    let held = t.sb.snapshot().upload(upload.0).unwrap().clone();
    assert_eq!((held.received, held.complete), (half + CHUNK, false));

    let (result, acks) = t.send(upload, &zip, acknowledged, None).await;
    result.unwrap();
    assert_acks(&acks, acknowledged, zip.size);
    let held = t.sb.snapshot().upload(upload.0).unwrap().clone();
    assert_eq!(
        (held.received, held.received_twice, held.complete),
        (SIZE, 0, true)
    );
    assert!(t.process(draft.id, upload).await.succeeded());
    assert_eq!(t.version_info(draft.id).content_sha256, Some(zip.sha256));
}

/// The sandbox holds requests this long: far past the stall timeout below.
const STALL_LATENCY: Duration = Duration::from_secs(3);
/// Short, so the stall tests take a fraction of a second.
const STALL_TIMEOUT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_stalled_chunk_is_abandoned_and_sent_again() {
    let t = start().await;
    let client = t.client_with(|o| o.stall_timeout = STALL_TIMEOUT);
    let zip = t.zip(4 * CHUNK);
    let upload = client.create_upload(zip.size).await.unwrap();

    t.sb.set_faults(FaultConfig {
        latency: STALL_LATENCY,
        ..FaultConfig::seeded(1)
    });
    let seen = t.sb.snapshot().key_in_header;
    let req = UploadRequest {
        upload_id: upload,
        path: zip.path.clone(),
        total_size: zip.size,
        start_offset: 0,
        chunk_size: chunk_size(),
    };
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        let (mut ignore, _acks) = tokio::sync::mpsc::channel::<u64>(64);
        client
            .upload_file(&req, &mut ignore, &CancellationToken::new())
            .await
    });
    // The latency is drawn when a request arrives: once the first chunk is
    // held, later attempts may go through at once.
    until("the first chunk is held", || {
        t.sb.snapshot().key_in_header > seen
    })
    .await;
    t.sb.set_faults(FaultConfig::default());

    sending.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took >= STALL_TIMEOUT && took < STALL_LATENCY,
        "took {took:?}"
    );
    let held = t.sb.snapshot().upload(upload.0).unwrap().clone();
    assert_eq!((held.received_twice, held.complete), (0, true));
}

#[tokio::test]
async fn a_stalled_chunk_fails_as_transient_when_retries_are_over() {
    let t = start().await;
    let client = t.client_with(|o| {
        o.stall_timeout = STALL_TIMEOUT;
        o.retry = RetryPolicy {
            give_up: Some(Duration::ZERO),
            ..common::quick_retries()
        };
    });
    let upload = client.create_upload(CHUNK).await.unwrap();
    t.sb.set_faults(FaultConfig {
        latency: STALL_LATENCY,
        ..FaultConfig::seeded(1)
    });
    let range = chunk_ranges(CHUNK, chunk_size(), 0).next().unwrap();
    let started = Instant::now();
    let data = bytes::Bytes::from(vec![7u8; CHUNK as usize]);
    let err = client
        .upload_chunk(upload, range, CHUNK, data)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_error(&err, transient(), "stalled");
    assert!(
        took >= STALL_TIMEOUT && took < STALL_LATENCY,
        "took {took:?}"
    );
}
