//! The sandbox's live state and how it moves with the clock.
//!
//! Owns accounts, apps, versions, uploads, jobs, statistics and the fault
//! RNG, all behind one mutex in [`Shared`]. Jobs and publishes are not
//! driven by tasks: [`State::advance`] settles everything whose time has come,
//! and every request and snapshot calls it first, so what a client sees is a
//! pure function of the clock. Knows nothing about HTTP beyond the JSON shapes
//! it renders.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::archive::Analysis;
use super::config::{
    FaultConfig, OutcomeRule, ProcessingOutcome, PublishOutcome, Variant, rule_for,
};
use super::snapshot::{AppInfo, FaultCounts, Snapshot, UploadInfo, VersionInfo};

/// What every request handler shares.
pub(crate) struct Shared {
    /// The state; never held across an `.await`.
    pub state: Mutex<State>,
    /// Where upload files live.
    pub data_dir: PathBuf,
    /// Keeps a sandbox-owned data directory alive until the sandbox is gone.
    pub _tempdir: Option<tempfile::TempDir>,
}

impl Shared {
    /// Locks the state and settles whatever the clock has finished.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking handler must not wedge every later test request; the
        // state it left is still the best picture there is.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.advance(Instant::now());
        state
    }
}

pub(crate) struct State {
    /// Valid API keys.
    pub accounts: BTreeSet<String>,
    /// Apps by secret.
    pub apps: BTreeMap<String, App>,
    next_app_id: u64,
    /// Uploads by id.
    pub uploads: BTreeMap<u64, Upload>,
    next_upload_id: u64,
    /// Jobs by guid.
    pub jobs: HashMap<String, Job>,
    pub job_duration: Duration,
    pub publish_duration: Duration,
    pub outcomes: Vec<OutcomeRule>,
    pub faults: FaultConfig,
    /// The one source of fault decisions, reseeded whenever faults are set.
    pub fault_rng: StdRng,
    pub stats: Stats,
    /// The variants in force.
    pub variants: BTreeSet<Variant>,
    /// PatchKit's global lock: one queue per resource.
    pub locks: super::locks::Locks,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    pub key_in_header: u64,
    pub key_in_url: u64,
    pub faults: FaultCounts,
}

pub(crate) struct App {
    pub id: u64,
    pub secret: String,
    pub name: String,
    pub platform: String,
    /// The API key that owns the app.
    pub owner: String,
    pub versions: Vec<Version>,
    /// Id of the version published last, 0 for none.
    pub current_version: u64,
    /// A channel app, fed by its group app.
    pub is_channel: bool,
    /// A channel that also takes uploads of its own.
    pub allow_channel_direct_publish: bool,
    /// The group app of a channel: `(secret, name)`.
    pub parent_group: Option<(String, String)>,
}

pub(crate) struct Version {
    pub id: u64,
    pub label: String,
    pub changelog: String,
    pub publish_when_processed: bool,
    pub processing: Processing,
    pub publish: Publish,
    /// The upload last attached with `content_file`.
    pub upload_id: Option<u64>,
    /// Hash and size of the content, recorded when processing finishes.
    pub content: Option<(String, u64)>,
}

/// Where a version's processing stands.
pub(crate) enum Processing {
    /// No content attached yet.
    None,
    /// A job is running; its result is already decided and shows when the
    /// job's time is up.
    Running {
        guid: String,
        /// When `content_file` was accepted.
        started: Instant,
        started_wall: SystemTime,
        /// How long the job waits before it really starts (zero unless
        /// the `lazy-timestamps` variant is in force).
        queue: Duration,
        /// The previous processing's start and end, shown until the job
        /// starts when it waits in a queue.
        previous: (Option<SystemTime>, Option<SystemTime>),
        analysis: Analysis,
        outcome: ProcessingOutcome,
    },
    /// The last job finished.
    Done {
        started_wall: SystemTime,
        finished_wall: SystemTime,
        messages: Vec<(String, String)>,
        has_error: bool,
        /// The job itself failed; the version is not publishable.
        job_failed: bool,
    },
}

