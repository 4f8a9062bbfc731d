//! Links in one append-only file with an index in memory: how the sled backend keeps them.
//!
//! A link is never changed once written, only erased, and the redirect reads one by its code.
//! In a sled 0.34 tree every insert copies a B-tree node (with a reference-count write per
//! value in it), and a read at a million links walks four levels of pages, most of them
//! cache misses. Here a batch of links is one write and one `fdatasync`, and a read is a
//! hash probe and one positional read of the link's frame.
//!
//! `links.log` in the data directory is a run of [`frame`]s, each holding
//! `code length u8 ‖ code ‖ link record` ([`crate::codec`]), or, for an erased link,
//! `0u8 ‖ code length u8 ‖ code`: the link is no longer found from that frame on (its bytes
//! stay in the file until it is compacted). The index lives in memory
//! ([`link_index`]). Opening reads it back from its checkpoint, `links.index`, and then
//! reads the file from where the checkpoint ends; without a checkpoint that describes the
//! file, it reads the file through, taking the codes from the frames without decoding the
//! records. The checkpoint is written when the store is flushed on shutdown, after a
//! compaction, and by the store's upkeep once the file has grown by [`CHECKPOINT_EVERY`].
//! The index maps a 64-bit hash of each code to where its frame is:
//! a 17-byte slot per link in tables kept 44–87% full, 36 MB at a million links. A read
//! checks the code in the frame it finds, so codes whose hashes collide are told apart
//! (that any two of a million codes share a hash has a chance of about 3 in 10^8): the
//! second of a pair is kept in a small map by its code.
//!
//! Crash safety: an insert returns once its frames are written and `fdatasync`ed, and a
//! link is indexed only after its frame is written. Opening stops at the first frame that
//! is short or fails its checksum. That is normally an insert that never returned, torn
//! by the crash; but its pages may reach the disk in any order, and damage to acknowledged
//! links looks the same, so nothing is thrown away: the bytes from there on are copied to
//! `links.log.cut-<offset>`, the file is cut, and every intact frame found in the cut
//! bytes is appended again. Salvaging a torn insert's whole frames is harmless: those links
//! were never reported, and a retry of that insert finds them.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use foldhash::fast::FixedState;
use parking_lot::Mutex;

use super::file_header;
use super::frame::{self, io, Slot, Tail, HEADER};
use super::link_index::{self, code_hash, shard_of, CodeHash, Shard};
use super::InsertOutcome;
use crate::code::ShortCode;
use crate::codec::{decode, encode_after};
use crate::model::{AccountId, EntityRef, Link};
use crate::target::TargetUrl;
use crate::Error;

/// The file's name in the data directory.
pub(crate) const FILE_NAME: &str = "links.log";
/// How much the file grows between the checkpoints the store's upkeep writes: reading
/// that much at start-up takes about 0.15 s.
pub(crate) const CHECKPOINT_EVERY: u64 = 32 << 20;
/// The longest frame record: anything longer is not a frame this wrote, and opening takes
/// it for a torn one.
const MAX_RECORD: usize = (64 << 10) - 1;
const _: () = assert!(MAX_RECORD <= Slot::MAX_LEN);
// So no link's record comes near it: its target is bounded, and the code, the ids and the
// time take under 100 bytes more.
const _: () = assert!(1 + ShortCode::MAX_LEN + 1 + crate::target::MAX_NORMALIZED_BYTES + 100 < MAX_RECORD);
/// The file and its index, replaced together by a compaction: a reader that loaded one
/// reads its file with its slots, whichever is current by then.
struct Generation {
    file: File,
    index: Box<[Shard]>,
    /// Where its frames start: after its header ([`file_header`]), or at 0 in a file of
    /// version 1.
    start: u64,
}

impl Generation {
    /// A compaction's copy, which starts with its header.
    fn copy(file: File) -> Self {
        Self { file, index: link_index::empty(), start: file_header::LEN }
    }

    /// The slot of `code` if it is a collided one, else the slot its hash leads to.
    fn lookup(&self, hash: u64, code: &ShortCode) -> Option<Slot> {
        self.index[shard_of(hash)].read().lookup(hash, code)
    }

    /// Indexes a frame found in the file (on open, or copied by a compaction). The first
    /// frame of a code is its link (an insert never writes a second); a code whose hash
    /// an earlier one has goes to `collided`.
    fn index_found(&self, path: &Path, hash: u64, code: ShortCode, slot: Slot) -> Result<(), Error> {
        let mut index = self.index[shard_of(hash)].write();
        let index = &mut *index;
        match index.by_hash.entry(hash) {
            Entry::Vacant(first) => {
                first.insert(slot);
            }
            Entry::Occupied(first) => {
                if with_frame(&self.file, path, *first.get(), |found, _| found)? != code {
                    index.collided.entry(code).or_insert(slot);
                }
            }
        }
        Ok(())
    }

    /// Drops `code` from the index; its slot, if it was there. A code sharing its hash
    /// moves into the place it leaves.
    fn unindex(&self, path: &Path, hash: u64, code: &ShortCode, hash_of: CodeHash) -> Result<Option<Slot>, Error> {
        let mut index = self.index[shard_of(hash)].write();
        let index = &mut *index;
        if let Some(slot) = index.collided.remove(code) {
            return Ok(Some(slot));
        }
        let Some(&slot) = index.by_hash.get(&hash) else { return Ok(None) };
        if with_frame(&self.file, path, slot, |found, _| found)? != *code {
            return Ok(None);
        }
        index.by_hash.remove(&hash);
        let mut same_hash = index.collided.keys().filter(|c| hash_of(c) == hash);
        if let Some(next) = same_hash.next().copied() {
            if let Some(moved) = index.collided.remove(&next) {
                index.by_hash.insert(hash, moved);
            }
        }
        Ok(Some(slot))
    }
}

