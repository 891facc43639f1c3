//! The narrow file-system seam the store's writer thread goes through, so tests can swap in a
//! disk that fails after N operations and then "crashes".

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;

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
}

/// The real file system.
#[derive(Debug)]
pub(crate) struct RealFs {
    dir: PathBuf,
    /// Open handles, so appending and syncing the log does not reopen it every batch.
    handles: HashMap<String, File>,
}

impl RealFs {
    pub(crate) fn new(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(RealFs {
            dir,
            handles: HashMap::new(),
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
}
