//! The data directory's format, named in a file of its own, `FORMAT`, so that a build
//! refuses a directory that a newer build wrote instead of misreading it.
//!
//! Format 1 is this release's layout: sled's trees, `links.log`, `notes.log`, `queues/` and
//! the sightings files, each record one version byte and postcard (`codec`). A release that
//! changes any of them writes the next number, and keeps reading the ones before; the
//! fixture directory `crates/core/tests/fixtures/data-v1` holds a directory of format 1,
//! which every later build must keep opening (`crates/core/tests/data_format.rs`).
//!
//! The file is written once, when a directory is made (or first opened by a build that
//! knows it: the layout is the same), through a copy synced and renamed into place, so a
//! crash leaves either no file or a whole one.

use std::path::Path;

use super::frame::{io, sync_dir};
use crate::Error;

/// The file's name in the data directory.
pub(crate) const FILE_NAME: &str = "FORMAT";
/// The format this build writes, and the newest it reads.
pub(crate) const CURRENT: u32 = 1;
/// The file's first line: what it is, for a person who finds it.
const TITLE: &str = "shortlinks data directory";

/// Checks the directory's format, or records the current one in a directory that has
/// none. Returns the format. Refuses a newer format, and a file it cannot read.
pub(crate) fn check_or_record(dir: &Path) -> Result<u32, Error> {
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
            Ok(version)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
            let copy = dir.join(format!("{FILE_NAME}.new"));
            std::fs::write(&copy, render(CURRENT)).map_err(io)?;
            std::fs::File::open(&copy).and_then(|f| f.sync_all()).map_err(io)?;
            std::fs::rename(&copy, &path).map_err(io)?;
            sync_dir(dir)?;
            Ok(CURRENT)
        }
        Err(e) => Err(io(e)),
    }
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
        let data = dir.path().join("data");
        assert_eq!(check_or_record(&data).unwrap(), CURRENT);
        assert_eq!(std::fs::read_to_string(data.join(FILE_NAME)).unwrap(), "shortlinks data directory\nformat 1\n");
        assert_eq!(check_or_record(&data).unwrap(), CURRENT);
    }

    #[test]
    fn a_newer_format_or_an_unreadable_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), render(CURRENT + 1)).unwrap();
        let refused = check_or_record(dir.path()).unwrap_err();
        assert!(matches!(refused, Error::NewerFormat(_)), "{refused}");
        assert!(refused.to_string().contains("format 2"), "{refused}");
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(), render(CURRENT + 1));
        std::fs::write(dir.path().join(FILE_NAME), "format 1\n").unwrap();
        assert!(matches!(check_or_record(dir.path()), Err(Error::Corrupt(_))));
    }
}