/// Where a version's publishing stands.
pub(crate) enum Publish {
    None,
    Pending {
        started: Instant,
        outcome: PublishOutcome,
    },
    Published {
        date: u64,
        time: u64,
    },
    Scheduled {
        time: u64,
    },
    Refused,
}

pub(crate) struct Upload {
    pub id: u64,
    pub owner: String,
    pub total: u64,
    pub path: PathBuf,
    /// Held byte ranges, half-open, sorted and merged.
    pub ranges: Vec<(u64, u64)>,
    pub received: u64,
    pub received_twice: u64,
}

pub(crate) struct Job {
    pub guid: String,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub duration: Duration,
    /// The part of `duration` spent waiting for a worker.
    pub queue: Duration,
    /// `(status, status_message)` of a failing job.
    pub failure: Option<(i64, String)>,
}

impl Upload {
    pub fn complete(&self) -> bool {
        self.ranges == [(0, self.total)]
    }

    /// Records an accepted chunk covering `[start, end)`.
    pub fn add_range(&mut self, start: u64, end: u64) {
        let overlap: u64 = self
            .ranges
            .iter()
            .map(|&(s, e)| end.min(e).saturating_sub(start.max(s)))
            .sum();
        self.received += end - start;
        self.received_twice += overlap;
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
    }
}

impl Version {
    pub fn is_draft(&self) -> bool {
        !matches!(
            self.publish,
            Publish::Published { .. } | Publish::Scheduled { .. }
        )
    }

    pub fn is_running(&self) -> bool {
        matches!(self.processing, Processing::Running { .. })
    }

    pub fn is_pending(&self) -> bool {
        matches!(self.publish, Publish::Pending { .. })
    }

    fn visible_publicly(&self) -> bool {
        !self.is_draft()
    }
}

impl State {
    pub fn new(
        job_duration: Duration,
        publish_duration: Duration,
        faults: FaultConfig,
        outcomes: Vec<OutcomeRule>,
    ) -> Self {
        Self {
            accounts: BTreeSet::new(),
            apps: BTreeMap::new(),
            next_app_id: 1,
            uploads: BTreeMap::new(),
            next_upload_id: 1,
            jobs: HashMap::new(),
            job_duration,
            publish_duration,
            outcomes,
            fault_rng: StdRng::seed_from_u64(faults.seed),
            faults,
            stats: Stats::default(),
            variants: BTreeSet::new(),
            locks: super::locks::Locks::new(super::locks::DEFAULT_LOCK_TIMEOUT),
        }
    }

    /// Whether a variant is in force.
    pub fn has(&self, variant: Variant) -> bool {
        self.variants.contains(&variant)
    }

    /// A restart of the service. With the `forgetful` variant it forgets
    /// every draft version, upload and job, as a restore from an older
    /// backup would (ids go on from the highest version kept, so a
    /// forgotten id is given again); published and scheduled versions stay.
    /// Without it nothing is lost.
    pub fn restart(&mut self) {
        if !self.has(Variant::Forgetful) {
            return;
        }
        for app in self.apps.values_mut() {
            app.versions.retain(|v| !v.is_draft());
        }
        self.uploads.clear();
        self.jobs.clear();
        self.locks.clear();
    }

    pub fn set_faults(&mut self, faults: FaultConfig) {
        self.fault_rng = StdRng::seed_from_u64(faults.seed);
        self.faults = faults;
    }

    /// Creates an app; an existing secret keeps its app.
    pub fn add_app(&mut self, owner: &str, secret: &str, name: &str, platform: &str) -> &App {
        let id = self.next_app_id;
        let app = self.apps.entry(secret.to_owned()).or_insert_with(|| App {
            id,
            secret: secret.to_owned(),
            name: name.to_owned(),
            platform: platform.to_owned(),
            owner: owner.to_owned(),
            versions: Vec::new(),
            current_version: 0,
            is_channel: false,
            allow_channel_direct_publish: false,
            parent_group: None,
        });
        if app.id == id {
            self.next_app_id += 1;
        }
        app
    }

