//! One durable queue as append-only files: how the sled backend keeps its queues.
//!
//! Not a sled tree, for two reasons measured on sled 0.34: every insert and remove copies a
//! B-tree node, and a page over 128 KiB (one commit group of clicks is more) goes to a blob
//! file of its own that no flush ever syncs. A queue is written at its tail and read at its
//! head, which a file does with one write and one `fdatasync` per push.
//!
//! A queue is a directory of segments, `<number as 16 hex digits>.log`, each a run of
//! frames `length u32 LE ‖ crc32 u32 LE ‖ record`. A push goes to the last segment, or
//! starts a new one once that is `segment_bytes` long or ten minutes old; a segment wholly
//! behind the head is deleted, and a drained queue can start anew
//! ([`QueueLog::roll_if_drained`]): handled entries do not stay on disk for long. An entry's id is `segment << 64 | offset << 32 | length`: ordered like the queue,
//! and it tells where the next entry starts, so moving the head needs no read.
//!
//! Crash safety: a push returns once its frames are written and `fdatasync`ed (and the
//! directory synced, on a segment's first push). Opening reads the last segment
//! through and cuts it at the first frame that is short or fails its checksum: only a push
//! that never returned can be torn. The head is kept by the caller (the backend stores it
//! without a flush): a head from before a crash only means entries are handled again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::file_header;
use super::frame::{self, io, sync_dir, HEADER};
use crate::model::EntryId;
use crate::Error;

/// Segments start anew past this size (32 MiB): small enough to be deleted soon after
/// they are drained, large enough that a new file is rare.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;
/// The most bytes one push may write (so the longest record, too): a frame's offset and
/// length must each fit in 32 bits of an id.
pub(crate) const MAX_PUSH: usize = 64 << 20;
// Offsets stay below a segment's size plus one push: within the 32 bits an id gives them.
const _: () = assert!(SEGMENT_BYTES + MAX_PUSH as u64 <= u32::MAX as u64);

/// Where an entry starts: the first entry not yet removed, for the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    segment: u64,
    offset: u64,
}

impl Position {
    /// 16 bytes, for the backend to keep.
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.segment.to_be_bytes());
        bytes[8..].copy_from_slice(&self.offset.to_be_bytes());
        bytes
    }

    /// The inverse of [`Position::to_bytes`]; `None` for anything else.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        let (segment, offset) = bytes.split_at(8);
        Some(Self {
            segment: u64::from_be_bytes(segment.try_into().ok()?),
            offset: u64::from_be_bytes(offset.try_into().ok()?),
        })
    }
}

/// An entry's place and length, packed into its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    at: Position,
    len: u64,
}

impl Frame {
    fn id(self) -> EntryId {
        EntryId(u128::from(self.at.segment) << 64 | u128::from(self.at.offset) << 32 | u128::from(self.len))
    }

    fn from_id(EntryId(id): EntryId) -> Self {
        let segment = (id >> 64) as u64;
        let offset = (id >> 32) as u64 & 0xffff_ffff;
        Self { at: Position { segment, offset }, len: id as u64 & 0xffff_ffff }
    }

    fn end(self) -> u64 {
        self.at.offset + HEADER + self.len
    }
}

struct Segment {
    file: Arc<File>,
    /// Bytes written and synced: readers never look past them.
    len: u64,
    /// Where its frames start: after its header ([`file_header`]), or at 0 in a segment of
    /// version 1.
    start: u64,
}

/// What readers and removers share.
struct State {
    segments: BTreeMap<u64, Segment>,
    head: Position,
    /// Removed entries past the head (removals out of order), until the head reaches them.
    removed: BTreeSet<u128>,
    /// Entries not yet removed, once [`QueueLog::depth`] has counted them; then kept by
    /// pushes and removals. Not counted on open: that would read every frame's header.
    entries: Option<u64>,
}

/// The appender's own view of the last segment; held through the write and the sync, so
/// readers wait only for the moment a push is published.
struct Tail {
    segment: u64,
    file: Arc<File>,
    len: u64,
    /// Where the segment's frames start: it holds none while `len` is there.
    start: u64,
    /// When this segment took its first push (or the queue was opened): a segment older
    /// than [`SEGMENT_MAX_AGE`] is not pushed to any more, so that it is deleted once
    /// drained and handled entries (clicks, with their addresses) do not stay on disk.
    started: std::time::Instant,
}

