//! What the pipeline did, as Prometheus metrics: non-visits are counted, not noted.
//!
//! Made with the `prometheus` crate (decision 0010): its histograms are atomics, so the
//! redirect's own observation takes no lock. One [`Registry`] per process holds these and
//! the HTTP front end's metrics; `/metrics` encodes it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use shortlinks_core::AccountId;

use crate::classify::NotVisit;
use crate::sink_keys::SinkKeys;

/// Pipeline metrics, shared by its tasks; read by `/metrics`.
pub struct Stats {
    registry: Registry,
    /// When this process started counting.
    started: std::time::Instant,
    /// Clicks handed over by redirects: counted once the queue has taken them, so a click
    /// refused (a stopped pipeline, a failed outbox) is not among them.
    pub(crate) clicks_recorded: IntCounter,
    /// Clicks settled by the writer's screen, never written: not visits, or repeats of a
    /// visit this node remembers (see `screen`).
    pub(crate) clicks_screened: IntCounter,
    /// Clicks durably in the outbox.
    pub(crate) clicks_persisted: IntCounter,
    /// Clicks the dispatcher has finished with.
    pub(crate) clicks_dispatched: IntCounter,
    /// Clicks in outbox records that were copies of another in the same lease (a store
    /// write that timed out and was carried out later, then retried): dropped.
    pub(crate) clicks_copied: IntCounter,
    /// Clicks whose link no longer exists.
    pub(crate) unknown_links: IntCounter,
    /// Visits that became notes.
    pub(crate) notes_written: IntCounter,
    /// Visits within the dedup window of an earlier one.
    pub(crate) duplicate_visits: IntCounter,
    /// Visit marks swept from the ledger once they could no longer matter.
    pub(crate) visit_marks_forgotten: IntCounter,
    clicks_waiting: IntGauge,
    not_visits: IntCounterVec,
    sink_families: SinkFamilies,
    /// Read from the store by [`crate::backlog`], per queue.
    pub(crate) queue_entries: IntGaugeVec,
    pub(crate) queue_oldest_age: GaugeVec,
    /// Each sink's keys and metrics.
    sinks: Mutex<Vec<(SinkKeys, Arc<SinkStats>)>>,
}

/// The families of every sink's metrics, labelled `sink` and `account` (empty for a sink
/// serving every account).
struct SinkFamilies {
    delivered: IntCounterVec,
    failed_attempts: IntCounterVec,
    dead_lettered: IntCounterVec,
    restricted: IntCounterVec,
    account_refusals: IntCounterVec,
    copies_skipped: IntCounterVec,
    state: IntGaugeVec,
    paused_until: IntGaugeVec,
    dead_letters: IntGaugeVec,
    delivery_seconds: HistogramVec,
    batch_notes: HistogramVec,
    click_to_note_seconds: HistogramVec,
}

/// Registers a metric; the names are ours and distinct, so this cannot fail.
fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("metric names are distinct");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help).expect("a valid metric"))
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"))
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric"))
}

/// A histogram family on `registry`; for the HTTP front end's too.
pub fn histograms(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, HistogramVec::new(opts, labels).expect("a valid metric"))
}

const SINK: &[&str] = &["sink", "account"];

