//! Topic names and topic filters (MQTT v5 section 4.7): validation and matching.

use crate::Error;

/// Checks a topic name for a PUBLISH: non-empty, no wildcard characters.
///
/// (An empty topic is allowed on the wire together with a topic alias; the PUBLISH codec
/// handles that case before calling this.)
pub fn validate_topic_name(topic: &str) -> Result<(), Error> {
    if topic.is_empty() || topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(Error::InvalidTopicName(topic.to_owned()));
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
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(bad());
    }
    Ok(Some((group, inner)))
}

/// Checks a topic filter for SUBSCRIBE/UNSUBSCRIBE: non-empty, `+` alone in its level, `#`
/// alone in the last level, and a well-formed `$share/{group}/` prefix if there is one.
pub fn validate_topic_filter(filter: &str) -> Result<(), Error> {
    let inner = match split_shared(filter)? {
        Some((_, inner)) => inner,
        None => filter,
    };
    if !filter_shape_ok(inner) {
        return Err(Error::InvalidTopicFilter(filter.to_owned()));
    }
    Ok(())
}

fn filter_shape_ok(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
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
