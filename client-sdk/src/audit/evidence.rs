//! The evidence bundle for one audit entry, and its offline check.
//!
//! A bundle lets legal staff prove a share (or denial, refusal,
//! acknowledgement) to someone who trusts only the broker's public key:
//!
//! * the entry itself (its fields; the leaf hash is recomputed from them);
//! * an inclusion proof of that leaf in a signed checkpoint — sibling hashes
//!   only, never other entries;
//! * the publisher's signed envelope *without* disclosures (header, digests,
//!   signature: no field values), so the publisher's signature is checked too;
//! * every file of the policy version the entry names, so the version hash is
//!   recomputed and the rule and legal basis text shown are the ones in force.
//!
//! The bundle is pretty-printed JSON in a canonical form: the check refuses
//! any byte that differs from the canonical form of what it parsed, and the
//! parts whose text could vary without changing what they mean (the order of
//! `policy_files`, the case of hex digits, the checkpoint's signature lines)
//! have exactly one allowed form, so no byte of a bundle can be changed
//! without the check failing.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::AuditProofError;
use super::checkpoint::{SignedCheckpoint, check_exact_note, verify_checkpoint};
use super::cosignature::{join_note, split_note, verify_cosignatures};
use super::entry::{AuditEntry, EntryKind};
use super::proof::{parse_hashes, verify_inclusion};
use super::witnesses::{WITNESSES_FILE, WitnessPolicy};
use crate::encoding::Writer;
use crate::envelope::Envelope;
use crate::keys::KeyRegistry;
use crate::messages::envelope_hash;

/// The format name of version 1 bundles (the broker's signature only).
pub const BUNDLE_FORMAT: &str = "samverkan-evidence/v1";
/// The format name of version 2 bundles: the checkpoint also carries the
/// witnesses' cosignatures that meet the quorum of the entry's policy.
pub const BUNDLE_FORMAT_V2: &str = "samverkan-evidence/v2";
/// Domain tag of the policy version hash.
pub const TAG_POLICY_VERSION: &str = "samverkan/v1/policy-version";

/// A file of a policy set, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Path relative to the policy directory, `/`-separated.
    pub path: String,
    /// The exact text.
    pub text: String,
}

/// The version of a policy set: `sha256:` and the hex SHA-256 over the count
/// of files and each file's path and text, length-prefixed, in path order.
pub fn policy_version(files: &[PolicyFile]) -> String {
    let mut sorted: Vec<&PolicyFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut w = Writer::with_tag(TAG_POLICY_VERSION);
    w.count(sorted.len());
    for f in sorted {
        w.str(&f.path).str(&f.text);
    }
    format!("sha256:{}", hex::encode(Sha256::digest(w.finish())))
}

/// Evidence for one audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBundle {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The entry.
    pub entry: AuditEntry,
    /// A broker-signed checkpoint whose tree contains the entry.
    pub checkpoint: String,
    /// The inclusion proof (hex node hashes, bottom-up).
    pub inclusion_proof: Vec<String>,
    /// The publisher's envelope without disclosures, when the entry concerns a stored alert.
    pub envelope: Option<Envelope>,
    /// Every file of the policy version the entry names.
    pub policy_files: Vec<PolicyFile>,
}

/// What a successful check established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceReport {
    /// The entry.
    pub entry: AuditEntry,
    /// The checkpoint that includes it.
    pub checkpoint: SignedCheckpoint,
    /// Whether the publisher's signature was checked (share and denial entries).
    pub publisher_signature_checked: bool,
    /// The text of the rule, as written in the policy version in force.
    pub rule_text: Option<String>,
    /// The text of the legal basis, as written in that version.
    pub legal_basis_text: Option<String>,
    /// The witnesses (agency ids) whose cosignatures verified, sorted.
    pub cosigners: Vec<String>,
    /// The quorum of the entry's policy (`none` when it has no witnesses);
    /// a bundle passes the check only if it is met.
    pub quorum: String,
}

/// The witness policy among a bundle's policy files (none if absent: policy
/// versions from before witnesses).
pub fn witness_policy_of(files: &[PolicyFile]) -> Result<WitnessPolicy, AuditProofError> {
    match files.iter().find(|f| f.path == WITNESSES_FILE) {
        None => Ok(WitnessPolicy::none()),
        Some(f) => WitnessPolicy::from_toml(&f.text, std::path::Path::new(WITNESSES_FILE), None)
            .map_err(|e| {
                AuditProofError::MalformedBundle(
                    e.first().map(|e| e.to_string()).unwrap_or_default(),
                )
            }),
    }
}

