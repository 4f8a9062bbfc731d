//! The embedded store's small state, `state.log`: tokens, the tombstones of erased codes,
//! each queue's head, the installation secret, credentials and a few times. A map in
//! memory, whose every change is a frame appended to the file.
//!
//! It was sled's, whose flush ends in `sync_file_range` (neither the file's new length nor
//! the disk's write cache): a durable write needed an `fdatasync` of sled's log by its
//! file's name. Here a durable write is an `fdatasync` of our own file, and no contact's
//! data is left behind in a file we do not control (decision 0015).
//!
//! A record is a kind byte, then:
//! - `P`, a value put: table u8 ‖ key length u16 ‖ key ‖ value;
//! - `D`, a key deleted: table u8 ‖ key length u16 ‖ key.
//!
//! Changes made together are one write, synced when the caller asks (a token, the secret,
//! a credential, tombstones), or left to the kernel (a queue's head, whose loss only means
//! entries handled again). Once the file holds four times what is live (and 1 MiB), it is
//! rewritten with only what is live ([`frame::Compacted`]: crash-safe at every point).
//! Opening reads it through and cuts a torn end as every log of ours does.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};

use super::file_header;
use super::frame::{self, io, HEADER};
use crate::Error;

/// The file's name in the data directory.
pub(crate) const FILE_NAME: &str = "state.log";
const PUT: u8 = b'P';
const DELETE: u8 = b'D';
/// A record's longest key: queue names, token ids and the like are short.
const MAX_KEY: usize = 1024;
/// The longest record: a credential (an amoCRM account's tokens) is a few KiB.
const MAX_RECORD: usize = 1 << 20;
/// The file is rewritten once it holds this many times what is live, and this much more.
const REWRITE_RATIO: u64 = 4;
const REWRITE_SLACK: u64 = 1 << 20;

/// What a value belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Table {
    /// Token id → `ApiToken` record.
    Tokens = 1,
    /// A [`crate::code::Tombstone`] → when, u64 big-endian.
    Erased = 2,
    /// Queue name → its head's position.
    QueueHeads = 3,
    /// The secret, credentials and times, each by its own key.
    Settings = 4,
}

impl Table {
    fn from_byte(byte: u8) -> Option<Self> {
        [Self::Tokens, Self::Erased, Self::QueueHeads, Self::Settings].into_iter().find(|t| *t as u8 == byte)
    }
}

/// One change: a value put, or (`None`) a key deleted.
pub(crate) struct Change<'a> {
    pub(crate) table: Table,
    pub(crate) key: &'a [u8],
    pub(crate) value: Option<&'a [u8]>,
}

impl<'a> Change<'a> {
    /// A value put under `key`.
    pub(crate) fn put(table: Table, key: &'a [u8], value: &'a [u8]) -> Self {
        Self { table, key, value: Some(value) }
    }

    fn append_to(&self, frames: &mut Vec<u8>) -> Result<(), Error> {
        if self.key.len() > MAX_KEY || self.value.map_or(0, <[u8]>::len) + MAX_KEY + 4 > MAX_RECORD {
            return Err(Error::Storage(format!("a {:?} entry is too long to store", self.table).into()));
        }
        let mut record = Vec::with_capacity(4 + self.key.len() + self.value.map_or(0, <[u8]>::len));
        record.push(if self.value.is_some() { PUT } else { DELETE });
        record.push(self.table as u8);
        record.extend_from_slice(&(self.key.len() as u16).to_be_bytes());
        record.extend_from_slice(self.key);
        record.extend_from_slice(self.value.unwrap_or_default());
        frame::append(frames, &record);
        Ok(())
    }
}

/// A change read back from its record.
fn parse(record: &[u8]) -> Option<Change<'_>> {
    let (&kind, rest) = record.split_first()?;
    let (&table, rest) = rest.split_first()?;
    let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let key = rest.get(2..2 + len)?;
    let value = &rest[2 + len..];
    let table = Table::from_byte(table)?;
    match kind {
        PUT => Some(Change { table, key, value: Some(value) }),
        DELETE if value.is_empty() => Some(Change { table, key, value: None }),
        _ => None,
    }
}

/// The bytes an entry's frame takes.
fn frame_len(key: &[u8], value: &[u8]) -> u64 {
    HEADER + 4 + key.len() as u64 + value.len() as u64
}

type Map = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// `state.log`, open. Reads take the map's read lock only, so a look-up (a tombstone, on a
/// request for an unknown code) never waits for a write's sync.
pub(crate) struct StateLog {
    path: PathBuf,
    /// Changed only under `file`'s lock, after the change is written.
    map: RwLock<Map>,
    file: Mutex<Appender>,
}

