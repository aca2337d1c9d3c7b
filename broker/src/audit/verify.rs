//! `audit verify`: recompute the whole log, hold it against every signed
//! checkpoint, and hold everything else the database keeps against what the
//! log commits to.
//!
//! Checkpoints first, as a sequence: each is the broker's, stored as signed,
//! exactly in the broker's form, with a time that never goes backwards, and
//! naming (`prev`) the checkpoint stored before it, so a deleted checkpoint
//! row is found. Then, streaming the entries in chunks, for every entry: the
//! index must be the next one (a deleted row leaves a gap), its leaf hash
//! recomputed from the stored columns must equal the stored one (an edited
//! row), and the stored tree hashes must equal the recomputed ones (an
//! edited tree); at every checkpoint size the recomputed root must equal the
//! signed root. For share and denial entries, the stored alert (its signed
//! envelope, its content unless purged, the broker-signed receipt) and for
//! shares the stored delivery (its broker-signed stamp and disclosures,
//! unless purged) must be what the entry records; an entry edited with its
//! leaf hashes and tree recomputed still differs from the receipt, which
//! names it. Content may be missing only where a later `retention_purge`
//! entry of its alert type has a cut-off after it. The archived text of
//! every policy version must hash to its version, and every version an
//! entry names must be archived.
//!
//! What cannot be seen from the database alone: the newest entries removed
//! together with the checkpoints covering them (a rollback) — only
//! checkpoints kept outside it (`witnessed`) show that.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::Engine as _;
use samverkan_sdk::audit::checkpoint::{SignedCheckpoint, check_exact_note, verify_checkpoint};
use samverkan_sdk::audit::evidence::policy_version;
use samverkan_sdk::envelope::Digest;
use samverkan_sdk::keys::KeyRegistry;
use samverkan_sdk::messages::{
    BROKER_KEY_OWNER, Delivery, MessageError, Receipt, ReceiptStatus, ShareStamp, Signed,
    TAG_RECEIPT, TAG_SHARE_STAMP, envelope_hash,
};
use samverkan_sdk::{Envelope, time::parse_rfc3339_ms};
use thiserror::Error;

use super::tree::Frontier;
use super::{AuditEntry, EntryKind, disclosed_digest};
use crate::store::console::{DayKey, day_counts as day_counts_of};
use crate::store::{AuditFilter, Store, StoreError, StoredAlert, StoredDelivery};

/// Entries read per query.
const CHUNK: u64 = 5_000;
/// Checkpoints read per query.
const CHECKPOINT_PAGE: u32 = 1_000;

/// The first thing found wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry is missing (deleted).
    #[error("entry {index} is missing: the log jumps from {before} to {after}")]
    Missing {
        /// The first missing index.
        index: u64,
        /// The last index present before the gap, if any.
        before: String,
        /// The next index present.
        after: u64,
    },
    /// An entry's columns do not match its leaf hash (the row was edited).
    #[error(
        "entry {index} does not match its recorded hash: its content was changed after it was written"
    )]
    EntryChanged {
        /// The entry.
        index: u64,
    },
    /// An entry differs from a record the broker signed about it (the row
    /// was edited, and its leaf hash and tree recomputed).
    #[error(
        "entry {index} differs from the {record} the broker signed for it ({field}): it was changed after it was written"
    )]
    EntryDiffers {
        /// The entry.
        index: u64,
        /// Which signed record.
        record: &'static str,
        /// Which field differs.
        field: String,
    },
    /// The stored tree does not match the entries (edited leaf hashes or tree).
    #[error(
        "entry {index}: the stored Merkle tree does not match the entries (tree hash {stored_index} differs)"
    )]
    TreeChanged {
        /// The first entry whose tree hashes differ.
        index: u64,
        /// The stored hash index that differs.
        stored_index: u64,
    },
    /// A checkpoint's signature, format or place in the sequence is bad.
    #[error("checkpoint of size {size}: {reason}")]
    BadCheckpoint {
        /// Its size.
        size: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint names a predecessor that is not stored.
    #[error(
        "the signed checkpoint of size {size} is missing: the checkpoint of size {next} names it as the one signed before it"
    )]
    CheckpointMissing {
        /// The missing checkpoint's size.
        size: u64,
        /// The checkpoint that names it.
        next: u64,
    },
    /// The log does not produce the root a checkpoint signed.
    #[error(
        "the log does not match the signed checkpoint of size {size}: one of entries {from} to {to} was changed, removed or replaced after it was signed, and the leaf hashes and tree were recomputed to hide it; no record signed by the broker names which"
    )]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The first entry that may differ (just after the last matching checkpoint).
        from: u64,
        /// The last entry covered by the checkpoint.
        to: u64,
    },
    /// A checkpoint covers more entries than the log has.
    #[error(
        "the log was rolled back: a signed checkpoint covers {size} entries but the log has only {entries}"
    )]
    Truncated {
        /// The checkpoint's size.
        size: u64,
        /// Entries present.
        entries: u64,
    },
    /// Archived policy text does not hash to its version, or is missing.
    #[error("policy version {version}: {reason}")]
    Policy {
        /// The version.
        version: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored alert row differs from what the log records about it.
    #[error("the stored {what} of alert {alert_id}: {reason}")]
    Alert {
        /// Which part of the row.
        what: &'static str,
        /// The alert.
        alert_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored delivery differs from the share entry it belongs to.
    #[error("the stored delivery of entry {index}: {reason}")]
    Delivery {
        /// The share entry.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// The subject index differs from the entries' subject hashes.
    #[error(
        "the subject index of entry {index} differs from the entry's subject hashes: subject lookups would give a wrong answer"
    )]
    Subjects {
        /// The entry.
        index: u64,
    },
    /// Rows refer to entries the log does not have.
    #[error("{0}")]
    Orphans(String),
    /// The console overview's day counts differ from the log.
    #[error(
        "the overview's day counts (audit_day_counts) differ from the log: {0} (the overview would show other numbers than the entries)"
    )]
    DayCounts(String),
}