/// Checks that `note` is the broker's note for `checkpoint` (text exactly as
/// signed, the broker's signature line first) followed by one or more
/// cosignature lines of witnesses of `policy`, sorted and each once, every
/// one verifying. Returns the witnesses (agency ids) that cosigned.
pub fn check_cosigned_note(
    note: &str,
    checkpoint: &SignedCheckpoint,
    policy: &WitnessPolicy,
) -> Result<Vec<String>, AuditProofError> {
    let malformed = |m: String| AuditProofError::MalformedCheckpoint(m);
    let (text, lines) = split_note(note)?;
    let Some((broker, cosignatures)) = lines.split_first() else {
        return Err(malformed("no signature line".into()));
    };
    check_exact_note(&join_note(&text, std::slice::from_ref(broker)), checkpoint)?;
    if cosignatures.is_empty() {
        return Err(malformed(
            "a version 2 bundle's checkpoint carries cosignatures".into(),
        ));
    }
    if cosignatures.windows(2).any(|w| w[0] >= w[1]) {
        return Err(malformed(
            "cosignature lines must follow the broker's line sorted, each once".into(),
        ));
    }
    let verified = verify_cosignatures(&join_note(&text, cosignatures), &policy.keys())?;
    if verified.len() != cosignatures.len()
        || verified.iter().zip(cosignatures).any(|(v, l)| v.line != *l)
    {
        return Err(malformed(
            "a signature line is not a cosignature of a witness of the entry's policy".into(),
        ));
    }
    let mut cosigners: Vec<String> = verified
        .iter()
        .filter_map(|c| policy.by_key_name(&c.name).map(|w| w.agency.clone()))
        .collect();
    cosigners.sort();
    Ok(cosigners)
}

impl EvidenceBundle {
    /// The canonical bytes of the bundle (what `audit prove` writes), with
    /// `policy_files` sorted by path as bytes.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let mut sorted = self.clone();
        sorted.policy_files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut out = serde_json::to_vec_pretty(&sorted).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Whether `s` is 64 lowercase hex digits (the only form of a proof hash).
fn is_lower_hex_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The `[[<table>]]` block of a TOML file that contains `id = "<id>"`, as written.
pub fn block_with_id(text: &str, table: &str, id: &str) -> Option<String> {
    let header = format!("[[{table}]]");
    let needle = format!("id = \"{id}\"");
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.trim() == header || blocks.is_empty() {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
        .into_iter()
        .find(|b| b.trim_start().starts_with(&header) && b.lines().any(|l| l.trim() == needle))
        .map(|b| {
            // Stop before trailing comments that introduce the next block.
            let mut lines: Vec<&str> = b.lines().collect();
            while lines
                .last()
                .is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                lines.pop();
            }
            lines.join("\n") + "\n"
        })
}

/// Checks a bundle offline with nothing but its bytes and the broker's
/// public keys (`broker-keys.toml`).
pub fn check_bundle(
    bytes: &[u8],
    broker_keys: &KeyRegistry,
) -> Result<EvidenceReport, AuditProofError> {
    let malformed = |m: String| AuditProofError::MalformedBundle(m);
    let mismatch = |m: String| AuditProofError::Mismatch(m);
    let bundle: EvidenceBundle =
        crate::json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    if bundle.to_canonical_json() != bytes {
        return Err(malformed(
            "the file is not in the canonical form written by `audit prove` (it was edited)".into(),
        ));
    }
    if let Some(i) = bundle
        .inclusion_proof
        .iter()
        .position(|h| !is_lower_hex_hash(h))
    {
        return Err(malformed(format!(
            "inclusion_proof[{i}] is not 64 lowercase hex digits"
        )));
    }
    if let Some(pair) = bundle
        .policy_files
        .windows(2)
        .find(|w| w[0].path.as_bytes() >= w[1].path.as_bytes())
    {
        return Err(malformed(format!(
            "policy_files must be sorted by path, each once (`{}` before `{}`)",
            pair[0].path, pair[1].path
        )));
    }
    let cosigned = match bundle.format.as_str() {
        BUNDLE_FORMAT => false,
        BUNDLE_FORMAT_V2 => true,
        other => return Err(malformed(format!("unknown format `{other}`"))),
    };

    // 1. The checkpoint is the broker's, exactly as the broker signed it:
    // version 1 bundles carry no other signature line (version 2 bundles'
    // cosignatures are checked once the policy version is known, step 3).
    let checkpoint = verify_checkpoint(&bundle.checkpoint, broker_keys)?;
    if !cosigned {
        check_exact_note(&bundle.checkpoint, &checkpoint)
            .map_err(|e| malformed(format!("checkpoint: {e}")))?;
    }

    // 2. The entry, as given, is a leaf of that tree.
    let entry = &bundle.entry;
    let proof = parse_hashes(&bundle.inclusion_proof)?;
    verify_inclusion(
        entry.index,
        checkpoint.size,
        &entry.leaf_hash(),
        &proof,
        &checkpoint.root,
    )?;

    // 3. The policy version the entry names is exactly these files.
    let version = policy_version(&bundle.policy_files);
    if entry.policy_version.as_deref() != Some(version.as_str()) {
        return Err(mismatch(format!(
            "the policy files hash to {version}, the entry names {}",
            entry.policy_version.as_deref().unwrap_or("no version")
        )));
    }
    let file = |path: &str| bundle.policy_files.iter().find(|f| f.path == path);

    // 3b. The witnesses of that policy cosigned the checkpoint, up to its quorum.
    let witnesses = witness_policy_of(&bundle.policy_files)?;
    let cosigners = if cosigned {
        check_cosigned_note(&bundle.checkpoint, &checkpoint, &witnesses)
            .map_err(|e| malformed(format!("checkpoint: {e}")))?
    } else {
        Vec::new()
    };
    let signed: std::collections::BTreeSet<String> = cosigners.iter().cloned().collect();
    if !witnesses.quorum_met(&signed) {
        let missing: Vec<&str> = witnesses
            .witnesses()
            .keys()
            .filter(|w| !signed.contains(*w))
            .map(String::as_str)
            .collect();
        return Err(AuditProofError::Quorum(format!(
            "the entry's policy requires the quorum `{}`; cosigned by [{}], not by [{}]",
            witnesses.quorum_name(),
            cosigners.join(", "),
            missing.join(", ")
        )));
    }

    // 4. The publisher signed the alert the entry is about.
    let mut publisher_signature_checked = false;
    if matches!(entry.kind, EntryKind::Share | EntryKind::Denial) {
        let envelope = bundle
            .envelope
            .as_ref()
            .ok_or_else(|| malformed("a share or denial needs the publisher's envelope".into()))?;
        if !envelope.disclosures.is_empty() {
            return Err(malformed(
                "the envelope must carry no disclosures (no field values)".into(),
            ));
        }
        let h = &envelope.header;
        if entry.envelope_hash.as_deref() != Some(envelope_hash(envelope).as_str())
            || entry.alert_id.as_deref() != Some(h.alert_id.as_str())
            || entry.publisher.as_deref() != Some(h.publisher.as_str())
        {
            return Err(mismatch(
                "the envelope is not the alert the entry names".into(),
            ));
        }
        use base64::Engine;
        let signature =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&envelope.signature.0);
        if entry.signature.as_deref() != Some(signature.as_str()) {
            return Err(mismatch(
                "the entry records another signature than the envelope's".into(),
            ));
        }
        let keys_file =
            file("keys.toml").ok_or_else(|| malformed("keys.toml is missing".into()))?;
        let keys = KeyRegistry::from_toml(&keys_file.text, std::path::Path::new("keys.toml"))
            .map_err(|e| {
                malformed(format!(
                    "keys.toml: {}",
                    e.first().map(|e| e.to_string()).unwrap_or_default()
                ))
            })?;
        envelope
            .verify(&keys)
            .map_err(|e| mismatch(format!("the publisher's signature: {e}")))?;
        publisher_signature_checked = true;
    }

