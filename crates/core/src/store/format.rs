//! The data directory's format, named in a file of its own, `FORMAT`, so that a build
//! refuses a directory that a newer build wrote instead of misreading it.
//!
//! Format 1: sled's trees, `links.log`, `notes.log`, `queues/` and the sightings files,
//! each record one version byte and postcard (`codec`). Format 2: the same, each file of
//! ours starting with a header that names it and its layout's version
//! ([`super::file_header`]); files without one, left from format 1, are read as they are
//! until a compaction or a turn-over replaces them. Format 3: sled's trees are in
//! `state.log`, moved there from sled's files on the first open
//! ([`super::sled_import`]). A release that changes a layout writes
//! the next number, and keeps reading the ones before; the fixture directories
//! `crates/core/tests/fixtures/data-v<N>` hold a directory of each format, which every
//! later build must keep opening (`crates/core/tests/data_format.rs`).
//!
//! The format is checked before any file is touched. It is written when a directory is
//! made (or first opened by a build that knows it), and raised to the current format when
//! an earlier one is opened, once the directory is this process's (its lock taken, and
//! sled's lock too while sled's files are there, which an older server still running on
//! the directory holds) and before any file is written: a build of the earlier format then
//! refuses the directory rather than misread a header. Each time through a copy synced and
//! renamed into place, so a crash leaves the old file or the new one.

use std::path::Path;

use super::frame::{io, sync_dir};
use crate::Error;

/// The file's name in the data directory.
pub(crate) const FILE_NAME: &str = "FORMAT";
/// The format this build writes, and the newest it reads.
pub(crate) const CURRENT: u32 = 3;
/// The file's first line: what it is, for a person who finds it.
const TITLE: &str = "shortlinks data directory";

/// Checks the directory's format without writing: the format found, `None` for a
/// directory without the file (or without the directory). Refuses a newer format, and a
/// file it cannot read.
pub(crate) fn check(dir: &Path) -> Result<Option<u32>, Error> {
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let version = parse(&text).ok_or_else(|| {
                Error::Corrupt(format!("{} does not name a format (\"{TITLE}\", then \"format N\")", path.display()))
            })?;
            if version > CURRENT {
                return Err(Error::NewerFormat(format!(
                    "{} is of format {version}, and this build reads formats up to {CURRENT}: run the newer \
                     shortlinks, or restore a backup made by this one",
                    dir.display()
                )));
            }
            Ok(Some(version))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Records the current format in a directory of an earlier format or of none; nothing to
/// do in one of the current format. Call it only with the directory's lock held.
pub(crate) fn raise(dir: &Path) -> Result<(), Error> {
    if check(dir)? != Some(CURRENT) {
        record(dir, CURRENT)?;
    }
    Ok(())
}

/// Writes `FORMAT` naming `version`: a copy, synced, renamed into place, the directory synced.
fn record(dir: &Path, version: u32) -> Result<(), Error> {
    let copy = dir.join(format!("{FILE_NAME}.new"));
    std::fs::write(&copy, render(version)).map_err(io)?;
    std::fs::File::open(&copy).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&copy, dir.join(FILE_NAME)).map_err(io)?;
    sync_dir(dir)
}

fn render(version: u32) -> String {
    format!("{TITLE}\nformat {version}\n")
}

fn parse(text: &str) -> Option<u32> {
    let mut lines = text.lines();
    (lines.next()? == TITLE).then_some(())?;
    lines.next()?.strip_prefix("format ")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_the_current_format_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()).unwrap(), None);
        assert!(!dir.path().join(FILE_NAME).exists(), "a check writes nothing");
        raise(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "shortlinks data directory\nformat 3\n"
        );
        assert_eq!(check(dir.path()).unwrap(), Some(CURRENT));
        raise(dir.path()).unwrap();
        assert_eq!(check(dir.path()).unwrap(), Some(CURRENT));
    }

    #[test]
    fn an_earlier_format_is_raised_to_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), render(1)).unwrap();
        assert_eq!(check(dir.path()).unwrap(), Some(1), "the format found");
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(), render(1), "a check writes nothing");
        raise(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(), render(CURRENT));
        assert_eq!(check(dir.path()).unwrap(), Some(CURRENT));
    }

    #[test]
    fn a_newer_format_or_an_unreadable_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), render(CURRENT + 1)).unwrap();
        let refused = check(dir.path()).unwrap_err();
        assert!(matches!(refused, Error::NewerFormat(_)), "{refused}");
        assert!(refused.to_string().contains(&format!("format {}", CURRENT + 1)), "{refused}");
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(), render(CURRENT + 1));
        std::fs::write(dir.path().join(FILE_NAME), "format 1\n").unwrap();
        assert!(matches!(check(dir.path()), Err(Error::Corrupt(_))));
        assert!(matches!(raise(dir.path()), Err(Error::Corrupt(_))), "nor written over");
    }
}
