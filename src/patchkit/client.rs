//! The HTTP client: one method per endpoint, typed in and out.
//!
//! Owns the reqwest client and its settings (timeouts, proxy, redirects), URL
//! building on the two hosts, the `X-Api-Key` header, form encoding, response
//! classification and the retry of calls that are safe to repeat. The chunk
//! upload engine lives in `upload.rs`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::error::{ApiError, BuildError, Endpoint};
use super::key::ApiKey;
use super::retry::RetryPolicy;
use super::types::{
    App, AppVersion, CreatedUpload, Job, JobGuid, LinkStarted, LockAnswer, StartedJob, UploadId,
    VersionPatch,
};

/// PatchKit's API host, for every endpoint but chunks.
pub const DEFAULT_API_URL: &str = "https://api2.patchkit.net";
/// PatchKit's upload host, for chunks only (the guide's instruction).
pub const DEFAULT_UPLOAD_URL: &str = "https://api.patchkit.net";

/// How to reach PatchKit. `Debug` shows no key.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL of every endpoint except chunk uploads.
    pub api_url: Url,
    /// Base URL of `POST /1/uploads/{id}/chunk`.
    pub upload_url: Url,
    /// Sent as `X-Api-Key` on every request, nowhere else.
    pub api_key: ApiKey,
    /// Total time allowed for one ordinary API call, body included.
    pub request_timeout: Duration,
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// A chunk upload that moves no byte and gets no answer for this long is
    /// abandoned and sent again.
    pub stall_timeout: Duration,
    /// Backoff for the calls the client retries by itself.
    pub retry: RetryPolicy,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Where the client notes each app it reads; share one between the
    /// clients a process builds over time (a new key, a reload).
    pub known_apps: KnownApps,
}

/// The apps a client has read (`GET /1/apps/{secret}`), by secret: their
/// names and ids for messages, without asking PatchKit again. Cheap to
/// clone; clones share one table.
#[derive(Debug, Clone, Default)]
pub struct KnownApps(Arc<std::sync::Mutex<std::collections::HashMap<String, KnownApp>>>);

/// What PatchKit last said about an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownApp {
    /// The numeric id: the panel's pages are addressed by it.
    pub id: u64,
    /// The name shown to players when set, else the internal name.
    pub name: String,
}

impl KnownApps {
    /// The app with this secret, if a client has read it.
    pub fn get(&self, secret: &str) -> Option<KnownApp> {
        self.0.lock().ok()?.get(secret).cloned()
    }

    fn note(&self, secret: &str, app: &App) {
        let name = match &app.display_name {
            Some(shown) if !shown.trim().is_empty() => shown.clone(),
            _ => app.name.clone(),
        };
        if let Ok(mut apps) = self.0.lock() {
            apps.insert(secret.to_owned(), KnownApp { id: app.id, name });
        }
    }
}

impl ClientOptions {
    /// Options with these defaults:
    /// - `request_timeout` 30 s: every ordinary call moves a few kilobytes;
    ///   30 s is far beyond a healthy answer, yet short enough that a hung
    ///   server does not freeze a worker.
    /// - `connect_timeout` 10 s: a handshake that takes longer will not get
    ///   better; failing fast lets the retry try a fresh connection.
    /// - `stall_timeout` 60 s: a chunk may take long on a slow link, so it has
    ///   no total deadline; but a minute without a byte moving or an answer
    ///   (servers hash a whole chunk before answering) means the connection
    ///   is dead.
    /// - `retry`: [`RetryPolicy::default`].
    /// - `user_agent`: `patchkit-autopublish/VERSION`.
    pub fn new(api_url: Url, upload_url: Url, api_key: ApiKey) -> Self {
        ClientOptions {
            api_url,
            upload_url,
            api_key,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            user_agent: concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION")).to_owned(),
            known_apps: KnownApps::default(),
        }
    }
}

/// A PatchKit API v1 client. Cheap to clone: clones share one connection
/// pool.
///
/// Proxies: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` are
/// honoured for every request, chunks included (reqwest's system proxy
/// support, left on on purpose).
#[derive(Debug, Clone)]
pub struct Client {
    /// Shared state.
    pub(super) inner: Arc<Inner>,
}

