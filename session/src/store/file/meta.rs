//! The identity file that ties a store directory to one server and client id.
//!
//! ```text
//! meta := "PAHOSES1"  version u32 LE = 1
//!         server_len u32 LE  server [server_len]
//!         client_len u32 LE  client [client_len]
//!         crc u32 LE          CRC-32 of everything before it
//! ```
//!
//! It is written once, at creation, as `meta.tmp` + fsync + rename + directory fsync, so it
//! is either whole or absent.

use super::StoreIdentity;

const MAGIC: &[u8; 8] = b"PAHOSES1";
const VERSION: u32 = 1;

pub(super) fn encode(id: &StoreIdentity) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for s in [id.server(), id.client_id()] {
        // Identity strings are bounded by StoreIdentity::new, so their length fits a u32.
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(super) fn decode(b: &[u8]) -> Result<StoreIdentity, &'static str> {
    if b.len() < 8 + 4 + 4 + 4 + 4 || &b[..8] != MAGIC {
        return Err("not a paho session store metadata file");
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "truncated")?);
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let version = u32::from_le_bytes(body[8..12].try_into().map_err(|_| "truncated")?);
    if version != VERSION {
        return Err("unsupported store format version");
    }
    let mut pos = 12;
    let mut take = || -> Result<String, &'static str> {
        let len_bytes = body.get(pos..pos + 4).ok_or("truncated")?;
        let len = u32::from_le_bytes(len_bytes.try_into().map_err(|_| "truncated")?) as usize;
        let s = body.get(pos + 4..pos + 4 + len).ok_or("truncated")?;
        pos += 4 + len;
        String::from_utf8(s.to_vec()).map_err(|_| "identity is not UTF-8")
    };
    let server = take()?;
    let client = take()?;
    StoreIdentity::new(server, client).map_err(|_| "invalid identity")
}
