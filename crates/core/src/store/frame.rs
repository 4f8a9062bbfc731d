//! Checksummed frames in append-only files, `length u32 LE ‖ crc32 u32 LE ‖ record`: the
//! format of the sled backend's own files (its queues, its links and its notes), after
//! each file's header ([`file_header`]).
//!
//! A frame that is short or fails its checksum marks where intact data ends: what an
//! append that never returned can leave behind.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::file_header;
use crate::Error;

/// Where a frame is in its file: its offset (44 bits, 16 TiB) and record length (20 bits),
/// in 8 bytes, because the logs' indexes hold one per link or note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot(u64);

impl Slot {
    const LEN_BITS: u32 = 20;
    /// The first offset a slot cannot hold.
    pub(crate) const MAX_OFFSET: u64 = 1 << (64 - Self::LEN_BITS);
    /// The longest record a slot can hold.
    pub(crate) const MAX_LEN: usize = (1 << Self::LEN_BITS) - 1;

    pub(crate) fn new(offset: u64, len: usize) -> Self {
        debug_assert!(offset < Self::MAX_OFFSET && len <= Self::MAX_LEN);
        Self(offset << Self::LEN_BITS | len as u64)
    }

    pub(crate) fn offset(self) -> u64 {
        self.0 >> Self::LEN_BITS
    }

    pub(crate) fn len(self) -> usize {
        (self.0 & ((1 << Self::LEN_BITS) - 1)) as usize
    }

    /// The slot as one integer, as an index's checkpoint keeps it.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

/// Frame header: length and checksum.
pub(crate) const HEADER: u64 = 8;

pub(crate) fn io(e: std::io::Error) -> Error {
    Error::Storage(Box::new(e))
}

/// Makes a directory entry durable: a new file is not on disk until its directory is.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Deletes `name` in `dir` if it is there, durably (the directory synced).
pub(crate) fn remove_durably(dir: &Path, name: &str) -> Result<(), Error> {
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// A log file opened by [`open_log`].
pub(crate) struct OpenLog {
    pub(crate) path: std::path::PathBuf,
    pub(crate) file: File,
    pub(crate) len: u64,
    /// Where its frames start ([`file_header::frames_start`]).
    pub(crate) start: u64,
}

/// Opens `name` in `dir`, a file of `kind`, for reading and appending, creating it with its
/// header, and the directory entry, durably if it is new.
pub(crate) fn open_log(dir: &Path, name: &str, kind: file_header::Kind) -> Result<OpenLog, Error> {
    let path = dir.join(name);
    // A compaction cut short: the log it was copying is still whole.
    match std::fs::remove_file(compacting(&path)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let existed = path.exists();
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    // Synced, with its header, before its name is.
    let start = file_header::frames_start(&file, &path, kind)?;
    if !existed {
        sync_dir(dir)?;
    }
    let len = file.metadata().map_err(io)?.len();
    Ok(OpenLog { path, file, len, start })
}

/// Appends one record's frame to `frames`.
pub(crate) fn append(frames: &mut Vec<u8>, record: &[u8]) {
    frames.extend_from_slice(&(record.len() as u32).to_le_bytes());
    frames.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
    frames.extend_from_slice(record);
}

/// A frame header's record length and checksum.
pub(crate) fn header(bytes: [u8; HEADER as usize]) -> (u64, u32) {
    let len = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    (len, u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]))
}

/// Whether a record matches its header's checksum.
pub(crate) fn intact(record: &[u8], crc: u32) -> bool {
    crc32fast::hash(record) == crc
}

/// The record of the whole, intact frame of at most `max_len` bytes that `bytes` starts
/// with, if there is one.
pub(crate) fn parse(bytes: &[u8], max_len: usize) -> Option<&[u8]> {
    let (len, crc) = header(bytes.get(..HEADER as usize)?.try_into().ok()?);
    let len = usize::try_from(len).ok().filter(|&len| len <= max_len)?;
    let record = bytes.get(HEADER as usize..)?.get(..len)?;
    intact(record, crc).then_some(record)
}

/// Reads the frame at `offset`, checking it; `None` if there is no whole, intact frame
/// of at most `max_len` bytes before `end`.
pub(crate) fn read_at(file: &File, offset: u64, end: u64, max_len: usize) -> Result<Option<(u64, Vec<u8>)>, Error> {
    if offset + HEADER > end {
        return Ok(None);
    }
    let mut bytes = [0u8; HEADER as usize];
    file.read_exact_at(&mut bytes, offset).map_err(io)?;
    let (len, crc) = header(bytes);
    if offset + HEADER + len > end || len as usize > max_len {
        return Ok(None);
    }
    let mut record = vec![0; len as usize];
    file.read_exact_at(&mut record, offset + HEADER).map_err(io)?;
    Ok(intact(&record, crc).then_some((len, record)))
}

/// Fills `buf` from `reader`; `false` if the input ends first.
pub(crate) fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> Result<bool, Error> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io(e)),
    }
}