/// What a successful verification covered.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Entries verified.
    pub entries: u64,
    /// Checkpoints verified (stored and given).
    pub checkpoints: usize,
    /// Checkpoints kept outside the database that were given.
    pub witnessed: usize,
    /// The largest verified checkpoint.
    pub last_checkpoint: Option<SignedCheckpoint>,
    /// The recomputed root of the whole log.
    pub root: [u8; 32],
    /// Archived policy versions whose text was hashed.
    pub policy_versions: usize,
    /// Alert rows checked against their entries.
    pub alerts: u64,
    /// Delivery rows checked against their share entries.
    pub deliveries: u64,
    /// Alert contents and delivery payloads found purged by retention.
    pub purged: u64,
}

/// A checkpoint's size and root, as the entry pass needs them.
struct Target {
    size: u64,
    root: [u8; 32],
}

/// The retention purges of one alert type: `(entry index, cut-off)` in
/// index order, with the largest cut-off from each position on.
#[derive(Default)]
struct Purges {
    by_index: Vec<(u64, i64)>,
    max_after: Vec<i64>,
}

impl Purges {
    /// Whether a purge recorded after entry `index` removed content received at `at_ms`.
    fn covers(&self, index: u64, at_ms: i64) -> bool {
        let first_later = self.by_index.partition_point(|(i, _)| *i <= index);
        self.max_after
            .get(first_later)
            .is_some_and(|cutoff| *cutoff > at_ms)
    }
}

/// The retention purges of every alert type.
struct PurgeIndex(HashMap<String, Purges>);

impl PurgeIndex {
    /// Whether a purge of `alert_type` recorded after entry `index` removed
    /// content received at `at_ms`.
    fn covers(&self, alert_type: &str, index: u64, at_ms: i64) -> bool {
        self.0
            .get(alert_type)
            .is_some_and(|p| p.covers(index, at_ms))
    }
}

/// Reads the cut-off from a `retention_purge` entry's reason ("… received
/// before <RFC 3339 time> purged …").
fn purge_cutoff(entry: &AuditEntry) -> Option<i64> {
    let reason = entry.reason.as_deref()?;
    let (_, rest) = reason.split_once("received before ")?;
    let (time, _) = rest.split_once(" purged")?;
    parse_rfc3339_ms(time)
}

async fn load_purges(store: &Store) -> Result<HashMap<String, Purges>, VerifyFailure> {
    let entries = store
        .audit_query(&AuditFilter {
            kind: Some(EntryKind::RetentionPurge),
            ..AuditFilter::default()
        })
        .await?;
    let mut out: HashMap<String, Purges> = HashMap::new();
    for e in &entries {
        let cutoff = purge_cutoff(e).ok_or_else(|| VerifyFailure::EntryDiffers {
            index: e.index,
            record: "retention purge format",
            field: "reason has no readable cut-off".into(),
        })?;
        let alert_type = e.alert_type.clone().unwrap_or_default();
        out.entry(alert_type)
            .or_default()
            .by_index
            .push((e.index, cutoff));
    }
    for p in out.values_mut() {
        p.by_index.sort_unstable();
        let mut max = i64::MIN;
        p.max_after = vec![i64::MIN; p.by_index.len()];
        for (i, (_, cutoff)) in p.by_index.iter().enumerate().rev() {
            max = max.max(*cutoff);
            p.max_after[i] = max;
        }
    }
    Ok(out)
}

/// Hashes the archived text of every policy version; returns the versions.
async fn check_policies(store: &Store) -> Result<HashSet<String>, VerifyFailure> {
    let mut verified = HashSet::new();
    for (version, _) in store.policy_versions().await? {
        let files = store
            .policy_files(&version)
            .await
            .map_err(|e| VerifyFailure::Policy {
                version: version.clone(),
                reason: format!("the archived text cannot be read: {e}"),
            })?
            .unwrap_or_default();
        let computed = policy_version(&files);
        if computed != version {
            return Err(VerifyFailure::Policy {
                version,
                reason: format!(
                    "the archived text hashes to {computed}: it was changed after it was archived"
                ),
            });
        }
        verified.insert(version);
    }
    Ok(verified)
}

