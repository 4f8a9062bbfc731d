//! The index of older notes on disk, `notes.index`: every note of `notes.log` up to a
//! point, sorted by entity, time and id, so that memory holds only the notes written since
//! (see [`super::notes_log`]) and a sparse fence of this file.
//!
//! Kept whole in memory, ten million notes took about 1.2 GiB; here they take 41 bytes
//! each on disk and 40 bytes in memory per block of [`BLOCK_ENTRIES`]. Finding an entity's
//! notes is a binary search of the fence and one positional read of a block or two.
//!
//! `notes.index`:
//! - header, integers little-endian: `shortlinks notes.index\n\0` ‖ version u32 ‖ covered u64 (the log's bytes it
//!   describes) ‖ garbage u64 (of those bytes) ‖ the covered tail's hash, 8 bytes of
//!   blake3 ‖ entries u64 ‖ the earliest and latest note's time, u64 each ‖ crc32 of all
//!   before it;
//! - blocks of up to [`BLOCK_ENTRIES`] entries ‖ crc32 of the block; an entry, integers
//!   big-endian, is account u64 ‖ type u8 ‖ entity u64 ‖ time u64 ‖ note id u64 ‖ the frame's slot u64;
//! - the fence: each block's first entry's account, type, entity, time and id ‖ crc32.
//!
//! Like `links.index` it is a cache, used only when it provably describes the log in
//! place: checksums, a covered length the log holds, and the hash of the last 4 KiB it
//! covers. Otherwise the log is read through. It is written to a copy, synced and renamed
//! into place; a compaction deletes it before it puts a new log in place, and puts its own
//! next to it after, so no erased entity's id outlives the compaction in it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{io, sync_dir, Slot};
use super::link_index::{tail_hash, Reader};
use super::notes_index::{Entity, NoteSlot};
use crate::Error;

/// Its name in the data directory.
pub(super) const FILE_NAME: &str = "notes.index";
const MAGIC: &[u8; 24] = b"shortlinks notes.index\n\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 4;
/// An entry's bytes.
const ENTRY: usize = 8 + 1 + 8 + 8 + 8 + 8;
/// A fence key's bytes: an entry without its slot.
const KEY: usize = ENTRY - 8;
/// Entries per block: a read of about 5 KiB finds an entity's notes.
pub(super) const BLOCK_ENTRIES: usize = 128;
const BLOCK: usize = ENTRY * BLOCK_ENTRIES + 4;

/// A note's place in the order: entity, time, id.
pub(super) type NoteKey = (Entity, u64, u64);

/// One note as the index on disk holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) entity: Entity,
    pub(super) note: NoteSlot,
}

impl Entry {
    pub(super) fn key(&self) -> NoteKey {
        (self.entity, self.note.at, self.note.id)
    }

    fn write(&self, out: &mut Vec<u8>) {
        write_key(out, self.key());
        out.extend_from_slice(&self.note.slot.raw().to_be_bytes());
    }

    fn read(bytes: &[u8]) -> Self {
        let (entity, at, id) = read_key(bytes);
        let slot = Slot::from_raw(u64_at(bytes, KEY));
        Self { entity, note: NoteSlot { at, id, slot } }
    }
}

fn write_key(out: &mut Vec<u8>, ((account, kind, entity), at, id): NoteKey) {
    out.extend_from_slice(&account.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&entity.to_be_bytes());
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
}

