//! The audit log's Merkle tree as the appender keeps it.
//!
//! The tree is stored in the tlog "stored hash" numbering (every leaf and
//! every completed interior node has an index), so a proof is a handful of
//! reads by index. To append, only the roots of the complete subtrees on the
//! tree's right edge are needed — at most one per bit of the size — so the
//! appender keeps just that *frontier* in memory: O(log n) work and memory
//! per entry, and the log is never reread. The frontier is loaded from the
//! database at start-up, so any node can take over as appender.

use std::collections::BTreeMap;

use tlog_tiles::tlog::{self, Hash, HashReader};

use crate::store::{Store, StoreError};

/// The right edge of the tree: enough to append and to compute the root.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    nodes: BTreeMap<u64, Hash>,
}

/// Stored-hash indexes of the frontier of a tree of `size` leaves: for every
/// set bit `l` of `size`, the level-`l` subtree number `(size >> l) - 1`.
pub fn frontier_indexes(size: u64) -> Vec<u64> {
    (0..64u8)
        .rev()
        .filter(|l| size & (1u64 << l) != 0)
        .map(|l| tlog::stored_hash_index(l, (size >> l) - 1))
        .collect()
}

impl HashReader for Frontier {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|i| {
                self.nodes
                    .get(i)
                    .copied()
                    .ok_or(tlog::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads the frontier of the tree of `size` entries from the store.
    pub async fn load(store: &Store, size: u64) -> Result<Self, StoreError> {
        let indexes = frontier_indexes(size);
        let found = store.tree_hashes(&indexes).await?;
        let mut nodes = BTreeMap::new();
        for i in indexes {
            let hash = found.get(&i).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "tree hash {i} of the frontier of size {size} is missing"
                ))
            })?;
            nodes.insert(i, Hash(*hash));
        }
        Ok(Self { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root hash (RFC 6962 MTH).
    pub fn root(&self) -> [u8; 32] {
        tlog::tree_hash(self.size, self)
            .map(|h| h.0)
            .unwrap_or([0; 32])
    }

    /// Appends a leaf; returns the new stored hashes `(index, hash)` to write.
    pub fn append(&mut self, leaf_hash: [u8; 32]) -> Vec<(u64, [u8; 32])> {
        let n = self.size;
        let hashes =
            tlog::stored_hashes_for_record_hash(n, Hash(leaf_hash), &*self).unwrap_or_default();
        let start = tlog::stored_hash_index(0, n);
        let new: Vec<(u64, [u8; 32])> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| (start + i as u64, h.0))
            .collect();
        for (i, h) in &new {
            self.nodes.insert(*i, Hash(*h));
        }
        self.size = n + 1;
        let keep = frontier_indexes(self.size);
        self.nodes.retain(|i, _| keep.contains(i));
        new
    }
}

/// A [`HashReader`] over hashes fetched in advance.
struct Prefetched(std::collections::HashMap<u64, [u8; 32]>);

impl HashReader for Prefetched {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|i| {
                self.0
                    .get(i)
                    .map(|h| Hash(*h))
                    .ok_or(tlog::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Records which indexes a proof computation asks for (they depend only on
/// the tree sizes, not on the hashes), answering with placeholders.
struct Recorder(std::cell::RefCell<Vec<u64>>);

impl HashReader for Recorder {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash([0; 32]); indexes.len()])
    }
}

/// Runs a proof computation against the stored tree: first to learn which
/// hashes it reads, then with exactly those hashes fetched from the store.
async fn with_stored_hashes<T>(
    store: &Store,
    compute: impl Fn(&dyn HashReaderDyn) -> Result<T, tlog::Error>,
) -> Result<T, StoreError> {
    let recorder = Recorder(Default::default());
    let _ = compute(&recorder);
    let indexes = recorder.0.into_inner();
    let hashes = store.tree_hashes(&indexes).await?;
    compute(&Prefetched(hashes))
        .map_err(|e| StoreError::Corrupt(format!("the stored tree is incomplete: {e}")))
}

/// Object-safe view of [`HashReader`] for [`with_stored_hashes`].
trait HashReaderDyn {
    fn read(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error>;
}

impl<T: HashReader> HashReaderDyn for T {
    fn read(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        self.read_hashes(indexes)
    }
}

struct Dyn<'a>(&'a dyn HashReaderDyn);

impl HashReader for Dyn<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        self.0.read(indexes)
    }
}

/// The inclusion proof of entry `index` in the stored tree of `size` entries.
pub async fn inclusion_proof(
    store: &Store,
    size: u64,
    index: u64,
) -> Result<Vec<[u8; 32]>, StoreError> {
    with_stored_hashes(store, |r| tlog::prove_record(size, index, &Dyn(r)))
        .await
        .map(|p| p.into_iter().map(|h| h.0).collect())
}

/// The consistency proof between the stored trees of `old` and `new` entries.
pub async fn consistency_proof(
    store: &Store,
    new: u64,
    old: u64,
) -> Result<Vec<[u8; 32]>, StoreError> {
    // The empty tree and a tree itself need no proof.
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    with_stored_hashes(store, |r| tlog::prove_tree(new, old, &Dyn(r)))
        .await
        .map(|p| p.into_iter().map(|h| h.0).collect())
}

/// The root of the stored tree of `size` entries.
pub async fn stored_root(store: &Store, size: u64) -> Result<[u8; 32], StoreError> {
    with_stored_hashes(store, |r| tlog::tree_hash(size, &Dyn(r)))
        .await
        .map(|h| h.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use samverkan_sdk::audit::proof::{node_hash, verify_inclusion};

    fn leaf(i: u64) -> [u8; 32] {
        tlog::record_hash(&i.to_be_bytes()).0
    }

    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => tlog::EMPTY_HASH.0,
            1 => leaves[0],
            n => {
                let k = n.next_power_of_two() / 2;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn frontier_roots_match_the_rfc_definition_and_stay_small() {
        let mut f = Frontier::empty();
        let mut all = std::collections::HashMap::new();
        let mut leaves = Vec::new();
        assert_eq!(f.root(), tlog::EMPTY_HASH.0);
        for i in 0..300u64 {
            leaves.push(leaf(i));
            for (idx, h) in f.append(leaf(i)) {
                all.insert(idx, h);
            }
            assert_eq!(f.root(), mth(&leaves), "size {}", i + 1);
            assert!(f.nodes.len() <= 9);
        }
        // The stored hashes support proofs from any index.
        let r = Prefetched(all);
        let proof = tlog::prove_record(300, 123, &r).unwrap();
        let proof: Vec<[u8; 32]> = proof.into_iter().map(|h| h.0).collect();
        verify_inclusion(123, 300, &leaf(123), &proof, &mth(&leaves)).unwrap();
        assert_eq!(frontier_indexes(0), Vec::<u64>::new());
        assert_eq!(frontier_indexes(1), vec![tlog::stored_hash_index(0, 0)]);
    }
}