impl Default for Stats {
    fn default() -> Self {
        let r = Registry::new();
        let sink_families = SinkFamilies {
            delivered: counters(&r, "shortlinks_sink_delivered_total", "Notes a sink took.", SINK),
            failed_attempts: counters(
                &r,
                "shortlinks_sink_failed_attempts_total",
                "Failed delivery attempts, each retried.",
                SINK,
            ),
            dead_lettered: counters(&r, "shortlinks_sink_dead_lettered_total", "Notes a sink refused for good.", SINK),
            restricted: counters(
                &r,
                "shortlinks_sink_restricted_total",
                "Answers restricting the integration's access (each pauses the sink).",
                SINK,
            ),
            account_refusals: counters(
                &r,
                "shortlinks_sink_account_refused_total",
                "Answers refusing the account as a whole, no note in particular (each pauses the sink).",
                SINK,
            ),
            copies_skipped: counters(
                &r,
                "shortlinks_sink_copies_skipped_total",
                "Copies of notes in the sink's queue, not sent again.",
                SINK,
            ),
            state: gauges(
                &r,
                "shortlinks_sink_state",
                "A sink's state on this node: 1 for the state it is in.",
                &["sink", "account", "state"],
            ),
            paused_until: gauges(
                &r,
                "shortlinks_sink_paused_until_seconds",
                "Until when a paused or refused sink waits (Unix time; 0: it does not).",
                SINK,
            ),
            dead_letters: gauges(
                &r,
                "shortlinks_sink_dead_letters",
                "Notes in a sink's dead-letter queue, read from the store.",
                SINK,
            ),
            delivery_seconds: histograms(
                &r,
                "shortlinks_sink_delivery_duration_seconds",
                "How long a sink's delivery attempt took, whatever its outcome.",
                SINK,
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            batch_notes: histograms(
                &r,
                "shortlinks_sink_batch_notes",
                "Notes per delivery attempt.",
                SINK,
                &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            ),
            click_to_note_seconds: histograms(
                &r,
                "shortlinks_click_to_note_seconds",
                "From a click to its note delivered by a sink (the note hold included).",
                SINK,
                &[1.0, 5.0, 15.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0],
            ),
        };
        let not_visits =
            counters(&r, "shortlinks_not_visits_total", "Clicks that were not visits, by reason.", &["reason"]);
        // Every reason from the start, at zero: a series that appears only once it moves
        // makes `rate()` miss its first increase.
        for why in NotVisit::ALL {
            not_visits.with_label_values(&[why.name()]);
        }
        let clicks_waiting = IntGauge::new(
            "shortlinks_clicks_waiting",
            "Clicks this process put in the outbox and has not dispatched yet: held until their note_hold is over, or queued.",
        )
        .expect("a valid metric");
        Self {
            clicks_recorded: counter(&r, "shortlinks_clicks_recorded_total", "Clicks handed over by redirects."),
            clicks_screened: counter(
                &r,
                "shortlinks_clicks_screened_total",
                "Clicks settled before the outbox: not visits, or remembered repeats.",
            ),
            clicks_persisted: counter(&r, "shortlinks_clicks_persisted_total", "Clicks durably in the outbox."),
            clicks_dispatched: counter(&r, "shortlinks_clicks_dispatched_total", "Clicks the dispatcher finished."),
            clicks_copied: counter(
                &r,
                "shortlinks_clicks_copies_dropped_total",
                "Clicks in outbox records that copied another record of the same lease.",
            ),
            unknown_links: counter(&r, "shortlinks_clicks_unknown_link_total", "Clicks on links that no longer exist."),
            notes_written: counter(&r, "shortlinks_notes_written_total", "Visits that became notes."),
            duplicate_visits: counter(&r, "shortlinks_visits_deduplicated_total", "Repeat visits within the window."),
            visit_marks_forgotten: counter(
                &r,
                "shortlinks_visit_marks_forgotten_total",
                "Visit marks swept from the ledger after their window.",
            ),
            clicks_waiting: registered(&r, clicks_waiting),
            not_visits,
            sink_families,
            queue_entries: gauges(
                &r,
                "shortlinks_queue_entries",
                "Entries in a queue, read from the store: clicks (the outbox), a sink's notes, dead letters.",
                &["queue"],
            ),
            queue_oldest_age: registered(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "shortlinks_queue_oldest_age_seconds",
                        "Age of the oldest click or note waiting in a queue, read from the store (0: empty).",
                    ),
                    &["queue"],
                )
                .expect("a valid metric"),
            ),
            sinks: Mutex::default(),
            started: std::time::Instant::now(),
            registry: r,
        }
    }
}

/// This process's figures since it started ([`Stats::summary`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Clicks handed over by redirects.
    pub clicks_recorded: u64,
    /// Clicks settled before the outbox.
    pub clicks_screened: u64,
    /// Clicks the dispatcher finished.
    pub clicks_dispatched: u64,
    /// Visits that became notes.
    pub notes_written: u64,
    /// Repeat visits within the dedup window.
    pub repeats: u64,
    /// Clicks that were not visits, by reason (those with any).
    pub not_visits: Vec<(String, u64)>,
    /// Each sink this process runs.
    pub sinks: Vec<SinkSummary>,
}

/// One sink in a [`Summary`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkSummary {
    /// `<name>` or `<name>:<account>`.
    pub label: String,
    /// Its state on this node.
    pub state: String,
    /// Notes its receiver took.
    pub delivered: u64,
    /// Failed attempts, each retried.
    pub failed_attempts: u64,
    /// Notes refused for good.
    pub dead_lettered: u64,
    /// Its last few failures: when (Unix seconds) and why, oldest first.
    pub last_errors: Vec<(u64, String)>,
}

/// What an operator needs to know of a sink: whether it is delivering, and if not, whose
/// move it is. Kept by the sink's worker on this node, from the receiver's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkState {
    /// Delivering (or idle, with nothing known against it).
    Connected,
    /// Paused by the receiver's own limits (amoCRM: restricted, 403), until a time.
    Paused,
    /// The receiver does not take our credentials: someone must connect it again.
    NeedsReconnect,
    /// The receiver refused the account as a whole (its rights or subscription), paused
    /// until a time; the notes wait.
    Refused,
    /// The connection was removed on the receiver's side (amoCRM: uninstalled); the notes
    /// wait until it is connected again or purged.
    Disconnected,
}