fn read_key(bytes: &[u8]) -> NoteKey {
    ((u64_at(bytes, 0), bytes[8], u64_at(bytes, 9)), u64_at(bytes, 17), u64_at(bytes, 25))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

/// `notes.index` read back: its fence in memory, its blocks read when asked for.
pub(super) struct ColdNotes {
    file: File,
    path: PathBuf,
    /// The log's bytes it describes: every note before them is here, or was removed.
    pub(super) covered: u64,
    /// Bytes of garbage among them when it was written.
    pub(super) garbage: u64,
    entries: u64,
    /// The earliest and the latest note's time: a note outside them is not here.
    pub(super) min_at: u64,
    max_at: u64,
    /// Each block's first key.
    fence: Vec<NoteKey>,
}

impl ColdNotes {
    /// The index in `dir`, if there is one that describes `log` (of `log_len` bytes). One
    /// that does not is passed over with a warning saying why.
    pub(super) fn read(dir: &Path, log: &File, log_len: u64) -> Option<Self> {
        let _ = std::fs::remove_file(dir.join(new_name())); // cut short by a crash
        let path = dir.join(FILE_NAME);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open notes.index: reading notes.log through");
                return None;
            }
        };
        match Self::read_checked(file, path, log, log_len) {
            Ok(cold) => Some(cold),
            Err(why) => {
                tracing::warn!(why, "notes.index does not describe notes.log: reading notes.log through");
                None
            }
        }
    }

    fn read_checked(file: File, path: PathBuf, log: &File, log_len: u64) -> Result<Self, String> {
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(|e| format!("its header cannot be read: {e}"))?;
        let (fields, crc) = header.split_at(HEADER_LEN - 4);
        if crc32fast::hash(fields).to_le_bytes() != crc {
            return Err("its header is damaged".into());
        }
        let mut r = Reader(fields);
        if r.take(MAGIC.len())? != MAGIC {
            return Err("it is not a notes.index".into());
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!("it is of version {version}"));
        }
        let (covered, garbage) = (r.u64()?, r.u64()?);
        let tail: [u8; 8] = r.take(8)?.try_into().map_err(|_| "its header is cut short")?;
        let (entries, min_at, max_at) = (r.u64()?, r.u64()?, r.u64()?);
        if covered > log_len {
            return Err(format!("it covers {covered} bytes, the log holds {log_len}"));
        }
        let blocks = entries.div_ceil(BLOCK_ENTRIES as u64);
        let body = entries * ENTRY as u64 + blocks * 4;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len != HEADER_LEN as u64 + body + blocks * KEY as u64 + 4 {
            return Err(format!("it is {len} bytes, not what its header says"));
        }
        if tail_hash(log, covered).map_err(|e| e.to_string())? != tail {
            return Err("the log it covers was rewritten".into());
        }
        let mut fence_bytes = vec![0u8; blocks as usize * KEY + 4];
        file.read_exact_at(&mut fence_bytes, HEADER_LEN as u64 + body).map_err(|e| e.to_string())?;
        let (keys, crc) = fence_bytes.split_at(blocks as usize * KEY);
        if crc32fast::hash(keys).to_le_bytes() != crc {
            return Err("its fence is damaged".into());
        }
        let fence = keys.chunks_exact(KEY).map(read_key).collect();
        Ok(Self { file, path, covered, garbage, entries, min_at, max_at, fence })
    }

    /// How many notes it holds, removed ones included.
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.entries
    }

    /// The entries of block `i`, checked.
    fn block(&self, i: usize) -> Result<Vec<Entry>, Error> {
        let first = (i * BLOCK_ENTRIES) as u64;
        let n = (self.entries - first).min(BLOCK_ENTRIES as u64) as usize;
        let mut bytes = vec![0u8; n * ENTRY + 4];
        self.file.read_exact_at(&mut bytes, HEADER_LEN as u64 + (i * BLOCK) as u64).map_err(io)?;
        let (entries, crc) = bytes.split_at(n * ENTRY);
        if crc32fast::hash(entries).to_le_bytes() != crc {
            return Err(Error::Corrupt(format!("{} is damaged in block {i}", self.path.display())));
        }
        Ok(entries.chunks_exact(ENTRY).map(Entry::read).collect())
    }

    /// Its entries in order, from the first whose key is at least `from`.
    pub(super) fn from(&self, from: NoteKey) -> Cursor<'_> {
        let block = self.fence.partition_point(|k| *k < from).saturating_sub(1);
        Cursor { cold: self, block, entries: Vec::new(), at: 0, from }
    }

    /// Every entry of `entity`, in time order.
    pub(super) fn of_entity(&self, entity: Entity) -> Result<Vec<Entry>, Error> {
        self.from((entity, 0, 0)).take_while(|e| e.as_ref().map_or(true, |e| e.entity == entity)).collect()
    }

    /// Whether it holds the note `key`.
    pub(super) fn contains(&self, key: NoteKey) -> Result<bool, Error> {
        if self.entries == 0 || key.1 < self.min_at || key.1 > self.max_at {
            return Ok(false);
        }
        Ok(self.from(key).next().transpose()?.is_some_and(|e| e.key() == key))
    }
}

/// Entries of [`ColdNotes`] in order, read a block at a time.
pub(super) struct Cursor<'a> {
    cold: &'a ColdNotes,
    block: usize,
    entries: Vec<Entry>,
    at: usize,
    from: NoteKey,
}

