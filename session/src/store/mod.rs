//! What a persistent session keeps, and where: the [`Store`] trait and its implementations.
//!
//! A store holds three kinds of entries, each keyed by packet identifier:
//!
//! | key | kind | value | lifetime |
//! |---|---|---|---|
//! | [`Key::Outbound`] | [`EntryKind::Publish`] | the encoded outgoing QoS 1/2 PUBLISH | stored before it is first sent; replaced by its PUBREL after PUBREC (QoS 2) or deleted after PUBACK (QoS 1) |
//! | [`Key::Outbound`] | [`EntryKind::PubRel`] | the encoded PUBREL | deleted after PUBCOMP |
//! | [`Key::Inbound`] | [`EntryKind::PubRec`] | the encoded PUBREC answering an incoming QoS 2 PUBLISH | stored before PUBREC is sent; deleted when PUBREL arrives |
//!
//! Entries are listed in *send order*: the order in which their keys were first put. Putting
//! a key that is already present replaces its value but keeps its position, so a PUBREL that
//! replaces its PUBLISH is resent where the PUBLISH was. Stores are codec-agnostic: values are
//! opaque bytes and the [`Session`](crate::Session) engine encodes and decodes them.

mod index;
mod memory;

pub mod file;

pub use memory::MemoryStore;

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use paho_packets::PacketId;

use crate::Error;

pub(crate) use index::Index;

/// Where an entry belongs: to an exchange this client started, or one the server started.
///
/// The two directions have separate packet identifier spaces (MQTT v5 §2.2.1), so the same
/// id can be in use in both at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// An outgoing QoS 1/2 PUBLISH or its PUBREL.
    Outbound(PacketId),
    /// An incoming QoS 2 PUBLISH for which PUBREC was (or is about to be) sent.
    Inbound(PacketId),
}

impl Key {
    /// The packet identifier.
    pub fn packet_id(self) -> PacketId {
        match self {
            Key::Outbound(id) | Key::Inbound(id) => id,
        }
    }
}

/// What a stored value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// An outgoing PUBLISH (QoS 1 or 2) awaiting PUBACK or PUBREC. Only under [`Key::Outbound`].
    Publish,
    /// An outgoing PUBREL awaiting PUBCOMP. Only under [`Key::Outbound`].
    PubRel,
    /// An incoming QoS 2 PUBLISH that was accepted and awaits PUBREL. Only under
    /// [`Key::Inbound`].
    PubRec,
}

impl EntryKind {
    /// Whether this kind of entry may be stored under `key`.
    pub fn fits(self, key: Key) -> bool {
        matches!(
            (self, key),
            (EntryKind::Publish | EntryKind::PubRel, Key::Outbound(_))
                | (EntryKind::PubRec, Key::Inbound(_))
        )
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            EntryKind::Publish => 1,
            EntryKind::PubRel => 2,
            EntryKind::PubRec => 3,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(EntryKind::Publish),
            2 => Some(EntryKind::PubRel),
            3 => Some(EntryKind::PubRec),
            _ => None,
        }
    }
}

/// The largest value a store accepts: the largest MQTT packet (a 268,435,455-byte remaining
/// length plus a 5-byte fixed header). Anything bigger is refused on write and treated as
/// corruption on read, so a corrupt length can never make a store allocate more.
pub const MAX_VALUE_LEN: usize = 268_435_455 + 5;

/// One entry as listed or read back from a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    key: Key,
    kind: EntryKind,
    seq: u64,
    value: Bytes,
}

impl StoredEntry {
    pub(crate) fn new(key: Key, kind: EntryKind, seq: u64, value: Bytes) -> Self {
        StoredEntry {
            key,
            kind,
            seq,
            value,
        }
    }

    /// The entry's key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// What the value is.
    pub fn kind(&self) -> EntryKind {
        self.kind
    }

    /// The entry's position in send order. Higher is later; numbers are unique within a store
    /// but not necessarily contiguous.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The stored bytes (an encoded packet when written by the [`Session`](crate::Session)).
    pub fn value(&self) -> &Bytes {
        &self.value
    }
}

