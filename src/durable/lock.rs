//! The data dir's lock: one process per data dir.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

use super::*;

/// Opens (creating it if missing) and locks the data directory. A second process on the same
/// directory gets an [`Error::InvalidInput`] naming the directory and the holder's pid.
pub fn lock_dir(dir: &Path) -> Result<File> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::invalid(format!(
            "--data-dir {} is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::invalid(format!(
            "--data-dir {}: cannot create it: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::invalid(format!("--data-dir {}: {e}", dir.display())))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(Error::invalid(format!(
            "--data-dir {} is in use by another ringkv process (pid {})",
            dir.display(),
            holder.trim()
        )));
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| Error::invalid(format!("--data-dir {}: {e}", dir.display())))?;
    // Readable at all? A directory we cannot list would fail recovery later, less clearly.
    list(dir).map_err(|e| Error::invalid(format!("--data-dir {}: {e}", dir.display())))?;
    Ok(file)
}
