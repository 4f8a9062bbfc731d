//! The index of `links.log` in memory, and its checkpoint on disk, `links.index`, which
//! lets opening read the index back and then only the log's tail.
//!
//! Reading `links.log` through to rebuild the index takes about 5 s at ten million links
//! (a gigabyte of frames); their checkpoint is 16 bytes a link, read back one shard per
//! core. The checkpoint is a cache of what that reading would give, and is used only when
//! it provably describes the log in place: both its header and each shard's section pass
//! their checksums, it covers no more than the log holds, the last bytes of the log that it
//! covers hash as they did when it was written (a log rewritten by a compaction does not),
//! and this build hashes codes as the one that wrote it. Otherwise opening reads the log
//! through, as with no checkpoint. It is never needed: deleting it costs only that time.
//!
//! `links.index`: a header, then one section per shard, all integers little-endian.
//! - header: `shortlinks links.index\n\0` ‖ version u32 ‖ shards u32 ‖ the hash of
//!   [`PROBE`] u64 ‖ covered u64 (the log's bytes it covers) ‖ garbage u64 (of those bytes)
//!   ‖ the covered tail's hash, 8 bytes of blake3 ‖ each section's length u64 ‖ crc32 of
//!   all before it;
//! - section: entries by hash u64 ‖ collided codes u64 ‖ (hash u64 ‖ slot u64)… ‖
//!   (code length u8 ‖ code ‖ slot u64)… ‖ crc32 of all before it.
//!
//! Crash safety: the log is synced up to the covered length before the checkpoint is
//! written, and the checkpoint goes to a copy that is synced and renamed into place, so a
//! crash leaves the old checkpoint or the new one, each describing synced frames. A
//! compaction deletes the checkpoint before it puts its copy of the log in place.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use foldhash::fast::FixedState;
use parking_lot::RwLock;

use super::frame::{io, sync_dir, Slot, HEADER};
use crate::code::ShortCode;
use crate::Error;

/// The checkpoint's name in the data directory.
pub(super) const FILE_NAME: &str = "links.index";
/// Index shards, so that inserts and reads on different codes do not meet on one lock.
pub(super) const SHARDS: usize = 16;
/// The code whose hash a checkpoint records: a build that hashes differently (another
/// version of the hasher) does not use it.
const PROBE: &[u8] = b"hashprobe000";
const MAGIC: &[u8; 24] = b"shortlinks links.index\n\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24 + 4 + 4 + 8 + 8 + 8 + 8 + 8 * SHARDS + 4;
/// How much of the log, up to the covered end, the tail's hash takes in.
const TAIL_CHECKED: u64 = 4096;

/// The hash the index is keyed by.
pub(super) type CodeHash = fn(&ShortCode) -> u64;

pub(super) fn code_hash(code: &ShortCode) -> u64 {
    use std::hash::BuildHasher;
    FixedState::default().hash_one(code)
}

pub(super) fn shard_of(hash: u64) -> usize {
    (hash >> 60) as usize % SHARDS
}

/// One shard of the index.
#[derive(Default)]
pub(super) struct Index {
    /// Frames by their code's hash: the first code with that hash.
    pub(super) by_hash: HashMap<u64, Slot, FixedState>,
    /// Codes whose hash an earlier code has; empty in practice.
    pub(super) collided: HashMap<ShortCode, Slot, FixedState>,
}

impl Index {
    /// The slot of `code` if it is a collided one, else the slot its hash leads to, which
    /// holds `code` or another code with its hash: the caller reads the frame to tell.
    pub(super) fn lookup(&self, hash: u64, code: &ShortCode) -> Option<Slot> {
        let collided = if self.collided.is_empty() { None } else { self.collided.get(code) };
        collided.or_else(|| self.by_hash.get(&hash)).copied()
    }

    /// Indexes a code known not to be here yet: a taken hash is another code's.
    pub(super) fn insert_new(&mut self, hash: u64, code: ShortCode, slot: Slot) {
        match self.by_hash.entry(hash) {
            Entry::Vacant(first) => {
                first.insert(slot);
            }
            Entry::Occupied(_) => {
                self.collided.insert(code, slot);
            }
        }
    }
}

pub(super) type Shard = RwLock<Index>;

/// An empty index.
pub(super) fn empty() -> Box<[Shard]> {
    (0..SHARDS).map(|_| RwLock::default()).collect()
}

/// A checkpoint read back.
pub(super) struct Checkpoint {
    /// The log's bytes it covers: the log is read from there on.
    pub(super) covered: u64,
    /// Bytes of garbage among them.
    pub(super) garbage: u64,
    pub(super) index: Box<[Shard]>,
}

