//! The address ledger on sled: sightings in memory, and in two append-only files, so that
//! a restart finds the recent ones.
//!
//! Every click from a browser is a sighting. As a sled tree that was an insert a click, and
//! sled's `Batch` made every later sled operation of the process take a global lock. Here
//! a group of sightings is one `write`, and a lookup is a hash probe.
//!
//! `sightings.log` (being written) and `sightings.previous.log` (the one before) are runs of
//! [`frame`]s of `address key (16 bytes) ‖ at u64 ‖ contact u64`. They are never synced: the
//! ledger is best effort (a lost sighting weakens the address rule for a moment and never
//! loses a click). A kill -9 loses nothing written, because the kernel holds it; a power
//! loss can lose the unsynced tail. A sweep forgets what is older than its horizon in
//! memory. Once everything in the previous file is older, that file is deleted and the
//! current one becomes the previous. So the files hold the sightings a sweep would keep,
//! and at most two sweeps' more. On open both are read; a torn end of the current file is
//! cut.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use foldhash::fast::FixedState;
use parking_lot::Mutex;

use super::frame::{self, io};
use super::Sighting;
use crate::model::Timestamp;
use crate::Error;

const CURRENT: &str = "sightings.log";
const PREVIOUS: &str = "sightings.previous.log";
const RECORD: usize = 32;

/// One address's sightings: (at, contact), in that order.
type Seen = Vec<(u64, u64)>;

struct Files {
    dir: PathBuf,
    current: File,
    /// The latest sighting in each file, or 0 for none.
    current_newest: u64,
    previous_newest: u64,
}

/// The sightings of one data directory.
pub(crate) struct SightingsLog {
    by_address: Mutex<HashMap<[u8; 16], Seen, FixedState>>,
    files: Mutex<Files>,
}

fn record(sighting: &Sighting) -> [u8; RECORD] {
    let mut record = [0u8; RECORD];
    record[..16].copy_from_slice(&sighting.address);
    record[16..24].copy_from_slice(&sighting.at.0.to_be_bytes());
    record[24..].copy_from_slice(&sighting.contact.to_be_bytes());
    record
}