struct Appender {
    file: File,
    len: u64,
    /// Bytes of the frames that hold what is live.
    live: u64,
    /// A sync failed: what was written since may not be on disk, so writes stop.
    failed: bool,
}

impl StateLog {
    /// Opens (or creates) `state.log` in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let frame::OpenLog { path, file, len, start } = frame::open_log(dir, FILE_NAME, file_header::STATE)?;
        let mut map = Map::new();
        let mut live = 0;
        let valid = frame::read_between(&file, start, u64::MAX, MAX_RECORD, |offset, record| {
            let c = parse(record).ok_or_else(|| {
                Error::Corrupt(format!("{} holds a frame of no known kind at {offset}", path.display()))
            })?;
            change(&mut map, &mut live, c.table, c.key, c.value);
            Ok(())
        })?;
        let mut appender = Appender { file, len, live: 0, failed: false };
        if valid < len {
            let (end, kept) = frame::recover(&appender.file, &path, valid, len, MAX_RECORD, |r| parse(r).is_some())?;
            appender.len = end;
            for (_, record) in kept {
                if let Some(c) = parse(&record) {
                    change(&mut map, &mut live, c.table, c.key, c.value);
                }
            }
        }
        appender.live = live;
        Ok(Self { path, map: RwLock::new(map), file: Mutex::new(appender) })
    }

    /// The value of `key`, if any.
    pub(crate) fn get(&self, table: Table, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().get(&(table, key.to_vec())).cloned()
    }

    /// Whether `key` has a value.
    pub(crate) fn contains(&self, table: Table, key: &[u8]) -> bool {
        self.map.read().contains_key(&(table, key.to_vec()))
    }

    /// Every value of a table, in key order.
    pub(crate) fn values(&self, table: Table) -> Vec<Vec<u8>> {
        let map = self.map.read();
        map.range((table, Vec::new())..).take_while(|((t, _), _)| *t == table).map(|(_, v)| v.clone()).collect()
    }

    /// Makes the changes, in one write, synced before it returns if `durable`.
    pub(crate) fn write(&self, changes: &[Change<'_>], durable: bool) -> Result<(), Error> {
        self.write_if(changes, durable, |_| true).map(|_| ())
    }

    /// Puts `new` under `key` if its value is `expected` now (`None`: no value), durably;
    /// whether it did.
    pub(crate) fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, Error> {
        let change = [Change { table, key, value: new }];
        self.write_if(&change, true, |map| map.get(&(table, key.to_vec())).map(Vec::as_slice) == expected)
    }

    /// Makes the changes if `ready` says so, looking at the map under the writers' lock.
    fn write_if(&self, changes: &[Change<'_>], durable: bool, ready: impl FnOnce(&Map) -> bool) -> Result<bool, Error> {
        let mut appender = self.file.lock();
        if appender.failed {
            let why = format!("{} could not be synced; restart to read it again", self.path.display());
            return Err(Error::Storage(why.into()));
        }
        if !ready(&self.map.read()) {
            return Ok(false);
        }
        let mut frames = Vec::new();
        for change in changes {
            change.append_to(&mut frames)?;
        }
        if let Err(e) = appender.file.write_all_at(&frames, appender.len) {
            let _ = appender.file.set_len(appender.len); // best effort: open cuts a torn end anyway
            return Err(io(e));
        }
        appender.len += frames.len() as u64;
        {
            let mut map = self.map.write();
            for c in changes {
                self::change(&mut map, &mut appender.live, c.table, c.key, c.value);
            }
        }
        if durable {
            appender.sync()?;
        }
        if appender.len > appender.live * REWRITE_RATIO + REWRITE_SLACK {
            appender.rewrite(&self.path, &self.map.read())?;
        }
        Ok(true)
    }

    /// Syncs what was written without a sync.
    pub(crate) fn sync(&self) -> Result<(), Error> {
        self.file.lock().sync()
    }

    /// The file's length, and the bytes of it that are live.
    #[cfg(test)]
    fn usage(&self) -> (u64, u64) {
        let appender = self.file.lock();
        (appender.len, appender.live)
    }
}

/// Applies one change to the map, keeping count of the live bytes.
fn change(map: &mut Map, live: &mut u64, table: Table, key: &[u8], value: Option<&[u8]>) {
    let old = match value {
        Some(value) => {
            *live += frame_len(key, value);
            map.insert((table, key.to_vec()), value.to_vec())
        }
        None => map.remove(&(table, key.to_vec())),
    };
    if let Some(old) = old {
        *live -= frame_len(key, &old);
    }
}

impl Appender {
    fn sync(&mut self) -> Result<(), Error> {
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            return Err(io(e));
        }
        Ok(())
    }

    /// Rewrites the file with what is live.
    fn rewrite(&mut self, path: &Path, map: &Map) -> Result<(), Error> {
        let puts = map.iter().map(|((table, key), value)| Change::put(*table, key, value));
        (self.file, self.len) = write_whole(path, puts)?;
        Ok(())
    }
}

