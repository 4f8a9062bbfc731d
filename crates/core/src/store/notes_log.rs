//! Notes and visit marks in one append-only file, indexed in memory: how the sled backend
//! keeps its notes journal and its visit ledger.
//!
//! When every click is a first visit (a mailing), every note cost three sled inserts (the
//! visit's mark, its link's recent notes, the note), each copying a B-tree leaf, and a sled
//! flush: over half of the server's CPU. Here a claim changes memory only, and a round of
//! notes is one write and one `fdatasync`.
//!
//! `notes.log` in the data directory is a run of [`frame`]s. A record is a kind byte, then:
//! - `N`, a note: its 33-byte key (account ‖ type ‖ entity ‖ created_at ‖ id, as in
//!   [`keys::note_key`]) ‖ the note's codec record;
//! - `M`, a visit mark: visit key (16 bytes) ‖ link key (16) ‖ at u64 ‖ note id u64, all
//!   big-endian; an all-zero key stands for none (marks carried over from sled trees);
//! - `E`, an erasure: account u64 ‖ type u8 ‖ entity u64, big-endian: the entity's notes
//!   before it are no longer found (their bytes stay until the file is compacted);
//! - `X`, an expiry: a time u64, big-endian: notes made before it, of every entity, that
//!   came before the frame are no longer found (the retention's horizon).
//!
//! The notes' index is in two tiers ([`super::notes_tiers`]): `notes.index` on disk holds
//! the notes up to an offset, sorted ([`super::notes_cold`]), and memory the notes written
//! since (24 bytes a note, by entity: see [`super::notes_index`]). The upkeep writes a new
//! `notes.index` once memory holds [`HOT_NOTES`] notes, so memory stays bounded whatever
//! the number of notes kept. The visit ledger of the recent window (each visit key's mark,
//! each link's recent note times) is in memory. On open, the file is read through for the
//! marks (those made before `horizon`, the last sweep's, are skipped) and for the notes
//! after `notes.index`.
//!
//! Crash safety: a claim leaves its mark in `pending`, and the next append writes the
//! pending marks and then the notes in one write, synced before it returns. A note's mark
//! is therefore durable no later than the note. A crash before the append loses both, and
//! the clicks, still in the outbox, are claimed again and make the same note ids. Opening
//! cuts a torn or damaged end as `links.log` does ([`frame::recover`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use foldhash::fast::FixedState;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use super::file_header;
use super::frame::{self, io, Slot, Tail, HEADER};
use super::notes_cold::{self, ColdNotes, ColdWriter, Entry};
use super::notes_index::{Entity, NoteSlot};
use super::notes_tiers::Notes;
use super::{decide_visit, keys, Claimed, NotesQuery, VisitClaim, VisitRules};
use crate::codec::{decode, encode_after};
use crate::model::{AccountId, EntityRef, Note, Timestamp, VisitMark};
use crate::Error;

/// The file's name in the data directory.
pub(crate) const FILE_NAME: &str = "notes.log";
/// Notes held in memory past which the upkeep writes a new `notes.index`: about 120 MiB
/// of index, and a new `notes.index` for every million notes written.
pub(crate) const HOT_NOTES: usize = 1 << 20;
/// The longest frame record: a note's target is bounded well below it.
const MAX_RECORD: usize = (64 << 10) - 1;
const _: () = assert!(MAX_RECORD <= Slot::MAX_LEN);
const _: () = assert!(1 + 33 + crate::target::MAX_NORMALIZED_BYTES + 100 < MAX_RECORD);
const NOTE: u8 = b'N';
const MARK: u8 = b'M';
const ERASURE: u8 = b'E';
const EXPIRY: u8 = b'X';
/// An erasure's record: kind, account, type, entity.
const ERASURE_LEN: usize = 1 + 8 + 1 + 8;
/// A mark's record: kind, visit key, link key, at, note id.
const MARK_LEN: usize = 1 + 16 + 16 + 8 + 8;
/// Stands for "no key" in a mark carried over from the old sled trees.
const NO_KEY: [u8; 16] = [0; 16];

fn entity_of(note: &Note) -> Entity {
    (note.account.0, note.entity.kind.tag(), note.entity.id)
}

/// A visit mark as the file holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MarkRecord {
    pub(crate) key: [u8; 16],
    pub(crate) link: [u8; 16],
    pub(crate) mark: VisitMark,
}

impl MarkRecord {
    fn append_to(&self, frames: &mut Vec<u8>) {
        let mut record = [0u8; MARK_LEN];
        record[0] = MARK;
        record[1..17].copy_from_slice(&self.key);
        record[17..33].copy_from_slice(&self.link);
        record[33..41].copy_from_slice(&self.mark.at.0.to_be_bytes());
        record[41..].copy_from_slice(&self.mark.note_id.to_be_bytes());
        frame::append(frames, &record);
    }

