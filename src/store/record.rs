//! The stored form of a build record: a compatibility boundary.
//!
//! A record is a JSON object with a schema version first, `{"v":1,...}`.
//! The storage structs here (`BuildRecordV1` and its parts) are separate from
//! the domain types and converted by hand, so a change to `BuildState` or
//! `Build` cannot silently change what is on disk: it fails to compile here
//! instead. Decoding reads `v` before anything else; a version this binary
//! does not know is an error, never a guess.
//!
//! Changing the format means adding `BuildRecordV2`, converting V1 to V2 in
//! `decode_build`, bumping `CURRENT_VERSION`, and keeping the V1 fixtures
//! under `tests/fixtures/store/` with their test.
//!
//! Version 4 adds uploads made before the build's draft: `uploading` and
//! `uploaded` without `version_id`, and `upload_id` on `creating_version`.
//!
//! Version 3 adds the `linking` state and the `channels` stage (channel
//! publishing).
//!
//! Version 2 only adds to version 1: the `creating_version` state (the
//! intent to create a draft, recorded before the request) and
//! `prior_finished_at` on `processing`. Both versions share these structs; a
//! record is written with the lowest version that can hold it, so a record
//! an older binary can read keeps `"v":1` and one it cannot read says `2`
//! (an older binary then names the schema instead of calling it corrupt).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::build::{Build, BuildId};
use crate::state::{BuildState, FileIdentity, Stage};

/// The record schema version this binary writes and the newest it reads.
pub const CURRENT_VERSION: u64 = 4;

/// Encodes a build as its current stored form.
///
/// Fails only for a path that is not valid UTF-8 (JSON strings cannot hold
/// it).
pub fn encode_build(build: &Build) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&BuildRecordV1::from(build)).map_err(|source| StoreError::Encode {
        id: build.id,
        source,
    })
}

/// Decodes a stored build record of any known version. `key` names the
/// record in errors.
pub fn decode_build(key: &str, bytes: &[u8]) -> Result<Build, StoreError> {
    match read_version(key, bytes)? {
        1..=CURRENT_VERSION => {
            let record: BuildRecordV1 =
                serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
            Ok(Build::from(record))
        }
        version => Err(StoreError::UnsupportedSchema {
            key: key.to_owned(),
            version,
        }),
    }
}

/// Reads only the `v` field of a record.
fn read_version(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    #[derive(Deserialize)]
    struct Envelope {
        v: Option<u64>,
    }
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    envelope.v.ok_or_else(|| StoreError::Corrupt {
        key: key.to_owned(),
        reason: "the record has no schema version \"v\"".into(),
    })
}

fn corrupt(key: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

/// Versions 1 and 2 of a stored build (see the module doc). Field order is
/// the JSON order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRecordV1 {
    /// 1, or 2 when the state needs it.
    pub v: u64,
    /// The build id (also the key; kept here so a dump is self-describing).
    pub id: u64,
    /// Rule name.
    pub rule: String,
    /// PatchKit app secret.
    pub app_secret: String,
    /// ZIP path.
    pub file: PathBuf,
    /// File identity at enqueue.
    pub identity: FileIdentityV1,
    /// Version label.
    pub label: String,
    /// Version changelog.
    pub changelog: Option<String>,
    /// Publish after processing.
    pub publish: bool,
    /// Unix ms.
    pub enqueued_at_ms: u64,
    /// Unix ms.
    pub updated_at_ms: u64,
    /// The state.
    pub state: StateV1,
    /// Failed tries of the current step.
    pub attempts: u32,
    /// Unix ms.
    pub next_attempt_at_ms: Option<u64>,
    /// Last error.
    pub last_error: Option<String>,
}

/// Version 1 of a stored file identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentityV1 {
    /// Path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, whole seconds since the Unix epoch (floor).
    /// Split from the nanoseconds so every number fits a JSON double and an
    /// i64 (serde cannot read an i128 inside a tagged enum).
    pub mtime_s: i64,
    /// The nanoseconds past `mtime_s`, 0..1e9.
    pub mtime_nsec: u32,
    /// Inode number.
    pub inode: u64,
}