/// Writes a whole `state.log` at `path` holding `puts`: a copy, synced, renamed over
/// whatever is there ([`frame::Compacted`]). The new file, and its length.
pub(super) fn write_whole<'a>(path: &Path, puts: impl Iterator<Item = Change<'a>>) -> Result<(File, u64), Error> {
    let mut copy = frame::Compacted::start(path, file_header::STATE)?;
    let mut frames = Vec::new();
    for put in puts {
        put.append_to(&mut frames)?;
    }
    copy.extend(&frames)?;
    let file = copy.file().try_clone().map_err(io)?;
    let len = copy.put_in_place(path)?;
    Ok((file, len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn changes_come_back_after_a_reopen_and_a_swap_needs_the_value_it_expects() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateLog::open(dir.path()).unwrap();
        let put = Change::put;
        state.write(&[put(Table::Tokens, b"b", b"2"), put(Table::Tokens, b"a", b"1")], true).unwrap();
        state.write(&[put(Table::QueueHeads, b"a", b"head")], false).unwrap();
        state.write(&[Change { table: Table::Tokens, key: b"b", value: None }], true).unwrap();
        assert!(!state.compare_and_swap(Table::Settings, b"secret", Some(b"x"), Some(b"s")).unwrap());
        assert!(state.compare_and_swap(Table::Settings, b"secret", None, Some(b"s")).unwrap());
        assert!(!state.compare_and_swap(Table::Settings, b"secret", None, Some(b"t")).unwrap(), "taken");
        drop(state);

        let state = StateLog::open(dir.path()).unwrap();
        assert_eq!(state.values(Table::Tokens), [b"1".to_vec()], "a deleted key stays deleted");
        assert_eq!(state.get(Table::QueueHeads, b"a"), Some(b"head".to_vec()));
        assert!(state.contains(Table::Settings, b"secret"));
        assert!(!state.contains(Table::Tokens, b"b"));
        assert_eq!(state.get(Table::Settings, b"secret"), Some(b"s".to_vec()));
    }

    #[test]
    fn a_file_of_mostly_old_values_is_rewritten_with_the_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateLog::open(dir.path()).unwrap();
        let head = [7u8; 16];
        for i in 0..60_000u32 {
            let value = [head, [i as u8; 16]].concat();
            state.write(&[Change::put(Table::QueueHeads, b"clicks", &value)], false).unwrap();
        }
        let (len, live) = state.usage();
        assert!(len < live * REWRITE_RATIO + REWRITE_SLACK, "rewritten: {len} bytes for {live} live");
        let on_disk = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert_eq!(on_disk, len);
        drop(state);
        let state = StateLog::open(dir.path()).unwrap();
        let last = [head, [(59_999u32) as u8; 16]].concat();
        assert_eq!(state.get(Table::QueueHeads, b"clicks"), Some(last));
    }

    #[test]
    fn a_torn_write_is_cut_and_the_writes_before_it_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateLog::open(dir.path()).unwrap();
        state.write(&[Change::put(Table::Erased, b"code-hash", b"when")], true).unwrap();
        drop(state);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&path, bytes).unwrap();
        let state = StateLog::open(dir.path()).unwrap();
        assert!(state.contains(Table::Erased, b"code-hash"));
        state.write(&[Change::put(Table::Erased, b"another", b"when")], true).unwrap();
        drop(state);
        assert_eq!(StateLog::open(dir.path()).unwrap().values(Table::Erased).len(), 2);
    }

    #[test]
    fn a_key_too_long_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateLog::open(dir.path()).unwrap();
        let key = vec![b'k'; MAX_KEY + 1];
        let changes = [Change::put(Table::Tokens, b"fine", b"1"), Change::put(Table::Tokens, &key, b"2")];
        assert!(state.write(&changes, true).is_err());
        assert!(state.values(Table::Tokens).is_empty(), "all of the changes or none");
    }
}
