//! Syntax of the names that appear in envelopes, topics and policy files.
//!
//! Everything that ends up in an MQTT topic, a signed header or an audit row
//! is restricted to a small ASCII alphabet, so that look-alike characters,
//! wildcards and separators can never be smuggled in.

use thiserror::Error;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty or longer than allowed.
    #[error("{kind} must be 1 to {max} characters long, got {len}")]
    Length {
        /// What kind of name.
        kind: &'static str,
        /// The largest allowed length.
        max: usize,
        /// The length found.
        len: usize,
    },
    /// The name contains a character outside its alphabet.
    #[error("{kind} `{name}` may only contain {allowed}")]
    Alphabet {
        /// What kind of name.
        kind: &'static str,
        /// The offending name (already known to be short and printable ASCII or escaped).
        name: String,
        /// The allowed characters, in words.
        allowed: &'static str,
    },
    /// A topic or filter has an empty level, a misplaced wildcard or a reserved level.
    #[error("{kind} `{name}`: {reason}")]
    Structure {
        /// What kind of name.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Longest agency id.
pub const MAX_AGENCY_ID: usize = 32;
/// Longest logical topic, in bytes.
pub const MAX_TOPIC: usize = 200;
/// Most levels in a logical topic.
pub const MAX_TOPIC_LEVELS: usize = 8;
/// Longest field name.
pub const MAX_FIELD_NAME: usize = 64;
/// Longest alert id.
pub const MAX_ALERT_ID: usize = 64;
/// Longest key id.
pub const MAX_KEY_ID: usize = 64;
/// Longest alert type name.
pub const MAX_ALERT_TYPE: usize = 64;

fn escaped(s: &str) -> String {
    s.chars().take(80).flat_map(char::escape_default).collect()
}

fn check_length(kind: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() || s.len() > max {
        return Err(NameError::Length {
            kind,
            max,
            len: s.len(),
        });
    }
    Ok(())
}

fn check_alphabet(
    kind: &'static str,
    s: &str,
    allowed: &'static str,
    ok: impl Fn(usize, u8) -> bool,
) -> Result<(), NameError> {
    if s.bytes().enumerate().all(|(i, b)| ok(i, b)) {
        Ok(())
    } else {
        Err(NameError::Alphabet {
            kind,
            name: escaped(s),
            allowed,
        })
    }
}

/// An agency id: lowercase ASCII letters and digits, starting with a letter
/// (`linkoping`, `forsakringskassan`, `akrimost`). It is also the O= of the
/// agency's TLS certificate and its tenant name in the broker.
pub fn validate_agency_id(s: &str) -> Result<(), NameError> {
    check_length("agency id", s, MAX_AGENCY_ID)?;
    check_alphabet(
        "agency id",
        s,
        "lowercase ASCII letters and digits, starting with a letter",
        |i, b| b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()),
    )
}

/// A field name: lowercase ASCII letters, digits and `_`, starting with a letter.
pub fn validate_field_name(s: &str) -> Result<(), NameError> {
    check_length("field name", s, MAX_FIELD_NAME)?;
    check_alphabet(
        "field name",
        s,
        "lowercase ASCII letters, digits and `_`, starting with a letter",
        |i, b| b.is_ascii_lowercase() || (i > 0 && (b.is_ascii_digit() || b == b'_')),
    )
}

/// An alert id: ASCII letters, digits, `-` and `_` (a UUID fits).
pub fn validate_alert_id(s: &str) -> Result<(), NameError> {
    check_length("alert id", s, MAX_ALERT_ID)?;
    check_alphabet(
        "alert id",
        s,
        "ASCII letters, digits, `-` and `_`",
        |_, b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
    )
}

/// A key id: ASCII letters, digits, `-`, `_` and `.`.
pub fn validate_key_id(s: &str) -> Result<(), NameError> {
    check_length("key id", s, MAX_KEY_ID)?;
    check_alphabet(
        "key id",
        s,
        "ASCII letters, digits, `-`, `_` and `.`",
        |_, b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'),
    )
}

