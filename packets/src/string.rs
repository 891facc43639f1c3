//! [`MqttString`]: a cheap, immutable UTF-8 string that can share the read buffer.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::{topic, Error};

/// An immutable UTF-8 string backed by [`Bytes`].
///
/// Decoded strings (topics, client ids, property values) are slices of the buffer the packet
/// was read from, so decoding a PUBLISH copies neither its topic nor its payload. Cloning is a
/// reference-count increment.
///
/// Constructing one from a `&str` or `String` never fails; the MQTT rules for strings (at most
/// 65,535 bytes, no U+0000) are checked when a packet is encoded, so a too-long string is an
/// [`Error::FieldTooLong`], never a silent truncation. The string is scanned once, when it is
/// made (or decoded), for U+0000 and wildcard characters; encoding then checks a flag instead
/// of reading the string again, however often the packet is sent.
///
/// ```
/// use paho_packets::MqttString;
/// let topic = MqttString::from("sensors/kitchen");
/// assert_eq!(&*topic, "sensors/kitchen");
/// assert!(topic.starts_with("sensors/"));
/// ```
#[derive(Clone, Default)]
pub struct MqttString {
    bytes: Bytes,
    /// [`topic::scan`] flags of `bytes` (U+0000, wildcards).
    flags: u8,
}

impl MqttString {
    /// An empty string.
    pub const fn new() -> Self {
        MqttString {
            bytes: Bytes::new(),
            flags: 0,
        }
    }

    /// A string from a static literal, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        let b = s.as_bytes();
        let mut flags = 0;
        let mut i = 0;
        while i < b.len() {
            if b[i] == 0 {
                flags |= topic::NUL;
            } else if b[i] == b'+' || b[i] == b'#' {
                flags |= topic::WILDCARD;
            }
            i += 1;
        }
        MqttString {
            bytes: Bytes::from_static(b),
            flags,
        }
    }

    /// Wraps bytes after checking they are valid UTF-8 without U+0000.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Error> {
        std::str::from_utf8(&bytes).map_err(|_| Error::InvalidUtf8)?;
        let flags = topic::scan(&bytes);
        if flags & topic::NUL != 0 {
            return Err(Error::NullCharacter);
        }
        Ok(MqttString { bytes, flags })
    }

    /// Wraps bytes already checked to be valid UTF-8, with their scan flags.
    pub(crate) fn from_checked(bytes: Bytes, flags: u8) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        debug_assert_eq!(
            flags & !topic::NON_ASCII,
            topic::scan(&bytes) & !topic::NON_ASCII
        );
        MqttString { bytes, flags }
    }

    fn scanned(bytes: Bytes) -> Self {
        let flags = topic::scan(&bytes);
        MqttString { bytes, flags }
    }

    /// True when the string contains U+0000, which MQTT forbids.
    pub(crate) fn has_nul(&self) -> bool {
        self.flags & topic::NUL != 0
    }

    /// True when the string contains `+` or `#`.
    pub(crate) fn has_wildcard(&self) -> bool {
        self.flags & topic::WILDCARD != 0
    }

    /// The string slice.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor guarantees that `self.0` is valid UTF-8: `from_utf8`
        // validates, the `From<&str>`/`From<String>` impls take a `str`, and `from_checked` is
        // only called by the decoder after `std::str::from_utf8` succeeded on the same bytes.
        // The bytes are immutable afterwards (`Bytes` offers no mutation).
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.bytes)
        }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the string and returns its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

// Equality, order and hashing are those of the text; the flags are derived from it.
impl PartialEq for MqttString {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for MqttString {}

impl PartialOrd for MqttString {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MqttString {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl std::hash::Hash for MqttString {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Deref for MqttString {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MqttString {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for MqttString {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for MqttString {
    fn from(s: &str) -> Self {
        MqttString::scanned(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for MqttString {
    fn from(s: String) -> Self {
        MqttString::scanned(Bytes::from(s))
    }
}

impl From<&String> for MqttString {
    fn from(s: &String) -> Self {
        MqttString::from(s.as_str())
    }
}

impl From<MqttString> for String {
    fn from(s: MqttString) -> Self {
        s.as_str().to_owned()
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_utf8_rejects_invalid_and_nul() {
        assert_eq!(
            MqttString::from_utf8(Bytes::from_static(&[0xff, 0xfe])),
            Err(Error::InvalidUtf8)
        );
        assert_eq!(
            MqttString::from_utf8(Bytes::from_static(b"a\0b")),
            Err(Error::NullCharacter)
        );
        assert_eq!(
            MqttString::from_utf8(Bytes::from_static("ä/b".as_bytes())).map(|s| s.to_string()),
            Ok("ä/b".to_string())
        );
    }

    #[test]
    fn flags_follow_the_text_whatever_the_constructor() {
        for text in ["a/b", "a/+", "#", "a\0", "", "caf\u{e9}/#"] {
            let made = [
                MqttString::from(text),
                MqttString::from(text.to_string()),
                MqttString::from_static(Box::leak(text.to_string().into_boxed_str())),
            ];
            for m in &made {
                assert_eq!(m.has_nul(), text.contains('\0'), "{text:?}");
                assert_eq!(m.has_wildcard(), text.contains(['+', '#']), "{text:?}");
                assert_eq!(m, &made[0]);
            }
        }
    }
}
