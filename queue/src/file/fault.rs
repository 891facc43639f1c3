//! A simulated disk for crash tests, in the manner of redb's crash backend: it keeps what was
//! written apart from what was made durable (file data and directory entries alike), fails a
//! chosen operation, and produces the image a power loss or a process crash would leave.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::Fs;
use crate::error::Result;

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What a read sees (the page cache).
    data: Vec<u8>,
    /// What survives a power loss.
    durable: Vec<u8>,
}

/// Which operations fail.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Failure {
    /// The operation (counting from 0) that fails; `None` = none.
    pub(crate) at: Option<u64>,
    /// Every operation after the failing one fails too (the disk is gone), rather than only
    /// that one (a transient ENOSPC or EIO).
    pub(crate) sticky: bool,
    /// Every operation from this one on fails as well (the disk goes away part-way through
    /// the queue's reaction to the first failure).
    pub(crate) then_from: Option<u64>,
    /// A failing sync still makes the data durable before it reports the error: POSIX leaves
    /// it unspecified, so the queue must not rely on a failed sync having persisted nothing.
    pub(crate) sync_persists: bool,
}

/// What a crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashKind {
    /// Power loss: only fsync'd data, and directory entries whose directory was fsync'd.
    SyncedOnly,
    /// Process crash, or a reopen in the same boot: everything written survives.
    PageCache,
}

#[derive(Debug)]
struct Disk {
    /// The queue directory.
    dir: PathBuf,
    /// Directories that exist, and whether their entry in their parent is durable.
    dirs: BTreeMap<PathBuf, bool>,
    inodes: Vec<Inode>,
    /// Names in the queue directory as the running process sees them.
    names: HashMap<String, usize>,
    /// Names as they would be after a power loss (updated by a sync of the directory).
    durable_names: HashMap<String, usize>,
    failure: Failure,
    ops_done: u64,
    /// Every directory sync, in order (for tests that count them).
    dir_syncs: Vec<PathBuf>,
}

/// A handle to a shared simulated disk.
#[derive(Debug, Clone)]
pub(crate) struct FaultFs {
    disk: Arc<Mutex<Disk>>,
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file (simulated)")
}

fn injected() -> io::Error {
    io::Error::other("injected disk failure")
}