/// Version 1 of a stored pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageV1 {
    /// `Stage::Validate`.
    Validate,
    /// `Stage::CreateVersion`.
    CreateVersion,
    /// `Stage::Upload`.
    Upload,
    /// `Stage::Process`.
    Process,
    /// `Stage::Check`.
    Check,
    /// `Stage::Publish`.
    Publish,
    /// `Stage::Channels`. Version 3.
    Channels,
}

/// Version 1 of a stored build state, tagged by `"kind"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[allow(missing_docs)]
pub enum StateV1 {
    Queued,
    Validated,
    /// Version 2.
    CreatingVersion {
        after_id: u64,
        /// Version 4; absent means `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload_id: Option<u64>,
    },
    VersionReady {
        version_id: u64,
    },
    Uploading {
        /// Absent (version 4) for an upload made before the draft.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<u64>,
        upload_id: u64,
        acknowledged: u64,
        total: u64,
        chunk_size: u64,
        identity: FileIdentityV1,
    },
    Uploaded {
        /// Absent (version 4) for an upload made before the draft.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<u64>,
        upload_id: u64,
    },
    Processing {
        version_id: u64,
        upload_id: u64,
        job_guid: Option<String>,
        /// Added after the first fixtures; absent means `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prior_started_at: Option<String>,
        /// Version 2; absent means `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prior_finished_at: Option<String>,
    },
    Processed {
        version_id: u64,
        warnings: Vec<String>,
    },
    Publishing {
        version_id: u64,
        warnings: Vec<String>,
    },
    /// Version 3.
    Linking {
        version_id: u64,
        published_at: u64,
        warnings: Vec<String>,
    },
    Published {
        version_id: u64,
        published_at: u64,
        warnings: Vec<String>,
    },
    Scheduled {
        version_id: u64,
        publish_time: u64,
        warnings: Vec<String>,
    },
    Draft {
        version_id: u64,
        warnings: Vec<String>,
    },
    Failed {
        stage: StageV1,
        reason: String,
        attempts: u32,
        version_id: Option<u64>,
    },
    Cancelled {
        stage: StageV1,
        version_id: Option<u64>,
    },
}

impl From<&Build> for BuildRecordV1 {
    fn from(b: &Build) -> BuildRecordV1 {
        BuildRecordV1 {
            v: schema_of(&b.state),
            id: b.id.0,
            rule: b.rule.clone(),
            app_secret: b.app_secret.clone(),
            file: b.file.clone(),
            identity: FileIdentityV1::from(&b.identity),
            label: b.label.clone(),
            changelog: b.changelog.clone(),
            publish: b.publish,
            enqueued_at_ms: b.enqueued_at,
            updated_at_ms: b.updated_at,
            state: StateV1::from(&b.state),
            attempts: b.attempts,
            next_attempt_at_ms: b.next_attempt_at,
            last_error: b.last_error.clone(),
        }
    }
}

/// The lowest record version that can hold `state`. Version 3 adds the
/// `linking` state and the `channels` stage; version 4 the upload made
/// before the draft.
fn schema_of(state: &BuildState) -> u64 {
    match state {
        BuildState::Uploading {
            version_id: None, ..
        }
        | BuildState::Uploaded {
            version_id: None, ..
        }
        | BuildState::CreatingVersion {
            upload_id: Some(_), ..
        } => 4,
        BuildState::Linking { .. }
        | BuildState::Failed {
            stage: Stage::Channels,
            ..
        }
        | BuildState::Cancelled {
            stage: Stage::Channels,
            ..
        } => 3,
        BuildState::CreatingVersion { .. }
        | BuildState::Processing {
            prior_finished_at: Some(_),
            ..
        } => 2,
        _ => 1,
    }
}