impl SinkState {
    /// Every state, in the order of their numbers.
    pub const ALL: [SinkState; 5] =
        [Self::Connected, Self::Paused, Self::NeedsReconnect, Self::Refused, Self::Disconnected];

    /// Its name in metrics and in `/readyz`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Paused => "paused",
            Self::NeedsReconnect => "needs_reconnect",
            Self::Refused => "refused",
            Self::Disconnected => "disconnected",
        }
    }
}

/// Metrics of one sink: children of the families in [`Stats`], and its state.
pub(crate) struct SinkStats {
    /// Notes the sink took.
    pub(crate) delivered: IntCounter,
    /// Failed attempts (each retried).
    pub(crate) failed_attempts: IntCounter,
    /// Notes refused for good, moved to the sink's dead-letter queue.
    pub(crate) dead_lettered: IntCounter,
    /// Answers saying the receiver restricted our access (each a long pause).
    pub(crate) restricted: IntCounter,
    /// Answers refusing the account as a whole (each a long pause).
    pub(crate) account_refusals: IntCounter,
    /// Copies of notes in the sink's queue (of one in the same batch, or of one it handed
    /// on lately), not sent again.
    pub(crate) copies_skipped: IntCounter,
    /// How long each delivery attempt took.
    pub(crate) delivery_seconds: Histogram,
    /// Notes per attempt.
    pub(crate) batch_notes: Histogram,
    /// From each delivered note's click to its delivery.
    pub(crate) click_to_note_seconds: Histogram,
    /// Notes in its dead-letter queue (read from the store).
    pub(crate) dead_letters: IntGauge,
    /// One gauge per state, in the order of [`SinkState::ALL`].
    states: [IntGauge; SinkState::ALL.len()],
    paused_until_seconds: IntGauge,
    /// The last few failures, with when (Unix seconds), oldest first.
    last_errors: Mutex<std::collections::VecDeque<(u64, String)>>,
    /// The sink's state, as its place in [`SinkState::ALL`].
    state: std::sync::atomic::AtomicU8,
    /// Until when a pause lasts, in Unix milliseconds (0: none).
    until_ms: std::sync::atomic::AtomicU64,
}

impl SinkStats {
    /// Records the sink's state, paused for `pause` from now if given.
    pub(crate) fn set_state(&self, state: SinkState, pause: Option<Duration>) {
        let until = pause.map_or(0, |p| shortlinks_core::Timestamp::now().0.saturating_add(p.as_millis() as u64));
        self.until_ms.store(until, Relaxed);
        let place = SinkState::ALL.iter().position(|s| *s == state).unwrap_or(0);
        self.state.store(place as u8, Relaxed);
        for (i, gauge) in self.states.iter().enumerate() {
            gauge.set(i64::from(i == place));
        }
        let paused = self.paused_until_ms().map_or(0, |ms| ms / 1000);
        self.paused_until_seconds.set(i64::try_from(paused).unwrap_or(i64::MAX));
    }

    /// Failures kept for the console.
    const LAST_ERRORS: usize = 5;

    /// Records why an attempt failed.
    pub(crate) fn failed(&self, why: &str) {
        let mut errors = self.last_errors.lock();
        if errors.len() == Self::LAST_ERRORS {
            errors.pop_front();
        }
        errors.push_back((shortlinks_core::Timestamp::now().as_secs(), why.to_owned()));
    }

    /// Records one delivery attempt of `notes`, which took `took`; `delivered` if the
    /// receiver took them.
    pub(crate) fn attempted(&self, notes: &[shortlinks_core::model::Note], took: Duration, delivered: bool) {
        self.delivery_seconds.observe(took.as_secs_f64());
        self.batch_notes.observe(notes.len() as f64);
        if delivered {
            self.delivered.inc_by(notes.len() as u64);
            let now = shortlinks_core::Timestamp::now().0;
            for note in notes {
                let waited_ms = now.saturating_sub(note.created_at.0);
                self.click_to_note_seconds.observe(waited_ms as f64 / 1000.0);
            }
        }
    }

    /// The sink's state.
    pub(crate) fn state(&self) -> SinkState {
        SinkState::ALL.get(usize::from(self.state.load(Relaxed))).copied().unwrap_or(SinkState::Connected)
    }

    /// Until when a paused or refused sink waits (Unix milliseconds); `None` in other states.
    pub(crate) fn paused_until_ms(&self) -> Option<u64> {
        let paused = matches!(self.state(), SinkState::Paused | SinkState::Refused);
        Some(self.until_ms.load(Relaxed)).filter(|&until| paused && until > 0)
    }
}

impl Stats {
    /// Where every metric of this process is registered: the HTTP front end adds its own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a click that is not a visit.
    pub(crate) fn not_visit(&self, why: NotVisit) {
        self.not_visits.with_label_values(&[why.name()]).inc();
    }

