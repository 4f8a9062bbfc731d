//! The header every file of ours starts with: one line naming what the file is and the
//! version of its layout, `shortlinks <kind> <version>`, padded with spaces to 32 bytes.
//!
//! Reading dispatches on it: a file of a newer version is refused ([`Error::NewerFormat`])
//! rather than misread, and a file of another kind is refused as damaged. Version 1 is the
//! layout before headers: its frames start at the file's first byte, which can never be
//! taken for a header (its first four bytes, read as a frame's length, would make a frame
//! of 1.9 GB, over every file's limit). Version 2 is the same frames after the header.
//!
//! A header is written once, when its file is made (or found empty, or holding part of a
//! header: a crash while it was being made), and synced with it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Error;

/// A header's length: where the frames of a file of version 2 start.
pub(crate) const LEN: u64 = 32;
const PREFIX: &[u8] = b"shortlinks ";

/// What a file is, and the newest version of its layout that this build writes and reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kind {
    pub(crate) name: &'static str,
    pub(crate) version: u32,
}

pub(crate) const LINKS: Kind = Kind { name: "links.log", version: 2 };
pub(crate) const NOTES: Kind = Kind { name: "notes.log", version: 2 };
pub(crate) const QUEUE_SEGMENT: Kind = Kind { name: "queue-segment", version: 2 };
pub(crate) const SIGHTINGS: Kind = Kind { name: "sightings", version: 2 };
/// Made with format 3, so never of version 1.
pub(crate) const STATE: Kind = Kind { name: "state.log", version: 2 };

/// The header of a new file of `kind`.
pub(crate) fn bytes(kind: Kind) -> [u8; LEN as usize] {
    let mut header = [b' '; LEN as usize];
    let line = format!("shortlinks {} {}", kind.name, kind.version);
    header[..line.len()].copy_from_slice(line.as_bytes());
    header[LEN as usize - 1] = b'\n';
    header
}

/// Where the frames of `file` (at `path`, of `kind`) start: after its header, or at 0 in a
/// file of version 1. A file that is empty, or holds only part of a header, gets its header
/// now. Refuses a newer version and another kind's file.
pub(crate) fn frames_start(file: &File, path: &Path, kind: Kind) -> Result<u64, Error> {
    match read(file, path, kind)? {
        Some(start) => Ok(start),
        None => {
            write(file, kind)?;
            Ok(LEN)
        }
    }
}

/// As [`frames_start`], without writing: `None` for a file that has no header yet (empty,
/// or part of one).
pub(crate) fn read(file: &File, path: &Path, kind: Kind) -> Result<Option<u64>, Error> {
    let len = file.metadata().map_err(Error::storage)?.len();
    let mut first = vec![0u8; len.min(LEN) as usize];
    file.read_exact_at(&mut first, 0).map_err(Error::storage)?;
    let shared = first.len().min(PREFIX.len());
    if first[..shared] != PREFIX[..shared] {
        return Ok(Some(0));
    }
    if len < LEN {
        return Ok(None);
    }
    let line = std::str::from_utf8(&first).ok().and_then(|l| l.strip_suffix('\n'));
    let mut words = line.unwrap_or_default().split_whitespace().skip(1);
    let (name, version) = (words.next(), words.next().and_then(|v| v.parse::<u32>().ok()));
    match (name, version) {
        (Some(name), Some(version)) if name == kind.name => match version {
            2.. if version <= kind.version => Ok(Some(LEN)),
            2.. => Err(Error::NewerFormat(format!(
                "{} is a {name} of version {version}, and this build reads versions up to {}: run the newer \
                 shortlinks, or restore a backup made by this one",
                path.display(),
                kind.version
            ))),
            _ => Err(Error::Corrupt(format!("{} names version {version}, which has no header", path.display()))),
        },
        _ => Err(Error::Corrupt(format!(
            "{} does not start with the header of a {} ({:?})",
            path.display(),
            kind.name,
            String::from_utf8_lossy(&first)
        ))),
    }
}

/// Writes `kind`'s header over whatever `file` holds (nothing, or part of a header), synced.
pub(crate) fn write(file: &File, kind: Kind) -> Result<(), Error> {
    file.set_len(0).map_err(Error::storage)?;
    file.write_all_at(&bytes(kind), 0).and_then(|()| file.sync_all()).map_err(Error::storage)
}

/// Turns a file of `kind` back into version 1, as a build before headers wrote it: for
/// tests of reading such files.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn strip(path: &Path, kind: Kind) {
    let headed = std::fs::read(path).unwrap();
    assert_eq!(headed[..LEN as usize], bytes(kind), "{} has its header", path.display());
    std::fs::write(path, &headed[LEN as usize..]).unwrap();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (dir, path, file)
    }

    #[test]
    fn a_header_is_one_line_of_32_bytes() {
        assert_eq!(&bytes(LINKS), b"shortlinks links.log 2         \n");
        assert_eq!(&bytes(QUEUE_SEGMENT)[..26], b"shortlinks queue-segment 2");
    }

    #[test]
    fn frames_start_after_the_header_or_at_0_without_one() {
        let (_dir, path, file) = file_with(&[&bytes(NOTES)[..], b"frames"].concat());
        assert_eq!(frames_start(&file, &path, NOTES).unwrap(), LEN);
        // Version 1: a frame's length first, never "shor".
        let (_dir, path, file) = file_with(&[5, 0, 0, 0, 1, 2, 3, 4, b'x']);
        assert_eq!(frames_start(&file, &path, NOTES).unwrap(), 0);
        assert_eq!(std::fs::read(&path).unwrap(), [5, 0, 0, 0, 1, 2, 3, 4, b'x'], "left as it was");
    }

    #[test]
    fn an_empty_file_or_part_of_a_header_gets_a_whole_header() {
        for start in [&b""[..], b"shortl", &bytes(LINKS)[..31]] {
            let (_dir, path, file) = file_with(start);
            assert_eq!(read(&file, &path, LINKS).unwrap(), None);
            assert_eq!(frames_start(&file, &path, LINKS).unwrap(), LEN);
            assert_eq!(std::fs::read(&path).unwrap(), bytes(LINKS));
        }
    }

    #[test]
    fn a_newer_version_or_another_kind_is_refused_untouched() {
        let newer = bytes(Kind { version: 3, ..LINKS });
        let (_dir, path, file) = file_with(&newer);
        let refused = frames_start(&file, &path, LINKS).unwrap_err();
        assert!(matches!(refused, Error::NewerFormat(_)), "{refused}");
        assert!(refused.to_string().contains("version 3"), "{refused}");
        assert_eq!(std::fs::read(&path).unwrap(), newer);
        let (_dir, path, file) = file_with(&bytes(NOTES));
        assert!(matches!(frames_start(&file, &path, LINKS), Err(Error::Corrupt(_))));
        let (_dir, path, file) = file_with(b"shortlinks links.log 1         \n");
        assert!(matches!(frames_start(&file, &path, LINKS), Err(Error::Corrupt(_))));
    }
}