impl From<BuildRecordV1> for Build {
    fn from(r: BuildRecordV1) -> Build {
        Build {
            id: BuildId(r.id),
            rule: r.rule,
            app_secret: r.app_secret,
            file: r.file,
            identity: r.identity.into(),
            label: r.label,
            changelog: r.changelog,
            publish: r.publish,
            enqueued_at: r.enqueued_at_ms,
            updated_at: r.updated_at_ms,
            state: r.state.into(),
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at_ms,
            last_error: r.last_error,
        }
    }
}

impl From<&FileIdentity> for FileIdentityV1 {
    fn from(i: &FileIdentity) -> FileIdentityV1 {
        FileIdentityV1 {
            path: i.path.clone(),
            size: i.size,
            // Saturates only for times hundreds of billions of years away.
            mtime_s: i64::try_from(i.mtime_ns.div_euclid(NANOS)).unwrap_or(if i.mtime_ns < 0 {
                i64::MIN
            } else {
                i64::MAX
            }),
            mtime_nsec: i.mtime_ns.rem_euclid(NANOS) as u32,
            inode: i.inode,
        }
    }
}

const NANOS: i128 = 1_000_000_000;

impl From<FileIdentityV1> for FileIdentity {
    fn from(i: FileIdentityV1) -> FileIdentity {
        FileIdentity {
            path: i.path,
            size: i.size,
            mtime_ns: i128::from(i.mtime_s) * NANOS + i128::from(i.mtime_nsec),
            inode: i.inode,
        }
    }
}

impl From<Stage> for StageV1 {
    fn from(s: Stage) -> StageV1 {
        match s {
            Stage::Validate => StageV1::Validate,
            Stage::CreateVersion => StageV1::CreateVersion,
            Stage::Upload => StageV1::Upload,
            Stage::Process => StageV1::Process,
            Stage::Check => StageV1::Check,
            Stage::Publish => StageV1::Publish,
            Stage::Channels => StageV1::Channels,
        }
    }
}

impl From<StageV1> for Stage {
    fn from(s: StageV1) -> Stage {
        match s {
            StageV1::Validate => Stage::Validate,
            StageV1::CreateVersion => Stage::CreateVersion,
            StageV1::Upload => Stage::Upload,
            StageV1::Process => Stage::Process,
            StageV1::Check => Stage::Check,
            StageV1::Publish => Stage::Publish,
            StageV1::Channels => Stage::Channels,
        }
    }
}

impl From<&BuildState> for StateV1 {
    fn from(s: &BuildState) -> StateV1 {
        match s.clone() {
            BuildState::Queued => StateV1::Queued,
            BuildState::Validated => StateV1::Validated,
            BuildState::CreatingVersion {
                after_id,
                upload_id,
            } => StateV1::CreatingVersion {
                after_id,
                upload_id,
            },
            BuildState::VersionReady { version_id } => StateV1::VersionReady { version_id },
            BuildState::Uploading {
                version_id,
                upload_id,
                acknowledged,
                total,
                chunk_size,
                identity,
            } => StateV1::Uploading {
                version_id,
                upload_id,
                acknowledged,
                total,
                chunk_size,
                identity: FileIdentityV1::from(&identity),
            },
            BuildState::Uploaded {
                version_id,
                upload_id,
            } => StateV1::Uploaded {
                version_id,
                upload_id,
            },
            BuildState::Processing {
                version_id,
                upload_id,
                job_guid,
                prior_started_at,
                prior_finished_at,
            } => StateV1::Processing {
                version_id,
                upload_id,
                job_guid,
                prior_started_at,
                prior_finished_at,
            },
            BuildState::Processed {
                version_id,
                warnings,
            } => StateV1::Processed {
                version_id,
                warnings,
            },
            BuildState::Publishing {
                version_id,
                warnings,
            } => StateV1::Publishing {
                version_id,
                warnings,
            },
            BuildState::Published {
                version_id,
                published_at,
                warnings,
            } => StateV1::Published {
                version_id,
                published_at,
                warnings,
            },
            BuildState::Scheduled {
                version_id,
                publish_time,
                warnings,
            } => StateV1::Scheduled {
                version_id,
                publish_time,
                warnings,
            },
            BuildState::Draft {
                version_id,
                warnings,
            } => StateV1::Draft {
                version_id,
                warnings,
            },
            BuildState::Failed {
                stage,
                reason,
                attempts,
                version_id,
            } => StateV1::Failed {
                stage: stage.into(),
                reason,
                attempts,
                version_id,
            },
            BuildState::Cancelled { stage, version_id } => StateV1::Cancelled {
                stage: stage.into(),
                version_id,
            },
            BuildState::Linking {
                version_id,
                published_at,
                warnings,
            } => StateV1::Linking {
                version_id,
                published_at,
                warnings,
            },
        }
    }
}

