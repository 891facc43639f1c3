//! The `store_open` fuzz check: arbitrary files in a `FileStore` directory, then open.
//!
//! Shared, unchanged, by the cargo-fuzz target (`fuzz/fuzz_targets/store_open.rs`) and the
//! stable replay of its corpus (`session/tests/fuzz_store_open_corpus.rs`), which both include
//! this file (and `alloc_limit.rs`) with `#[path]`.
//!
//! The input decodes (with `arbitrary`) into the directory's files: `meta` (absent, right for
//! the identity opened, for another identity, or raw bytes), `log` (absent, or a sequence of
//! pieces: well-formed put / delete / reset records with any fields, raw bytes, and records
//! with one bit flipped or cut short), and `quarantine-NNNNNN.pending` / `.bin` files left by
//! an earlier open. Well-formed records are encoded here from the documented format
//! (`session/src/store/file/record.rs`) so that the fuzzer gets past the checksums.
//!
//! Checked:
//! - no panic, on any thread (the store's own thread dying shows as `StoreClosed`);
//! - no single allocation above the bytes written plus [`alloc_limit::SLACK`];
//! - an open that fails leaves the log as it was (an error never takes effect);
//! - an open that succeeds is readable: `list` and `get` agree, every kind fits its key, every
//!   quarantine report names a file that holds the bytes reported;
//! - damage is reported, not silent: with no report, a log built only of well-formed records
//!   loads exactly what a model of those records holds, and the log file is left unchanged; a
//!   bit flipped or a record cut short in the log is always reported;
//! - the store works after opening: a put survives a close and reopen, which loads the same
//!   entries and reports nothing new.

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroU16;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use paho_session::{EntryKind, Error, FileStore, Key, Store, StoreIdentity};

use crate::alloc_limit;

const SERVER: &str = "mqtt://fuzz:1883";
const CLIENT: &str = "fuzz";

/// Runs one input in the (empty, existing) directory `dir`; panics on a broken invariant.
pub fn check(data: &[u8], dir: &Path) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    if std::env::var_os("PAHO_FUZZ_DEBUG").is_some() {
        eprintln!("{input:#?}");
    }
    run(&input, dir);
}

