//! A simulated disk for crash tests: it distinguishes what was written from what was made
//! durable, fails every operation after a chosen count, and produces the image a crash would
//! leave.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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
    /// Which operations fail (see [`FaultFs::fail_at`]).
    schedule: Option<Schedule>,
    /// Operations attempted, failed or not: the number the schedule counts.
    attempts: u64,
    ops_done: u64,
}

/// Operation number `at` (counting from 0) fails; then `then_ok` operations succeed (`None`:
/// all of them) and every one after those fails again.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    at: u64,
    then_ok: Option<u64>,
}

impl Schedule {
    fn fails(&self, op: u64) -> bool {
        op == self.at || self.then_ok.is_some_and(|k| op > self.at.saturating_add(k))
    }
}

/// How much of what was written but not synced a crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashKind {
    /// Only what was synced.
    SyncedOnly,
    /// Everything written, synced or not, with every rename: what a reopen finds after the
    /// process died (or the store failed and was reopened) while the machine kept running, so
    /// the page cache survived. An operation answered with an error must be absent here too.
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

/// Holds the writer inside its next fsync until the test releases it, so that a test can look
/// at the store while a batch is written but not yet durable.
#[derive(Debug, Default)]
struct Gate {
    /// (armed, a writer is waiting in it)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, (bool, bool)>) -> MutexGuard<'a, (bool, bool)> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    fn pass(&self) {
        let mut g = self.lock();
        if !g.0 {
            return;
        }
        g.1 = true;
        self.changed.notify_all();
        while g.0 {
            g = self.wait(g);
        }
        g.1 = false;
    }
}

/// A handle to a shared simulated disk.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultFs {
    disk: Arc<Mutex<Disk>>,
    gate: Arc<Gate>,
}

impl FaultFs {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The operation after the next `n` fails; then `then_ok` operations succeed (`None`: every
    /// later one, a transient failure) and all after those fail. A failure that is transient or
    /// followed by one success lets the store's clean-up after it (cutting a failed batch back
    /// out of the log) succeed, or half succeed, instead of always failing too.
    pub(crate) fn fail_at(&self, n: u64, then_ok: Option<u64>) {
        let mut d = self.disk();
        let at = d.attempts.saturating_add(n);
        d.schedule = Some(Schedule { at, then_ok });
    }

    /// The next fsync waits until [`release`](FaultFs::release).
    pub(crate) fn hold_next_sync(&self) {
        self.gate.lock().0 = true;
    }

    /// Blocks until a writer waits in the fsync that [`hold_next_sync`](FaultFs::hold_next_sync)
    /// armed.
    pub(crate) fn wait_held(&self) {
        let mut g = self.gate.lock();
        while !g.1 {
            g = self.gate.wait(g);
        }
    }

    /// Lets the held fsync go on.
    pub(crate) fn release(&self) {
        self.gate.lock().0 = false;
        self.gate.changed.notify_all();
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
                schedule: None,
                attempts: 0,
                ops_done: 0,
            })),
            gate: Arc::default(),
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

    /// Cuts a file short, durably (for torn-append tests).
    pub(crate) fn cut(&self, name: &str, len: usize) {
        let mut d = self.disk();
        if let Some(&ino) = d.names.get(name) {
            d.inodes[ino].data.truncate(len);
            d.inodes[ino].durable = d.inodes[ino].data.clone();
        }
    }

    pub(crate) fn file_len(&self, name: &str) -> Option<usize> {
        let d = self.disk();
        d.names.get(name).map(|&i| d.inodes[i].data.len())
    }

    /// Counts an operation; `Err` (with the disk, for the effects a failure still has) when
    /// the schedule says this one fails.
    fn step(&self) -> Result<MutexGuard<'_, Disk>, MutexGuard<'_, Disk>> {
        let mut d = self.disk();
        let op = d.attempts;
        d.attempts += 1;
        if d.schedule.is_some_and(|s| s.fails(op)) {
            return Err(d);
        }
        d.ops_done += 1;
        Ok(d)
    }

    /// A failed operation that has no effect.
    fn step_or_fail(&self) -> io::Result<MutexGuard<'_, Disk>> {
        self.step().map_err(|_| injected())
    }
}

fn injected() -> io::Error {
    io::Error::other("injected disk failure")
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
        // A failed write (ENOSPC) may have written part of the data: half of it, here.
        let (mut d, data, res) = match self.step() {
            Ok(d) => (d, data, Ok(())),
            Err(d) => (d, &data[..data.len() / 2], Err(injected())),
        };
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
        res
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        // A failed append (ENOSPC part-way) leaves the first half of its data in the file.
        let (mut d, data, res) = match self.step() {
            Ok(d) => (d, data, Ok(())),
            Err(d) => (d, &data[..data.len() / 2], Err(injected())),
        };
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
        res
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.gate.pass();
        // A failed fsync (EIO) says nothing about what reached the disk; the worst case for
        // "an error means not done" is that all of it did, so that is what happens here.
        let (mut d, res) = match self.step() {
            Ok(d) => (d, Ok(())),
            Err(d) => (d, Err(injected())),
        };
        let i = *d.names.get(name).ok_or_else(not_found)?;
        d.inodes[i].durable = d.inodes[i].data.clone();
        res
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut d = self.step_or_fail()?;
        let i = *d.names.get(name).ok_or_else(not_found)?;
        d.inodes[i].data.truncate(len as usize);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut d = self.step_or_fail()?;
        let i = d.names.remove(from).ok_or_else(not_found)?;
        d.names.insert(to.to_owned(), i);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        // As for `sync`: the failed directory fsync made everything durable anyway.
        let (mut d, res) = match self.step() {
            Ok(d) => (d, Ok(())),
            Err(d) => (d, Err(injected())),
        };
        d.durable_names = d.names.clone();
        res
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