/// Reads `file` from the frame at `from` and no further than `end`, handing each intact
/// frame's offset and record to `found`, and returns where the intact frames end: the
/// first short frame, one over `max_len`, or one that fails its checksum.
pub(crate) fn read_between(
    file: &File,
    from: u64,
    end: u64,
    max_len: usize,
    mut found: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<u64, Error> {
    use std::io::{Seek, SeekFrom};
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.try_clone().map_err(io)?);
    reader.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut offset = from;
    let mut record = Vec::new();
    loop {
        if offset + HEADER > end {
            return Ok(offset);
        }
        let mut header = [0u8; HEADER as usize];
        if !read_full(&mut reader, &mut header)? {
            return Ok(offset);
        }
        let (len, crc) = self::header(header);
        if len as usize > max_len || offset + HEADER + len > end {
            return Ok(offset);
        }
        record.resize(len as usize, 0);
        if !read_full(&mut reader, &mut record)? || !intact(&record, crc) {
            return Ok(offset);
        }
        found(offset, &record)?;
        offset += HEADER + len;
    }
}

/// A frame kept by [`recover`]: its new offset and its record.
pub(crate) type Salvaged = (u64, Vec<u8>);

/// After a crash (or damage) the bytes of `path` from `valid` to `len` are not a run of
/// intact frames. They are copied to `<name>.cut-<valid>` (never over an earlier copy),
/// cut off, and every intact frame among them that `keep` accepts is appended again.
/// Returns the file's new length and each frame kept, with its new offset.
pub(crate) fn recover(
    file: &File,
    path: &Path,
    valid: u64,
    len: u64,
    max_len: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<(u64, Vec<Salvaged>), Error> {
    use std::os::unix::fs::FileExt;
    let mut cut = vec![0u8; (len - valid) as usize];
    file.read_exact_at(&mut cut, valid).map_err(io)?;
    let aside = set_aside(path, valid, &cut)?;
    let mut frames = Vec::new();
    let mut kept = Vec::new();
    let mut at = 0;
    while at + HEADER as usize <= cut.len() {
        match parse(&cut[at..], max_len).filter(|record| keep(record)) {
            Some(record) => {
                kept.push((valid + frames.len() as u64, record.to_vec()));
                append(&mut frames, record);
                at += HEADER as usize + record.len();
            }
            None => at += 1,
        }
    }
    file.set_len(valid).map_err(io)?;
    file.write_all_at(&frames, valid).and_then(|()| file.sync_all()).map_err(io)?;
    tracing::warn!(log = %path.display(), at = valid, bytes = len - valid, salvaged = kept.len(),
        aside = %aside.display(), "a log had a torn or damaged frame: the rest was set aside and its intact frames kept");
    Ok((valid + frames.len() as u64, kept))
}

/// Writes `cut` to a new file `<name>.cut-<offset>` (`.1`, `.2`… if that exists, as after
/// a crash during an earlier recovery: an earlier copy is never overwritten).
fn set_aside(path: &Path, offset: u64, cut: &[u8]) -> Result<std::path::PathBuf, Error> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for n in 0u32.. {
        let suffix = if n == 0 { String::new() } else { format!(".{n}") };
        let aside = path.with_file_name(format!("{name}.cut-{offset}{suffix}"));
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&aside) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            opened => opened.map_err(io)?,
        };
        file.write_all(cut).and_then(|()| file.sync_all()).map_err(io)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        return Ok(aside);
    }
    Err(Error::Storage(format!("no free name to set {} aside", path.display()).into()))
}