/// Checks the stored checkpoints as a sequence, page by page, and returns
/// their sizes and roots together with the witnessed ones, by size.
async fn check_checkpoints(
    store: &Store,
    broker_keys: &KeyRegistry,
    witnessed: &[String],
) -> Result<(Vec<Target>, usize, Option<SignedCheckpoint>), VerifyFailure> {
    let bad = |size: u64, reason: String| VerifyFailure::BadCheckpoint { size, reason };
    let mut targets = Vec::new();
    let mut previous: Option<SignedCheckpoint> = None;
    let mut origin: Option<String> = None;
    let mut after = None;
    let mut newest = None;
    loop {
        let page = store.checkpoints_after(after, CHECKPOINT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.size);
        for stored in page {
            let cp = verify_checkpoint(&stored.note, broker_keys)
                .map_err(|e| bad(stored.size, e.to_string()))?;
            check_exact_note(&stored.note, &cp).map_err(|e| {
                bad(
                    stored.size,
                    format!("the stored note is not as signed: {e}"),
                )
            })?;
            if cp.size != stored.size || cp.root != stored.root || cp.time_ms != stored.at_ms {
                return Err(bad(
                    stored.size,
                    "the stored size, root or time differs from the signed note".into(),
                ));
            }
            match &origin {
                Some(o) if *o != cp.origin => {
                    return Err(bad(
                        cp.size,
                        format!("signed for another log, `{}`", cp.origin),
                    ));
                }
                Some(_) => {}
                None => origin = Some(cp.origin.clone()),
            }
            if let Some(prev) = &previous
                && cp.time_ms < prev.time_ms
            {
                return Err(bad(
                    cp.size,
                    format!(
                        "signed at {} ms, before the smaller checkpoint of size {} ({} ms): times go backwards",
                        cp.time_ms, prev.size, prev.time_ms
                    ),
                ));
            }
            match (cp.prev, previous.as_ref().map(|p| p.size)) {
                (Some(named), Some(stored_before)) if named > stored_before => {
                    return Err(VerifyFailure::CheckpointMissing {
                        size: named,
                        next: cp.size,
                    });
                }
                (Some(named), None) => {
                    return Err(VerifyFailure::CheckpointMissing {
                        size: named,
                        next: cp.size,
                    });
                }
                (Some(named), Some(stored_before)) if named < stored_before => {
                    return Err(bad(
                        cp.size,
                        format!(
                            "it follows the checkpoint of size {named}, but one of size {stored_before} is stored in between that the broker never chained"
                        ),
                    ));
                }
                _ => {}
            }
            targets.push(Target {
                size: cp.size,
                root: cp.root,
            });
            newest = Some(cp.clone());
            previous = Some(cp);
        }
    }
    for note in witnessed {
        let cp = verify_checkpoint(note, broker_keys)
            .map_err(|e| bad(0, format!("kept checkpoint: {e}")))?;
        if let Some(o) = &origin
            && *o != cp.origin
        {
            return Err(bad(
                cp.size,
                format!("kept checkpoint signed for another log, `{}`", cp.origin),
            ));
        }
        targets.push(Target {
            size: cp.size,
            root: cp.root,
        });
        if newest.as_ref().is_none_or(|n| n.size < cp.size) {
            newest = Some(cp);
        }
    }
    targets.sort_by_key(|t| t.size);
    let count = targets.len();
    Ok((targets, count, newest))
}

/// The alerts of one chunk, each parsed and checked once.
struct ChunkAlerts {
    rows: HashMap<(String, String), StoredAlert>,
    receipts: HashMap<(String, String), Receipt>,
    /// Share entries of the chunk whose stamp, rebuilt from the entry, does
    /// not carry the broker's signature: the entry was changed.
    bad_stamps: BTreeSet<u64>,
    /// The stamps of the chunk's deliveries, each verified once.
    stamps: HashMap<u64, Result<ShareStamp, String>>,
    /// The indexes of the chunk's entries, and the chunk's range.
    present: BTreeSet<u64>,
    range: (u64, u64),
}

impl ChunkAlerts {
    /// The first entry of `[first, end)` within the chunk that is missing:
    /// a receipt rebuilt without it cannot verify, and the gap is the cause.
    fn missing(&self, first: u64, end: u64) -> Option<VerifyFailure> {
        let (from, to) = self.range;
        let index = (first.max(from)..end.min(to)).find(|i| !self.present.contains(i))?;
        let after = self.present.range(index..).next().copied().unwrap_or(to);
        Some(VerifyFailure::Missing {
            index,
            before: index
                .checked_sub(1)
                .map(|i| i.to_string())
                .unwrap_or_else(|| "the start".into()),
            after,
        })
    }
}