/// The links of one data directory. Methods block (file I/O): an insert belongs off the
/// async runtime; a read is a positional read of one frame, like a sled read that misses
/// sled's cache.
pub(crate) struct LinkLog {
    path: PathBuf,
    current: ArcSwap<Generation>,
    tail: Mutex<Tail>,
    hash: CodeHash,
    /// Bytes of frames nothing needs any more: erased links, and the erasures themselves.
    garbage: AtomicU64,
    /// How much of the log the checkpoint on disk covers, if there is one. Its lock is
    /// held while one is written, and by a compaction throughout ([`link_index::write`]).
    checkpointed: Mutex<Option<u64>>,
    /// Where opening started to read the log: the end of the checkpoint it read, or 0.
    #[cfg(test)]
    read_from: u64,
}

/// Reads the frame at `slot` (one `pread`), checks it, and hands its code and link record
/// to `f`.
fn with_frame<R>(file: &File, path: &Path, slot: Slot, f: impl FnOnce(ShortCode, &[u8]) -> R) -> Result<R, Error> {
    let mut bytes = vec![0u8; HEADER as usize + slot.len()];
    file.read_exact_at(&mut bytes, slot.offset()).map_err(io)?;
    let whole = frame::parse(&bytes, MAX_RECORD).filter(|record| record.len() == slot.len());
    let (code, link) = whole
        .and_then(split)
        .ok_or_else(|| Error::Corrupt(format!("{} is damaged at {}", path.display(), slot.offset())))?;
    Ok(f(code, link))
}

/// A frame's record: the code, then the link record.
fn record(link: &Link) -> Result<Vec<u8>, Error> {
    let code = link.code.as_bytes();
    let mut record = Vec::with_capacity(1 + code.len() + 256);
    record.push(code.len() as u8);
    record.extend_from_slice(code);
    encode_after(link, record)
}

/// An erasure's record.
fn erasure_record(code: &ShortCode) -> Vec<u8> {
    [&[0, code.as_bytes().len() as u8][..], code.as_bytes()].concat()
}

/// What a frame holds.
enum Found<'r> {
    /// A link: its code and its link record.
    Link(ShortCode, &'r [u8]),
    /// The link with this code was erased.
    Erased(ShortCode),
}

/// Reads a frame's record.
fn found(record: &[u8]) -> Option<Found<'_>> {
    match record.split_first()? {
        (0, rest) => {
            let (&len, code) = rest.split_first()?;
            (code.len() == usize::from(len)).then(|| ShortCode::from_key(code)).flatten().map(Found::Erased)
        }
        (_, _) => split(record).map(|(code, link)| Found::Link(code, link)),
    }
}

/// Splits a link frame's record into its code and its link record.
fn split(record: &[u8]) -> Option<(ShortCode, &[u8])> {
    let (&len, rest) = record.split_first()?;
    let code = ShortCode::from_key(rest.get(..usize::from(len))?)?;
    Some((code, &rest[usize::from(len)..]))
}

/// Whether an intact frame's record is an erasure or a link that decodes under its code:
/// what recovery keeps of cut-off bytes.
fn salvage(record: &[u8]) -> Option<()> {
    match found(record)? {
        Found::Erased(_) => Some(()),
        Found::Link(code, link) => decode::<Link>(link).ok().filter(|l| l.code == code).map(|_| ()),
    }
}

fn framed_len(record: &[u8]) -> u64 {
    HEADER + record.len() as u64
}

/// A compaction's copy of the links, as it is made.
struct LinkCopy<'a> {
    log: &'a LinkLog,
    old: &'a Generation,
    out: frame::Compacted,
    /// The copy's index, by the copy's offsets.
    new: Generation,
    /// Bytes of the copy that are already garbage: links erased while it was made.
    garbage: u64,
}

impl LinkCopy<'_> {
    /// Takes one frame of the old file: a live link (the one the index points at) is
    /// copied; an erasure is dropped, unless it came while the copy was made (`since`):
    /// then its link may be in the copy already, so it is copied too, and applied.
    fn take(&mut self, offset: u64, record: &[u8], since: bool) -> Result<(), Error> {
        match found(record) {
            Some(Found::Link(code, _)) => {
                let hash = (self.log.hash)(&code);
                if self.old.lookup(hash, &code) == Some(Slot::new(offset, record.len())) {
                    let slot = Slot::new(self.out.next_offset(), record.len());
                    self.out.append(record)?;
                    // Each live code is copied once.
                    self.new.index[shard_of(hash)].write().insert_new(hash, code, slot);
                }
            }
            Some(Found::Erased(code)) if since => {
                // The index reads frames back: what is taken so far must be in the file.
                self.out.flush()?;
                let hash = (self.log.hash)(&code);
                let erased = self.new.unindex(&self.log.path, hash, &code, self.log.hash)?;
                self.out.append(record)?;
                self.garbage += framed_len(record) + erased.map_or(0, |slot| HEADER + slot.len() as u64);
            }
            Some(Found::Erased(_)) | None => {}
        }
        Ok(())
    }
}

