//! PatchKit's global lock: how this daemon shares an app with other
//! publishers (other daemons, PatchKit's `pkt` and Ruby tools, a person).
//!
//! Owns the locks this daemon holds and their refresh. A build asks
//! ([`GlobalLock::ensure`]) before every step from the draft lookup to the
//! publish; the first time it joins the queues of both resource names
//! PatchKit's tools use, `<secret>` (pkt) then `1/apps/<secret>` (the Ruby
//! tools), always in that order so no two publishers can each hold one.
//! Once both allow, the lock is held: one task asks again every
//! `lock_refresh` for every held lock, and a denial (the lock was lost, say
//! after a long network outage) cancels the hold's token so the build stops
//! before its next side effect and queues again. There is no release call
//! in PatchKit's API: [`GlobalLock::release`] stops refreshing and PatchKit
//! drops the owner after its time-out, as PatchKit's own tools do.
//!
//! A server without the endpoint (404) is told once, clearly, and builds go
//! on without the lock rather than stop.
//!
//! Knows the client and app secrets; nothing about the store or stages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::patchkit::{ApiError, Client, ErrorKind};

/// The resource names of `secret`'s lock, in the order they are taken.
pub fn resources(secret: &str) -> [String; 2] {
    [secret.to_owned(), format!("1/apps/{secret}")]
}

/// What a build may do now.
#[derive(Debug, Clone)]
pub enum Ensure {
    /// The lock is held; the token fires if it is lost.
    Held(CancellationToken),
    /// Someone else holds it; ask again after the refresh interval.
    Wait {
        /// The place in the queue of the first resource that denied.
        position: Option<u64>,
    },
    /// No lock: turned off in the config, or the server has none.
    Off,
}

