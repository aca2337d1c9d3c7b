//! `audit verify`: recompute the whole log and hold it against every signed
//! checkpoint.
//!
//! For every entry in order: the index must be the next one (a deleted row
//! leaves a gap), its leaf hash recomputed from the stored columns must equal
//! the stored leaf hash (an edited row), and the stored tree hashes must
//! equal the ones recomputed from the leaves (an edited tree). At every
//! checkpoint size the recomputed root must equal the signed root and the
//! signature must be the broker's. Checkpoints kept by agencies can be given
//! too: the log must be consistent with each of them.

use samverkan_sdk::audit::checkpoint::{SignedCheckpoint, verify_checkpoint};
use samverkan_sdk::keys::KeyRegistry;
use thiserror::Error;

use super::tree::Frontier;
use crate::store::{Store, StoreError};

/// Entries read per query.
const CHUNK: u64 = 20_000;

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
    /// A checkpoint's signature or format is bad.
    #[error("checkpoint of size {size}: {reason}")]
    BadCheckpoint {
        /// Its size.
        size: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log does not produce the root a checkpoint signed.
    #[error(
        "the log does not match the signed checkpoint of size {size}: entries {from} to {to} were changed, removed or replaced after it was signed"
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
        "a signed checkpoint covers {size} entries but the log has only {entries}: entries were removed"
    )]
    Truncated {
        /// The checkpoint's size.
        size: u64,
        /// Entries present.
        entries: u64,
    },
}

/// What a successful verification covered.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Entries verified.
    pub entries: u64,
    /// Checkpoints verified (stored and given).
    pub checkpoints: usize,
    /// The largest verified checkpoint.
    pub last_checkpoint: Option<SignedCheckpoint>,
    /// The recomputed root of the whole log.
    pub root: [u8; 32],
}

/// Verifies the log in `store`; `progress(done, total)` is called after each chunk.
pub async fn verify_log(
    store: &Store,
    broker_keys: &KeyRegistry,
    witnessed: &[String],
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    // Rows missing at the end show against the checkpoints; rows missing in
    // the middle show as a gap while scanning, which names the entry.
    let (_count, next) = store.audit_extent().await?;
    let mut checkpoints = Vec::new();
    for stored in store.checkpoints().await? {
        let cp = verify_checkpoint(&stored.note, broker_keys).map_err(|e| {
            VerifyFailure::BadCheckpoint {
                size: stored.size,
                reason: e.to_string(),
            }
        })?;
        if cp.size != stored.size || cp.root != stored.root {
            return Err(VerifyFailure::BadCheckpoint {
                size: stored.size,
                reason: "the stored size or root differs from the signed note".into(),
            });
        }
        checkpoints.push(cp);
    }
    for note in witnessed {
        let cp =
            verify_checkpoint(note, broker_keys).map_err(|e| VerifyFailure::BadCheckpoint {
                size: 0,
                reason: format!("witnessed checkpoint: {e}"),
            })?;
        checkpoints.push(cp);
    }
    checkpoints.sort_by_key(|c| c.size);
    if let Some(largest) = checkpoints.last()
        && largest.size > next
    {
        return Err(VerifyFailure::Truncated {
            size: largest.size,
            entries: next,
        });
    }

    let mut frontier = Frontier::empty();
    let mut pending = checkpoints.iter().peekable();
    let mut last_good: u64 = 0;
    let mut verified = 0usize;
    let mut last_checkpoint = None;
    // Checkpoints of the empty log.
    while let Some(cp) = pending.next_if(|cp| cp.size == 0) {
        if cp.root != frontier.root() {
            return Err(VerifyFailure::BadCheckpoint {
                size: 0,
                reason: "the root of an empty log must be SHA-256 of nothing".into(),
            });
        }
        verified += 1;
        last_checkpoint = Some(cp.clone());
    }
    let mut from = 0u64;
    while from < next {
        let to = (from + CHUNK).min(next);
        let rows = store.audit_range_with_leaves(from, to).await?;
        let first_stored = tlog_tiles::tlog::stored_hash_index(0, from);
        let end_stored = tlog_tiles::tlog::stored_hash_index(0, to);
        let stored_tree = store.tree_hash_range(first_stored, end_stored).await?;
        let mut stored_tree = stored_tree.into_iter().peekable();
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
            while let Some(cp) = pending.next_if(|cp| cp.size == frontier.size()) {
                if cp.root != frontier.root() {
                    return Err(VerifyFailure::RootMismatch {
                        size: cp.size,
                        from: last_good,
                        to: cp.size - 1,
                    });
                }
                last_good = cp.size;
                verified += 1;
                last_checkpoint = Some(cp.clone());
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
        from = to;
        progress(from, next);
    }
    if let Some(cp) = pending.next() {
        return Err(VerifyFailure::Truncated {
            size: cp.size,
            entries: frontier.size(),
        });
    }
    Ok(VerifyReport {
        entries: frontier.size(),
        checkpoints: verified,
        last_checkpoint,
        root: frontier.root(),
    })
}