impl LinkLog {
    /// Opens (or creates) `links.log` in `dir` and indexes every intact frame.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_hashing(dir, code_hash)
    }

    /// As [`LinkLog::open`], with the index keyed by `hash`: tests make codes collide.
    fn open_hashing(dir: &Path, hash: CodeHash) -> Result<Self, Error> {
        let frame::OpenLog { path, file, len, start } = frame::open_log(dir, FILE_NAME, file_header::LINKS)?;
        let (read_from, garbage, index) = match link_index::read(dir, &file, len, hash) {
            Some(checkpoint) if checkpoint.covered >= start => {
                (checkpoint.covered, checkpoint.garbage, checkpoint.index)
            }
            _ => (start, 0, link_index::empty()),
        };
        let log = Self {
            path,
            current: ArcSwap::from_pointee(Generation { file, index, start }),
            tail: Mutex::new(Tail::new(len)),
            hash,
            garbage: AtomicU64::new(garbage),
            checkpointed: Mutex::new((read_from > start).then_some(read_from)),
            #[cfg(test)]
            read_from,
        };
        let reader = log.current.load().file.try_clone().map_err(io)?;
        let valid = frame::read_between(&reader, read_from, u64::MAX, MAX_RECORD, |offset, record| {
            log.take_in(offset, record)
        })?;
        if valid < len {
            log.recover(valid, len)?;
        }
        tracing::debug!(log = %log.path.display(), checkpoint = read_from, read = len - read_from, "links indexed");
        Ok(log)
    }

    /// Writes the index's checkpoint ([`link_index`]) if the log has changed by at least
    /// `min_change` bytes since the last one (by any, for 1); whether it wrote one.
    pub(crate) fn checkpoint(&self, min_change: u64) -> Result<bool, Error> {
        let mut checkpointed = self.checkpointed.lock();
        self.checkpoint_locked(&mut checkpointed, min_change)
    }

    fn checkpoint_locked(&self, checkpointed: &mut Option<u64>, min_change: u64) -> Result<bool, Error> {
        let (current, covered, garbage) = {
            let tail = self.tail.lock();
            tail.check(&self.path)?;
            (self.current.load_full(), tail.len, self.garbage.load(Relaxed))
        };
        if checkpointed.is_some_and(|at| at.abs_diff(covered) < min_change.max(1)) || covered == 0 {
            return Ok(false);
        }
        // Every frame it points at is on disk before it is.
        frame::sync_appended(&current.file, &self.tail, &self.path)?;
        link_index::write(self.dir(), &current.file, covered, garbage, &current.index, self.hash)?;
        *checkpointed = Some(covered);
        Ok(true)
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Indexes a link frame found on open, or drops the link an erasure frame names.
    fn take_in(&self, offset: u64, record: &[u8]) -> Result<(), Error> {
        let current = self.current.load();
        // Intact, so this wrote it: a record without a code is a bug, not a torn write.
        match found(record) {
            Some(Found::Link(code, _)) => {
                current.index_found(&self.path, (self.hash)(&code), code, Slot::new(offset, record.len()))
            }
            Some(Found::Erased(code)) => {
                let erased = current.unindex(&self.path, (self.hash)(&code), &code, self.hash)?;
                let link = erased.map_or(0, |slot| HEADER + slot.len() as u64);
                self.garbage.fetch_add(link + framed_len(record), Relaxed);
                Ok(())
            }
            None => Err(Error::Corrupt(format!("{} holds a frame without a code at {offset}", self.path.display()))),
        }
    }

    /// Sets the bytes from `valid` to `len` aside, cuts them off, and appends again every
    /// intact frame among them whose link decodes under its code.
    fn recover(&self, valid: u64, len: u64) -> Result<(), Error> {
        let current = self.current.load();
        let (end, kept) = frame::recover(&current.file, &self.path, valid, len, MAX_RECORD, |r| salvage(r).is_some())?;
        self.tail.lock().len = end;
        for (offset, record) in kept {
            self.take_in(offset, &record)?;
        }
        Ok(())
    }

    /// The slot and link of `code`, if it is stored.
    fn find(&self, code: &ShortCode) -> Result<Option<(Slot, Link)>, Error> {
        let current = self.current.load();
        let hash = (self.hash)(code);
        let Some(slot) = current.lookup(hash, code) else { return Ok(None) };
        // `None` for another code with the same hash.
        let link =
            with_frame(&current.file, &self.path, slot, |found, link| (found == *code).then(|| decode::<Link>(link)));
        let Some(link) = link?.transpose()? else { return Ok(None) };
        if link.code != *code {
            return Err(Error::Corrupt(format!("{} holds a link under another code", self.path.display())));
        }
        Ok(Some((slot, link)))
    }

    /// The link with this code.
    pub(crate) fn get(&self, code: &ShortCode) -> Result<Option<Link>, Error> {
        Ok(self.find(code)?.map(|(_, link)| link))
    }

    /// Every link of one entity, in code order: a read of the whole file (an erasure's
    /// look, not the redirect's).
    pub(crate) fn links_of(&self, account: AccountId, entity: EntityRef) -> Result<Vec<Link>, Error> {
        self.links_where(|link| link.account == account && link.entity == entity)
    }

    /// The first `limit` links of one account to one target, in code order: a read of the
    /// whole file too (an operator's look-up).
    pub(crate) fn links_to(&self, account: AccountId, target: &TargetUrl, limit: usize) -> Result<Vec<Link>, Error> {
        let mut links = self.links_where(|link| link.account == account && link.target == *target)?;
        links.truncate(limit);
        Ok(links)
    }

    /// Every live link that `wanted` keeps, in code order.
    fn links_where(&self, wanted: impl Fn(&Link) -> bool) -> Result<Vec<Link>, Error> {
        // Together: a compaction replaces both under the appender's lock.
        let (current, end) = {
            let tail = self.tail.lock();
            (self.current.load_full(), tail.len)
        };
        let mut links = Vec::new();
        frame::read_between(&current.file, current.start, end, MAX_RECORD, |offset, record| {
            if let Some(Found::Link(code, bytes)) = found(record) {
                let link: Link = decode(bytes)?;
                let live = current.lookup((self.hash)(&code), &code) == Some(Slot::new(offset, record.len()));
                if live && wanted(&link) {
                    links.push(link);
                }
            }
            Ok(())
        })?;
        links.sort_by_key(|l| l.code);
        Ok(links)
    }

    /// Appends each link whose code is free, in order; a taken code (here or earlier in
    /// the batch) is left as it is and reported with its link. Durable when it returns,
    /// and so is every link it reports as taken.
    pub(crate) fn insert(&self, links: &[Link]) -> Result<Vec<InsertOutcome>, Error> {
        let mut tail = self.tail.lock();
        tail.check(&self.path)?;
        // Under the appender's lock: a compaction puts its copy in place under it too.
        let current = self.current.load_full();
        let mut outcomes = Vec::with_capacity(links.len());
        let mut frames = Vec::new();
        let mut fresh: HashMap<ShortCode, (Slot, usize), FixedState> = HashMap::default();
        for (i, link) in links.iter().enumerate() {
            if let Some(&(_, first)) = fresh.get(&link.code) {
                outcomes.push(InsertOutcome::Occupied(links[first].clone()));
            } else if let Some((_, existing)) = self.find(&link.code)? {
                outcomes.push(InsertOutcome::Occupied(existing));
            } else {
                let record = record(link)?;
                let offset = tail.len + frames.len() as u64;
                if offset + HEADER + record.len() as u64 >= Slot::MAX_OFFSET {
                    return Err(Error::Storage(format!("{} is full", self.path.display()).into()));
                }
                fresh.insert(link.code, (Slot::new(offset, record.len()), i));
                frame::append(&mut frames, &record);
                outcomes.push(InsertOutcome::Inserted);
            }
        }
        if !frames.is_empty() {
            if let Err(e) = current.file.write_all_at(&frames, tail.len) {
                let _ = current.file.set_len(tail.len); // best effort: open cuts a torn end anyway
                return Err(io(e));
            }
            tail.len += frames.len() as u64;
            // Written before indexed: a reader never finds a code whose frame is not there.
            for (code, (slot, _)) in fresh {
                let hash = (self.hash)(&code);
                // Under the appender's lock: no other insert is indexing this code.
                current.index[shard_of(hash)].write().insert_new(hash, code, slot);
            }
        }
        drop(tail);
        // It also covers a taken code found above whose own insert has not synced yet: its
        // frame was written first. A compaction since then synced its copy before putting
        // it in place.
        frame::sync_appended(&current.file, &self.tail, &self.path)?;
        Ok(outcomes)
    }

    /// Erases the links with these codes: an erasure frame each, synced, then out of the
    /// index. Codes not stored are passed over.
    pub(crate) fn erase(&self, codes: &[ShortCode]) -> Result<(), Error> {
        let mut tail = self.tail.lock();
        tail.check(&self.path)?;
        let current = self.current.load_full();
        let mut frames = Vec::new();
        let mut stored = Vec::with_capacity(codes.len());
        for code in codes {
            if self.find(code)?.is_some() && !stored.contains(code) {
                frame::append(&mut frames, &erasure_record(code));
                stored.push(*code);
            }
        }
        if frames.is_empty() {
            return Ok(());
        }
        if tail.len + frames.len() as u64 >= Slot::MAX_OFFSET {
            return Err(Error::Storage(format!("{} is full", self.path.display()).into()));
        }
        if let Err(e) = current.file.write_all_at(&frames, tail.len) {
            let _ = current.file.set_len(tail.len);
            return Err(io(e));
        }
        tail.len += frames.len() as u64;
        // Out of the index under the appender's lock, so that a compaction's catching up
        // finds each erased link either still indexed or with its erasure frame after it.
        let mut garbage = frames.len() as u64;
        for code in &stored {
            let slot = current.unindex(&self.path, (self.hash)(code), code, self.hash)?;
            garbage += slot.map_or(0, |slot| HEADER + slot.len() as u64);
        }
        self.garbage.fetch_add(garbage, Relaxed);
        drop(tail);
        frame::sync_appended(&current.file, &self.tail, &self.path)
    }

    /// How many bytes the file has, and how many of them nothing needs any more.
    pub(crate) fn usage(&self) -> (u64, u64) {
        (self.tail.lock().len, self.garbage.load(Relaxed))
    }

    /// Rewrites the file without erased links and erasures, and puts the copy in its
    /// place ([`frame::Compacted`]): crash-safe at every point. Reads go on throughout
    /// (from the old file until the new one is in place); inserts and erasures wait only
    /// while the copy takes in what came after it started. Returns the bytes it freed.
    pub(crate) fn compact(&self) -> Result<u64, Error> {
        // The checkpoint describes the old file: none is written until the new one is in place.
        let mut checkpointed = self.checkpointed.lock();
        let old = self.current.load_full();
        let started_at = self.tail.lock().len;
        let out = frame::Compacted::start(&self.path, file_header::LINKS)?;
        let new = Generation::copy(out.file().try_clone().map_err(io)?);
        let mut copy = LinkCopy { log: self, old: &old, out, new, garbage: 0 };
        frame::read_between(&old.file, old.start, started_at, MAX_RECORD, |offset, record| {
            copy.take(offset, record, false)
        })?;
        let mut tail = self.tail.lock();
        tail.check(&self.path)?;
        // What came since: links inserted, and erasures, while the copy was made.
        frame::read_between(&old.file, started_at, tail.len, MAX_RECORD, |offset, record| {
            copy.take(offset, record, true)
        })?;
        let LinkCopy { out, new, garbage, .. } = copy;
        link_index::remove(self.dir())?;
        *checkpointed = None;
        let written = out.put_in_place(&self.path)?;
        let freed = tail.len.saturating_sub(written);
        self.current.store(Arc::new(new));
        tail.len = written;
        self.garbage.store(garbage, Relaxed);
        drop(tail);
        // A restart soon after need not read the new file through.
        if let Err(e) = self.checkpoint_locked(&mut checkpointed, 1) {
            tracing::warn!(error = %e, "links.log was compacted, but its index's checkpoint could not be written");
        }
        Ok(freed)
    }

    /// Where opening started to read the log.
    #[cfg(test)]
    fn read_from(&self) -> u64 {
        self.read_from
    }

    /// How many links there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let current = self.current.load();
        let sizes = current.index.iter().map(|shard| {
            let index = shard.read();
            index.by_hash.len() + index.collided.len()
        });
        sizes.sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs::OpenOptions;

    use super::*;
    use crate::store::conformance::link;

    fn links(from: u64, n: u64) -> Vec<Link> {
        (from..from + n).map(|i| link(&format!("CODE{i:08}"), 1, i, &format!("https://x.example/{i}"))).collect()
    }

    /// A new log in a temporary directory, holding links 1 to `n`.
    fn filled(n: u64) -> (tempfile::TempDir, LinkLog, Vec<Link>) {
        let dir = tempfile::tempdir().unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        let stored = links(1, n);
        log.insert(&stored).unwrap();
        (dir, log, stored)
    }

    fn file_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(FILE_NAME)).unwrap().len()
    }

    fn found(log: &LinkLog, links: &[Link]) -> Vec<bool> {
        links.iter().map(|l| log.get(&l.code).unwrap().as_ref() == Some(l)).collect()
    }

    #[test]
    fn links_are_found_after_a_reopen_and_a_taken_code_keeps_its_link() {
        let dir = tempfile::tempdir().unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        let [a, b] = [links(1, 1).remove(0), links(2, 1).remove(0)];
        let rival = Link { target: crate::TargetUrl::parse("https://other.example/").unwrap(), ..a.clone() };
        let outcomes = log.insert(&[a.clone(), b.clone(), rival.clone()]).unwrap();
        assert_eq!(outcomes, [InsertOutcome::Inserted, InsertOutcome::Inserted, InsertOutcome::Occupied(a.clone())]);
        assert_eq!(log.insert(&[rival]).unwrap(), [InsertOutcome::Occupied(a.clone())]);
        drop(log);

        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(found(&log, &[a.clone(), b]), [true, true]);
        assert_eq!(log.len(), 2);
        let unknown = ShortCode::from_key(b"NOSUCHCODE00").unwrap();
        assert_eq!(log.get(&unknown).unwrap(), None);
    }

    #[test]
    fn a_torn_insert_is_cut_off_and_set_aside_and_the_log_goes_on() {
        let (dir, log, kept) = filled(3);
        drop(log);
        let end = file_len(dir.path());
        let torn = [&200u32.to_le_bytes()[..], &[7; 4], b"only part of a frame"].concat();
        OpenOptions::new().write(true).open(dir.path().join(FILE_NAME)).unwrap().write_all_at(&torn, end).unwrap();

        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(found(&log, &kept), [true; 3]);
        assert_eq!(file_len(dir.path()), end, "cut where the torn frame began");
        assert_eq!(std::fs::read(dir.path().join(format!("{FILE_NAME}.cut-{end}"))).unwrap(), torn, "set aside");
        let later = links(10, 2);
        log.insert(&later).unwrap();
        drop(log);
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(found(&log, &[kept, later].concat()), [true; 5], "the next insert went where the torn one was");
    }

    #[test]
    fn a_second_recovery_at_the_same_place_never_overwrites_what_the_first_set_aside() {
        let (dir, log, kept) = filled(2);
        drop(log);
        let end = file_len(dir.path());
        let path = dir.path().join(FILE_NAME);
        let torn = |bytes: &[u8]| OpenOptions::new().write(true).open(&path).unwrap().write_all_at(bytes, end).unwrap();
        torn(b"\xff\xff first torn tail");
        drop(LinkLog::open(dir.path()).unwrap());
        torn(b"\xff\xff second torn tail");
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(found(&log, &kept), [true; 2]);
        let aside = |name: String| std::fs::read(dir.path().join(name)).unwrap();
        assert_eq!(aside(format!("{FILE_NAME}.cut-{end}")), b"\xff\xff first torn tail");
        assert_eq!(aside(format!("{FILE_NAME}.cut-{end}.1")), b"\xff\xff second torn tail");
    }

    #[test]
    fn damage_in_the_middle_keeps_every_intact_frame_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        let (first, damaged, after) = (links(1, 2), links(3, 1), links(4, 3));
        for batch in [&first, &damaged, &after] {
            log.insert(batch).unwrap();
        }
        let at = log.find(&damaged[0].code).unwrap().unwrap().0.offset();
        drop(log);
        let path = dir.path().join(FILE_NAME);
        let before = std::fs::read(&path).unwrap();
        OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"#", at + HEADER + 3).unwrap();

        for _ in 0..2 {
            let log = LinkLog::open(dir.path()).unwrap();
            assert_eq!(found(&log, &first), [true; 2]);
            assert_eq!(log.get(&damaged[0].code).unwrap(), None, "the damaged link is gone from the log");
            assert_eq!(found(&log, &after), [true; 3], "what followed the damage was salvaged");
        }
        let aside = std::fs::read(dir.path().join(format!("{FILE_NAME}.cut-{at}"))).unwrap();
        assert_eq!(aside[..HEADER as usize + 3], before[at as usize..][..HEADER as usize + 3]);
        assert_eq!(aside.len(), before.len() - at as usize, "every byte from the damage on was set aside");
    }

    #[test]
    fn a_read_checks_its_frame() {
        let (_dir, log, link) = filled(1);
        let slot = log.find(&link[0].code).unwrap().unwrap().0;
        log.current.load().file.write_all_at(b"#", slot.offset() + HEADER + 20).unwrap();
        assert!(matches!(log.get(&link[0].code), Err(Error::Corrupt(_))));
    }

    #[test]
    fn codes_whose_hashes_collide_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let same_hash: CodeHash = |_| 7;
        let log = LinkLog::open_hashing(dir.path(), same_hash).unwrap();
        let stored = links(1, 5);
        assert_eq!(log.insert(&stored[..3]).unwrap(), vec![InsertOutcome::Inserted; 3]);
        let again = log.insert(&stored).unwrap();
        let taken: Vec<_> = stored[..3].iter().map(|l| InsertOutcome::Occupied(l.clone())).collect();
        assert_eq!(again, [taken, vec![InsertOutcome::Inserted; 2]].concat());
        let absent = links(9, 1);
        assert_eq!(found(&log, &[stored.clone(), absent.clone()].concat()), [true, true, true, true, true, false]);
        drop(log);

        let log = LinkLog::open_hashing(dir.path(), same_hash).unwrap();
        assert_eq!(found(&log, &[stored, absent].concat()), [true, true, true, true, true, false]);
        assert_eq!(log.len(), 5);
    }

    #[test]
    fn an_erased_link_stays_erased_after_a_reopen_even_among_colliding_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let same_hash: CodeHash = |_| 7;
        let log = LinkLog::open_hashing(dir.path(), same_hash).unwrap();
        let stored = links(1, 4);
        log.insert(&stored).unwrap();
        // The first of the hash (in `by_hash`) and one behind it (in `collided`).
        log.erase(&[stored[0].code, stored[2].code]).unwrap();
        let expected = [false, true, false, true];
        assert_eq!(found(&log, &stored), expected);
        let ends = file_len(dir.path());
        log.erase(&[stored[0].code]).unwrap();
        assert_eq!(file_len(dir.path()), ends, "a code already erased writes nothing");
        drop(log);
        let log = LinkLog::open_hashing(dir.path(), same_hash).unwrap();
        assert_eq!(found(&log, &stored), expected);
        assert_eq!(log.len(), 2);
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(found(&log, &stored), expected, "with the real hash too");
    }

    #[test]
    fn a_compaction_leaves_out_erased_links_and_a_reopen_finds_the_same() {
        let (dir, log, stored) = filled(50);
        let erased: Vec<ShortCode> = stored.iter().step_by(3).map(|l| l.code).collect();
        log.erase(&erased).unwrap();
        let before = file_len(dir.path());
        let freed = log.compact().unwrap();
        assert_eq!(file_len(dir.path()), before - freed);
        assert_eq!(log.usage(), (before - freed, 0));
        let expected: Vec<bool> = stored.iter().map(|l| !erased.contains(&l.code)).collect();
        assert_eq!(found(&log, &stored), expected);
        let text = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        for code in &erased {
            assert!(!text.windows(code.as_bytes().len()).any(|w| w == code.as_bytes()), "{code} is gone from the file");
        }
        let later = links(100, 3);
        log.insert(&later).unwrap();
        drop(log);
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(found(&log, &stored), expected);
        assert_eq!(found(&log, &later), [true; 3], "inserts after a compaction go to the new file");
        assert_eq!(log.len(), stored.len() - erased.len() + 3);
    }

    #[test]
    fn a_compaction_cut_short_leaves_the_log_as_it_was() {
        let (dir, log, stored) = filled(5);
        log.erase(&[stored[0].code]).unwrap();
        drop(log);
        let before = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        // A copy half written when the process died.
        std::fs::write(dir.path().join(format!("{FILE_NAME}.compact")), &before[..before.len() / 2]).unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        assert!(!dir.path().join(format!("{FILE_NAME}.compact")).exists(), "the stray copy is deleted");
        assert_eq!(std::fs::read(dir.path().join(FILE_NAME)).unwrap(), before);
        assert_eq!(found(&log, &stored), [false, true, true, true, true]);
    }

    #[test]
    fn inserts_and_erasures_during_compactions_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let same_hash: CodeHash = |code| u64::from(code.as_bytes()[11] % 4);
        let log = LinkLog::open_hashing(dir.path(), same_hash).unwrap();
        let all = links(1, 400);
        let erased: Vec<ShortCode> = all.iter().skip(1).step_by(2).map(|l| l.code).collect();
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for (batch, chunk) in all.chunks(20).enumerate() {
                    log.insert(chunk).unwrap();
                    let odd: Vec<ShortCode> = chunk.iter().skip(1).step_by(2).map(|l| l.code).collect();
                    if batch % 2 == 0 {
                        log.erase(&odd).unwrap();
                    } else {
                        std::thread::yield_now();
                        log.erase(&odd).unwrap();
                    }
                }
            });
            while !writer.is_finished() {
                log.compact().unwrap();
            }
        });
        let expected: Vec<bool> = all.iter().map(|l| !erased.contains(&l.code)).collect();
        assert_eq!(found(&log, &all), expected);
        log.compact().unwrap();
        assert_eq!(found(&log, &all), expected);
        drop(log);
        let log = LinkLog::open_hashing(dir.path(), same_hash).unwrap();
        assert_eq!(found(&log, &all), expected, "after a reopen");
        assert_eq!(log.len(), 200);
    }

    /// A log of version 1 (no header: as written before headers) opens with its links,
    /// and is appended to as it is; a compaction rewrites it with a header.
    #[test]
    fn a_log_without_a_header_opens_and_a_compaction_gives_it_one() {
        let (dir, log, stored) = filled(5);
        drop(log);
        let path = dir.path().join(FILE_NAME);
        file_header::strip(&path, file_header::LINKS);
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(log.read_from(), 0);
        assert_eq!(found(&log, &stored), [true; 5]);
        let later = links(10, 2);
        log.insert(&later).unwrap();
        assert_ne!(std::fs::read(&path).unwrap()[..11], *b"shortlinks ", "no header is added in place");
        log.erase(&[stored[0].code]).unwrap();
        log.compact().unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[..file_header::LEN as usize], file_header::bytes(file_header::LINKS));
        drop(log);
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(found(&log, &stored), [false, true, true, true, true]);
        assert_eq!(found(&log, &later), [true; 2]);
    }

    fn reopened_without_checkpoint(dir: &Path, hash: CodeHash) -> LinkLog {
        let _ = std::fs::remove_file(dir.join(link_index::FILE_NAME));
        LinkLog::open_hashing(dir, hash).unwrap()
    }

    /// Links inserted and erased before and after a checkpoint, among codes whose hashes
    /// collide (`by_hash` and `collided` both): a reopen reads the checkpoint, then only
    /// the log's tail, and finds what reading the log through finds.
    #[test]
    fn a_reopen_reads_the_checkpoint_and_then_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let few_hashes: CodeHash = |code| u64::from(code.as_bytes()[11] % 3) << 61;
        let log = LinkLog::open_hashing(dir.path(), few_hashes).unwrap();
        let all = links(1, 60);
        log.insert(&all[..40]).unwrap();
        let early: Vec<ShortCode> = all[..40].iter().step_by(4).map(|l| l.code).collect();
        log.erase(&early).unwrap();
        assert!(log.checkpoint(1).unwrap());
        assert!(!log.checkpoint(1).unwrap(), "nothing changed: nothing written");
        let covered = file_len(dir.path());
        log.insert(&all[40..]).unwrap();
        let late: Vec<ShortCode> = all.iter().skip(1).step_by(5).map(|l| l.code).collect();
        log.erase(&late).unwrap();
        let expected: Vec<bool> = all.iter().map(|l| !early.contains(&l.code) && !late.contains(&l.code)).collect();
        let (len, garbage) = log.usage();
        drop(log);

        let log = LinkLog::open_hashing(dir.path(), few_hashes).unwrap();
        assert_eq!(log.read_from(), covered, "the checkpoint was read, and the log from its end");
        assert_eq!(found(&log, &all), expected);
        assert_eq!(log.usage(), (len, garbage));
        assert_eq!(log.len(), expected.iter().filter(|&&f| f).count());
        drop(log);
        let log = reopened_without_checkpoint(dir.path(), few_hashes);
        assert_eq!(log.read_from(), file_header::LEN);
        assert_eq!(found(&log, &all), expected);
        assert_eq!(log.usage(), (len, garbage), "the same as reading the log through");
    }

    #[test]
    fn a_checkpoint_that_does_not_describe_the_log_is_passed_over() {
        let (dir, log, stored) = filled(30);
        log.erase(&[stored[0].code]).unwrap();
        assert!(log.checkpoint(1).unwrap());
        let expected: Vec<bool> = (0..30).map(|i| i != 0).collect();
        drop(log);
        let index = dir.path().join(link_index::FILE_NAME);
        let whole = std::fs::read(&index).unwrap();
        let reopen = |why: &str| {
            let log = LinkLog::open(dir.path()).unwrap();
            assert_eq!(log.read_from(), file_header::LEN, "{why}: read the log through");
            assert_eq!(found(&log, &stored), expected, "{why}");
        };

        // One byte changed in a section, then in the header.
        for at in [whole.len() - 10, 40] {
            let mut damaged = whole.clone();
            damaged[at] ^= 1;
            std::fs::write(&index, &damaged).unwrap();
            reopen("a damaged checkpoint");
        }
        std::fs::write(&index, &whole[..whole.len() - 1]).unwrap();
        reopen("a checkpoint cut short");
        // Written by a build that hashes codes another way.
        std::fs::write(&index, &whole).unwrap();
        let other_hash: CodeHash = |code| code_hash(code) ^ 1;
        assert_eq!(
            LinkLog::open_hashing(dir.path(), other_hash).unwrap().read_from(),
            file_header::LEN,
            "another hash"
        );
        // A log cut below what the checkpoint covers.
        let log_path = dir.path().join(FILE_NAME);
        let full = std::fs::read(&log_path).unwrap();
        let last = LinkLog::open(dir.path()).unwrap().find(&stored[29].code).unwrap().unwrap().0;
        std::fs::write(&log_path, &full[..last.offset() as usize]).unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(log.read_from(), file_header::LEN, "a shorter log");
        assert_eq!(found(&log, &stored[1..29]), [true; 28]);
        assert_eq!(log.get(&stored[29].code).unwrap(), None);
        drop(log);
        std::fs::write(&log_path, &full).unwrap();
        std::fs::write(&index, &whole).unwrap();
        std::fs::write(dir.path().join(format!("{}.new", link_index::FILE_NAME)), b"half a checkpoint").unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        assert!(log.read_from() > file_header::LEN, "the checkpoint in place is read");
        assert!(!dir.path().join(format!("{}.new", link_index::FILE_NAME)).exists(), "a stray copy is deleted");
        assert_eq!(found(&log, &stored), expected);
    }

    /// A compaction rewrites the log: the checkpoint of the old one is deleted before the
    /// new one is in place, and one of the new one written after. The old checkpoint, put
    /// back (as if the deletion had not happened), does not describe the new log.
    #[test]
    fn a_compaction_replaces_the_checkpoint() {
        let (dir, log, stored) = filled(40);
        assert!(log.checkpoint(1).unwrap());
        let index = dir.path().join(link_index::FILE_NAME);
        let old = std::fs::read(&index).unwrap();
        let erased: Vec<ShortCode> = stored.iter().skip(20).map(|l| l.code).collect();
        log.erase(&erased).unwrap();
        log.compact().unwrap();
        let expected: Vec<bool> = (0..40).map(|i| i < 20).collect();
        assert_ne!(std::fs::read(&index).unwrap(), old);
        let compacted = file_len(dir.path());
        drop(log);
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(log.read_from(), compacted, "the new checkpoint covers the whole compacted log");
        assert_eq!(found(&log, &stored), expected);
        drop(log);
        std::fs::write(&index, &old).unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(log.read_from(), file_header::LEN, "the old log's checkpoint is passed over");
        assert_eq!(found(&log, &stored), expected);
    }

    /// A checkpoint written while inserts and erasures go on describes the log up to where
    /// it ends; what came after is read from the log.
    #[test]
    fn a_checkpoint_taken_during_inserts_and_erasures_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let few_hashes: CodeHash = |code| u64::from(code.as_bytes()[11] % 4);
        let log = LinkLog::open_hashing(dir.path(), few_hashes).unwrap();
        let all = links(1, 600);
        let erased: Vec<ShortCode> = all.iter().step_by(3).map(|l| l.code).collect();
        let written = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for chunk in all.chunks(20) {
                    log.insert(chunk).unwrap();
                    let some: Vec<ShortCode> = chunk.iter().map(|l| l.code).filter(|c| erased.contains(c)).collect();
                    log.erase(&some).unwrap();
                }
            });
            let mut written = 0;
            while !writer.is_finished() {
                written += usize::from(log.checkpoint(1).unwrap());
            }
            written
        });
        assert!(written > 0);
        let expected: Vec<bool> = all.iter().map(|l| !erased.contains(&l.code)).collect();
        let usage = log.usage();
        drop(log);
        let log = LinkLog::open_hashing(dir.path(), few_hashes).unwrap();
        assert!(log.read_from() > file_header::LEN);
        assert_eq!(found(&log, &all), expected);
        assert_eq!(log.len(), 400);
        // A link erased after the checkpoint's end but before its shard was copied is in
        // neither: replaying its erasure counts the erasure's bytes, not the link's.
        let (len, garbage) = log.usage();
        assert_eq!(len, usage.0);
        assert!(garbage <= usage.1 && garbage > 0, "{garbage} of {}", usage.1);
    }

    #[test]
    fn concurrent_inserts_of_the_same_codes_store_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = LinkLog::open(dir.path()).unwrap();
        let batch = links(1, 200);
        let outcomes: Vec<Vec<InsertOutcome>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4).map(|_| s.spawn(|| log.insert(&batch).unwrap())).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (i, link) in batch.iter().enumerate() {
            let inserted = outcomes.iter().filter(|o| o[i] == InsertOutcome::Inserted).count();
            assert_eq!(inserted, 1, "{} inserted once", link.code);
            assert!(outcomes
                .iter()
                .all(|o| o[i] == InsertOutcome::Inserted || o[i] == InsertOutcome::Occupied(link.clone())));
        }
        drop(log);
        let log = LinkLog::open(dir.path()).unwrap();
        assert_eq!(log.len(), 200);
        assert_eq!(file_len(dir.path()), log.tail.lock().len, "no frame written twice");
    }
}