impl Iterator for Cursor<'_> {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.entries.get(self.at) {
                self.at += 1;
                if entry.key() >= self.from {
                    return Some(Ok(*entry));
                }
                continue;
            }
            if self.block >= self.cold.fence.len() {
                return None;
            }
            match self.cold.block(self.block) {
                Ok(entries) => (self.entries, self.at) = (entries, 0),
                Err(e) => {
                    self.block = self.cold.fence.len();
                    return Some(Err(e));
                }
            }
            self.block += 1;
        }
    }
}

/// A new `notes.index`, written entry by entry in key order.
pub(super) struct ColdWriter {
    path: PathBuf,
    out: std::io::BufWriter<File>,
    block: Vec<u8>,
    in_block: usize,
    fence: Vec<u8>,
    entries: u64,
    min_at: u64,
    max_at: u64,
    last: Option<NoteKey>,
}

impl ColdWriter {
    /// Starts the copy in `dir` that [`Written::put_in_place`] will rename.
    pub(super) fn start(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(new_name());
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0; HEADER_LEN]).map_err(io)?;
        Ok(Self {
            path,
            out,
            block: Vec::with_capacity(BLOCK),
            in_block: 0,
            fence: Vec::new(),
            entries: 0,
            min_at: u64::MAX,
            max_at: 0,
            last: None,
        })
    }

    /// Adds the next entry: keys must come in order, each once.
    pub(super) fn push(&mut self, entry: Entry) -> Result<(), Error> {
        let key = entry.key();
        if self.last.is_some_and(|last| last >= key) {
            return Err(Error::Corrupt(format!("notes.index written out of order at {key:?}")));
        }
        self.last = Some(key);
        if self.in_block == 0 {
            write_key(&mut self.fence, key);
        }
        entry.write(&mut self.block);
        self.in_block += 1;
        self.entries += 1;
        self.min_at = self.min_at.min(entry.note.at);
        self.max_at = self.max_at.max(entry.note.at);
        if self.in_block == BLOCK_ENTRIES {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<(), Error> {
        let crc = crc32fast::hash(&self.block);
        self.block.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.block).map_err(io)?;
        self.block.clear();
        self.in_block = 0;
        Ok(())
    }

    /// Ends the copy as describing `log`'s first `covered` bytes, of which `garbage` are
    /// garbage, and syncs it. The index can be read at once; it is found on the next open
    /// once [`Pending::put_in_place`] has renamed it, which the log's bytes up to `covered`
    /// must be synced and in place for.
    pub(super) fn finish(mut self, log: &File, covered: u64, garbage: u64) -> Result<(ColdNotes, Pending), Error> {
        if self.in_block > 0 {
            self.end_block()?;
        }
        let crc = crc32fast::hash(&self.fence);
        self.fence.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.fence).map_err(io)?;
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        let (min_at, max_at) = if self.entries == 0 { (0, 0) } else { (self.min_at, self.max_at) };
        header.extend_from_slice(&covered.to_le_bytes());
        header.extend_from_slice(&garbage.to_le_bytes());
        header.extend_from_slice(&tail_hash(log, covered)?);
        for word in [self.entries, min_at, max_at] {
            header.extend_from_slice(&word.to_le_bytes());
        }
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        file.write_all_at(&header, 0).and_then(|()| file.sync_all()).map_err(io)?;
        let fence = self.fence[..self.fence.len() - 4].chunks_exact(KEY).map(read_key).collect();
        let path = self.path.with_file_name(FILE_NAME);
        let cold =
            ColdNotes { file, path: path.clone(), covered, garbage, entries: self.entries, min_at, max_at, fence };
        Ok((cold, Pending { copy: self.path, path }))
    }
}

/// A `notes.index` written and synced, not yet in place.
pub(super) struct Pending {
    copy: PathBuf,
    path: PathBuf,
}

