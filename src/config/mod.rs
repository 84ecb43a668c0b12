//! The config file: TOML in, a validated [`Config`] out.
//!
//! `raw` holds the serde types as written (`deny_unknown_fields`); this module
//! turns them into `Config`, where every URL is parsed, every duration and
//! size is a number, every glob is compiled and every path is absolute.
//! Nothing downstream re-checks a string. Loading reports *every* problem of
//! the file at once, each with its line and column and what is expected.
//!
//! The API key is never in this file: `Config` says where the key comes from
//! ([`KeySource`]) and [`PatchkitSettings::load_key`] reads it.
//!
//! This module knows TOML and the schema; it knows nothing about HTTP, sled
//! or notify.

mod key;
mod problems;
mod raw;
mod rule;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub use key::{KeyError, KeyOrigin, KeySource, load_credential};
pub use problems::{ConfigError, Problem};
use problems::{Problems, deserialize_all};
use raw::{RawDaemon, RawNotify, RawPatchkit, RawRule};
pub use rule::{AfterPublish, Changelog, OnFailure, Rule};

use crate::patchkit::{ApiKey, ClientOptions, DEFAULT_API_URL, DEFAULT_UPLOAD_URL, RetryPolicy};
use crate::watcher::MIN_SETTLE;

/// Where the daemon looks for its config when none is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/patchkit-autopublish/config.toml";
/// The environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "PATCHKIT_AUTOPUBLISH_CONFIG";
/// The name of the systemd credential (`LoadCredential=`) holding the key.
pub const CREDENTIAL_NAME: &str = "patchkit-api-key";
/// The environment variable read for the key when the config names none.
pub const DEFAULT_KEY_ENV: &str = "PATCHKIT_API_KEY";

const DEFAULT_STATE_DIR: &str = "/var/lib/patchkit-autopublish";

/// Keys someone may use to write the API key inline; all are refused.
const INLINE_KEY_NAMES: &[&str] = &["api_key", "apikey", "api-key", "key", "x_api_key"];

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from; relative paths inside were resolved
    /// against its folder.
    pub path: PathBuf,
    /// `[patchkit]`.
    pub patchkit: PatchkitSettings,
    /// `[daemon]`.
    pub daemon: DaemonSettings,
    /// Every `[[rule]]`, in file order.
    pub rules: Vec<Rule>,
    /// Every `[[notify]]` webhook.
    pub notify: Vec<Notify>,
}

/// One `[[notify]]`: where build events are posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The webhook URL. It may hold a token (Slack and Discord put one in
    /// the path), so it is shown only as scheme and host.
    pub url: Url,
    /// The payload shape.
    pub format: NotifyFormat,
    /// Which events are sent.
    pub events: Vec<crate::observe::EventKind>,
    /// Only builds of these rules; empty means every rule.
    pub rules: Vec<String>,
    /// PatchKit's panel, for a link to the app's page in chat messages.
    pub panel_url: Url,
}

/// PatchKit's web panel; an app's page is `/apps/{id}` under it (the link
/// PatchKit's own Unity tools open).
pub const DEFAULT_PANEL_URL: &str = "https://panel.patchkit.net";

impl Notify {
    /// The URL without path or query, for logs.
    pub fn redacted_url(&self) -> String {
        format!(
            "{}://{}{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or(""),
            self.url.port().map(|p| format!(":{p}")).unwrap_or_default()
        )
    }
}

/// The payload shape of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// The full event as JSON.
    Json,
    /// A Slack incoming-webhook message (`{"text": ...}`).
    Slack,
    /// A Discord webhook message (`{"content": ...}`).
    Discord,
}

