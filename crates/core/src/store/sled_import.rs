//! Directories of formats 1 and 2 kept tokens, tombstones, queue heads, the installation
//! secret, credentials and two times in sled's trees. The first open by a build of format
//! 3 copies them into `state.log` and deletes sled's files; this is the only use of sled.
//!
//! Crash safety: `state.log` is written to a copy, synced and renamed into place before
//! anything of sled's is deleted. A crash before the rename leaves sled's files, and the
//! next open imports them again; after it, the next open finds `state.log` and only
//! deletes what is left of sled's.

use std::path::Path;
use std::time::{Duration, Instant};

use super::frame::{io, sync_dir};
use super::state_log::{self, Change, Table};
use crate::Error;

/// sled's log, whose presence says the directory still has sled's files.
const SLED_LOG: &str = "db";
/// sled's other files: its configuration, and the directory of its large values (its
/// snapshots, `snap.*`, are found by name).
const SLED_FILES: &[&str] = &["conf", "blobs"];
/// The trees and where their entries go; sled's default tree holds the settings.
const TREES: &[(&str, Table)] =
    &[("tokens", Table::Tokens), ("erased", Table::Erased), ("queue_heads", Table::QueueHeads)];

/// Moves sled's trees in `dir`, if there are any, into a new `state.log`, then deletes
/// sled's files. `cache_bytes` bounds sled's page cache meanwhile.
///
/// The format is raised (see [`super::format`]) before anything is written: once sled is
/// open here, so that an older server still running on the directory, which holds
/// sled's lock, fails this open and leaves the directory of its own format.
pub(super) fn import(dir: &Path, cache_bytes: u64) -> Result<(), Error> {
    if !dir.join(SLED_LOG).exists() {
        return Ok(());
    }
    let state = dir.join(state_log::FILE_NAME);
    if !state.exists() {
        let db = open_sled(dir, cache_bytes)?;
        super::format::raise(dir)?;
        let mut entries: Vec<(Table, Vec<u8>, Vec<u8>)> = Vec::new();
        for &(name, table) in TREES {
            for entry in db.open_tree(name).map_err(Error::storage)?.iter() {
                let (key, value) = entry.map_err(Error::storage)?;
                entries.push((table, key.to_vec(), value.to_vec()));
            }
        }
        for entry in db.iter() {
            let (key, value) = entry.map_err(Error::storage)?;
            entries.push((Table::Settings, key.to_vec(), value.to_vec()));
        }
        drop(db);
        state_log::write_whole(&state, entries.iter().map(|(table, key, value)| Change::put(*table, key, value)))?;
        tracing::info!(entries = entries.len(), dir = %dir.display(), "moved sled's trees into state.log");
    }
    super::format::raise(dir)?;
    for name in std::iter::once(SLED_LOG).chain(SLED_FILES.iter().copied()) {
        remove(&dir.join(name))?;
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        if name.to_string_lossy().starts_with("snap.") {
            remove(&dir.join(name))?;
        }
    }
    sync_dir(dir)
}

fn remove(path: &Path) -> Result<(), Error> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
        _ => Ok(()),
    }
}

/// Opens sled, waiting a moment for its lock: its flusher thread lets go of it shortly
/// after its last handle is dropped.
fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, Error> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match sled::Config::new().path(dir).cache_capacity(cache_bytes).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened.map_err(Error::storage),
        }
    }
}