/// The age past which a push starts a new segment.
pub(crate) const SEGMENT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// One queue. Methods block (file I/O): call them off the async runtime.
pub(crate) struct QueueLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// How long a segment takes pushes ([`SEGMENT_MAX_AGE`]).
    segment_age: std::time::Duration,
    tail: Mutex<Tail>,
    state: Mutex<State>,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.log"))
}

fn open_segment(dir: &Path, segment: u64) -> Result<File, Error> {
    OpenOptions::new().read(true).write(true).open(segment_path(dir, segment)).map_err(io)
}

/// Makes a segment, with its header, synced (its directory is not).
fn new_segment(dir: &Path, segment: u64) -> Result<Arc<File>, Error> {
    let file =
        OpenOptions::new().read(true).write(true).create_new(true).open(segment_path(dir, segment)).map_err(io)?;
    file_header::write(&file, file_header::QUEUE_SEGMENT)?;
    Ok(Arc::new(file))
}

/// The record length in the frame header at `offset`.
fn frame_len(file: &File, offset: u64) -> Result<u64, Error> {
    let mut len = [0u8; 4];
    file.read_exact_at(&mut len, offset).map_err(io)?;
    Ok(u64::from(u32::from_le_bytes(len)))
}

/// Reads the frame at `offset`, checking it; `None` if there is no whole, intact frame
/// before `end`.
fn read_frame(file: &File, offset: u64, end: u64) -> Result<Option<(u64, Vec<u8>)>, Error> {
    frame::read_at(file, offset, end, MAX_PUSH)
}

