//! The 15 control packets, the [`Packet`] enum over them, and the framing that turns a read
//! buffer into packets and packets into bytes.

mod ack;
mod connack;
mod connect;
mod publish;
mod reason_only;
mod sub_ack;
mod subscribe;
mod unsubscribe;

pub use ack::{PubAck, PubComp, PubRec, PubRel};
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use publish::Publish;
pub use reason_only::{Auth, Disconnect};
pub use sub_ack::{SubAck, UnsubAck};
pub use subscribe::{Subscribe, Subscription};
pub use unsubscribe::Unsubscribe;

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{self, Out, Reader};
use crate::{Error, PacketId};

/// The largest packet the protocol can express: 1 type byte, a 4-byte length, and
/// 268,435,455 bytes of body.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + wire::VARINT_MAX;

/// The most [`decode`] reserves ahead for a packet whose header has arrived but whose body
/// has not.
const RESERVE_AHEAD_MAX: usize = 64 * 1024;

/// The type of a control packet (the high nibble of its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The name the specification uses, for errors and logs.
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        }
    }

    /// Parses and checks the first byte of a packet: type and fixed-header flags.
    fn from_first_byte(b: u8) -> Result<PacketType, Error> {
        let t = match b >> 4 {
            0 => return Err(Error::ReservedPacketType),
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => return Ok(PacketType::Publish), // flags carry DUP/QoS/RETAIN
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            _ => PacketType::Auth,
        };
        let expected = match t {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        };
        if b & 0x0F != expected {
            return Err(Error::InvalidHeaderFlags {
                packet: t.name(),
                flags: b & 0x0F,
            });
        }
        Ok(t)
    }
}

/// Any MQTT v5 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(Box<ConnAck>),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// Sizes computed once by the encoder and used again while writing, so that nothing is
/// measured twice.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sizes {
    /// The remaining length (body size).
    pub(crate) remaining: usize,
    /// The size of the (first) property block, without its length prefix.
    pub(crate) props: usize,
    /// The size of a second property block (the will's), without its length prefix.
    pub(crate) will_props: usize,
}

/// What every packet body implements for the shared framing code.
pub(crate) trait Body {
    const TYPE: PacketType;
    /// The first byte: type and flags.
    fn first_byte(&self) -> u8 {
        let flags = match Self::TYPE {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        };
        ((Self::TYPE as u8) << 4) | flags
    }
    /// Validates the packet for encoding and computes its sizes.
    fn sizes(&self) -> Result<Sizes, Error>;
    /// Writes the body; `sizes` came from [`Body::sizes`].
    fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>);
}

pub(crate) fn frame_len(remaining: usize) -> Result<usize, Error> {
    if remaining > wire::VARINT_MAX as usize {
        return Err(Error::VarIntOutOfRange(remaining as u64));
    }
    Ok(1 + wire::varint_len(remaining) + remaining)
}

#[inline]
fn encode_body<B: Body>(p: &B, buf: &mut BytesMut, max: u32) -> Result<usize, Error> {
    let sizes = p.sizes()?;
    let total = frame_len(sizes.remaining)?;
    if total as u64 > u64::from(max) {
        return Err(Error::PacketTooLarge {
            size: total as u64,
            max,
        });
    }
    let start = buf.len();
    {
        let mut out = Out::new(buf, total);
        out.put_u8(p.first_byte());
        wire::put_varint(&mut out, sizes.remaining);
        p.put_body(&sizes, &mut out);
    }
    debug_assert_eq!(buf.len() - start, total, "{} size mismatch", B::TYPE.name());
    Ok(total)
}

/// PUBLISH, the packet of the hot path, in a function of its own: everything inlined into
/// it, and without the prologue of a function that handles every packet type.
#[inline(never)]
fn encode_publish(p: &Publish, buf: &mut BytesMut, max: u32) -> Result<usize, Error> {
    if p.properties.is_empty() {
        p.encode_without_properties(buf, max)
    } else {
        encode_body(p, buf, max)
    }
}