/// An appender's state: the file's length, and whether a failed sync stopped appends.
pub(crate) struct Tail {
    pub(crate) len: u64,
    /// After a failed `fdatasync` the kernel may have dropped the unwritten pages, so what
    /// was appended is in doubt until the file is read again: appends stop until a restart.
    failed: bool,
}

impl Tail {
    pub(crate) fn new(len: u64) -> Self {
        Self { len, failed: false }
    }

    /// Refuses an append after a failed sync.
    pub(crate) fn check(&self, path: &Path) -> Result<(), Error> {
        match self.failed {
            true => {
                Err(Error::Storage(format!("{} could not be synced; restart to read it again", path.display()).into()))
            }
            false => Ok(()),
        }
    }
}

/// Syncs an append's frames, outside the appender's lock so that concurrent appends share
/// syncs. The kernel reports a failed write-back to one sync only: after any failed sync,
/// what this append wrote may not be on disk either, so it fails too.
pub(crate) fn sync_appended(file: &File, tail: &parking_lot::Mutex<Tail>, path: &Path) -> Result<(), Error> {
    let synced = file.sync_data();
    let mut tail = tail.lock();
    if let Err(e) = synced {
        tail.failed = true;
        return Err(io(e));
    }
    if tail.failed {
        return Err(Error::Storage(format!("{} could not be synced", path.display()).into()));
    }
    Ok(())
}

/// A compacted copy of a log, written next to it (`<name>.compact`) a batch of frames at
/// a time, and then put in its place: synced, renamed over `<name>`, and the directory
/// synced. A crash leaves the old file in use (and a stray `.compact`, which [`open_log`]
/// deletes) or the whole new one, never a mix.
pub(crate) struct Compacted {
    path: std::path::PathBuf,
    file: File,
    /// Frames not yet written.
    frames: Vec<u8>,
    written: u64,
}

impl Compacted {
    /// Starts the copy of the log at `path`, a file of `kind`: its header first, whatever
    /// version the log is of.
    pub(crate) fn start(path: &Path, kind: file_header::Kind) -> Result<Self, Error> {
        let copy = compacting(path);
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&copy).map_err(io)?;
        Ok(Self { path: copy, file, frames: file_header::bytes(kind).to_vec(), written: 0 })
    }

    /// The copy's file (what is flushed of it is readable).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Where the next frame goes.
    pub(crate) fn next_offset(&self) -> u64 {
        self.written + self.frames.len() as u64
    }

    /// Adds a record's frame.
    pub(crate) fn append(&mut self, record: &[u8]) -> Result<(), Error> {
        append(&mut self.frames, record);
        if self.frames.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds frames made elsewhere.
    pub(crate) fn extend(&mut self, frames: &[u8]) -> Result<(), Error> {
        self.frames.extend_from_slice(frames);
        self.flush()
    }

    /// Writes the frames added so far, so that they can be read back.
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&self.frames, self.written).map_err(io)?;
        self.written += self.frames.len() as u64;
        self.frames.clear();
        Ok(())
    }

    /// Puts the copy in the place of the log at `log`; returns its length.
    pub(crate) fn put_in_place(mut self, log: &Path) -> Result<u64, Error> {
        self.flush()?;
        self.file.sync_all().map_err(io)?;
        // In debug builds only: a test kills the process here, with the copy whole and not
        // yet in place.
        #[cfg(debug_assertions)]
        if let Some(ms) = std::env::var("SHORTLINKS_TEST_PAUSE_BEFORE_RENAME_MS").ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        std::fs::rename(&self.path, log).map_err(io)?;
        if let Some(dir) = log.parent() {
            sync_dir(dir)?;
        }
        Ok(self.written)
    }
}

/// Where a compaction writes its copy of `path`.
fn compacting(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}.compact"))
}
