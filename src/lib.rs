//! patchkit-autopublish: a daemon that turns a build folder into a release
//! pipeline on PatchKit.
//!
//! ```text
//! watcher (notify / poll, scans, settle, ZIP check, --once drain)
//!   -> intake (rule templates) -> store (sled: one record per build)
//!   -> scheduler (pure: per-app arrival order, worker limit, retry times)
//!   -> worker -> stages -> patchkit client (reqwest) -> PatchKit API v1
//! observers: store change feed -> observe -> control socket, systemd,
//!   metrics, webhook, logs
//! ```
//!
//! Layout, in pipeline order: `watcher` (every file decision), `intake`,
//! `store`, `state` (the build state machine), `scheduler`, `daemon` (the
//! async shell around the scheduler), `worker`, `stages`, `policy`,
//! `global_lock` (PatchKit's lock, shared with other publishers),
//! `patchkit` (the API client); around them `config`, `template`, `archive`,
//! `observe`, `control`, `systemd`, `metrics`, `webhook`, `logging`, `text`,
//! `dispose`, `check`, `clock`, `crashpoint`; `sandbox` (a strict PatchKit
//! emulator for tests, `sandbox` and `demo`) and `demo`. ARCHITECTURE.md has
//! the map and the invariants.

pub mod archive;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod crashpoint;
pub mod daemon;
pub mod demo;
pub mod dispose;
pub mod global_lock;
pub mod intake;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod patchkit;
pub mod policy;
pub mod recover;
pub mod sandbox;
pub mod scheduler;
pub mod service_unit;
pub mod stages;
pub mod state;
pub mod store;
pub mod systemd;
pub mod template;
pub mod text;
pub mod watcher;
pub mod webhook;
pub mod worker;
