//! The overview's figures per minute, kept in memory for a day.
//!
//! Counters only say "so many since start"; a chart needs them per minute. A task takes
//! the totals once a minute and keeps the differences: 1 440 minutes, a few dozen
//! kilobytes. They start with the process (a restart starts an empty chart); the store
//! holds no history of its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shortlinks_notes::stats::{Stats, Summary};

/// Minutes kept: a day.
pub(crate) const KEPT: usize = 1440;

/// One minute's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Minute {
    /// Its start, in Unix seconds.
    pub(crate) at: u64,
    /// Clicks handed over by redirects.
    pub(crate) clicks: u64,
    /// Visits that became notes.
    pub(crate) noted: u64,
    /// Notes the sinks delivered.
    pub(crate) delivered: u64,
}

/// The totals a minute is the difference of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    clicks: u64,
    noted: u64,
    delivered: u64,
}

impl Totals {
    pub(crate) fn of(summary: &Summary) -> Self {
        Self {
            clicks: summary.clicks_recorded,
            noted: summary.notes_written,
            delivered: summary.sinks.iter().map(|s| s.delivered).sum(),
        }
    }

    /// What happened from `earlier` to these totals, as the minute starting `at`.
    fn since(self, earlier: Totals, at: u64) -> Minute {
        Minute {
            at,
            clicks: self.clicks.saturating_sub(earlier.clicks),
            noted: self.noted.saturating_sub(earlier.noted),
            delivered: self.delivered.saturating_sub(earlier.delivered),
        }
    }
}

#[derive(Default)]
struct Kept {
    minutes: VecDeque<Minute>,
    /// The totals at the last sample, and when it was taken (Unix seconds).
    last: (Totals, u64),
}

/// The last day's minutes.
#[derive(Default)]
pub(crate) struct History {
    kept: Mutex<Kept>,
}

impl History {
    /// Samples `stats` every minute, for ever.
    pub(crate) async fn run(self: Arc<Self>, stats: Arc<Stats>) {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            self.sample(Totals::of(&stats.summary()), shortlinks_core::Timestamp::now().as_secs());
        }
    }

    /// Takes the totals at `now`: the first sample is the baseline, each later one a minute.
    pub(crate) fn sample(&self, totals: Totals, now: u64) {
        let mut kept = self.kept.lock();
        let (last, since) = kept.last;
        if since > 0 {
            kept.minutes.push_back(totals.since(last, since));
            while kept.minutes.len() > KEPT {
                kept.minutes.pop_front();
            }
        }
        kept.last = (totals, now);
    }

    /// The kept minutes, oldest first, then the minute under way (what happened since the
    /// last sample, up to `totals`).
    pub(crate) fn minutes(&self, totals: Totals) -> Vec<Minute> {
        let kept = self.kept.lock();
        let (last, since) = kept.last;
        let mut out: Vec<Minute> = kept.minutes.iter().copied().collect();
        out.push(totals.since(last, since));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(clicks: u64, noted: u64, delivered: u64) -> Totals {
        Totals { clicks, noted, delivered }
    }

    #[test]
    fn each_minute_is_the_difference_of_two_samples_and_a_day_is_kept() {
        let history = History::default();
        history.sample(totals(5, 2, 1), 1_000);
        history.sample(totals(15, 6, 4), 1_060);
        let minutes = history.minutes(totals(16, 6, 4));
        assert_eq!(minutes[0], Minute { at: 1_000, clicks: 10, noted: 4, delivered: 3 });
        assert_eq!(minutes[1], Minute { at: 1_060, clicks: 1, noted: 0, delivered: 0 }, "the minute under way");
        for i in 0..2 * KEPT as u64 {
            history.sample(totals(16 + i, 6, 4), 1_120 + 60 * i);
        }
        let minutes = history.minutes(totals(0, 0, 0));
        assert_eq!(minutes.len(), KEPT + 1);
        assert!(minutes.windows(2).all(|w| w[0].at < w[1].at), "oldest first");
    }
}