    pub fn add_upload(&mut self, owner: &str, total: u64, dir: &std::path::Path) -> u64 {
        let id = self.next_upload_id;
        self.next_upload_id += 1;
        self.uploads.insert(
            id,
            Upload {
                id,
                owner: owner.to_owned(),
                total,
                path: dir.join(format!("upload-{id}.bin")),
                ranges: Vec::new(),
                received: 0,
                received_twice: 0,
            },
        );
        id
    }

    /// Settles every job and publish whose time has come.
    pub fn advance(&mut self, now: Instant) {
        let publish_duration = self.publish_duration;
        let rules = &self.outcomes;
        for app in self.apps.values_mut() {
            for version in &mut app.versions {
                if let Processing::Running { guid, started, .. } = &version.processing {
                    let finish =
                        *started + self.jobs.get(guid).map_or(Duration::ZERO, |j| j.duration);
                    if now >= finish {
                        finish_processing(version, finish, &app.secret, rules);
                    }
                }
                if let Publish::Pending { started, outcome } = &version.publish
                    && now >= *started + publish_duration
                {
                    let done_wall = wall_of(*started + publish_duration, now);
                    version.publish = match outcome {
                        PublishOutcome::Normal => Publish::Published {
                            date: unix(done_wall),
                            time: 0,
                        },
                        PublishOutcome::Scheduled { delay_secs } => Publish::Scheduled {
                            time: unix(done_wall) + delay_secs,
                        },
                        PublishOutcome::Refused => Publish::Refused,
                    };
                    if matches!(version.publish, Publish::Published { .. }) {
                        app.current_version = version.id;
                    }
                }
                if let Publish::Scheduled { time } = version.publish
                    && unix(SystemTime::now()) >= time
                {
                    version.publish = Publish::Published { date: time, time };
                    app.current_version = version.id;
                }
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            apps: self.apps.values().map(app_info).collect(),
            uploads: self
                .uploads
                .values()
                .map(|u| UploadInfo {
                    id: u.id,
                    total: u.total,
                    received: u.received,
                    received_twice: u.received_twice,
                    complete: u.complete(),
                })
                .collect(),
            requests: self.stats.requests.clone(),
            key_in_header: self.stats.key_in_header,
            key_in_url: self.stats.key_in_url,
            faults: self.stats.faults.clone(),
            locks: self.locks.info(),
        }
    }

    /// The job JSON of `GET /1/background_jobs/{guid}`.
    pub fn job_json(&self, guid: &str, now: Instant) -> Option<Value> {
        let job = self.jobs.get(guid)?;
        let elapsed = now.saturating_duration_since(job.started);
        let progress = fraction(elapsed, job.duration);
        let finished = progress >= 1.0;
        let queued = elapsed < job.queue;
        let (status, message) = match (&job.failure, finished) {
            (Some((status, message)), true) => (*status, Some(message.clone())),
            (_, true) => (0, None),
            (_, false) if queued => (0, Some("waiting for free worker...".to_owned())),
            (_, false) => (0, Some("processing".to_owned())),
        };
        Some(json!({
            "guid": job.guid,
            "time_started": (!queued).then(|| iso8601(job.started_wall + job.queue)),
            "time_finished": finished.then(|| iso8601(job.started_wall + job.duration)),
            "progress": progress,
            "pending": !finished,
            "finished": finished,
            "status": status,
            "status_message": message,
        }))
    }
}

/// Applies the decided result of a finished job to its version.
fn finish_processing(version: &mut Version, finish: Instant, secret: &str, rules: &[OutcomeRule]) {
    let Processing::Running {
        started_wall,
        analysis,
        outcome,
        started,
        queue,
        ..
    } = std::mem::replace(&mut version.processing, Processing::None)
    else {
        return;
    };
    let finished_wall = started_wall + (finish - started);
    let started_wall = started_wall + queue;
    let mut messages: Vec<(String, String)> = analysis
        .errors
        .iter()
        .map(|m| ("error".to_owned(), m.clone()))
        .collect();
    let mut has_error = false;
    let mut job_failed = false;
    match outcome {
        ProcessingOutcome::Clean => {}
        ProcessingOutcome::Warning { message } => messages.push(("warning".to_owned(), message)),
        ProcessingOutcome::Error { message } => messages.push(("error".to_owned(), message)),
        ProcessingOutcome::HasProcessingError => has_error = true,
        ProcessingOutcome::JobFailure { .. } => job_failed = true,
    }
    let clean = !has_error && !job_failed && messages.iter().all(|(s, _)| s != "error");
    version.content = Some((analysis.sha256, analysis.size));
    version.processing = Processing::Done {
        started_wall,
        finished_wall,
        messages,
        has_error,
        job_failed,
    };
    if clean && version.publish_when_processed {
        let outcome = rule_for(rules, secret, &version.label).publish;
        version.publish = Publish::Pending {
            started: finish,
            outcome,
        };
    }
}

fn app_info(app: &App) -> AppInfo {
    AppInfo {
        secret: app.secret.clone(),
        owner: app.owner.clone(),
        name: app.name.clone(),
        current_version: app.current_version,
        versions: app.versions.iter().map(version_info).collect(),
    }
}

fn version_info(v: &Version) -> VersionInfo {
    let (processed, has_error, messages) = match &v.processing {
        Processing::Done {
            messages,
            has_error,
            ..
        } => (true, *has_error, messages.clone()),
        _ => (false, false, Vec::new()),
    };
    VersionInfo {
        id: v.id,
        label: v.label.clone(),
        changelog: v.changelog.clone(),
        draft: v.is_draft(),
        published: matches!(v.publish, Publish::Published { .. }),
        scheduled: matches!(v.publish, Publish::Scheduled { .. }),
        pending_publish: v.is_pending(),
        publish_time: publish_time(&v.publish),
        publish_when_processed: v.publish_when_processed,
        processed,
        has_processing_error: has_error,
        processing_messages: messages,
        content_sha256: v.content.as_ref().map(|c| c.0.clone()),
        content_size: v.content.as_ref().map(|c| c.1),
        upload_id: v.upload_id,
    }
}

fn publish_time(p: &Publish) -> u64 {
    match p {
        Publish::Published { time, .. } | Publish::Scheduled { time } => *time,
        _ => 0,
    }
}

impl App {
    /// The App JSON. An absent processing version shows as `false` and an
    /// absent publishing version as `null`, so a client must accept both.
    /// `swagger` leaves out the keys the Swagger file does not list.
    pub fn json(&self, swagger: bool) -> Value {
        let processing = self.versions.iter().find(|v| v.is_running()).map(|v| v.id);
        let publishing = self.versions.iter().find(|v| v.is_pending()).map(|v| v.id);
        let mut app = json!({
            "id": self.id,
            "secret": self.secret,
            "name": self.name,
            "platform": self.platform,
            "current_version": self.current_version,
            "processing_version": processing.map_or(json!(false), |id| json!(id)),
            "publishing_version": publishing,
        });
        if !swagger {
            app["display_name"] = json!(self.name);
            app["is_channel"] = json!(self.is_channel);
            app["allow_channel_direct_publish"] = json!(self.allow_channel_direct_publish);
            app["parent_group"] = match &self.parent_group {
                Some((secret, name)) => json!({"secret": secret, "name": name}),
                None => Value::Null,
            };
        }
        app
    }
}

impl Version {
    /// The AppVersion JSON: every key present, or with `swagger` only the
    /// keys the Swagger file lists (plus `has_processing_error`, which
    /// PatchKit's Ruby CLI reads, and `publish_time` while scheduled).
    pub fn json(
        &self,
        now: Instant,
        jobs: &HashMap<String, Job>,
        publish_duration: Duration,
        swagger: bool,
    ) -> Value {
        let (started_at, finished_at, progress, has_error, messages) = match &self.processing {
            Processing::None => (None, None, 0.0, false, None),
            Processing::Running {
                guid,
                started,
                started_wall,
                queue,
                previous,
                ..
            } => {
                let duration = jobs.get(guid).map_or(Duration::ZERO, |j| j.duration);
                let elapsed = now.saturating_duration_since(*started);
                if elapsed < *queue {
                    // Still waiting for a worker: the version shows what it
                    // showed before the request.
                    (
                        previous.0.map(iso8601),
                        previous.1.map(iso8601),
                        0.0,
                        false,
                        None,
                    )
                } else {
                    let p = fraction(elapsed, duration);
                    (Some(iso8601(*started_wall + *queue)), None, p, false, None)
                }
            }
            Processing::Done {
                started_wall,
                finished_wall,
                messages,
                has_error,
                ..
            } => (
                Some(iso8601(*started_wall)),
                Some(iso8601(*finished_wall)),
                1.0,
                *has_error,
                (!messages.is_empty()).then(|| {
                    messages
                        .iter()
                        .map(|(s, m)| json!({"severity": s, "message": m}))
                        .collect::<Vec<_>>()
                }),
            ),
        };
        let publish_progress = match &self.publish {
            Publish::Pending { started, .. } => {
                fraction(now.saturating_duration_since(*started), publish_duration)
            }
            Publish::Published { .. } | Publish::Scheduled { .. } => 1.0,
            Publish::None | Publish::Refused => 0.0,
        };
        let publish_date = match self.publish {
            Publish::Published { date, .. } => date,
            _ => 0,
        };
        let mut version = json!({
            "id": self.id,
            "label": self.label,
            "changelog": self.changelog,
            "draft": self.is_draft(),
            "publish_date": publish_date,
            "pending_publish": self.is_pending(),
            "published": matches!(self.publish, Publish::Published { .. }),
            "publish_progress": publish_progress,
            "publish_time": publish_time(&self.publish),
            "publish_when_processed": self.publish_when_processed,
            "processing_started_at": started_at,
            "processing_finished_at": finished_at,
            "processing_progress": progress,
            "has_processing_error": has_error,
            "processing_messages": messages,
        });
        if swagger && let Some(map) = version.as_object_mut() {
            map.remove("processing_progress");
            if publish_time(&self.publish) == 0 {
                map.remove("publish_time");
            }
        }
        version
    }

    pub fn visible_to(&self, owner: bool) -> bool {
        owner || self.visible_publicly()
    }
}

fn fraction(elapsed: Duration, total: Duration) -> f64 {
    if total.is_zero() {
        1.0
    } else {
        (elapsed.as_secs_f64() / total.as_secs_f64()).min(1.0)
    }
}

/// The wall-clock time of a past instant.
fn wall_of(instant: Instant, now: Instant) -> SystemTime {
    SystemTime::now() - now.saturating_duration_since(instant)
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2021-10-19T11:14:50.176Z`, the form PatchKit shows.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm), to avoid a date crate for one format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_634_642_090_176);
        assert_eq!(iso8601(t), "2021-10-19T11:14:50.176Z");
    }

    #[test]
    fn ranges_merge_and_count_overlap() {
        let mut u = Upload {
            id: 1,
            owner: String::new(),
            total: 10,
            path: PathBuf::new(),
            ranges: Vec::new(),
            received: 0,
            received_twice: 0,
        };
        u.add_range(0, 4);
        u.add_range(6, 10);
        assert!(!u.complete());
        u.add_range(2, 8);
        assert_eq!((u.received, u.received_twice), (14, 4));
        assert!(u.complete());
    }
}
