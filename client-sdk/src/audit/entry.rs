//! Audit entries: what legal staff rely on to prove each share.
//!
//! The entry model and its encoding live here, beside the envelope, so that
//! anyone holding an entry can recompute its leaf hash without the broker.
//!
//! Every share, denial, rejected alert, acknowledgement, policy load, key
//! revocation and retention purge is one entry in a single append-only
//! sequence. Each entry has an exact byte encoding (domain tag, then every
//! field length-prefixed, absent fields marked as such) whose hash is a leaf
//! of the log's Merkle tree, so changing any stored column of any entry is
//! detectable. Entries hold digests, names and reasons, never field values.

use std::fmt;

use crate::encoding::Writer;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Domain tag of an audit entry's encoding.
pub const TAG_AUDIT_ENTRY: &str = "samverkan/v1/audit-entry";

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Fields of an alert were shared with a recipient.
    Share,
    /// A recipient (or everyone) was denied an alert.
    Denial,
    /// An alert was refused before any decision (bad signature, schema, limit, ...).
    Rejection,
    /// A recipient acknowledged shares (proof of receipt).
    Ack,
    /// A policy version was loaded.
    PolicyLoaded,
    /// A signing key was revoked.
    KeyRevoked,
    /// Stored content was purged after its retention period.
    RetentionPurge,
    /// An auditor searched, viewed, looked up a subject or exported on the
    /// console: who looked at what is itself in the log.
    AuditorAccess,
}

impl EntryKind {
    /// Every kind, in the order of PROTOCOL.md section 13.8.2.
    pub const ALL: [EntryKind; 8] = [
        EntryKind::Share,
        EntryKind::Denial,
        EntryKind::Rejection,
        EntryKind::Ack,
        EntryKind::PolicyLoaded,
        EntryKind::KeyRevoked,
        EntryKind::RetentionPurge,
        EntryKind::AuditorAccess,
    ];

    /// The stable name stored in the log.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::Share => "share",
            EntryKind::Denial => "denial",
            EntryKind::Rejection => "rejection",
            EntryKind::Ack => "ack",
            EntryKind::PolicyLoaded => "policy_loaded",
            EntryKind::KeyRevoked => "key_revoked",
            EntryKind::RetentionPurge => "retention_purge",
            EntryKind::AuditorAccess => "auditor_access",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "share" => EntryKind::Share,
            "denial" => EntryKind::Denial,
            "rejection" => EntryKind::Rejection,
            "ack" => EntryKind::Ack,
            "policy_loaded" => EntryKind::PolicyLoaded,
            "key_revoked" => EntryKind::KeyRevoked,
            "retention_purge" => EntryKind::RetentionPurge,
            "auditor_access" => EntryKind::AuditorAccess,
            _ => return None,
        })
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit entry. Which optional fields are set depends on the kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub index: u64,
    /// What the entry records.
    pub kind: EntryKind,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// The alert concerned.
    pub alert_id: Option<String>,
    /// The publishing agency (for rejections: the tenant the message came from).
    pub publisher: Option<String>,
    /// The receiving (or denied, or acknowledging) agency.
    pub recipient: Option<String>,
    /// The logical topic.
    pub topic: Option<String>,
    /// The alert type.
    pub alert_type: Option<String>,
    /// The rule that allowed (or whose condition denied) the share.
    pub rule_id: Option<String>,
    /// The legal basis of the share.
    pub legal_basis: Option<String>,
    /// The purpose of the share.
    pub purpose: Option<String>,
    /// The names of the fields disclosed (sorted).
    pub fields: Vec<String>,
    /// Hex SHA-256 over the digests of the disclosed fields: what exactly was disclosed.
    pub disclosed_digest: Option<String>,
    /// Hex SHA-256 of the publisher's signing input: which alert.
    pub envelope_hash: Option<String>,
    /// The signature the entry rests on, base64url: the publisher's envelope
    /// signature (shares, denials, rejections) or the recipient's signed
    /// acknowledgement (acks).
    pub signature: Option<String>,
    /// The policy version in force.
    pub policy_version: Option<String>,
    /// The share's id (shares, and the shares an ack covers).
    pub share_id: Option<String>,
    /// Machine-readable reason (denials, rejections, purges).
    pub reason_code: Option<String>,
    /// Human-readable reason; never contains field values.
    pub reason: Option<String>,
    /// Keyed hashes of the identifiers of the persons or companies the alert is about.
    pub subject_hashes: Vec<String>,
}

