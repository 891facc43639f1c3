//! The wire primitives of MQTT v5 section 1.5: integers, variable byte integers, strings and
//! binary data, read from a frame and written to a `BytesMut`.

use bytes::{Bytes, BytesMut};

use crate::topic::{scan, NON_ASCII, NUL, WILDCARD};
use crate::{Error, MqttString};

/// The largest value a variable byte integer can hold.
pub(crate) const VARINT_MAX: u32 = 268_435_455;
/// The longest string or binary field.
pub(crate) const FIELD_MAX: usize = u16::MAX as usize;

/// Bytes needed to encode `v` as a variable byte integer (v must be <= VARINT_MAX).
#[inline]
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer; the caller has checked `v <= VARINT_MAX`.
#[inline]
pub(crate) fn put_varint(buf: &mut Out<'_>, v: usize) {
    // One and two bytes cover every remaining length up to 16 KiB and every property
    // length in practice; they are written without the loop.
    if v < 128 {
        buf.put_u8(v as u8);
    } else if v < 16_384 {
        buf.put_u16(u16::from_be_bytes([(v as u8) | 0x80, (v >> 7) as u8]));
    } else {
        put_varint_long(buf, v);
    }
}

#[cold]
fn put_varint_long(buf: &mut Out<'_>, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// [`put_frame`] without slack after the frame (a buffer filled up to its end): writes the
/// counted bytes only, rather than make the buffer grow for 8 bytes it does not keep.
#[cold]
#[inline(never)]
fn put_frame_tight(buf: &mut BytesMut, head: &[u8], a: &[u8], mid: &[u8], b: &[u8]) {
    let mut out = Out::new(buf, head.len() + a.len() + mid.len() + b.len());
    out.put_slice(head);
    out.put_slice(a);
    out.put_slice(mid);
    out.put_slice(b);
}

/// The bytes of `v` as a variable byte integer, packed little-endian into a `u32` (the first
/// byte in the lowest bits), and how many there are; the caller has checked
/// `v <= VARINT_MAX`.
#[inline(always)]
pub(crate) fn varint_bytes(v: usize) -> (u32, usize) {
    if v < 128 {
        (v as u32, 1)
    } else if v < 16_384 {
        ((v as u32 & 0x7f) | 0x80 | ((v as u32 >> 7) << 8), 2)
    } else {
        varint_bytes_long(v)
    }
}

#[cold]
fn varint_bytes_long(v: usize) -> (u32, usize) {
    {
        let mut packed = 0u32;
        let mut n = 0;
        let mut v = v as u32;
        loop {
            let mut byte = v % 128;
            v /= 128;
            if v > 0 {
                byte |= 0x80;
            }
            packed |= byte << (8 * n);
            n += 1;
            if v == 0 || n == 4 {
                return (packed, n);
            }
        }
    }
}

/// Appends one frame made of `head[..head_len]`, `a`, `mid[..mid_len]` and `b`, with one
/// capacity check and one length update: the encoder's path for a PUBLISH without
/// properties (fixed header and topic length; topic; packet identifier and the empty
/// property block; payload).
///
/// `head` and `mid` are stored as whole words (one store each, however many of their bytes
/// count); the next piece overwrites the bytes that do not count, and those past the end
/// stay outside the buffer's length. That needs 8 bytes of spare capacity past the frame;
/// without them the counted bytes are written one piece at a time.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn put_frame(
    buf: &mut BytesMut,
    head: [u8; 8],
    head_len: usize,
    a: &[u8],
    mid: [u8; 4],
    mid_len: usize,
    b: &[u8],
) -> usize {
    let (head_len, mid_len) = (head_len.min(8), mid_len.min(4));
    let total = head_len + a.len() + mid_len + b.len();
    buf.reserve(total);
    let spare = buf.spare_capacity_mut();
    if spare.len() < total + 8 {
        put_frame_tight(buf, &head[..head_len], a, &mid[..mid_len], b);
        return total;
    }
    let p = spare.as_mut_ptr().cast::<u8>();
    // SAFETY: `spare` holds at least `total + 8` bytes at `p`. The head store ends at 8, the
    // mid store at `head_len + a.len() + 4 <= total + 4`, the copies within `total`; `a` and
    // `b` are shared borrows and cannot overlap the spare capacity of the `BytesMut` borrowed
    // mutably here. Every byte of `[0, total)` is written: the head's `head_len <= 8` bytes
    // by its store, then `a`, the mid's `mid_len <= 4` bytes by its store, then `b`, each
    // piece starting where the previous one's counted bytes end. So `set_len` exposes only
    // initialised bytes, and within the capacity.
    unsafe {
        p.cast::<[u8; 8]>().write_unaligned(head);
        let mut pos = head_len;
        std::ptr::copy_nonoverlapping(a.as_ptr(), p.add(pos), a.len());
        pos += a.len();
        p.add(pos).cast::<[u8; 4]>().write_unaligned(mid);
        pos += mid_len;
        std::ptr::copy_nonoverlapping(b.as_ptr(), p.add(pos), b.len());
        let new_len = buf.len() + total;
        buf.set_len(new_len);
    }
    total
}