/// Verifies the log in `store`; `progress(done, total)` is called after each chunk.
pub async fn verify_log(
    store: &Store,
    broker_keys: &KeyRegistry,
    witnessed: &[String],
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let (_count, next) = store.audit_extent().await?;
    let (targets, verified_checkpoints, newest) =
        check_checkpoints(store, broker_keys, witnessed).await?;
    if let Some(largest) = targets.last()
        && largest.size > next
    {
        return Err(VerifyFailure::Truncated {
            size: largest.size,
            entries: next,
        });
    }
    let policies = check_policies(store).await?;
    let purges = PurgeIndex(load_purges(store).await?);

    let mut frontier = Frontier::empty();
    let mut pending = targets.iter().peekable();
    let mut last_good: u64 = 0;
    let mut report = VerifyReport {
        entries: 0,
        checkpoints: verified_checkpoints,
        witnessed: witnessed.len(),
        last_checkpoint: newest,
        root: [0; 32],
        policy_versions: policies.len(),
        alerts: 0,
        deliveries: 0,
        purged: 0,
    };
    // Checkpoints of the empty log.
    while let Some(cp) = pending.next_if(|cp| cp.size == 0) {
        if cp.root != frontier.root() {
            return Err(VerifyFailure::BadCheckpoint {
                size: 0,
                reason: "the root of an empty log must be SHA-256 of nothing".into(),
            });
        }
    }
    // The overview's day counts, recounted from the entries.
    let mut day_counts: BTreeMap<DayKey, i64> = BTreeMap::new();
    let mut from = 0u64;
    while from < next {
        let to = (from + CHUNK).min(next);
        let rows = store.audit_range_with_leaves(from, to).await?;
        for (key, n) in day_counts_of(rows.iter().map(|(e, _)| e)) {
            *day_counts.entry(key).or_default() += n;
        }
        let first_stored = tlog_tiles::tlog::stored_hash_index(0, from);
        let end_stored = tlog_tiles::tlog::stored_hash_index(0, to);
        let stored_tree = store.tree_hash_range(first_stored, end_stored).await?;
        let mut stored_tree = stored_tree.into_iter().peekable();
        let mut alerts = ChunkAlerts {
            rows: HashMap::new(),
            receipts: HashMap::new(),
            bad_stamps: BTreeSet::new(),
            stamps: HashMap::new(),
            present: rows.iter().map(|(e, _)| e.index).collect(),
            range: (from, to),
        };
        for a in store.alerts_of_entries(from, to).await? {
            alerts
                .rows
                .insert((a.publisher.clone(), a.alert_id.clone()), a);
        }
        let mut deliveries: HashMap<u64, Vec<StoredDelivery>> = HashMap::new();
        for d in store.deliveries_of_entries(from, to).await? {
            if let Some(bytes) = &d.stamp {
                let verified = Signed::from_json(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        s.verify::<ShareStamp>(TAG_SHARE_STAMP, broker_keys, BROKER_KEY_OWNER)
                            .map_err(|e| e.to_string())
                    });
                if verified.is_err() {
                    alerts.bad_stamps.insert(d.audit_idx);
                }
                alerts.stamps.insert(d.audit_idx, verified);
            }
            deliveries.entry(d.audit_idx).or_default().push(d);
        }
        let mut subjects: HashMap<u64, Vec<String>> = HashMap::new();
        for (hash, idx) in store.subjects_of_entries(from, to).await? {
            subjects.entry(idx).or_default().push(hash);
        }
        for (entry, stored_leaf) in rows {
            let expected = frontier.size();
            if entry.index != expected {
                return Err(VerifyFailure::Missing {
                    index: expected,
                    before: expected
                        .checked_sub(1)
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "the start".into()),
                    after: entry.index,
                });
            }
            let leaf = entry.leaf_hash();
            if stored_leaf != leaf {
                return Err(VerifyFailure::EntryChanged { index: entry.index });
            }
            for (idx, hash) in frontier.append(leaf) {
                match stored_tree.next() {
                    Some((stored_idx, stored_hash)) if stored_idx == idx && stored_hash == hash => {
                    }
                    _ => {
                        return Err(VerifyFailure::TreeChanged {
                            index: entry.index,
                            stored_index: idx,
                        });
                    }
                }
            }
            // The rows that depend on the entry, after its hashes and tree.
            check_related(
                &entry,
                &policies,
                &mut alerts,
                deliveries.remove(&entry.index).unwrap_or_default(),
                subjects.remove(&entry.index).unwrap_or_default(),
                broker_keys,
                &purges,
                &mut report,
            )?;
            while let Some(cp) = pending.next_if(|cp| cp.size == frontier.size()) {
                if cp.root != frontier.root() {
                    return Err(VerifyFailure::RootMismatch {
                        size: cp.size,
                        from: last_good,
                        to: cp.size - 1,
                    });
                }
                last_good = cp.size;
            }
        }
        if frontier.size() != to {
            return Err(VerifyFailure::Missing {
                index: frontier.size(),
                before: frontier
                    .size()
                    .checked_sub(1)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "the start".into()),
                after: to,
            });
        }
        report.alerts += alerts.receipts.len() as u64;
        from = to;
        progress(from, next);
    }
    if let Some(cp) = pending.next() {
        return Err(VerifyFailure::Truncated {
            size: cp.size,
            entries: frontier.size(),
        });
    }
    let (deliveries, subject_rows, alerts) = store.rows_without_entries(frontier.size()).await?;
    if deliveries + subject_rows + alerts > 0 {
        return Err(VerifyFailure::Orphans(format!(
            "{deliveries} deliveries, {subject_rows} subject index rows and {alerts} alerts refer to entries the log does not have: entries were removed (a rollback of the newest entries leaves exactly this)"
        )));
    }
    let stored: BTreeMap<DayKey, i64> = store.day_count_rows().await?.into_iter().collect();
    if stored != day_counts {
        let differs = day_counts
            .keys()
            .chain(stored.keys())
            .find(|k| day_counts.get(*k) != stored.get(*k));
        return Err(VerifyFailure::DayCounts(match differs {
            Some(k) => format!(
                "day {} (from {}), {} {} → {}: {} stored, {} in the log",
                k.day,
                samverkan_sdk::time::format_ms(k.day * 86_400_000 - 3_600_000),
                k.kind,
                k.publisher,
                k.recipient,
                stored.get(k).copied().unwrap_or(0),
                day_counts.get(k).copied().unwrap_or(0)
            ),
            None => "rows differ".into(),
        }));
    }
    report.entries = frontier.size();
    report.root = frontier.root();
    Ok(report)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks what else the database holds about one entry.
