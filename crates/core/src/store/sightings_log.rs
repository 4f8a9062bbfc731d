//! The address ledger on sled: a tally per address in memory (see [`AddressTally`]), and
//! two append-only files, so that a restart finds the recent ones.
//!
//! Every click from a browser is a sighting. As a sled tree that was an insert a click, and
//! sled's `Batch` made every later sled operation of the process take a global lock. Here
//! a group of sightings is one `write`, and a lookup is a hash probe and a look at a few
//! spans.
//!
//! `sightings.log` (being written) and `sightings.previous.log` (the one before) are runs of
//! [`frame`]s of `address key (16 bytes) ‖ at u64 ‖ contact u64 ‖ marked span from u64 ‖
//! to u64` (a span `to` of 0: none). Replaying them in order rebuilds each tally as it was,
//! without the rule that marked the spans. They are never synced: the ledger is best
//! effort (a lost sighting weakens the address rule for a moment and never loses a click).
//! A kill -9 loses nothing written, because the kernel holds it; a power loss can lose the
//! unsynced tail. A sweep forgets what is older than its horizon in memory. Once everything
//! in the previous file is older, that file is deleted and the current one becomes the
//! previous. So the files hold the sightings a sweep would keep, and at most two sweeps'
//! more. Each file starts with its header ([`file_header`]), which says where its frames
//! start (a file of version 1 has none). On open both are read; a torn end of the current
//! file is cut, and a record of another size is skipped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use foldhash::fast::FixedState;
use parking_lot::Mutex;

use super::file_header;
use super::frame::{self, io};
use super::{AddressRule, AddressTally, GatewaySpan, Sighting};
use crate::model::Timestamp;
use crate::Error;

const CURRENT: &str = "sightings.log";
const PREVIOUS: &str = "sightings.previous.log";
const RECORD: usize = 48;

struct Files {
    dir: PathBuf,
    current: File,
    /// The latest sighting in each file, or 0 for none.
    current_newest: u64,
    previous_newest: u64,
}

/// The sightings of one data directory.
pub(crate) struct SightingsLog {
    by_address: Mutex<HashMap<[u8; 16], AddressTally, FixedState>>,
    files: Mutex<Files>,
}

fn record(sighting: &Sighting, marked: Option<GatewaySpan>) -> [u8; RECORD] {
    let mut record = [0u8; RECORD];
    record[..16].copy_from_slice(&sighting.address);
    record[16..24].copy_from_slice(&sighting.at.0.to_be_bytes());
    record[24..32].copy_from_slice(&sighting.contact.to_be_bytes());
    if let Some(span) = marked {
        record[32..40].copy_from_slice(&span.from.0.to_be_bytes());
        record[40..].copy_from_slice(&span.to.0.to_be_bytes());
    }
    record
}

