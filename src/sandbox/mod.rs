//! A strict emulator of the PatchKit API v1, served over real sockets.
//!
//! Owns everything the project's tests, `sandbox` and `demo` need from a
//! PatchKit stand-in: two listeners (main API and chunk uploads, each
//! refusing the other's routes), accounts and apps, versions with the
//! one-draft rule, uploads assembled on disk, processing jobs and publishing
//! that advance with the clock, configurable outcomes, seeded fault injection,
//! variants for the answers the sources leave open ([`Variant`]), channel
//! apps, a restart that may forget (the `forgetful` variant), and inspection
//! in Rust ([`SandboxHandle::snapshot`]) and over HTTP
//! (`/_sandbox/`). It enforces PatchKit's API v1 as ARCHITECTURE.md describes it, at
//! least as strictly as the real service.
//!
//! Architecture invariant: the sandbox knows nothing about the client, the
//! store or the daemon; it depends only on the contract.
//!
//! Code map: `config` (what to start with), `state` (the model and its clock),
//! `gate` (counting, keys, faults), `api` (the `/1/` endpoints), `chunks` (the
//! upload listener), `archive` (the ZIP check), `inspect` (`/_sandbox/`),
//! `server` (connections that a fault can cut), `snapshot` (what tests read),
//! `cli` (the standalone runner).

mod api;
mod archive;
mod chunks;
pub mod cli;
mod config;
mod gate;
mod inspect;
mod locks;
mod server;
mod snapshot;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::http::{Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{
    DEFAULT_MAX_CHUNK_BYTES, FaultConfig, OutcomeRule, ProcessingOutcome, PublishOutcome,
    SandboxConfig, Variant,
};
pub use locks::{DEFAULT_LOCK_TIMEOUT, LockInfo};
pub use snapshot::{AppInfo, FaultCounts, Snapshot, UploadInfo, VersionInfo};

use api::ApiError;
use state::{Shared, State};

/// The platform of apps created by key and secret alone.
const DEFAULT_PLATFORM: &str = "windows_x86_64";

/// Starts sandboxes.
pub struct Sandbox;

impl Sandbox {
    /// Starts a sandbox on two free loopback ports.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<SandboxHandle> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_on(config, any, any).await
    }

    /// Starts a sandbox with its main and upload listeners on these
    /// addresses (port 0 picks a free one).
    pub async fn start_on(
        config: SandboxConfig,
        main_addr: SocketAddr,
        upload_addr: SocketAddr,
    ) -> anyhow::Result<SandboxHandle> {
        for rule in &config.outcomes {
            rule.validate().map_err(anyhow::Error::msg)?;
        }
        let (data_dir, tempdir) = match &config.data_dir {
            Some(dir) => (dir.join("uploads"), None),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("patchkit-sandbox-")
                    .tempdir()
                    .context("creating the sandbox data directory")?;
                (tmp.path().join("uploads"), Some(tmp))
            }
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;

        let mut state = State::new(
            config.job_duration,
            config.publish_duration,
            config.faults.clone(),
            config.outcomes.clone(),
        );
        state.variants = config.variants.iter().copied().collect();
        state.locks.timeout = config.lock_timeout;
        for (key, apps) in &config.accounts {
            state.accounts.insert(key.clone());
            for secret in apps {
                add_app(&mut state, key, secret);
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            data_dir,
            _tempdir: tempdir,
        });

        let main_listener = TcpListener::bind(main_addr)
            .await
            .with_context(|| format!("binding the sandbox main listener on {main_addr}"))?;
        let upload_listener = TcpListener::bind(upload_addr)
            .await
            .with_context(|| format!("binding the sandbox upload listener on {upload_addr}"))?;
        let main_addr = main_listener.local_addr()?;
        let upload_addr = upload_listener.local_addr()?;

        let gate = from_fn_with_state(shared.clone(), gate::gate);
        let main = api::routes()
            .route_layer(gate.clone())
            .merge(inspect::routes())
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .with_state(shared.clone());
        let upload = chunks::routes(config.max_chunk_bytes)
            .route_layer(gate)
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .with_state(shared.clone());

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        server::spawn(main_listener, main, shutdown.clone(), &tracker);
        server::spawn(upload_listener, upload, shutdown.clone(), &tracker);
        Ok(SandboxHandle {
            shared,
            main_addr,
            upload_addr,
            shutdown,
            tracker,
        })
    }
}