    // 5. The rule and legal basis text of that version.
    let rule_text = entry.rule_id.as_ref().and_then(|id| {
        bundle
            .policy_files
            .iter()
            .filter(|f| f.path.starts_with("rules/"))
            .find_map(|f| block_with_id(&f.text, "rule", id))
    });
    if entry.kind == EntryKind::Share && rule_text.is_none() {
        return Err(mismatch(format!(
            "rule `{}` is not in the policy files",
            entry.rule_id.as_deref().unwrap_or("")
        )));
    }
    let legal_basis_text = entry.legal_basis.as_ref().and_then(|id| {
        file("legal-bases.toml").and_then(|f| block_with_id(&f.text, "legal_basis", id))
    });
    if entry.kind == EntryKind::Share && legal_basis_text.is_none() {
        return Err(mismatch(
            "the legal basis is not in the policy files".into(),
        ));
    }
    Ok(EvidenceReport {
        entry: entry.clone(),
        checkpoint,
        publisher_signature_checked,
        rule_text,
        legal_basis_text,
        cosigners,
        quorum: witnesses.quorum_name().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_found_by_id() {
        let text =
            "# header\n\n[[rule]]\nid = \"a\"\nx = 1\n\n# about b\n[[rule]]\nid = \"b\"\ny = 2\n";
        assert_eq!(
            block_with_id(text, "rule", "a").unwrap(),
            "[[rule]]\nid = \"a\"\nx = 1\n"
        );
        assert_eq!(
            block_with_id(text, "rule", "b").unwrap(),
            "[[rule]]\nid = \"b\"\ny = 2\n"
        );
        assert_eq!(block_with_id(text, "rule", "c"), None);
    }

    #[test]
    fn version_is_order_independent_and_content_sensitive() {
        let a = PolicyFile {
            path: "a".into(),
            text: "1".into(),
        };
        let b = PolicyFile {
            path: "b".into(),
            text: "2".into(),
        };
        assert_eq!(
            policy_version(&[a.clone(), b.clone()]),
            policy_version(&[b.clone(), a.clone()])
        );
        let b2 = PolicyFile {
            path: "b".into(),
            text: "2 ".into(),
        };
        assert_ne!(policy_version(&[a.clone(), b]), policy_version(&[a, b2]));
    }
}