impl FaultFs {
    /// A disk on which only `root` (and its ancestors) exist; the queue will live in `dir`.
    pub(crate) fn new(root: &Path, dir: &Path) -> Self {
        let mut dirs = BTreeMap::new();
        for a in root.ancestors() {
            dirs.insert(a.to_path_buf(), true);
        }
        FaultFs {
            disk: Arc::new(Mutex::new(Disk {
                dir: dir.to_path_buf(),
                dirs,
                inodes: Vec::new(),
                names: HashMap::new(),
                durable_names: HashMap::new(),
                failure: Failure::default(),
                ops_done: 0,
                dir_syncs: Vec::new(),
            })),
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_failure(&self, f: Failure) {
        self.disk().failure = f;
    }

    /// How many (mutating) operations were performed or attempted.
    pub(crate) fn ops_done(&self) -> u64 {
        self.disk().ops_done
    }

    pub(crate) fn dir_syncs(&self) -> Vec<PathBuf> {
        self.disk().dir_syncs.clone()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.disk().names.keys().cloned().collect();
        v.sort();
        v
    }

    /// The disk a crash now would leave, as a fresh disk that does not fail.
    pub(crate) fn crash_image(&self, kind: CrashKind) -> FaultFs {
        let d = self.disk();
        let mut dirs = BTreeMap::new();
        // BTreeMap order visits a parent before its children.
        for (p, durable) in &d.dirs {
            let parent_kept = p.parent().is_none_or(|parent| dirs.contains_key(parent));
            if parent_kept && (*durable || kind == CrashKind::PageCache) {
                dirs.insert(p.clone(), true);
            }
        }
        let names = if !dirs.contains_key(&d.dir) {
            HashMap::new()
        } else if kind == CrashKind::SyncedOnly {
            d.durable_names.clone()
        } else {
            d.names.clone()
        };
        let inodes = d
            .inodes
            .iter()
            .map(|i| {
                let data = match kind {
                    CrashKind::SyncedOnly => i.durable.clone(),
                    CrashKind::PageCache => i.data.clone(),
                };
                Inode {
                    durable: data.clone(),
                    data,
                }
            })
            .collect();
        FaultFs {
            disk: Arc::new(Mutex::new(Disk {
                dir: d.dir.clone(),
                dirs,
                inodes,
                durable_names: names.clone(),
                names,
                failure: Failure::default(),
                ops_done: 0,
                dir_syncs: Vec::new(),
            })),
        }
    }

    /// Counts a mutating operation; `true` if it is to fail.
    fn step(d: &mut Disk) -> bool {
        let n = d.ops_done;
        d.ops_done += 1;
        if d.failure.then_from.is_some_and(|m| n >= m) {
            return true;
        }
        match d.failure.at {
            Some(at) if n == at => true,
            Some(at) => d.failure.sticky && n > at,
            None => false,
        }
    }

    fn queue_dir_exists(d: &Disk) -> io::Result<()> {
        if d.dirs.contains_key(&d.dir) {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    fn inode(d: &Disk, name: &str) -> io::Result<usize> {
        Self::queue_dir_exists(d)?;
        d.names.get(name).copied().ok_or_else(not_found)
    }

    fn sync_file(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.disk();
        let fail = Self::step(&mut d);
        let i = Self::inode(&d, name)?;
        if !fail || d.failure.sync_persists {
            d.inodes[i].durable = d.inodes[i].data.clone();
        }
        if fail {
            return Err(injected());
        }
        Ok(())
    }
}

impl Fs for FaultFs {
    fn dir_exists(&mut self, path: &Path) -> io::Result<bool> {
        Ok(self.disk().dirs.contains_key(path))
    }

    fn create_dir(&mut self, path: &Path) -> io::Result<()> {
        let mut d = self.disk();
        if Self::step(&mut d) {
            return Err(injected());
        }
        if d.dirs.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        if !path.parent().is_some_and(|p| d.dirs.contains_key(p)) {
            return Err(not_found());
        }
        d.dirs.insert(path.to_path_buf(), false);
        Ok(())
    }

    fn sync_dir_at(&mut self, path: &Path) -> io::Result<()> {
        let mut d = self.disk();
        let fail = Self::step(&mut d);
        if fail && !d.failure.sync_persists {
            return Err(injected());
        }
        if !d.dirs.contains_key(path) {
            return Err(not_found());
        }
        d.dir_syncs.push(path.to_path_buf());
        for (p, durable) in d.dirs.iter_mut() {
            if p.parent() == Some(path) {
                *durable = true;
            }
        }
        if path == d.dir {
            d.durable_names = d.names.clone();
        }
        if fail {
            return Err(injected());
        }
        Ok(())
    }

    fn lock(&mut self) -> Result<()> {
        // A simulated disk is opened by one queue at a time, by construction of the tests.
        Ok(())
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        let d = self.disk();
        Self::queue_dir_exists(&d)?;
        Ok(d.names.keys().cloned().collect())
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        let d = self.disk();
        let i = Self::inode(&d, name)?;
        Ok(d.inodes[i].data.clone())
    }

    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let d = self.disk();
        let data = &d.inodes[Self::inode(&d, name)?].data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn len(&mut self, name: &str) -> io::Result<Option<u64>> {
        let d = self.disk();
        Self::queue_dir_exists(&d)?;
        Ok(d.names.get(name).map(|&i| d.inodes[i].data.len() as u64))
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.disk();
        if Self::step(&mut d) {
            return Err(injected());
        }
        Self::queue_dir_exists(&d)?;
        match d.names.get(name).copied() {
            Some(i) => d.inodes[i].data.clear(),
            None => {
                d.inodes.push(Inode::default());
                let i = d.inodes.len() - 1;
                d.names.insert(name.to_owned(), i);
            }
        }
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk();
        let fail = Self::step(&mut d);
        let i = Self::inode(&d, name)?;
        if fail {
            // A write that fails part-way (ENOSPC) leaves a prefix behind.
            d.inodes[i].data.extend_from_slice(&data[..data.len() / 2]);
            return Err(injected());
        }
        d.inodes[i].data.extend_from_slice(data);
        Ok(())
    }

    fn write_at(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk();
        if Self::step(&mut d) {
            return Err(injected());
        }
        let i = Self::inode(&d, name)?;
        let at = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let file = &mut d.inodes[i].data;
        if file.len() < at + data.len() {
            file.resize(at + data.len(), 0);
        }
        file[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut d = self.disk();
        if Self::step(&mut d) {
            return Err(injected());
        }
        let i = Self::inode(&d, name)?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        d.inodes[i].data.resize(len, 0);
        Ok(())
    }

    fn sync_data(&mut self, name: &str) -> io::Result<()> {
        self.sync_file(name)
    }

    fn sync_all(&mut self, name: &str) -> io::Result<()> {
        self.sync_file(name)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.disk();
        if Self::step(&mut d) {
            return Err(injected());
        }
        Self::queue_dir_exists(&d)?;
        d.names.remove(name).map(|_| ()).ok_or_else(not_found)
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let dir = self.disk().dir.clone();
        self.sync_dir_at(&dir)
    }
}
