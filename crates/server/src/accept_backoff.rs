//! Waiting out accept errors. They persist (EMFILE: out of descriptors) until something
//! closes, so a loop that retried at once would spin; one that gave up would stop serving
//! the connections it has.

use std::time::Duration;

/// The delay before the next accept: doubling from 5 ms to 1 s while accepts fail.
pub(crate) struct AcceptBackoff {
    delay: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Self { delay: Self::FIRST }
    }

    /// An accept succeeded: the next failure waits the shortest delay again.
    pub(crate) fn accepted(&mut self) {
        self.delay = Self::FIRST;
    }

    /// An accept on `listener` failed: logs it and waits, longer each time in a row.
    pub(crate) async fn failed(&mut self, error: &std::io::Error, listener: &str) {
        tracing::warn!(%error, backoff = ?self.delay, "{listener} accept failed");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
    }
}
