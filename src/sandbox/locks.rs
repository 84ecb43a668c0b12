//! PatchKit's global lock as the sandbox serves it.
//!
//! Owns the lock queues: one FIFO queue of owners per resource name. An
//! owner joins the queue on its first `acquire` and keeps its place by
//! asking again before the time-out; the owner at the head is allowed,
//! every other one is denied with its position. There is no release: an
//! owner that stops asking drops out after the time-out, as on PatchKit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long an owner keeps its place without asking again, unless set.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(90);

/// Every resource's queue.
pub(crate) struct Locks {
    /// Owners that stop asking for this long lose their place.
    pub timeout: Duration,
    queues: BTreeMap<String, Vec<Holder>>,
}

struct Holder {
    owner: String,
    last_seen: Instant,
}

/// The answer to one `acquire`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// At the head of the queue.
    pub allowed: bool,
    /// 0 at the head, then 1, 2, ...
    pub position: usize,
}

/// One resource's queue, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The resource name as the clients sent it.
    pub resource: String,
    /// Owners in queue order; the first holds the lock.
    pub owners: Vec<String>,
}

impl Locks {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            queues: BTreeMap::new(),
        }
    }

    /// `owner` asks for `resource` at `now`: joins the queue or keeps its
    /// place.
    pub fn acquire(&mut self, resource: &str, owner: &str, now: Instant) -> Answer {
        self.expire(now);
        let queue = self.queues.entry(resource.to_owned()).or_default();
        let position = match queue.iter().position(|h| h.owner == owner) {
            Some(i) => {
                queue[i].last_seen = now;
                i
            }
            None => {
                queue.push(Holder {
                    owner: owner.to_owned(),
                    last_seen: now,
                });
                queue.len() - 1
            }
        };
        Answer {
            allowed: position == 0,
            position,
        }
    }

    /// Drops every owner that has not asked within the time-out.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        for queue in self.queues.values_mut() {
            queue.retain(|h| now.saturating_duration_since(h.last_seen) < timeout);
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// Forgets every queue (a restart of the service).
    pub fn clear(&mut self) {
        self.queues.clear();
    }

    /// Every non-empty queue, in resource order.
    pub fn info(&self) -> Vec<LockInfo> {
        self.queues
            .iter()
            .map(|(resource, q)| LockInfo {
                resource: resource.clone(),
                owners: q.iter().map(|h| h.owner.clone()).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_owner_holds_others_queue_in_order_and_expired_owners_drop_out() {
        let start = Instant::now();
        let mut locks = Locks::new(Duration::from_secs(10));
        assert_eq!(
            locks.acquire("r", "a", start),
            Answer {
                allowed: true,
                position: 0
            }
        );
        assert_eq!(locks.acquire("r", "b", start).position, 1);
        assert_eq!(locks.acquire("r", "c", start).position, 2);
        // Another resource has its own queue.
        assert!(locks.acquire("other", "c", start).allowed);
        // a keeps refreshing; b goes quiet and drops out; c moves up.
        let later = start + Duration::from_secs(8);
        assert!(locks.acquire("r", "a", later).allowed);
        assert_eq!(locks.acquire("r", "c", later).position, 2);
        let much_later = later + Duration::from_secs(9);
        assert_eq!(locks.acquire("r", "c", much_later).position, 1);
        // a stops refreshing: c holds it.
        let end = much_later + Duration::from_secs(10);
        assert!(locks.acquire("r", "c", end).allowed);
        assert_eq!(
            locks.info(),
            vec![LockInfo {
                resource: "r".into(),
                owners: vec!["c".into()]
            }]
        );
    }
}