/// The checkpoint in `dir`, if there is one that describes `log` (of `log_len` bytes) as
/// keyed by `hash`. One that does not is passed over, with a warning saying why.
pub(super) fn read(dir: &Path, log: &File, log_len: u64, hash: CodeHash) -> Option<Checkpoint> {
    // A checkpoint cut short by a crash: the one in place, if any, is whole.
    let _ = std::fs::remove_file(dir.join(new_name()));
    let file = match File::open(dir.join(FILE_NAME)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open links.index: reading links.log through");
            return None;
        }
    };
    match read_checked(&file, log, log_len, hash) {
        Ok(checkpoint) => Some(checkpoint),
        Err(why) => {
            tracing::warn!(why, "links.index does not describe links.log: reading links.log through");
            None
        }
    }
}

fn read_checked(file: &File, log: &File, log_len: u64, hash: CodeHash) -> Result<Checkpoint, String> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0).map_err(|e| format!("its header cannot be read: {e}"))?;
    let (fields, crc) = header.split_at(HEADER_LEN - 4);
    let mut r = Reader(fields);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("it is not a links.index file".into());
    }
    let version = r.u32()?;
    if version != VERSION || r.u32()? as usize != SHARDS {
        return Err(format!("it is of version {version}, and this build reads version {VERSION}"));
    }
    if crc32fast::hash(fields).to_le_bytes() != crc {
        return Err("its header fails its checksum".into());
    }
    if r.u64()? != hash(&probe()) {
        return Err("it was written by a build that hashes codes differently".into());
    }
    let (covered, garbage) = (r.u64()?, r.u64()?);
    if covered > log_len {
        return Err(format!("it covers {covered} bytes, and links.log has {log_len}"));
    }
    if r.take(8)? != tail_hash(log, covered).map_err(|e| e.to_string())? {
        return Err("links.log is no longer the file it was written for".into());
    }
    let mut sections = Vec::with_capacity(SHARDS);
    let mut at = HEADER_LEN as u64;
    for _ in 0..SHARDS {
        let len = r.u64()?;
        sections.push((at, len));
        at = at.checked_add(len).ok_or("a section's length is out of range")?;
    }
    // Before anything is allocated for the sections.
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    if at != file_len {
        return Err(format!("its sections end at {at}, and the file at {file_len}"));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(SHARDS);
    let shards: Vec<Result<Vec<(usize, Index)>, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let sections = &sections;
                s.spawn(move || {
                    (t..SHARDS)
                        .step_by(threads)
                        .map(|shard| {
                            let (at, len) = sections[shard];
                            let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| "a section is too long")?];
                            file.read_exact_at(&mut bytes, at).map_err(|e| format!("a section cannot be read: {e}"))?;
                            parse_section(&bytes, shard, covered, hash).map(|index| (shard, index))
                        })
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err("a reader panicked".into()))).collect()
    });
    let mut index: Vec<Option<Index>> = (0..SHARDS).map(|_| None).collect();
    for (shard, found) in shards.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten() {
        index[shard] = Some(found);
    }
    let index = index.into_iter().map(|i| RwLock::new(i.unwrap_or_default())).collect();
    Ok(Checkpoint { covered, garbage, index })
}

fn parse_section(bytes: &[u8], shard: usize, covered: u64, hash: CodeHash) -> Result<Index, String> {
    let (body, crc) = bytes.split_at(bytes.len().checked_sub(4).ok_or("a section is short")?);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(format!("section {shard} fails its checksum"));
    }
    let mut r = Reader(body);
    let (firsts, collided) = (r.u64()?, r.u64()?);
    // Checked against what the section holds before anything is allocated for them.
    let firsts = usize::try_from(firsts).ok().filter(|&n| n <= body.len() / 16).ok_or("a count is out of range")?;
    let collided = usize::try_from(collided).ok().filter(|&n| n <= body.len() / 10).ok_or("a count is out of range")?;
    let mut index = Index {
        by_hash: HashMap::with_capacity_and_hasher(firsts, FixedState::default()),
        collided: HashMap::with_hasher(FixedState::default()),
    };
    let slot = |r: &mut Reader| {
        let slot = Slot::from_raw(r.u64()?);
        match slot.offset() + HEADER + slot.len() as u64 <= covered {
            true => Ok(slot),
            false => Err(String::from("a slot points past what it covers")),
        }
    };
    for _ in 0..firsts {
        let (key, at) = (r.u64()?, slot(&mut r)?);
        if shard_of(key) != shard {
            return Err(format!("section {shard} holds another shard's hash"));
        }
        index.by_hash.insert(key, at);
    }
    for _ in 0..collided {
        let len = r.take(1)?[0];
        let code = ShortCode::from_key(r.take(usize::from(len))?).ok_or("a collided code is not a code")?;
        if shard_of(hash(&code)) != shard {
            return Err(format!("section {shard} holds another shard's code"));
        }
        index.collided.insert(code, slot(&mut r)?);
    }
    match r.0.is_empty() {
        true => Ok(index),
        false => Err(format!("section {shard} has bytes after its entries")),
    }
}

