//! The rule "one address, many contacts", kept in constant space per address.
//!
//! A person follows their own links; an address that follows links of `contacts` different
//! contacts within `window` is a mail gateway, a scanner or a large NAT, and none of its
//! clicks within such a span is a visit. A gateway may make millions of clicks a minute from
//! one address, so an address's state must not grow with them: an [`AddressTally`] keeps
//! the latest sighting of its few most recent contacts and the spans in which the address
//! was a gateway, and answers a click with a look at those spans.
//!
//! Exactness: for sightings that arrive in time order, a click is inside a marked span
//! exactly when some span of `window` holding its time holds sightings of `contacts`
//! different contacts (each sighting of the rule's K-th most recent contact within `window`
//! of the newest marks `[newest - window, newest]`, and every such span is one of these).
//! A sighting that arrives after newer ones of at least K other contacts is counted only
//! toward later spans: clicks from several nodes reach the ledger a few milliseconds out
//! of order, which moves a span's edge by as much, never marks a person's click.
//!
//! The Redis backend runs the same steps in a script (`crates/redis/src/notes.rs`); the
//! conformance suite holds every backend to the same spans.

use std::time::Duration;

/// At least `contacts` different contacts within `window` from one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRule {
    /// How many contacts make a gateway (0: no such rule; at most
    /// [`AddressTally::MOST_CONTACTS`]).
    pub contacts: u32,
    /// Within how long.
    pub window: Duration,
}

impl Default for AddressRule {
    /// Three contacts within a minute.
    fn default() -> Self {
        Self { contacts: 3, window: Duration::from_secs(60) }
    }
}

impl AddressRule {
    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A span of time, both ends included, in which an address was a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewaySpan {
    /// Its first millisecond.
    pub from: crate::Timestamp,
    /// Its last millisecond.
    pub to: crate::Timestamp,
}

impl GatewaySpan {
    /// Whether a click at `at` falls in it.
    pub fn holds(&self, at: crate::Timestamp) -> bool {
        self.from <= at && at <= self.to
    }
}

/// What one address's sightings told, in constant space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressTally {
    /// Up to [`Self::MOST_CONTACTS`] different contacts, each with its latest sighting: the
    /// most recent ones, as `(at, contact)`, in no order.
    recent: Vec<(u64, u64)>,
    /// Disjoint spans `(from, to)` in time order, at most [`Self::MOST_SPANS`].
    spans: Vec<(u64, u64)>,
}

impl AddressTally {
    /// The most contacts a tally keeps, and so the largest `contacts` a rule may have.
    pub const MOST_CONTACTS: usize = 16;
    /// The most spans a tally keeps; the oldest go first. Every span is at least a window
    /// long, so this covers 64 windows of an address being a gateway on and off.
    pub const MOST_SPANS: usize = 64;

    /// Counts a sighting of `contact` at `at`; returns the span it marked, if any.
    pub fn sight(&mut self, contact: u64, at: crate::Timestamp, rule: AddressRule) -> Option<GatewaySpan> {
        self.remember(contact, at.0);
        let k = (rule.contacts as usize).min(Self::MOST_CONTACTS);
        if k == 0 || self.recent.len() < k {
            return None;
        }
        // On the stack: this runs for every sighting.
        let mut latest = [0u64; Self::MOST_CONTACTS];
        for (slot, &(at, _)) in latest.iter_mut().zip(&self.recent) {
            *slot = at;
        }
        let latest = &mut latest[..self.recent.len()];
        latest.sort_unstable_by(|a, b| b.cmp(a));
        let (newest, kth) = (latest[0], latest[k - 1]);
        (newest - kth <= rule.window_ms()).then(|| {
            let span = GatewaySpan {
                from: crate::Timestamp(newest.saturating_sub(rule.window_ms())),
                to: crate::Timestamp(newest),
            };
            self.mark(span);
            span
        })
    }

    /// Counts a sighting read back from a file together with the span it marked then.
    pub fn restore(&mut self, contact: u64, at: crate::Timestamp, marked: Option<GatewaySpan>) {
        self.remember(contact, at.0);
        if let Some(span) = marked {
            self.mark(span);
        }
    }

