//! The notes' index in two tiers: the notes written lately in memory ([`NotesIndex`]), the
//! older ones on disk ([`ColdNotes`]), and the erasures and expiries that came after the
//! older ones were written, which hide them until the next index on disk leaves them out.
//!
//! The tiers never hold the same note: the disk holds the notes whose frames are before
//! its `covered` offset, memory the ones after. Writing a new index on disk merges both
//! (memory's up to an offset), and then memory drops what the disk now holds: memory holds
//! at most the notes written since the last index, whatever the number of notes kept.

use std::collections::HashMap;
use std::iter::Peekable;
use std::sync::Arc;

use foldhash::fast::FixedState;

use super::frame::Slot;
use super::notes_cold::{ColdNotes, ColdWriter, Entry, NoteKey};
use super::notes_index::{Entity, NoteSlot, NotesIndex};
use super::NotesQuery;
use crate::Error;

/// Every note of one log, in both tiers.
#[derive(Default)]
pub(super) struct Notes {
    pub(super) hot: NotesIndex,
    cold: Option<Arc<ColdNotes>>,
    /// Entities erased since the index on disk was written, by the erasure's offset.
    erased: HashMap<Entity, u64, FixedState>,
    /// Expiries since: the expiry's offset, and the time before which notes went.
    expired: Vec<(u64, u64)>,
}

impl Notes {
    pub(super) fn with_cold(cold: Option<ColdNotes>) -> Self {
        Self { cold: cold.map(Arc::new), ..Self::default() }
    }

    /// The notes held in memory.
    pub(super) fn hot_len(&self) -> usize {
        self.hot.len()
    }

    /// Notes before this time are hidden on disk.
    fn expired_before(&self) -> u64 {
        self.expired.iter().map(|&(_, before)| before).max().unwrap_or(0)
    }

    /// Whether an entry on disk is still listed.
    fn shown(&self, entry: &Entry) -> bool {
        entry.note.at >= self.expired_before() && !self.erased.contains_key(&entry.entity)
    }

    /// Whether the note is listed, in either tier.
    pub(super) fn contains(&self, entity: Entity, at: u64, id: u64) -> Result<bool, Error> {
        if self.hot.contains(&entity, at, id) {
            return Ok(true);
        }
        let Some(cold) = &self.cold else { return Ok(false) };
        let key = (entity, at, id);
        Ok(at >= self.expired_before() && !self.erased.contains_key(&entity) && cold.contains(key)?)
    }

    /// The notes of `entity` still listed, in time order.
    pub(super) fn of_entity(&self, entity: Entity) -> Result<Vec<NoteSlot>, Error> {
        let hot = self.hot.get(&entity).unwrap_or_default();
        let cold = match &self.cold {
            Some(cold) if !self.erased.contains_key(&entity) => cold.of_entity(entity)?,
            _ => Vec::new(),
        };
        if cold.is_empty() {
            return Ok(hot.to_vec());
        }
        let cold = cold.into_iter().filter(|e| self.shown(e)).map(Ok);
        let hot = hot.iter().map(|&note| Entry { entity, note });
        merged(cold, hot).map(|e| e.map(|e| e.note)).collect()
    }

    /// The slots a query asks for: entities in id order, each entity's notes in time
    /// order, after `offset`, at most `limit`. Listing every entity needs memory's tier
    /// settled ([`NotesIndex::settle`]).
    pub(super) fn slots(&self, query: &NotesQuery) -> Result<Vec<Slot>, Error> {
        let (account, kind) = (query.account.0, query.entity_type.tag());
        let wanted = |entries: &mut dyn Iterator<Item = Result<Entry, Error>>| {
            entries.skip(query.offset).take(query.limit).map(|e| e.map(|e| e.note.slot)).collect()
        };
        match &query.entity_ids {
            Some(ids) => {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids.dedup();
                // Lazily, entity by entity: a page ends without reading the rest.
                let mut entries = ids.into_iter().flat_map(|id| {
                    let entity = (account, kind, id);
                    match self.of_entity(entity) {
                        Ok(notes) => notes.into_iter().map(|note| Ok(Entry { entity, note })).collect::<Vec<_>>(),
                        Err(e) => vec![Err(e)],
                    }
                });
                wanted(&mut entries)
            }
            None => {
                let hot = self
                    .hot
                    .of_kind(account, kind)
                    .flat_map(|(entity, notes)| notes.iter().map(move |&note| Entry { entity, note }));
                let mut entries: Box<dyn Iterator<Item = Result<Entry, Error>>> = match &self.cold {
                    Some(cold) => Box::new(merged(
                        cold.from(((account, kind, 0), 0, 0))
                            .take_while(|e| e.as_ref().map_or(true, |e| (e.entity.0, e.entity.1) == (account, kind)))
                            .filter(|e| e.as_ref().map_or(true, |e| self.shown(e))),
                        hot,
                    )),
                    None => Box::new(hot.map(Ok)),
                };
                wanted(&mut entries)
            }
        }
    }

