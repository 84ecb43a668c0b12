//! What the daemon tells systemd (`Type=notify`): READY, STATUS, WATCHDOG
//! and STOPPING. Every call is a no-op outside systemd (no
//! `NOTIFY_SOCKET`).

use std::time::{Duration, Instant};

/// The daemon's side of the notify protocol.
#[derive(Default)]
pub struct Systemd {
    /// The last STATUS= sent, so an unchanged line is not sent again.
    last_status: String,
    /// When the watchdog was last fed.
    last_watchdog: Option<Instant>,
}

impl Systemd {
    /// The daemon is up: the store is open, the watcher runs.
    pub fn ready(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    /// Sends STATUS= when it changed.
    pub fn status(&mut self, status: String) {
        if status != self.last_status {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    /// Feeds the watchdog at half its interval.
    pub fn watchdog(&mut self, interval: Duration) {
        let due = self
            .last_watchdog
            .is_none_or(|at| at.elapsed() >= interval / 2);
        if due {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_watchdog = Some(Instant::now());
        }
    }

    /// The daemon is stopping.
    pub fn stopping(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
}