impl QueueLog {
    /// Opens (or creates) the queue in `dir`, starting at `head` if the backend kept one.
    pub(crate) fn open(dir: &Path, head: Option<Position>, segment_bytes: u64) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let number =
                name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| u64::from_str_radix(n, 16).ok());
            numbers.extend(number);
        }
        numbers.sort_unstable();
        let Some(&last) = numbers.last() else {
            // A new queue: its first segment, made durable with the directories above it.
            let number = head.map_or(0, |h| h.segment);
            let file = new_segment(dir, number)?;
            // The queue's directory, `queues/` and the data directory may all be new.
            for directory in dir.ancestors().take(3) {
                sync_dir(directory)?;
            }
            let first = Segment { file, len: file_header::LEN, start: file_header::LEN };
            return Ok(Self::assemble(dir, segment_bytes, BTreeMap::from([(number, first)]), None));
        };
        let mut segments = BTreeMap::new();
        for &number in &numbers {
            let file = Arc::new(open_segment(dir, number)?);
            let path = segment_path(dir, number);
            let start = file_header::frames_start(&file, &path, file_header::QUEUE_SEGMENT)?;
            let mut len = file.metadata().map_err(io)?.len();
            if number == last {
                // Only the last segment can end in a push that never returned: cut it there.
                let mut valid = start;
                while let Some((record_len, _)) = read_frame(&file, valid, len)? {
                    valid += HEADER + record_len;
                }
                if valid < len {
                    tracing::warn!(queue = %dir.display(), cut = len - valid, "cutting a torn write off a queue");
                    file.set_len(valid).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    len = valid;
                }
            }
            segments.insert(number, Segment { file, len, start });
        }
        Ok(Self::assemble(dir, segment_bytes, segments, head))
    }

    fn assemble(dir: &Path, segment_bytes: u64, segments: BTreeMap<u64, Segment>, head: Option<Position>) -> Self {
        let (&last, tail) = segments.last_key_value().expect("a queue has a segment");
        let tail = Tail {
            segment: last,
            file: tail.file.clone(),
            len: tail.len,
            start: tail.start,
            started: std::time::Instant::now(),
        };
        let (&number, segment) = segments.first_key_value().expect("a queue has a segment");
        let first = Position { segment: number, offset: segment.start };
        // A kept head inside the data is where to start; one that is not (its segment was
        // deleted after it was kept, or it is damaged) means: from the first entry there is.
        let head = head
            .filter(|h| segments.get(&h.segment).is_some_and(|s| s.start <= h.offset && h.offset <= s.len))
            .filter(|h| *h >= first)
            .unwrap_or(first);
        let log = Self {
            dir: dir.to_owned(),
            segment_bytes,
            segment_age: SEGMENT_MAX_AGE,
            tail: Mutex::new(tail),
            state: Mutex::new(State { segments, head, removed: BTreeSet::new(), entries: None }),
        };
        let mut state = log.state.lock();
        log.drop_drained(&mut state);
        drop(state);
        log
    }

    /// Appends records in order; durable when it returns.
    pub(crate) fn push(&self, records: &[Vec<u8>]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let total: usize = records.iter().map(|r| r.len() + HEADER as usize).sum();
        if total > MAX_PUSH {
            // Offsets must stay within the 32 bits an id gives them.
            return Err(Error::Corrupt(format!("a queue push of {total} bytes is over the limit")));
        }
        let mut frames = Vec::with_capacity(total);
        for record in records {
            frame::append(&mut frames, record);
        }
        let mut tail = self.tail.lock();
        let full = tail.len + frames.len() as u64 > self.segment_bytes;
        if tail.len > tail.start && (full || tail.started.elapsed() >= self.segment_age) {
            // A failed push may have left bytes past the end: the segment ends where its
            // last push did, since only the last one is checked on open.
            tail.file.set_len(tail.len).and_then(|()| tail.file.sync_data()).map_err(io)?;
            let segment = tail.segment + 1;
            let file = new_segment(&self.dir, segment)?;
            let start = file_header::LEN;
            *tail = Tail { segment, file, len: start, start, started: std::time::Instant::now() };
        }
        // A failed write leaves the length where it was: the next push writes over it.
        let written = tail.file.write_all_at(&frames, tail.len).and_then(|()| tail.file.sync_data());
        if let Err(e) = written {
            let _ = tail.file.set_len(tail.len); // best effort: open cuts a torn end anyway
            return Err(io(e));
        }
        if tail.len == tail.start {
            // The segment's first data: make sure its name is on disk too.
            sync_dir(&self.dir)?;
        }
        tail.len += frames.len() as u64;
        let mut state = self.state.lock();
        let segment = state.segments.entry(tail.segment).or_insert_with(|| Segment {
            file: tail.file.clone(),
            len: tail.start,
            start: tail.start,
        });
        segment.len = tail.len;
        if let Some(entries) = &mut state.entries {
            *entries += records.len() as u64;
        }
        Ok(())
    }

    /// Up to `max` entries from the head, oldest first, skipping removed ones.
    pub(crate) fn lease(&self, max: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let last = *state.segments.keys().next_back().expect("a queue has a segment");
        let mut out = Vec::new();
        let mut at = state.head;
        let mut lost = false;
        for (&number, segment) in state.segments.range_mut(state.head.segment..) {
            if out.len() >= max {
                break;
            }
            if number != at.segment {
                at = Position { segment: number, offset: segment.start };
            }
            while out.len() < max {
                let Some((len, record)) = read_frame(&segment.file, at.offset, segment.len)? else { break };
                let frame = Frame { at, len };
                if !state.removed.contains(&frame.id().0) {
                    out.push((frame.id(), record));
                }
                at.offset = frame.end();
            }
            if at.offset < segment.len && out.len() < max {
                // Written, synced and then unreadable: the disk lost acknowledged data.
                tracing::error!(queue = %self.dir.display(), at = ?at, lost = segment.len - at.offset, "a queue segment is damaged");
                if number == last {
                    return Err(Error::Corrupt(format!("queue {} is damaged at {at:?}", self.dir.display())));
                }
                // An earlier segment: what follows the damage is lost, the queue goes on.
                segment.len = at.offset;
                lost = true;
            }
        }
        if lost {
            state.entries = None;
        }
        Ok(out)
    }

    /// Entries not yet removed, leased or not. The first call walks the frames' headers
    /// from the head (one small read each); later ones answer from the count that pushes
    /// and removals keep.
    pub(crate) fn depth(&self) -> Result<u64, Error> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if let Some(entries) = state.entries {
            return Ok(entries);
        }
        let mut entries = 0;
        let mut at = state.head;
        for (&number, segment) in state.segments.range(state.head.segment..) {
            if number != at.segment {
                at = Position { segment: number, offset: segment.start };
            }
            while at.offset + HEADER <= segment.len {
                let frame = Frame { at, len: frame_len(&segment.file, at.offset)? };
                if frame.end() > segment.len {
                    break; // damaged: a lease finds it and says so
                }
                entries += u64::from(!state.removed.contains(&frame.id().0));
                at.offset = frame.end();
            }
        }
        state.entries = Some(entries);
        Ok(entries)
    }

    /// Removes entries; unknown ids are ignored. Returns the new head if it moved, for the
    /// backend to keep.
    pub(crate) fn remove(&self, ids: &[EntryId]) -> Result<Option<Position>, Error> {
        let mut state = self.state.lock();
        let before = state.head;
        for &id in ids {
            let frame = Frame::from_id(id);
            let Some(segment) = state.segments.get(&frame.at.segment) else { continue };
            // Only ids that name a frame of this queue: a wrong one must not move the head
            // into the middle of a record.
            let known = frame.at >= state.head
                && frame.end() <= segment.len
                && frame_len(&segment.file, frame.at.offset)? == frame.len;
            if known && state.removed.insert(id.0) {
                if let Some(entries) = &mut state.entries {
                    *entries -= 1;
                }
            }
        }
        loop {
            // First off the end of a drained segment: the head may have waited there for
            // the segment that now follows it.
            self.drop_drained(&mut state);
            let Some(&first) = state.removed.first() else { break };
            let frame = Frame::from_id(EntryId(first));
            if frame.at != state.head {
                break;
            }
            state.removed.pop_first();
            state.head.offset = frame.end();
        }
        Ok((state.head != before).then_some(state.head))
    }

    /// The same queue, its segments taking pushes for `age` only.
    #[cfg(test)]
    fn with_segment_age(mut self, age: std::time::Duration) -> Self {
        self.segment_age = age;
        self
    }

    /// The bytes of its segments.
    pub(crate) fn bytes(&self) -> u64 {
        self.state.lock().segments.values().map(|s| s.len).sum()
    }

    /// Once every entry is removed, starts a new segment and deletes the old one, so that
    /// no handled entry's bytes stay in the last segment (which is otherwise kept for the
    /// pushes). Returns the new head, for the backend to keep; `None` if there was nothing
    /// to do. A crash before the head is kept leaves a head in a deleted segment, which
    /// opening reads as "from the first entry": there is none.
    pub(crate) fn roll_if_drained(&self) -> Result<Option<Position>, Error> {
        let mut tail = self.tail.lock();
        let mut state = self.state.lock();
        let drained = state.head == Position { segment: tail.segment, offset: tail.len } && state.removed.is_empty();
        if !drained || tail.len == tail.start {
            return Ok(None);
        }
        let segment = tail.segment + 1;
        let file = new_segment(&self.dir, segment)?;
        sync_dir(&self.dir)?;
        let start = file_header::LEN;
        *tail = Tail { segment, file: file.clone(), len: start, start, started: std::time::Instant::now() };
        state.segments.insert(segment, Segment { file, len: start, start });
        state.head = Position { segment, offset: start };
        self.drop_drained(&mut state);
        Ok(Some(state.head))
    }

    /// Moves the head past segments it has drained and deletes every segment before it
    /// (never the last one, which takes the pushes).
    fn drop_drained(&self, state: &mut State) {
        let last = *state.segments.keys().next_back().expect("a queue has a segment");
        while state.head.segment < last
            && state.segments.get(&state.head.segment).is_none_or(|s| state.head.offset >= s.len)
        {
            // The last segment is after the head, so there is a next one.
            let (&next, segment) =
                state.segments.range(state.head.segment + 1..).next().expect("the last segment follows the head");
            state.head = Position { segment: next, offset: segment.start };
        }
        while let Some((&first, _)) = state.segments.first_key_value() {
            if first >= state.head.segment {
                break;
            }
            state.segments.remove(&first);
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, first)) {
                // Harmless but for the space: its entries were all removed.
                tracing::warn!(error = %e, queue = %self.dir.display(), "cannot delete a drained queue segment");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn records(log: &QueueLog) -> Vec<Vec<u8>> {
        log.lease(usize::MAX).unwrap().into_iter().map(|(_, r)| r).collect()
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn a_torn_push_is_cut_off_on_open_and_what_came_before_stays() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        log.push(&[b"one".to_vec(), b"two".to_vec()]).unwrap();
        log.push(&[b"three".to_vec()]).unwrap();
        drop(log);
        let file = OpenOptions::new().append(true).open(segment_path(dir.path(), 0)).unwrap();
        let torn = [&100u32.to_le_bytes()[..], &[0; 4], b"only part of it"].concat();
        file.write_all_at(&torn, file.metadata().unwrap().len()).unwrap();

        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(records(&log), [&b"one"[..], b"two", b"three"]);
        log.push(&[b"four".to_vec()]).unwrap();
        drop(log);
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(
            records(&log),
            [&b"one"[..], b"two", b"three", b"four"],
            "the next push went where the torn one was"
        );
    }

    #[test]
    fn a_frame_that_fails_its_checksum_ends_the_queue_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        log.push(&[b"kept".to_vec()]).unwrap();
        log.push(&[b"half written".to_vec()]).unwrap();
        drop(log);
        let file = OpenOptions::new().write(true).open(segment_path(dir.path(), 0)).unwrap();
        let end = file.metadata().unwrap().len();
        file.write_all_at(b"X", end - 1).unwrap();

        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(records(&log), [&b"kept"[..]]);
        assert_eq!(std::fs::metadata(segment_path(dir.path(), 0)).unwrap().len(), file_header::LEN + HEADER + 4);
    }

    #[test]
    fn removing_moves_the_head_across_segments_and_deletes_drained_ones() {
        let dir = tempfile::tempdir().unwrap();
        // Tiny segments: every push after the first starts a new one.
        let log = QueueLog::open(dir.path(), None, 16).unwrap();
        for i in 0..6u8 {
            log.push(&[vec![i; 10]]).unwrap();
        }
        assert_eq!(segment_files(dir.path()), 6);
        let leased = log.lease(usize::MAX).unwrap();
        assert_eq!(leased.iter().map(|(_, r)| r[0]).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
        assert!(leased.windows(2).all(|w| w[0].0 < w[1].0), "ids follow the queue's order");

        // Out of order: the second first, so the head waits for the first.
        assert_eq!(log.remove(&[leased[1].0]).unwrap(), None);
        assert_eq!(records(&log).iter().map(|r| r[0]).collect::<Vec<_>>(), [0, 2, 3, 4, 5]);
        let head = log.remove(&[leased[0].0, leased[3].0]).unwrap().unwrap();
        assert_eq!(records(&log).iter().map(|r| r[0]).collect::<Vec<_>>(), [2, 4, 5]);
        assert_eq!(segment_files(dir.path()), 4, "the two drained segments are deleted");
        drop(log);

        // Reopened at the kept head: removals out of order past it come back (handled
        // again), nothing before it does.
        let log = QueueLog::open(dir.path(), Some(head), 16).unwrap();
        assert_eq!(records(&log).iter().map(|r| r[0]).collect::<Vec<_>>(), [2, 3, 4, 5]);
        drop(log);
        // With no head kept at all, it starts at the first segment there is.
        let log = QueueLog::open(dir.path(), None, 16).unwrap();
        assert_eq!(records(&log).iter().map(|r| r[0]).collect::<Vec<_>>(), [2, 3, 4, 5]);

        let all: Vec<EntryId> = log.lease(usize::MAX).unwrap().into_iter().map(|(id, _)| id).collect();
        log.remove(&all).unwrap().unwrap();
        assert!(records(&log).is_empty());
        assert_eq!(segment_files(dir.path()), 1, "the last segment stays, for the next push");
        log.push(&[b"after".to_vec()]).unwrap();
        assert_eq!(records(&log), [&b"after"[..]]);
    }

    #[test]
    fn depth_counts_across_segments_and_follows_pushes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, 16).unwrap();
        for i in 0..5u8 {
            log.push(&[vec![i; 10]]).unwrap();
        }
        let leased = log.lease(usize::MAX).unwrap();
        log.remove(&[leased[0].0, leased[3].0]).unwrap(); // the head moves, and one out of order
        assert_eq!(log.depth().unwrap(), 3, "counted by a walk");
        log.push(&[b"a".to_vec(), b"b".to_vec()]).unwrap();
        log.remove(&[leased[3].0, leased[4].0, EntryId(u128::MAX)]).unwrap();
        assert_eq!(log.depth().unwrap(), 4, "kept since: two pushed, one removed (once)");
        let head = log.remove(&[leased[1].0]).unwrap().unwrap();
        assert_eq!(log.depth().unwrap(), 3);
        drop(log);
        let log = QueueLog::open(dir.path(), Some(head), 16).unwrap();
        assert_eq!(log.depth().unwrap(), 5, "counted again on reopening: removals past the head are not kept");
        assert_eq!(log.depth().unwrap() as usize, log.lease(usize::MAX).unwrap().len());
    }

    #[test]
    fn a_drained_queue_rolls_onto_a_new_segment_and_its_handled_bytes_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        log.push(&[b"handled-secret".to_vec(), b"waiting".to_vec()]).unwrap();
        let leased = log.lease(10).unwrap();
        log.remove(&[leased[0].0]).unwrap();
        assert_eq!(log.roll_if_drained().unwrap(), None, "an entry still waits");
        log.remove(&[leased[1].0]).unwrap();
        let head = log.roll_if_drained().unwrap().unwrap();
        assert_eq!(log.roll_if_drained().unwrap(), None, "nothing more to do");
        assert_eq!(segment_files(dir.path()), 1);
        let bytes: Vec<u8> =
            std::fs::read_dir(dir.path()).unwrap().flat_map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        assert!(!bytes.windows(6).any(|w| w == b"secret"), "the handled entry's bytes are gone");
        log.push(&[b"next".to_vec()]).unwrap();
        drop(log);
        for kept in [Some(head), None] {
            let log = QueueLog::open(dir.path(), kept, SEGMENT_BYTES).unwrap();
            assert_eq!(records(&log), [&b"next"[..]], "with the head kept, or lost in a crash");
        }
    }

    #[test]
    fn a_segment_takes_pushes_for_a_while_only_and_goes_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let age = std::time::Duration::from_millis(50);
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap().with_segment_age(age);
        log.push(&[b"old-click".to_vec()]).unwrap();
        log.push(&[b"same-segment".to_vec()]).unwrap();
        assert_eq!(segment_files(dir.path()), 1);
        std::thread::sleep(age);
        log.push(&[b"new".to_vec()]).unwrap();
        assert_eq!(segment_files(dir.path()), 2, "the old segment takes no more");
        let leased = log.lease(10).unwrap();
        log.remove(&[leased[0].0, leased[1].0]).unwrap();
        assert_eq!(segment_files(dir.path()), 1, "drained, so deleted, while the queue still holds an entry");
        assert_eq!(records(&log), [&b"new"[..]]);
    }

    #[test]
    fn ids_that_name_no_entry_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        log.push(&[b"first".to_vec(), b"second".to_vec()]).unwrap();
        let (id, _) = log.lease(1).unwrap()[0].clone();
        let Frame { at, len } = Frame::from_id(id);
        let wrong = [
            EntryId(u128::MAX),
            Frame { at, len: len + 1 }.id(), // wrong length
            Frame { at: Position { segment: 0, offset: at.offset + 1 }, len }.id(), // not a frame's start
            Frame { at: Position { segment: 9, offset: 0 }, len }.id(), // no such segment
        ];
        assert_eq!(log.remove(&wrong).unwrap(), None);
        assert_eq!(records(&log), [&b"first"[..], b"second"]);
        assert!(log.remove(&[id]).unwrap().is_some());
        assert_eq!(records(&log), [&b"second"[..]]);
    }

    #[test]
    fn a_head_outside_the_data_starts_from_the_first_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        log.push(&[b"a".to_vec()]).unwrap();
        drop(log);
        for head in [Position { segment: 0, offset: 1 << 20 }, Position { segment: 7, offset: 0 }] {
            let log = QueueLog::open(dir.path(), Some(head), SEGMENT_BYTES).unwrap();
            assert_eq!(records(&log), [&b"a"[..]], "{head:?}");
        }
        assert_eq!(
            Position::from_bytes(&Position { segment: 3, offset: 9 }.to_bytes()),
            Some(Position { segment: 3, offset: 9 })
        );
        assert_eq!(Position::from_bytes(b"short"), None);
    }

    /// The usual rhythm: the consumer catches up with the last segment, then a push starts
    /// a new one. The head must cross over, and the drained segment go.
    #[test]
    fn a_head_that_caught_up_crosses_into_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, 64).unwrap();
        for round in 0..10u8 {
            log.push(&[vec![round; 40]]).unwrap();
            let leased = log.lease(8).unwrap();
            assert_eq!(leased.iter().map(|(_, r)| r[0]).collect::<Vec<_>>(), [round], "round {round}");
            log.remove(&[leased[0].0]).unwrap().unwrap();
            assert!(segment_files(dir.path()) <= 2, "round {round}: drained segments are deleted");
        }
        let state = log.state.lock();
        assert!(state.removed.is_empty());
        assert_eq!(state.segments.len(), 1);
    }

    /// A segment of version 1 (no header) is read from its first byte, with a head kept
    /// in it; the segments made after it have headers.
    #[test]
    fn a_segment_without_a_header_is_read_and_the_next_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        log.push(&[b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]).unwrap();
        drop(log);
        file_header::strip(&segment_path(dir.path(), 0), file_header::QUEUE_SEGMENT);
        // Past the first entry, as an earlier build kept it.
        let head = Position { segment: 0, offset: HEADER + 3 };

        let log = QueueLog::open(dir.path(), Some(head), SEGMENT_BYTES).unwrap();
        let leased = log.lease(10).unwrap();
        assert_eq!(leased.iter().map(|(_, r)| r.as_slice()).collect::<Vec<_>>(), [&b"two"[..], b"three"]);
        log.remove(&leased.iter().map(|(id, _)| *id).collect::<Vec<_>>()).unwrap();
        let head = log.roll_if_drained().unwrap().unwrap();
        assert_eq!(head, Position { segment: 1, offset: file_header::LEN });
        assert_eq!(std::fs::read(segment_path(dir.path(), 1)).unwrap(), file_header::bytes(file_header::QUEUE_SEGMENT));
        log.push(&[b"four".to_vec()]).unwrap();
        drop(log);
        let log = QueueLog::open(dir.path(), Some(head), SEGMENT_BYTES).unwrap();
        assert_eq!(records(&log), [&b"four"[..]]);
    }

    /// Damage in a segment other than the last (a disk fault) costs the rest of that
    /// segment, not the queue: later segments are still delivered and the head moves on.
    #[test]
    fn damage_in_an_earlier_segment_skips_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), None, 64).unwrap();
        log.push(&[vec![1; 10], vec![2; 10]]).unwrap();
        log.push(&[vec![3; 30]]).unwrap(); // does not fit: a second segment
        drop(log);
        let first = OpenOptions::new().write(true).open(segment_path(dir.path(), 0)).unwrap();
        first.write_all_at(b"X", file_header::LEN + HEADER + 10 + HEADER).unwrap(); // the second record's first byte

        let log = QueueLog::open(dir.path(), None, 64).unwrap();
        let leased = log.lease(10).unwrap();
        assert_eq!(leased.iter().map(|(_, r)| r[0]).collect::<Vec<_>>(), [1, 3]);
        let ids: Vec<EntryId> = leased.iter().map(|(id, _)| *id).collect();
        assert!(log.remove(&ids).unwrap().is_some());
        assert!(records(&log).is_empty());
        assert_eq!(segment_files(dir.path()), 1);
    }
}