    /// Removes an entity's notes, by an erasure at `offset`; how many notes, and the bytes
    /// of their frames. The erasure is kept to hide the entity on disk even when the index
    /// there has none of it: a new one may be being written with memory's notes.
    pub(super) fn erase(&mut self, entity: Entity, offset: u64) -> Result<(usize, u64), Error> {
        let (mut count, mut bytes) = self.hot.remove(&entity);
        if let (Some(cold), false) = (&self.cold, self.erased.contains_key(&entity)) {
            for entry in cold.of_entity(entity)?.iter().filter(|e| self.shown(e)) {
                count += 1;
                bytes += entry.note.frame_bytes();
            }
        }
        self.erased.insert(entity, offset);
        Ok((count, bytes))
    }

    /// Whether an entity has notes listed.
    pub(super) fn has(&self, entity: Entity) -> Result<bool, Error> {
        Ok(self.hot.get(&entity).is_some() || !self.of_entity(entity)?.is_empty())
    }

    /// Removes every note made before `before`, by an expiry at `offset`; how many notes,
    /// and the bytes of their frames. Counting those on disk reads the index through:
    /// `count_on_disk` false skips it (opening, where the count only feeds the garbage).
    pub(super) fn forget_before(
        &mut self,
        before: u64,
        offset: u64,
        count_on_disk: bool,
    ) -> Result<(usize, u64), Error> {
        let (mut count, mut bytes) = self.hot.forget_before(before);
        if before <= self.expired_before() {
            return Ok((count, bytes));
        }
        if let (Some(cold), true) = (&self.cold, count_on_disk) {
            if before > cold.min_at {
                for entry in cold.from(((0, 0, 0), 0, 0)) {
                    let entry = entry?;
                    if entry.note.at < before && self.shown(&entry) {
                        count += 1;
                        bytes += entry.note.frame_bytes();
                    }
                }
            }
        }
        // Kept as the erasures are, even with nothing on disk yet.
        self.expired.push((offset, before));
        Ok((count, bytes))
    }

    /// What a new index on disk is made of: every note listed whose frame is before `upto`.
    pub(super) fn snapshot(&self, upto: u64) -> Snapshot {
        let mut hot: Vec<Entry> = self
            .hot
            .iter()
            .filter(|(_, n)| n.slot.offset() < upto)
            .map(|(entity, note)| Entry { entity, note })
            .collect();
        hot.sort_unstable_by_key(Entry::key);
        let hidden = Hidden { erased: self.erased.keys().copied().collect(), before: self.expired_before() };
        Snapshot { hot, cold: self.cold.clone(), hidden }
    }

    /// Takes in a new index on disk made of a [`Notes::snapshot`] up to its `covered`:
    /// memory drops what it holds, and only what came after hides anything in it.
    pub(super) fn install(&mut self, cold: ColdNotes) {
        let upto = cold.covered;
        self.hot.keep_from(upto);
        self.erased.retain(|_, &mut at| at >= upto);
        self.expired.retain(|&(at, _)| at >= upto);
        self.cold = Some(Arc::new(cold));
    }
}

/// What hid notes on disk when a snapshot was taken.
struct Hidden {
    erased: std::collections::HashSet<Entity, FixedState>,
    before: u64,
}

