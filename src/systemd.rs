//! What the daemon tells systemd (`Type=notify-reload`): READY, RELOADING,
//! STATUS, WATCHDOG and STOPPING. Every call is a no-op outside systemd (no
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

    /// Says a reload started (`Type=notify-reload`): systemd keeps
    /// `systemctl reload` waiting until the next READY=1, sent once the new
    /// config is in force or refused. MONOTONIC_USEC tells systemd this
    /// reload began after its SIGHUP, not before.
    pub fn reloading(&mut self) {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        let _ = sd_notify::notify(&states);
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
