//! Keeps two openers (threads or processes) from using the same queue directory at once.
//!
//! Two `FileQueue`s on one directory would interleave appends and delete each other's segments.
//! Two layers: a process-wide set of open (canonical) directories, which also catches a second
//! open through another path spelling, and an exclusive lock (`File::try_lock`) on the file
//! [`LOCK_FILE`] in the directory, held for the queue's lifetime, which catches another
//! process. The operating system releases the lock when the holder exits, even on `kill -9`, so
//! a crash never leaves the directory locked.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::wait::lock;

/// Name of the lock file inside the queue directory. It is never deleted: deleting a lock file
/// lets a later opener lock a new file while an older holder still holds the unlinked one.
pub(crate) const LOCK_FILE: &str = "lock";

/// How often, and how far apart, a busy lock is tried again before the open fails (about
/// 100 ms in all): long enough for a forked child to exec, short enough to report a real
/// second process promptly.
const LOCK_ATTEMPTS: u32 = 50;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

fn open_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static OPEN: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Registration of an open directory and the lock on it; both released on drop.
#[derive(Debug)]
pub(crate) struct DirGuard {
    dir: PathBuf,
    /// Holds the exclusive lock; closing the file releases it. `None` where the platform does
    /// not support file locks.
    _lock: Option<File>,
}

impl DirGuard {
    /// Registers `dir` (which must exist) and locks it, or fails with [`Error::AlreadyOpen`].
    pub(crate) fn acquire(dir: &Path) -> Result<DirGuard> {
        let canonical = dir
            .canonicalize()
            .map_err(Error::io("resolving the queue directory"))?;
        if !lock(open_dirs()).insert(canonical.clone()) {
            return Err(Error::AlreadyOpen { dir: canonical });
        }
        // From here on, dropping `registered` on an early return unregisters the directory.
        let registered = DirGuard {
            dir: canonical,
            _lock: None,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(registered.dir.join(LOCK_FILE))
            .map_err(Error::io("opening the queue's lock file"))?;
        let mut attempts = 0;
        let held = loop {
            match file.try_lock() {
                Ok(()) => break Some(file),
                // A busy lock is not always another queue: a child forked by any thread of this
                // process (a `Command::spawn` elsewhere) inherits the descriptor of a queue that
                // was just closed and holds its lock until it execs. So retry briefly before
                // blaming another process. This runs on the queue's I/O thread (`recover`),
                // never on an async one, so the short sleeps block nobody else.
                Err(TryLockError::WouldBlock) if attempts < LOCK_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(LOCK_RETRY);
                    continue;
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::AlreadyOpen {
                        dir: registered.dir.clone(),
                    })
                }
                Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                    tracing::warn!(
                        dir = %registered.dir.display(),
                        "paho-queue: file locks are not supported here; the directory is only \
                         protected against a second open in this process"
                    );
                    break None;
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io("locking the queue directory")(e));
                }
            }
        };
        let mut guard = registered;
        guard._lock = held;
        Ok(guard)
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        // Unlock before unregistering: the other order lets a new opener in this process pass
        // the registration and then fail on the still-held lock.
        drop(self._lock.take());
        lock(open_dirs()).remove(&self.dir);
    }
}