/// The notes a new index on disk is written from.
pub(super) struct Snapshot {
    hot: Vec<Entry>,
    cold: Option<Arc<ColdNotes>>,
    hidden: Hidden,
}

impl Snapshot {
    /// Writes every note, in order, each as `each` maps it (a compaction moves frames).
    pub(super) fn write(
        &self,
        writer: &mut ColdWriter,
        mut each: impl FnMut(Entry) -> Result<Entry, Error>,
    ) -> Result<(), Error> {
        let hidden = &self.hidden;
        let shown = |e: &Result<Entry, Error>| {
            e.as_ref().map_or(true, |e| e.note.at >= hidden.before && !hidden.erased.contains(&e.entity))
        };
        let hot = self.hot.iter().copied();
        let entries: Box<dyn Iterator<Item = Result<Entry, Error>>> = match &self.cold {
            Some(cold) => Box::new(merged(cold.from(((0, 0, 0), 0, 0)).filter(shown), hot)),
            None => Box::new(hot.map(Ok)),
        };
        for entry in entries {
            writer.push(each(entry?)?)?;
        }
        Ok(())
    }
}

/// Two runs of entries in key order, as one.
fn merged<'a>(
    cold: impl Iterator<Item = Result<Entry, Error>> + 'a,
    hot: impl Iterator<Item = Entry> + 'a,
) -> impl Iterator<Item = Result<Entry, Error>> + 'a {
    Merged { cold: cold.peekable(), hot: hot.peekable() }
}

struct Merged<C: Iterator, H: Iterator> {
    cold: Peekable<C>,
    hot: Peekable<H>,
}

impl<C: Iterator<Item = Result<Entry, Error>>, H: Iterator<Item = Entry>> Iterator for Merged<C, H> {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let key = |e: &Entry| -> NoteKey { e.key() };
        match (self.cold.peek(), self.hot.peek()) {
            (Some(Ok(c)), Some(h)) if key(h) < key(c) => self.hot.next().map(Ok),
            (Some(_), _) => self.cold.next(),
            (None, _) => self.hot.next().map(Ok),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn note(at: u64, id: u64) -> NoteSlot {
        NoteSlot { at, id, slot: Slot::new(at * 100 + id, 10) }
    }

    fn listed(notes: &mut Notes) -> Vec<(u64, u64)> {
        notes.hot.settle();
        let query = NotesQuery {
            account: crate::AccountId(1),
            entity_type: crate::EntityType::Contacts,
            entity_ids: None,
            offset: 0,
            limit: usize::MAX,
        };
        notes.slots(&query).unwrap().into_iter().map(|s| (s.offset() / 100, s.offset() % 100)).collect()
    }

    /// What is erased or expired while a new index on disk is written from memory's notes
    /// stays hidden once that index is taken in, though the old one had none of it.
    #[test]
    fn an_erasure_or_expiry_during_the_writing_of_an_index_hides_what_it_took_in() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("notes.log");
        std::fs::write(&log, vec![7u8; 10_000]).unwrap();
        let log = std::fs::File::open(log).unwrap();
        let mut notes = Notes::default();
        for (entity, at) in [(1, 10), (2, 20), (3, 30), (3, 5)] {
            notes.hot.insert((1, 1, entity), note(at, entity));
        }
        let snapshot = notes.snapshot(9_000);
        let mut writer = ColdWriter::start(dir.path()).unwrap();
        snapshot.write(&mut writer, Ok).unwrap();
        let (cold, _) = writer.finish(&log, 9_000, 0).unwrap();
        // Meanwhile: contact 2 erased, notes before 8 expired, a note of contact 2 added.
        assert_eq!(notes.erase((1, 1, 2), 9_100).unwrap().0, 1);
        assert_eq!(notes.forget_before(8, 9_200, true).unwrap().0, 1);
        notes.hot.insert((1, 1, 2), note(95, 2));
        notes.install(cold);
        assert_eq!(listed(&mut notes), [(10, 1), (95, 2), (30, 3)]);
        assert_eq!(notes.hot_len(), 1, "memory keeps only the note written after");
    }
}
