//! [`MqttString`]: a cheap, immutable UTF-8 string that can share the read buffer.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::Error;

/// An immutable UTF-8 string backed by [`Bytes`].
///
/// Decoded strings (topics, client ids, property values) are slices of the buffer the packet
/// was read from, so decoding a PUBLISH copies neither its topic nor its payload. Cloning is a
/// reference-count increment.
///
/// Constructing one from a `&str` or `String` never fails; the MQTT rules for strings (at most
/// 65,535 bytes, no U+0000) are checked when a packet is encoded, so a too-long string is an
/// [`Error::FieldTooLong`], never a silent truncation.
///
/// ```
/// use paho_packets::MqttString;
/// let topic = MqttString::from("sensors/kitchen");
/// assert_eq!(&*topic, "sensors/kitchen");
/// assert!(topic.starts_with("sensors/"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MqttString(Bytes);

impl MqttString {
    /// An empty string.
    pub const fn new() -> Self {
        MqttString(Bytes::new())
    }

    /// A string from a static literal, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        MqttString(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps bytes after checking they are valid UTF-8 without U+0000.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Error> {
        let s = std::str::from_utf8(&bytes).map_err(|_| Error::InvalidUtf8)?;
        if s.as_bytes().contains(&0) {
            return Err(Error::NullCharacter);
        }
        Ok(MqttString(bytes))
    }

    /// Wraps bytes already checked to be valid UTF-8.
    pub(crate) fn from_checked(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        MqttString(bytes)
    }

    /// The string slice.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor guarantees that `self.0` is valid UTF-8: `from_utf8`
        // validates, the `From<&str>`/`From<String>` impls take a `str`, and `from_checked` is
        // only called by the decoder after `std::str::from_utf8` succeeded on the same bytes.
        // The bytes are immutable afterwards (`Bytes` offers no mutation).
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Consumes the string and returns its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
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
        MqttString(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for MqttString {
    fn from(s: String) -> Self {
        MqttString(Bytes::from(s))
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
}