/// `[patchkit]`: the API endpoints, the key source and the client's patience.
#[derive(Debug, Clone)]
pub struct PatchkitSettings {
    /// Base URL for every endpoint but chunk uploads.
    pub api_url: Url,
    /// Base URL for chunk uploads only.
    pub upload_url: Url,
    /// Where the API key is read from.
    pub key_source: KeySource,
    /// Whether plain `http://` is allowed for hosts other than loopback.
    pub allow_insecure_http: bool,
    /// Total deadline of one ordinary API request.
    pub request_timeout: Duration,
    /// Deadline for opening a connection.
    pub connect_timeout: Duration,
    /// A chunk upload with no progress for this long is aborted and retried.
    pub stall_timeout: Duration,
    /// First retry delay (before jitter) of a transient failure.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_cap: Duration,
    /// How long one request keeps retrying before its error is returned to
    /// the caller; `None` retries without end.
    pub retry_give_up: Option<Duration>,
    /// Whether builds take PatchKit's global lock on their app, as
    /// PatchKit's own tools do, so other publishers cannot collide with them.
    pub global_lock: bool,
    /// How often a held lock is refreshed and a denied one asked for again.
    pub lock_refresh: Duration,
}

impl PatchkitSettings {
    /// The client options these settings describe, with `key`.
    pub fn client_options(&self, key: ApiKey) -> ClientOptions {
        let mut opts = ClientOptions::new(self.api_url.clone(), self.upload_url.clone(), key);
        opts.request_timeout = self.request_timeout;
        opts.connect_timeout = self.connect_timeout;
        opts.stall_timeout = self.stall_timeout;
        opts.retry = RetryPolicy {
            base: self.retry_base,
            cap: self.retry_cap,
            give_up: self.retry_give_up,
        };
        opts
    }
}

/// `[daemon]`: state, concurrency and timing.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Where the store and the control socket live.
    pub state_dir: PathBuf,
    /// Builds taking their turn at once (never two of one app), and
    /// builds uploading ahead of their turn at once (one per app).
    pub workers: usize,
    /// Bytes per upload chunk.
    pub chunk_size: u64,
    /// A file must stay unchanged this long before it is taken (the
    /// default of every rule's `settle`).
    pub settle: Duration,
    /// Interval of the safety rescan of every rule folder.
    pub rescan: Duration,
    /// How long shutdown waits for in-flight chunk requests.
    pub shutdown_timeout: Duration,
    /// First interval of polling a processing job or a publish; it backs
    /// off to ten times this for long jobs.
    pub poll_interval: Duration,
    /// After PatchKit refused the API key (401), every build waits this long;
    /// then the key is read anew and the builds try again (at most `workers`
    /// requests per interval).
    pub auth_retry: Duration,
    /// A running build with no progress for this long is reported stuck.
    pub stuck_after: Duration,
    /// Finished build records older than this are deleted (their files are
    /// still remembered, so they are never published again).
    pub keep_finished: Duration,
    /// The log filter (`info`, `debug`, `patchkit_autopublish=debug`, ...);
    /// `RUST_LOG` overrides it.
    pub log_level: String,
    /// Also write logs to daily files in this folder.
    pub log_dir: Option<PathBuf>,
    /// How many daily log files to keep.
    pub log_keep: usize,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
}

/// What a rule does when its app already has a draft version with another
/// label (PatchKit allows one draft per app).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExistingDraft {
    /// Fail the build with a message naming the draft; a person decides.
    #[default]
    Fail,
    /// Relabel the draft and upload this build over it.
    TakeOver,
}

/// Limits that keep a typo from becoming an outage; each has its reason.
mod limits {
    /// More workers than this only queue on PatchKit's side: each app takes
    /// one build's turn and one upload at a time anyway.
    pub const MAX_WORKERS: i64 = 64;
    /// Below 256 KiB the per-request overhead dominates the upload.
    pub const MIN_CHUNK: u64 = 256 * 1024;
    /// Each chunk is held in memory (a few at once) and re-sent whole after
    /// a failure, so it must stay small.
    pub const MAX_CHUNK: u64 = 256 * 1024 * 1024;
    /// `sun_path` in Linux's `sockaddr_un` holds 108 bytes, the last a NUL:
    /// the control socket's path must fit in the rest.
    pub const MAX_SOCKET_PATH: usize = 107;
}