pub(crate) fn encoded_len_of<B: Body>(p: &B) -> Result<usize, Error> {
    frame_len(p.sizes()?.remaining)
}

/// A packet identifier that must be non-zero.
pub(crate) fn read_packet_id(r: &mut Reader, packet: &'static str) -> Result<PacketId, Error> {
    PacketId::new(r.u16("packet identifier")?).ok_or(Error::ZeroPacketId(packet))
}

macro_rules! dispatch {
    ($self:ident, $p:ident => $e:expr, ping => $ping:expr) => {
        match $self {
            Packet::Connect($p) => {
                let $p = &**$p;
                $e
            }
            Packet::ConnAck($p) => {
                let $p = &**$p;
                $e
            }
            Packet::Publish($p) => $e,
            Packet::PubAck($p) => $e,
            Packet::PubRec($p) => $e,
            Packet::PubRel($p) => $e,
            Packet::PubComp($p) => $e,
            Packet::Subscribe($p) => $e,
            Packet::SubAck($p) => $e,
            Packet::Unsubscribe($p) => $e,
            Packet::UnsubAck($p) => $e,
            Packet::Disconnect($p) => $e,
            Packet::Auth($p) => $e,
            Packet::PingReq | Packet::PingResp => $ping,
        }
    };
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Appends the encoded packet to `buf` and returns its size.
    ///
    /// Fails, leaving `buf` untouched, when a field breaks an encoding rule (a string over
    /// 65,535 bytes, a topic with a wildcard, a zero Receive Maximum, ...) or the packet is
    /// larger than the protocol allows.
    #[inline]
    pub fn encode(&self, buf: &mut BytesMut) -> Result<usize, Error> {
        self.encode_with_max(buf, MAX_PACKET_SIZE)
    }

    /// Like [`Packet::encode`], but fails with [`Error::PacketTooLarge`] when the packet is
    /// larger than `max_packet_size` (for example the server's Maximum Packet Size).
    #[inline]
    pub fn encode_with_max(
        &self,
        buf: &mut BytesMut,
        max_packet_size: u32,
    ) -> Result<usize, Error> {
        match self {
            Packet::Publish(p) => encode_publish(p, buf, max_packet_size),
            _ => self.encode_other(buf, max_packet_size),
        }
    }

    fn encode_other(&self, buf: &mut BytesMut, max_packet_size: u32) -> Result<usize, Error> {
        dispatch!(self, p => encode_body(p, buf, max_packet_size), ping => {
            buf.put_slice(&[(self.packet_type() as u8) << 4, 0]);
            Ok(2)
        })
    }

    /// The exact size [`Packet::encode`] would write, computed without allocating.
    pub fn encoded_len(&self) -> Result<usize, Error> {
        dispatch!(self, p => encoded_len_of(p), ping => Ok(2))
    }

    /// Decodes exactly one whole packet from `frame` (for example one read back from a
    /// store). A frame that ends early, or has bytes left over, is an error.
    pub fn decode_exact(frame: Bytes) -> Result<Packet, Error> {
        let (first, remaining, header) = match frame.first() {
            None => return Err(Error::UnexpectedEnd("fixed header")),
            Some(&first) => match wire::peek_varint(&frame[1..])? {
                None => return Err(Error::UnexpectedEnd("remaining length")),
                Some((rem, n)) => (first, rem as usize, 1 + n),
            },
        };
        let ptype = PacketType::from_first_byte(first)?;
        match (header + remaining).cmp(&frame.len()) {
            std::cmp::Ordering::Greater => Err(Error::UnexpectedEnd("packet")),
            std::cmp::Ordering::Less => Err(Error::TrailingBytes(frame.len() - header - remaining)),
            std::cmp::Ordering::Equal => decode_body(ptype, first, frame, header),
        }
    }
}

