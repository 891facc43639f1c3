//! A minimal, hand-written MQTT v5 wire format for the raw implementation and the sink:
//! only the packets they exchange, without the project's codec, so that the ceiling and the
//! sink do not move when the codec does.
//!
//! Each benchmark message carries its number in the first 8 bytes of its payload (little
//! endian) and a send timestamp in the next 8 (nanoseconds since the child started, used by
//! the latency scenario), so payloads are at least [`MIN_PAYLOAD`] bytes.

/// The topic every benchmark message is published to.
pub const TOPIC: &str = "bench/t";
/// The smallest payload: message number + timestamp.
pub const MIN_PAYLOAD: usize = 16;
/// The number of the fence: a QoS 1 message after the last one, so that its
/// acknowledgement (sink) or arrival (subscriber) means every earlier message arrived.
pub const FENCE: u64 = u64::MAX;

/// Packet types (the fixed header's first byte, with the flags MQTT requires).
pub const CONNACK: u8 = 0x20;
/// PUBACK.
pub const PUBACK: u8 = 0x40;
/// PUBREC.
pub const PUBREC: u8 = 0x50;
/// PUBREL (flags 0b0010).
pub const PUBREL: u8 = 0x62;
/// PUBCOMP.
pub const PUBCOMP: u8 = 0x70;
/// PINGRESP.
pub const PINGRESP: u8 = 0xD0;

/// Why a byte stream is not what the benchmark speaks.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A malformed or unexpected packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The server refused the connection.
    #[error("CONNACK reason code {0:#04x}")]
    Refused(u8),
}

/// Appends a variable byte integer.
pub fn put_varint(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Reads a variable byte integer: `Ok(None)` when more bytes are needed, else the value and
/// the number of bytes it took.
pub fn get_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    let mut n = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        n |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((n, i + 1)));
        }
    }
    Err(WireError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// One complete packet at the start of `buf`: its first byte, where its body starts and its
/// total length; `Ok(None)` when `buf` holds only part of it.
pub fn frame(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, WireError> {
    let Some(&h) = buf.first() else {
        return Ok(None);
    };
    let Some((len, n)) = get_varint(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + n + len;
    Ok((buf.len() >= total).then_some((h, 1 + n, total)))
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

fn packet(buf: &mut Vec<u8>, first: u8, body: &[u8]) {
    buf.push(first);
    put_varint(buf, body.len());
    buf.extend_from_slice(body);
}

/// CONNECT with Clean Start, the keepalive and (when given) a Receive Maximum.
pub fn connect(client_id: &str, keep_alive: u16, receive_maximum: Option<u16>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(5);
    body.push(0x02);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    match receive_maximum {
        Some(rm) => {
            body.push(3);
            body.push(0x21);
            body.extend_from_slice(&rm.to_be_bytes());
        }
        None => body.push(0),
    }
    put_str(&mut body, client_id.as_bytes());
    let mut out = Vec::new();
    packet(&mut out, 0x10, &body);
    out
}

/// CONNACK (success, no session) with a Receive Maximum.
pub fn connack(receive_maximum: u16) -> Vec<u8> {
    let [hi, lo] = receive_maximum.to_be_bytes();
    vec![CONNACK, 6, 0, 0, 3, 0x21, hi, lo]
}

/// SUBSCRIBE to one filter at `qos`.
pub fn subscribe(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.push(0);
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    let mut out = Vec::new();
    packet(&mut out, 0x82, &body);
    out
}

/// A four-byte acknowledgement (reason Success, no properties, which v5 lets us omit).
pub fn put_ack(buf: &mut Vec<u8>, first: u8, packet_id: u16) {
    let [hi, lo] = packet_id.to_be_bytes();
    buf.extend_from_slice(&[first, 2, hi, lo]);
}

/// The packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP body.
pub fn ack_id(body: &[u8]) -> Result<u16, WireError> {
    match body {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(WireError::Malformed("acknowledgement without packet id")),
    }
}

/// Skips one property; the length of its value, or an error for an unknown identifier.
fn property_len(id: u8, v: &[u8]) -> Result<usize, WireError> {
    let two = |v: &[u8]| -> Result<usize, WireError> {
        match v {
            [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo]) as usize + 2),
            _ => Err(WireError::Malformed("short property")),
        }
    };
    Ok(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        0x0B => match get_varint(v)? {
            Some((_, n)) => n,
            None => return Err(WireError::Malformed("short property")),
        },
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => two(v)?,
        0x26 => {
            let a = two(v)?;
            a + two(v.get(a..).unwrap_or_default())?
        }
        _ => return Err(WireError::Malformed("unknown property")),
    })
}

/// Walks a property block, calling `f(id, value)` for each property.
fn properties(block: &[u8], mut f: impl FnMut(u8, &[u8])) -> Result<(), WireError> {
    let mut i = 0;
    while i < block.len() {
        let id = block[i];
        let n = property_len(id, &block[i + 1..])?;
        let v = block
            .get(i + 1..i + 1 + n)
            .ok_or(WireError::Malformed("property overruns its block"))?;
        f(id, v);
        i += 1 + n;
    }
    Ok(())
}

/// The Receive Maximum of a CONNACK body (65,535 when absent), or why it is refused.
pub fn parse_connack(body: &[u8]) -> Result<u16, WireError> {
    if body.len() < 2 {
        return Err(WireError::Malformed("short CONNACK"));
    }
    if body[1] != 0 {
        return Err(WireError::Refused(body[1]));
    }
    let Some((len, n)) = get_varint(&body[2..])? else {
        return Err(WireError::Malformed("short CONNACK"));
    };
    let block = body
        .get(2 + n..2 + n + len)
        .ok_or(WireError::Malformed("short CONNACK"))?;
    let mut rm = u16::MAX;
    properties(block, |id, v| {
        if id == 0x21 && v.len() == 2 {
            rm = u16::from_be_bytes([v[0], v[1]]);
        }
    })?;
    Ok(rm)
}

/// A received PUBLISH: its QoS, packet id (0 for QoS 0) and payload.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishView<'a> {
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// The packet id (0 at QoS 0).
    pub packet_id: u16,
    /// The payload.
    pub payload: &'a [u8],
}