    fn parse(record: &[u8]) -> Option<Self> {
        let record: &[u8; MARK_LEN] = record.try_into().ok()?;
        let u64_at = |i: usize| u64::from_be_bytes(record[i..i + 8].try_into().unwrap_or_default());
        (record[0] == MARK).then(|| Self {
            key: record[1..17].try_into().unwrap_or_default(),
            link: record[17..33].try_into().unwrap_or_default(),
            mark: VisitMark { at: Timestamp(u64_at(33)), note_id: u64_at(41) },
        })
    }
}

/// A note's record: kind, key, the note.
fn note_record(note: &Note) -> Result<Vec<u8>, Error> {
    let mut record = Vec::with_capacity(1 + 33 + 256);
    record.push(NOTE);
    record.extend_from_slice(&keys::note_key(note.account, note.entity, note.created_at, note.id));
    encode_after(note, record)
}

/// A note record's key: entity, time, id.
fn note_key_of(record: &[u8]) -> Option<(Entity, u64, u64)> {
    let key = record.get(1..34).filter(|_| record.first() == Some(&NOTE))?;
    let u64_at = |i: usize| key[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    Some(((u64_at(0)?, key[8], u64_at(9)?), u64_at(17)?, u64_at(25)?))
}

/// An erasure's record.
fn erasure_record((account, kind, id): Entity) -> [u8; ERASURE_LEN] {
    let mut record = [0u8; ERASURE_LEN];
    record[0] = ERASURE;
    record[1..9].copy_from_slice(&account.to_be_bytes());
    record[9] = kind;
    record[10..].copy_from_slice(&id.to_be_bytes());
    record
}

/// The entity an erasure's record names.
fn erased_entity(record: &[u8]) -> Option<Entity> {
    let record: &[u8; ERASURE_LEN] = record.try_into().ok().filter(|r: &&[u8; ERASURE_LEN]| r[0] == ERASURE)?;
    let u64_at = |i: usize| u64::from_be_bytes(record[i..i + 8].try_into().unwrap_or_default());
    Some((u64_at(1), record[9], u64_at(10)))
}

/// An expiry's record.
fn expiry_record(before: Timestamp) -> [u8; 9] {
    let mut record = [EXPIRY; 9];
    record[1..].copy_from_slice(&before.0.to_be_bytes());
    record
}

/// The horizon an expiry's record names.
fn expiry(record: &[u8]) -> Option<u64> {
    let record: &[u8; 9] = record.try_into().ok().filter(|r: &&[u8; 9]| r[0] == EXPIRY)?;
    Some(u64::from_be_bytes(record[1..].try_into().unwrap_or_default()))
}

/// What recovery keeps of cut-off bytes: marks, erasures, expiries, and notes that decode
/// under their key.
fn salvageable(record: &[u8]) -> bool {
    if MarkRecord::parse(record).is_some() || erased_entity(record).is_some() || expiry(record).is_some() {
        return true;
    }
    let Some((entity, at, id)) = note_key_of(record) else { return false };
    decode::<Note>(&record[34..]).is_ok_and(|n| entity_of(&n) == entity && n.created_at.0 == at && n.id == id)
}

/// The visit ledger of the recent window.
#[derive(Default)]
struct Ledger {
    visits: HashMap<[u8; 16], VisitMark, FixedState>,
    link_notes: HashMap<[u8; 16], Vec<u64>, FixedState>,
    /// Frames of marks claimed since the last append.
    pending: Vec<u8>,
}

impl Ledger {
    /// Takes in a mark read from the file (or carried over).
    fn found(&mut self, record: MarkRecord) {
        if record.key != NO_KEY {
            let newer = self.visits.get(&record.key).is_none_or(|m| m.at <= record.mark.at);
            if newer {
                self.visits.insert(record.key, record.mark);
            }
        }
        if record.link != NO_KEY {
            self.link_notes.entry(record.link).or_default().push(record.mark.at.0);
        }
    }
}

/// The notes and visit ledger of one data directory. Appends and listings block (file
/// I/O); claims and sweeps touch memory only.
pub(crate) struct NotesLog {
    path: PathBuf,
    dir: PathBuf,
    current: ArcSwap<Generation>,
    tail: Mutex<Tail>,
    ledger: Mutex<Ledger>,
    /// Bytes of frames nothing needs any more: erased and expired notes (marks aside).
    garbage: AtomicU64,
    /// Held by whatever writes `notes.index` (a compaction, the upkeep): one at a time.
    rewriting: Mutex<()>,
}

/// The file and its index of notes, replaced together by a compaction: a listing reads
/// the file of the index it took its slots from.
struct Generation {
    file: File,
    notes: RwLock<Notes>,
}

impl Generation {
    fn new(file: File, notes: Notes) -> Self {
        Self { file, notes: RwLock::new(notes) }
    }
}

impl NotesLog {
    /// Opens (or creates) `notes.log` in `dir`; marks made before `horizon` are not loaded.
    pub(crate) fn open(dir: &Path, horizon: Timestamp) -> Result<Self, Error> {
        let frame::OpenLog { path, file, len, start } = frame::open_log(dir, FILE_NAME, file_header::NOTES)?;
        let reader = file.try_clone().map_err(io)?;
        let cold = ColdNotes::read(dir, &reader, len);
        let covered = cold.as_ref().map_or(0, |c| c.covered);
        let log = Self {
            path,
            dir: dir.to_owned(),
            garbage: AtomicU64::new(cold.as_ref().map_or(0, |c| c.garbage)),
            current: ArcSwap::from_pointee(Generation::new(file, Notes::with_cold(cold))),
            tail: Mutex::new(Tail::new(len)),
            ledger: Mutex::default(),
            rewriting: Mutex::new(()),
        };
        let valid = frame::read_between(&reader, start, u64::MAX, MAX_RECORD, |offset, record| {
            log.found(offset, record, horizon, covered)
        })?;
        if valid < len {
            let (end, kept) = frame::recover(&reader, &log.path, valid, len, MAX_RECORD, salvageable)?;
            if valid < covered {
                // Damage among the frames the index describes: it no longer does.
                tracing::warn!(at = valid, "notes.log was damaged before the end of notes.index: reading it through");
                notes_cold::remove(dir)?;
                drop(log);
                return Self::open(dir, horizon);
            }
            log.tail.lock().len = end;
            for (offset, record) in kept {
                log.found(offset, &record, horizon, covered)?;
            }
        }
        Ok(log)
    }

    /// Indexes an intact frame read on open. Before `covered`, only marks: the rest is in
    /// `notes.index` (notes), or was applied to it (erasures, expiries).
    fn found(&self, offset: u64, record: &[u8], horizon: Timestamp, covered: u64) -> Result<(), Error> {
        if let Some(mark) = MarkRecord::parse(record) {
            if mark.mark.at >= horizon {
                self.ledger.lock().found(mark);
            }
            return Ok(());
        }
        if offset < covered {
            return Ok(());
        }
        let current = self.current.load();
        if let Some(entity) = erased_entity(record) {
            let (_, bytes) = current.notes.write().erase(entity, offset)?;
            self.garbage.fetch_add(bytes + HEADER + record.len() as u64, Relaxed);
            return Ok(());
        }
        if let Some(before) = expiry(record) {
            let (_, bytes) = current.notes.write().forget_before(before, offset, false)?;
            self.garbage.fetch_add(bytes + HEADER + record.len() as u64, Relaxed);
            return Ok(());
        }
        // Intact, so this wrote it: anything else is a bug, not a torn write.
        let (entity, at, id) = note_key_of(record).ok_or_else(|| {
            Error::Corrupt(format!("{} holds a frame of no known kind at {offset}", self.path.display()))
        })?;
        current.notes.write().hot.insert(entity, NoteSlot { at, id, slot: Slot::new(offset, record.len()) });
        Ok(())
    }

    /// Decides each claim as [`decide_visit`] does, all under one lock; a claim that
    /// becomes a note leaves its mark, to be written with the next append.
    pub(crate) fn claim(&self, claims: &[VisitClaim], rules: VisitRules) -> Vec<Claimed> {
        let mut ledger = self.ledger.lock();
        let ledger = &mut *ledger;
        let capped = rules.notes_per_link > 0;
        claims
            .iter()
            .map(|c| {
                let previous = ledger.visits.get(&c.key).copied();
                let mut uncapped = Vec::new();
                let link_notes = match capped {
                    true => ledger.link_notes.entry(c.link).or_default(),
                    false => &mut uncapped,
                };
                let claimed = decide_visit(previous, link_notes, c, rules);
                let fresh = previous.is_none_or(|m| m.note_id != c.note_id);
                if claimed == Claimed::Note && fresh {
                    let mark = VisitMark { at: c.at, note_id: c.note_id };
                    ledger.visits.insert(c.key, mark);
                    let link = if capped { c.link } else { NO_KEY };
                    MarkRecord { key: c.key, link, mark }.append_to(&mut ledger.pending);
                }
                claimed
            })
            .collect()
    }

    /// Forgets marks made before `before`; returns how many visit marks went.
    pub(crate) fn forget(&self, before: Timestamp) -> u64 {
        let mut ledger = self.ledger.lock();
        let was = ledger.visits.len();
        ledger.visits.retain(|_, mark| mark.at >= before);
        ledger.link_notes.retain(|_, times| times.iter().any(|&t| t >= before.0));
        (was - ledger.visits.len()) as u64
    }

    /// Writes the pending marks and the notes not already there, in one write, and syncs.
    /// Durable when it returns.
    pub(crate) fn append(&self, notes: Vec<Note>) -> Result<(), Error> {
        let mut tail = self.tail.lock();
        tail.check(&self.path)?;
        // Under the appender's lock: a compaction puts its copy in place under it too.
        let current = self.current.load_full();
        let mut frames = std::mem::take(&mut self.ledger.lock().pending);
        let marks = frames.len();
        let mut fresh: Vec<(Entity, NoteSlot)> = Vec::with_capacity(notes.len());
        let mut in_batch: HashSet<(Entity, u64, u64), FixedState> =
            HashSet::with_capacity_and_hasher(notes.len(), FixedState::default());
        {
            let index = current.notes.read();
            for note in &notes {
                let (entity, at, id) = (entity_of(note), note.created_at.0, note.id);
                if index.contains(entity, at, id)? || !in_batch.insert((entity, at, id)) {
                    continue; // a redelivered note: the first copy stays
                }
                let record = note_record(note)?;
                let offset = tail.len + frames.len() as u64;
                if offset + HEADER + record.len() as u64 >= Slot::MAX_OFFSET {
                    return Err(Error::Storage(format!("{} is full", self.path.display()).into()));
                }
                fresh.push((entity, NoteSlot { at, id, slot: Slot::new(offset, record.len()) }));
                frame::append(&mut frames, &record);
            }
        }
        if !frames.is_empty() {
            if let Err(e) = current.file.write_all_at(&frames, tail.len) {
                let _ = current.file.set_len(tail.len); // best effort: open cuts a torn end anyway
                                                        // The marks are still owed to the file.
                frames.truncate(marks);
                self.ledger.lock().pending.splice(0..0, frames);
                return Err(io(e));
            }
            tail.len += frames.len() as u64;
            // Written before indexed: a listing never finds a note whose frame is not there.
            let mut index = current.notes.write();
            for (entity, note) in fresh {
                index.hot.insert(entity, note);
            }
        }
        drop(tail);
        frame::sync_appended(&current.file, &self.tail, &self.path)?;
        Ok(())
    }

    /// Erases one entity's notes: an erasure frame, synced, then out of the index. Returns
    /// how many notes went.
    pub(crate) fn erase(&self, account: AccountId, entity: EntityRef) -> Result<u64, Error> {
        let entity = (account.0, entity.kind.tag(), entity.id);
        let mut tail = self.tail.lock();
        tail.check(&self.path)?;
        let current = self.current.load_full();
        if !current.notes.read().has(entity)? {
            return Ok(0);
        }
        let mut frames = Vec::with_capacity(HEADER as usize + ERASURE_LEN);
        frame::append(&mut frames, &erasure_record(entity));
        if let Err(e) = current.file.write_all_at(&frames, tail.len) {
            let _ = current.file.set_len(tail.len);
            return Err(io(e));
        }
        let at = tail.len;
        tail.len += frames.len() as u64;
        // Under the appender's lock: a note appended after the erasure frame stays listed,
        // and a compaction catching up finds the notes either listed or erased after.
        let (erased, bytes) = current.notes.write().erase(entity, at)?;
        self.garbage.fetch_add(bytes + frames.len() as u64, Relaxed);
        drop(tail);
        frame::sync_appended(&current.file, &self.tail, &self.path)?;
        Ok(erased as u64)
    }

    /// Forgets every note made before `before`: an expiry frame, synced, then out of the
    /// index. Returns how many notes went.
    pub(crate) fn forget_before(&self, before: Timestamp) -> Result<u64, Error> {
        let mut tail = self.tail.lock();
        tail.check(&self.path)?;
        let current = self.current.load_full();
        let mut frames = Vec::with_capacity(HEADER as usize + 9);
        frame::append(&mut frames, &expiry_record(before));
        if let Err(e) = current.file.write_all_at(&frames, tail.len) {
            let _ = current.file.set_len(tail.len);
            return Err(io(e));
        }
        let at = tail.len;
        tail.len += frames.len() as u64;
        let (forgotten, bytes) = current.notes.write().forget_before(before.0, at, true)?;
        self.garbage.fetch_add(bytes + frames.len() as u64, Relaxed);
        drop(tail);
        frame::sync_appended(&current.file, &self.tail, &self.path)?;
        Ok(forgotten as u64)
    }

    /// Writes the pending marks, if any, durably.
    pub(crate) fn flush(&self) -> Result<(), Error> {
        if self.ledger.lock().pending.is_empty() {
            return Ok(());
        }
        self.append(Vec::new())
    }

    /// The notes a query asks for: entities in id order, each entity's notes in time
    /// order, after `offset`, at most `limit`.
    pub(crate) fn list(&self, query: &NotesQuery) -> Result<Vec<Note>, Error> {
        let current = self.current.load_full();
        let slots = {
            let notes = match query.entity_ids {
                Some(_) => current.notes.read(),
                None => {
                    // Listing every entity needs them in order: sort in those that came since.
                    let mut notes = current.notes.write();
                    notes.hot.settle();
                    RwLockWriteGuard::downgrade(notes)
                }
            };
            notes.slots(query)?
        };
        slots.into_iter().map(|slot| self.read(&current.file, slot)).collect()
    }

    /// Reads and checks one note's frame.
    fn read(&self, file: &File, slot: Slot) -> Result<Note, Error> {
        let record = self.record_at(file, slot)?;
        decode::<Note>(&record[34..])
    }

    /// The record of one note's frame, checked.
    fn record_at(&self, file: &File, slot: Slot) -> Result<Vec<u8>, Error> {
        let mut bytes = vec![0u8; HEADER as usize + slot.len()];
        file.read_exact_at(&mut bytes, slot.offset()).map_err(io)?;
        frame::parse(&bytes, MAX_RECORD)
            .filter(|record| record.len() == slot.len() && note_key_of(record).is_some())
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Corrupt(format!("{} is damaged at {}", self.path.display(), slot.offset())))
    }

    /// How many visit marks are held.
    #[cfg(test)]
    fn marks(&self) -> usize {
        self.ledger.lock().visits.len()
    }

    /// Runs `f` holding the index as a writer would, so a listing started meanwhile must wait.
    #[cfg(test)]
    pub(crate) fn with_index_held<R>(&self, f: impl FnOnce() -> R) -> R {
        let current = self.current.load_full();
        let _held = current.notes.write();
        f()
    }

    /// Writes a new `notes.index` if memory holds `min_hot` notes or more (and at least
    /// one): every note listed up to the log's end as it is now, merged from both tiers,
    /// after which memory drops them. Appends, erasures and listings go on meanwhile.
    /// Returns whether it wrote one.
    pub(crate) fn checkpoint(&self, min_hot: usize) -> Result<bool, Error> {
        let _rewriting = self.rewriting.lock();
        let current = self.current.load_full();
        if current.notes.read().hot_len() < min_hot.max(1) {
            return Ok(false);
        }
        let upto = self.tail.lock().len;
        // The index must describe frames that are on disk.
        current.file.sync_data().map_err(io)?;
        let snapshot = current.notes.read().snapshot(upto);
        let mut writer = ColdWriter::start(&self.dir)?;
        snapshot.write(&mut writer, Ok)?;
        let (cold, pending) = writer.finish(&current.file, upto, self.garbage.load(Relaxed))?;
        pending.put_in_place()?;
        current.notes.write().install(cold);
        Ok(true)
    }

    /// How many notes the index holds in memory.
    #[cfg(test)]
    fn hot_notes(&self) -> usize {
        self.current.load().notes.read().hot_len()
    }

    /// Rewrites the file with only what is needed ([`frame::Compacted`], crash-safe at
    /// every point): the visit ledger as it is in memory, in place of every mark ever
    /// written, then the notes still listed in key order, so that their `notes.index` is
    /// written as they are copied. Erased notes and erasures are left behind. Listings go
    /// on throughout; appends and erasures wait only while the copy takes in what came
    /// after it started. Returns the bytes it freed.
    pub(crate) fn compact(&self) -> Result<u64, Error> {
        let _rewriting = self.rewriting.lock();
        let old = self.current.load_full();
        let mut out = frame::Compacted::start(&self.path, file_header::NOTES)?;
        // Where the copy of the file starts taking marks as written, then the ledger: a mark
        // appended before that point was claimed before the ledger is copied.
        let started_at = self.tail.lock().len;
        let mut marks = Vec::new();
        {
            let ledger = self.ledger.lock();
            for (&key, &mark) in &ledger.visits {
                MarkRecord { key, link: NO_KEY, mark }.append_to(&mut marks);
            }
            for (&link, times) in &ledger.link_notes {
                for &at in times {
                    let mark = VisitMark { at: Timestamp(at), note_id: 0 };
                    MarkRecord { key: NO_KEY, link, mark }.append_to(&mut marks);
                }
            }
        }
        out.extend(&marks)?;
        let snapshot = old.notes.read().snapshot(started_at);
        let mut index = ColdWriter::start(&self.dir)?;
        snapshot.write(&mut index, |entry| {
            let record = self.record_at(&old.file, entry.note.slot)?;
            let slot = Slot::new(out.next_offset(), record.len());
            out.append(&record)?;
            Ok(Entry { note: NoteSlot { slot, ..entry.note }, ..entry })
        })?;
        out.flush()?;
        let covered = out.next_offset();
        let (cold, pending) = index.finish(out.file(), covered, 0)?;
        let new = Generation::new(out.file().try_clone().map_err(io)?, Notes::with_cold(Some(cold)));
        let mut copy = NotesCopy { out, new, garbage: 0 };
        let mut tail = self.tail.lock();
        tail.check(&self.path)?;
        // What came since: notes, marks and erasures while the copy was made.
        frame::read_between(&old.file, started_at, tail.len, MAX_RECORD, |_, record| copy.take(record))?;
        let NotesCopy { out, new, garbage } = copy;
        // The old index describes the old log only: gone before the new log is in place.
        notes_cold::remove(&self.dir)?;
        let written = out.put_in_place(&self.path)?;
        pending.put_in_place()?;
        let freed = tail.len.saturating_sub(written);
        self.current.store(Arc::new(new));
        tail.len = written;
        self.garbage.store(garbage, Relaxed);
        Ok(freed)
    }

    /// Bytes of frames nothing needs any more, since the last compaction or open.
    pub(crate) fn garbage(&self) -> u64 {
        self.garbage.load(Relaxed)
    }
}