/// Decodes one packet from the front of a read buffer.
///
/// Returns `Ok(None)` while `buf` does not yet hold a whole packet (read more bytes and call
/// again), and `Ok(Some(packet))` after removing the packet's bytes from `buf`. Payloads and
/// strings of the packet are slices of `buf`'s memory, not copies.
///
/// `max_packet_size` is the largest packet the caller accepts (its own Maximum Packet Size;
/// [`MAX_PACKET_SIZE`] for no limit). It is checked as soon as the fixed header has arrived,
/// before anything is allocated for the body, so a hostile header claiming 256 MB costs
/// nothing. The packet type and fixed-header flags are checked at the same point.
///
/// On error the connection is unusable and should be closed with
/// [`Error::disconnect_reason`]. An error in the fixed header (type, flags, length, size)
/// leaves the buffer as it was; an error in the body comes after the whole packet was cut
/// off the buffer, so its bytes are gone and the buffer starts after it.
///
/// ```
/// use bytes::BytesMut;
/// use paho_packets::{decode, Packet, MAX_PACKET_SIZE};
///
/// let mut buf = BytesMut::from(&[0xD0u8][..]); // half a PINGRESP
/// assert_eq!(decode(&mut buf, MAX_PACKET_SIZE).unwrap(), None);
/// buf.extend_from_slice(&[0x00]);
/// assert_eq!(decode(&mut buf, MAX_PACKET_SIZE).unwrap(), Some(Packet::PingResp));
/// assert!(buf.is_empty());
/// ```
pub fn decode(buf: &mut BytesMut, max_packet_size: u32) -> Result<Option<Packet>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let ptype = PacketType::from_first_byte(first)?;
    let Some((remaining, n)) = wire::peek_varint(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + n + remaining as usize;
    if total as u64 > u64::from(max_packet_size) {
        return Err(Error::PacketTooLarge {
            size: total as u64,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        // Making room now saves the reader from growing the buffer piecemeal, but only up to
        // a bound: the size is just a claim in a header, and with no limit (MAX_PACKET_SIZE,
        // the client's default) reserving all of it would let five bytes from a peer cost
        // 256 MB. Past the bound the buffer grows as the bytes actually arrive.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD_MAX));
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    if ptype == PacketType::Publish {
        return Publish::decode_frame(first, frame, 1 + n, Some);
    }
    decode_body(ptype, first, frame, 1 + n).map(Some)
}

#[inline]
fn decode_body(ptype: PacketType, first: u8, frame: Bytes, header: usize) -> Result<Packet, Error> {
    let mut r = Reader::new(frame, header);
    let packet = match ptype {
        PacketType::Connect => Packet::Connect(Box::new(Connect::read(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(Box::new(ConnAck::read(&mut r)?)),
        PacketType::Publish => {
            return Publish::decode_frame(first, r.into_frame(), header, |p| p);
        }
        PacketType::PubAck => Packet::PubAck(PubAck::read(&mut r)?),
        PacketType::PubRec => Packet::PubRec(PubRec::read(&mut r)?),
        PacketType::PubRel => Packet::PubRel(PubRel::read(&mut r)?),
        PacketType::PubComp => Packet::PubComp(PubComp::read(&mut r)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::read(&mut r)?),
        PacketType::SubAck => Packet::SubAck(SubAck::read(&mut r)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(&mut r)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::read(&mut r)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::read(&mut r)?),
        PacketType::Auth => Packet::Auth(Auth::read(&mut r)?),
    };
    r.finish()?;
    Ok(packet)
}

macro_rules! impl_from_packet {
    ($($variant:ident),*) => {
        $(
            impl From<$variant> for Packet {
                fn from(p: $variant) -> Packet {
                    Packet::$variant(p)
                }
            }
        )*
    };
}

impl_from_packet!(
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth
);

// The two largest packets are boxed so that `Packet` stays the size of a PUBLISH, which is
// what moves through the hot path.
impl From<Connect> for Packet {
    fn from(p: Connect) -> Packet {
        Packet::Connect(Box::new(p))
    }
}

impl From<ConnAck> for Packet {
    fn from(p: ConnAck) -> Packet {
        Packet::ConnAck(Box::new(p))
    }
}
