//! The data directory is private: it holds the installation secret (whoever reads it can
//! compute every code), the token hashes and the notes.
//!
//! The process's umask is set to 077 before anything is created, so every file and socket
//! in the directory (sled's, the logs, `admin.sock`, `first-token`) is made private as it
//! is made, with no window in which it is open. A directory that others can read, write or
//! enter is refused at start unless the operator says otherwise.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ServerError;

/// Where the first token goes when there is no terminal to show it on.
pub const FIRST_TOKEN_FILE: &str = "first-token";

/// Files and directories made from now on are private to this user.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates the directory (0700) if missing; refuses one that group or others can use,
/// unless `allow_open` (`--allow-open-permissions`).
pub fn prepare(dir: &Path, allow_open: bool) -> Result<(), ServerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ServerError::io(format!("creating the data directory {}", dir.display()), e))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| ServerError::io(format!("reading the data directory {}", dir.display()), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 && !allow_open {
        return Err(ServerError::Config(format!(
            "the data directory {} has mode {:o}: others may read the installation secret, the token hashes \
             and the notes. Run `chmod 700 {}`, or start with --allow-open-permissions",
            dir.display(),
            mode & 0o777,
            dir.display()
        )));
    }
    Ok(())
}

/// Writes the first token to a private file in the data directory, for a start with no
/// terminal: a service manager's log keeps stdout, and a token must not live there.
pub fn write_first_token(dir: &Path, token: &str) -> Result<PathBuf, ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(FIRST_TOKEN_FILE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ServerError::io(format!("creating {}", path.display()), e))?;
    writeln!(file, "{token}").map_err(|e| ServerError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}