impl From<StateV1> for BuildState {
    fn from(s: StateV1) -> BuildState {
        match s {
            StateV1::Linking {
                version_id,
                published_at,
                warnings,
            } => BuildState::Linking {
                version_id,
                published_at,
                warnings,
            },
            StateV1::Queued => BuildState::Queued,
            StateV1::Validated => BuildState::Validated,
            StateV1::CreatingVersion {
                after_id,
                upload_id,
            } => BuildState::CreatingVersion {
                after_id,
                upload_id,
            },
            StateV1::VersionReady { version_id } => BuildState::VersionReady { version_id },
            StateV1::Uploading {
                version_id,
                upload_id,
                acknowledged,
                total,
                chunk_size,
                identity,
            } => BuildState::Uploading {
                version_id,
                upload_id,
                acknowledged,
                total,
                chunk_size,
                identity: identity.into(),
            },
            StateV1::Uploaded {
                version_id,
                upload_id,
            } => BuildState::Uploaded {
                version_id,
                upload_id,
            },
            StateV1::Processing {
                version_id,
                upload_id,
                job_guid,
                prior_started_at,
                prior_finished_at,
            } => BuildState::Processing {
                version_id,
                upload_id,
                job_guid,
                prior_started_at,
                prior_finished_at,
            },
            StateV1::Processed {
                version_id,
                warnings,
            } => BuildState::Processed {
                version_id,
                warnings,
            },
            StateV1::Publishing {
                version_id,
                warnings,
            } => BuildState::Publishing {
                version_id,
                warnings,
            },
            StateV1::Published {
                version_id,
                published_at,
                warnings,
            } => BuildState::Published {
                version_id,
                published_at,
                warnings,
            },
            StateV1::Scheduled {
                version_id,
                publish_time,
                warnings,
            } => BuildState::Scheduled {
                version_id,
                publish_time,
                warnings,
            },
            StateV1::Draft {
                version_id,
                warnings,
            } => BuildState::Draft {
                version_id,
                warnings,
            },
            StateV1::Failed {
                stage,
                reason,
                attempts,
                version_id,
            } => BuildState::Failed {
                stage: stage.into(),
                reason,
                attempts,
                version_id,
            },
            StateV1::Cancelled { stage, version_id } => BuildState::Cancelled {
                stage: stage.into(),
                version_id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::build::{Build, BuildId};

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/store")
            .join(name);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        bytes
    }

    fn build(state: BuildState) -> Build {
        let identity = FileIdentity {
            path: PathBuf::from("/srv/builds/win/Game-1.5.0-win64.zip"),
            size: 52_428_800,
            mtime_ns: 1_764_000_000_000_000_001,
            inode: 42,
        };
        Build {
            id: BuildId(9),
            rule: "windows".into(),
            app_secret: "f1e2d3c4b5a6".into(),
            file: identity.path.clone(),
            identity,
            label: "1.5.0".into(),
            changelog: None,
            publish: true,
            enqueued_at: 1_764_000_100_000,
            updated_at: 1_764_000_100_500,
            state,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
        }
    }

    fn v2_fixtures() -> Vec<(&'static str, Build)> {
        vec![
            (
                "v2_creating_version.json",
                build(BuildState::CreatingVersion {
                    after_id: 11,
                    upload_id: None,
                }),
            ),
            (
                "v2_processing.json",
                build(BuildState::Processing {
                    version_id: 12,
                    upload_id: 40,
                    job_guid: None,
                    prior_started_at: Some("2026-11-30T10:00:00.000Z".into()),
                    prior_finished_at: Some("2026-11-30T10:02:00.000Z".into()),
                }),
            ),
        ]
    }

    /// The fixture decodes to `expected`, which encodes back to it byte for
    /// byte.
    fn assert_fixture(name: &str, expected: &Build) {
        let bytes = fixture(name);
        assert_eq!(&decode_build(name, &bytes).unwrap(), expected, "{name}");
        assert_eq!(
            String::from_utf8(encode_build(expected).unwrap()).unwrap(),
            String::from_utf8(bytes).unwrap(),
            "{name}: the stored format changed; a change needs a new schema version"
        );
    }

    #[test]
    fn v2_fixtures_decode_and_encode_exactly() {
        for (name, expected) in v2_fixtures() {
            assert_fixture(name, &expected);
        }
    }

    #[test]
    fn records_a_v1_binary_can_read_stay_v1() {
        let plain = build(BuildState::Validated);
        let bytes = encode_build(&plain).unwrap();
        assert!(bytes.starts_with(b"{\"v\":1,"));
        let processing = build(BuildState::Processing {
            version_id: 1,
            upload_id: 2,
            job_guid: None,
            prior_started_at: None,
            prior_finished_at: None,
        });
        assert!(encode_build(&processing).unwrap().starts_with(b"{\"v\":1,"));
    }

    #[test]
    fn a_newer_schema_is_refused_by_name() {
        let bytes = br#"{"v":5}"#;
        assert!(matches!(
            decode_build("k", bytes),
            Err(StoreError::UnsupportedSchema { version: 5, .. })
        ));
    }

    #[test]
    fn uploads_before_the_draft_are_version_4_fixtures() {
        let b = build(BuildState::Validated);
        let identity = FileIdentity {
            path: b.file.clone(),
            ..b.identity.clone()
        };
        let fixtures = [
            (
                "v4_uploading.json",
                build(BuildState::Uploading {
                    version_id: None,
                    upload_id: 41,
                    acknowledged: 20_971_520,
                    total: 52_428_800,
                    chunk_size: 10_485_760,
                    identity,
                }),
            ),
            (
                "v4_uploaded.json",
                build(BuildState::Uploaded {
                    version_id: None,
                    upload_id: 41,
                }),
            ),
            (
                "v4_creating_version.json",
                build(BuildState::CreatingVersion {
                    after_id: 11,
                    upload_id: Some(41),
                }),
            ),
        ];
        for (name, expected) in fixtures {
            assert_fixture(name, &expected);
        }
        // With a version, the same states stay readable by older binaries.
        let versioned = build(BuildState::Uploaded {
            version_id: Some(12),
            upload_id: 41,
        });
        assert!(encode_build(&versioned).unwrap().starts_with(b"{\"v\":1,"));
    }

    #[test]
    fn channel_states_are_version_3_and_read_back() {
        for state in [
            BuildState::Linking {
                version_id: 4,
                published_at: 1_700_000_000,
                warnings: vec!["w".into()],
            },
            BuildState::Failed {
                stage: Stage::Channels,
                reason: "channel beta could not be fed".into(),
                attempts: 1,
                version_id: Some(4),
            },
        ] {
            let b = build(state);
            let bytes = encode_build(&b).unwrap();
            assert!(
                bytes.starts_with(b"{\"v\":3,"),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(decode_build("k", &bytes).unwrap(), b);
        }
    }
}
