//! The broker's own ed25519 key: it signs receipts, share stamps and audit
//! checkpoints so that agencies can tell the broker's messages from anything
//! another client of their tenant publishes.

use ed25519_dalek::SigningKey;
use samverkan_sdk::messages::Signed;
use serde::Serialize;

/// The broker's signing key and its id in the broker key registry.
pub struct BrokerSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for BrokerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl BrokerSigner {
    /// A signer with `key`, known to clients as `key_id`.
    pub fn new(key: SigningKey, key_id: impl Into<String>) -> Self {
        Self {
            key,
            key_id: key_id.into(),
        }
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs a checkpoint (C2SP tlog-checkpoint as a signed note) for the
    /// audit log named `origin`; `prev` is the size of the last one stored.
    pub fn sign_checkpoint(
        &self,
        origin: &str,
        size: u64,
        root: &[u8; 32],
        time_ms: i64,
        prev: Option<u64>,
    ) -> Result<String, samverkan_sdk::audit::AuditProofError> {
        samverkan_sdk::audit::checkpoint::sign_checkpoint(
            origin, size, root, time_ms, prev, &self.key,
        )
    }

    /// Signs `value` as a JSON body under the domain `tag`.
    pub fn sign<T: Serialize>(&self, tag: &str, value: &T) -> Signed {
        Signed::sign(tag, value, &self.key, &self.key_id)
    }
}
