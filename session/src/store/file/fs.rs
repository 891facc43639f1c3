//! The narrow file-system seam the store's writer thread goes through, so tests can swap in a
//! disk that fails after N operations and then "crashes".

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The lock file whose exclusive lock a store holds for its lifetime. It is never deleted:
/// deleting a lock file lets two openers lock two different files of the same name.
pub(crate) const LOCK: &str = "lock";
/// How often, and how far apart, a busy lock is tried again before the open fails (about
/// 100 ms in all): long enough for a forked child to exec, short enough to report a real
/// second process promptly.
const LOCK_ATTEMPTS: u32 = 50;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

/// The few operations the store needs, on files named inside one directory.
///
/// Names are plain file names (no separators). Nothing is durable until [`sync`](Fs::sync)
/// (file contents) and [`sync_dir`](Fs::sync_dir) (creations and renames).
pub(crate) trait Fs: Send + 'static {
    /// The whole file, or `None` if it does not exist.
    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Creates or truncates the file and writes `data`.
    fn write_new(&mut self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Appends to the file, creating it if needed.
    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Makes the file's contents durable.
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations and renames in the directory durable.
    fn sync_dir(&mut self) -> io::Result<()>;
    /// The names of the files in the directory.
    fn list(&mut self) -> io::Result<Vec<String>>;
    /// Where a file lives, for reports.
    fn path_of(&self, name: &str) -> PathBuf;
    /// Takes the directory's exclusive lock for as long as this `Fs` lives. `Ok(false)` when
    /// someone else (another process) holds it.
    fn try_lock(&mut self) -> io::Result<bool>;
    /// Releases any handle kept open for the file (files written once, such as quarantine
    /// files, would otherwise hold a descriptor each for the store's lifetime).
    fn close(&mut self, name: &str);
    /// Whether the file, as this `Fs` has it open, still has a name: a log unlinked (or its
    /// directory removed) under an open store still takes appends and fsyncs, into a file
    /// that no open will ever find.
    fn still_linked(&mut self, name: &str) -> io::Result<bool> {
        let _ = name;
        Ok(true)
    }
}

/// The real file system.
#[derive(Debug)]
pub(crate) struct RealFs {
    dir: PathBuf,
    /// Open handles, so appending and syncing the log does not reopen it every batch.
    handles: HashMap<String, File>,
    /// The locked lock file, held (and so locked) until this is dropped.
    lock: Option<File>,
}

impl RealFs {
    pub(crate) fn new(dir: PathBuf) -> io::Result<Self> {
        create_dir_durably(&dir, &mut |d| File::open(d)?.sync_all())?;
        Ok(RealFs {
            dir,
            handles: HashMap::new(),
            lock: None,
        })
    }

    fn handle(&mut self, name: &str) -> io::Result<&mut File> {
        if !self.handles.contains_key(name) {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))?;
            self.handles.insert(name.to_owned(), f);
        }
        self.handles
            .get_mut(name)
            .ok_or_else(|| io::Error::other("file handle vanished"))
    }
}

impl Fs for RealFs {
    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match File::open(self.dir.join(name)) {
            Ok(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v)?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_new(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.handles.remove(name);
        let mut f = File::create(self.dir.join(name))?;
        f.write_all(data)?;
        self.handles.insert(name.to_owned(), f);
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.handle(name)?.write_all(data)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.handle(name)?.sync_data()
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.handle(name)?.set_len(len)
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))?;
        // The handle opened under `from` now refers to `to`'s file; drop both names so the
        // next use reopens by name and can never write to a replaced file.
        self.handles.remove(from);
        self.handles.remove(to);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    #[cfg(unix)]
    fn still_linked(&mut self, name: &str) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.handle(name)?.metadata()?.nlink() > 0)
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(name) = e?.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn try_lock(&mut self) -> io::Result<bool> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK))?;
        let mut attempts = 0;
        loop {
            match f.try_lock() {
                Ok(()) => {
                    self.lock = Some(f);
                    return Ok(true);
                }
                // A lock can be held for a moment by a process that is not a store at all: a
                // child forked by any thread of the process that closed this store a moment
                // ago inherits its descriptors, and keeps them (and so the lock) until it execs.
                // So a busy lock is retried briefly (on the store's own thread, never an async
                // one) before it is taken for another process's open store.
                Err(TryLockError::WouldBlock) if attempts < LOCK_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(TryLockError::WouldBlock) => return Ok(false),
                Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {
                    // Some file systems (and platforms) have no file locks. Refusing to open
                    // at all there would make the store unusable, so it opens unlocked.
                    tracing::warn!(
                        dir = %self.dir.display(),
                        "session store: file locks unsupported here; another process is not kept out"
                    );
                    return Ok(true);
                }
                Err(TryLockError::Error(e)) => return Err(e),
            }
        }
    }

    fn close(&mut self, name: &str) {
        self.handles.remove(name);
    }
}

/// Creates `dir` and any missing ancestors, and fsyncs the parent of each directory it
/// created: a new directory's entry lives in its parent, and without that fsync a power loss
/// could take the whole store (with every fsync'd record in it) away with the entry.
pub(crate) fn create_dir_durably(
    dir: &Path,
    sync_dir: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p);
                match p.parent() {
                    Some(parent) => p = parent,
                    None => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::create_dir_all(dir)?;
    // Deepest first is not needed for correctness (each fsync covers one entry), but syncing
    // from the top down makes each entry durable only after its parent's is.
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            // A relative path's first component lives in the current directory.
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_a_store_directory_syncs_the_parent_of_every_directory_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b").join("store");
        let mut synced = Vec::new();
        create_dir_durably(&dir, &mut |d| {
            synced.push(d.to_owned());
            Ok(())
        })
        .unwrap();
        assert!(dir.is_dir());
        assert_eq!(
            synced,
            vec![
                tmp.path().to_owned(),
                tmp.path().join("a"),
                tmp.path().join("a").join("b"),
            ]
        );
        // An existing directory needs nothing.
        synced.clear();
        create_dir_durably(&dir, &mut |d| {
            synced.push(d.to_owned());
            Ok(())
        })
        .unwrap();
        assert!(synced.is_empty());
    }
}
