//! Topic names and topic filters (MQTT v5 section 4.7): validation and matching.

use crate::Error;

/// Flags from one pass over a string's bytes (see [`scan`]).
pub(crate) const NON_ASCII: u8 = 1;
pub(crate) const NUL: u8 = 2;
pub(crate) const WILDCARD: u8 = 4;

/// One pass over `b` that reports non-ASCII bytes, U+0000 and wildcards at once.
///
/// Topics are checked on every PUBLISH, so this reads eight bytes at a time (SWAR) instead of
/// making three byte-by-byte passes (UTF-8, NUL, wildcards).
#[inline]
pub(crate) fn scan(b: &[u8]) -> u8 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Non-zero exactly when some byte lane of `w` is zero (the classic "haszero" test; only
    // which lanes it flags can be off, never whether there is one).
    #[inline]
    fn zero_lanes(w: u64) -> u64 {
        w.wrapping_sub(LO) & !w & HI
    }
    if b.len() < 8 {
        return scan_bytes(b);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if b.len() >= 16 {
        // SAFETY: `scan_sse2` only needs SSE2, which this build enables for every function
        // (the `cfg` above; it is part of the x86_64 baseline).
        #[allow(unsafe_code)]
        return unsafe { scan_sse2(b) };
    }
    let word = |chunk: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        u64::from_le_bytes(bytes)
    };
    let (mut high, mut nul, mut wild) = (0u64, 0u64, 0u64);
    let mut add = |w: u64| {
        high |= w & HI;
        nul |= zero_lanes(w);
        wild |= zero_lanes(w ^ (LO * u64::from(b'+'))) | zero_lanes(w ^ (LO * u64::from(b'#')));
    };
    let mut words = b.chunks_exact(8);
    for chunk in &mut words {
        add(word(chunk));
    }
    if !words.remainder().is_empty() {
        // The last eight bytes, overlapping bytes already seen: flags are an OR, so reading
        // a byte twice is harmless and saves a byte-by-byte tail.
        add(word(&b[b.len() - 8..]));
    }
    (u8::from(high != 0) * NON_ASCII)
        | (u8::from(nul != 0) * NUL)
        | (u8::from(wild != 0) * WILDCARD)
}

/// [`scan`] sixteen bytes at a time, for strings of at least 16 bytes (most topics). SSE2 is
/// part of the x86_64 baseline, so this needs no run-time detection; the loads are built
/// from two `u64`s, which the compiler turns into one unaligned load, so the only `unsafe` is
/// the call (for the target feature).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
#[target_feature(enable = "sse2")]
fn scan_sse2(b: &[u8]) -> u8 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_set_epi64x,
        _mm_setzero_si128,
    };
    debug_assert!(b.len() >= 16);
    let load = |c: &[u8]| -> __m128i {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&c[..8]);
        hi.copy_from_slice(&c[8..16]);
        _mm_set_epi64x(i64::from_le_bytes(hi), i64::from_le_bytes(lo))
    };
    let zero = _mm_setzero_si128();
    // '+' (0x2B) and '#' (0x23) differ only in bit 3, and no other byte becomes 0x2B when
    // bit 3 is set: one comparison finds both wildcards.
    let bit3 = _mm_set1_epi8(0x08);
    let plus = _mm_set1_epi8(b'+' as i8);
    let (mut high, mut nul, mut wild) = (zero, zero, zero);
    let mut add = |w: __m128i| {
        high = _mm_or_si128(high, w);
        nul = _mm_or_si128(nul, _mm_cmpeq_epi8(w, zero));
        wild = _mm_or_si128(wild, _mm_cmpeq_epi8(_mm_or_si128(w, bit3), plus));
    };
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        add(load(c));
    }
    if !chunks.remainder().is_empty() {
        // The last sixteen bytes, overlapping bytes already seen (the flags are an OR).
        add(load(&b[b.len() - 16..]));
    }
    (u8::from(_mm_movemask_epi8(high) != 0) * NON_ASCII)
        | (u8::from(_mm_movemask_epi8(nul) != 0) * NUL)
        | (u8::from(_mm_movemask_epi8(wild) != 0) * WILDCARD)
}

#[inline]
fn scan_bytes(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, &c| {
        acc | (u8::from(c >= 0x80) * NON_ASCII)
            | (u8::from(c == 0) * NUL)
            | (u8::from(c == b'+' || c == b'#') * WILDCARD)
    })
}

/// Checks a topic name for a PUBLISH: non-empty, no wildcard characters, no U+0000, at most
/// 65,535 bytes.
///
/// (An empty topic is allowed on the wire together with a topic alias; the PUBLISH codec
/// handles that case before calling this.)
pub fn validate_topic_name(topic: &str) -> Result<(), Error> {
    let flags = scan(topic.as_bytes());
    check_string_rules(topic, flags)?;
    if topic.is_empty() || flags & WILDCARD != 0 {
        return Err(Error::InvalidTopicName(topic.to_owned()));
    }
    Ok(())
}

/// The rules every topic name and filter shares with all MQTT strings: no U+0000
/// (MQTT-4.7.3-2) and at most 65,535 bytes (MQTT-4.7.3-3). A `&str` has not been through
/// [`crate::MqttString`]'s checks, so the public validators check them here rather than let a
/// topic they approved fail later, at encode time.
fn check_string_rules(s: &str, flags: u8) -> Result<(), Error> {
    if s.len() > crate::wire::FIELD_MAX {
        return Err(Error::FieldTooLong(s.len()));
    }
    if flags & NUL != 0 {
        return Err(Error::NullCharacter);
    }
    Ok(())
}