impl Pending {
    /// Renames it into place, durably.
    pub(super) fn put_in_place(self) -> Result<(), Error> {
        std::fs::rename(&self.copy, &self.path).map_err(io)?;
        match self.path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

/// Deletes the index, durably: before a compaction puts a new log in place.
pub(super) fn remove(dir: &Path) -> Result<(), Error> {
    super::frame::remove_durably(dir, FILE_NAME)
}

fn new_name() -> String {
    format!("{FILE_NAME}.new")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(entity: u64, at: u64, id: u64) -> Entry {
        Entry { entity: (1, 1, entity), note: NoteSlot { at, id, slot: Slot::new(at * 1000 + id, 50) } }
    }

    /// A log of `len` bytes the index can describe.
    fn log(dir: &Path, len: usize) -> File {
        let path = dir.join("notes.log");
        std::fs::write(&path, (0..len).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
        File::open(path).unwrap()
    }

    fn written(dir: &Path, log: &File, entries: &[Entry]) -> ColdNotes {
        let mut writer = ColdWriter::start(dir).unwrap();
        for &e in entries {
            writer.push(e).unwrap();
        }
        let (cold, pending) = writer.finish(log, 5000, 17).unwrap();
        pending.put_in_place().unwrap();
        cold
    }

    #[test]
    fn entities_are_found_across_blocks_and_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 6000);
        // Entity 5 straddles the first blocks; every other entity has one note.
        let mut entries: Vec<Entry> = (0..300).map(|i| entry(5, 10 + i, i)).collect();
        entries.extend((6..400).map(|e| entry(e, 7, e)));
        entries.insert(0, entry(2, 3, 1));
        let written = written(dir.path(), &log, &entries);
        let cold = ColdNotes::read(dir.path(), &log, 6000).unwrap();
        for cold in [written, cold] {
            assert_eq!((cold.len(), cold.covered, cold.garbage, cold.min_at), (entries.len() as u64, 5000, 17, 3));
            assert_eq!(cold.of_entity((1, 1, 5)).unwrap(), entries[1..301]);
            assert_eq!(cold.of_entity((1, 1, 399)).unwrap(), [entry(399, 7, 399)]);
            assert!(cold.of_entity((1, 1, 4)).unwrap().is_empty());
            assert!(cold.of_entity((2, 1, 5)).unwrap().is_empty(), "another account");
            assert!(cold.contains(((1, 1, 5), 150, 140)).unwrap());
            assert!(!cold.contains(((1, 1, 5), 150, 141)).unwrap());
            assert!(!cold.contains(((1, 1, 5), 2, 0)).unwrap(), "before the earliest");
            let all: Vec<Entry> = cold.from(((0, 0, 0), 0, 0)).map(Result::unwrap).collect();
            assert_eq!(all, entries);
            let from: Vec<u64> = cold.from(((1, 1, 398), 0, 0)).map(|e| e.unwrap().entity.2).collect();
            assert_eq!(from, [398, 399]);
        }
        assert!(!dir.path().join(new_name()).exists());
    }

    #[test]
    fn an_index_that_does_not_describe_the_log_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let entries: Vec<Entry> = (0..200).map(|e| entry(e, 1, e)).collect();
        let log = log(dir.path(), 6000);
        written(dir.path(), &log, &entries);
        assert!(ColdNotes::read(dir.path(), &log, 4999).is_none(), "it covers more than the log holds");
        let whole = std::fs::read(&path).unwrap();

        // The log rewritten under it.
        let other = self::log(dir.path(), 7000);
        let bytes: Vec<u8> = (0..7000).map(|i| (i * 7) as u8).collect();
        std::fs::write(dir.path().join("notes.log"), bytes).unwrap();
        assert!(ColdNotes::read(dir.path(), &other, 7000).is_none(), "another log");

        let log = self::log(dir.path(), 6000);
        for (what, damaged) in [
            ("cut short", whole[..whole.len() - 1].to_vec()),
            ("a flipped bit in its header", [&whole[..40], &[whole[40] ^ 1], &whole[41..]].concat()),
            (
                "a flipped bit in its fence",
                [&whole[..whole.len() - 6], &[whole[whole.len() - 6] ^ 1], &whole[whole.len() - 5..]].concat(),
            ),
        ] {
            std::fs::write(&path, damaged).unwrap();
            assert!(ColdNotes::read(dir.path(), &log, 6000).is_none(), "{what}");
        }
        // A flipped bit in a block is found when the block is read.
        let at = HEADER_LEN + 10;
        std::fs::write(&path, [&whole[..at], &[whole[at] ^ 1], &whole[at + 1..]].concat()).unwrap();
        let cold = ColdNotes::read(dir.path(), &log, 6000).unwrap();
        assert!(matches!(cold.of_entity((1, 1, 0)), Err(Error::Corrupt(_))));
        assert!(cold.of_entity((1, 1, 199)).is_ok(), "another block");
        // A copy left by a crash is deleted.
        std::fs::write(dir.path().join(new_name()), b"half").unwrap();
        std::fs::write(&path, &whole).unwrap();
        assert!(ColdNotes::read(dir.path(), &log, 6000).is_some());
        assert!(!dir.path().join(new_name()).exists());
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ColdWriter::start(dir.path()).unwrap();
        writer.push(entry(2, 1, 1)).unwrap();
        assert!(writer.push(entry(1, 1, 1)).is_err());
        assert!(writer.push(entry(2, 1, 1)).is_err(), "nor twice");
    }
}
