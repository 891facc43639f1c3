//! Keeps one process from opening the same queue directory twice.
//!
//! Two `FileQueue`s on one directory would interleave appends and delete each other's segments.
//! A process-wide set of open (canonical) directories catches this within a process. Across
//! processes the directory is not locked: std's file locks need a newer Rust than this crate's
//! minimum, and `unsafe` (for `flock`) is forbidden in this workspace.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::wait::lock;

fn open_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static OPEN: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Registration of an open directory; removed on drop.
#[derive(Debug)]
pub(crate) struct DirGuard {
    dir: PathBuf,
}

impl DirGuard {
    /// Registers `dir` (which must exist) or fails with [`Error::AlreadyOpen`].
    pub(crate) fn acquire(dir: &Path) -> Result<DirGuard> {
        let canonical = dir
            .canonicalize()
            .map_err(Error::io("resolving the queue directory"))?;
        if !lock(open_dirs()).insert(canonical.clone()) {
            return Err(Error::AlreadyOpen { dir: canonical });
        }
        Ok(DirGuard { dir: canonical })
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        lock(open_dirs()).remove(&self.dir);
    }
}
