//! What tests of every crate share (the `testing` feature; never in the binary): waiting
//! on an event rather than on time.

use std::future::Future;
use std::time::Duration;

/// Polls `condition` every 20 ms until it holds; fails, naming `what`, after `limit`. The
/// one way tests wait for something that happens on its own time: the limit is a bound
/// for a loaded machine, never a guess at how long it takes.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "waited {limit:?} for this in vain: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
