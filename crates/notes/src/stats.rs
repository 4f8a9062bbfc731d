//! Counters of what the pipeline did: non-visits are counted, not noted.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::classify::NotVisit;

/// Pipeline counters, shared by its tasks; read by `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// Clicks handed over by redirects: counted once the queue has taken them, so a click
    /// refused (a stopped pipeline, a failed outbox) is not among them.
    pub(crate) clicks_recorded: AtomicU64,
    /// Clicks settled by the writer's screen, never written: not visits, or repeats of a
    /// visit this node remembers (see `screen`).
    pub(crate) clicks_screened: AtomicU64,
    /// Clicks durably in the outbox.
    pub(crate) clicks_persisted: AtomicU64,
    /// Clicks the dispatcher has finished with.
    pub(crate) clicks_dispatched: AtomicU64,
    /// Clicks in outbox records that were copies of another in the same lease (a store
    /// write that timed out and was carried out later, then retried): dropped.
    pub(crate) clicks_copied: AtomicU64,
    /// Clicks whose link no longer exists.
    pub(crate) unknown_links: AtomicU64,
    /// Visits that became notes.
    pub(crate) notes_written: AtomicU64,
    /// Visits within the dedup window of an earlier one.
    pub(crate) duplicate_visits: AtomicU64,
    /// Visit marks swept from the ledger once they could no longer matter.
    pub(crate) visit_marks_forgotten: AtomicU64,
    not_visits: [AtomicU64; NotVisit::ALL.len()],
    /// Each sink's counters, with their labels (`sink="…"`, and `account="…"` if it serves one).
    sinks: Mutex<Vec<(String, Arc<SinkStats>)>>,
}