/// Writes the checkpoint of `index` as it stands for the log's first `covered` bytes, of
/// which `garbage` are garbage. The log must be synced up to `covered` already.
///
/// Inserts and erasures may run meanwhile (each shard is read under its lock): entries
/// whose frames are at `covered` or later are left out, and reading the log from
/// `covered` on puts back what came after, erasures included. A compaction must not.
/// A link erased after `covered` but before its shard was read is in neither; replaying
/// its erasure then counts only the erasure's bytes as garbage, so the count (which only
/// decides when a compaction is due) can fall short by such links until the next one.
pub(super) fn write(
    dir: &Path,
    log: &File,
    covered: u64,
    garbage: u64,
    index: &[Shard],
    hash: CodeHash,
) -> Result<(), Error> {
    let copy = dir.join(new_name());
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&copy).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
    out.write_all(&[0; HEADER_LEN]).map_err(io)?;
    let mut lens = [0u64; SHARDS];
    let mut section = Vec::new();
    for (shard, len) in index.iter().zip(&mut lens) {
        section.clear();
        section.extend_from_slice(&[0; 16]);
        let (mut firsts, mut collided) = (0u64, 0u64);
        {
            let index = shard.read();
            for (key, slot) in index.by_hash.iter().filter(|(_, slot)| slot.offset() < covered) {
                section.extend_from_slice(&key.to_le_bytes());
                section.extend_from_slice(&slot.raw().to_le_bytes());
                firsts += 1;
            }
            for (code, slot) in index.collided.iter().filter(|(_, slot)| slot.offset() < covered) {
                section.push(code.as_bytes().len() as u8);
                section.extend_from_slice(code.as_bytes());
                section.extend_from_slice(&slot.raw().to_le_bytes());
                collided += 1;
            }
        }
        section[..8].copy_from_slice(&firsts.to_le_bytes());
        section[8..16].copy_from_slice(&collided.to_le_bytes());
        let crc = crc32fast::hash(&section);
        section.extend_from_slice(&crc.to_le_bytes());
        out.write_all(&section).map_err(io)?;
        *len = section.len() as u64;
    }
    out.flush().map_err(io)?;
    drop(out);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(SHARDS as u32).to_le_bytes());
    header.extend_from_slice(&hash(&probe()).to_le_bytes());
    header.extend_from_slice(&covered.to_le_bytes());
    header.extend_from_slice(&garbage.to_le_bytes());
    header.extend_from_slice(&tail_hash(log, covered)?);
    for len in lens {
        header.extend_from_slice(&len.to_le_bytes());
    }
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_LEN);
    file.write_all_at(&header, 0).and_then(|()| file.sync_all()).map_err(io)?;
    std::fs::rename(&copy, dir.join(FILE_NAME)).map_err(io)?;
    sync_dir(dir)
}

/// Deletes the checkpoint, durably: before a compaction puts a new log in place.
pub(super) fn remove(dir: &Path) -> Result<(), Error> {
    super::frame::remove_durably(dir, FILE_NAME)
}

fn new_name() -> String {
    format!("{FILE_NAME}.new")
}

#[allow(clippy::expect_used)] // a constant, checked by the tests
fn probe() -> ShortCode {
    ShortCode::from_key(PROBE).expect("the probe is a code")
}

/// The hash of the log's last [`TAIL_CHECKED`] bytes before `covered`.
pub(super) fn tail_hash(log: &File, covered: u64) -> Result<[u8; 8], Error> {
    let from = covered.saturating_sub(TAIL_CHECKED);
    let mut bytes = vec![0u8; (covered - from) as usize];
    log.read_exact_at(&mut bytes, from).map_err(io)?;
    let hash = blake3::hash(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    Ok(first)
}

/// Reads a checkpoint's fields in order.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("it is cut short".into());
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    pub(super) fn u32(&mut self) -> Result<u32, String> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(bytes))
    }

    pub(super) fn u64(&mut self) -> Result<u64, String> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }
}
