//! Named points where the process can be made to die, for crash tests.
//!
//! A crash test sets `PATCHKIT_AUTOPUBLISH_CRASHPOINT=NAME` (or `NAME#N`
//! for the Nth time the point is reached, counting from 1) and the process
//! kills itself with SIGKILL at that point: no destructors, no flush, exactly
//! like `kill -9` or a power cut after the last write. Points sit right
//! after each durable state write and right after each API side effect
//! whose result is not yet written, the two windows every stage must
//! survive. Without the variable a point costs one relaxed atomic load.
//!
//! Knows nothing of the pipeline: stages name their points.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const ENV: &str = "PATCHKIT_AUTOPUBLISH_CRASHPOINT";

struct Armed {
    name: String,
    nth: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (name, nth) = match spec.split_once('#') {
                Some((name, n)) => (name.to_owned(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                nth,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Dies here if this point is armed and this is the armed occurrence.
pub fn hit(name: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name != name {
        return;
    }
    if armed.seen.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
        eprintln!(
            "crash point {name}#{} reached: killing the process",
            armed.nth
        );
        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
