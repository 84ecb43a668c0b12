//! What a sandbox starts with and what tests may change while it runs.
//!
//! Owns the plain configuration types: accounts and their apps, the durations
//! of processing and publishing, the fault probabilities, the outcome rules
//! and the variants (answers the sources leave open). It knows nothing about HTTP or the running state; the server reads
//! these values, it never writes them.

use std::path::PathBuf;
use std::time::Duration;

use globset::Glob;
use serde::{Deserialize, Serialize};

/// Everything a sandbox needs to start. Build it with [`SandboxConfig::new`]
/// and the builder methods.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// API keys and the app secrets each one owns, in insertion order.
    pub accounts: Vec<(String, Vec<String>)>,
    /// How long a processing job takes from `content_file` to `finished`.
    pub job_duration: Duration,
    /// How long a publish takes from the `publish` call to `published`.
    pub publish_duration: Duration,
    /// Injected faults; the default injects none.
    pub faults: FaultConfig,
    /// Outcome rules, first match wins; no match means a clean run.
    pub outcomes: Vec<OutcomeRule>,
    /// Where uploads are assembled; `None` means a temporary directory that
    /// the sandbox deletes when it shuts down.
    pub data_dir: Option<PathBuf>,
    /// The largest chunk request body the upload listener accepts.
    pub max_chunk_bytes: usize,
    /// The variants in force: where PatchKit's documentation and its own
    /// tools leave an answer open, which plausible answer to give.
    pub variants: Vec<Variant>,
    /// How long an owner of PatchKit's global lock keeps its place without
    /// asking again.
    pub lock_timeout: Duration,
}

/// A plausible answer of the real PatchKit where the sources are silent or
/// disagree (see `shared/research/patchkit-field-notes.md`). Without any,
/// the sandbox answers as the contract describes, with every key present.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Responses carry only the keys of PatchKit's 2018 Swagger file: no
    /// `publish_time` (unless a publish is scheduled) and no
    /// `processing_progress` on versions, `processing_messages` null when
    /// there are none, and no `display_name`, `is_channel`,
    /// `allow_channel_direct_publish` or `parent_group` on apps.
    SwaggerKeys,
    /// A processing job waits in a queue for half its duration before it
    /// starts; until then the version keeps the previous processing's
    /// `processing_started_at` and `processing_finished_at` (null for a
    /// first one). Only the app's `processing_version` shows the request.
    LazyTimestamps,
    /// Every refusal of `content_file` (incomplete or unknown upload, a job
    /// already running, a version that is not a draft) is a 404 with
    /// wording of its own.
    #[serde(rename = "content-file-404")]
    #[value(name = "content-file-404")]
    ContentFile404,
    /// An unknown API key gets 403 instead of 401 on the version endpoints
    /// (`/1/apps/{secret}/versions...`), as the Swagger's "API key invalid or
    /// draft version already exists" allows.
    #[serde(rename = "forbidden-403")]
    #[value(name = "forbidden-403")]
    Forbidden403,
    /// The server predates PatchKit's global lock: `POST
    /// /1/global_locks/acquire` is a 404, as an unknown route.
    NoGlobalLock,
    /// [`SandboxHandle::restart`](super::SandboxHandle::restart) forgets
    /// every draft version, upload and job, as a restore from backup would;
    /// published and scheduled versions stay. Without this variant a restart
    /// keeps everything.
    Forgetful,
}

impl Variant {
    /// Every variant, for tests that run under each.
    pub const ALL: [Variant; 6] = [
        Variant::SwaggerKeys,
        Variant::LazyTimestamps,
        Variant::ContentFile404,
        Variant::Forbidden403,
        Variant::Forgetful,
        Variant::NoGlobalLock,
    ];

    /// The name `--variant` takes.
    pub fn name(self) -> &'static str {
        match self {
            Variant::SwaggerKeys => "swagger-keys",
            Variant::LazyTimestamps => "lazy-timestamps",
            Variant::ContentFile404 => "content-file-404",
            Variant::Forbidden403 => "forbidden-403",
            Variant::Forgetful => "forgetful",
            Variant::NoGlobalLock => "no-global-lock",
        }
    }
}

/// The default chunk body limit. PatchKit's own tools send 32 MiB chunks; four
/// times that leaves room for clients that choose bigger ones while still
/// refusing a runaway body (axum's own default, 2 MB, would refuse the
/// recommended 10 MiB chunk).
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 128 * 1024 * 1024;

impl SandboxConfig {
    /// One account with the given key and no apps, short durations suited to
    /// tests, no faults and clean outcomes.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            accounts: vec![(api_key.into(), Vec::new())],
            job_duration: Duration::from_millis(50),
            publish_duration: Duration::from_millis(50),
            faults: FaultConfig::default(),
            outcomes: Vec::new(),
            data_dir: None,
            max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES,
            variants: Vec::new(),
            lock_timeout: super::locks::DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// Puts a variant in force (repeatable).
    pub fn variant(mut self, variant: Variant) -> Self {
        if !self.variants.contains(&variant) {
            self.variants.push(variant);
        }
        self
    }

    /// Adds an app owned by the first account (the key given to `new`).
    pub fn with_app(mut self, secret: impl Into<String>) -> Self {
        self.accounts[0].1.push(secret.into());
        self
    }

    /// Adds another account owning the given apps.
    pub fn with_account<I, S>(mut self, key: impl Into<String>, apps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.accounts
            .push((key.into(), apps.into_iter().map(Into::into).collect()));
        self
    }