#[allow(clippy::too_many_arguments)]
fn check_related(
    entry: &AuditEntry,
    policies: &HashSet<String>,
    alerts: &mut ChunkAlerts,
    deliveries: Vec<StoredDelivery>,
    mut subjects: Vec<String>,
    broker_keys: &KeyRegistry,
    purges: &PurgeIndex,
    report: &mut VerifyReport,
) -> Result<(), VerifyFailure> {
    let index = entry.index;
    if let Some(v) = &entry.policy_version
        && !policies.contains(v)
    {
        return Err(VerifyFailure::Policy {
            version: v.clone(),
            reason: format!("entry {index} names it, but its text is not archived"),
        });
    }
    let mut recorded = entry.subject_hashes.clone();
    recorded.sort();
    recorded.dedup();
    subjects.sort();
    if subjects != recorded {
        return Err(VerifyFailure::Subjects { index });
    }
    let is_share = entry.kind == EntryKind::Share;
    if !is_share && !deliveries.is_empty() {
        return Err(VerifyFailure::Delivery {
            index,
            reason: "a delivery is stored for an entry that is not a share".into(),
        });
    }
    if !matches!(entry.kind, EntryKind::Share | EntryKind::Denial) {
        return Ok(());
    }
    let differs = |record: &'static str, field: &str| VerifyFailure::EntryDiffers {
        index,
        record,
        field: field.to_string(),
    };
    let (Some(publisher), Some(alert_id)) = (&entry.publisher, &entry.alert_id) else {
        return Err(differs("receipt", "no alert id or publisher"));
    };
    let key = (publisher.clone(), alert_id.clone());
    let Some(alert) = alerts.rows.get(&key) else {
        return Err(VerifyFailure::Alert {
            what: "row",
            alert_id: alert_id.clone(),
            reason: format!("entry {index} records it, but it is not stored"),
        });
    };
    if !alerts.receipts.contains_key(&key) {
        // The receipt is rebuilt from the alert's entries: if the broker's
        // signature does not cover it, one of them was changed, the first
        // share whose stamp does not verify either, or else this one.
        let changed = alerts
            .bad_stamps
            .range(alert.first_idx..alert.first_idx + alert.entries)
            .next()
            .copied()
            .unwrap_or(index);
        let receipt = check_alert(entry, alert, changed, broker_keys, purges, report).map_err(
            |e| match e {
                VerifyFailure::EntryDiffers {
                    record: "receipt", ..
                } => alerts
                    .missing(alert.first_idx, alert.first_idx + alert.entries)
                    .unwrap_or(e),
                e => e,
            },
        )?;
        alerts.receipts.insert(key.clone(), receipt);
    }
    let Some(receipt) = alerts.receipts.get(&key) else {
        return Ok(());
    };
    // The entry against the receipt the broker signed when it recorded it.
    if receipt.received_at_ms != entry.at_ms {
        return Err(differs("receipt", "time"));
    }
    if receipt.policy_version.as_str() != entry.policy_version.as_deref().unwrap_or("") {
        return Err(differs("receipt", "policy_version"));
    }
    if receipt.envelope_hash != entry.envelope_hash {
        return Err(differs("receipt", "envelope_hash"));
    }
    if is_share {
        let Some(s) = receipt.shares.iter().find(|s| s.audit_index == index) else {
            return Err(differs(
                "receipt",
                "the receipt lists no share at this index",
            ));
        };
        for (field, same) in [
            ("share_id", Some(&s.share_id) == entry.share_id.as_ref()),
            ("recipient", Some(&s.recipient) == entry.recipient.as_ref()),
            ("rule_id", Some(&s.rule_id) == entry.rule_id.as_ref()),
            (
                "legal_basis",
                Some(&s.legal_basis) == entry.legal_basis.as_ref(),
            ),
            ("purpose", Some(&s.purpose) == entry.purpose.as_ref()),
            ("fields", s.fields == entry.fields),
        ] {
            if !same {
                return Err(differs("receipt", field));
            }
        }
        let stamp = alerts.stamps.remove(&index);
        check_delivery(entry, deliveries, stamp, purges, report)?;
    } else {
        let Some(d) = receipt.denials.iter().find(|d| d.audit_index == index) else {
            return Err(differs(
                "receipt",
                "the receipt lists no denial at this index",
            ));
        };
        for (field, same) in [
            ("recipient", d.recipient == entry.recipient),
            ("rule_id", d.rule_id == entry.rule_id),
            ("reason_code", Some(&d.code) == entry.reason_code.as_ref()),
            ("reason", Some(&d.message) == entry.reason.as_ref()),
        ] {
            if !same {
                return Err(differs("receipt", field));
            }
        }
    }
    Ok(())
}

