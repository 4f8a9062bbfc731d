//! One process at a time in a data directory: an exclusive `flock` on its `lock` file,
//! held as long as any handle to it lives.
//!
//! Two processes appending to the same logs would interleave their frames, and each would
//! index only its own. The lock goes with the last handle's descriptor, at once, so a
//! process can open a directory again right after it let go of it; the wait below is for
//! a thread that still holds a handle while it finishes (the notes' reading).

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use super::frame::io;
use crate::Error;

/// The lock file's name in the data directory.
pub(crate) const FILE_NAME: &str = "lock";
/// How long an open waits for a lock held elsewhere before it gives up.
const WAIT: Duration = Duration::from_secs(1);

/// The directory's lock, held until dropped.
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir`, waiting up to a second; fails if another holder keeps it.
    pub(crate) fn take(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(FILE_NAME);
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let deadline = Instant::now() + WAIT;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Self { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(Error::Storage(
                        format!("{} is in use by another process (its lock is held)", dir.display()).into(),
                    ))
                }
                Err(e) => return Err(io(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::take(dir.path()).unwrap();
        let refused = DirLock::take(dir.path()).err().unwrap();
        assert!(refused.to_string().contains("in use by another process"), "{refused}");
        drop(first);
        DirLock::take(dir.path()).unwrap();
    }
}