/// Reads a PUBLISH body (`first` is its first byte).
pub fn parse_publish(first: u8, body: &[u8]) -> Result<PublishView<'_>, WireError> {
    let qos = (first >> 1) & 3;
    if qos == 3 {
        return Err(WireError::Malformed("QoS 3"));
    }
    let short = WireError::Malformed("short PUBLISH");
    let tlen = match body {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]) as usize,
        _ => return Err(short),
    };
    let mut i = 2 + tlen;
    let mut packet_id = 0;
    if qos > 0 {
        let b = body
            .get(i..i + 2)
            .ok_or(WireError::Malformed("short PUBLISH"))?;
        packet_id = u16::from_be_bytes([b[0], b[1]]);
        i += 2;
    }
    let (plen, n) = get_varint(body.get(i..).ok_or(WireError::Malformed("short PUBLISH"))?)?
        .ok_or(WireError::Malformed("short PUBLISH"))?;
    i += n + plen;
    let payload = body.get(i..).ok_or(WireError::Malformed("short PUBLISH"))?;
    Ok(PublishView {
        qos,
        packet_id,
        payload,
    })
}

/// A PUBLISH with a payload of `size` bytes and where its packet id and payload sit, so that
/// the raw client can write a copy of it per message with only those bytes changed.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    /// The encoded packet.
    pub bytes: Vec<u8>,
    /// Offset of the packet id (QoS 1/2 only).
    pub packet_id_at: Option<usize>,
    /// Offset of the payload.
    pub payload_at: usize,
}

impl PublishTemplate {
    /// A PUBLISH to [`TOPIC`] at `qos` with `size` payload bytes.
    pub fn new(qos: u8, size: usize) -> PublishTemplate {
        let mut body = Vec::with_capacity(size + 16);
        put_str(&mut body, TOPIC.as_bytes());
        let mut packet_id_at = None;
        if qos > 0 {
            packet_id_at = Some(body.len());
            body.extend_from_slice(&[0, 1]);
        }
        body.push(0);
        let payload_in_body = body.len();
        body.resize(body.len() + size, 0);
        let mut bytes = Vec::with_capacity(body.len() + 5);
        bytes.push(0x30 | (qos << 1));
        put_varint(&mut bytes, body.len());
        let head = bytes.len();
        bytes.extend_from_slice(&body);
        PublishTemplate {
            bytes,
            packet_id_at: packet_id_at.map(|p| head + p),
            payload_at: head + payload_in_body,
        }
    }

