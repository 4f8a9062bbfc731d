//! Closing connections that start no request: the slow-client limit, with one timer per
//! connection.
//!
//! hyper's own header read timeout arms a timer when it starts reading each request head and
//! drops it when the head is in: an allocation and a timer wheel insert and removal per
//! request, about 3% of a redirect's CPU. This guard ticks once per half period per
//! connection instead, and closes the connection when a whole tick passed with no request
//! started and none in flight. A client therefore has between half the limit and the whole
//! limit, after its last request started (and the whole limit after connecting), to start
//! the next one; a request in flight (a slow upload) is never cut here: the body read
//! timeout bounds it.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// What one connection's requests have done, counted by its service function.
#[derive(Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

/// Marks a request in flight until dropped (also when the request is cancelled).
pub(crate) struct InFlight(Arc<Activity>);

impl Activity {
    /// Counts a request as started; it is in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Relaxed);
    }
}

/// Runs `connection` until it ends or goes a whole tick (`limit / 2`) without starting a
/// request while none is in flight; then drops it, which closes the socket.
pub(crate) async fn close_when_idle<F: Future>(
    connection: F,
    activity: &Activity,
    limit: Duration,
) -> Option<F::Output> {
    let period = (limit / 2).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection = std::pin::pin!(connection);
    // Connecting counts as activity: the first request gets the whole limit.
    let mut seen = u64::MAX;
    loop {
        tokio::select! {
            biased;
            output = &mut connection => return Some(output),
            _ = ticks.tick() => {
                let started = activity.started.load(Relaxed);
                if started == seen && activity.finished.load(Relaxed) == started {
                    return None;
                }
                seen = started;
            }
        }
    }
}