/// The frames a compaction's copy takes in after its start.
struct NotesCopy {
    out: frame::Compacted,
    /// The copy's index, by the copy's offsets.
    new: Generation,
    /// Bytes of what the frames taken in erased or expired.
    garbage: u64,
}

impl NotesCopy {
    /// Copies one frame of the old file and applies it to the copy's index.
    fn take(&mut self, record: &[u8]) -> Result<(), Error> {
        let offset = self.out.next_offset();
        self.out.append(record)?;
        let mut notes = self.new.notes.write();
        if let Some((entity, at, id)) = note_key_of(record) {
            notes.hot.insert(entity, NoteSlot { at, id, slot: Slot::new(offset, record.len()) });
        } else if let Some(entity) = erased_entity(record) {
            self.garbage += notes.erase(entity, offset)?.1 + HEADER + record.len() as u64;
        } else if let Some(before) = expiry(record) {
            self.garbage += notes.forget_before(before, offset, true)?.1 + HEADER + record.len() as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::{AccountId, EntityRef, EntityType, NoteBody, UserId};
    use crate::TargetUrl;

    fn note(entity: u64, at: u64, id: u64) -> Note {
        Note {
            id,
            account: AccountId(1),
            entity: EntityRef { kind: EntityType::Contacts, id: entity },
            created_by: UserId(1),
            created_at: Timestamp(at),
            body: NoteBody::LinkFollowed { url: TargetUrl::parse("https://x.example/a").unwrap() },
        }
    }

    fn all(log: &NotesLog) -> Vec<Note> {
        let query = NotesQuery {
            account: AccountId(1),
            entity_type: EntityType::Contacts,
            entity_ids: None,
            offset: 0,
            limit: usize::MAX,
        };
        log.list(&query).unwrap()
    }

    fn claim(key: u8, at: u64, note_id: u64) -> VisitClaim {
        VisitClaim { link: [key; 16], key: [key; 16], at: Timestamp(at), note_id }
    }

    const RULES: VisitRules = VisitRules { window_ms: 1_000, notes_per_link: 5 };

    #[test]
    fn notes_and_marks_come_back_after_a_reopen_and_a_note_is_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(log.claim(&[claim(1, 100, 7), claim(2, 100, 8)], RULES), [Claimed::Note, Claimed::Note]);
        log.append(vec![note(2, 100, 8), note(1, 100, 7)]).unwrap();
        log.append(vec![note(1, 100, 7), note(1, 50, 6)]).unwrap();
        let expected = vec![note(1, 50, 6), note(1, 100, 7), note(2, 100, 8)];
        assert_eq!(all(&log), expected);
        drop(log);

        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(all(&log), expected, "in entity, then time order, each once");
        assert_eq!(log.marks(), 2);
        assert_eq!(log.claim(&[claim(1, 500, 9)], RULES), [Claimed::Repeat], "the mark survived the reopen");
        assert_eq!(log.claim(&[claim(1, 100, 7)], RULES), [Claimed::Note], "a redelivered claim");
        drop(log);
        assert_eq!(NotesLog::open(dir.path(), Timestamp(101)).unwrap().marks(), 0, "behind the horizon");
    }

    #[test]
    fn a_compaction_keeps_the_notes_listed_and_the_ledger_and_leaves_erased_notes_out() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(log.claim(&[claim(1, 100, 7)], RULES), [Claimed::Note]);
        let erased_url = TargetUrl::parse("https://erased.example/only-here").unwrap();
        let mut gone = note(2, 100, 8);
        gone.body = NoteBody::LinkFollowed { url: erased_url };
        log.append(vec![note(1, 100, 7), gone, note(3, 100, 9)]).unwrap();
        let contact = |id| EntityRef { kind: EntityType::Contacts, id };
        assert_eq!(log.erase(AccountId(1), contact(2)).unwrap(), 1);
        // Many marks made and forgotten: the copy keeps only the ledger as it is.
        let old_marks: Vec<VisitClaim> =
            (0..50u8).map(|i| VisitClaim { key: [i + 100; 16], ..claim(20 + i, 10, 1_000 + u64::from(i)) }).collect();
        log.claim(&old_marks, RULES);
        log.flush().unwrap();
        log.forget(Timestamp(50));
        let before = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        let freed = log.compact().unwrap();
        assert!(freed > 50 * 57, "freed {freed} of {before}");
        let text = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.windows(12).any(|w| w == b"erased.examp"), "the erased note's URL is gone from the file");
        let expected = vec![note(1, 100, 7), note(3, 100, 9)];
        assert_eq!(all(&log), expected);
        log.append(vec![note(4, 200, 10)]).unwrap();
        drop(log);

        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(all(&log), [expected, vec![note(4, 200, 10)]].concat());
        assert_eq!(log.claim(&[claim(1, 500, 9)], RULES), [Claimed::Repeat], "the ledger survived the compaction");
        assert_eq!(log.marks(), 1);
    }

    #[test]
    fn notes_past_the_retention_stay_forgotten_after_a_reopen_and_leave_with_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        log.append(vec![note(1, 100, 7), note(2, 300, 8), note(1, 500, 9)]).unwrap();
        assert_eq!(log.forget_before(Timestamp(400)).unwrap(), 2);
        // A late note, older than the horizon, written after it: kept, as it was listed.
        log.append(vec![note(3, 200, 10)]).unwrap();
        let expected = vec![note(1, 500, 9), note(3, 200, 10)];
        assert_eq!(all(&log), expected);
        drop(log);
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(all(&log), expected, "after a reopen");
        assert!(log.garbage() > 0);
        log.compact().unwrap();
        assert_eq!(log.garbage(), 0);
        drop(log);
        assert_eq!(all(&NotesLog::open(dir.path(), Timestamp(0)).unwrap()), expected, "after a compaction");
    }

    #[test]
    fn an_unwritten_claim_is_lost_with_its_note_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(log.claim(&[claim(1, 100, 7)], RULES), [Claimed::Note]);
        drop(log); // as a crash before the append

        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(log.marks(), 0);
        assert_eq!(log.claim(&[claim(1, 100, 7)], RULES), [Claimed::Note]);
        log.flush().unwrap();
        drop(log);
        assert_eq!(NotesLog::open(dir.path(), Timestamp(0)).unwrap().marks(), 1, "a flush writes the marks");
    }

    #[test]
    fn the_cap_per_link_holds_across_a_reopen_and_a_sweep_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        let claims: Vec<_> =
            (0..6u8).map(|i| VisitClaim { key: [i + 1; 16], ..claim(9, 100 + u64::from(i), u64::from(i)) }).collect();
        let answers = log.claim(&claims, RULES);
        assert_eq!(answers[..5], [Claimed::Note; 5]);
        assert_eq!(answers[5], Claimed::OverLinkCap);
        log.flush().unwrap();
        drop(log);

        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        let another = VisitClaim { key: [42; 16], ..claim(9, 200, 99) };
        assert_eq!(log.claim(&[another], RULES), [Claimed::OverLinkCap]);
        assert_eq!(log.forget(Timestamp(103)), 3);
        assert_eq!(log.marks(), 2);
    }

    #[test]
    fn a_torn_append_is_cut_and_what_was_whole_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        log.append(vec![note(1, 10, 1)]).unwrap();
        let end = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        log.append(vec![note(2, 20, 2)]).unwrap();
        drop(log);
        // A torn frame, then the damage moves the second note behind it.
        let path = dir.path().join(FILE_NAME);
        let whole = std::fs::read(&path).unwrap();
        let torn = [&whole[..end as usize], &[9, 0, 0, 0, 1, 2], &whole[end as usize..]].concat();
        std::fs::write(&path, &torn).unwrap();

        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(all(&log), [note(1, 10, 1), note(2, 20, 2)], "the intact frame after the tear is salvaged");
        let aside = std::fs::read(dir.path().join(format!("{FILE_NAME}.cut-{end}"))).unwrap();
        assert_eq!(aside, torn[end as usize..]);
        log.append(vec![note(3, 30, 3)]).unwrap();
        drop(log);
        assert_eq!(all(&NotesLog::open(dir.path(), Timestamp(0)).unwrap()).len(), 3);
    }

    #[test]
    fn a_listing_pages_through_the_entities_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        log.append((1..=4).flat_map(|e| (0..3).map(move |t| note(e, 100 + t, e * 10 + t))).collect()).unwrap();
        let query = |ids: Option<Vec<u64>>, offset, limit| NotesQuery {
            account: AccountId(1),
            entity_type: EntityType::Contacts,
            entity_ids: ids,
            offset,
            limit,
        };
        let ids = |notes: Vec<Note>| notes.into_iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(ids(log.list(&query(None, 2, 3)).unwrap()), [12, 20, 21]);
        assert_eq!(ids(log.list(&query(Some(vec![4, 2]), 1, 4)).unwrap()), [21, 22, 40, 41]);
        let other = NotesQuery { account: AccountId(2), ..query(None, 0, 10) };
        assert!(log.list(&other).unwrap().is_empty(), "another account sees nothing");
    }

    /// What every sequence of operations must list: each note once, until an erasure of its
    /// entity or an expiry of its time that comes after it.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        pub(super) enum Op {
            Append(Vec<(u64, u64)>),
            Erase(u64),
            Expire(u64),
            Checkpoint,
            Compact,
            Reopen,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => prop::collection::vec((0..6u64, 0..40u64), 1..20).prop_map(Op::Append),
                1 => (0..6u64).prop_map(Op::Erase),
                1 => (0..40u64).prop_map(Op::Expire),
                2 => Just(Op::Checkpoint),
                1 => Just(Op::Compact),
                1 => Just(Op::Reopen),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
            #[test]
            fn both_tiers_list_what_the_operations_leave(ops in prop::collection::vec(op(), 1..30)) {
                let dir = tempfile::tempdir().unwrap();
                let mut log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
                let mut listed = std::collections::BTreeMap::new();
                let page = |log: &NotesLog, ids: Option<Vec<u64>>, offset, limit| {
                    let query = NotesQuery {
                        account: AccountId(1),
                        entity_type: EntityType::Contacts,
                        entity_ids: ids,
                        offset,
                        limit,
                    };
                    log.list(&query).unwrap().into_iter().map(|n| (n.entity.id, n.created_at.0, n.id)).collect::<Vec<_>>()
                };
                for op in ops {
                    match op {
                        // The id follows from entity and time: a copy is the same note again.
                        Op::Append(notes) => {
                            log.append(notes.iter().map(|&(e, at)| note(e, at, e * 100 + at)).collect()).unwrap();
                            for (e, at) in notes {
                                listed.insert((e, at, e * 100 + at), ());
                            }
                        }
                        Op::Erase(e) => {
                            let gone = listed.keys().filter(|k| k.0 == e).count() as u64;
                            let contact = EntityRef { kind: EntityType::Contacts, id: e };
                            prop_assert_eq!(log.erase(AccountId(1), contact).unwrap(), gone);
                            listed.retain(|k, _| k.0 != e);
                        }
                        Op::Expire(before) => {
                            let gone = listed.keys().filter(|k| k.1 < before).count() as u64;
                            prop_assert_eq!(log.forget_before(Timestamp(before)).unwrap(), gone);
                            listed.retain(|k, _| k.1 >= before);
                        }
                        Op::Checkpoint => {
                            log.checkpoint(0).unwrap();
                            prop_assert_eq!(log.hot_notes(), 0);
                        }
                        Op::Compact => {
                            log.compact().unwrap();
                        }
                        Op::Reopen => {
                            drop(log);
                            log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
                        }
                    }
                    let expected: Vec<_> = listed.keys().copied().collect();
                    prop_assert_eq!(page(&log, None, 0, usize::MAX), expected.clone());
                    prop_assert_eq!(page(&log, None, 3, 4), expected.iter().copied().skip(3).take(4).collect::<Vec<_>>());
                    let some: Vec<_> = expected.iter().copied().filter(|k| k.0 == 1 || k.0 == 4).collect();
                    prop_assert_eq!(page(&log, Some(vec![4, 1]), 0, usize::MAX), some);
                }
            }
        }
    }

    #[test]
    fn notes_on_disk_stay_out_of_memory_across_a_reopen_and_an_erasure_leaves_no_byte_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        let contact = 0x00ab_cdef_1234_5678;
        let erased_url = TargetUrl::parse("https://erased.example/on-disk").unwrap();
        let mut gone = note(contact, 100, 8);
        gone.body = NoteBody::LinkFollowed { url: erased_url };
        let kept: Vec<Note> = (1..=300).map(|e| note(e, 100 + e, e)).collect();
        log.append([kept.clone(), vec![gone.clone()]].concat()).unwrap();
        assert!(log.checkpoint(0).unwrap());
        assert_eq!(log.hot_notes(), 0, "memory holds none of them");
        assert!(!log.checkpoint(1).unwrap(), "nothing new to write");
        log.append(vec![note(7, 100 + 7, 7)]).unwrap();
        assert_eq!(log.hot_notes(), 0, "a copy of a note on disk is not written again");
        drop(log);

        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!(log.hot_notes(), 0, "read back from notes.index");
        assert_eq!(all(&log), [kept.clone(), vec![gone]].concat());
        assert_eq!(log.erase(AccountId(1), EntityRef { kind: EntityType::Contacts, id: contact }).unwrap(), 1);
        assert_eq!(all(&log), kept);
        assert!(log.garbage() > 0);
        log.compact().unwrap();
        drop(log);
        for name in [FILE_NAME, notes_cold::FILE_NAME] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            assert!(!bytes.windows(8).any(|w| w == b"erased.e"), "{name} keeps the erased URL");
            let id = contact.to_be_bytes();
            assert!(!bytes.windows(8).any(|w| w == id), "{name} keeps the erased contact's id");
        }
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!((all(&log), log.hot_notes()), (kept, 0), "the compaction wrote its notes.index");
    }

    #[test]
    fn without_its_notes_index_or_with_a_damaged_one_the_log_is_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        let notes: Vec<Note> = (1..=200).map(|e| note(e, 100, e)).collect();
        log.append(notes.clone()).unwrap();
        log.checkpoint(0).unwrap();
        drop(log);
        let index = dir.path().join(notes_cold::FILE_NAME);
        let whole = std::fs::read(&index).unwrap();
        let damaged = [&whole[..200], &[whole[200] ^ 1], &whole[201..]].concat();
        std::fs::write(&index, damaged).unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert!(
            log.list(&NotesQuery {
                account: AccountId(1),
                entity_type: EntityType::Contacts,
                entity_ids: None,
                offset: 0,
                limit: usize::MAX,
            })
            .is_err(),
            "a damaged block is reported, not passed over"
        );
        drop(log);
        std::fs::remove_file(&index).unwrap();
        let log = NotesLog::open(dir.path(), Timestamp(0)).unwrap();
        assert_eq!((all(&log), log.hot_notes()), (notes, 200));
    }
}