    /// Clicks handed over by redirects and taken by the queue.
    pub fn clicks_recorded(&self) -> u64 {
        self.clicks_recorded.get()
    }

    /// Clicks the dispatcher has finished with.
    pub fn clicks_dispatched(&self) -> u64 {
        self.clicks_dispatched.get()
    }

    /// How many clicks were not visits for this reason.
    pub fn not_visits(&self, why: NotVisit) -> u64 {
        self.not_visits.with_label_values(&[why.name()]).get()
    }

    /// Registers the metrics of the sink `name` serving `account` (or every account).
    pub(crate) fn sink(&self, name: &'static str, account: Option<AccountId>) -> Arc<SinkStats> {
        let account_label = account.map(|a| a.0.to_string()).unwrap_or_default();
        let labels = [name, account_label.as_str()];
        let f = &self.sink_families;
        let counters = Arc::new(SinkStats {
            delivered: f.delivered.with_label_values(&labels),
            failed_attempts: f.failed_attempts.with_label_values(&labels),
            dead_lettered: f.dead_lettered.with_label_values(&labels),
            restricted: f.restricted.with_label_values(&labels),
            account_refusals: f.account_refusals.with_label_values(&labels),
            copies_skipped: f.copies_skipped.with_label_values(&labels),
            delivery_seconds: f.delivery_seconds.with_label_values(&labels),
            batch_notes: f.batch_notes.with_label_values(&labels),
            click_to_note_seconds: f.click_to_note_seconds.with_label_values(&labels),
            dead_letters: f.dead_letters.with_label_values(&labels),
            states: SinkState::ALL.map(|s| f.state.with_label_values(&[name, &account_label, s.name()])),
            paused_until_seconds: f.paused_until.with_label_values(&labels),
            last_errors: Mutex::default(),
            state: Default::default(),
            until_ms: Default::default(),
        });
        counters.set_state(SinkState::Connected, None);
        self.sinks.lock().push((SinkKeys::new(name, account), counters.clone()));
        counters
    }

    /// The keys of every sink this process runs.
    pub fn sink_keys(&self) -> Vec<SinkKeys> {
        self.sinks.lock().iter().map(|(keys, _)| keys.clone()).collect()
    }

    /// Every sink's keys and metrics, for the backlog's reader.
    pub(crate) fn sinks(&self) -> Vec<(SinkKeys, Arc<SinkStats>)> {
        self.sinks.lock().clone()
    }

    /// This process's figures since it started, for `shortlinks status`.
    pub fn summary(&self) -> Summary {
        let not_visits = NotVisit::ALL
            .iter()
            .map(|why| (why.name().to_owned(), self.not_visits(*why)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let sinks = self
            .sinks()
            .into_iter()
            .map(|(keys, s)| SinkSummary {
                label: keys.label,
                state: s.state().name().to_owned(),
                delivered: s.delivered.get(),
                failed_attempts: s.failed_attempts.get(),
                dead_lettered: s.dead_lettered.get(),
                last_errors: s.last_errors.lock().iter().cloned().collect(),
            })
            .collect();
        Summary {
            uptime_secs: self.started.elapsed().as_secs(),
            clicks_recorded: self.clicks_recorded.get(),
            clicks_screened: self.clicks_screened.get(),
            clicks_dispatched: self.clicks_dispatched.get(),
            notes_written: self.notes_written.get(),
            repeats: self.duplicate_visits.get(),
            not_visits,
            sinks,
        }
    }

    /// Every metric in Prometheus' text format (version 0.0.4).
    pub fn render(&self) -> String {
        // Written and not yet dispatched by this process: the hold before a note, and any
        // backlog of its own (the store's whole backlog is `shortlinks_queue_entries`).
        let waiting = self.clicks_persisted.get().saturating_sub(self.clicks_dispatched.get());
        self.clicks_waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Notes the sink `name` serving `account` delivered since this process started, if
    /// it runs here.
    pub fn delivered(&self, name: &str, account: Option<AccountId>) -> Option<u64> {
        let sinks = self.sinks.lock();
        sinks.iter().find(|(k, _)| k.name == name && k.account == account).map(|(_, s)| s.delivered.get())
    }

    /// One line per sink: its labels, its state, and until when it is paused, for `/readyz`.
    pub fn sink_states(&self) -> Vec<String> {
        let sinks = self.sinks.lock();
        sinks
            .iter()
            .map(|(keys, s)| {
                let labels = match keys.account {
                    None => format!("sink=\"{}\"", keys.name),
                    Some(account) => format!("sink=\"{}\",account=\"{}\"", keys.name, account.0),
                };
                let state = s.state().name();
                match s.paused_until_ms() {
                    Some(until) => format!("{labels}: {state} until {} (Unix time)", until / 1000),
                    None => format!("{labels}: {state}"),
                }
            })
            .collect()
    }
}