/// Checks an alert row once: its receipt is the broker's, its signed
/// envelope and content are the alert the entry records. Returns the receipt.
fn check_alert(
    entry: &AuditEntry,
    alert: &StoredAlert,
    changed: u64,
    broker_keys: &KeyRegistry,
    purges: &PurgeIndex,
    report: &mut VerifyReport,
) -> Result<Receipt, VerifyFailure> {
    let fail = |what: &'static str, reason: String| VerifyFailure::Alert {
        what,
        alert_id: alert.alert_id.clone(),
        reason,
    };
    let recorded_hash = entry.envelope_hash.as_deref().unwrap_or("");
    let recorded_signature = entry.signature.as_deref().unwrap_or("");
    if alert.envelope_hash != recorded_hash
        || Some(&alert.alert_type) != entry.alert_type.as_ref()
        || Some(&alert.topic) != entry.topic.as_ref()
        || Some(&alert.policy_version) != entry.policy_version.as_ref()
        || alert.received_at_ms != entry.at_ms
    {
        return Err(fail(
            "row",
            format!("its columns differ from entry {}", entry.index),
        ));
    }
    let receipt: Receipt = serde_json::from_slice::<Signed>(&alert.receipt)
        .map_err(|e| fail("receipt", e.to_string()))
        .and_then(|signed| {
            signed
                .verify(TAG_RECEIPT, broker_keys, BROKER_KEY_OWNER)
                .map_err(|e| match e {
                    MessageError::BadBrokerSignature => VerifyFailure::EntryDiffers {
                        index: changed,
                        record: "receipt",
                        field: "the receipt rebuilt from the alert's entries does not carry the broker's signature".into(),
                    },
                    e => fail("receipt", format!("not signed by the broker: {e}")),
                })
        })?;
    if receipt.status != ReceiptStatus::Accepted
        || receipt.alert_id.as_deref() != Some(alert.alert_id.as_str())
        || receipt.publisher != alert.publisher
    {
        return Err(fail("receipt", "it is the receipt of another alert".into()));
    }
    // The envelope without disclosures, kept for evidence.
    let envelope = Envelope::from_json(&alert.signed_envelope)
        .map_err(|e| fail("signed envelope", e.to_string()))?;
    if !envelope.disclosures.is_empty() {
        return Err(fail("signed envelope", "it carries field values".into()));
    }
    check_envelope(&envelope, entry, recorded_hash, recorded_signature)
        .map_err(|reason| fail("signed envelope", reason))?;
    // The complete envelope, or a purge that removed it.
    match &alert.content {
        Some(bytes) => {
            let content = Envelope::from_json(bytes).map_err(|e| fail("content", e.to_string()))?;
            check_envelope(&content, entry, recorded_hash, recorded_signature)
                .map_err(|reason| fail("content", reason))?;
            if content
                .disclosures
                .iter()
                .any(|d| !content.digests.contains(&Digest::of(&d.0)))
            {
                return Err(fail(
                    "content",
                    "a field value is not the one the publisher signed".into(),
                ));
            }
        }
        None => {
            if !purges.covers(&alert.alert_type, entry.index, alert.received_at_ms) {
                return Err(fail(
                    "content",
                    "it was removed, but no retention purge of its alert type recorded after it removed it".into(),
                ));
            }
            report.purged += 1;
        }
    }
    Ok(receipt)
}

