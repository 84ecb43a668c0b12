//! patchkit-autopublish: a daemon that turns a build folder into a release
//! pipeline on PatchKit.
//!
//! ```text
//! watcher (notify + startup scan + settle) -> rules (TOML) -> validate ZIP
//!   -> store (sled: one record per build, a state machine) -> workers (tokio)
//!   -> patchkit client (reqwest) -> versions / uploads / jobs / publish
//! ```
//!
//! Layout: `config` (TOML to a validated `Config`), `patchkit` (the API
//! client), `sandbox` (a strict PatchKit emulator for tests, `sandbox` and
//! `demo`).

pub mod archive;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod crashpoint;
pub mod daemon;
pub mod demo;
pub mod dispose;
pub mod intake;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod patchkit;
pub mod policy;
pub mod recover;
pub mod rules;
pub mod sandbox;
pub mod stages;
pub mod state;
pub mod store;
pub mod watcher;
pub mod worker;