    /// Appends one message: the template with this packet id, number and timestamp.
    pub fn put(&self, buf: &mut Vec<u8>, packet_id: u16, number: u64, stamp: u64) {
        let at = buf.len();
        buf.extend_from_slice(&self.bytes);
        if let Some(i) = self.packet_id_at {
            buf[at + i..at + i + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        let p = at + self.payload_at;
        buf[p..p + 8].copy_from_slice(&number.to_le_bytes());
        buf[p + 8..p + 16].copy_from_slice(&stamp.to_le_bytes());
    }
}

/// The message number and timestamp at the start of a payload.
pub fn payload_header(payload: &[u8]) -> Option<(u64, u64)> {
    let n = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let t = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((n, t))
}

/// A payload of `size` bytes (at least [`MIN_PAYLOAD`]) carrying `number` and `stamp`.
pub fn payload(size: usize, number: u64, stamp: u64) -> Vec<u8> {
    let mut p = vec![0u8; size.max(MIN_PAYLOAD)];
    p[..8].copy_from_slice(&number.to_le_bytes());
    p[8..16].copy_from_slice(&stamp.to_le_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use paho::packets::{decode, Packet, QoS};

    #[test]
    fn varints_round_trip_and_overlong_ones_are_refused() {
        for n in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455] {
            let mut b = Vec::new();
            put_varint(&mut b, n);
            assert_eq!(get_varint(&b).unwrap(), Some((n, b.len())));
            assert_eq!(get_varint(&b[..b.len() - 1]).unwrap(), None);
        }
        assert!(get_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn templates_are_publishes_the_project_codec_accepts() {
        for qos in 0..=2u8 {
            let t = PublishTemplate::new(qos, 1024);
            let mut buf = Vec::new();
            t.put(&mut buf, 77, 12_345, 999);
            let mut b = bytes::BytesMut::from(&buf[..]);
            let Some(Packet::Publish(p)) = decode(&mut b, 1 << 20).unwrap() else {
                panic!("not a PUBLISH");
            };
            assert_eq!(&*p.topic, TOPIC);
            assert_eq!(p.qos as u8, qos);
            if qos > 0 {
                assert_eq!(p.packet_id.map(|i| i.get()), Some(77));
            } else {
                assert_eq!(p.qos, QoS::AtMostOnce);
            }
            assert_eq!(payload_header(&p.payload), Some((12_345, 999)));
            let (h, body, total) = frame(&buf).unwrap().unwrap();
            assert_eq!(total, buf.len());
            let v = parse_publish(h, &buf[body..]).unwrap();
            assert_eq!((v.qos, v.payload.len()), (qos, 1024));
            if qos > 0 {
                assert_eq!(v.packet_id, 77);
            }
        }
    }

    #[test]
    fn connack_receive_maximum_is_read_past_other_properties() {
        let body = [0u8, 0, 10, 0x22, 0, 10, 0x24, 1, 0x21, 0, 100, 0x25, 1];
        assert_eq!(parse_connack(&body).unwrap(), 100);
        assert_eq!(parse_connack(&[0, 0, 0]).unwrap(), u16::MAX);
        assert!(matches!(
            parse_connack(&[0, 0x87, 0]),
            Err(WireError::Refused(0x87))
        ));
        assert!(parse_connack(&[0, 0, 2, 0x7f, 0]).is_err());
        let c = connack(100);
        let (_, b, _) = frame(&c).unwrap().unwrap();
        assert_eq!(parse_connack(&c[b..]).unwrap(), 100);
    }

    #[test]
    fn truncated_publishes_are_errors_not_panics() {
        let t = PublishTemplate::new(1, 16);
        let (h, b, total) = frame(&t.bytes).unwrap().unwrap();
        for cut in b..total {
            let _ = parse_publish(h, &t.bytes[b..cut]);
        }
        assert!(parse_publish(0x36, &[0, 1]).is_err());
    }
}