    /// The spans that overlap `from..=to`, in time order.
    pub fn spans(&self, from: crate::Timestamp, to: crate::Timestamp) -> impl Iterator<Item = GatewaySpan> + '_ {
        self.spans
            .iter()
            .filter(move |&&(start, end)| end >= from.0 && start <= to.0)
            .map(|&(start, end)| GatewaySpan { from: crate::Timestamp(start), to: crate::Timestamp(end) })
    }

    /// Forgets contacts last seen, and spans ended, before `before`; returns how many.
    pub fn forget(&mut self, before: crate::Timestamp) -> u64 {
        let had = self.recent.len() + self.spans.len();
        self.recent.retain(|&(at, _)| at >= before.0);
        self.spans.retain(|&(_, end)| end >= before.0);
        (had - self.recent.len() - self.spans.len()) as u64
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty() && self.spans.is_empty()
    }

    /// How many contacts and spans it holds (bounded by the two constants).
    pub fn len(&self) -> usize {
        self.recent.len() + self.spans.len()
    }

    /// Keeps `contact`'s latest time; past the limit the least recent contact goes (by time,
    /// then by contact, as Redis orders a sorted set's ties).
    fn remember(&mut self, contact: u64, at: u64) {
        if let Some(entry) = self.recent.iter_mut().find(|(_, c)| *c == contact) {
            entry.0 = entry.0.max(at);
            return;
        }
        self.recent.push((at, contact));
        if self.recent.len() > Self::MOST_CONTACTS {
            if let Some(oldest) = self.recent.iter().enumerate().min_by_key(|&(_, e)| *e).map(|(i, _)| i) {
                self.recent.swap_remove(oldest);
            }
        }
    }

    /// Adds a span, merged with those it touches.
    fn mark(&mut self, span: GatewaySpan) {
        let (mut from, mut to) = (span.from.0, span.to.0);
        self.spans.retain(|&(start, end)| {
            let touches = end >= from && start <= to;
            if touches {
                (from, to) = (from.min(start), to.max(end));
            }
            !touches
        });
        let at = self.spans.partition_point(|&(start, _)| start < from);
        self.spans.insert(at, (from, to));
        if self.spans.len() > Self::MOST_SPANS {
            self.spans.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    const RULE: AddressRule = AddressRule { contacts: 3, window: Duration::from_secs(60) };

    /// Feeds `(contact, at)` in order; returns whether each click falls in a span at the end.
    fn vetoed(rule: AddressRule, sightings: &[(u64, u64)]) -> Vec<bool> {
        let mut tally = AddressTally::default();
        for &(contact, at) in sightings {
            tally.sight(contact, Timestamp(at), rule);
        }
        sightings
            .iter()
            .map(|&(_, at)| tally.spans(Timestamp(at), Timestamp(at)).any(|s| s.holds(Timestamp(at))))
            .collect()
    }

    #[test]
    fn three_contacts_within_a_minute_is_a_gateway_for_every_click_in_it() {
        // Contacts 1..=5 within two seconds: each click, the first too.
        let gateway: Vec<(u64, u64)> = (1..=5).map(|c| (c, 1_000 + c * 400)).collect();
        assert_eq!(vetoed(RULE, &gateway), [true; 5]);
        // Two contacts: people sharing an office address.
        assert_eq!(vetoed(RULE, &[(1, 1_000), (2, 2_000)]), [false; 2]);
        // One person, many links of their own, and the same link again.
        assert_eq!(vetoed(RULE, &[(1, 1_000), (1, 1_500), (1, 30_000), (1, 30_001)]), [false; 4]);
        // An earlier click of a contact inside the span counts, though a later one is its latest.
        assert_eq!(vetoed(RULE, &[(1, 0), (1, 5_000), (2, 8_000), (3, 9_000)]), [true; 4]);
    }

    #[test]
    fn the_window_is_exact() {
        // Never three within one minute: 0 s, 59 s, 118 s.
        assert_eq!(vetoed(RULE, &[(1, 0), (2, 59_000), (3, 118_000)]), [false; 3]);
        // The third exactly one window after the first.
        assert_eq!(vetoed(RULE, &[(1, 0), (2, 30_000), (3, 60_000)]), [true; 3]);
        // A person's click a moment before a gateway's span is not in it.
        let spans = vetoed(RULE, &[(9, 10_000), (1, 70_001), (2, 70_002), (3, 70_003)]);
        assert_eq!(spans, [false, true, true, true]);
        assert_eq!(vetoed(AddressRule { contacts: 0, ..RULE }, &[(1, 0), (2, 1), (3, 2)]), [false; 3], "0: off");
    }

    #[test]
    fn a_million_sightings_keep_a_constant_size() {
        let mut tally = AddressTally::default();
        for n in 0..1_000_000u64 {
            tally.sight(n, Timestamp(1_000_000 + n / 20), RULE);
        }
        assert_eq!(tally.recent.len(), AddressTally::MOST_CONTACTS);
        assert_eq!(tally.spans(Timestamp(0), Timestamp(u64::MAX)).count(), 1, "one span, merged");
        assert!(tally.spans(Timestamp(1_000_000), Timestamp(1_000_000)).next().is_some());
        // A gateway on and off, a window apart each time: the oldest spans go.
        for n in 0..1_000u64 {
            let at = 10_000_000 + n * 200_000;
            for c in 0..3 {
                tally.sight(c, Timestamp(at + c), RULE);
            }
        }
        assert_eq!(tally.spans.len(), AddressTally::MOST_SPANS);
    }

    #[test]
    fn forgetting_drops_what_ended_before_and_a_restore_gives_the_same_tally() {
        let mut tally = AddressTally::default();
        let mut restored = AddressTally::default();
        for (contact, at) in [(1, 1_000), (2, 2_000), (3, 3_000), (4, 200_000)] {
            let marked = tally.sight(contact, Timestamp(at), RULE);
            restored.restore(contact, Timestamp(at), marked);
        }
        assert_eq!(tally, restored);
        assert_eq!(tally.len(), 5, "four contacts and a span");
        assert_eq!(tally.forget(Timestamp(3_001)), 4, "three contacts and the span");
        assert!(!tally.is_empty());
        assert_eq!(tally.forget(Timestamp(200_001)), 1);
        assert!(tally.is_empty());
    }
}