/// The locks this daemon holds. Clones share them.
#[derive(Clone)]
pub struct GlobalLock {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    refresh: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The client of the last `ensure`, used by the refresh task (a key
    /// read again replaces it).
    client: Option<Client>,
    /// Held locks by app secret.
    holds: HashMap<String, Hold>,
    /// The server answered 404: it has no global lock.
    unsupported: bool,
}

struct Hold {
    owner: String,
    lost: CancellationToken,
    /// When its build ended. The lock is kept for one more refresh so the
    /// app's next build, when it is already waiting here, takes it over
    /// instead of queueing behind this daemon's own old owner until
    /// PatchKit's time-out.
    released: Option<std::time::Instant>,
}

impl GlobalLock {
    /// A keeper that takes the lock when `enabled`, refreshing every
    /// `refresh`.
    pub fn new(enabled: bool, refresh: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                enabled,
                refresh,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// How often held locks are refreshed and denied ones asked again.
    pub fn refresh_interval(&self) -> Duration {
        self.inner.refresh
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes (or confirms) the lock on `app` for `owner`.
    pub async fn ensure(
        &self,
        client: &Client,
        app: &str,
        owner: &str,
    ) -> Result<Ensure, ApiError> {
        if !self.inner.enabled {
            return Ok(Ensure::Off);
        }
        {
            let mut state = self.state();
            state.client = Some(client.clone());
            if state.unsupported {
                return Ok(Ensure::Off);
            }
            if let Some(hold) = state.holds.get_mut(app)
                && hold.owner == owner
                && !hold.lost.is_cancelled()
            {
                hold.released = None;
                return Ok(Ensure::Held(hold.lost.clone()));
            }
        }
        for resource in resources(app) {
            match client.acquire_lock(&resource, owner).await {
                Ok(answer) if answer.allowed() => {}
                Ok(answer) => {
                    return Ok(Ensure::Wait {
                        position: answer.queue_position,
                    });
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let mut state = self.state();
                    if !state.unsupported {
                        state.unsupported = true;
                        tracing::warn!(
                            "PatchKit answered 404 to POST /1/global_locks/acquire: this server \
                             has no global lock, so builds go on without it. Other publishers \
                             of the same apps (pkt, another daemon) are not kept out; set \
                             [patchkit] global_lock = false to silence this"
                        );
                    }
                    return Ok(Ensure::Off);
                }
                Err(e) => return Err(e),
            }
        }
        let lost = CancellationToken::new();
        let mut state = self.state();
        if let Some(old) = state.holds.insert(
            app.to_owned(),
            Hold {
                owner: owner.to_owned(),
                lost: lost.clone(),
                released: None,
            },
        ) && old.owner != owner
        {
            // Another build of ours held this app; it is over (one build
            // per app runs at a time), so its owner simply stops asking.
            old.lost.cancel();
        }
        tracing::info!(app = %app, "holding PatchKit's global lock on the app");
        Ok(Ensure::Held(lost))
    }

    /// `owner`'s build on `app` is over. Unless the app's next build takes
    /// the lock over ([`GlobalLock::handover`]) within one refresh
    /// interval, it is no longer refreshed and PatchKit lets it go after
    /// its time-out.
    pub fn release(&self, app: &str, owner: &str) {
        let mut state = self.state();
        if let Some(hold) = state.holds.get_mut(app)
            && hold.owner == owner
            && hold.released.is_none()
        {
            hold.released = Some(std::time::Instant::now());
        }
    }

    /// Every lock `owner` holds (its build's app and channels) is let go,
    /// as with [`GlobalLock::release`].
    pub fn release_all(&self, owner: &str) {
        let mut state = self.state();
        let now = std::time::Instant::now();
        for hold in state.holds.values_mut() {
            if hold.owner == owner && hold.released.is_none() {
                hold.released = Some(now);
            }
        }
    }

    /// The owner id of a lock on `app` this daemon still holds for a build
    /// that ended: the app's next build takes it over and so keeps the
    /// daemon's place.
    pub fn handover(&self, app: &str) -> Option<String> {
        let state = self.state();
        state
            .holds
            .get(app)
            .filter(|h| h.released.is_some() && !h.lost.is_cancelled())
            .map(|h| h.owner.clone())
    }

    /// The apps whose lock is held for a build now.
    pub fn held(&self) -> Vec<String> {
        let mut apps: Vec<String> = self
            .state()
            .holds
            .iter()
            .filter(|(_, h)| h.released.is_none())
            .map(|(app, _)| app.clone())
            .collect();
        apps.sort();
        apps
    }

    /// Asks again for every held lock, once. A denial marks the hold lost;
    /// an error keeps it (PatchKit's time-out is longer than one missed
    /// refresh, and the next one tells).
    pub async fn refresh_once(&self) {
        let (client, holds) = {
            let mut state = self.state();
            let Some(client) = state.client.clone() else {
                return;
            };
            // Locks of ended builds that no next build took over go.
            let refresh = self.inner.refresh;
            state.holds.retain(|app, h| {
                let keep = h.released.is_none_or(|at| at.elapsed() < refresh);
                if !keep {
                    tracing::debug!(app = %app, "no longer refreshing PatchKit's global lock");
                }
                keep
            });
            let holds: Vec<(String, String, CancellationToken)> = state
                .holds
                .iter()
                .map(|(app, h)| (app.clone(), h.owner.clone(), h.lost.clone()))
                .collect();
            (client, holds)
        };
        for (app, owner, lost) in holds {
            for resource in resources(&app) {
                match client.acquire_lock(&resource, &owner).await {
                    Ok(answer) if answer.allowed() => {}
                    Ok(answer) => {
                        tracing::warn!(
                            app = %app,
                            position = ?answer.queue_position,
                            "PatchKit's global lock on the app was lost (it was not refreshed \
                             in time, or PatchKit forgot it); the build stops before its next \
                             step and queues for the lock again"
                        );
                        lost.cancel();
                        let mut state = self.state();
                        if state.holds.get(&app).is_some_and(|h| h.owner == owner) {
                            state.holds.remove(&app);
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(
                            app = %app,
                            "could not refresh PatchKit's global lock: {e}; trying again in {}",
                            humantime::format_duration(self.inner.refresh)
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Refreshes held locks every interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.inner.enabled {
            return;
        }
        let mut tick = tokio::time::interval(self.inner.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.refresh_once().await,
            }
        }
    }
}

impl std::fmt::Debug for GlobalLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalLock")
            .field("enabled", &self.inner.enabled)
            .field("held", &self.held())
            .finish()
    }
}
