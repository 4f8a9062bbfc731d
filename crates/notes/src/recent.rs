//! The visit marks this node's dispatcher set lately: a front for the store's visit
//! ledger, read by the writer's screen too.
//!
//! A mark only ever moves forward in time, so a remembered mark that makes a visit a
//! duplicate is right whatever any other node did since; only visits that may be new go
//! to the store, whose compare-and-swap decides. Forgetting a mark only costs a store read.
//!
//! Why a table of its own: every click is looked up here, and under load the lookup in a
//! general hash map was most of the dispatcher's own time. Visit keys are keyed blake3
//! output, already uniform, so their first bytes pick a set of four slots (32 bytes each,
//! two cache lines). The table never grows: a new mark takes its set's empty slot or the
//! one with the oldest mark. A table that grows must now and then move every mark it holds
//! (a million in a campaign's hour), under the lock the writer takes for every click, and
//! on a runtime thread: that stalled redirects for tens of milliseconds.

use parking_lot::Mutex;
use shortlinks_core::model::VisitMark;
use shortlinks_core::Timestamp;

/// The marks, behind a lock that the writer and the dispatcher take, each briefly.
pub(crate) struct RecentMarks {
    table: Mutex<Table>,
}

impl Default for RecentMarks {
    fn default() -> Self {
        Self { table: Mutex::new(Table::with_slots(Self::SLOTS)) }
    }
}

impl RecentMarks {
    /// Marks kept at most: 32 MiB of slots, whose pages the system provides as marks
    /// arrive.
    const SLOTS: usize = 1 << 20;

    /// Whether a remembered mark makes this visit a repeat: the store's rule
    /// ([`decide_visit`](shortlinks_core::store::decide_visit)), asking for the note id
    /// only when it can matter. A redelivered click has its mark's very time, so a mark
    /// from another millisecond within the window settles it (unless two visits' 53-bit
    /// note ids collide, where this calls the later one a repeat and the store would not).
    pub(crate) fn is_duplicate(
        &self,
        key: &[u8; 16],
        at: Timestamp,
        note_id: impl FnOnce() -> u64,
        window_ms: u64,
    ) -> bool {
        let Some(mark) = self.table.lock().get(key) else { return false };
        at.0 < mark.at.0.saturating_add(window_ms) && (mark.at != at || mark.note_id != note_id())
    }

    /// Remembers the mark a visit set.
    pub(crate) fn remember(&self, key: [u8; 16], mark: VisitMark) {
        self.table.lock().insert(key, mark);
    }
}

/// Slots in a set.
const WAYS: usize = 4;

/// Sets of [`WAYS`] slots. A slot is a key's two halves, the mark's time and its note
/// id; the all-zero key marks an empty slot (a visit whose key is all zeros, a 2^-128
/// chance, is simply not remembered). Zeros throughout, so the allocation is the system's
/// zeroed pages, touched only when used.
struct Table {
    slots: Vec<[u64; 4]>,
}

const EMPTY: [u64; 2] = [0; 2];

fn halves(key: &[u8; 16]) -> [u64; 2] {
    let half = |i: usize| u64::from_le_bytes(key[i..i + 8].try_into().unwrap_or_default());
    [half(0), half(8)]
}

impl Table {
    /// A table of `slots` slots, rounded up to a power of two of at least one set.
    fn with_slots(slots: usize) -> Self {
        Self { slots: vec![[0u64; 4]; slots.next_power_of_two().max(WAYS)] }
    }

    /// The set `key` belongs to.
    fn set(&self, key: [u64; 2]) -> std::ops::Range<usize> {
        let sets = self.slots.len() / WAYS;
        let first = (key[0] as usize & (sets - 1)) * WAYS;
        first..first + WAYS
    }

    fn get(&self, key: &[u8; 16]) -> Option<VisitMark> {
        let key = halves(key);
        if key == EMPTY {
            return None;
        }
        let slot = self.slots[self.set(key)].iter().find(|slot| slot[..2] == key)?;
        Some(VisitMark { at: Timestamp(slot[2]), note_id: slot[3] })
    }