/// The state directory the config at `path` names, read as leniently as
/// possible: `status`, `retry` and `cancel` must work while the config on
/// disk is broken, since the daemon runs on the one it loaded. `None` when
/// the file cannot be read or is not TOML at all.
pub fn state_dir_leniently(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let dir = match table.get("daemon").and_then(|d| d.get("state_dir")) {
        Some(value) => PathBuf::from(value.as_str()?),
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    Some(base.join(dir))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text; `path` names the file in messages and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        let mut problems = Problems::new(text);
        let (root, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            // Checking the meaning of a half-parsed file only adds noise.
            for err in syntax {
                problems.at(
                    err.span().unwrap_or(0..0),
                    format!("TOML syntax: {}", err.message().trim()),
                );
            }
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: problems.into_sorted(),
            });
        }
        let mut v = Validator { problems, base };
        let config = v.document(root);
        let found = v.problems;
        match config {
            Some(config) if found.is_empty() => Ok(Config {
                path: path.to_owned(),
                ..config
            }),
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: found.into_sorted(),
            }),
        }
    }

    /// The rule with this name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// Whether a duration of zero makes sense for a field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

struct Validator<'s> {
    problems: Problems<'s>,
    base: PathBuf,
}

impl<'s> Validator<'s> {
    fn document(&mut self, root: Spanned<DeTable<'_>>) -> Option<Config> {
        let root_span = root.span();
        let root = root.into_inner();
        let mut patchkit = None;
        let mut daemon = None;
        let mut rules = None;
        let mut notify = None;
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "patchkit" => patchkit = Some(value),
                "daemon" => daemon = Some(value),
                "rule" => rules = Some(value),
                "notify" => notify = Some(value),
                other => self.problems.at(
                    key.span(),
                    format!(
                        "unknown section `{other}`; expected [patchkit], [daemon], [[rule]] or \
                         [[notify]]"
                    ),
                ),
            }
        }

        let patchkit = match patchkit {
            Some(value) => self.patchkit(value),
            None => self.patchkit_from(RawPatchkit::default(), None),
        };
        let daemon = match daemon {
            Some(value) => deserialize_all::<RawDaemon>(value, "[daemon]", &mut self.problems)
                .and_then(|raw| self.daemon(raw.value)),
            None => self.daemon(RawDaemon::default()),
        };
        let rules_value = rules;
        let rules = match rules {
            Some(value) => self.rules(value),
            None => {
                self.problems.at(
                    root_span.start..root_span.start,
                    "no [[rule]] defined; add at least one [[rule]] with name, folder and \
                     app_secret",
                );
                None
            }
        };
        // A rule with problems of its own is still named: `[[notify]] rules`
        // may list it without a second, cascading problem.
        let names = rules_value.map(written_rule_names).unwrap_or_default();
        let notify = match notify {
            Some(value) => self.notifies(value, &names),
            None => Some(Vec::new()),
        };
        Some(Config {
            path: PathBuf::new(),
            patchkit: patchkit?,
            daemon: daemon?,
            rules: rules?,
            notify: notify?,
        })
    }

    fn patchkit(&mut self, value: &Spanned<DeValue<'_>>) -> Option<PatchkitSettings> {
        // An inline key gets its own message, and must never be echoed.
        let mut value = value.clone();
        if let DeValue::Table(table) = value.get_mut() {
            let inline: Vec<_> = table
                .iter()
                .filter(|(k, _)| INLINE_KEY_NAMES.contains(&k.get_ref().as_ref()))
                .map(|(k, _)| (k.get_ref().clone(), k.span()))
                .collect();
            for (name, span) in inline {
                self.problems.at(
                    span,
                    format!(
                        "[patchkit] {name}: the API key must not be written in the config \
                         file; put it in the environment variable named by api_key_env \
                         (default {DEFAULT_KEY_ENV}), in a file named by api_key_file (mode \
                         0600), or in the systemd credential {CREDENTIAL_NAME}"
                    ),
                );
                table.remove(name.as_ref());
            }
        }
        let raw = deserialize_all::<RawPatchkit>(&value, "[patchkit]", &mut self.problems)?;
        self.patchkit_from(raw.value, Some(value.span()))
    }

    fn patchkit_from(
        &mut self,
        raw: RawPatchkit,
        section: Option<Range<usize>>,
    ) -> Option<PatchkitSettings> {
        let allow_insecure_http = raw
            .allow_insecure_http
            .map(|b| *b.get_ref())
            .unwrap_or(false);
        let api_url = self.url(raw.api_url, "api_url", DEFAULT_API_URL, allow_insecure_http);
        let upload_url = self.url(
            raw.upload_url,
            "upload_url",
            DEFAULT_UPLOAD_URL,
            allow_insecure_http,
        );
        let key_source = match (raw.api_key_env, raw.api_key_file) {
            (Some(env), Some(file)) => {
                let span = env.span().start.min(file.span().start)..env.span().end;
                self.problems.at(
                    span,
                    "[patchkit]: both api_key_env and api_key_file are set; keep only one so \
                     it is clear which key is used",
                );
                None
            }
            (Some(env), None) => {
                let name = env.get_ref().trim();
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    self.problems.at(
                        env.span(),
                        "[patchkit] api_key_env: expected the name of an environment variable, \
                         such as \"PATCHKIT_API_KEY\"",
                    );
                    None
                } else {
                    Some(KeySource::Env(name.to_owned()))
                }
            }
            (None, Some(file)) => self
                .path(&file, "[patchkit] api_key_file")
                .map(KeySource::File),
            (None, None) => Some(KeySource::Env(DEFAULT_KEY_ENV.to_owned())),
        };
        let request_timeout = self.duration(
            raw.request_timeout,
            "[patchkit] request_timeout",
            "30s",
            Zero::Refused,
        );
        let connect_timeout = self.duration(
            raw.connect_timeout,
            "[patchkit] connect_timeout",
            "10s",
            Zero::Refused,
        );
        let stall_timeout = self.duration(
            raw.stall_timeout,
            "[patchkit] stall_timeout",
            "60s",
            Zero::Refused,
        );
        let base_span = raw.retry_base.as_ref().map(Spanned::span);
        let retry_base =
            self.duration(raw.retry_base, "[patchkit] retry_base", "1s", Zero::Refused);
        let retry_cap = self.duration(raw.retry_cap, "[patchkit] retry_cap", "60s", Zero::Refused);
        let retry_give_up = match raw.retry_give_up {
            Some(v) if v.get_ref().trim() == "never" => Some(None),
            other => self
                .duration(other, "[patchkit] retry_give_up", "2m", Zero::Allowed)
                .map(Some),
        };
        if let (Some(base), Some(cap)) = (retry_base, retry_cap)
            && base > cap
        {
            self.problems.at(
                base_span.or(section.clone()).unwrap_or(0..0),
                "[patchkit]: retry_base is larger than retry_cap; the cap must be at least the \
                 first delay",
            );
        }
        let lock_span = raw.lock_refresh.as_ref().map(Spanned::span);
        let lock_refresh = self.duration(
            raw.lock_refresh,
            "[patchkit] lock_refresh",
            "30s",
            Zero::Refused,
        );
        if let Some(refresh) = lock_refresh
            && !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&refresh)
        {
            self.problems.at(
                lock_span.or(section).unwrap_or(0..0),
                "[patchkit] lock_refresh: must be between 1s and 60s; PatchKit drops a lock \
                 owner that stops asking for about a minute, and its own tools ask every 30s",
            );
        }
        Some(PatchkitSettings {
            global_lock: raw.global_lock.is_none_or(Spanned::into_inner),
            lock_refresh: lock_refresh?,
            api_url: api_url?,
            upload_url: upload_url?,
            key_source: key_source?,
            allow_insecure_http,
            request_timeout: request_timeout?,
            connect_timeout: connect_timeout?,
            stall_timeout: stall_timeout?,
            retry_base: retry_base?,
            retry_cap: retry_cap?,
            retry_give_up: retry_give_up?,
        })
    }

    fn daemon(&mut self, raw: RawDaemon) -> Option<DaemonSettings> {
        let state_dir = match raw.state_dir {
            Some(dir) => self
                .path(&dir, "[daemon] state_dir")
                .and_then(|path| self.socket_fits(path, dir.span())),
            None => Some(PathBuf::from(DEFAULT_STATE_DIR)),
        };
        let workers = match raw.workers {
            None => Some(2),
            Some(w) => {
                let n = *w.get_ref();
                if (1..=limits::MAX_WORKERS).contains(&n) {
                    Some(n as usize)
                } else {
                    self.problems.at(
                        w.span(),
                        format!(
                            "[daemon] workers: expected a whole number from 1 to {}, found {n}",
                            limits::MAX_WORKERS
                        ),
                    );
                    None
                }
            }
        };
        let chunk_size = match raw.chunk_size {
            None => Some(10 * 1024 * 1024),
            Some(s) => match s.get_ref().trim().parse::<bytesize::ByteSize>() {
                Ok(size) if (limits::MIN_CHUNK..=limits::MAX_CHUNK).contains(&size.as_u64()) => {
                    Some(size.as_u64())
                }
                Ok(size) => {
                    self.problems.at(
                        s.span(),
                        format!(
                            "[daemon] chunk_size: {} is out of range; expected a size from \
                             256KiB to 256MiB, such as \"10MiB\" (PatchKit recommends 10 MiB)",
                            size.display().iec()
                        ),
                    );
                    None
                }
                Err(_) => {
                    self.problems.at(
                        s.span(),
                        format!(
                            "[daemon] chunk_size: cannot read {:?} as a size; expected a number \
                             with a unit, such as \"10MiB\" or \"32MiB\"",
                            s.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let settle = self.settle(raw.settle, "[daemon] settle");
        let rescan = self.duration(raw.rescan, "[daemon] rescan", "10m", Zero::Refused);
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout,
            "[daemon] shutdown_timeout",
            "30s",
            Zero::Allowed,
        );
        let poll_interval = self.duration(
            raw.poll_interval,
            "[daemon] poll_interval",
            "250ms",
            Zero::Refused,
        );
        let auth_retry = self.duration(raw.auth_retry, "[daemon] auth_retry", "3m", Zero::Refused);
        let stuck_after = self.duration(
            raw.stuck_after,
            "[daemon] stuck_after",
            "30m",
            Zero::Refused,
        );
        let keep_finished = self.duration(
            raw.keep_finished,
            "[daemon] keep_finished",
            "90days",
            Zero::Refused,
        );
        let log_level = match raw.log_level {
            None => Some("info".to_owned()),
            Some(l) => match tracing_subscriber::EnvFilter::try_new(l.get_ref()) {
                Ok(_) => Some(l.get_ref().clone()),
                Err(e) => {
                    self.problems.at(
                        l.span(),
                        format!(
                            "[daemon] log_level: {:?} is not a log filter ({e}); expected a level \
                             such as \"info\" or \"debug\", or directives such as \
                             \"info,patchkit_autopublish=debug\"",
                            l.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let log_dir = match raw.log_dir {
            None => Some(None),
            Some(d) => self.path(&d, "[daemon] log_dir").map(Some),
        };
        let log_keep = match raw.log_keep {
            None => Some(14),
            Some(k) if (1..=3650).contains(k.get_ref()) => Some(*k.get_ref() as usize),
            Some(k) => {
                self.problems.at(
                    k.span(),
                    format!(
                        "[daemon] log_keep: expected a number of daily files from 1 to 3650, \
                         found {}",
                        k.get_ref()
                    ),
                );
                None
            }
        };
        let metrics = match raw.metrics {
            None => Some(None),
            Some(m) => match m.get_ref().parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(Some(addr)),
                Err(_) => {
                    self.problems.at(
                        m.span(),
                        format!(
                            "[daemon] metrics: {:?} is not an address; expected IP:port, such as \
                             \"127.0.0.1:9464\"",
                            m.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        Some(DaemonSettings {
            state_dir: state_dir?,
            workers: workers?,
            chunk_size: chunk_size?,
            settle: settle?,
            rescan: rescan?,
            shutdown_timeout: shutdown_timeout?,
            poll_interval: poll_interval?,
            auth_retry: auth_retry?,
            stuck_after: stuck_after?,
            keep_finished: keep_finished?,
            log_level: log_level?,
            log_dir: log_dir?,
            log_keep: log_keep?,
            metrics: metrics?,
        })
    }

    fn rules(&mut self, value: &Spanned<DeValue<'_>>) -> Option<Vec<Rule>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problems.at(
                value.span(),
                "rule: expected an array of tables, written as [[rule]] sections",
            );
            return None;
        };
        let mut rules = Vec::new();
        let mut ok = true;
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            let context = format!("[[rule]] #{}", index + 1);
            // Type errors come before the name is checked: a rule that has
            // one is still called by it.
            let typed = match written_name(item) {
                Some(name) => format!("[[rule]] {name:?}"),
                None => context.clone(),
            };
            let rule = deserialize_all::<RawRule>(item, &typed, &mut self.problems)
                .and_then(|raw| self.rule(raw.value, &raw.removed, &context, item.span()));
            match rule {
                Some((rule, name_span)) => {
                    for (other_index, other) in rules.iter().enumerate() {
                        if rule::overlap(&rule, other) {
                            self.problems.at(
                                item.span().start..item.span().start,
                                format!(
                                    "[[rule]] {:?}: it watches the same folder as [[rule]] {:?} \
                                     (#{}) and their patterns {:?} and {:?} can match the same \
                                     file, which would be published twice; give each rule its \
                                     own folder or patterns that cannot overlap",
                                    rule.name,
                                    other.name,
                                    other_index + 1,
                                    rule.pattern,
                                    other.pattern
                                ),
                            );
                            ok = false;
                        }
                    }
                    if let Some(first) = names.insert(rule.name.clone(), index + 1) {
                        self.problems.at(
                            name_span,
                            format!(
                                "{context}: the name {:?} is already used by [[rule]] #{first}; \
                                 rule names must be unique",
                                rule.name
                            ),
                        );
                        ok = false;
                    }
                    rules.push(rule);
                }
                None => ok = false,
            }
        }
        if items.iter().next().is_none() {
            self.problems
                .at(value.span(), "no [[rule]] defined; add at least one");
            return None;
        }
        ok.then_some(rules)
    }

    fn notifies(&mut self, value: &Spanned<DeValue<'_>>, rules: &[String]) -> Option<Vec<Notify>> {
        use crate::observe::EventKind;
        let DeValue::Array(items) = value.get_ref() else {
            self.problems.at(
                value.span(),
                "notify: expected an array of tables, written as [[notify]] sections",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let ctx = format!("[[notify]] #{}", index + 1);
            let here = item.span().start..item.span().start;
            let Some(raw) = deserialize_all::<RawNotify>(item, &ctx, &mut self.problems) else {
                ok = false;
                continue;
            };
            let raw = raw.value;
            let url = match raw.url {
                None => {
                    self.problems.at(
                        here.clone(),
                        format!("{ctx}: missing `url`, the webhook to post to"),
                    );
                    None
                }
                Some(u) => match Url::parse(u.get_ref().trim()) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
                    _ => {
                        self.problems.at(
                            u.span(),
                            format!("{ctx} url: expected an http:// or https:// webhook URL"),
                        );
                        None
                    }
                },
            };
            let format =
                match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
                    None | Some("json") => Some(NotifyFormat::Json),
                    Some("slack") => Some(NotifyFormat::Slack),
                    Some("discord") => Some(NotifyFormat::Discord),
                    Some(other) => {
                        self.problems.at(
                        raw.format.as_ref().map(Spanned::span).unwrap_or(here.clone()),
                        format!(
                            "{ctx} format: {other:?} is not a format; expected \"json\", \"slack\" \
                             or \"discord\""
                        ),
                    );
                        None
                    }
                };
            let events = match &raw.events {
                None => Some(vec![EventKind::Published, EventKind::Failed]),
                Some(list) => {
                    let mut events = Vec::new();
                    let mut good = true;
                    for e in list.get_ref() {
                        match e.as_str() {
                            "published" => events.push(EventKind::Published),
                            "failed" => events.push(EventKind::Failed),
                            "warning" => events.push(EventKind::Warning),
                            "stuck" => events.push(EventKind::Stuck),
                            other => {
                                good = false;
                                self.problems.at(
                                    list.span(),
                                    format!(
                                        "{ctx} events: {other:?} is not an event; expected any of \
                                         \"published\", \"failed\", \"warning\", \"stuck\""
                                    ),
                                );
                            }
                        }
                    }
                    good.then_some(events)
                }
            };
            let only = match &raw.rules {
                None => Some(Vec::new()),
                Some(list) => {
                    let unknown: Vec<String> = list
                        .get_ref()
                        .iter()
                        .filter(|n| !rules.contains(n))
                        .map(|n| format!("{n:?}"))
                        .collect();
                    if unknown.is_empty() {
                        Some(list.get_ref().clone())
                    } else {
                        self.problems.at(
                            list.span(),
                            format!(
                                "{ctx} rules: no [[rule]] is named {}; list rule names, or leave \
                                 `rules` out to notify for every rule",
                                unknown.join(", ")
                            ),
                        );
                        None
                    }
                }
            };
            let panel_url = match &raw.panel_url {
                None => Some(Url::parse(DEFAULT_PANEL_URL).expect("the default URL is valid")),
                Some(u) => match Url::parse(u.get_ref().trim()) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
                    _ => {
                        self.problems.at(
                            u.span(),
                            format!(
                                "{ctx} panel_url: expected an http:// or https:// URL, such as \
                                 \"{DEFAULT_PANEL_URL}\""
                            ),
                        );
                        None
                    }
                },
            };
            match (url, format, events, only, panel_url) {
                (Some(url), Some(format), Some(events), Some(rules), Some(panel_url)) => {
                    out.push(Notify {
                        url,
                        format,
                        events,
                        rules,
                        panel_url,
                    })
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn url(
        &mut self,
        value: Option<Spanned<String>>,
        field: &str,
        default: &str,
        allow_insecure_http: bool,
    ) -> Option<Url> {
        let Some(value) = value else {
            return Some(Url::parse(default).expect("default URLs are valid"));
        };
        let text = value.get_ref().trim();
        let problem = |msg: String| format!("[patchkit] {field}: {msg}");
        let url = match Url::parse(text) {
            Ok(url) => url,
            Err(err) => {
                self.problems.at(
                    value.span(),
                    problem(format!(
                        "cannot read {text:?} as a URL ({err}); expected e.g. \"{default}\""
                    )),
                );
                return None;
            }
        };
        let message = match url.scheme() {
            "https" => None,
            "http" if allow_insecure_http || is_loopback(&url) => None,
            "http" => Some(format!(
                "{text:?} uses plain http to a host that is not loopback, which would send the \
                 API key unencrypted; use https, or set allow_insecure_http = true if you \
                 really mean it"
            )),
            other => Some(format!(
                "the scheme {other:?} is not supported; expected an https:// URL"
            )),
        }
        .or_else(|| {
            (!url.username().is_empty() || url.password().is_some()).then(|| {
                "the URL carries credentials; remove them (the API key comes from api_key_env \
                 or api_key_file)"
                    .to_owned()
            })
        })
        .or_else(|| {
            (url.query().is_some() || url.fragment().is_some()).then(|| {
                "the URL has a query or fragment; give only scheme, host and port".to_owned()
            })
        });
        match message {
            Some(msg) => {
                self.problems.at(value.span(), problem(msg));
                None
            }
            None => Some(url),
        }
    }

    fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        field: &str,
        default: &str,
        zero: Zero,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(humantime::parse_duration(default).expect("defaults parse"));
        };
        match humantime::parse_duration(value.get_ref().trim()) {
            Ok(d) if d.is_zero() && zero == Zero::Refused => {
                self.problems.at(
                    value.span(),
                    format!("{field}: must be longer than zero; expected e.g. \"{default}\""),
                );
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.problems.at(
                    value.span(),
                    format!(
                        "{field}: cannot read {:?} as a duration ({err}); expected a number with \
                         a unit, such as \"{default}\", \"500ms\" or \"2m 30s\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A settle time: at least [`MIN_SETTLE`], since a shorter one takes a
    /// file whose copy merely paused between two writes.
    fn settle(&mut self, value: Option<Spanned<String>>, field: &str) -> Option<Duration> {
        let span = value.as_ref().map(|v| v.span());
        let settle = self.duration(value, field, "5s", Zero::Allowed)?;
        if settle < MIN_SETTLE {
            self.problems.at(
                span.unwrap_or_default(),
                format!(
                    "{field}: {} is too short; a file must stay unchanged at least {} before it \
                     is taken, or a copy that pauses between writes is taken half-written. \
                     Expected e.g. \"5s\"",
                    humantime::format_duration(settle),
                    humantime::format_duration(MIN_SETTLE),
                ),
            );
            return None;
        }
        Some(settle)
    }

    /// The state directory, if its control socket's path fits in a Unix
    /// socket address; otherwise `run` could not start, so the config is
    /// refused here, where `check` sees it too.
    fn socket_fits(&mut self, state_dir: PathBuf, span: Range<usize>) -> Option<PathBuf> {
        let socket = crate::control::socket_path(&state_dir);
        let len = socket.as_os_str().len();
        if len <= limits::MAX_SOCKET_PATH {
            return Some(state_dir);
        }
        self.problems.at(
            span,
            format!(
                "[daemon] state_dir: the control socket {} would be {len} bytes long, but a \
                 Unix socket path may have at most {} bytes; choose a shorter state_dir, \
                 such as \"{DEFAULT_STATE_DIR}\"",
                socket.display(),
                limits::MAX_SOCKET_PATH
            ),
        );
        None
    }

    fn path(&mut self, value: &Spanned<String>, field: &str) -> Option<PathBuf> {
        let text = value.get_ref();
        if text.trim().is_empty() {
            self.problems.at(
                value.span(),
                format!("{field}: expected a path, found an empty string"),
            );
            return None;
        }
        let path = Path::new(text);
        Some(if path.is_absolute() {
            path.to_owned()
        } else {
            self.base.join(path)
        })
    }
}

/// The `name` of every `[[rule]]` as written, valid or not.
fn written_rule_names(value: &Spanned<DeValue<'_>>) -> Vec<String> {
    let DeValue::Array(items) = value.get_ref() else {
        return Vec::new();
    };
    items.iter().filter_map(written_name).collect()
}

/// The `name` of one `[[rule]]` as written, when it is a string.
fn written_name(item: &Spanned<DeValue<'_>>) -> Option<String> {
    match item.get_ref() {
        DeValue::Table(table) => match table.get("name").map(Spanned::get_ref) {
            Some(DeValue::String(name)) => Some(name.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