/// A sink's labels in metrics: `sink="…"`, and `account="…"` if it serves one.
fn labels(name: &str, account: Option<shortlinks_core::AccountId>) -> String {
    match account {
        None => format!("sink=\"{name}\""),
        Some(account) => format!("sink=\"{name}\",account=\"{}\"", account.0),
    }
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

/// Counters of one sink.
#[derive(Default)]
pub(crate) struct SinkStats {
    /// Notes the sink took.
    pub(crate) delivered: AtomicU64,
    /// Failed attempts (each retried).
    pub(crate) failed_attempts: AtomicU64,
    /// Notes refused for good, moved to the sink's dead-letter queue.
    pub(crate) dead_lettered: AtomicU64,
    /// Answers saying the receiver restricted our access (each a long pause).
    pub(crate) restricted: AtomicU64,
    /// Answers refusing the account as a whole (each a long pause).
    pub(crate) account_refusals: AtomicU64,
    /// Copies of notes in the sink's queue (of one in the same batch, or of one it handed
    /// on lately), not sent again.
    pub(crate) copies_skipped: AtomicU64,
    /// The sink's state, as its place in [`SinkState::ALL`].
    state: AtomicU8,
    /// Until when a pause lasts, in Unix milliseconds (0: none).
    until_ms: AtomicU64,
}

impl SinkStats {
    /// Records the sink's state, paused for `pause` from now if given.
    pub(crate) fn set_state(&self, state: SinkState, pause: Option<std::time::Duration>) {
        let until = pause.map_or(0, |p| shortlinks_core::Timestamp::now().0.saturating_add(p.as_millis() as u64));
        self.until_ms.store(until, Relaxed);
        self.state.store(SinkState::ALL.iter().position(|s| *s == state).unwrap_or(0) as u8, Relaxed);
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
    /// Counts a click that is not a visit.
    pub(crate) fn not_visit(&self, why: NotVisit) {
        self.not_visits[why as usize].fetch_add(1, Relaxed);
    }

    /// Clicks handed over by redirects and taken by the queue.
    pub fn clicks_recorded(&self) -> u64 {
        self.clicks_recorded.load(Relaxed)
    }

    /// Clicks the dispatcher has finished with.
    pub fn clicks_dispatched(&self) -> u64 {
        self.clicks_dispatched.load(Relaxed)
    }

    /// How many clicks were not visits for this reason.
    pub fn not_visits(&self, why: NotVisit) -> u64 {
        self.not_visits[why as usize].load(Relaxed)
    }

    /// Registers the counters of the sink `name` serving `account` (or every account).
    pub(crate) fn sink(&self, name: &str, account: Option<shortlinks_core::AccountId>) -> Arc<SinkStats> {
        let counters = Arc::new(SinkStats::default());
        self.sinks.lock().push((labels(name, account), counters.clone()));
        counters
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(
            "shortlinks_clicks_recorded_total",
            "Clicks handed over by redirects.",
            self.clicks_recorded.load(Relaxed),
        );
        counter(
            "shortlinks_clicks_screened_total",
            "Clicks settled before the outbox: not visits, or remembered repeats.",
            self.clicks_screened.load(Relaxed),
        );
        counter(
            "shortlinks_clicks_persisted_total",
            "Clicks durably in the outbox.",
            self.clicks_persisted.load(Relaxed),
        );
        counter(
            "shortlinks_clicks_dispatched_total",
            "Clicks the dispatcher finished.",
            self.clicks_dispatched.load(Relaxed),
        );
        counter(
            "shortlinks_clicks_copies_dropped_total",
            "Clicks in outbox records that copied another record of the same lease.",
            self.clicks_copied.load(Relaxed),
        );
        counter(
            "shortlinks_clicks_unknown_link_total",
            "Clicks on links that no longer exist.",
            self.unknown_links.load(Relaxed),
        );
        counter("shortlinks_notes_written_total", "Visits that became notes.", self.notes_written.load(Relaxed));
        counter(
            "shortlinks_visits_deduplicated_total",
            "Repeat visits within the window.",
            self.duplicate_visits.load(Relaxed),
        );
        counter(
            "shortlinks_visit_marks_forgotten_total",
            "Visit marks swept from the ledger after their window.",
            self.visit_marks_forgotten.load(Relaxed),
        );
        // Written and not yet dispatched: the hold before a note, and any backlog.
        let waiting = self.clicks_persisted.load(Relaxed).saturating_sub(self.clicks_dispatched.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP shortlinks_clicks_waiting Clicks in the outbox, not yet dispatched: held until their note_hold is over, or queued.\n# TYPE shortlinks_clicks_waiting gauge\nshortlinks_clicks_waiting {waiting}"
        );
        let _ = writeln!(out, "# HELP shortlinks_not_visits_total Clicks that were not visits, by reason.");
        let _ = writeln!(out, "# TYPE shortlinks_not_visits_total counter");
        for why in NotVisit::ALL {
            let _ = writeln!(out, "shortlinks_not_visits_total{{reason=\"{}\"}} {}", why.name(), self.not_visits(why));
        }
        let sinks = self.sinks.lock();
        for (metric, help) in [
            ("shortlinks_sink_delivered_total", "Notes a sink took."),
            ("shortlinks_sink_failed_attempts_total", "Failed delivery attempts, each retried."),
            ("shortlinks_sink_dead_lettered_total", "Notes a sink refused for good."),
            (
                "shortlinks_sink_restricted_total",
                "Answers restricting the integration's access (each pauses the sink).",
            ),
            (
                "shortlinks_sink_account_refused_total",
                "Answers refusing the account as a whole, no note in particular (each pauses the sink).",
            ),
            ("shortlinks_sink_copies_skipped_total", "Copies of notes in the sink's queue, not sent again."),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (labels, s) in sinks.iter() {
                let value = match metric {
                    "shortlinks_sink_delivered_total" => s.delivered.load(Relaxed),
                    "shortlinks_sink_failed_attempts_total" => s.failed_attempts.load(Relaxed),
                    "shortlinks_sink_dead_lettered_total" => s.dead_lettered.load(Relaxed),
                    "shortlinks_sink_restricted_total" => s.restricted.load(Relaxed),
                    "shortlinks_sink_account_refused_total" => s.account_refusals.load(Relaxed),
                    _ => s.copies_skipped.load(Relaxed),
                };
                let _ = writeln!(out, "{metric}{{{labels}}} {value}");
            }
        }
        let _ = writeln!(out, "# HELP shortlinks_sink_state A sink's state on this node: 1 for the state it is in.");
        let _ = writeln!(out, "# TYPE shortlinks_sink_state gauge");
        for (labels, s) in sinks.iter() {
            for state in SinkState::ALL {
                let value = u8::from(s.state() == state);
                let _ = writeln!(out, "shortlinks_sink_state{{{labels},state=\"{}\"}} {value}", state.name());
            }
        }
        let _ = writeln!(
            out,
            "# HELP shortlinks_sink_paused_until_seconds Until when a paused or refused sink waits (Unix time; 0: it does not)."
        );
        let _ = writeln!(out, "# TYPE shortlinks_sink_paused_until_seconds gauge");
        for (labels, s) in sinks.iter() {
            let until = s.paused_until_ms().map_or(0, |ms| ms / 1000);
            let _ = writeln!(out, "shortlinks_sink_paused_until_seconds{{{labels}}} {until}");
        }
        out
    }

    /// Notes the sink `name` serving `account` delivered since this process started, if
    /// it runs here.
    pub fn delivered(&self, name: &str, account: Option<shortlinks_core::AccountId>) -> Option<u64> {
        let labels = labels(name, account);
        self.sinks.lock().iter().find(|(l, _)| *l == labels).map(|(_, s)| s.delivered.load(Relaxed))
    }

    /// One line per sink: its labels, its state, and until when it is paused, for `/readyz`.
    pub fn sink_states(&self) -> Vec<String> {
        let sinks = self.sinks.lock();
        sinks
            .iter()
            .map(|(labels, s)| {
                let state = s.state().name();
                match s.paused_until_ms() {
                    Some(until) => format!("{labels}: {state} until {} (Unix time)", until / 1000),
                    None => format!("{labels}: {state}"),
                }
            })
            .collect()
    }
}
