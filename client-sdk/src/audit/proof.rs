//! Inclusion and consistency proofs over the audit log's Merkle tree
//! (RFC 6962 section 2.1; the same tree as RFC 9162 and the Go checksum
//! database). The proof arithmetic is `tlog_tiles`'; this module adapts it
//! to plain 32-byte hashes.

use tlog_tiles::tlog::{self, Hash};

use super::AuditProofError;

/// A SHA-256 node hash.
pub type NodeHash = [u8; 32];

fn to_hashes(proof: &[NodeHash]) -> Vec<Hash> {
    proof.iter().map(|h| Hash(*h)).collect()
}

/// The RFC 6962 hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &NodeHash, right: &NodeHash) -> NodeHash {
    tlog::node_hash(Hash(*left), Hash(*right)).0
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> NodeHash {
    tlog::EMPTY_HASH.0
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &NodeHash,
    proof: &[NodeHash],
    root: &NodeHash,
) -> Result<(), AuditProofError> {
    if index >= size {
        return Err(AuditProofError::Proof(format!(
            "entry {index} is not inside a tree of {size} entries"
        )));
    }
    tlog::check_record(
        &to_hashes(proof),
        size,
        Hash(*root),
        index,
        Hash(*leaf_hash),
    )
    .map_err(|e| AuditProofError::Proof(format!("inclusion of entry {index} in tree {size}: {e}")))
}

/// Checks that the tree of `old_size` leaves with `old_root` is a prefix of
/// the tree of `new_size` leaves with `new_root`: nothing was changed or
/// removed between the two heads.
pub fn verify_consistency(
    old_size: u64,
    old_root: &NodeHash,
    new_size: u64,
    new_root: &NodeHash,
    proof: &[NodeHash],
) -> Result<(), AuditProofError> {
    if old_size > new_size {
        return Err(AuditProofError::Proof(format!(
            "a tree of {old_size} entries cannot be a prefix of one of {new_size}"
        )));
    }
    if old_size == new_size {
        return if old_root == new_root && proof.is_empty() {
            Ok(())
        } else {
            Err(AuditProofError::Proof(format!(
                "two different roots for size {old_size}"
            )))
        };
    }
    if old_size == 0 {
        return Ok(());
    }
    tlog::check_tree(
        &to_hashes(proof),
        new_size,
        Hash(*new_root),
        old_size,
        Hash(*old_root),
    )
    .map_err(|e| {
        AuditProofError::Proof(format!(
            "consistency of tree {old_size} with tree {new_size}: {e}"
        ))
    })
}

/// Parses hex node hashes.
pub fn parse_hashes(hex_hashes: &[String]) -> Result<Vec<NodeHash>, AuditProofError> {
    hex_hashes
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| <NodeHash>::try_from(b).ok())
                .ok_or_else(|| {
                    AuditProofError::MalformedBundle(format!("`{h}` is not a 32-byte hex hash"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Leaf hash per RFC 6962: SHA-256(0x00 ‖ data).
    fn leaf(data: &[u8]) -> NodeHash {
        let mut h = Sha256::new();
        h.update([0]);
        h.update(data);
        h.finalize().into()
    }

    /// The RFC 6962 tree hash, computed directly from its recursive definition.
    fn mth(leaves: &[NodeHash]) -> NodeHash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = n.next_power_of_two() / 2;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn known_answers_from_the_rfc_definitions() {
        // The empty tree and single leaves.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        // Node hash: SHA-256(0x01 ‖ l ‖ r).
        let l = leaf(b"a");
        let r = leaf(b"b");
        let mut h = Sha256::new();
        h.update([1]);
        h.update(l);
        h.update(r);
        assert_eq!(node_hash(&l, &r), <NodeHash>::from(h.finalize()));
        // A three-leaf tree is node(node(a, b), c).
        let c = leaf(b"c");
        assert_eq!(mth(&[l, r, c]), node_hash(&node_hash(&l, &r), &c));
    }

    #[test]
    fn inclusion_and_consistency_for_small_trees() {
        let leaves: Vec<NodeHash> = (0..7u8).map(|i| leaf(&[i])).collect();
        // Inclusion of leaf 2 in the 7-leaf tree: siblings bottom-up are
        // leaf 3, node(0,1), and the right subtree node(node(4,5), 6).
        let proof = [
            leaves[3],
            node_hash(&leaves[0], &leaves[1]),
            node_hash(&node_hash(&leaves[4], &leaves[5]), &leaves[6]),
        ];
        let root = mth(&leaves);
        verify_inclusion(2, 7, &leaves[2], &proof, &root).unwrap();
        assert!(verify_inclusion(2, 7, &leaves[3], &proof, &root).is_err());
        assert!(verify_inclusion(7, 7, &leaves[2], &proof, &root).is_err());

        // Consistency of the 3-leaf tree with the 7-leaf tree (RFC 6962 2.1.2):
        // leaf 2, leaf 3, node(0,1), node(node(4,5),6).
        let old = mth(&leaves[..3]);
        let proof = [
            leaves[2],
            leaves[3],
            node_hash(&leaves[0], &leaves[1]),
            node_hash(&node_hash(&leaves[4], &leaves[5]), &leaves[6]),
        ];
        verify_consistency(3, &old, 7, &root, &proof).unwrap();
        let mut tampered = proof;
        tampered[0][0] ^= 1;
        assert!(verify_consistency(3, &old, 7, &root, &tampered).is_err());
        assert!(verify_consistency(3, &leaves[0], 7, &root, &proof).is_err());
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Proofs come from files people hand over: no input may panic.
        #[test]
        fn arbitrary_proofs_never_panic(
            index in 0u64..100,
            size in 0u64..100,
            old in 0u64..100,
            proof in prop::collection::vec(any::<[u8; 32]>(), 0..12),
            leaf in any::<[u8; 32]>(),
            root in any::<[u8; 32]>(),
        ) {
            let _ = verify_inclusion(index, size, &leaf, &proof, &root);
            let _ = verify_consistency(old, &leaf, size, &root, &proof);
            let _ = verify_inclusion(u64::MAX - 1, u64::MAX, &leaf, &proof, &root);
            let _ = verify_consistency(u64::MAX - 1, &leaf, u64::MAX, &root, &proof);
        }
    }
}