#[derive(Debug, Arbitrary)]
enum Meta {
    Absent,
    Ours,
    Other { client: String },
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Dir {
    Out,
    In,
    Bad(u8),
}

#[derive(Debug, Clone, Arbitrary)]
enum Rec {
    Put {
        seq: u64,
        small_seq: Option<u8>,
        dir: Dir,
        id: u16,
        kind: u8,
        value: Vec<u8>,
    },
    Delete {
        dir: Dir,
        id: u16,
    },
    Reset,
}

#[derive(Debug, Arbitrary)]
enum Piece {
    Record(Rec),
    /// A well-formed record with bit `bit % (8 * len)` flipped.
    Flipped(Rec, u16),
    /// A well-formed record cut to `keep % len` bytes.
    Cut(Rec, u16),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    meta: Meta,
    log: Option<Vec<Piece>>,
    pending: Vec<(u8, Vec<u8>)>,
    saved: Vec<u8>,
}

// ----- the documented record format ----------------------------------------------------------

const MAGIC: u32 = 0x5053_4C52;
/// Mirrors `record::MAX_SEQ`: a larger sequence number is damage.
const MAX_SEQ: u64 = 1 << 62;

fn dir_byte(d: Dir) -> u8 {
    match d {
        Dir::Out => 0,
        Dir::In => 1,
        Dir::Bad(b) => b.max(2),
    }
}

fn body(r: &Rec) -> Vec<u8> {
    let mut b = Vec::new();
    match r {
        Rec::Put {
            seq,
            small_seq,
            dir,
            id,
            kind,
            value,
        } => {
            b.push(1);
            let seq = small_seq.map_or(*seq, u64::from);
            b.extend_from_slice(&seq.to_le_bytes());
            b.push(dir_byte(*dir));
            b.extend_from_slice(&id.to_le_bytes());
            b.push(*kind % 5);
            b.extend_from_slice(value);
        }
        Rec::Delete { dir, id } => {
            b.push(2);
            b.push(dir_byte(*dir));
            b.extend_from_slice(&id.to_le_bytes());
        }
        Rec::Reset => b.push(3),
    }
    b
}

fn encode(r: &Rec) -> Vec<u8> {
    let body = body(r);
    let len = (body.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&body);
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn key_of(dir: Dir, id: u16) -> Option<Key> {
    let id = NonZeroU16::new(id)?;
    match dir {
        Dir::Out => Some(Key::Outbound(id)),
        Dir::In => Some(Key::Inbound(id)),
        Dir::Bad(_) => None,
    }
}

fn kind_of(k: u8) -> Option<EntryKind> {
    match k % 5 {
        1 => Some(EntryKind::Publish),
        2 => Some(EntryKind::PubRel),
        3 => Some(EntryKind::PubRec),
        _ => None,
    }
}

/// What the store must load from a log of well-formed records, or `None` if a record is one
/// the format calls damage (bad key, kind or sequence number) or two puts share a sequence
/// number (which only damage can produce: then one of them must be reported).
fn model(recs: &[&Rec]) -> Option<BTreeMap<Key, (EntryKind, Vec<u8>)>> {
    let mut m: BTreeMap<Key, (EntryKind, Vec<u8>, u64)> = BTreeMap::new();
    for r in recs {
        match r {
            Rec::Put {
                seq,
                small_seq,
                dir,
                id,
                kind,
                value,
            } => {
                let seq = small_seq.map_or(*seq, u64::from);
                let key = key_of(*dir, *id)?;
                let kind = kind_of(*kind).filter(|k| k.fits(key))?;
                if seq > MAX_SEQ {
                    return None;
                }
                if m.iter().any(|(k, v)| *k != key && v.2 == seq) {
                    return None;
                }
                m.insert(key, (kind, value.clone(), seq));
            }
            Rec::Delete { dir, id } => {
                m.remove(&key_of(*dir, *id)?);
            }
            Rec::Reset => m.clear(),
        }
    }
    Some(
        m.into_iter()
            .map(|(k, (kind, v, _))| (k, (kind, v)))
            .collect(),
    )
}

// ----- running it ------------------------------------------------------------------------------

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// The store's futures complete on its own thread; park until they do.
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn identity() -> StoreIdentity {
    StoreIdentity::new(SERVER, CLIENT).expect("identity")
}

fn meta_bytes(server: &str, client: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"PAHOSES1");
    out.extend_from_slice(&1u32.to_le_bytes());
    for s in [server, client] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn run(input: &Input, dir: &Path) {
    let mut written = 0usize;
    let mut write = |name: &str, bytes: &[u8]| {
        written += bytes.len();
        std::fs::write(dir.join(name), bytes).expect("writing the input");
    };
    match &input.meta {
        Meta::Absent => {}
        Meta::Ours => write("meta", &meta_bytes(SERVER, CLIENT)),
        Meta::Other { client } => {
            let client = if client.is_empty() {
                "x"
            } else {
                client.as_str()
            };
            write("meta", &meta_bytes(SERVER, client));
        }
        Meta::Raw(b) => write("meta", b),
    }
    let mut log = Vec::new();
    // Whether the log holds damage the store must report, and whether it is made only of
    // well-formed records (so that the model says what it must load).
    let mut damaged = false;
    let mut clean = true;
    let mut recs: Vec<&Rec> = Vec::new();
    if let Some(pieces) = &input.log {
        for (i, p) in pieces.iter().enumerate() {
            // Raw bytes right after a cut record may complete it again.
            let raw_next = matches!(pieces.get(i + 1), Some(Piece::Raw(_)));
            match p {
                Piece::Record(r) => {
                    log.extend_from_slice(&encode(r));
                    recs.push(r);
                }
                Piece::Flipped(r, bit) => {
                    let mut b = encode(r);
                    let bit = usize::from(*bit) % (8 * b.len());
                    b[bit / 8] ^= 1 << (bit % 8);
                    log.extend_from_slice(&b);
                    damaged = true;
                    clean = false;
                }
                Piece::Cut(r, keep) => {
                    let b = encode(r);
                    let keep = usize::from(*keep) % b.len();
                    log.extend_from_slice(&b[..keep]);
                    damaged |= keep > 0 && !raw_next;
                    clean = false;
                }
                Piece::Raw(b) => {
                    log.extend_from_slice(b);
                    clean = false;
                }
            }
        }
        write("log", &log);
    }
    for (n, bytes) in &input.pending {
        write(&format!("quarantine-{n:06}.pending"), bytes);
    }
    if !input.saved.is_empty() {
        write("quarantine-000007.bin", &input.saved);
    }
    let limit = written + alloc_limit::SLACK;

    // ----- the first open ------------------------------------------------------------------
    let armed = alloc_limit::arm(limit);
    let opened = block_on(FileStore::open(dir, identity()));
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            drop(armed);
            assert!(
                !matches!(e, Error::StoreClosed),
                "the store's thread died while opening (a panic?)"
            );
            assert!(
                matches!(
                    e,
                    Error::CorruptMeta { .. } | Error::IdentityMismatch { .. } | Error::Io { .. }
                ),
                "unexpected open error: {e}"
            );
            if input.log.is_some() {
                let now = std::fs::read(dir.join("log")).expect("reading the log back");
                assert!(now == log, "a failed open ({e}) changed the log");
            }
            return;
        }
    };
    let entries = block_on(store.list()).expect("list after a successful open");
    for e in &entries {
        assert!(
            e.kind().fits(e.key()),
            "{:?} holds a {:?}",
            e.key(),
            e.kind()
        );
        let got = block_on(store.get(e.key())).expect("get");
        assert_eq!(got.as_ref(), Some(e), "get disagrees with list");
    }
    let reports = store.quarantined();
    drop(armed);
    for r in &reports {
        if let Some(path) = r.saved_to() {
            let held = std::fs::metadata(path)
                .unwrap_or_else(|e| panic!("quarantine file {} of a report: {e}", path.display()));
            assert_eq!(
                held.len(),
                r.len() as u64,
                "{r:?}: the file holds another size"
            );
        }
    }
    if damaged {
        assert!(!reports.is_empty(), "a damaged log opened without a report");
    }
    if reports.is_empty() && input.log.is_some() {
        let now = std::fs::read(dir.join("log")).expect("reading the log back");
        assert!(now == log, "the log changed although nothing was reported");
    }
    if reports.is_empty() && clean {
        if let Some(want) = model(&recs) {
            let got: BTreeMap<Key, (EntryKind, Vec<u8>)> = entries
                .iter()
                .map(|e| (e.key(), (e.kind(), e.value().to_vec())))
                .collect();
            assert!(got == want, "loaded {got:?}, the log holds {want:?}");
        }
    }