/// An envelope is the alert an entry records: same header, digests and signature.
fn check_envelope(
    envelope: &Envelope,
    entry: &AuditEntry,
    recorded_hash: &str,
    recorded_signature: &str,
) -> Result<(), String> {
    let h = &envelope.header;
    if envelope_hash(envelope) != recorded_hash
        || Some(&h.alert_id) != entry.alert_id.as_ref()
        || Some(&h.publisher) != entry.publisher.as_ref()
    {
        return Err(format!(
            "it is not the alert entry {} records (its envelope hash differs)",
            entry.index
        ));
    }
    if b64url(&envelope.signature.0) != recorded_signature {
        return Err(format!(
            "its signature is not the one entry {} records",
            entry.index
        ));
    }
    Ok(())
}

/// Checks the one delivery of a share entry: its stamp is the broker's and
/// states what the entry records, and it discloses exactly the fields the
/// entry's disclosed digest binds; or a retention purge removed its payload.
fn check_delivery(
    entry: &AuditEntry,
    mut deliveries: Vec<StoredDelivery>,
    stamp: Option<Result<ShareStamp, String>>,
    purges: &PurgeIndex,
    report: &mut VerifyReport,
) -> Result<(), VerifyFailure> {
    let index = entry.index;
    let fail = |reason: String| VerifyFailure::Delivery { index, reason };
    let d = match (deliveries.pop(), deliveries.is_empty()) {
        (Some(d), true) => d,
        (None, _) => return Err(fail("it is missing".into())),
        (Some(_), false) => return Err(fail("more than one is stored".into())),
    };
    report.deliveries += 1;
    if Some(&d.share_id) != entry.share_id.as_ref()
        || Some(&d.recipient) != entry.recipient.as_ref()
        || Some(&d.alert_id) != entry.alert_id.as_ref()
        || Some(&d.publisher) != entry.publisher.as_ref()
        || Some(&d.alert_type) != entry.alert_type.as_ref()
        || Some(&d.topic) != entry.topic.as_ref()
        || d.created_at_ms != entry.at_ms
    {
        return Err(fail("its columns differ from the share entry".into()));
    }
    // The stamp is rebuilt from the entry and the stored signature; a
    // delivery purged before the store kept stamps apart has none.
    // (verified once per chunk, see `ChunkAlerts::stamps`).
    if let Some(stamp) = stamp {
        let stamp = stamp.map_err(|e| fail(format!("its share stamp is not the broker's: {e}")))?;
        check_stamp(&stamp, entry).map_err(fail)?;
    }
    let Some(payload) = &d.payload else {
        if purges.covers(&d.alert_type, index, d.created_at_ms) {
            report.purged += 1;
            return Ok(());
        }
        return Err(fail(
            "its content was removed, but no retention purge of its alert type recorded after it removed it".into(),
        ));
    };
    let delivery = Delivery::from_json(payload).map_err(|e| fail(e.to_string()))?;
    // The message carries the stamp verified above.
    if d.stamp.as_deref()
        != Some(
            serde_json::to_vec(&delivery.stamp)
                .unwrap_or_default()
                .as_slice(),
        )
    {
        return Err(fail(
            "its message carries another stamp than its own".into(),
        ));
    }
    check_envelope(
        &delivery.envelope,
        entry,
        entry.envelope_hash.as_deref().unwrap_or(""),
        entry.signature.as_deref().unwrap_or(""),
    )
    .map_err(fail)?;
    let mut digests: Vec<Digest> = delivery
        .envelope
        .disclosures
        .iter()
        .map(|d| Digest::of(&d.0))
        .collect();
    digests.sort();
    if Some(disclosed_digest(&digests)) != entry.disclosed_digest
        || digests
            .iter()
            .any(|d| !delivery.envelope.digests.contains(d))
    {
        return Err(fail(
            "its field values are not the ones the entry records as disclosed".into(),
        ));
    }
    Ok(())
}

/// A share stamp states what its share entry records.
fn check_stamp(stamp: &ShareStamp, entry: &AuditEntry) -> Result<(), String> {
    let index = entry.index;
    let same = Some(&stamp.share_id) == entry.share_id.as_ref()
        && Some(&stamp.alert_id) == entry.alert_id.as_ref()
        && Some(&stamp.publisher) == entry.publisher.as_ref()
        && Some(&stamp.recipient) == entry.recipient.as_ref()
        && Some(&stamp.topic) == entry.topic.as_ref()
        && Some(&stamp.alert_type) == entry.alert_type.as_ref()
        && Some(&stamp.rule_id) == entry.rule_id.as_ref()
        && Some(&stamp.legal_basis) == entry.legal_basis.as_ref()
        && Some(&stamp.purpose) == entry.purpose.as_ref()
        && stamp.fields == entry.fields
        && Some(&stamp.envelope_hash) == entry.envelope_hash.as_ref()
        && Some(&stamp.policy_version) == entry.policy_version.as_ref()
        && stamp.audit_index == index;
    if !same {
        return Err("its share stamp states another share than the entry".into());
    }
    Ok(())
}

