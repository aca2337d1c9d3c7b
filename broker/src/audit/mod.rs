//! The audit log on the broker's side: the appender (the only place that
//! creates entries, numbers them and grows the Merkle tree),
//! keyed subject hashes, signed checkpoints, full verification, and evidence
//! bundles. The entry format and every check an outsider needs live in
//! [`samverkan_sdk::audit`], which this module re-exports.

pub mod appender;
pub mod evidence;
pub mod subject;
pub mod tree;
pub mod verify;

pub use samverkan_sdk::audit::{AuditEntry, EntryKind, TAG_AUDIT_ENTRY, disclosed_digest};
