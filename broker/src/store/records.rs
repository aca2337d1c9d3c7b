//! The signed records the store does not keep whole, rebuilt byte for byte.
//!
//! A receipt lists the alert's share and denial entries; a share stamp
//! states its share's entry; a delivery is the alert's envelope with the
//! shared field values and the stamp; the complete envelope is the signed
//! envelope with its field values. Everything in them except the broker's
//! signatures is in the audit entries and the alert row, so only the
//! signatures (and key ids) are stored. The JSON forms come from the same
//! serde structures the broker signed and sent, so the rebuilt bytes are
//! the bytes first sent (the store's suite and the migration test compare
//! them); a signature over them still verifies only if the entries are
//! unchanged, which is what `audit verify` relies on.

use samverkan_sdk::Envelope;
use samverkan_sdk::envelope::Base64Url;
use samverkan_sdk::messages::{
    Delivery, DenialReceipt, Receipt, ReceiptStatus, ShareReceipt, ShareStamp, Signed,
};

use super::StoreError;
use crate::audit::{AuditEntry, EntryKind};

/// The field values as stored: each disclosure's bytes after a 4-byte
/// big-endian length (a quarter smaller than their base64 in JSON).
pub(super) fn encode_disclosures(disclosures: &[Base64Url]) -> Vec<u8> {
    let mut out = Vec::with_capacity(disclosures.iter().map(|d| d.0.len() + 4).sum());
    for d in disclosures {
        // A disclosure is far below 4 GiB (the payload limit is 256 KiB).
        out.extend_from_slice(&u32::try_from(d.0.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&d.0);
    }
    out
}

/// The inverse of [`encode_disclosures`].
pub(super) fn decode_disclosures(mut bytes: &[u8]) -> Result<Vec<Base64Url>, StoreError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let corrupt = || StoreError::Corrupt("alerts.disclosures is truncated".into());
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
        if rest.len() < len {
            return Err(corrupt());
        }
        let (d, rest) = rest.split_at(len);
        out.push(Base64Url(d.to_vec()));
        bytes = rest;
    }
    Ok(out)
}

/// The complete envelope: the signed envelope with its field values.
pub(super) fn envelope(signed_envelope: &[u8], disclosures: &[u8]) -> Result<Envelope, StoreError> {
    let mut envelope = Envelope::from_json(signed_envelope)
        .map_err(|e| StoreError::Corrupt(format!("alerts.signed_envelope: {e}")))?;
    envelope.disclosures = decode_disclosures(disclosures)?;
    Ok(envelope)
}

/// What an alert row contributes to its receipt.
pub(super) struct ReceiptFacts<'a> {
    pub publisher: &'a str,
    pub alert_id: &'a str,
    pub envelope_hash: &'a str,
    pub policy_version: &'a str,
    pub received_at_ms: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// The signed receipt of an accepted alert (JSON), from its share and
/// denial entries in index order.
pub(super) fn receipt(facts: ReceiptFacts<'_>, entries: &[AuditEntry]) -> Vec<u8> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let shares = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Share)
        .map(|e| ShareReceipt {
            share_id: text(&e.share_id),
            recipient: text(&e.recipient),
            rule_id: text(&e.rule_id),
            legal_basis: text(&e.legal_basis),
            purpose: text(&e.purpose),
            fields: e.fields.clone(),
            audit_index: e.index,
        })
        .collect();
    let denials = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Denial)
        .map(|e| DenialReceipt {
            recipient: e.recipient.clone(),
            rule_id: e.rule_id.clone(),
            code: text(&e.reason_code),
            message: text(&e.reason),
            audit_index: e.index,
        })
        .collect();
    let body = Receipt {
        alert_id: Some(facts.alert_id.to_string()),
        publisher: facts.publisher.to_string(),
        envelope_hash: Some(facts.envelope_hash.to_string()),
        status: ReceiptStatus::Accepted,
        rejection: None,
        shares,
        denials,
        audit_index: None,
        policy_version: facts.policy_version.to_string(),
        received_at_ms: facts.received_at_ms,
        signed_at_ms: facts.received_at_ms,
    };
    signed_json(&body, facts.key_id, facts.signature)
}

/// The broker-signed share stamp of a share entry.
pub(super) fn stamp(entry: &AuditEntry, key_id: String, signature: Vec<u8>) -> Signed {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = ShareStamp {
        share_id: text(&entry.share_id),
        alert_id: text(&entry.alert_id),
        publisher: text(&entry.publisher),
        recipient: text(&entry.recipient),
        topic: text(&entry.topic),
        alert_type: text(&entry.alert_type),
        rule_id: text(&entry.rule_id),
        legal_basis: text(&entry.legal_basis),
        purpose: text(&entry.purpose),
        fields: entry.fields.clone(),
        envelope_hash: text(&entry.envelope_hash),
        policy_version: text(&entry.policy_version),
        audit_index: entry.index,
        signed_at_ms: entry.at_ms,
    };
    Signed {
        body: Base64Url(serde_json::to_vec(&body).unwrap_or_default()),
        key_id,
        signature: Base64Url(signature),
    }
}

/// The delivery message of a share (JSON): the envelope with the fields the
/// entry names, and the stamp.
pub(super) fn delivery(envelope: &Envelope, entry: &AuditEntry, stamp: Signed) -> Vec<u8> {
    Delivery {
        envelope: envelope.redact(|name| entry.fields.iter().any(|f| f == name)),
        stamp,
    }
    .to_json()
}

fn signed_json<T: serde::Serialize>(body: &T, key_id: String, signature: Vec<u8>) -> Vec<u8> {
    // Serialising the plain message structures cannot fail.
    serde_json::to_vec(&Signed {
        body: Base64Url(serde_json::to_vec(body).unwrap_or_default()),
        key_id,
        signature: Base64Url(signature),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disclosures_round_trip_and_truncation_is_corrupt() {
        let d = vec![
            Base64Url(b"abc".to_vec()),
            Base64Url(Vec::new()),
            Base64Url(vec![0; 300]),
        ];
        let bytes = encode_disclosures(&d);
        assert_eq!(bytes.len(), 3 + 300 + 12);
        assert_eq!(decode_disclosures(&bytes).unwrap(), d);
        assert!(decode_disclosures(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_disclosures(&[0, 0]).is_err());
        assert!(decode_disclosures(&[]).unwrap().is_empty());
    }
}
