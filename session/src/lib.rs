//! Session state for the paho-rs MQTT v5 clients.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod engine;
mod error;
pub mod store;

pub use engine::{
    AckToken, Action, Completion, Delivery, PacketIds, PublishCompletion, PublishOutcome, Session,
    SessionConfig, StoreOp, SubscribeCompletion, UnsubscribeCompletion,
};
pub use error::Error;
pub use store::file::{FileStore, FileStoreOptions, StoreIdentity, StoreStats};
pub use store::{EntryKind, Key, MemoryStore, QuarantineReport, Store, StoredEntry, MAX_VALUE_LEN};
