//! The machine-readable codes of the protocol, as enums with their wire
//! strings: why an envelope does not verify (`docs/PROTOCOL.md` section 9),
//! why the broker refused an alert (13.5.5), why a recipient gets nothing
//! (13.5.6), and the `reason_code` of the audit entries that are not about
//! an alert (13.8.2). Broker and SDK both use these, so a code is spelled in
//! one place.
//!
//! Each enum has `as_str` (the wire string), `FromStr`, `Display`, serde as
//! the wire string, and `ALL`, every code in the protocol's order. Messages
//! keep codes as strings on the wire (a code added by a newer broker still
//! parses); [`crate::messages::Rejection::kind`] and
//! [`crate::messages::DenialReceipt::kind`] read them as enums.

use std::fmt;
use std::str::FromStr;

/// A string that is not a code of the enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{code}` is not a known {what}")]
pub struct UnknownCode {
    /// What was parsed.
    pub code: String,
    /// Which kind of code was expected.
    pub what: &'static str,
}

macro_rules! codes {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every code, in the protocol's order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownCode;
            fn from_str(s: &str) -> Result<Self, UnknownCode> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(UnknownCode { code: s.chars().take(64).collect(), what: $what }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

codes! {
    /// Why an envelope does not verify (`docs/PROTOCOL.md` section 9).
    VerificationCode, "verification code" {
        /// Not an envelope in JSON form.
        MalformedEnvelope = "malformed_envelope",
        /// `version` is not 1.
        UnsupportedVersion = "unsupported_version",
        /// A header field breaks its syntax.
        InvalidHeader = "invalid_header",
        /// More than 64 digests or disclosures.
        TooManyFields = "too_many_fields",
        /// No such key registered for the publisher.
        UnknownKey = "unknown_key",
        /// Signed before the key's `not_before`.
        KeyNotYetValid = "key_not_yet_valid",
        /// Signed at or after the key's `not_after`.
        KeyExpired = "key_expired",
        /// Signed at or after the key's `revoked_at`.
        KeyRevoked = "key_revoked",
        /// The signature does not verify (strictly).
        BadSignature = "bad_signature",
        /// The signed digest list is not strictly ascending.
        DigestsNotSorted = "digests_not_sorted",
        /// A signed disclosure is not validly encoded.
        MalformedDisclosure = "malformed_disclosure",
        /// A disclosure's digest is not signed.
        DisclosureWithoutDigest = "disclosure_without_digest",
        /// A field name is disclosed more than once.
        DuplicateField = "duplicate_field",
        /// `issued_at_ms` is too far from the receiver's clock.
        ClockSkew = "clock_skew",
        /// Signer only: the random source failed.
        Internal = "internal",
    }
}

codes! {
    /// Why the broker refused an alert (`docs/PROTOCOL.md` 13.5.5), in the
    /// order of the broker's checks.
    RejectionCode, "rejection code" {
        /// Larger than `max_payload_bytes`.
        PayloadTooLarge = "payload_too_large",
        /// The MQTT topic does not end in a valid logical topic.
        InvalidTopic = "invalid_topic",
        /// Over the publisher's publish limit; see `retry_after_ms`.
        RateLimited = "rate_limited",
        /// Not an envelope in JSON form.
        MalformedEnvelope = "malformed_envelope",
        /// The envelope names another publisher than the connection's agency.
        PublisherMismatch = "publisher_mismatch",
        /// The signed topic is not the topic it was published on.
        TopicMismatch = "topic_mismatch",
        /// `issued_at_ms` is too far from the broker's clock.
        ClockSkew = "clock_skew",
        /// See [`VerificationCode::UnsupportedVersion`].
        UnsupportedVersion = "unsupported_version",
        /// See [`VerificationCode::InvalidHeader`].
        InvalidHeader = "invalid_header",
        /// See [`VerificationCode::TooManyFields`].
        TooManyFields = "too_many_fields",
        /// See [`VerificationCode::UnknownKey`].
        UnknownKey = "unknown_key",
        /// The key is revoked (at signing, or now).
        KeyRevoked = "key_revoked",
        /// The key is not yet valid (at signing, or now).
        KeyNotYetValid = "key_not_yet_valid",
        /// The key has expired (at signing, or now).
        KeyExpired = "key_expired",
        /// See [`VerificationCode::BadSignature`].
        BadSignature = "bad_signature",
        /// See [`VerificationCode::DigestsNotSorted`].
        DigestsNotSorted = "digests_not_sorted",
        /// See [`VerificationCode::DisclosureWithoutDigest`].
        DisclosureWithoutDigest = "disclosure_without_digest",
        /// See [`VerificationCode::MalformedDisclosure`].
        MalformedDisclosure = "malformed_disclosure",
        /// See [`VerificationCode::DuplicateField`].
        DuplicateField = "duplicate_field",
        /// Not an alert type of the policy.
        UnknownAlertType = "unknown_alert_type",
        /// The fields break the alert type's schema.
        SchemaViolation = "schema_violation",
        /// The alert id was used for an alert with other content.
        AlertIdReused = "alert_id_reused",
    }
}

codes! {
    /// Why a recipient gets nothing (`docs/PROTOCOL.md` 13.5.6).
    DenialCode, "denial code" {
        /// No rule lets any agency but the publisher receive the alert.
        NoRuleForAlert = "no_rule_for_alert",
        /// No rule lets the named recipient receive the alert.
        NoRuleForRecipient = "no_rule_for_recipient",
        /// Rules cover the recipient, but a condition of each fails.
        ConditionNotMet = "condition_not_met",
        /// The alert has none of the fields the rule permits.
        NoPermittedFields = "no_permitted_fields",
        /// `to` names an agency that is not in the policy.
        UnknownRecipient = "unknown_recipient",
        /// `to` names the publisher itself.
        SelfAddressed = "self_addressed",
    }
}

codes! {
    /// The `reason_code` of the broker's own entries: policy loads, key
    /// revocations, retention purges (`docs/PROTOCOL.md` 13.8.2).
    AuditReason, "audit reason code" {
        /// A policy version archived for the first time is in force.
        FirstLoad = "first_load",
        /// A policy version archived before is in force again.
        Load = "load",
        /// A reload revoked a signing key.
        KeyRevoked = "key_revoked",
        /// Content past its retention period was purged.
        Retention = "retention",
    }
}

codes! {
    /// What an auditor did on the console: the `reason_code` of an
    /// `auditor_access` entry (`docs/PROTOCOL.md` 13.8.2).
    AccessAction, "console action" {
        /// A filtered list.
        Search = "search",
        /// One entry's page.
        Entry = "entry",
        /// One alert's case page.
        Case = "case",
        /// An evidence bundle downloaded.
        Evidence = "evidence",
        /// A subject search.
        Subject = "subject",
        /// A filtered list exported.
        Export = "export",
        /// A kept checkpoint checked against today's log.
        Consistency = "consistency",
    }
}

impl TryFrom<VerificationCode> for RejectionCode {
    type Error = UnknownCode;

    /// The refusal for an envelope that does not verify; every code but
    /// `internal` (a signer's error, never a verifier's) has one.
    fn try_from(code: VerificationCode) -> Result<Self, UnknownCode> {
        code.as_str().parse()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `docs/PROTOCOL.md`, read where the repository keeps it.
    fn protocol() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
        std::fs::read_to_string(path).expect("docs/PROTOCOL.md")
    }

    /// The lines of the section that starts with the heading `start`, up to
    /// the next heading of any level.
    fn section<'a>(doc: &'a str, start: &str) -> Vec<&'a str> {
        doc.lines()
            .skip_while(|l| !l.starts_with(start))
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .collect()
    }

    /// The backticked words of `text`.
    fn ticked(text: &str) -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// Cell `n` (from 0) of each table row, header and rule rows skipped.
    fn cells(lines: &[&str], n: usize) -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
            .skip(1)
            .filter_map(|l| l.split('|').nth(n + 1).map(str::to_string))
            .collect()
    }

    fn set<T: Copy>(all: &[T], s: impl Fn(T) -> &'static str) -> BTreeSet<String> {
        all.iter().map(|c| s(*c).to_string()).collect()
    }

    fn round_trips<T>(all: &[T])
    where
        T: Copy + Eq + fmt::Debug + FromStr<Err = UnknownCode> + serde::Serialize,
        T: for<'de> serde::Deserialize<'de> + fmt::Display,
    {
        for c in all {
            let wire = c.to_string();
            assert_eq!(wire.parse::<T>().unwrap(), *c);
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *c);
        }
        assert!("no_such_code".parse::<T>().is_err());
        assert!(serde_json::from_str::<T>("\"no_such_code\"").is_err());
    }

    #[test]
    fn every_code_round_trips() {
        round_trips(VerificationCode::ALL);
        round_trips(RejectionCode::ALL);
        round_trips(DenialCode::ALL);
        round_trips(AuditReason::ALL);
        round_trips(AccessAction::ALL);
    }

    #[test]
    fn the_verification_codes_are_those_of_protocol_section_9() {
        let doc = protocol();
        let listed: BTreeSet<String> = cells(&section(&doc, "## 9."), 0)
            .iter()
            .flat_map(|c| ticked(c))
            .collect();
        // The section's first table (the checks) names the same codes in its
        // last column; the complete list is the one that counts.
        assert_eq!(listed, set(VerificationCode::ALL, VerificationCode::as_str));
    }

    #[test]
    fn the_rejection_codes_are_those_of_protocol_13_5_5() {
        let doc = protocol();
        let listed: BTreeSet<String> = cells(&section(&doc, "#### 13.5.5"), 2)
            .iter()
            .flat_map(|c| ticked(c))
            // A field of the receipt, named beside `rate_limited`.
            .filter(|c| c != "retry_after_ms")
            .collect();
        assert_eq!(listed, set(RejectionCode::ALL, RejectionCode::as_str));
        // Every verification code but the signer's `internal` is a rejection.
        for v in VerificationCode::ALL {
            assert_eq!(
                RejectionCode::try_from(*v).is_ok(),
                *v != VerificationCode::Internal,
                "{v}"
            );
        }
    }

    #[test]
    fn the_denial_codes_are_those_of_protocol_13_5_6() {
        let doc = protocol();
        let listed: BTreeSet<String> = cells(&section(&doc, "#### 13.5.6"), 0)
            .iter()
            .flat_map(|c| ticked(c))
            .collect();
        assert_eq!(listed, set(DenialCode::ALL, DenialCode::as_str));
    }

    #[test]
    fn the_audit_reason_codes_are_those_of_protocol_13_8_2() {
        let doc = protocol();
        let mut listed = BTreeSet::new();
        for row in cells(&section(&doc, "#### 13.8.2"), 2) {
            // "`reason_code` (`first_load` when …, otherwise `load`)": the
            // codes in the parenthesis; denials and rejections say
            // `reason_code` without one (their codes are listed above).
            if let Some((_, rest)) = row.split_once("`reason_code` (") {
                let inside = rest.split(')').next().unwrap_or_default();
                listed.extend(ticked(inside));
            }
        }
        let mut ours = set(AuditReason::ALL, AuditReason::as_str);
        ours.extend(set(AccessAction::ALL, AccessAction::as_str));
        assert_eq!(listed, ours);
    }
}