/// What every clone shares.
#[derive(Debug)]
pub(super) struct Inner {
    /// The connection pool; carries `X-Api-Key` and `User-Agent` as defaults.
    pub(super) http: reqwest::Client,
    /// Base of ordinary calls.
    pub(super) api_url: Url,
    /// Base of chunk uploads.
    pub(super) upload_url: Url,
    /// Total deadline of ordinary calls.
    pub(super) request_timeout: Duration,
    /// Stall deadline of chunk uploads.
    pub(super) stall_timeout: Duration,
    /// Backoff of retried calls.
    pub(super) retry: RetryPolicy,
    /// The apps read so far.
    pub(super) known_apps: KnownApps,
}

/// A response we accepted: its status and full body.
pub(super) struct Received {
    /// The (2xx) status.
    pub(super) status: StatusCode,
    /// The whole body.
    pub(super) body: bytes::Bytes,
}

impl Client {
    /// Builds the client. Fails on a key or user agent that cannot be a
    /// header value, or on a base URL that is not http(s).
    pub fn new(opts: ClientOptions) -> Result<Client, BuildError> {
        for (which, url) in [("api_url", &opts.api_url), ("upload_url", &opts.upload_url)] {
            if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
                return Err(BuildError::InvalidUrl {
                    which,
                    url: url.clone(),
                });
            }
        }
        let mut key =
            HeaderValue::from_str(opts.api_key.expose()).map_err(|_| BuildError::InvalidApiKey)?;
        // Keeps the key out of any Debug print of a request or its headers.
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", key);
        let user_agent = HeaderValue::from_str(&opts.user_agent)
            .map_err(|_| BuildError::InvalidUserAgent(opts.user_agent.clone()))?;
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(user_agent)
            .connect_timeout(opts.connect_timeout)
            // A redirect would carry X-Api-Key to wherever it points (reqwest
            // strips only standard credential headers); the API never
            // redirects, so one is a protocol error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(BuildError::Http)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                api_url: opts.api_url,
                upload_url: opts.upload_url,
                request_timeout: opts.request_timeout,
                stall_timeout: opts.stall_timeout,
                retry: opts.retry,
                known_apps: opts.known_apps,
            }),
        })
    }

    /// `GET /1/apps/{secret}`.
    pub async fn get_app(&self, secret: &str) -> Result<App, ApiError> {
        let url = self.api(&["apps", secret]);
        let app: App = self.json(Endpoint::GetApp, url, None).await?;
        self.inner.known_apps.note(secret, &app);
        Ok(app)
    }

    /// The apps this client (and the clients sharing its table) has read.
    pub fn known_apps(&self) -> KnownApps {
        self.inner.known_apps.clone()
    }

    /// `GET /1/apps`: the key owner's apps.
    pub async fn list_apps(&self) -> Result<Vec<App>, ApiError> {
        let url = self.api(&["apps"]);
        self.json(Endpoint::ListApps, url, None).await
    }

    /// `POST /1/apps` (for tests and the sandbox). Not retried.
    pub async fn create_app(&self, name: &str, platform: &str) -> Result<App, ApiError> {
        let url = self.api(&["apps"]);
        let form = vec![("name", name.to_owned()), ("platform", platform.to_owned())];
        self.json(Endpoint::CreateApp, url, Some(form)).await
    }

    /// `GET /1/apps/{secret}/versions`, drafts included, sorted by id (the
    /// server's order is not promised).
    pub async fn list_versions(&self, secret: &str) -> Result<Vec<AppVersion>, ApiError> {
        let url = self.api(&["apps", secret, "versions"]);
        let mut versions: Vec<AppVersion> = self.json(Endpoint::ListVersions, url, None).await?;
        versions.sort_by_key(|v| v.id);
        Ok(versions)
    }

    /// `GET /1/apps/{secret}/versions/{id}`.
    pub async fn get_version(&self, secret: &str, id: u64) -> Result<AppVersion, ApiError> {
        let url = self.api(&["apps", secret, "versions", &id.to_string()]);
        self.json(Endpoint::GetVersion, url, None).await
    }

    /// `POST /1/apps/{secret}/versions`: a new draft. Not retried: if the
    /// connection breaks, the draft may exist; the caller lists versions to
    /// find out before creating again.
    pub async fn create_version(
        &self,
        secret: &str,
        label: &str,
        changelog: Option<&str>,
    ) -> Result<AppVersion, ApiError> {
        let url = self.api(&["apps", secret, "versions"]);
        let mut form = vec![("label", label.to_owned())];
        if let Some(changelog) = changelog {
            form.push(("changelog", changelog.to_owned()));
        }
        self.json(Endpoint::CreateVersion, url, Some(form)).await
    }

    /// `PATCH /1/apps/{secret}/versions/{id}`. The response body is ignored.
    pub async fn patch_version(
        &self,
        secret: &str,
        id: u64,
        patch: &VersionPatch,
    ) -> Result<(), ApiError> {
        let url = self.api(&["apps", secret, "versions", &id.to_string()]);
        self.call(Endpoint::PatchVersion, url, Some(patch.form()))
            .await
            .map(drop)
    }

    /// `POST /1/uploads`: a new upload of exactly `total_size` bytes.
    pub async fn create_upload(&self, total_size: u64) -> Result<UploadId, ApiError> {
        let url = self.api(&["uploads"]);
        let form = vec![("total_size_bytes", total_size.to_string())];
        let created: CreatedUpload = self.json(Endpoint::CreateUpload, url, Some(form)).await?;
        Ok(created.id)
    }

    /// `PUT /1/apps/{secret}/versions/{id}/content_file`: starts processing
    /// a complete upload. Not retried: the caller reads the version to see
    /// whether processing started before asking again.
    pub async fn start_processing(
        &self,
        secret: &str,
        version_id: u64,
        upload_id: UploadId,
    ) -> Result<JobGuid, ApiError> {
        let url = self.api(&[
            "apps",
            secret,
            "versions",
            &version_id.to_string(),
            "content_file",
        ]);
        let form = vec![("upload_id", upload_id.to_string())];
        let started: StartedJob = self
            .json(Endpoint::StartProcessing, url, Some(form))
            .await?;
        Ok(started.job_guid)
    }

    /// `GET /1/background_jobs/{guid}`.
    pub async fn get_job(&self, guid: &JobGuid) -> Result<Job, ApiError> {
        let url = self.api(&["background_jobs", &guid.0]);
        self.json(Endpoint::GetJob, url, None).await
    }

    /// `POST /1/apps/{secret}/versions/{id}/publish`. The response body is
    /// ignored; poll the version for the outcome. Not retried.
    pub async fn publish(&self, secret: &str, version_id: u64) -> Result<(), ApiError> {
        let url = self.api(&[
            "apps",
            secret,
            "versions",
            &version_id.to_string(),
            "publish",
        ]);
        self.call(Endpoint::Publish, url, None).await.map(drop)
    }

    /// `POST /1/apps/{channel}/versions/{id}/link`: the channel's draft
    /// `version_id` takes the content of version `source_version_id` of the
    /// group app `source_secret`. Not retried, like `content_file`.
    pub async fn link_version(
        &self,
        channel: &str,
        version_id: u64,
        source_secret: &str,
        source_version_id: u64,
    ) -> Result<JobGuid, ApiError> {
        let url = self.api(&["apps", channel, "versions", &version_id.to_string(), "link"]);
        let form = vec![
            ("source_app_secret", source_secret.to_owned()),
            ("source_app_version_id", source_version_id.to_string()),
        ];
        let started: LinkStarted = self.json(Endpoint::LinkVersion, url, Some(form)).await?;
        Ok(started.job_guid)
    }

    /// `POST /1/global_locks/acquire`: joins `resource`'s queue as `owner`,
    /// or keeps the place (asking again is how the lock is refreshed).
    pub async fn acquire_lock(&self, resource: &str, owner: &str) -> Result<LockAnswer, ApiError> {
        let url = self.api(&["global_locks", "acquire"]);
        let form = vec![
            ("resource", resource.to_owned()),
            ("owner", owner.to_owned()),
        ];
        self.json(Endpoint::AcquireLock, url, Some(form)).await
    }

    /// A URL on the API host: `api_url` + `/1/` + the segments, each
    /// percent-encoded so a secret cannot change the path.
    fn api(&self, segments: &[&str]) -> Url {
        join(&self.inner.api_url, segments)
    }

    /// Calls and parses the JSON body.
    async fn json<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        url: Url,
        form: Option<Vec<(&'static str, String)>>,
    ) -> Result<T, ApiError> {
        let received = self.call(endpoint, url, form).await?;
        serde_json::from_slice(&received.body)
            .map_err(|e| ApiError::from_parse(endpoint, received.status, e))
    }

    /// Sends an ordinary (non-chunk) request, retrying it when the endpoint
    /// is safe to repeat.
    async fn call(
        &self,
        endpoint: Endpoint,
        url: Url,
        form: Option<Vec<(&'static str, String)>>,
    ) -> Result<Received, ApiError> {
        let build = || {
            let req = self
                .inner
                .http
                .request(endpoint.method(), url.clone())
                .timeout(self.inner.request_timeout);
            match &form {
                Some(form) => req.form(form),
                None => req,
            }
        };
        if endpoint.retry_safe() {
            self.inner.retry.run(|| execute(endpoint, build())).await
        } else {
            execute(endpoint, build()).await
        }
    }
}