fn parse(record: &[u8]) -> Option<Sighting> {
    let record: &[u8; RECORD] = record.try_into().ok()?;
    let u64_at = |i: usize| record[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    Some(Sighting { address: record[..16].try_into().ok()?, at: Timestamp(u64_at(16)?), contact: u64_at(24)? })
}

fn insert(seen: &mut Seen, at: u64, contact: u64) {
    match seen.last() {
        Some(&last) if last > (at, contact) => {
            let i = seen.partition_point(|&s| s < (at, contact));
            if seen.get(i) != Some(&(at, contact)) {
                seen.insert(i, (at, contact));
            }
        }
        Some(&last) if last == (at, contact) => {}
        _ => seen.push((at, contact)),
    }
}

impl SightingsLog {
    /// Opens (or creates) the files in `dir` and loads what they hold.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let mut by_address: HashMap<[u8; 16], Seen, FixedState> = HashMap::default();
        let mut newest = [0u64; 2];
        for (i, name) in [PREVIOUS, CURRENT].into_iter().enumerate() {
            let path = dir.join(name);
            let Ok(file) = File::open(&path) else { continue };
            let valid = frame::read_through(&file, RECORD, |_, bytes| {
                if let Some(s) = parse(bytes) {
                    insert(by_address.entry(s.address).or_default(), s.at.0, s.contact);
                    newest[i] = newest[i].max(s.at.0);
                }
                Ok(())
            })?;
            if name == CURRENT && valid < file.metadata().map_err(io)?.len() {
                // Best effort: a torn tail is what a crash mid-write leaves; nothing to keep.
                OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(valid)).map_err(io)?;
            }
        }
        let current = OpenOptions::new().append(true).create(true).open(dir.join(CURRENT)).map_err(io)?;
        let files = Files { dir: dir.to_owned(), current, current_newest: newest[1], previous_newest: newest[0] };
        Ok(Self { by_address: Mutex::new(by_address), files: Mutex::new(files) })
    }

    /// Records sightings: in memory at once, then one write (not synced).
    pub(crate) fn sight(&self, sightings: &[Sighting]) -> Result<(), Error> {
        let mut frames = Vec::with_capacity(sightings.len() * (RECORD + frame::HEADER as usize));
        {
            let mut by_address = self.by_address.lock();
            for s in sightings {
                insert(by_address.entry(s.address).or_default(), s.at.0, s.contact);
                frame::append(&mut frames, &record(s));
            }
        }
        let mut files = self.files.lock();
        files.current.write_all(&frames).map_err(io)?;
        let newest = sightings.iter().map(|s| s.at.0).max().unwrap_or(0);
        files.current_newest = files.current_newest.max(newest);
        Ok(())
    }

    /// The sightings of `address` from `from` to `to`, both included: (contact, time), in
    /// time order.
    pub(crate) fn sightings(&self, address: &[u8; 16], from: Timestamp, to: Timestamp) -> Vec<(u64, Timestamp)> {
        let by_address = self.by_address.lock();
        let Some(seen) = by_address.get(address) else { return Vec::new() };
        let first = seen.partition_point(|&(at, _)| at < from.0);
        seen[first..].iter().take_while(|&&(at, _)| at <= to.0).map(|&(at, contact)| (contact, Timestamp(at))).collect()
    }

    /// Forgets sightings made before `before`; returns how many. Turns the files over once
    /// the previous one holds nothing newer.
    pub(crate) fn forget(&self, before: Timestamp) -> Result<u64, Error> {
        let mut forgotten = 0;
        self.by_address.lock().retain(|_, seen| {
            let old = seen.partition_point(|&(at, _)| at < before.0);
            forgotten += old as u64;
            seen.drain(..old);
            !seen.is_empty()
        });
        let mut files = self.files.lock();
        if files.previous_newest < before.0 {
            std::fs::rename(files.dir.join(CURRENT), files.dir.join(PREVIOUS)).map_err(io)?;
            files.current = OpenOptions::new().append(true).create(true).open(files.dir.join(CURRENT)).map_err(io)?;
            files.previous_newest = std::mem::take(&mut files.current_newest);
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn seen(address: u8, at: u64, contact: u64) -> Sighting {
        Sighting { address: [address; 16], at: Timestamp(at), contact }
    }

    fn all(log: &SightingsLog, address: u8) -> Vec<(u64, Timestamp)> {
        log.sightings(&[address; 16], Timestamp(0), Timestamp(u64::MAX))
    }

    #[test]
    fn sightings_come_back_after_a_reopen_in_time_order_and_a_range_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 300, 7), seen(1, 100, 5), seen(2, 200, 6)]).unwrap();
        log.sight(&[seen(1, 200, 9), seen(1, 100, 5)]).unwrap();
        let expected = vec![(5, Timestamp(100)), (9, Timestamp(200)), (7, Timestamp(300))];
        assert_eq!(all(&log, 1), expected);
        assert_eq!(log.sightings(&[1; 16], Timestamp(100), Timestamp(200)), expected[..2]);
        drop(log);

        let log = SightingsLog::open(dir.path()).unwrap();
        assert_eq!(all(&log, 1), expected, "read back, once each");
        assert_eq!(all(&log, 2), [(6, Timestamp(200))]);
        assert!(all(&log, 3).is_empty());
    }

    #[test]
    fn a_sweep_forgets_and_the_files_hold_only_what_a_sweep_would_keep() {
        let dir = tempfile::tempdir().unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 100, 1)]).unwrap();
        assert_eq!(log.forget(Timestamp(50)).unwrap(), 0); // turns over: nothing was in previous
        log.sight(&[seen(1, 200, 2)]).unwrap();
        assert_eq!(log.forget(Timestamp(150)).unwrap(), 1);
        assert_eq!(all(&log, 1), [(2, Timestamp(200))]);
        drop(log);
        // The file with the first sighting went at the second turn; the second's stays.
        let log = SightingsLog::open(dir.path()).unwrap();
        assert_eq!(all(&log, 1), [(2, Timestamp(200))]);
        assert_eq!(log.forget(Timestamp(300)).unwrap(), 1);
        log.forget(Timestamp(300)).unwrap();
        drop(log);
        assert!(all(&SightingsLog::open(dir.path()).unwrap(), 1).is_empty(), "both files turned over");
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 100, 1)]).unwrap();
        drop(log);
        OpenOptions::new().append(true).open(dir.path().join(CURRENT)).unwrap().write_all(&[40, 0, 0, 0, 1]).unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 200, 2)]).unwrap();
        drop(log);
        assert_eq!(all(&SightingsLog::open(dir.path()).unwrap(), 1), [(1, Timestamp(100)), (2, Timestamp(200))]);
    }
}