fn parse(record: &[u8]) -> Option<(Sighting, Option<GatewaySpan>)> {
    let record: &[u8; RECORD] = record.try_into().ok()?;
    let u64_at = |i: usize| record[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    let sighting =
        Sighting { address: record[..16].try_into().ok()?, at: Timestamp(u64_at(16)?), contact: u64_at(24)? };
    let marked = match u64_at(40)? {
        0 => None,
        to => Some(GatewaySpan { from: Timestamp(u64_at(32)?), to: Timestamp(to) }),
    };
    Some((sighting, marked))
}

/// Opens the current file for appending, made with its header if it is new.
fn open_current(dir: &Path) -> Result<File, Error> {
    let path = dir.join(CURRENT);
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    file_header::frames_start(&file, &path, file_header::SIGHTINGS)?;
    OpenOptions::new().append(true).open(&path).map_err(io)
}

impl SightingsLog {
    /// Opens (or creates) the files in `dir` and loads what they hold.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let mut by_address: HashMap<[u8; 16], AddressTally, FixedState> = HashMap::default();
        let mut newest = [0u64; 2];
        for (i, name) in [PREVIOUS, CURRENT].into_iter().enumerate() {
            let path = dir.join(name);
            let Ok(file) = File::open(&path) else { continue };
            // Without a whole header it holds nothing yet.
            let Some(start) = file_header::read(&file, &path, file_header::SIGHTINGS)? else { continue };
            let valid = frame::read_between(&file, start, u64::MAX, RECORD, |_, bytes| {
                if let Some((s, marked)) = parse(bytes) {
                    by_address.entry(s.address).or_default().restore(s.contact, s.at, marked);
                    newest[i] = newest[i].max(s.at.0);
                }
                Ok(())
            })?;
            if name == CURRENT && valid < file.metadata().map_err(io)?.len() {
                // Best effort: a torn tail is what a crash mid-write leaves; nothing to keep.
                OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(valid)).map_err(io)?;
            }
        }
        let current = open_current(dir)?;
        let files = Files { dir: dir.to_owned(), current, current_newest: newest[1], previous_newest: newest[0] };
        Ok(Self { by_address: Mutex::new(by_address), files: Mutex::new(files) })
    }

    /// Counts sightings: in memory at once, then one write (not synced).
    pub(crate) fn sight(&self, sightings: &[Sighting], rule: AddressRule) -> Result<(), Error> {
        let mut frames = Vec::with_capacity(sightings.len() * (RECORD + frame::HEADER as usize));
        {
            let mut by_address = self.by_address.lock();
            for s in sightings {
                let marked = by_address.entry(s.address).or_default().sight(s.contact, s.at, rule);
                frame::append(&mut frames, &record(s, marked));
            }
        }
        let mut files = self.files.lock();
        files.current.write_all(&frames).map_err(io)?;
        let newest = sightings.iter().map(|s| s.at.0).max().unwrap_or(0);
        files.current_newest = files.current_newest.max(newest);
        Ok(())
    }

    /// The spans in which `address` was a gateway that overlap `from..=to`, in time order.
    pub(crate) fn gateway_spans(&self, address: &[u8; 16], from: Timestamp, to: Timestamp) -> Vec<GatewaySpan> {
        self.by_address.lock().get(address).map(|t| t.spans(from, to).collect()).unwrap_or_default()
    }

    /// How many entries the tally of `address` holds.
    #[cfg(test)]
    pub(crate) fn held(&self, address: &[u8; 16]) -> usize {
        self.by_address.lock().get(address).map_or(0, AddressTally::len)
    }

    /// Forgets contacts last seen, and spans ended, before `before`; returns how many. Turns
    /// the files over once the previous one holds nothing newer.
    pub(crate) fn forget(&self, before: Timestamp) -> Result<u64, Error> {
        let mut forgotten = 0;
        self.by_address.lock().retain(|_, tally| {
            forgotten += tally.forget(before);
            !tally.is_empty()
        });
        let mut files = self.files.lock();
        if files.previous_newest < before.0 {
            std::fs::rename(files.dir.join(CURRENT), files.dir.join(PREVIOUS)).map_err(io)?;
            files.current = open_current(&files.dir)?;
            files.previous_newest = std::mem::take(&mut files.current_newest);
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const RULE: AddressRule = AddressRule { contacts: 3, window: std::time::Duration::from_secs(60) };

    fn seen(address: u8, at: u64, contact: u64) -> Sighting {
        Sighting { address: [address; 16], at: Timestamp(at), contact }
    }

    fn spans(log: &SightingsLog, address: u8) -> Vec<GatewaySpan> {
        log.gateway_spans(&[address; 16], Timestamp(0), Timestamp(u64::MAX))
    }

    fn span(from: u64, to: u64) -> GatewaySpan {
        GatewaySpan { from: Timestamp(from), to: Timestamp(to) }
    }

    #[test]
    fn spans_come_back_after_a_reopen_and_counting_goes_on_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 100_000, 7), seen(1, 101_000, 5), seen(2, 100_000, 6)], RULE).unwrap();
        log.sight(&[seen(1, 102_000, 9)], RULE).unwrap();
        assert_eq!(spans(&log, 1), [span(42_000, 102_000)]);
        assert!(spans(&log, 2).is_empty());
        drop(log);

        let log = SightingsLog::open(dir.path()).unwrap();
        assert_eq!(spans(&log, 1), [span(42_000, 102_000)], "read back");
        assert!(log.gateway_spans(&[1; 16], Timestamp(102_001), Timestamp(200_000)).is_empty());
        // Address 2 had one contact before the reopen; two more make it a gateway.
        log.sight(&[seen(2, 110_000, 1), seen(2, 111_000, 2)], RULE).unwrap();
        assert_eq!(spans(&log, 2), [span(51_000, 111_000)]);
        assert!(spans(&log, 3).is_empty());
    }

    #[test]
    fn a_sweep_forgets_and_the_files_hold_only_what_a_sweep_would_keep() {
        let dir = tempfile::tempdir().unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 100, 1)], RULE).unwrap();
        assert_eq!(log.forget(Timestamp(50)).unwrap(), 0); // turns over: nothing was in previous
        log.sight(&[seen(1, 200, 2), seen(1, 300, 3)], RULE).unwrap();
        assert_eq!(spans(&log, 1), [span(0, 300)]);
        assert_eq!(log.forget(Timestamp(150)).unwrap(), 1, "contact 1");
        assert_eq!(spans(&log, 1), [span(0, 300)], "the span ends later");
        drop(log);
        // The file with the first sighting went at the second turn; the others stay.
        let log = SightingsLog::open(dir.path()).unwrap();
        assert_eq!(spans(&log, 1), [span(0, 300)]);
        assert_eq!(log.forget(Timestamp(400)).unwrap(), 3, "two contacts and the span");
        log.forget(Timestamp(400)).unwrap();
        drop(log);
        assert!(spans(&SightingsLog::open(dir.path()).unwrap(), 1).is_empty(), "both files turned over");
    }

    /// Files of version 1 (no header) are read; the next file made has one.
    #[test]
    fn files_without_a_header_are_read_and_the_next_one_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 100, 1), seen(1, 110, 2)], RULE).unwrap();
        drop(log);
        let path = dir.path().join(CURRENT);
        file_header::strip(&path, file_header::SIGHTINGS);
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 120, 3)], RULE).unwrap();
        assert_eq!(spans(&log, 1), [span(0, 120)]);
        log.forget(Timestamp(50)).unwrap(); // turns over: the old file becomes the previous
        let made = std::fs::read(&path).unwrap();
        assert_eq!(made, file_header::bytes(file_header::SIGHTINGS), "the new file starts with its header");
        drop(log);
        assert_eq!(spans(&SightingsLog::open(dir.path()).unwrap(), 1), [span(0, 120)], "read from both");
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 100, 1), seen(1, 110, 2)], RULE).unwrap();
        drop(log);
        OpenOptions::new().append(true).open(dir.path().join(CURRENT)).unwrap().write_all(&[56, 0, 0, 0, 1]).unwrap();
        let log = SightingsLog::open(dir.path()).unwrap();
        log.sight(&[seen(1, 200, 3)], RULE).unwrap();
        drop(log);
        assert_eq!(spans(&SightingsLog::open(dir.path()).unwrap(), 1), [span(0, 200)]);
    }
}
