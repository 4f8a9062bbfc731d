//! Screening: what memory alone can tell about a click, before the outbox or the store.
//!
//! Only a first visit can become a note, so only a click that may be one needs to be
//! durable. The writer screens each group before appending it: a click that is not a
//! visit (a HEAD, a prefetch, a preview bot, a mail scanner) or that repeats a visit this
//! node has claimed within the window is counted and dropped, never written or read back.
//! Those are the floods (scanners click every link of a mailing; bots and double clicks
//! repeat), and they never touch the disk. The dispatcher screens again what it reads:
//! clicks written before it learnt a mark, and clicks from other nodes. A click a writer
//! passed carries its visit key, so there only the marks are looked at; a click an
//! earlier release wrote is classified and hashed again.
//!
//! Screening early drops nothing the dispatcher would keep. Classification depends on the
//! click alone. A remembered mark was claimed in the store before it was remembered, and
//! marks only move forward in time, so a click that a mark makes a repeat now is a repeat
//! for every later mark and for the store's ledger. If the node dies before the claiming
//! click's note is written, that click is still in the outbox and is dispatched again;
//! the repeat it covered would have made no note anyway.

use shortlinks_core::model::Click;
use shortlinks_core::store::VisitRules;

use crate::classify::{Classifier, NotVisit};
use crate::gateway::AddressRule;
use crate::note::NoteKeys;
use crate::recent::RecentMarks;
use crate::stats::Stats;

/// The screen the writer and the dispatcher share: one verdict cache and one set of marks.
pub(crate) struct Screen {
    pub(crate) classifier: Classifier,
    pub(crate) recent: RecentMarks,
    pub(crate) keys: NoteKeys,
    /// The dedup window, in milliseconds.
    pub(crate) window_ms: u64,
    /// What the store's ledger is asked to apply: the window and the cap per link.
    pub(crate) rules: VisitRules,
    /// One address, many contacts.
    pub(crate) address_rule: AddressRule,
    /// How long a click waits before it may become a note, in milliseconds.
    pub(crate) hold_ms: u64,
}

/// What screening found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not a visit: never a note.
    NotVisit(NotVisit),
    /// A repeat of a visit this node claimed within the window: never a note.
    Repeat,
    /// Possibly a first visit, with its visit key: the store's ledger decides.
    MaybeNew([u8; 16]),
}

impl Verdict {
    /// The visit key of a possible first visit. A settled click gives `None` and is
    /// counted: by its reason, or as a repeat.
    pub(crate) fn key_or_count(self, stats: &Stats) -> Option<[u8; 16]> {
        match self {
            Verdict::NotVisit(why) => stats.not_visit(why),
            Verdict::Repeat => {
                stats.duplicate_visits.inc();
            }
            Verdict::MaybeNew(key) => return Some(key),
        }
        None
    }
}

impl Screen {
    /// A screen with its own empty caches.
    pub(crate) fn new(keys: NoteKeys, window: std::time::Duration, notes_per_link: u32) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        Self {
            classifier: Classifier::default(),
            recent: RecentMarks::default(),
            keys,
            window_ms,
            rules: VisitRules { window_ms, notes_per_link },
            address_rule: AddressRule::default(),
            hold_ms: 0,
        }
    }

    /// How long after its time a sighting can still matter: a click it neighbours (within
    /// the rule's window either side) is dispatched a hold later; five minutes of slack for
    /// clicks that reach the dispatcher late. The ledger keeps sightings this long (TTL) and
    /// the dispatcher sweeps them after it.
    pub(crate) fn sighting_lifetime_ms(&self) -> u64 {
        self.address_rule.window_ms().saturating_mul(2).saturating_add(self.hold_ms).saturating_add(300_000)
    }

    /// Classifies first (most non-visits then cost no hash), unless a writer already did
    /// and left the visit key; then looks the visit up among the remembered marks,
    /// computing the note id only when a mark has the click's very millisecond.
    pub(crate) fn judge(&self, click: &Click) -> Verdict {
        let key = match click.visit_key {
            Some(key) => key,
            None => {
                if let Some(why) = self.classifier.classify(click) {
                    return Verdict::NotVisit(why);
                }
                self.keys.visit_key(click)
            }
        };
        if self.recent.is_duplicate(&key, click.at, || self.keys.note_id(click, &key), self.window_ms) {
            return Verdict::Repeat;
        }
        Verdict::MaybeNew(key)
    }
}

#[cfg(test)]
mod tests {
    use shortlinks_core::model::VisitMark;
    use shortlinks_core::store::conformance;

    use super::*;

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

    fn visit(at: u64) -> Click {
        Click { user_agent: Some(FIREFOX.into()), ..conformance::click("AAAAAAAAAAAA", at) }
    }

    #[test]
    fn a_bot_is_not_a_visit_a_remembered_visit_is_a_repeat_and_the_rest_may_be_new() {
        let screen = Screen::new(NoteKeys::new([1; 32], [2; 32]), HOUR, 5);
        let bot = Click { user_agent: Some("curl/8.5.0".into()), ..visit(1_000) };
        assert!(matches!(screen.judge(&bot), Verdict::NotVisit(_)));

        let first = visit(1_000);
        let Verdict::MaybeNew(key) = screen.judge(&first) else { panic!("a first visit") };
        assert_eq!(key, screen.keys.visit_key(&first));
        // Nothing is remembered until the dispatcher has claimed the visit.
        assert_eq!(screen.judge(&visit(2_000)), Verdict::MaybeNew(key));

        let note_id = screen.keys.note_id(&first, &key);
        screen.recent.remember(key, VisitMark { at: first.at, note_id });
        assert_eq!(screen.judge(&visit(2_000)), Verdict::Repeat, "within the window");
        assert_eq!(screen.judge(&visit(1_000 + 3_600_000)), Verdict::MaybeNew(key), "past the window");
        // The claiming click itself, read again after a crash, is not its own repeat.
        assert_eq!(screen.judge(&first), Verdict::MaybeNew(key));
    }

    /// What the writer passed reaches the dispatcher with its visit key: there it is not
    /// classified or hashed again, but still checked against the marks learnt since.
    /// A click without one (an earlier release's) is screened in full.
    #[test]
    fn a_click_the_writer_passed_is_only_checked_against_the_marks() {
        let screen = Screen::new(NoteKeys::new([1; 32], [2; 32]), HOUR, 5);
        let first = visit(1_000);
        let Verdict::MaybeNew(key) = screen.judge(&first) else { panic!("a first visit") };
        let written = Click { visit_key: Some(key), ..visit(2_000) };
        assert_eq!(screen.judge(&written), Verdict::MaybeNew(key));

        // The carried key is what is looked up: a key the hash would not give is taken as is.
        let other = Click { visit_key: Some([9; 16]), ..visit(2_000) };
        assert_eq!(screen.judge(&other), Verdict::MaybeNew([9; 16]));
        // And the classifier is not asked again: the writer already asked it.
        let bot = Click { user_agent: Some("curl/8.5.0".into()), visit_key: Some(key), ..visit(2_000) };
        assert_eq!(screen.judge(&bot), Verdict::MaybeNew(key));
        let unscreened_bot = Click { visit_key: None, ..bot };
        assert!(matches!(screen.judge(&unscreened_bot), Verdict::NotVisit(_)), "an earlier release's click");

        screen.recent.remember(key, VisitMark { at: first.at, note_id: screen.keys.note_id(&first, &key) });
        assert_eq!(screen.judge(&written), Verdict::Repeat, "a mark learnt after the writer passed it");
    }
}
