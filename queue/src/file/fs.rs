//! The narrow file-system seam the I/O thread goes through.
//!
//! Production uses [`RealFs`]; unit tests swap in a simulated disk (`fault::FaultFs`) that keeps
//! written and synced data apart, fails a chosen operation, and yields the images a power loss
//! or a process crash would leave. Without the seam nothing could tell a queue that fsyncs from
//! one that does not: on a real disk both pass every test that does not cut the power.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::guard::DirGuard;
use crate::error::Result;

/// The operations the queue needs. File names are plain names inside the queue directory;
/// directory operations take paths (they are only used to create the directory itself).
///
/// Nothing is durable until [`sync_data`](Fs::sync_data)/[`sync_all`](Fs::sync_all) (file
/// contents and size) and [`sync_dir`](Fs::sync_dir) (creations and removals of names).
pub(crate) trait Fs: Send + fmt::Debug + 'static {
    /// Whether a directory exists at `path`.
    fn dir_exists(&mut self, path: &Path) -> io::Result<bool>;
    /// Creates one directory level (the parent must exist).
    fn create_dir(&mut self, path: &Path) -> io::Result<()>;
    /// Makes creations and removals of entries in the directory `path` durable.
    fn sync_dir_at(&mut self, path: &Path) -> io::Result<()>;
    /// Claims the queue directory (which exists) for as long as this `Fs` lives.
    fn lock(&mut self) -> Result<()>;
    /// The names in the queue directory.
    fn list(&mut self) -> io::Result<Vec<String>>;
    /// The whole file.
    fn read(&mut self, name: &str) -> io::Result<Vec<u8>>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer (or 0) at the end of the file.
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The file's length, or `None` if it does not exist.
    fn len(&mut self, name: &str) -> io::Result<Option<u64>>;
    /// Creates the file empty (truncating it if it exists).
    fn create(&mut self, name: &str) -> io::Result<()>;
    /// Appends to an existing file. On error, a prefix of `data` may have been written.
    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Overwrites bytes at `offset` of an existing file (extending it if needed).
    fn write_at(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data and what is needed to read it back (its size).
    fn sync_data(&mut self, name: &str) -> io::Result<()>;
    /// `fsync`: data and all metadata.
    fn sync_all(&mut self, name: &str) -> io::Result<()>;
    /// Removes the file's name (durable after [`sync_dir`](Fs::sync_dir)).
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Makes creations and removals in the queue directory durable.
    fn sync_dir(&mut self) -> io::Result<()>;
    /// Whether the file, as this `Fs` has it open, still has a name: a segment unlinked (or
    /// the queue directory removed) under an open queue still takes appends and fsyncs, into
    /// a file that no open will ever find.
    fn still_linked(&mut self, name: &str) -> io::Result<bool> {
        let _ = name;
        Ok(true)
    }
}

/// The real file system, rooted at the queue directory.
#[derive(Debug)]
pub(crate) struct RealFs {
    dir: PathBuf,
    /// One read + append handle per file in use, so appends, syncs and head reads do not
    /// reopen the file every batch. Appends go to the end whatever the read position is.
    handles: HashMap<String, File>,
    /// This queue's claim on the directory, released when the `RealFs` is dropped.
    guard: Option<DirGuard>,
}

impl RealFs {
    pub(crate) fn new(dir: PathBuf) -> Self {
        RealFs {
            dir,
            handles: HashMap::new(),
            guard: None,
        }
    }

    fn handle(&mut self, name: &str) -> io::Result<&mut File> {
        if !self.handles.contains_key(name) {
            let f = OpenOptions::new()
                .read(true)
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
    fn dir_exists(&mut self, path: &Path) -> io::Result<bool> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(true),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", path.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_dir(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn sync_dir_at(&mut self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn lock(&mut self) -> Result<()> {
        self.guard = Some(DirGuard::acquire(&self.dir)?);
        Ok(())
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&self.dir)? {
            // Names that are not UTF-8 cannot be ours.
            if let Some(name) = ent?.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        File::open(self.dir.join(name))?.read_to_end(&mut v)?;
        Ok(v)
    }

    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.handle(name)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn len(&mut self, name: &str) -> io::Result<Option<u64>> {
        match std::fs::metadata(self.dir.join(name)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        self.handles.remove(name);
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(self.dir.join(name))?;
        // `append` and `truncate` cannot be combined in one open; empty it explicitly.
        f.set_len(0)?;
        self.handles.insert(name.to_owned(), f);
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.handle(name)?.write_all(data)
    }

    fn write_at(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        // The cached handle appends; positioned writes need a handle of their own.
        let mut f = OpenOptions::new().write(true).open(self.dir.join(name))?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(data)?;
        // Syncs go through the cached handle: an fsync covers the file, whichever handle wrote.
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.handle(name)?.set_len(len)
    }

    fn sync_data(&mut self, name: &str) -> io::Result<()> {
        self.handle(name)?.sync_data()
    }

    #[cfg(unix)]
    fn still_linked(&mut self, name: &str) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.handle(name)?.metadata()?.nlink() > 0)
    }

    fn sync_all(&mut self, name: &str) -> io::Result<()> {
        self.handle(name)?.sync_all()
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.handles.remove(name);
        std::fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// Creates `dir` and every missing ancestor, one level at a time, and fsyncs the parent of
/// each directory it creates: a directory's entry lives in its parent, and without that fsync
/// a power loss soon after first use could take the whole queue directory, with every
/// acknowledged enqueue in it, away. Returns how many levels were created.
pub(crate) fn create_dir_durably(fs: &mut dyn Fs, dir: &Path) -> io::Result<usize> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !fs.dir_exists(p)? {
        missing.push(p);
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            // A relative path's first component lives in the current directory, which exists.
            _ => break,
        }
    }
    // Top down, so each new entry is made durable only after its parent's is.
    for created in missing.iter().rev() {
        match fs.create_dir(created) {
            Ok(()) => {}
            // Someone else created it meanwhile; whether its entry is durable is unknown, so
            // the parent is synced all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs.sync_dir_at(parent)?;
    }
    Ok(missing.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the real file system: every missing level is created, an existing directory needs
    /// nothing, and a path through a regular file is an error, not a panic.
    #[test]
    fn creating_a_nested_directory_on_the_real_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b").join("queue");
        let mut fs = RealFs::new(dir.clone());
        assert_eq!(create_dir_durably(&mut fs, &dir).unwrap(), 3);
        assert!(dir.is_dir());
        assert_eq!(create_dir_durably(&mut fs, &dir).unwrap(), 0);

        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let below = file.join("queue");
        let mut fs = RealFs::new(below.clone());
        assert!(create_dir_durably(&mut fs, &below).is_err());
        assert!(create_dir_durably(&mut fs, &file).is_err());
    }
}
