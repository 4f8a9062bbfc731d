//! Time slices for the pipeline's loops, which share the runtime's threads with the
//! redirects.
//!
//! A loop that yields after a fixed count of items yields as often under load as when idle:
//! each yield puts it behind every task waiting to run (under a flood of redirects, one per
//! connection), so a backlog drains at a trickle while the redirects take nearly all the
//! turns. A loop that yields once it has run for a slice holds a thread no longer than that,
//! whatever an item costs, and gets work done between its turns.

use std::time::{Duration, Instant};

/// How long a loop runs before it gives the thread back: a redirect waits at most this long
/// behind it.
const SLICE: Duration = Duration::from_micros(250);

/// A loop's running time since it last gave the thread back.
pub(crate) struct TimeSlice {
    since: Instant,
}

impl TimeSlice {
    /// A slice starting now: at the start of a loop, or just after an await.
    pub(crate) fn start() -> Self {
        Self { since: Instant::now() }
    }

    /// Gives the thread back if the slice is used up, and starts a new one.
    pub(crate) async fn tick(&mut self) {
        if self.since.elapsed() >= SLICE {
            tokio::task::yield_now().await;
            self.since = Instant::now();
        }
    }
}
