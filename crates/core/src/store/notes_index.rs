//! The in-memory index of `notes.log`: each entity's notes, found by hash, listed in order.
//!
//! Every note an append writes is looked up (is it a redelivered copy?) and then indexed.
//! In a campaign nearly every note is on a contact of its own, so with an ordered map each
//! was two walks down a tree of a million entities, a cache miss per level: most of the
//! append's time. Here both are a hash probe. Listings want entities in order; they are
//! rare, so the order is kept lazily: new entities are pushed unsorted and sorted into
//! place when a listing needs the order (a merge of two runs, not a full sort).

use std::collections::HashMap;

use foldhash::fast::FixedState;

use super::frame::Slot;

/// An entity as the index orders it: account, type tag, id. Integers compare faster than
/// the 17-byte key prefix they stand for, in the same order.
pub(super) type Entity = (u64, u8, u64);

/// One note in the index: its order within its entity, and where its frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NoteSlot {
    pub(super) at: u64,
    pub(super) id: u64,
    pub(super) slot: Slot,
}

impl NoteSlot {
    fn order(&self) -> (u64, u64) {
        (self.at, self.id)
    }

    /// The bytes its frame takes in the log.
    pub(super) fn frame_bytes(&self) -> u64 {
        self.slot.len() as u64 + super::frame::HEADER
    }
}

/// Notes by entity, each entity's in (time, id) order.
#[derive(Default)]
pub(super) struct NotesIndex {
    by_entity: HashMap<Entity, Vec<NoteSlot>, FixedState>,
    /// Every entity with notes, once: in order up to `sorted`, then as they came.
    order: Vec<Entity>,
    sorted: usize,
    /// How many notes, of every entity.
    notes: usize,
}

impl NotesIndex {
    /// Whether the note `(at, id)` of `entity` is indexed.
    pub(super) fn contains(&self, entity: &Entity, at: u64, id: u64) -> bool {
        self.by_entity.get(entity).is_some_and(|notes| notes.binary_search_by_key(&(at, id), NoteSlot::order).is_ok())
    }

    /// Indexes a note, unless it already is.
    pub(super) fn insert(&mut self, entity: Entity, note: NoteSlot) {
        let notes = self.by_entity.entry(entity).or_insert_with(|| {
            self.order.push(entity);
            Vec::with_capacity(1)
        });
        match notes.last() {
            // Appends come nearly in time order: the common case is a push.
            Some(last) if last.order() >= note.order() => {
                if let Err(i) = notes.binary_search_by_key(&note.order(), NoteSlot::order) {
                    notes.insert(i, note);
                    self.notes += 1;
                }
            }
            _ => {
                notes.push(note);
                self.notes += 1;
            }
        }
    }

    /// How many notes it holds.
    pub(super) fn len(&self) -> usize {
        self.notes
    }

