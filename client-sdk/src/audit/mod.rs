//! The audit log as legal staff and agencies verify it, without the broker.
//!
//! * [`entry`] — audit entries and their exact encoding (the Merkle leaves);
//! * [`checkpoint`] — signed tree heads in the C2SP tlog-checkpoint format,
//!   signed as C2SP signed notes with the broker's ed25519 key;
//! * [`proof`] — inclusion and consistency proofs (RFC 6962 / 9162), checked
//!   with the `tlog_tiles` implementation of the Go checksum database's tlog;
//! * [`cosignature`] — witnesses' cosignatures on checkpoints (C2SP
//!   tlog-cosignature, `cosignature/v1`);
//! * [`witnesses`] — `witnesses.toml`: the witness keys and the quorum;
//! * [`evidence`] — the evidence bundle for one entry and its offline check.

pub mod checkpoint;
pub mod cosignature;
pub mod entry;
pub mod evidence;
pub mod proof;
pub mod witnesses;

pub use entry::{AuditEntry, EntryKind, TAG_AUDIT_ENTRY, disclosed_digest};

use thiserror::Error;

/// Why a checkpoint, proof or evidence bundle does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuditProofError {
    /// The checkpoint note is malformed.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    /// No known broker key signed the checkpoint, or the signature is wrong.
    #[error("checkpoint signature: {0}")]
    CheckpointSignature(String),
    /// A cosignature line of a known witness key does not verify.
    #[error("cosignature: {0}")]
    Cosignature(String),
    /// The cosignatures do not meet the quorum of the policy.
    #[error("witness quorum not met: {0}")]
    Quorum(String),
    /// An inclusion or consistency proof does not lead to the signed root.
    #[error("proof does not verify: {0}")]
    Proof(String),
    /// The evidence bundle is malformed or not in canonical form.
    #[error("malformed evidence bundle: {0}")]
    MalformedBundle(String),
    /// A part of the evidence contradicts another.
    #[error("evidence does not hold: {0}")]
    Mismatch(String),
}