/// `base` + `/1/` + `segments`, keeping any path prefix of `base`.
pub(super) fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Checked in `Client::new`: http(s) URLs can always be a base.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().push("1").extend(segments);
    }
    url
}

/// Sends one request and reads the whole response. Success is any 2xx;
/// everything else becomes a classified [`ApiError`].
pub(super) async fn execute(endpoint: Endpoint, req: RequestBuilder) -> Result<Received, ApiError> {
    let started = tokio::time::Instant::now();
    let response = req
        .send()
        .await
        .map_err(|e| ApiError::from_transport(endpoint, e))?;
    let status = response.status();
    let headers = response.headers().clone();
    // A body cut off here is a broken connection (transient), not a bad body.
    let body = response
        .bytes()
        .await
        .map_err(|e| ApiError::from_transport(endpoint, e).with_status(status))?;
    tracing::debug!(
        %endpoint,
        status = status.as_u16(),
        bytes = body.len(),
        elapsed = ?started.elapsed(),
        "PatchKit API call"
    );
    if status.is_success() {
        super::retry::answered();
        Ok(Received { status, body })
    } else {
        Err(ApiError::from_response(endpoint, status, &headers, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ClientOptions {
        ClientOptions::new(
            Url::parse(DEFAULT_API_URL).unwrap(),
            Url::parse(DEFAULT_UPLOAD_URL).unwrap(),
            ApiKey::new("s3cr3t-key").unwrap(),
        )
    }

    #[test]
    fn options_debug_hides_the_key() {
        let o = opts();
        assert!(!format!("{o:?}").contains("s3cr3t"));
        let client = Client::new(o).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn urls_are_built_on_the_base_with_escaped_segments() {
        let base = Url::parse("https://api2.patchkit.net").unwrap();
        assert_eq!(
            join(&base, &["apps", "abc", "versions", "3"]).as_str(),
            "https://api2.patchkit.net/1/apps/abc/versions/3"
        );
        let prefixed = Url::parse("http://127.0.0.1:9000/proxy/?x=1").unwrap();
        assert_eq!(
            join(&prefixed, &["apps", "a/b?c"]).as_str(),
            "http://127.0.0.1:9000/proxy/1/apps/a%2Fb%3Fc"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut o = opts();
        o.upload_url = Url::parse("ftp://example.com").unwrap();
        assert!(matches!(
            Client::new(o),
            Err(BuildError::InvalidUrl {
                which: "upload_url",
                ..
            })
        ));
        let mut o = opts();
        o.api_key = ApiKey::new("bad\u{7}key").unwrap();
        let err = Client::new(o).unwrap_err();
        assert!(matches!(err, BuildError::InvalidApiKey));
        assert!(!err.to_string().contains("bad"));
    }
}