    /// Sets how long a lock owner keeps its place without asking again.
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// Sets how long processing jobs take.
    pub fn job_duration(mut self, d: Duration) -> Self {
        self.job_duration = d;
        self
    }

    /// Sets how long publishing takes.
    pub fn publish_duration(mut self, d: Duration) -> Self {
        self.publish_duration = d;
        self
    }

    /// Sets the injected faults.
    pub fn faults(mut self, faults: FaultConfig) -> Self {
        self.faults = faults;
        self
    }

    /// Appends an outcome rule (rules are tried in the order added).
    pub fn outcome(mut self, rule: OutcomeRule) -> Self {
        self.outcomes.push(rule);
        self
    }

    /// Assembles uploads under this directory instead of a temporary one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets the largest chunk request body accepted.
    pub fn max_chunk_bytes(mut self, bytes: usize) -> Self {
        self.max_chunk_bytes = bytes;
        self
    }
}

/// Injected faults. Probabilities are in `0.0..=1.0`; every draw comes from
/// one RNG seeded with `seed`, so a sequential client sees the same faults on
/// every run. Faults apply to `/1/` endpoints only, never to `/_sandbox/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Seed of the fault RNG; setting faults restarts the sequence.
    pub seed: u64,
    /// Probability of answering 500 or 503 without running the handler.
    pub fail_5xx: f64,
    /// Probability of closing the connection before the handler runs (the
    /// request is not applied).
    pub drop_before: f64,
    /// Probability of closing the connection after the handler ran (the
    /// request is applied, its response lost).
    pub drop_after: f64,
    /// Probability of answering 412 to a chunk whose MD5 was right (the chunk
    /// is not stored).
    pub chunk_412: f64,
    /// Latency added to every request.
    #[serde(with = "millis")]
    pub latency: Duration,
    /// Up to this much more latency, drawn uniformly.
    #[serde(with = "millis")]
    pub jitter: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            fail_5xx: 0.0,
            drop_before: 0.0,
            drop_after: 0.0,
            chunk_412: 0.0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

impl FaultConfig {
    /// No faults, with the given seed (start here and set the probabilities).
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }
}

/// Durations travel over `/_sandbox/` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// What processing does to a version once its job finishes (after the ZIP
/// checks, whose errors are added regardless).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProcessingOutcome {
    /// No message; the version can be published.
    #[default]
    Clean,
    /// A message with severity `warning`; the version can still be published.
    Warning { message: String },
    /// A message with severity `error`; the version cannot be published.
    Error { message: String },
    /// `has_processing_error: true` and no message.
    HasProcessingError,
    /// The job itself fails: `status` is non-zero with `status_message`.
    JobFailure { status: i64, message: String },
}

/// What a `publish` call leads to once `publish_duration` has passed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PublishOutcome {
    /// `published: true`, the app's `current_version` moves to it.
    #[default]
    Normal,
    /// `publish_time` is set this many seconds ahead, `published` stays false
    /// until then and the version is no longer a draft.
    Scheduled { delay_secs: u64 },
    /// `pending_publish` turns false with `published: false` and
    /// `publish_time: 0`; the version stays a draft.
    Refused,
}

/// Chooses outcomes for the versions it matches. An absent field matches
/// everything; `label` is a glob over the version label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutcomeRule {
    /// App secret the rule applies to.
    pub app: Option<String>,
    /// Glob over the version label.
    pub label: Option<String>,
    /// Outcome of processing.
    pub processing: ProcessingOutcome,
    /// Outcome of publishing.
    pub publish: PublishOutcome,
}

impl OutcomeRule {
    /// A rule matching every version, with clean processing and a normal
    /// publish; narrow and change it with the other methods.
    pub fn any() -> Self {
        Self::default()
    }

    /// Restricts the rule to one app.
    pub fn app(mut self, secret: impl Into<String>) -> Self {
        self.app = Some(secret.into());
        self
    }

    /// Restricts the rule to labels matching a glob.
    pub fn label(mut self, glob: impl Into<String>) -> Self {
        self.label = Some(glob.into());
        self
    }

    /// Sets the processing outcome.
    pub fn processing(mut self, outcome: ProcessingOutcome) -> Self {
        self.processing = outcome;
        self
    }

    /// Sets the publish outcome.
    pub fn publish(mut self, outcome: PublishOutcome) -> Self {
        self.publish = outcome;
        self
    }

    /// Checks the label glob, so a typo is refused when the rule is set
    /// rather than silently matching nothing.
    pub fn validate(&self) -> Result<(), String> {
        match &self.label {
            Some(glob) => Glob::new(glob)
                .map(|_| ())
                .map_err(|e| format!("bad label glob {glob:?}: {e}")),
            None => Ok(()),
        }
    }

    pub(crate) fn matches(&self, secret: &str, label: &str) -> bool {
        if self.app.as_deref().is_some_and(|a| a != secret) {
            return false;
        }
        match &self.label {
            Some(glob) => Glob::new(glob).is_ok_and(|g| g.compile_matcher().is_match(label)),
            None => true,
        }
    }
}

/// The first rule matching a version, or the default clean rule.
pub(crate) fn rule_for(rules: &[OutcomeRule], secret: &str, label: &str) -> OutcomeRule {
    rules
        .iter()
        .find(|r| r.matches(secret, label))
        .cloned()
        .unwrap_or_default()
}