/// Reads a variable byte integer from the front of `bytes`.
///
/// Returns `Ok(None)` when the slice ends before the integer does, and `(value, length)`
/// otherwise. A fifth byte is an error, whatever follows, and so is an encoding longer than
/// the value needs (MQTT-1.5.5-1).
#[inline]
pub(crate) fn peek_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, Error> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if i == 4 {
            return Err(Error::VarIntTooLong);
        }
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // A last byte of 0 after a continuation byte (0x80 0x00 for 0, 0xFF 0x00 for 127)
            // adds nothing: the value had a shorter encoding, and MQTT-1.5.5-1 requires the
            // shortest. Accepting it would let two byte strings mean the same packet.
            if b == 0 && i > 0 {
                return Err(Error::VarIntNotMinimal);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(Error::VarIntTooLong)
    } else {
        Ok(None)
    }
}

/// Checks the bytes of a decoded string: no U+0000, well-formed UTF-8. Returns their
/// [`scan`] flags.
#[inline(always)]
pub(crate) fn check_scanned(raw: &[u8]) -> Result<u8, Error> {
    let flags = scan(raw);
    if flags & NUL != 0 {
        return Err(Error::NullCharacter);
    }
    // Only strings with non-ASCII bytes need the full UTF-8 check.
    if flags & NON_ASCII != 0 && std::str::from_utf8(raw).is_err() {
        return Err(Error::InvalidUtf8);
    }
    Ok(flags)
}