/// Adds an app with the defaults of `--app` (name = secret).
fn add_app(state: &mut State, owner: &str, secret: &str) {
    state.add_app(owner, secret, secret, DEFAULT_PLATFORM);
}

/// Adds a channel app of `group` (created like `--app` if missing).
fn add_channel_app(state: &mut State, owner: &str, secret: &str, group: &str, allow: bool) {
    add_app(state, owner, group);
    let group_name = state.apps[group].name.clone();
    add_app(state, owner, secret);
    if let Some(app) = state.apps.get_mut(secret) {
        app.is_channel = true;
        app.allow_channel_direct_publish = allow;
        app.parent_group = Some((group.to_owned(), group_name));
    }
}

/// Any path a listener does not serve, including the other listener's.
async fn no_route(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: axum::http::Uri,
) -> impl IntoResponse {
    let path = uri.path();
    if path.starts_with("/1/") {
        gate::record(&mut shared.lock(), &format!("{method} (no route)"), "404");
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {path} on this host"),
    )
}

/// A known path with a method it does not take; JSON like every other error.
async fn wrong_method(method: Method, uri: axum::http::Uri) -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

/// A running sandbox. Clones share it; [`SandboxHandle::shutdown`] stops it.
#[derive(Clone)]
pub struct SandboxHandle {
    /// The state every connection works on.
    shared: Arc<Shared>,
    /// Where the main listener is bound.
    main_addr: SocketAddr,
    /// Where the upload listener is bound.
    upload_addr: SocketAddr,
    /// Fires to stop accepting and close every connection.
    shutdown: CancellationToken,
    /// The accept loops and connection tasks, drained on shutdown.
    tracker: TaskTracker,
}

impl SandboxHandle {
    /// The main API's base URL, `http://127.0.0.1:PORT`.
    pub fn main_url(&self) -> String {
        format!("http://{}", self.main_addr)
    }

    /// The upload host's base URL.
    pub fn upload_url(&self) -> String {
        format!("http://{}", self.upload_addr)
    }

    /// The main listener's address.
    pub fn main_addr(&self) -> SocketAddr {
        self.main_addr
    }

    /// The upload listener's address.
    pub fn upload_addr(&self) -> SocketAddr {
        self.upload_addr
    }

    /// The state now (jobs and publishes whose time has come are settled).
    pub fn snapshot(&self) -> Snapshot {
        self.shared.lock().snapshot()
    }

    /// Replaces the faults and restarts the fault RNG from their seed.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.shared.lock().set_faults(faults);
    }

    /// Replaces the outcome rules. A rule whose label glob does not compile
    /// matches nothing (`/_sandbox/outcomes` refuses it instead).
    pub fn set_outcomes(&self, rules: Vec<OutcomeRule>) {
        self.shared.lock().outcomes = rules;
    }

    /// Makes a key valid (an account with no apps yet).
    pub fn add_account(&self, key: &str) {
        self.shared.lock().accounts.insert(key.to_owned());
    }

    /// Makes a key unknown: requests carrying it get 401. Its apps stay.
    pub fn revoke_key(&self, key: &str) {
        self.shared.lock().accounts.remove(key);
    }

    /// Adds an app owned by `owner_key` (platform `windows_x86_64`, name =
    /// secret); an existing secret is left as it is.
    pub fn add_app(&self, owner_key: &str, secret: &str) {
        add_app(&mut self.shared.lock(), owner_key, secret);
    }

    /// Adds a channel app owned by `owner_key`, belonging to the group app
    /// `group` (which must exist, or is created), that takes direct uploads
    /// only when `allow_direct` is true.
    pub fn add_channel_app(&self, owner_key: &str, secret: &str, group: &str, allow_direct: bool) {
        add_channel_app(
            &mut self.shared.lock(),
            owner_key,
            secret,
            group,
            allow_direct,
        );
    }

    /// The variants in force.
    pub fn variants(&self) -> Vec<Variant> {
        self.shared.lock().variants.iter().copied().collect()
    }

    /// Restarts the service as its operators would: with the `forgetful`
    /// variant every draft version, upload and job is forgotten (published
    /// and scheduled versions stay); without it nothing changes. Request
    /// counts are kept, so a test still sees every call.
    pub fn restart(&self) {
        self.shared.lock().restart();
    }

    /// Stops accepting, closes every connection and waits for the tasks.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
