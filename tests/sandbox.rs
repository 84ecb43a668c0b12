//! The sandbox enforces the PatchKit contract: every case over real sockets
//! with raw reqwest requests, so nothing here depends on the project's client.

use std::io::Write as _;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use patchkit_autopublish::sandbox::{
    FaultConfig, OutcomeRule, ProcessingOutcome, PublishOutcome, Sandbox, SandboxConfig,
    SandboxHandle,
};
use reqwest::{Method, StatusCode, multipart};
use serde_json::Value;
use sha2::Sha256;

const KEY: &str = "key-1";
const APP: &str = "app-1";
/// Long enough to observe a job or a publish in progress, short enough to
/// keep the suite fast.
const STEP: Duration = Duration::from_millis(150);

struct T {
    sb: SandboxHandle,
    http: reqwest::Client,
}

async fn start(config: SandboxConfig) -> T {
    let sb = Sandbox::start(config).await.unwrap();
    // No pooling: a connection the fault injector closed must not be reused.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    T { sb, http }
}

async fn default() -> T {
    start(
        SandboxConfig::new(KEY)
            .with_app(APP)
            .with_account("key-2", ["app-2"])
            .job_duration(STEP)
            .publish_duration(STEP),
    )
    .await
}

impl T {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.sb.main_url()))
            .header("X-Api-Key", KEY)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(Method::GET, path)).await
    }

    async fn form(&self, method: Method, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        self.send(self.req(method, path).form(form)).await
    }

    async fn create_version(&self, label: &str) -> u64 {
        let (s, v) = self
            .form(
                Method::POST,
                &format!("/1/apps/{APP}/versions"),
                &[("label", label)],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_u64().unwrap()
    }

    async fn create_upload(&self, total: usize) -> u64 {
        let (s, v) = self
            .form(
                Method::POST,
                "/1/uploads",
                &[("total_size_bytes", &total.to_string())],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        match &v["id"] {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(s) => s.parse().unwrap(),
            other => panic!("bad id {other}"),
        }
    }

    fn chunk_req(
        &self,
        upload: u64,
        range: Option<&str>,
        data: &[u8],
        md5: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let part = multipart::Part::bytes(data.to_vec())
            .file_name("chunk")
            .mime_str("application/octet-stream")
            .unwrap();
        let mut form = multipart::Form::new().part("chunk", part);
        if let Some(md5) = md5 {
            form = form.text("md5", md5.to_owned());
        }
        let mut rb = self
            .http
            .post(format!("{}/1/uploads/{upload}/chunk", self.sb.upload_url()))
            .header("X-Api-Key", KEY)
            .multipart(form);
        if let Some(range) = range {
            rb = rb.header("Content-Range", range);
        }
        rb
    }

    async fn chunk(
        &self,
        upload: u64,
        range: Option<&str>,
        data: &[u8],
        md5: Option<&str>,
    ) -> (StatusCode, Value) {
        self.send(self.chunk_req(upload, range, data, md5)).await
    }

    /// Uploads `data` in one chunk and attaches it to a new version.
    async fn upload_and_process(&self, label: &str, data: &[u8]) -> (u64, String) {
        let id = self.create_version(label).await;
        let guid = self.process(id, data).await;
        (id, guid)
    }

    async fn process(&self, id: u64, data: &[u8]) -> String {
        let upload = self.create_upload(data.len()).await;
        let range = format!("bytes 0-{}/{}", data.len() - 1, data.len());
        let (s, v) = self
            .chunk(upload, Some(&range), data, Some(&md5_hex(data)))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = self
            .form(
                Method::PUT,
                &format!("/1/apps/{APP}/versions/{id}/content_file"),
                &[("upload_id", &upload.to_string())],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["job_guid"].as_str().unwrap().to_owned()
    }

    async fn wait_job(&self, guid: &str) -> Value {
        self.wait(&format!("/1/background_jobs/{guid}"), |j| {
            j["finished"] == true
        })
        .await
    }

    async fn version(&self, id: u64) -> Value {
        let (s, v) = self.get(&format!("/1/apps/{APP}/versions/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn wait(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (s, v) = self.get(path).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on {path}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn publish(&self, id: u64) -> (StatusCode, Value) {
        self.form(
            Method::POST,
            &format!("/1/apps/{APP}/versions/{id}/publish"),
            &[],
        )
        .await
    }

    async fn wait_publish_settled(&self, id: u64) -> Value {
        self.wait(&format!("/1/apps/{APP}/versions/{id}"), |v| {
            v["pending_publish"] == false
        })
        .await
    }
}

fn md5_hex(data: &[u8]) -> String {
    patchkit_autopublish::patchkit::lower_hex(&Md5::digest(data))
}

/// A STORE zip with one entry.
fn stored_zip(name: &str, content: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::STORE);
    w.start_file(name, options).unwrap();
    w.write_all(content).unwrap();
    w.finish().unwrap().into_inner()
}

/// A zip whose one entry claims DEFLATE64 (method 9) in both the local
/// header and the central directory.
fn deflate64_zip() -> Vec<u8> {
    let mut z = stored_zip("data.bin", b"pretend this is deflate64");
    let local = z.windows(4).position(|w| w == b"PK\x03\x04").unwrap();
    z[local + 8..local + 10].copy_from_slice(&9u16.to_le_bytes());
    let central = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    z[central + 10..central + 12].copy_from_slice(&9u16.to_le_bytes());
    z
}

const VERSION_KEYS: &[&str] = &[
    "id",
    "label",
    "changelog",
    "draft",
    "publish_date",
    "pending_publish",
    "published",
    "publish_progress",
    "publish_time",
    "publish_when_processed",
    "processing_started_at",
    "processing_finished_at",
    "processing_progress",
    "has_processing_error",
    "processing_messages",
];

#[tokio::test]
async fn each_route_lives_on_one_host_only() {
    let t = default().await;
    let upload = t.create_upload(4).await;
    let on_main = t
        .http
        .post(format!("{}/1/uploads/{upload}/chunk", t.sb.main_url()))
        .header("X-Api-Key", KEY)
        .header("Content-Range", "bytes 0-3/4")
        .multipart(multipart::Form::new().part("chunk", multipart::Part::bytes(vec![1, 2, 3, 4])));
    let (s, v) = t.send(on_main).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["message"].is_string());
    let versions_on_upload = t
        .http
        .get(format!("{}/1/apps/{APP}/versions", t.sb.upload_url()))
        .header("X-Api-Key", KEY);
    let (s, v) = t.send(versions_on_upload).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["message"].is_string());
    let (s, v) = t.send(t.req(Method::DELETE, "/1/apps")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(v["message"].is_string());
}

#[tokio::test]
async fn the_cli_runner_stops_when_cancelled() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: patchkit_autopublish::sandbox::cli::SandboxArgs,
    }
    let cli = Cli::try_parse_from(["x", "--app", "a", "--job-duration", "10ms", "--drop", "0.1"])
        .unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(patchkit_autopublish::sandbox::cli::run(
        cli.args,
        token.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    token.cancel();
    run.await.unwrap().unwrap();
    let bad = Cli::try_parse_from(["x", "--drop", "2"]).unwrap();
    assert!(
        patchkit_autopublish::sandbox::cli::run(
            bad.args,
            tokio_util::sync::CancellationToken::new()
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn auth_follows_the_contract() {
    let t = default().await;
    let versions = format!("/1/apps/{APP}/versions");
    // Missing key on a private endpoint.
    let (s, v) = t
        .send(
            t.http
                .post(format!("{}{versions}", t.sb.main_url()))
                .form(&[("label", "x")]),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["message"].is_string() && v["symbol"].is_string());
    // Unknown key, even on a public endpoint.
    let (s, _) = t
        .send(
            t.http
                .get(format!("{}/1/apps/{APP}", t.sb.main_url()))
                .header("X-Api-Key", "nope"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Public endpoint without a key.
    let (s, app) = t
        .send(t.http.get(format!("{}/1/apps/{APP}", t.sb.main_url())))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app["secret"], APP);
    assert_eq!(app["processing_version"], false);
    assert_eq!(app["publishing_version"], Value::Null);
    assert_eq!(app["current_version"], 0);
    // Someone else's app, an unknown app.
    let (s, _) = t
        .form(Method::POST, "/1/apps/app-2/versions", &[("label", "x")])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .form(Method::POST, "/1/apps/nope/versions", &[("label", "x")])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The key in the URL works and is recorded.
    let before = t.sb.snapshot();
    let (s, _) = t
        .send(
            t.http
                .get(format!("{}/1/apps?api_key={KEY}", t.sb.main_url())),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let after = t.sb.snapshot();
    assert_eq!(after.key_in_url, before.key_in_url + 1);
    assert_eq!(after.key_in_header, before.key_in_header);
    // Own apps only; revoked keys become unknown.
    let (_, apps) = t.get("/1/apps").await;
    assert_eq!(apps.as_array().unwrap().len(), 1);
    t.sb.revoke_key(KEY);
    assert_eq!(t.get("/1/apps").await.0, StatusCode::UNAUTHORIZED);
    t.sb.add_account(KEY);
    t.sb.add_app(KEY, "app-3");
    assert_eq!(t.get("/1/apps").await.1.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn apps_can_be_created() {
    let t = default().await;
    let (s, app) = t
        .form(
            Method::POST,
            "/1/apps",
            &[("name", "game"), ("platform", "linux_x86_64")],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let secret = app["secret"].as_str().unwrap();
    assert_eq!(t.get(&format!("/1/apps/{secret}")).await.1["name"], "game");
    let (s, _) = t
        .form(
            Method::POST,
            "/1/apps",
            &[("name", "game"), ("platform", "amiga")],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn one_draft_per_app_and_sequential_ids() {
    let t = default().await;
    let v1 = t.create_version("1.0").await;
    assert_eq!(v1, 1);
    let (s, v) = t
        .form(
            Method::POST,
            &format!("/1/apps/{APP}/versions"),
            &[("label", "1.1")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("draft version already exists")
    );
    assert_eq!(v["symbol"], "draft_exists");
    let (s, _) = t
        .form(Method::POST, &format!("/1/apps/{APP}/versions"), &[])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "label is required");

    let version = t.version(v1).await;
    for key in VERSION_KEYS {
        assert!(version.get(key).is_some(), "missing {key} in {version}");
    }
    assert_eq!(version["draft"], true);
    assert_eq!(version["publish_date"], 0);
    assert_eq!(version["processing_messages"], Value::Null);
    assert_eq!(version["processing_started_at"], Value::Null);

    // Drafts are visible to the owner only.
    let (_, listed) = t.get(&format!("/1/apps/{APP}/versions")).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (_, public) = t
        .send(
            t.http
                .get(format!("{}/1/apps/{APP}/versions", t.sb.main_url())),
        )
        .await;
    assert_eq!(public, serde_json::json!([]));

    t.upload_and_publish_existing(v1).await;
    assert_eq!(t.create_version("1.1").await, 2);
    let (_, public) = t
        .send(
            t.http
                .get(format!("{}/1/apps/{APP}/versions", t.sb.main_url())),
        )
        .await;
    assert_eq!(public.as_array().unwrap().len(), 1);
}

impl T {
    async fn upload_and_publish_existing(&self, id: u64) {
        let guid = self.process(id, &stored_zip("a.txt", b"hello")).await;
        self.wait_job(&guid).await;
        assert_eq!(self.publish(id).await.0, StatusCode::OK);
        let v = self.wait_publish_settled(id).await;
        assert_eq!(v["published"], true);
    }
}

#[tokio::test]
async fn patch_changes_drafts_only() {
    let t = default().await;
    let id = t.create_version("1.0").await;
    let path = format!("/1/apps/{APP}/versions/{id}");
    let (s, _) = t
        .form(
            Method::PATCH,
            &path,
            &[
                ("label", "2.0"),
                ("changelog", "new"),
                ("publish_when_processed", "false"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = t.version(id).await;
    assert_eq!(
        (v["label"].as_str(), v["changelog"].as_str()),
        (Some("2.0"), Some("new"))
    );
    let (s, _) = t
        .form(Method::PATCH, &path, &[("publish_when_processed", "yes")])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .send(
            t.req(Method::PATCH, &path)
                .header("Content-Type", "application/json")
                .body(r#"{"label":"x"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "JSON bodies are refused");
    t.upload_and_publish_existing(id).await;
    let (s, _) = t.form(Method::PATCH, &path, &[("label", "3.0")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn upload_ids_come_as_ints_and_strings() {
    let t = default().await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (_, v) = t
            .form(Method::POST, "/1/uploads", &[("total_size_bytes", "10")])
            .await;
        kinds.push(v["id"].is_number());
    }
    assert_eq!(kinds, [true, false]);
    let (s, _) = t
        .form(Method::POST, "/1/uploads", &[("total_size_bytes", "ten")])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn content_range_is_checked() {
    let t = default().await;
    let upload = t.create_upload(10).await;
    let data = b"0123456789";
    let bad = [
        (None, &data[..5]),
        (Some("bytes 0-4/ten"), &data[..5]),
        (Some("0-4/10"), &data[..5]),
        (Some("bytes 6-10/10"), &data[6..]),
        (Some("bytes 4-2/10"), &data[..3]),
        (Some("bytes 0-4/10"), &data[..4]),
        (Some("bytes 0-4/11"), &data[..5]),
    ];
    for (range, chunk) in bad {
        let (s, v) = t.chunk(upload, range, chunk, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{range:?}: {v}");
        assert!(v["message"].is_string());
    }
    let (s, v) = t
        .chunk(
            upload,
            Some("bytes 0-4/10"),
            &data[..5],
            Some(&md5_hex(b"other")),
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_eq!(t.sb.snapshot().upload(upload).unwrap().received, 0);

    let (s, _) = t
        .chunk(
            upload,
            Some("bytes 0-4/10"),
            &data[..5],
            Some(&md5_hex(&data[..5])),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Without TOTAL, and overlapping what is held.
    let (s, _) = t.chunk(upload, Some("bytes 3-9"), &data[3..], None).await;
    assert_eq!(s, StatusCode::CREATED);
    let info = t.sb.snapshot().upload(upload).cloned().unwrap();
    assert_eq!(
        (info.received, info.received_twice, info.complete),
        (12, 2, true)
    );

    // Another account's key cannot write into it.
    let other = t
        .http
        .post(format!("{}/1/uploads/{upload}/chunk", t.sb.upload_url()))
        .header("X-Api-Key", "key-2")
        .header("Content-Range", "bytes 0-0/10")
        .multipart(multipart::Form::new().part("chunk", multipart::Part::bytes(vec![0])));
    assert_eq!(t.send(other).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn processing_and_publishing_a_good_zip() {
    let t = default().await;
    let zip = stored_zip("game.exe", &[7u8; 5000]);
    let id = t.create_version("1.0").await;

    // An incomplete upload cannot be processed.
    let upload = t.create_upload(zip.len()).await;
    let half = zip.len() / 2;
    let (s, _) = t
        .chunk(
            upload,
            Some(&format!("bytes 0-{}/{}", half - 1, zip.len())),
            &zip[..half],
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let content_file = format!("/1/apps/{APP}/versions/{id}/content_file");
    let (s, v) = t
        .form(
            Method::PUT,
            &content_file,
            &[("upload_id", &upload.to_string())],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        t.publish(id).await.0,
        StatusCode::BAD_REQUEST,
        "nothing processed yet"
    );

    let guid = t.process(id, &zip).await;
    let (s, v) = t
        .form(
            Method::PUT,
            &content_file,
            &[("upload_id", &upload.to_string())],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a job is running: {v}");
    let (_, job) = t.get(&format!("/1/background_jobs/{guid}")).await;
    assert_eq!(
        (job["finished"].as_bool(), job["pending"].as_bool()),
        (Some(false), Some(true))
    );
    let early = job["progress"].as_f64().unwrap();
    assert!(early < 1.0);
    assert_eq!(t.get("/1/apps/app-1").await.1["processing_version"], id);
    assert_eq!(
        t.publish(id).await.0,
        StatusCode::BAD_REQUEST,
        "still processing"
    );
    t.wait(&format!("/1/background_jobs/{guid}"), |j| {
        j["progress"].as_f64() > Some(early)
    })
    .await;
    let (_, job) = t.get(&format!("/1/background_jobs/{guid}")).await;
    assert!(job["progress"].as_f64().unwrap() > early);
    let job = t.wait_job(&guid).await;
    assert_eq!(job["status"], 0);
    assert_eq!(job["progress"], 1.0);
    assert!(job["time_finished"].is_string());
    let (s, _) = t
        .send(
            t.http
                .get(format!("{}/1/background_jobs/nope", t.sb.main_url())),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let v = t.version(id).await;
    assert_eq!(v["has_processing_error"], false);
    assert_eq!(v["processing_messages"], Value::Null);
    assert!(v["processing_finished_at"].is_string());
    assert_eq!(v["processing_progress"], 1.0);

    let (s, _) = t.publish(id).await;
    assert_eq!(s, StatusCode::OK);
    let v = t.version(id).await;
    assert_eq!(
        (v["pending_publish"].as_bool(), v["published"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(t.get("/1/apps/app-1").await.1["publishing_version"], id);
    let v = t.wait_publish_settled(id).await;
    assert_eq!(v["published"], true);
    assert_eq!(v["draft"], false);
    assert!(v["publish_date"].as_u64().unwrap() > 0);
    assert_eq!(t.get("/1/apps/app-1").await.1["current_version"], id);

    let (s, v) = t.publish(id).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v["message"].as_str().unwrap().contains("already published"));
    let (s, _) = t
        .form(
            Method::PUT,
            &content_file,
            &[("upload_id", &upload.to_string())],
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "published versions take no content"
    );
    // PUT is accepted as publish too (on a fresh version it is refused for a
    // missing upload, not for the method).
    let id2 = t.create_version("1.1").await;
    let (s, _) = t
        .send(t.req(
            Method::PUT,
            &format!("/1/apps/{APP}/versions/{id2}/publish"),
        ))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let snap = t.sb.snapshot();
    let info = snap.version(APP, id).unwrap();
    assert_eq!(
        info.content_sha256.as_deref(),
        Some(patchkit_autopublish::patchkit::lower_hex(&Sha256::digest(&zip)).as_str())
    );
    assert_eq!(info.content_size, Some(zip.len() as u64));
    assert!(info.published && !info.draft);
    assert!(info.upload_id.is_some());
    assert_eq!(snap.count("POST /1/uploads/{id}/chunk", "201"), 2);
    assert_eq!(
        snap.count("PUT /1/apps/{secret}/versions/{id}/content_file", "400"),
        2
    );
    assert_eq!(snap.key_in_url, 0);
}

#[tokio::test]
async fn bad_content_gets_processing_errors() {
    let t = default().await;
    let (id, guid) = t
        .upload_and_process("1.0", b"this is not a zip at all")
        .await;
    t.wait_job(&guid).await;
    let v = t.version(id).await;
    assert_eq!(v["processing_messages"][0]["severity"], "error");
    assert_eq!(v["processing_messages"][0]["message"], "not a ZIP archive");
    assert_eq!(t.publish(id).await.0, StatusCode::BAD_REQUEST);

    // Re-uploading over the draft is allowed.
    let guid = t.process(id, &deflate64_zip()).await;
    t.wait_job(&guid).await;
    let v = t.version(id).await;
    let message = v["processing_messages"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("data.bin") && message.contains("DEFLATE64"),
        "{message}"
    );
    assert_eq!(v["processing_messages"].as_array().unwrap().len(), 1);
}

/// Processes a good ZIP under one outcome rule; returns the finished job,
/// the version and the status of a publish attempt.
async fn outcome_case(outcome: ProcessingOutcome) -> (Value, Value, StatusCode) {
    let t = start(
        SandboxConfig::new(KEY)
            .with_app(APP)
            .job_duration(STEP)
            .publish_duration(STEP)
            .outcome(OutcomeRule::any().app(APP).label("1.*").processing(outcome)),
    )
    .await;
    let (id, guid) = t.upload_and_process("1.0", &stored_zip("a", b"a")).await;
    let job = t.wait_job(&guid).await;
    let version = t.version(id).await;
    let publish = t.publish(id).await.0;
    (job, version, publish)
}

#[tokio::test]
async fn processing_outcomes() {
    let (job, v, publish) = outcome_case(ProcessingOutcome::Clean).await;
    assert_eq!((job["status"].as_i64(), publish), (Some(0), StatusCode::OK));
    assert_eq!(v["processing_messages"], Value::Null);

    let warning = ProcessingOutcome::Warning {
        message: "big".into(),
    };
    let (_, v, publish) = outcome_case(warning).await;
    assert_eq!(v["processing_messages"][0]["severity"], "warning");
    assert_eq!(v["processing_messages"][0]["message"], "big");
    assert_eq!(publish, StatusCode::OK, "warnings do not block");

    let error = ProcessingOutcome::Error {
        message: "bad".into(),
    };
    let (_, v, publish) = outcome_case(error).await;
    assert_eq!(v["processing_messages"][0]["severity"], "error");
    assert_eq!(publish, StatusCode::BAD_REQUEST);

    let (_, v, publish) = outcome_case(ProcessingOutcome::HasProcessingError).await;
    assert_eq!(v["has_processing_error"], true);
    assert_eq!(v["processing_messages"], Value::Null);
    assert_eq!(publish, StatusCode::BAD_REQUEST);

    let failure = ProcessingOutcome::JobFailure {
        status: 3,
        message: "worker died".into(),
    };
    let (job, _, publish) = outcome_case(failure).await;
    assert_eq!(job["status"], 3);
    assert_eq!(job["status_message"], "worker died");
    assert_eq!(publish, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn publish_outcomes_and_publish_when_processed() {
    let t = default().await;
    t.sb.set_outcomes(vec![
        OutcomeRule::any()
            .label("sched")
            .publish(PublishOutcome::Scheduled { delay_secs: 3600 }),
        OutcomeRule::any()
            .label("refuse")
            .publish(PublishOutcome::Refused),
    ]);
    let zip = stored_zip("a", b"a");

    let (id, guid) = t.upload_and_process("refuse", &zip).await;
    t.wait_job(&guid).await;
    assert_eq!(t.publish(id).await.0, StatusCode::OK);
    let v = t.wait_publish_settled(id).await;
    assert_eq!(
        (v["published"].as_bool(), v["publish_time"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(v["draft"], true);

    let path = format!("/1/apps/{APP}/versions/{id}");
    t.form(Method::PATCH, &path, &[("label", "sched")]).await;
    assert_eq!(t.publish(id).await.0, StatusCode::OK);
    let v = t.wait_publish_settled(id).await;
    assert_eq!(v["published"], false);
    assert_eq!(v["draft"], false);
    assert_eq!(v["publish_progress"], 1.0);
    assert!(v["publish_time"].as_u64().unwrap() > 1_000_000_000);
    assert!(t.sb.snapshot().version(APP, id).unwrap().scheduled);

    // publish_when_processed publishes by itself.
    let id = t.create_version("auto").await;
    let path = format!("/1/apps/{APP}/versions/{id}");
    t.form(Method::PATCH, &path, &[("publish_when_processed", "true")])
        .await;
    let guid = t.process(id, &zip).await;
    t.wait_job(&guid).await;
    let v = t.wait(&path, |v| v["published"] == true).await;
    assert_eq!(v["publish_when_processed"], true);
}

async fn raw_request(t: &T, path: &str) -> reqwest::Result<reqwest::Response> {
    t.http
        .post(format!("{}{path}", t.sb.main_url()))
        .header("X-Api-Key", KEY)
        .form(&[("label", "1.0")])
        .send()
        .await
}

#[tokio::test]
async fn dropped_connections_give_transport_errors() {
    let t = default().await;
    let versions = format!("/1/apps/{APP}/versions");
    t.sb.set_faults(FaultConfig {
        drop_before: 1.0,
        ..FaultConfig::seeded(1)
    });
    let err = raw_request(&t, &versions).await.unwrap_err();
    assert!(!err.is_status() && err.status().is_none(), "{err:?}");
    t.sb.set_faults(FaultConfig::default());
    assert!(t.sb.snapshot().versions(APP).is_empty(), "not applied");

    t.sb.set_faults(FaultConfig {
        drop_after: 1.0,
        ..FaultConfig::seeded(1)
    });
    let err = raw_request(&t, &versions).await.unwrap_err();
    assert!(err.status().is_none(), "{err:?}");
    t.sb.set_faults(FaultConfig::default());
    assert_eq!(t.sb.snapshot().versions(APP).len(), 1, "applied");

    let snap = t.sb.snapshot();
    assert_eq!(snap.count("POST /1/apps/{secret}/versions", "dropped"), 2);
    assert_eq!(
        (snap.faults.dropped_before, snap.faults.dropped_after),
        (1, 1)
    );

    // On the wire: EOF without a byte of response.
    t.sb.set_faults(FaultConfig {
        drop_before: 1.0,
        ..FaultConfig::seeded(1)
    });
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(t.sb.main_addr())
        .await
        .unwrap();
    s.write_all(format!("GET /1/apps/{APP} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
}

#[tokio::test]
async fn injected_errors_and_latency() {
    let t = default().await;
    t.sb.set_faults(FaultConfig {
        fail_5xx: 1.0,
        ..FaultConfig::seeded(7)
    });
    let (s, v) = t.get("/1/apps").await;
    assert!(s == StatusCode::INTERNAL_SERVER_ERROR || s == StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["message"].is_string());

    t.sb.set_faults(FaultConfig {
        chunk_412: 1.0,
        ..FaultConfig::seeded(7)
    });
    let upload = t.create_upload(3).await;
    let (s, _) = t
        .chunk(upload, Some("bytes 0-2/3"), b"abc", Some(&md5_hex(b"abc")))
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        t.sb.snapshot().upload(upload).unwrap().received,
        0,
        "not stored"
    );

    t.sb.set_faults(FaultConfig {
        latency: Duration::from_millis(100),
        ..FaultConfig::seeded(7)
    });
    let started = Instant::now();
    t.get("/1/apps").await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    // The inspection API is never faulted.
    let started = Instant::now();
    let state: Value = t
        .http
        .get(format!("{}/_sandbox/state", t.sb.main_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(state["faults"]["injected_412"], 1);
}

#[tokio::test]
async fn faults_repeat_with_the_seed() {
    let t = default().await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        t.sb.set_faults(FaultConfig {
            fail_5xx: 0.5,
            ..FaultConfig::seeded(42)
        });
        let mut statuses = Vec::new();
        for _ in 0..16 {
            statuses.push(t.get("/1/apps").await.0.as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&200) && runs[0].iter().any(|s| *s >= 500),
        "{:?}",
        runs[0]
    );
}

#[tokio::test]
async fn the_http_inspection_api_steers_the_sandbox() {
    let t = default().await;
    let base = t.sb.main_url();
    let s = t
        .http
        .put(format!("{base}/_sandbox/outcomes"))
        .json(&serde_json::json!([{"label": "x*", "processing": {"kind": "error", "message": "nope"}}]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let s = t
        .http
        .put(format!("{base}/_sandbox/outcomes"))
        .json(&serde_json::json!([{"label": "[", "processing": {"kind": "clean"}}]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (id, guid) = t.upload_and_process("x1", &stored_zip("a", b"a")).await;
    t.wait_job(&guid).await;
    assert_eq!(
        t.version(id).await["processing_messages"][0]["message"],
        "nope"
    );

    let s = t
        .http
        .put(format!("{base}/_sandbox/faults"))
        .json(&serde_json::json!({"seed": 1, "fail_5xx": 1.0}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(t.get("/1/apps").await.0.is_server_error());
    let snap: patchkit_autopublish::sandbox::Snapshot = t
        .http
        .get(format!("{base}/_sandbox/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap.versions(APP)[0].label, "x1");
    assert_eq!(snap.faults.injected_5xx, 1);
    assert!(snap.key_in_header > 0);
}

// ---------------------------------------------------------------------------
// Variants: the answers the sources leave open.
// ---------------------------------------------------------------------------

async fn with_variant(variant: patchkit_autopublish::sandbox::Variant) -> T {
    start(
        SandboxConfig::new(KEY)
            .with_app(APP)
            .job_duration(STEP)
            .publish_duration(STEP)
            .variant(variant),
    )
    .await
}

#[tokio::test]
async fn swagger_keys_leave_out_what_the_swagger_does_not_list() {
    use patchkit_autopublish::sandbox::Variant;
    let t = with_variant(Variant::SwaggerKeys).await;
    let id = t.create_version("1.0").await;
    let v = t.version(id).await;
    for absent in ["publish_time", "processing_progress"] {
        assert!(v.get(absent).is_none(), "{absent} in {v}");
    }
    assert_eq!(v["processing_messages"], Value::Null);
    assert_eq!(v["has_processing_error"], false);
    let (_, app) = t.get(&format!("/1/apps/{APP}")).await;
    for absent in ["is_channel", "allow_channel_direct_publish", "parent_group"] {
        assert!(app.get(absent).is_none(), "{absent} in {app}");
    }
    // Our client still reads such a version and can decide on it.
    let client = patchkit_autopublish::patchkit::Client::new(
        patchkit_autopublish::patchkit::ClientOptions::new(
            t.sb.main_url().parse().unwrap(),
            t.sb.upload_url().parse().unwrap(),
            patchkit_autopublish::patchkit::ApiKey::new(KEY).unwrap(),
        ),
    )
    .unwrap();
    let read = client.get_version(APP, id).await.unwrap();
    assert_eq!(read.processing_progress, None);
    assert_eq!(read.is_open_draft(), Ok(true));
}

#[tokio::test]
async fn lazy_timestamps_keep_the_old_times_until_the_job_starts() {
    use patchkit_autopublish::sandbox::Variant;
    let t = with_variant(Variant::LazyTimestamps).await;
    let zip = stored_zip("game.exe", b"first");
    let (id, guid) = t.upload_and_process("1.0", &zip).await;
    let before = t.version(id).await;
    assert_eq!(
        before["processing_started_at"],
        Value::Null,
        "queued: {before}"
    );
    let (_, app) = t.get(&format!("/1/apps/{APP}")).await;
    assert_eq!(app["processing_version"], id, "{app}");
    t.wait_job(&guid).await;
    let first = t.version(id).await;
    assert!(first["processing_finished_at"].is_string(), "{first}");

    // Processed again: the first times stay until the new job starts.
    let guid = t.process(id, &stored_zip("game.exe", b"second")).await;
    let queued = t.version(id).await;
    assert_eq!(
        queued["processing_started_at"],
        first["processing_started_at"]
    );
    assert_eq!(
        queued["processing_finished_at"],
        first["processing_finished_at"]
    );
    let (_, app) = t.get(&format!("/1/apps/{APP}")).await;
    assert_eq!(app["processing_version"], id, "{app}");
    t.wait_job(&guid).await;
    let second = t.version(id).await;
    assert_ne!(
        second["processing_started_at"],
        first["processing_started_at"]
    );
    assert_ne!(
        second["processing_finished_at"],
        first["processing_finished_at"]
    );
}

#[tokio::test]
async fn content_file_refusals_can_be_404_with_other_wording() {
    use patchkit_autopublish::sandbox::Variant;
    let t = with_variant(Variant::ContentFile404).await;
    let id = t.create_version("1.0").await;
    let upload = t.create_upload(10).await;
    let (s, v) = t
        .form(
            Method::PUT,
            &format!("/1/apps/{APP}/versions/{id}/content_file"),
            &[("upload_id", &upload.to_string())],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        !message.contains("incomplete") && !message.contains("upload"),
        "{v}"
    );
}

#[tokio::test]
async fn a_wrong_key_can_be_403_on_version_endpoints_and_ignored_on_public_ones() {
    use patchkit_autopublish::sandbox::Variant;
    let t = with_variant(Variant::Forbidden403).await;
    let wrong = |method, path: &str| {
        t.http
            .request(method, format!("{}{path}", t.sb.main_url()))
            .header("X-Api-Key", "wrong")
    };
    let (s, _) = t
        .send(wrong(Method::GET, &format!("/1/apps/{APP}/versions")))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t.send(wrong(Method::GET, &format!("/1/apps/{APP}"))).await;
    assert_eq!(s, StatusCode::OK, "a public endpoint ignores the key");
    let (s, _) = t.send(wrong(Method::GET, "/1/apps")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_forgetful_restart_drops_drafts_uploads_and_jobs_but_not_published_versions() {
    use patchkit_autopublish::sandbox::Variant;
    let t = with_variant(Variant::Forgetful).await;
    let (id, guid) = t
        .upload_and_process("1.0", &stored_zip("game.exe", b"x"))
        .await;
    t.wait_job(&guid).await;
    let (s, v) = t.publish(id).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.wait_publish_settled(id).await;
    let draft = t.create_version("1.1").await;
    let upload = t.create_upload(10).await;
    t.sb.restart();
    let (s, _) = t.get(&format!("/1/apps/{APP}/versions/{draft}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(t.version(id).await["published"], true);
    let (s, _) = t.chunk(upload, Some("bytes 0-9/10"), &[0; 10], None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.get(&format!("/1/background_jobs/{guid}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The forgotten id is given again.
    assert_eq!(t.create_version("1.1").await, draft);

    // Without the variant, a restart loses nothing.
    let durable = default().await;
    let kept = durable.create_version("1.0").await;
    durable.sb.restart();
    durable.version(kept).await;
}

#[tokio::test]
async fn channel_apps_show_their_group_and_can_be_added_over_http() {
    let t = default().await;
    t.sb.add_channel_app(KEY, "chan", APP, false);
    let (_, app) = t.get("/1/apps/chan").await;
    assert_eq!(app["is_channel"], true);
    assert_eq!(app["allow_channel_direct_publish"], false);
    assert_eq!(app["parent_group"]["secret"], APP);
    let (_, group) = t.get(&format!("/1/apps/{APP}")).await;
    assert_eq!(group["is_channel"], false);
    assert_eq!(group["parent_group"], Value::Null);

    let resp = t
        .http
        .post(format!("{}/_sandbox/apps", t.sb.main_url()))
        .json(&serde_json::json!({
            "owner": KEY, "secret": "chan-2", "channel_of": APP,
            "allow_channel_direct_publish": true
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (_, app) = t.get("/1/apps/chan-2").await;
    assert_eq!(app["allow_channel_direct_publish"], true);
    let resp = t
        .http
        .post(format!("{}/_sandbox/restart", t.sb.main_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_cli_runner_takes_variants_and_channel_apps() {
    use clap::Parser;
    use patchkit_autopublish::sandbox::Variant;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: patchkit_autopublish::sandbox::cli::SandboxArgs,
    }
    let cli = Cli::try_parse_from([
        "x",
        "--variant",
        "swagger-keys",
        "--variant",
        "forbidden-403",
        "--variant",
        "content-file-404",
        "--channel-app",
        "chan=group",
    ])
    .unwrap();
    assert_eq!(
        cli.args.variants,
        [
            Variant::SwaggerKeys,
            Variant::Forbidden403,
            Variant::ContentFile404
        ]
    );
    for v in Variant::ALL {
        let parsed = Cli::try_parse_from(["x", "--variant", v.name()]).unwrap();
        assert_eq!(parsed.args.variants, [v]);
    }
    assert!(Cli::try_parse_from(["x", "--variant", "nonsense"]).is_err());
    let bad = Cli::try_parse_from(["x", "--channel-app", "chan"]).unwrap();
    assert!(
        patchkit_autopublish::sandbox::cli::run(
            bad.args,
            tokio_util::sync::CancellationToken::new()
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_channel_draft_links_a_published_group_version_through_a_job() {
    let t = default().await;
    t.sb.add_channel_app(KEY, "chan", APP, false);
    let zip = stored_zip("game.exe", b"linked content");
    let (group_version, guid) = t.upload_and_process("1.0", &zip).await;
    t.wait_job(&guid).await;
    let (s, _) = t
        .form(
            Method::POST,
            "/1/apps/chan/versions",
            &[("label", "1.0-beta")],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let link = |source: u64| {
        let t = &t;
        async move {
            t.form(
                Method::POST,
                "/1/apps/chan/versions/1/link",
                &[
                    ("source_app_secret", APP),
                    ("source_app_version_id", &source.to_string()),
                ],
            )
            .await
        }
    };
    // Only a published group version can be linked.
    let (s, v) = link(group_version).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["symbol"], "bad_source_version");
    t.publish(group_version).await;
    t.wait_publish_settled(group_version).await;
    // An app that is not a channel of the group cannot link.
    let (s, v) = t
        .form(
            Method::POST,
            &format!("/1/apps/{APP}/versions/{group_version}/link"),
            &[
                ("source_app_secret", APP),
                ("source_app_version_id", &group_version.to_string()),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["symbol"], "not_a_channel");

    let (s, v) = link(group_version).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.wait_job(v["job_guid"].as_str().unwrap()).await;
    let (s, v) = t.get("/1/apps/chan/versions/1").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v["processing_finished_at"].is_null(), "{v}");
    let (s, v) = t
        .form(Method::POST, "/1/apps/chan/versions/1/publish", &[])
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let snap = t.sb.snapshot();
    let group = snap.version(APP, group_version).unwrap();
    let channel = snap.version("chan", 1).unwrap();
    assert_eq!(channel.content_sha256, group.content_sha256);
}

#[tokio::test]
async fn the_global_lock_queues_owners_per_resource_and_forgets_quiet_ones() {
    let t = start(
        SandboxConfig::new(KEY)
            .with_app(APP)
            .lock_timeout(Duration::from_millis(300)),
    )
    .await;
    let acquire = |owner: &'static str| {
        let t = &t;
        async move {
            t.form(
                Method::POST,
                "/1/global_locks/acquire",
                &[("resource", APP), ("owner", owner)],
            )
            .await
        }
    };
    let (s, v) = acquire("a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "allow");
    assert_eq!(v["resource"], APP);
    assert_eq!(v["owner"], "a");
    let (s, v) = acquire("b").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "deny");
    assert_eq!(v["queue_position"], 1);
    let snap = t.sb.snapshot();
    assert_eq!(snap.locks.len(), 1);
    assert_eq!(snap.locks[0].owners, ["a", "b"]);
    // Without a key the lock is not for anyone.
    let resp = t
        .http
        .post(format!("{}/1/global_locks/acquire", t.sb.main_url()))
        .form(&[("resource", APP), ("owner", "c")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // a goes quiet; b keeps asking and gets it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = acquire("b").await;
        if v["status"] == "allow" {
            break;
        }
        assert!(Instant::now() < deadline, "b never got the lock: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.sb.snapshot().locks[0].owners, ["b"]);
}