/// Checks a string for the encoder: length and U+0000 (from the flags the string keeps).
#[inline]
pub(crate) fn check_str(s: &MqttString) -> Result<(), Error> {
    if s.len() > FIELD_MAX {
        return Err(Error::FieldTooLong(s.len()));
    }
    if s.has_nul() {
        return Err(Error::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name for the encoder: length, U+0000 and wildcards. An empty name is
/// accepted here; the caller knows whether a topic alias makes it valid.
#[inline]
pub(crate) fn check_topic(s: &MqttString) -> Result<(), Error> {
    check_str(s)?;
    if s.has_wildcard() {
        return Err(Error::InvalidTopicName(s.to_string()));
    }
    Ok(())
}

/// Checks a binary field for the encoder.
#[inline]
pub(crate) fn check_bin(b: &[u8]) -> Result<(), Error> {
    if b.len() > FIELD_MAX {
        return Err(Error::FieldTooLong(b.len()));
    }
    Ok(())
}

/// Writes a length-prefixed string or binary field; the caller has checked its length.
#[inline]
pub(crate) fn put_prefixed(buf: &mut Out<'_>, b: &[u8]) {
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

/// The encoder's output: appends to a `BytesMut` through a pointer into its spare capacity.
///
/// The encoder computes a packet's exact size first and reserves it, so every write fits;
/// `BytesMut`'s own `put_*` would still check the capacity, write, and check it again while
/// advancing the length, for every field (about a third of the instructions of a small
/// PUBLISH). This keeps the write position in a register and sets the buffer's length once,
/// when it is dropped. A write that does not fit (only possible if a size computation were
/// wrong) grows the buffer as `BytesMut` would, so a bug there costs speed, never memory
/// safety or a panic.
pub(crate) struct Out<'a> {
    buf: &'a mut BytesMut,
    /// The start of the buffer's spare capacity.
    spare: *mut u8,
    /// Bytes written at `spare` (all initialised).
    len: usize,
    /// Bytes available at `spare`.
    cap: usize,
}

#[allow(unsafe_code)]
impl<'a> Out<'a> {
    /// An output appending to `buf`, with room reserved for `additional` bytes.
    #[inline]
    pub(crate) fn new(buf: &'a mut BytesMut, additional: usize) -> Self {
        buf.reserve(additional);
        let spare = buf.spare_capacity_mut();
        let (ptr, cap) = (spare.as_mut_ptr().cast::<u8>(), spare.len());
        Out {
            buf,
            spare: ptr,
            len: 0,
            cap,
        }
    }

    /// Bytes written so far.
    #[cfg(test)]
    pub(crate) fn written(&self) -> usize {
        self.len
    }

    /// Makes room for `n` more bytes (see [`grow`]).
    #[inline(always)]
    fn ensure(&mut self, n: usize) {
        if self.cap - self.len < n {
            (self.spare, self.cap) = grow(self.buf, self.len, n);
            self.len = 0;
        }
    }

    #[inline]
    pub(crate) fn put_slice(&mut self, src: &[u8]) {
        let n = src.len();
        self.ensure(n);
        // SAFETY: `len + n <= cap`, so the destination lies in the spare capacity, which
        // `src` (a shared borrow, while `self.buf` is borrowed mutably) cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.spare.add(self.len), n) };
        self.len += n;
    }

    #[inline]
    fn put_array<const N: usize>(&mut self, src: [u8; N]) {
        self.ensure(N);
        // SAFETY: `len + N <= cap`: the N bytes lie in the spare capacity.
        unsafe {
            self.spare
                .add(self.len)
                .cast::<[u8; N]>()
                .write_unaligned(src)
        };
        self.len += N;
    }

    #[inline]
    pub(crate) fn put_u8(&mut self, v: u8) {
        self.put_array([v]);
    }

    #[inline]
    pub(crate) fn put_u16(&mut self, v: u16) {
        self.put_array(v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn put_u32(&mut self, v: u32) {
        self.put_array(v.to_be_bytes());
    }
}

/// The slow path of [`Out`]: sets the buffer's length to include the `written` bytes at its
/// spare capacity, lets it grow by at least `n`, and returns its new spare capacity. It takes
/// the fields rather than the `Out`, so that the `Out` never has its address taken and its
/// fields stay in registers on the fast path.
#[cold]
#[inline(never)]
#[allow(unsafe_code)]
fn grow(buf: &mut BytesMut, written: usize, n: usize) -> (*mut u8, usize) {
    let new_len = buf.len() + written;
    // SAFETY: as in `Out`'s `drop`: the `written` bytes were initialised by `Out`'s writes,
    // within the spare capacity it was given.
    unsafe { buf.set_len(new_len) };
    buf.reserve(n);
    let spare = buf.spare_capacity_mut();
    (spare.as_mut_ptr().cast::<u8>(), spare.len())
}

impl Drop for Out<'_> {
    /// Moves what was written into the buffer's length.
    #[inline]
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let new_len = self.buf.len() + self.len;
        // SAFETY: `self.len <= self.cap` bytes at `self.spare`, the start of the buffer's
        // spare capacity, were initialised by the writes (each checks that it fits in
        // `self.cap` first), and nothing else touched the buffer since `spare` was taken.
        unsafe { self.buf.set_len(new_len) };
    }
}

impl std::fmt::Debug for Out<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("written", &self.len)
            .field("room", &(self.cap - self.len))
            .finish()
    }
}

/// A cursor over one frame's body. It owns the frame, so that the last field (a PUBLISH
/// payload) can take the frame's bytes over without touching the reference count; other
/// fields are sliced out of it, never copied.
pub(crate) struct Reader {
    frame: Bytes,
    pos: usize,
    end: usize,
}

impl Reader {
    /// A reader over `frame[pos..]`.
    pub(crate) fn new(frame: Bytes, pos: usize) -> Self {
        let end = frame.len();
        Reader { frame, pos, end }
    }

    /// The frame the reader was made over, whole.
    pub(crate) fn into_frame(self) -> Bytes {
        self.frame
    }

    /// Bytes left before the end of the current limit.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// Fails unless everything has been read.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(Error::TrailingBytes(n)),
        }
    }

    /// Runs `f` with the reader limited to the next `len` bytes, which `f` must consume
    /// entirely.
    pub(crate) fn sub<T>(
        &mut self,
        len: usize,
        what: &'static str,
        f: impl FnOnce(&mut Reader) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if len > self.remaining() {
            return Err(Error::UnexpectedEnd(what));
        }
        let outer_end = self.end;
        self.end = self.pos + len;
        let value = f(self);
        let finished = self.finish();
        self.end = outer_end;
        let value = value?;
        finished?;
        Ok(value)
    }

    #[inline]
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], Error> {
        if n > self.remaining() {
            return Err(Error::UnexpectedEnd(what));
        }
        let s = &self.frame[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    #[inline]
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    #[inline]
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, Error> {
        let window = &self.frame[self.pos..self.end];
        match peek_varint(window)? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(Error::UnexpectedEnd(what)),
        }
    }

    /// A length-prefixed binary field, as a slice of the frame.
    #[inline]
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, Error> {
        let len = usize::from(self.u16(what)?);
        if len > self.remaining() {
            return Err(Error::UnexpectedEnd(what));
        }
        let b = self.frame.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    /// A length-prefixed UTF-8 string, validated, as a slice of the frame.
    #[inline]
    pub(crate) fn string(&mut self, what: &'static str) -> Result<MqttString, Error> {
        self.scanned_string(what).map(|(s, _)| s)
    }

    /// A length-prefixed topic name: UTF-8 without wildcards (it may be empty).
    #[inline]
    pub(crate) fn topic_name(&mut self, what: &'static str) -> Result<MqttString, Error> {
        let (s, flags) = self.scanned_string(what)?;
        if flags & WILDCARD != 0 {
            return Err(Error::InvalidTopicName(s.to_string()));
        }
        Ok(s)
    }

    /// A validated string and the [`scan`] flags of its bytes.
    #[inline]
    fn scanned_string(&mut self, what: &'static str) -> Result<(MqttString, u8), Error> {
        let len = usize::from(self.u16(what)?);
        let raw = self.take(len, what)?;
        let flags = check_scanned(raw)?;
        if len == 0 {
            return Ok((MqttString::new(), flags));
        }
        let start = self.pos - len;
        let s = MqttString::from_checked(self.frame.slice(start..self.pos), flags);
        Ok((s, flags))
    }

    /// Everything left up to the end of the frame, taking the frame over (so the reader
    /// must not be used for anything but [`Reader::finish`] afterwards).
    pub(crate) fn rest(&mut self) -> Bytes {
        let mut b = std::mem::take(&mut self.frame);
        b.truncate(self.end);
        bytes::Buf::advance(&mut b, self.pos);
        self.pos = 0;
        self.end = 0;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        for (v, enc) in [
            (0usize, &[0x00][..]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (129, &[0x81, 0x01]),
            (255, &[0xff, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut Out::new(&mut buf, 4), v);
            assert_eq!(&buf[..], enc, "encoding {v}");
            // Without room reserved, the write grows the buffer instead.
            let mut buf = BytesMut::from(&b"x"[..]);
            put_varint(&mut Out::new(&mut buf, 0), v);
            assert_eq!(&buf[1..], enc, "encoding {v} into a full buffer");
            assert_eq!(varint_len(v), enc.len());
            assert_eq!(peek_varint(enc), Ok(Some((v as u32, enc.len()))));
        }
    }

    #[test]
    fn varint_incomplete_and_too_long() {
        assert_eq!(peek_varint(&[]), Ok(None));
        assert_eq!(peek_varint(&[0x80, 0x80]), Ok(None));
        assert_eq!(
            peek_varint(&[0x80, 0x80, 0x80, 0x80]),
            Err(Error::VarIntTooLong)
        );
        assert_eq!(
            peek_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(Error::VarIntTooLong)
        );
    }

    #[test]
    fn varint_must_be_minimal() {
        // MQTT-1.5.5-1: the encoded value must use the minimum number of bytes. Every
        // non-minimal encoding ends in a 0x00 byte after a continuation byte.
        for enc in [
            &[0x80, 0x00][..],
            &[0xFF, 0x00],
            &[0x80, 0x80, 0x00],
            &[0x81, 0x80, 0x80, 0x00],
        ] {
            assert_eq!(peek_varint(enc), Err(Error::VarIntNotMinimal), "{enc:02x?}");
        }
        // Zero bytes in the middle are fine: 16,384 is 0x80 0x80 0x01.
        assert_eq!(peek_varint(&[0x80, 0x80, 0x01]), Ok(Some((16_384, 3))));
    }

    #[test]
    fn out_appends_after_existing_bytes_and_grows_when_short() {
        // Room for 3 bytes, 2 + 5 + 4 + 2 written: the writes that do not fit grow the
        // buffer, and every byte lands in order after what the buffer held.
        let mut buf = BytesMut::with_capacity(2);
        buf.extend_from_slice(b"ab");
        {
            let mut out = Out::new(&mut buf, 3);
            out.put_u16(0x0102);
            assert_eq!(out.written(), 2);
            out.put_slice(b"hello");
            out.put_u32(0x0304_0506);
            out.put_slice(&[]);
            out.put_u8(7);
            out.put_u8(8);
        }
        assert_eq!(&buf[..], b"ab\x01\x02hello\x03\x04\x05\x06\x07\x08");
        // A buffer without any capacity: the very first write has to grow it.
        let mut buf = BytesMut::new();
        let big = vec![0x5a; 100_000];
        {
            let mut out = Out::new(&mut buf, 0);
            out.put_u8(1);
            out.put_slice(&big);
        }
        assert_eq!(buf.len(), 100_001);
        assert_eq!(buf[0], 1);
        assert!(buf[1..].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn varint_bytes_match_put_varint() {
        for v in [
            0usize,
            1,
            127,
            128,
            129,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut Out::new(&mut buf, 4), v);
            let (packed, n) = varint_bytes(v);
            assert_eq!(n, buf.len(), "{v}");
            assert_eq!(&packed.to_le_bytes()[..n], &buf[..], "{v}");
        }
    }

    #[test]
    fn put_frame_writes_exactly_the_counted_bytes() {
        for (head_len, mid_len) in [(2, 1), (3, 3), (7, 3), (8, 4), (0, 0)] {
            for (a, b) in [
                (&b""[..], &b""[..]),
                (b"a/b", b""),
                (b"", b"xyz"),
                (b"t", b"p"),
            ] {
                // With room to spare, and into a buffer with no slack after the frame.
                let mut roomy = BytesMut::with_capacity(64);
                roomy.extend_from_slice(b"++");
                let exact = 2 + head_len + a.len() + mid_len + b.len();
                let mut tight = BytesMut::with_capacity(exact);
                tight.extend_from_slice(b"++");
                let n = put_frame(&mut roomy, *b"HHHHHHHH", head_len, a, *b"MMMM", mid_len, b);
                let m = put_frame(&mut tight, *b"HHHHHHHH", head_len, a, *b"MMMM", mid_len, b);
                assert_eq!(roomy, tight);
                assert_eq!(n, m);
                let buf = roomy;
                let mut expected = b"++".to_vec();
                expected.extend_from_slice(&b"HHHHHHHH"[..head_len]);
                expected.extend_from_slice(a);
                expected.extend_from_slice(&b"MMMM"[..mid_len]);
                expected.extend_from_slice(b);
                assert_eq!(n, expected.len() - 2);
                assert_eq!(&buf[..], &expected[..], "{head_len} {mid_len} {a:?} {b:?}");
            }
        }
    }
}