/// Splits a shared subscription `$share/{group}/{filter}` into its group and filter.
///
/// Returns `None` for a filter that is not a shared subscription. A malformed one (no
/// group, a wildcard in the group, nothing after it) is an error.
pub fn split_shared(filter: &str) -> Result<Option<(&str, &str)>, Error> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let bad = || Error::InvalidTopicFilter(filter.to_owned());
    let (group, inner) = rest.split_once('/').ok_or_else(bad)?;
    if group.is_empty() || scan(group.as_bytes()) & WILDCARD != 0 || inner.is_empty() {
        return Err(bad());
    }
    Ok(Some((group, inner)))
}

/// Checks a topic filter for SUBSCRIBE/UNSUBSCRIBE: non-empty, `+` alone in its level, `#`
/// alone in the last level, a well-formed `$share/{group}/` prefix if there is one, no U+0000,
/// at most 65,535 bytes.
pub fn validate_topic_filter(filter: &str) -> Result<(), Error> {
    let flags = scan(filter.as_bytes());
    check_string_rules(filter, flags)?;
    check_filter(filter, flags & WILDCARD != 0).map(|_| ())
}

/// Like [`validate_topic_filter`] for a filter whose wildcard flag is already known (an
/// [`crate::MqttString`] carries it), and says whether the filter is a shared subscription.
pub(crate) fn check_filter(filter: &str, has_wildcard: bool) -> Result<bool, Error> {
    let (shared, inner) = match split_shared(filter)? {
        Some((_, inner)) => (true, inner),
        None => (false, filter),
    };
    // Without wildcards any non-empty filter is well-formed; only wildcards need a look.
    if inner.is_empty() || (has_wildcard && !wildcards_placed_well(inner.as_bytes())) {
        return Err(Error::InvalidTopicFilter(filter.to_owned()));
    }
    Ok(shared)
}

fn wildcards_placed_well(f: &[u8]) -> bool {
    f.iter().enumerate().all(|(i, &c)| {
        let starts_level = i == 0 || f[i - 1] == b'/';
        let ends = i + 1 == f.len();
        match c {
            // `+` must fill its level.
            b'+' => starts_level && (ends || f[i + 1] == b'/'),
            // `#` must fill the last level.
            b'#' => starts_level && ends,
            _ => true,
        }
    })
}

/// True when `topic` (a topic name) matches `filter` (a valid topic filter, not shared).
///
/// Follows section 4.7: `+` matches one level, `#` the parent and any number of levels, and
/// filters starting with a wildcard do not match topics starting with `$`.
///
/// ```
/// use paho_packets::topic::matches;
/// assert!(matches("a/+/c", "a/b/c"));
/// assert!(matches("a/#", "a"));
/// assert!(!matches("#", "$SYS/uptime"));
/// ```
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("a#").is_err());
    }

    #[test]
    fn validators_apply_the_string_rules() {
        // MQTT-4.7.3-2 and -3: no U+0000, at most 65,535 bytes, for names and filters alike.
        assert_eq!(validate_topic_name("a\0b"), Err(Error::NullCharacter));
        assert_eq!(validate_topic_filter("a/\0/#"), Err(Error::NullCharacter));
        let long = "a".repeat(65_536);
        assert_eq!(validate_topic_name(&long), Err(Error::FieldTooLong(65_536)));
        assert_eq!(
            validate_topic_filter(&long),
            Err(Error::FieldTooLong(65_536))
        );
        assert!(validate_topic_name(&long[1..]).is_ok());
        assert!(validate_topic_filter(&long[1..]).is_ok());
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/+/c",
            "a/#",
            "/+",
            "+/+",
            "$share/g/a/#",
            "$share/g/+",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/#/c",
            "a#",
            "a/b+",
            "+a",
            "$share/",
            "$share//a",
            "$share/g",
            "$share/g/",
            "$share/g+/a",
            "$share/g#/a",
        ] {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scan_agrees_with_a_byte_loop() {
        let samples: [&[u8]; 9] = [
            b"",
            b"devices/device-42/telemetry/temperature",
            b"abcdefgh+",
            b"abcdefg#ijklmnop",
            b"abcdefghijklmno\0",
            b"\0bcdefgh",
            "caf\u{e9}/menu/entr\u{e9}es".as_bytes(),
            b"\x01\x01\x01\x01\x01\x01\x01\x01",
            b"ab+d#fgh\0jk",
        ];
        for s in samples {
            assert_eq!(scan(s), scan_bytes(s), "{s:?}");
        }
        // Every length across the byte, word and 16-byte paths (and their overlapping
        // tails), every position, and the bytes next to the special ones: 0x2B/0x23 are the
        // wildcards, 0x2A/0x22/0x03/0x0B differ from them in one bit, 0x7F/0x80/0xFF border
        // the ASCII range.
        for len in 0..=70 {
            assert_eq!(scan(&vec![b'a'; len]), 0, "plain, length {len}");
            for i in 0..len {
                for c in [
                    0u8, b'+', b'#', 0x80, 0xFF, 0x7F, 0x01, b'*', 0x2a, 0x22, 0x03, 0x0B, 0x2F,
                    0xAB, 0xA3,
                ] {
                    let mut v = vec![b'a'; len];
                    v[i] = c;
                    assert_eq!(scan(&v), scan_bytes(&v), "{c:#x} at {i} of {len}");
                }
            }
        }
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("+", "a/b"));
        assert!(!matches("a/+", "a"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
    }
}