/// What the witnesses' cosignatures show, as `audit verify` reports it.
#[derive(Debug, Clone, Default)]
pub struct WitnessSummary {
    /// The quorum of the policy named by the newest entry (`none`: no witnesses).
    pub quorum: String,
    /// Stored cosignatures verified.
    pub cosignatures: u64,
    /// Checkpoints examined.
    pub checkpoints: u64,
    /// Of them, those whose cosignatures meet the quorum.
    pub at_quorum: u64,
    /// The newest checkpoint that reached the quorum.
    pub newest_at_quorum: Option<u64>,
    /// The newest checkpoint, the witnesses that cosigned it and those that did not.
    pub newest: Option<(u64, Vec<String>, Vec<String>)>,
    /// For each checkpoint given with `--checkpoint`: its size and the witnesses whose cosignatures verified.
    pub given: Vec<(u64, Vec<String>)>,
}

/// Checkpoints read per query while checking cosignatures.
const COSIGNATURE_CHUNK: u32 = 1024;

/// Checks every stored cosignature against the checkpoint it signs (with
/// the key stored beside it) and counts, under the witness policy of the
/// newest entry's policy version, which checkpoints reached the quorum.
/// Cosignatures on checkpoints in `given` are checked with that policy's
/// keys.
pub async fn check_cosignatures(
    store: &Store,
    broker_keys: &KeyRegistry,
    given: &[String],
) -> Result<WitnessSummary, VerifyFailure> {
    use samverkan_sdk::audit::cosignature::{
        WitnessKey, join_note, split_note, verify_cosignatures,
    };
    use samverkan_sdk::audit::evidence::witness_policy_of;
    let (_, next) = store.audit_extent().await?;
    let newest_entry = match next {
        0 => None,
        n => store.audit_range(n - 1, n).await?.into_iter().next(),
    };
    let policy = match newest_entry.and_then(|e| e.policy_version) {
        Some(version) => match store.policy_files(&version).await? {
            Some(files) => witness_policy_of(&files).map_err(|e| VerifyFailure::BadCheckpoint {
                size: 0,
                reason: format!("policy {version}: {e}"),
            })?,
            None => samverkan_sdk::audit::witnesses::WitnessPolicy::none(),
        },
        None => samverkan_sdk::audit::witnesses::WitnessPolicy::none(),
    };
    let mut summary = WitnessSummary {
        quorum: policy.quorum_name().to_string(),
        ..WitnessSummary::default()
    };
    let current: HashMap<String, String> = policy
        .witnesses()
        .values()
        .map(|w| (w.key.vkey(), w.agency.clone()))
        .collect();
    let mut after = None;
    loop {
        let chunk = store.checkpoints_after(after, COSIGNATURE_CHUNK).await?;
        let Some(last) = chunk.last() else { break };
        after = Some(last.size);
        for checkpoint in &chunk {
            summary.checkpoints += 1;
            let bad = |reason: String| VerifyFailure::BadCheckpoint {
                size: checkpoint.size,
                reason,
            };
            let (text, _) = split_note(&checkpoint.note).map_err(|e| bad(e.to_string()))?;
            let mut signed = std::collections::BTreeSet::new();
            for c in store.cosignatures(checkpoint.size).await? {
                let key = WitnessKey::from_vkey(&c.vkey)
                    .map_err(|e| bad(format!("the stored key of witness {}: {e}", c.witness)))?;
                let found =
                    verify_cosignatures(&join_note(&text, std::slice::from_ref(&c.line)), &[key])
                        .ok()
                        .filter(|v| v.len() == 1);
                if found.is_none() {
                    return Err(bad(format!(
                        "the stored cosignature of witness {} does not verify: it was changed or does not belong to this checkpoint",
                        c.witness
                    )));
                }
                summary.cosignatures += 1;
                if current.get(&c.vkey) == Some(&c.witness) {
                    signed.insert(c.witness);
                }
            }
            if policy.requires_cosignatures() && policy.quorum_met(&signed) {
                summary.at_quorum += 1;
                summary.newest_at_quorum = Some(checkpoint.size);
            }
            let missing = policy
                .witnesses()
                .keys()
                .filter(|w| !signed.contains(*w))
                .cloned()
                .collect();
            summary.newest = Some((checkpoint.size, signed.into_iter().collect(), missing));
        }
        if chunk.len() < COSIGNATURE_CHUNK as usize {
            break;
        }
    }
    for note in given {
        let checkpoint =
            verify_checkpoint(note, broker_keys).map_err(|e| VerifyFailure::BadCheckpoint {
                size: 0,
                reason: format!("a given checkpoint: {e}"),
            })?;
        let verified = verify_cosignatures(note, &policy.keys()).map_err(|e| {
            VerifyFailure::BadCheckpoint {
                size: checkpoint.size,
                reason: format!("a given checkpoint's cosignature: {e}"),
            }
        })?;
        let mut names: Vec<String> = verified
            .iter()
            .filter_map(|c| policy.by_key_name(&c.name).map(|w| w.agency.clone()))
            .collect();
        names.sort();
        summary.given.push((checkpoint.size, names));
    }
    Ok(summary)
}