/// An entry, or a stretch of a store file, that could not be used and was set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineReport {
    key: Option<Key>,
    reason: String,
    saved_to: Option<std::path::PathBuf>,
    len: usize,
}

impl QuarantineReport {
    pub(crate) fn new(
        key: Option<Key>,
        reason: String,
        saved_to: Option<std::path::PathBuf>,
        len: usize,
    ) -> Self {
        QuarantineReport {
            key,
            reason,
            saved_to,
            len,
        }
    }

    /// The key of the entry, when it is known (it is not for a corrupt stretch of a log file).
    pub fn key(&self) -> Option<Key> {
        self.key
    }

    /// Why it was quarantined.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The file the bytes were saved to, for stores that save them.
    pub fn saved_to(&self) -> Option<&std::path::Path> {
        self.saved_to.as_deref()
    }

    /// How many bytes were set aside.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes were set aside.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a persistent session keeps: outbound QoS 1/2 packets and inbound QoS 2 markers, by
/// packet id, in send order.
///
/// # Contract for implementations
///
/// * **Order of application.** Operations take effect in the order the *methods are called*,
///   not the order their futures are polled: the call enqueues (or applies) the operation and
///   the returned future only waits for its outcome. A driver may therefore issue several
///   operations back to back and await them together, and concurrent writers can share one
///   fsync (group commit).
/// * **Durability.** When a returned future resolves to `Ok`, the operation survives a crash
///   of the process (for a durable store).
/// * **Send order.** [`list`](Store::list) returns entries ordered by the time their key was
///   first put; replacing a present key keeps its position.
/// * **Futures are `'static` and `Send`**, so a driver can hold them while it keeps using the
///   session, and move them between tasks.
/// * **Cancel safety.** Dropping a returned future does not cancel the operation, which has
///   already been enqueued; only its outcome is lost. Every method is cancel safe in that sense.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Stores `value` under `key`. If the key is present its value and kind are replaced and
    /// its send position is kept; otherwise it goes after every present entry.
    ///
    /// Fails with [`Error::KindMismatch`] when `kind` does not [fit](EntryKind::fits) the key,
    /// and [`Error::ValueTooLarge`] beyond [`MAX_VALUE_LEN`].
    fn put(
        &self,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Reads one entry.
    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, Error>> + Send + 'static;

    /// Removes an entry. Removing an absent key succeeds.
    fn delete(&self, key: Key) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Lists every entry in send order.
    fn list(&self) -> impl Future<Output = Result<Vec<StoredEntry>, Error>> + Send + 'static;

    /// Removes every entry.
    fn reset(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Removes an entry that the caller found unusable, keeping its bytes aside (where the
    /// store can) and adding a [`QuarantineReport`] with `reason`. An absent key succeeds and
    /// reports nothing.
    fn quarantine(
        &self,
        key: Key,
        reason: String,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Everything quarantined since this store was opened: corrupt stretches found while
    /// opening, and entries passed to [`quarantine`](Store::quarantine).
    fn quarantined(&self) -> Vec<QuarantineReport>;

    /// Whether the operations this store is asked for *now* complete when they are called:
    /// the futures `put`, `delete`, `reset` and `quarantine` return are ready at their first
    /// poll ([`MemoryStore`]). A driver may then apply them in place
    /// ([`StoreOp::apply_now`](crate::StoreOp::apply_now)) instead of keeping their futures and
    /// holding back the packets that depend on them: no allocation, no queue.
    ///
    /// The default, `false`, is always correct. A store that answers `true` and then returns a
    /// pending future breaks this promise; [`StoreOp::apply_now`](crate::StoreOp::apply_now)
    /// reports that operation as [`Error::OutcomeUnknown`] (it was enqueued, so it may still
    /// take effect).
    fn is_immediate(&self) -> bool {
        false
    }
}

pub(crate) fn check_put(key: Key, kind: EntryKind, value: &Bytes) -> Result<(), Error> {
    if !kind.fits(key) {
        return Err(Error::KindMismatch { key, kind });
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge { len: value.len() });
    }
    Ok(())
}