/// An alert type: dot-separated segments of lowercase letters, digits and `_`,
/// at least two segments (`welfare.incorrect_payment`).
pub fn validate_alert_type(s: &str) -> Result<(), NameError> {
    const KIND: &str = "alert type";
    check_length(KIND, s, MAX_ALERT_TYPE)?;
    let segments: Vec<&str> = s.split('.').collect();
    let segment_ok = |seg: &str| {
        let mut bytes = seg.bytes();
        matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if segments.len() < 2 || !segments.iter().all(|seg| segment_ok(seg)) {
        return Err(NameError::Alphabet {
            kind: KIND,
            name: escaped(s),
            allowed: "two or more dot-separated segments of lowercase letters, digits and `_`, each starting with a letter",
        });
    }
    Ok(())
}

fn level_ok(level: &str) -> bool {
    let mut bytes = level.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

const LEVEL_ALPHABET: &str = "levels of lowercase ASCII letters, digits, `-` and `_` (not starting with `-` or `_`) separated by `/`";

/// A logical topic such as `welfare/incorrect-payment/ost`: no wildcards, no
/// empty levels, no leading `/`, and no level starting with `_` (reserved for
/// the broker, e.g. `_audit`).
pub fn validate_logical_topic(s: &str) -> Result<(), NameError> {
    const KIND: &str = "logical topic";
    check_length(KIND, s, MAX_TOPIC)?;
    let levels: Vec<&str> = s.split('/').collect();
    if levels.len() > MAX_TOPIC_LEVELS {
        return Err(NameError::Structure {
            kind: KIND,
            name: escaped(s),
            reason: "too many levels (at most 8)",
        });
    }
    if levels.iter().any(|l| l.is_empty()) {
        return Err(NameError::Structure {
            kind: KIND,
            name: escaped(s),
            reason: "empty level (leading, trailing or double `/`)",
        });
    }
    if !levels.iter().all(|l| level_ok(l)) {
        return Err(NameError::Alphabet {
            kind: KIND,
            name: escaped(s),
            allowed: LEVEL_ALPHABET,
        });
    }
    Ok(())
}

/// A logical topic filter: a logical topic whose levels may also be `+`
/// (exactly one level) and, as the last level, `#` (any number of levels,
/// including none).
pub fn validate_topic_filter(s: &str) -> Result<(), NameError> {
    const KIND: &str = "topic filter";
    check_length(KIND, s, MAX_TOPIC)?;
    let levels: Vec<&str> = s.split('/').collect();
    if levels.len() > MAX_TOPIC_LEVELS {
        return Err(NameError::Structure {
            kind: KIND,
            name: escaped(s),
            reason: "too many levels (at most 8)",
        });
    }
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "" => {
                return Err(NameError::Structure {
                    kind: KIND,
                    name: escaped(s),
                    reason: "empty level (leading, trailing or double `/`)",
                });
            }
            "+" => {}
            "#" if i + 1 == levels.len() => {}
            "#" => {
                return Err(NameError::Structure {
                    kind: KIND,
                    name: escaped(s),
                    reason: "`#` may only be the last level",
                });
            }
            l if level_ok(l) => {}
            _ => {
                return Err(NameError::Alphabet {
                    kind: KIND,
                    name: escaped(s),
                    allowed: "levels of lowercase ASCII letters, digits, `-` and `_`, or the wildcards `+` and `#` (last)",
                });
            }
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` with MQTT wildcard rules. Both are assumed
/// valid (see [`validate_logical_topic`] and [`validate_topic_filter`]).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_ids_are_lowercase_ascii() {
        assert!(validate_agency_id("forsakringskassan").is_ok());
        assert!(validate_agency_id("akrimost").is_ok());
        assert!(validate_agency_id("Polisen").is_err());
        assert!(validate_agency_id("linköping").is_err());
        // Cyrillic 'о' looks like Latin 'o'.
        assert!(validate_agency_id("p\u{43e}lisen").is_err());
        assert!(validate_agency_id("1abc").is_err());
        assert!(validate_agency_id("").is_err());
        assert!(validate_agency_id(&"a".repeat(33)).is_err());
    }

    #[test]
    fn logical_topics_reject_wildcards_and_empty_levels() {
        assert!(validate_logical_topic("welfare/incorrect-payment/ost").is_ok());
        assert!(validate_logical_topic("akrim/ost/inspection").is_ok());
        for bad in [
            "welfare/+/ost",
            "welfare/#",
            "/welfare",
            "welfare/",
            "welfare//ost",
            "_audit/checkpoint",
            "Welfare/x",
            "welfare/x y",
            "a/b/c/d/e/f/g/h/i",
        ] {
            assert!(validate_logical_topic(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn filters_match_with_mqtt_semantics() {
        assert!(validate_topic_filter("welfare/+/ost").is_ok());
        assert!(validate_topic_filter("akrim/#").is_ok());
        assert!(validate_topic_filter("#").is_ok());
        assert!(validate_topic_filter("akrim/#/x").is_err());
        assert!(validate_topic_filter("akrim/x#").is_err());
        assert!(topic_matches(
            "welfare/+/ost",
            "welfare/incorrect-payment/ost"
        ));
        assert!(!topic_matches(
            "welfare/+/ost",
            "welfare/incorrect-payment/syd"
        ));
        assert!(topic_matches("akrim/#", "akrim"));
        assert!(topic_matches("akrim/#", "akrim/ost/inspection"));
        assert!(!topic_matches("akrim/+", "akrim/ost/inspection"));
        assert!(!topic_matches("akrim/ost", "akrim/ost/inspection"));
        assert!(topic_matches("#", "welfare/x"));
    }

    #[test]
    fn alert_types_and_field_names() {
        assert!(validate_alert_type("welfare.incorrect_payment").is_ok());
        assert!(validate_alert_type("welfare").is_err());
        assert!(validate_alert_type("welfare..x").is_err());
        assert!(validate_field_name("subject_personnummer").is_ok());
        assert!(validate_field_name("_x").is_err());
        assert!(validate_field_name("Amount").is_err());
    }
}