    // ----- it works, and a reopen agrees -------------------------------------------------
    let key = Key::Outbound(NonZeroU16::MAX);
    let armed = alloc_limit::arm(limit);
    block_on(store.put(key, EntryKind::Publish, Bytes::from_static(b"after open")))
        .expect("a put after opening");
    block_on(store.close());
    let again = block_on(FileStore::open(dir, identity())).expect("reopening");
    let after = block_on(again.list()).expect("list after reopening");
    let new_reports = again.quarantined();
    block_on(again.close());
    drop(armed);
    let mut want: Vec<_> = entries.iter().filter(|e| e.key() != key).collect();
    want.sort_by_key(|e| e.key());
    let mut got: Vec<_> = after.iter().filter(|e| e.key() != key).collect();
    got.sort_by_key(|e| e.key());
    assert!(
        got.iter()
            .map(|e| (e.key(), e.kind(), e.value()))
            .eq(want.iter().map(|e| (e.key(), e.kind(), e.value()))),
        "a reopen loaded other entries"
    );
    assert!(
        after
            .iter()
            .any(|e| e.key() == key && e.value().as_ref() == b"after open"),
        "a put after opening was lost by the reopen"
    );
    assert!(
        new_reports.is_empty(),
        "the reopen reported damage again: {new_reports:?}"
    );
}
