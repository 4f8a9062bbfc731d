//! Note sinks. The journal is written by the dispatcher itself; every other sink has its own
//! durable queue and its own worker, so a slow or failing sink delays only itself.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use shortlinks_core::model::Note;
use shortlinks_core::store::RecordQueues;
use shortlinks_core::Store;
use tokio::sync::{watch, Notify};

use crate::stats::SinkStats;

mod amocrm;
mod http;
mod webhook;

pub use amocrm::AmoCrmSink;
pub use http::HttpClient;
pub use webhook::{signature, WebhookSink};

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: a timeout, a connection error, a 5xx, a 429.
    #[error("{reason}")]
    Retry {
        /// What happened.
        reason: String,
        /// How long the receiver asked us to wait, if it did.
        after: Option<Duration>,
    },
    /// Never going to work as it is (a 400 for this note): set aside, not retried.
    #[error("{0}")]
    Permanent(String),
}

/// Somewhere notes go.
pub trait NoteSink: Send + Sync + 'static {
    /// A short stable name: its queue is `sink:<name>`, its dead letters `dead:<name>`.
    fn name(&self) -> &'static str;

    /// Delivers one note. Must be idempotent by note id: a note may come again after a crash.
    fn deliver(&self, note: &Note) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Exponential backoff with jitter between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_millis(200), max: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`: doubling, capped, then a random point in its
    /// upper half so that many nodes do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self.base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX)).min(self.max);
        let mut random = [0u8; 8];
        let fraction = match getrandom::getrandom(&mut random) {
            Ok(()) => (u64::from_le_bytes(random) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 0.5,
        };
        full.mul_f64(0.5 + fraction / 2.0)
    }
}

/// A receiver's `Retry-After` is honoured up to this; beyond it is more likely a mistake.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

pub(crate) fn queue_of(name: &str) -> String {
    format!("sink:{name}")
}

/// The worker of one sink: deliver its queue in order, retrying each note until it is taken.
pub(crate) async fn run_sink<S: Store, K: NoteSink>(
    store: S,
    sink: K,
    retry: RetryPolicy,
    wake: Arc<Notify>,
    stats: Arc<SinkStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let queue = queue_of(sink.name());
    let dead = format!("dead:{}", sink.name());
    while !*shutdown.borrow() {
        let batch = match store.lease_records::<Note>(&queue, 64).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(sink = sink.name(), error = %e, "cannot read the sink's queue");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        for (id, note) in batch {
            let mut attempt = 0;
            loop {
                match sink.deliver(&note).await {
                    Ok(()) => {
                        stats.delivered.fetch_add(1, Relaxed);
                        break;
                    }
                    Err(SinkError::Permanent(reason)) => {
                        tracing::warn!(sink = sink.name(), note = note.id, %reason, "note refused for good; kept in {dead}");
                        stats.dead_lettered.fetch_add(1, Relaxed);
                        if let Err(e) = store.push_records(&dead, &[&note]).await {
                            tracing::error!(error = %e, "cannot keep a refused note");
                        }
                        break;
                    }
                    Err(SinkError::Retry { reason, after }) => {
                        stats.failed_attempts.fetch_add(1, Relaxed);
                        let delay = after.map_or_else(|| retry.delay(attempt), |a| a.min(MAX_RETRY_AFTER));
                        tracing::warn!(sink = sink.name(), note = note.id, %reason, ?delay, "delivery failed; will retry");
                        attempt += 1;
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            _ = shutdown.changed() => return, // the note stays queued
                        }
                    }
                }
            }
            if let Err(e) = store.remove(&queue, vec![id]).await {
                tracing::error!(sink = sink.name(), error = %e, "cannot remove a delivered note; it will be sent again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = RetryPolicy { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        for attempt in 0..40 {
            let full = (100u64 << attempt.min(20)).min(2000);
            let d = policy.delay(attempt).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d} not in [{}, {full}]", full / 2);
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }
}
