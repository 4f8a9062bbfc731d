//! Closing connections that start no request (the slow-client limit) or do not read their
//! answers (the send timeout), with one timer per connection, kept in a watcher task of
//! its own.
//!
//! hyper's own header read timeout arms a timer when it starts reading each request head
//! and drops it when the head is in: an allocation and a timer wheel insert and removal per
//! request, 2–3% of the server's samples under load. The watcher ticks once per half limit
//! per connection instead, and closes the connection when a whole tick passed with no
//! request started or finished and none in flight. A client therefore has between half the
//! limit and the whole limit after its last response (and the whole limit after
//! connecting) to send the next request's headers. A request in flight is never cut here,
//! from its headers to the last byte of its response: a slow upload is bounded by the body
//! read timeout, and a slow download keeps its request in flight until hyper has written or
//! dropped the response body. A connection whose answer waits on the client to read is
//! not idle either: once one such wait has lasted the send timeout (see `client_socket`),
//! the watcher closes it, within one tick after.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};

/// What one connection's requests have done, counted by its service function.
#[derive(Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
    /// Counts each start and end of a write waiting on the client: odd while one waits.
    write_waits: AtomicU64,
}

/// Marks a request in flight until dropped (also when the request is cancelled).
pub(crate) struct InFlight(Arc<Activity>);

impl Activity {
    /// No request in flight: the connection is kept alive, or never sent one. `finished`
    /// is read first, so a request that starts meanwhile reads as busy, never as idle.
    pub(crate) fn is_idle(&self) -> bool {
        let finished = self.finished.load(Relaxed);
        self.started.load(Relaxed) == finished
    }

    /// Counts a request as started; it is in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// A write started or stopped waiting on the client.
    pub(crate) fn write_wait_changed(&self) {
        self.write_waits.fetch_add(1, Relaxed);
    }
}

/// The watcher's two limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// No request started or finished, none in flight, no answer waiting: see the header.
    pub(crate) idle: Duration,
    /// One write waiting on the client this long closes the connection.
    pub(crate) send: Duration,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Relaxed);
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
pub(crate) struct TrackedBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> TrackedBody<B> {
    /// `body`, in flight until dropped.
    pub(crate) fn new(body: B, in_flight: InFlight) -> Self {
        Self { body, _in_flight: in_flight }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Spawns `connection` as a task, watched by a second task that aborts it (dropping it,
/// which closes the socket) once it has been idle for half the idle limit, counted in
/// whole ticks, or one write has waited on the client for the send timeout. The watcher
/// ends with the connection.
///
/// The timer lives in the watcher, not beside the connection: a timer polled with the
/// connection would be polled again on every request, for nothing.
pub(crate) fn spawn_watched<F>(connection: F, activity: Arc<Activity>, timeouts: Timeouts) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (ended, ended_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ended = ended; // dropped with the connection, also when it is aborted
        connection.await
    });
    tokio::spawn(watch(activity, task.abort_handle(), timeouts, ended_rx));
    task
}

async fn watch(activity: Arc<Activity>, connection: AbortHandle, timeouts: Timeouts, mut ended: oneshot::Receiver<()>) {
    // A tick of half the shorter limit: with the defaults, half the idle limit, as before a
    // send timeout existed, and the send timeout is met within a tick.
    let period = (timeouts.idle.min(timeouts.send) / 2).max(Duration::from_millis(1));
    let ticks_for = |limit: Duration| limit.as_nanos().div_ceil(period.as_nanos()).max(1);
    let (idle_ticks, send_ticks) = (ticks_for(timeouts.idle / 2), ticks_for(timeouts.send));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Connecting counts as activity: the first request gets the whole limit.
    let (mut seen, mut idle_for) = (u64::MAX, 0);
    let (mut seen_waits, mut waiting_for) = (0, 0);
    loop {
        tokio::select! {
            biased;
            _ = &mut ended => return,
            _ = ticks.tick() => {
                let (started, finished) = (activity.started.load(Relaxed), activity.finished.load(Relaxed));
                let waits = activity.write_waits.load(Relaxed);
                let waiting = waits % 2 == 1;
                // The same wait as at the last tick: it has lasted at least one more tick.
                waiting_for = if waiting && waits == seen_waits { waiting_for + 1 } else { 0 };
                seen_waits = waits;
                if waiting_for >= send_ticks {
                    tracing::debug!("closing a connection whose client took no answer in time");
                    connection.abort();
                    return;
                }
                // A request that started or finished within the tick is activity too: a
                // connection is never closed the moment a long response is done.
                let progress = started.wrapping_add(finished).wrapping_add(waits);
                idle_for = if progress == seen && finished == started && !waiting { idle_for + 1 } else { 0 };
                seen = progress;
                if idle_for >= idle_ticks {
                    tracing::debug!("closing a connection that started no request in time");
                    connection.abort();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);
    const TIMEOUTS: Timeouts = Timeouts { idle: LIMIT, send: Duration::from_secs(30) };

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_closed_within_the_limit() {
        let activity = Arc::new(Activity::default());
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        let closed = spawn_watched(never, activity, TIMEOUTS).await.unwrap_err();
        assert!(closed.is_cancelled());
        assert_eq!(started.elapsed(), LIMIT, "connecting counts as activity: the whole limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_not_cut_until_its_response_body_is_dropped() {
        let activity = Arc::new(Activity::default());
        let in_flight = activity.begin();
        // The handler is done at once; the response body takes three limits to go out.
        let body = TrackedBody::new(http_body_util::Empty::<bytes::Bytes>::new(), in_flight);
        let connection = async move {
            tokio::time::sleep(LIMIT * 3).await;
            drop(body);
            std::future::pending::<()>().await
        };
        let started = tokio::time::Instant::now();
        assert!(spawn_watched(connection, activity, TIMEOUTS).await.unwrap_err().is_cancelled());
        let idle = started.elapsed() - LIMIT * 3;
        assert!(idle >= LIMIT / 2 && idle <= LIMIT, "closed {idle:?} after the body went out");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_does_not_take_closes_the_connection_after_the_send_timeout() {
        let activity = Arc::new(Activity::default());
        // No request in flight (hyper has the whole answer in its buffer), one write waiting.
        activity.write_wait_changed();
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        assert!(spawn_watched(never, activity, TIMEOUTS).await.unwrap_err().is_cancelled());
        let waited = started.elapsed();
        assert!(waited >= TIMEOUTS.send && waited <= TIMEOUTS.send + LIMIT / 2, "closed after {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_wait_and_proceed_are_activity() {
        let activity = Arc::new(Activity::default());
        let client = activity.clone();
        // A slow reader: each write waits 20 s (under the send timeout), then proceeds.
        let connection = async move {
            for _ in 0..4 {
                client.write_wait_changed();
                tokio::time::sleep(Duration::from_secs(20)).await;
                client.write_wait_changed();
            }
        };
        spawn_watched(connection, activity, TIMEOUTS).await.expect("never closed while it reads");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_takes_its_watcher_with_it() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let activity = Arc::new(Activity::default());
        let connection = tokio::time::sleep(LIMIT / 4);
        spawn_watched(connection, activity, TIMEOUTS).await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before, "the watcher outlived its connection");
    }
}