    /// Keeps a mark: in the key's own slot, else an empty one of its set, else in place of
    /// the set's oldest mark.
    fn insert(&mut self, key: [u8; 16], mark: VisitMark) {
        let key = halves(&key);
        if key == EMPTY {
            return;
        }
        let range = self.set(key);
        let set = &mut self.slots[range];
        let at = set
            .iter()
            .position(|slot| slot[..2] == key)
            .or_else(|| set.iter().position(|slot| slot[..2] == EMPTY))
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&i| set[i][2]).unwrap_or(0));
        set[at] = [key[0], key[1], mark.at.0, mark.note_id];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    /// Keys as the dispatcher makes them: uniform bytes.
    fn key(n: u64) -> [u8; 16] {
        let mut key = [0u8; 16];
        key.copy_from_slice(&blake3::hash(&n.to_le_bytes()).as_bytes()[..16]);
        key
    }

    fn mark(at: u64) -> VisitMark {
        VisitMark { at: Timestamp(at), note_id: at + 1 }
    }

    #[test]
    fn only_a_remembered_mark_within_the_window_is_a_duplicate() {
        let recent = RecentMarks::default();
        let id = |n: u64| move || n;
        assert!(!recent.is_duplicate(&[1; 16], Timestamp(10), id(7), HOUR), "unknown: ask the store");
        recent.remember([1; 16], VisitMark { at: Timestamp(10), note_id: 7 });
        assert!(recent.is_duplicate(&[1; 16], Timestamp(20), id(8), HOUR));
        assert!(recent.is_duplicate(&[1; 16], Timestamp(5), id(8), HOUR), "earlier than the mark");
        assert!(!recent.is_duplicate(&[1; 16], Timestamp(10), id(7), HOUR), "a redelivery is not a duplicate");
        assert!(recent.is_duplicate(&[1; 16], Timestamp(10), id(8), HOUR), "same millisecond, another click");
        assert!(!recent.is_duplicate(&[1; 16], Timestamp(10 + HOUR), id(9), HOUR), "after the window: ask the store");
        assert!(!recent.is_duplicate(&[2; 16], Timestamp(20), id(8), HOUR));
        let asked = std::cell::Cell::new(false);
        let note_id = || {
            asked.set(true);
            8
        };
        assert!(recent.is_duplicate(&[1; 16], Timestamp(20), note_id, HOUR));
        assert!(!asked.get(), "another millisecond needs no note id");
    }

    #[test]
    fn every_mark_is_found_and_a_newer_mark_replaces_an_older() {
        let mut table = Table::with_slots(1 << 16);
        for n in 0..1_000 {
            table.insert(key(n), mark(n));
        }
        for n in 0..1_000 {
            assert_eq!(table.get(&key(n)), Some(mark(n)), "{n}");
        }
        assert_eq!(table.get(&key(1_000)), None);
        table.insert(key(3), mark(900));
        assert_eq!(table.get(&key(3)), Some(mark(900)), "replaced");
        let kept = table.slots.iter().filter(|slot| slot[..2] != EMPTY).count();
        assert_eq!(kept, 1_000, "replaced, not added");
        table.insert([0; 16], mark(5));
        assert_eq!(table.get(&[0; 16]), None, "the empty key is never kept");
    }

    #[test]
    fn a_full_set_makes_room_by_dropping_its_oldest_mark_only() {
        let mut table = Table::with_slots(1 << 10);
        // Keys that share their first bytes fall in one set.
        let same_set = |n: u8| {
            let mut k = [7; 16];
            k[15] = n;
            k
        };
        let times = [50, 10, 40, 30];
        for (n, at) in (1..).zip(times) {
            table.insert(same_set(n), mark(at));
        }
        table.insert(key(1), mark(1));
        table.insert(same_set(9), mark(60));
        assert_eq!(table.get(&same_set(2)), None, "the oldest of the set went");
        for n in [1, 3, 4, 9] {
            assert!(table.get(&same_set(n)).is_some(), "{n} kept");
        }
        assert_eq!(table.get(&key(1)), Some(mark(1)), "another set is untouched, however old");
    }
}
