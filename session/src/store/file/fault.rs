//! A simulated disk for crash tests: it distinguishes what was written from what was made
//! durable, fails every operation after a chosen count, and produces the image a crash would
//! leave.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::Fs;

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What a read sees.
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct Disk {
    inodes: Vec<Inode>,
    /// Names as the running process sees them.
    names: HashMap<String, usize>,
    /// Names as they would be after a crash (updated by a directory sync).
    durable_names: HashMap<String, usize>,
    /// Operations left before every operation fails; `None` = never fail.
    ops_left: Option<u64>,
    ops_done: u64,
}

/// How much of what was written but not synced a crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashKind {
    /// Only what was synced.
    SyncedOnly,
    /// Everything written (the kernel flushed it all before the crash).
    Everything,
    /// Synced data plus half of each file's unsynced appended tail, with unsynced renames kept:
    /// a torn write.
    Torn,
    /// As `Torn`, but the file keeps its full new length and the unwritten half reads as
    /// zeros: the size reached the disk before the data did (possible on XFS, and on ext4
    /// without data=ordered). The half that did get written ends in a record whose header is
    /// whole and whose body is zeros, which the replay cannot tell from damage.
    ZeroFilled,
}

/// A handle to a shared simulated disk.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultFs {
    disk: Arc<Mutex<Disk>>,
}

impl FaultFs {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every operation after the next `n` fails.
    pub(crate) fn fail_after(&self, n: u64) {
        self.disk().ops_left = Some(n);
    }

    /// How many operations were performed.
    pub(crate) fn ops_done(&self) -> u64 {
        self.disk().ops_done
    }

    /// The disk a crash now would leave behind, as a fresh disk that does not fail.
    pub(crate) fn crash_image(&self, kind: CrashKind) -> FaultFs {
        let d = self.disk();
        let names = match kind {
            CrashKind::SyncedOnly => d.durable_names.clone(),
            CrashKind::Everything | CrashKind::Torn | CrashKind::ZeroFilled => d.names.clone(),
        };
        let inodes = d
            .inodes
            .iter()
            .map(|i| {
                let data = match kind {
                    CrashKind::SyncedOnly => i.durable.clone(),
                    CrashKind::Everything => i.data.clone(),
                    CrashKind::Torn if i.data.starts_with(&i.durable) => {
                        let extra = (i.data.len() - i.durable.len()) / 2;
                        i.data[..i.durable.len() + extra].to_vec()
                    }
                    CrashKind::ZeroFilled if i.data.starts_with(&i.durable) => {
                        let extra = (i.data.len() - i.durable.len()) / 2;
                        let mut v = i.data[..i.durable.len() + extra].to_vec();
                        v.resize(i.data.len(), 0);
                        v
                    }
                    CrashKind::Torn | CrashKind::ZeroFilled => i.durable.clone(),
                };
                Inode {
                    durable: data.clone(),
                    data,
                }
            })
            .collect();
        FaultFs {
            disk: Arc::new(Mutex::new(Disk {
                inodes,
                durable_names: names.clone(),
                names,
                ops_left: None,
                ops_done: 0,
            })),
        }
    }

    /// Flips one bit of a file (for corruption tests).
    pub(crate) fn flip_bit(&self, name: &str, byte: usize, bit: u8) {
        let mut d = self.disk();
        if let Some(&ino) = d.names.get(name) {
            if let Some(b) = d.inodes[ino].data.get_mut(byte) {
                *b ^= 1 << bit;
            }
            d.inodes[ino].durable = d.inodes[ino].data.clone();
        }
    }

    pub(crate) fn file_len(&self, name: &str) -> Option<usize> {
        let d = self.disk();
        d.names.get(name).map(|&i| d.inodes[i].data.len())
    }

    fn step(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let mut d = self.disk();
        match d.ops_left {
            Some(0) => return Err(io::Error::other("injected disk failure")),
            Some(ref mut n) => *n -= 1,
            None => {}
        }
        d.ops_done += 1;
        Ok(d)
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
}

impl Fs for FaultFs {
    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let d = self.disk();
        Ok(d.names.get(name).map(|&i| d.inodes[i].data.clone()))
    }

    fn write_new(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut d = self.step()?;
        match d.names.get(name).copied() {
            Some(i) => d.inodes[i].data = data.to_vec(),
            None => {
                d.inodes.push(Inode {
                    data: data.to_vec(),
                    durable: Vec::new(),
                });
                let i = d.inodes.len() - 1;
                d.names.insert(name.to_owned(), i);
            }
        }
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut d = self.step()?;
        let i = match d.names.get(name).copied() {
            Some(i) => i,
            None => {
                d.inodes.push(Inode::default());
                let i = d.inodes.len() - 1;
                d.names.insert(name.to_owned(), i);
                i
            }
        };
        d.inodes[i].data.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.step()?;
        let i = *d.names.get(name).ok_or_else(not_found)?;
        d.inodes[i].durable = d.inodes[i].data.clone();
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut d = self.step()?;
        let i = *d.names.get(name).ok_or_else(not_found)?;
        d.inodes[i].data.truncate(len as usize);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut d = self.step()?;
        let i = d.names.remove(from).ok_or_else(not_found)?;
        d.names.insert(to.to_owned(), i);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut d = self.step()?;
        d.durable_names = d.names.clone();
        Ok(())
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        Ok(self.disk().names.keys().cloned().collect())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from("/fault-fs").join(name)
    }

    fn try_lock(&mut self) -> io::Result<bool> {
        // One simulated disk is only ever opened by one store at a time (the registry key).
        Ok(true)
    }

    fn close(&mut self, _name: &str) {}
}
