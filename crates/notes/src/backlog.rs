//! The backlog as the store holds it: each queue's entries and the age of its oldest item.
//!
//! This process's own counters cannot tell it: on Redis other nodes feed and drain the
//! same queues, and after a restart nothing held from before was counted. So `/metrics`
//! reads it from the store at every scrape ([`read`]), and `shortlinks status` likewise
//! ([`backlog`]): one depth and one look at the head per queue, cheap on every backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shortlinks_core::model::{Click, Note};
use shortlinks_core::store::{decode, CLICK_QUEUE};
use shortlinks_core::{Error, Store, Timestamp};

use crate::dispatch::DEAD_CLICKS;
use crate::sink_keys::SinkKeys;
use crate::stats::Stats;

/// A scrape waits this long for the store at most; past it, the gauges keep what they
/// last read (a slow store must not make the metrics page slow too).
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One queue's backlog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueBacklog {
    /// The queue's name (`clicks`, `dead:clicks`, `sink:<label>`, `dead:<label>`).
    pub queue: String,
    /// Its entries, leased or not.
    pub entries: u64,
    /// How long its oldest click or note has waited, in milliseconds: `None` when it is
    /// empty, and for dead letters (set aside, not waiting).
    pub oldest_ms: Option<u64>,
}

/// The queues to look at: the outbox and the clicks set aside, then each sink's notes and
/// dead letters.
pub fn queues<'k>(sinks: impl IntoIterator<Item = &'k SinkKeys>) -> Vec<String> {
    let mut out = vec![CLICK_QUEUE.to_owned(), DEAD_CLICKS.to_owned()];
    for keys in sinks {
        out.push(keys.queue());
        out.push(keys.dead_letters());
    }
    out
}

/// Each queue's backlog, as the store holds it.
pub async fn backlog<S: Store>(store: &S, queues: &[String]) -> Result<Vec<QueueBacklog>, Error> {
    let mut out = Vec::with_capacity(queues.len());
    for queue in queues {
        let entries = store.depth(queue).await?;
        let waiting = queue == CLICK_QUEUE || queue.starts_with("sink:");
        let first = match entries > 0 && waiting {
            true => store.peek(queue, 1).await?.into_iter().next(),
            false => None,
        };
        let at = first.and_then(|(_, bytes)| match queue == CLICK_QUEUE {
            true => Click::decode_group(&bytes).ok()?.iter().map(|c| c.at).min(),
            false => decode::<Note>(&bytes).ok().map(|n| n.created_at),
        });
        let oldest_ms = at.map(|at| Timestamp::now().0.saturating_sub(at.0));
        out.push(QueueBacklog { queue: queue.clone(), entries, oldest_ms });
    }
    Ok(out)
}

/// Reads every queue's backlog into `stats`' gauges, and each sink's dead letters.
pub async fn read<S: Store>(store: &S, stats: &Stats) {
    let sinks = stats.sinks();
    let names = queues(sinks.iter().map(|(keys, _)| keys));
    let figures = match tokio::time::timeout(READ_TIMEOUT, backlog(store, &names)).await {
        Ok(Ok(figures)) => figures,
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read the queues' backlog for the metrics"),
        Err(_) => return tracing::warn!("reading the queues' backlog for the metrics took too long"),
    };
    for figure in &figures {
        stats.queue_entries.with_label_values(&[&figure.queue]).set(gauge(figure.entries));
        if !figure.queue.starts_with("dead:") {
            let age = figure.oldest_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            stats.queue_oldest_age.with_label_values(&[&figure.queue]).set(age);
        }
    }
    for (keys, sink) in sinks {
        let dead = keys.dead_letters();
        if let Some(figure) = figures.iter().find(|f| f.queue == dead) {
            sink.dead_letters.set(gauge(figure.entries));
        }
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