fn opt(w: &mut Writer, v: &Option<String>) {
    match v {
        None => {
            w.u8(0);
        }
        Some(s) => {
            w.u8(1).str(s);
        }
    }
}

fn list(w: &mut Writer, v: &[String]) {
    w.count(v.len());
    for s in v {
        w.str(s);
    }
}

impl AuditEntry {
    /// An entry of `kind` at `at_ms` with every optional field empty.
    pub fn new(kind: EntryKind, at_ms: i64) -> Self {
        Self {
            index: 0,
            kind,
            at_ms,
            alert_id: None,
            publisher: None,
            recipient: None,
            topic: None,
            alert_type: None,
            rule_id: None,
            legal_basis: None,
            purpose: None,
            fields: Vec::new(),
            disclosed_digest: None,
            envelope_hash: None,
            signature: None,
            policy_version: None,
            share_id: None,
            reason_code: None,
            reason: None,
            subject_hashes: Vec::new(),
        }
    }

    /// The exact bytes that are hashed (layout in `docs/PROTOCOL.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_tag(TAG_AUDIT_ENTRY);
        w.u64(self.index).str(self.kind.as_str()).i64(self.at_ms);
        for v in [
            &self.alert_id,
            &self.publisher,
            &self.recipient,
            &self.topic,
            &self.alert_type,
            &self.rule_id,
            &self.legal_basis,
            &self.purpose,
        ] {
            opt(&mut w, v);
        }
        list(&mut w, &self.fields);
        for v in [
            &self.disclosed_digest,
            &self.envelope_hash,
            &self.signature,
            &self.policy_version,
            &self.share_id,
            &self.reason_code,
            &self.reason,
        ] {
            opt(&mut w, v);
        }
        list(&mut w, &self.subject_hashes);
        w.finish()
    }

    /// The Merkle leaf hash, `SHA-256(0x00 ‖ encoding)` (RFC 6962 section 2.1).
    pub fn leaf_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(self.encode());
        h.finalize().into()
    }
}

/// Hex SHA-256 over the digests of the disclosed fields, in the order given
/// (callers pass them sorted): binds an entry to exactly what was disclosed.
pub fn disclosed_digest(digests: &[crate::Digest]) -> String {
    let mut w = Writer::with_tag("samverkan/v1/disclosed-set");
    w.count(digests.len());
    for d in digests {
        w.raw(d.as_bytes());
    }
    hex::encode(Sha256::digest(w.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_leaf() {
        let mut e = AuditEntry::new(EntryKind::Share, 1);
        e.alert_id = Some("a".into());
        e.fields = vec!["x".into()];
        let base = e.leaf_hash();
        let mut variants = Vec::new();
        let mut v = e.clone();
        v.index = 1;
        variants.push(v);
        let mut v = e.clone();
        v.kind = EntryKind::Denial;
        variants.push(v);
        let mut v = e.clone();
        v.alert_id = None;
        variants.push(v);
        let mut v = e.clone();
        v.alert_id = Some(String::new());
        variants.push(v);
        let mut v = e.clone();
        v.fields = vec![];
        variants.push(v);
        let mut v = e.clone();
        v.reason = Some("r".into());
        variants.push(v);
        let mut v = e.clone();
        // Moving a value between adjacent fields must not collide.
        v.alert_id = None;
        v.publisher = Some("a".into());
        variants.push(v);
        for v in variants {
            assert_ne!(v.leaf_hash(), base, "{v:?}");
        }
        assert_eq!(
            EntryKind::parse("policy_loaded"),
            Some(EntryKind::PolicyLoaded)
        );
    }
}
