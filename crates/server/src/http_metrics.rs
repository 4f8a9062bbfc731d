//! The HTTP front end's histograms, on the pipeline's registry (one `/metrics` page).

use std::time::{Duration, Instant};

use prometheus::local::LocalHistogram;
use prometheus::{Histogram, HistogramVec, Registry};
use shortlinks_notes::stats::histograms;

/// Redirect buckets: from the cache-hit answer (tens of microseconds) to a slow store.
const REDIRECT_BUCKETS: &[f64] =
    &[0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// API buckets: a create of 250 links writes and syncs; a token check may wait on the store.
const API_BUCKETS: &[f64] = &[0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Request latency by where it was answered.
pub(crate) struct HttpMetrics {
    lane: Histogram,
    hyper: Histogram,
    api: HistogramVec,
}

impl HttpMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let redirects = histograms(
            registry,
            "shortlinks_redirect_duration_seconds",
            "Time to answer GET or HEAD /{code}, by the server that answered (the redirect lane or hyper).",
            &["server"],
            REDIRECT_BUCKETS,
        );
        let api = histograms(
            registry,
            "shortlinks_api_request_duration_seconds",
            "Time to answer an API request, by route and status.",
            &["route", "status"],
            API_BUCKETS,
        );
        Self { lane: redirects.with_label_values(&["lane"]), hyper: redirects.with_label_values(&["hyper"]), api }
    }

    /// A redirect answered by hyper, begun at `started`.
    pub(crate) fn hyper_redirect(&self, started: Instant) {
        self.hyper.observe(started.elapsed().as_secs_f64());
    }

    /// Where one lane connection times its redirects.
    pub(crate) fn lane_timings(&self) -> LaneTimings {
        LaneTimings { local: self.lane.local(), flushed: None }
    }

    /// Redirects answered so far: by the lane, by hyper.
    pub(crate) fn redirects(&self) -> (u64, u64) {
        (self.lane.get_sample_count(), self.hyper.get_sample_count())
    }

    /// An API request to `path`, answered with `status`, begun at `started`.
    pub(crate) fn api(&self, path: &str, status: u16, started: Instant) {
        // Routes, not paths: a label per contact id would grow without bound.
        let route = if path == "/api/v4/short_links" {
            "short_links"
        } else if path.starts_with("/api/v4/contacts/") {
            "contact_notes"
        } else {
            "other"
        };
        let digits = itoa_status(status);
        let status = std::str::from_utf8(&digits).unwrap_or("000");
        self.api.with_label_values(&[route, status]).observe(started.elapsed().as_secs_f64());
    }
}

/// How often a lane connection adds what it timed to the shared histogram.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One lane connection's redirect timings, added to the shared histogram on its first
/// redirect, then at most every [`FLUSH_EVERY`], and when the connection ends. Observed
/// straight into the shared histogram, every redirect paid for four atomic updates of
/// cache lines both runtime threads write (measured: 3–6% of the lane's throughput); here
/// it pays for none. A connection left idle holds at most a second of its timings until
/// its next request or its close (at the latest the header read timeout).
pub(crate) struct LaneTimings {
    local: LocalHistogram,
    flushed: Option<Instant>,
}

impl LaneTimings {
    /// A redirect begun at `started`, answered now.
    pub(crate) fn observe(&mut self, started: Instant) {
        let now = Instant::now();
        self.local.observe(now.duration_since(started).as_secs_f64());
        if self.flushed.is_none_or(|at| now.duration_since(at) >= FLUSH_EVERY) {
            self.local.flush();
            self.flushed = Some(now);
        }
    }
}

impl Drop for LaneTimings {
    fn drop(&mut self) {
        self.local.flush();
    }
}

/// A status code's three digits, without an allocation.
fn itoa_status(status: u16) -> [u8; 3] {
    let status = status.min(999);
    [b'0' + (status / 100) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]
}
