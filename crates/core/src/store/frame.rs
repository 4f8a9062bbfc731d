//! Checksummed frames in append-only files, `length u32 LE ‖ crc32 u32 LE ‖ record`: the
//! format of the sled backend's own files (its queues and its links).
//!
//! A frame that is short or fails its checksum marks where intact data ends: what an
//! append that never returned can leave behind.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Error;

/// Frame header: length and checksum.
pub(crate) const HEADER: u64 = 8;

pub(crate) fn io(e: std::io::Error) -> Error {
    Error::Storage(Box::new(e))
}

/// Makes a directory entry durable: a new file is not on disk until its directory is.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
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