    /// Every note, entities in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Entity, NoteSlot)> + '_ {
        self.by_entity.iter().flat_map(|(&entity, notes)| notes.iter().map(move |&n| (entity, n)))
    }

    /// Drops every note whose frame is before `offset`, and the entities left with none:
    /// what a newer index on disk holds now.
    pub(super) fn keep_from(&mut self, offset: u64) {
        self.drop_where(|n| n.slot.offset() < offset);
    }

    /// Drops an entity and its notes; how many notes it had, and the bytes of their frames.
    pub(super) fn remove(&mut self, entity: &Entity) -> (usize, u64) {
        let Some(notes) = self.by_entity.remove(entity) else { return (0, 0) };
        self.notes -= notes.len();
        let (sorted, unsorted) = self.order.split_at(self.sorted);
        if let Ok(i) = sorted.binary_search(entity) {
            self.order.remove(i);
            self.sorted -= 1;
        } else if let Some(i) = unsorted.iter().position(|e| e == entity) {
            self.order.remove(self.sorted + i);
        }
        (notes.len(), notes.iter().map(NoteSlot::frame_bytes).sum())
    }

    /// Drops every note made before `at`, and the entities left with none; how many
    /// notes, and the bytes of their frames.
    pub(super) fn forget_before(&mut self, at: u64) -> (usize, u64) {
        self.drop_where(|n| n.at < at)
    }

    /// Drops the notes `gone` picks, and the entities left with none; how many notes, and
    /// the bytes of their frames.
    fn drop_where(&mut self, gone: impl Fn(&NoteSlot) -> bool) -> (usize, u64) {
        let (mut count, mut bytes) = (0, 0);
        self.by_entity.retain(|_, notes| {
            notes.retain(|n| {
                let drop = gone(n);
                if drop {
                    count += 1;
                    bytes += n.frame_bytes();
                }
                !drop
            });
            !notes.is_empty()
        });
        if count > 0 {
            self.notes -= count;
            let by_entity = &self.by_entity;
            let sorted_kept = self.order[..self.sorted].iter().filter(|e| by_entity.contains_key(e)).count();
            self.order.retain(|e| by_entity.contains_key(e));
            self.sorted = sorted_kept;
        }
        (count, bytes)
    }

    pub(super) fn get(&self, entity: &Entity) -> Option<&[NoteSlot]> {
        self.by_entity.get(entity).map(Vec::as_slice)
    }

    /// Whether [`NotesIndex::of_kind`] can list without [`NotesIndex::settle`] first.
    pub(super) fn is_settled(&self) -> bool {
        self.sorted == self.order.len()
    }

    /// Sorts the entities that came since the last listing into place.
    pub(super) fn settle(&mut self) {
        if !self.is_settled() {
            self.order[self.sorted..].sort_unstable();
            // Two sorted runs: the stable sort finds them and merges them in one pass.
            self.order.sort();
            self.sorted = self.order.len();
        }
    }

    /// The notes of every entity of this account and type, entities in id order. Entities
    /// that came since the last [`NotesIndex::settle`] are not listed.
    pub(super) fn of_kind(&self, account: u64, kind: u8) -> impl Iterator<Item = (Entity, &[NoteSlot])> {
        let sorted = &self.order[..self.sorted];
        let from = sorted.partition_point(|e| *e < (account, kind, 0));
        sorted[from..]
            .iter()
            .take_while(move |e| (e.0, e.1) == (account, kind))
            .filter_map(|e| self.by_entity.get(e).map(|notes| (*e, notes.as_slice())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(at: u64, id: u64) -> NoteSlot {
        NoteSlot { at, id, slot: Slot::new(at * 100 + id, 10) }
    }

    fn ids(notes: &[NoteSlot]) -> Vec<u64> {
        notes.iter().map(|n| n.id).collect()
    }

    #[test]
    fn each_entity_keeps_its_notes_once_in_time_order() {
        let mut index = NotesIndex::default();
        let contact = (1, 1, 42);
        for (at, id) in [(20, 2), (10, 1), (30, 3), (20, 2), (10, 0)] {
            index.insert(contact, note(at, id));
        }
        assert_eq!(ids(index.get(&contact).unwrap()), [0, 1, 2, 3]);
        assert!(index.contains(&contact, 20, 2));
        assert!(!index.contains(&contact, 20, 3));
        assert!(!index.contains(&(1, 1, 43), 20, 2));
    }

    #[test]
    fn listings_give_one_account_and_type_in_entity_order_once_settled() {
        let mut index = NotesIndex::default();
        for (entity, id) in [((1, 1, 5), 1), ((2, 1, 1), 2), ((1, 1, 3), 3), ((1, 2, 1), 4), ((1, 1, 0), 5)] {
            index.insert(entity, note(id, id));
        }
        index.insert((1, 1, 3), note(9, 9));
        let listed = |index: &NotesIndex| index.of_kind(1, 1).flat_map(|(_, notes)| ids(notes)).collect::<Vec<_>>();
        assert!(!index.is_settled());
        assert!(listed(&index).is_empty(), "nothing is in order yet");
        index.settle();
        assert_eq!(listed(&index), [5, 3, 9, 1]);

        // A new entity between two known ones is listed in its place after the next settle.
        index.insert((1, 1, 4), note(7, 7));
        index.insert((1, 1, 9), note(8, 8));
        assert_eq!(listed(&index), [5, 3, 9, 1], "not before the settle");
        index.settle();
        assert_eq!(listed(&index), [5, 3, 9, 7, 1, 8]);
        assert!(index.is_settled());

        assert_eq!(index.remove(&(1, 1, 3)).0, 2);
        index.insert((1, 1, 6), note(6, 6));
        assert_eq!(index.remove(&(1, 1, 6)).0, 1, "from the part not yet sorted");
        assert_eq!(index.remove(&(1, 1, 3)).0, 0);
        index.insert((1, 1, 3), note(10, 10));
        index.settle();
        assert_eq!(listed(&index), [5, 10, 7, 1, 8], "an entity noted again after its erasure is listed once");
        let older = 5; // 5, 7 and 1 here, 2 in account 2, 4 in type 2
        assert_eq!(index.forget_before(8), (older, older as u64 * (10 + super::super::frame::HEADER)));
        assert_eq!(listed(&index), [10, 8]);
        assert!(index.get(&(1, 1, 0)).is_none(), "an entity left with no note is gone");
        assert_eq!(index.len(), 2);
        assert_eq!(index.iter().count(), 2);
    }

    #[test]
    fn keeping_from_an_offset_drops_the_notes_before_it_and_counts_the_rest() {
        let mut index = NotesIndex::default();
        for (entity, at) in [((1, 1, 1), 1), ((1, 1, 1), 5), ((1, 1, 2), 2), ((1, 1, 3), 6)] {
            index.insert(entity, note(at, at));
        }
        index.insert((1, 1, 1), note(5, 5));
        assert_eq!(index.len(), 4, "a note indexed twice counts once");
        index.keep_from(500); // frames at at * 100 + id
        index.settle();
        assert_eq!(index.len(), 2);
        let listed: Vec<_> = index.of_kind(1, 1).map(|(entity, notes)| (entity.2, ids(notes))).collect();
        assert_eq!(listed, [(1, vec![5]), (3, vec![6])]);
    }
}
