//! Closing connections that start no request: the slow-client limit, with one timer per
//! connection.
//!
//! hyper's own header read timeout arms a timer when it starts reading each request head
//! and drops it when the head is in: an allocation and a timer wheel insert and removal per
//! request, 2–3% of the server's samples under load. This guard ticks once per half limit
//! per connection instead, and closes the connection when a whole tick passed with no
//! request started or finished and none in flight. A client therefore has between half the
//! limit and the whole limit after its last response (and the whole limit after
//! connecting) to send the next request's headers. A request in flight is never cut here,
//! from its headers to the last byte of its response: a slow upload is bounded by the body
//! read timeout, and a slow download keeps its request in flight until hyper has written or
//! dropped the response body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};

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

/// Runs `connection` until it goes a whole tick (`limit / 2`) with no request started or
/// finished and none in flight, or ends; on the former it drops it, closing the socket.
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
                let (started, finished) = (activity.started.load(Relaxed), activity.finished.load(Relaxed));
                // A request that started or finished within the tick is activity too: a
                // connection is never closed the moment a long response is done.
                let progress = started.wrapping_add(finished);
                if progress == seen && finished == started {
                    return None;
                }
                seen = progress;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_closed_within_the_limit() {
        let activity = Arc::new(Activity::default());
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        assert!(close_when_idle(never, &activity, LIMIT).await.is_none());
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
        assert!(close_when_idle(connection, &activity, LIMIT).await.is_none());
        let idle = started.elapsed() - LIMIT * 3;
        assert!(idle >= LIMIT / 2 && idle <= LIMIT, "closed {idle:?} after the body went out");
    }
}
