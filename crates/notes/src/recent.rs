//! The visit marks this node's dispatcher set lately: a front for the store's visit
//! ledger, read by the writer's screen too.
//!
//! A mark only ever moves forward in time, so a remembered mark that makes a visit a
//! duplicate is right whatever any other node did since; only visits that may be new go
//! to the store, whose compare-and-swap decides. Bounded: past the limit, expired marks
//! are dropped, and if that is not enough, all (which only costs store reads).
//!
//! Why a table of its own: every click is looked up here, and under load the lookup in a
//! general hash map was most of the dispatcher's own time. Once the marks outgrow the CPU
//! caches it is two misses per click, the map's control bytes and then the entry. Visit
//! keys are keyed blake3 output, already uniform, so their first bytes are the index, and
//! a slot holds the key and the mark together (32 bytes, two to a cache line): one miss.

use parking_lot::Mutex;
use shortlinks_core::model::VisitMark;
use shortlinks_core::Timestamp;

/// The marks, behind a lock that the writer and the dispatcher take, each briefly.
pub(crate) struct RecentMarks {
    table: Mutex<Table>,
    limit: usize,
}

impl Default for RecentMarks {
    fn default() -> Self {
        Self::with_limit(Self::LIMIT)
    }
}

impl RecentMarks {
    /// Marks kept at most: 64 MiB of slots at this size.
    const LIMIT: usize = 1 << 20;

    fn with_limit(limit: usize) -> Self {
        Self { table: Mutex::new(Table::default()), limit }
    }

    /// Whether a remembered mark makes this visit a repeat: the store's rule
    /// ([`decide_visit`](shortlinks_core::store::decide_visit)), asking for the note id only when it can matter. A redelivered
    /// click has its mark's very time, so a mark from another millisecond within the window
    /// settles it (unless two visits' 53-bit note ids collide, where this calls the later
    /// one a repeat and the store would not).
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
    pub(crate) fn remember(&self, key: [u8; 16], mark: VisitMark, window_ms: u64) {
        let mut table = self.table.lock();
        if table.len >= self.limit {
            let newest = table.occupied().map(|slot| slot.mark.at.0).max().unwrap_or(0);
            table.retain(|m| newest.saturating_sub(m.at.0) < window_ms);
            if table.len >= self.limit {
                *table = Table::default();
            }
        }
        table.insert(key, mark);
    }
}

/// Open addressing with linear probing, at most half full. The all-zero key marks an
/// empty slot; a visit whose key is all zeros (a 2^-128 chance) is simply not remembered.
#[derive(Default)]
struct Table {
    /// A power of two long, or empty.
    slots: Vec<Slot>,
    len: usize,
}

#[derive(Clone, Copy)]
struct Slot {
    key: [u8; 16],
    mark: VisitMark,
}

const EMPTY: [u8; 16] = [0; 16];
const FIRST_SLOTS: usize = 1024;

impl Table {
    fn get(&self, key: &[u8; 16]) -> Option<VisitMark> {
        if *key == EMPTY {
            return None;
        }
        let slot = &self.slots[self.find(key)?];
        (slot.key == *key).then_some(slot.mark)
    }

    fn insert(&mut self, key: [u8; 16], mark: VisitMark) {
        if key == EMPTY {
            return;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.resize((self.slots.len() * 2).max(FIRST_SLOTS));
        }
        let Some(at) = self.find(&key) else { return };
        let slot = &mut self.slots[at];
        if slot.key == EMPTY {
            self.len += 1;
        }
        *slot = Slot { key, mark };
    }

    /// The slot holding `key`, else the empty slot where it would go; `None` only while
    /// the table has no slots.
    fn find(&self, key: &[u8; 16]) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut at = Self::home(key) & mask;
        // Never full (at most half), so the probe ends.
        while self.slots[at].key != *key && self.slots[at].key != EMPTY {
            at = (at + 1) & mask;
        }
        Some(at)
    }

    fn home(key: &[u8; 16]) -> usize {
        let mut first = [0u8; 8];
        first.copy_from_slice(&key[..8]);
        u64::from_le_bytes(first) as usize
    }

    fn occupied(&self) -> impl Iterator<Item = Slot> + '_ {
        self.slots.iter().copied().filter(|slot| slot.key != EMPTY)
    }

    fn retain(&mut self, keep: impl Fn(&VisitMark) -> bool) {
        let kept = self.occupied().filter(|slot| keep(&slot.mark)).collect();
        self.rebuild(self.slots.len(), kept);
    }

    fn resize(&mut self, slots: usize) {
        let all = self.occupied().collect();
        self.rebuild(slots, all);
    }

    fn rebuild(&mut self, slots: usize, marks: Vec<Slot>) {
        let empty = Slot { key: EMPTY, mark: VisitMark { at: Timestamp(0), note_id: 0 } };
        self.slots = vec![empty; slots];
        self.len = 0;
        for slot in marks {
            self.insert(slot.key, slot.mark);
        }
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
        recent.remember([1; 16], VisitMark { at: Timestamp(10), note_id: 7 }, HOUR);
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
    fn every_mark_is_found_as_the_table_grows_and_a_newer_mark_replaces_an_older() {
        let mut table = Table::default();
        for n in 0..50_000 {
            table.insert(key(n), mark(n));
        }
        // Keys that share their first bytes probe on past each other.
        let (a, b) = ([7; 16], {
            let mut k = [7; 16];
            k[15] = 8;
            k
        });
        table.insert(a, mark(1));
        table.insert(b, mark(2));
        assert_eq!(table.len, 50_002);
        assert!(table.slots.len() >= 2 * table.len && table.slots.len().is_power_of_two());
        for n in 0..50_000 {
            assert_eq!(table.get(&key(n)), Some(mark(n)), "{n}");
        }
        assert_eq!((table.get(&a), table.get(&b)), (Some(mark(1)), Some(mark(2))));
        assert_eq!(table.get(&key(50_000)), None);
        table.insert(key(3), mark(900));
        assert_eq!((table.get(&key(3)), table.len), (Some(mark(900)), 50_002), "replaced, not added");
        table.insert(EMPTY, mark(5));
        assert_eq!((table.get(&EMPTY), table.len), (None, 50_002), "the empty key is never kept");
    }

    #[test]
    fn past_the_limit_expired_marks_go_first_and_then_all() {
        let recent = RecentMarks::with_limit(1000);
        // 600 old marks, 400 within the hour before the newest.
        for n in 0..1000 {
            let at = if n < 600 { n } else { 10 * HOUR + n };
            recent.remember(key(n), mark(at), HOUR);
        }
        recent.remember(key(1000), mark(10 * HOUR + 1000), HOUR);
        let table = recent.table.lock();
        assert_eq!(table.len, 401);
        assert_eq!(table.get(&key(0)), None, "expired");
        assert_eq!(table.get(&key(999)), Some(mark(10 * HOUR + 999)), "kept");
        drop(table);

        // All within the window: nothing can be told apart, so all go.
        let recent = RecentMarks::with_limit(1000);
        for n in 0..1000 {
            recent.remember(key(n), mark(5 * HOUR + n), HOUR);
        }
        recent.remember(key(1000), mark(5 * HOUR + 1000), HOUR);
        let table = recent.table.lock();
        assert_eq!(table.len, 1);
        assert_eq!(table.get(&key(1000)), Some(mark(5 * HOUR + 1000)));
    }
}
