//! The witness's rules over its state: what it cosigns, what it refuses,
//! and what it keeps as evidence (PROTOCOL.md 13.12.2 and 13.12.4).

use super::protocol::{AddCheckpoint, Answer};
use super::state::{Conflict, Held, StateError, WitnessState};
use crate::audit::AuditProofError;
use crate::audit::checkpoint::{SignedCheckpoint, verify_checkpoint};
use crate::audit::cosignature::{WitnessKey, cosign, split_note};
use crate::audit::proof::{empty_root, verify_consistency};
use crate::keys::KeyRegistry;
use crate::time::now_ms;

/// A witness over its state and the broker's keys.
pub struct Witness {
    state: WitnessState,
    key_name: String,
    key: ed25519_dalek::SigningKey,
    origin: String,
    broker_keys: KeyRegistry,
}

/// What a cosigned checkpoint published by the broker told the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Consistent with everything the witness holds (as far as it can tell).
    Consistent,
    /// It contradicts the witness's history: recorded.
    Conflict(Conflict),
}

impl Witness {
    /// A witness over an open state that trusts `broker_keys` (owner `broker`).
    pub async fn new(state: WitnessState, broker_keys: KeyRegistry) -> Result<Self, StateError> {
        let identity = state.identity().await?;
        Ok(Self {
            state,
            key_name: identity.key_name,
            key: identity.key,
            origin: identity.origin,
            broker_keys,
        })
    }

    /// The witness's public key, as `witnesses.toml` lists it.
    pub fn public_key(&self) -> WitnessKey {
        WitnessKey {
            name: self.key_name.clone(),
            public_key: self.key.verifying_key(),
        }
    }

    /// The origin of the log it witnesses.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The state.
    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    /// Verifies a note with the broker's keys and checks its origin.
    fn verify(&self, note: &str) -> Result<SignedCheckpoint, Answer> {
        let refused = |status: u16, reason: String| Answer::Refused { status, reason };
        let checkpoint = match verify_checkpoint(note, &self.broker_keys) {
            Ok(c) => c,
            Err(AuditProofError::MalformedCheckpoint(e)) => {
                return Err(refused(400, format!("malformed checkpoint: {e}")));
            }
            Err(e) => return Err(refused(403, e.to_string())),
        };
        if checkpoint.origin != self.origin {
            return Err(refused(
                404,
                format!(
                    "this witness does not witness the log `{}`",
                    checkpoint.origin
                ),
            ));
        }
        Ok(checkpoint)
    }

    /// Checks `offered` against the witness's history and records a
    /// conflict it proves: a checkpoint of the same size with another root,
    /// or a smaller tree signed later than the newest one cosigned.
    async fn cross_check(
        &self,
        offered: &SignedCheckpoint,
        latest: Option<&Held>,
    ) -> Result<Option<Conflict>, StateError> {
        let conflict = |kind: &str, reason: String, held: &Held| Conflict {
            found_ms: now_ms(),
            kind: kind.into(),
            reason,
            held: held.note.clone(),
            offered: offered.note.clone(),
        };
        let found = if let Some(held) = self.state.cosigned_at(offered.size).await?
            && held.root != offered.root
        {
            Some(conflict(
                "split_view",
                format!(
                    "two checkpoints of size {} with different roots, both signed by the broker",
                    offered.size
                ),
                &held,
            ))
        } else if let Some(held) = self.state.seen_other(offered.size, &offered.root).await? {
            Some(conflict(
                "split_view",
                format!(
                    "the broker published a cosigned checkpoint of size {} with another root",
                    offered.size
                ),
                &held,
            ))
        } else if let Some(held) = latest
            && offered.size < held.size
            && offered.time_ms > held.time_ms
        {
            Some(conflict(
                "rollback",
                format!(
                    "the broker signed a tree of {} entries at {} ms, after one of {} entries at {} ms: entries were removed",
                    offered.size, offered.time_ms, held.size, held.time_ms
                ),
                held,
            ))
        } else {
            None
        };
        if let Some(c) = &found
            && self.state.record_conflict(c).await?
        {
            tracing::error!(
                kind = %c.kind,
                reason = %c.reason,
                "the audit log contradicts what this witness cosigned; evidence kept (samverkan-client witness --evidence)"
            );
        }
        Ok(found)
    }

    /// Answers an `add-checkpoint` request body (C2SP tlog-witness).
    pub async fn add_checkpoint(&self, body: &[u8]) -> Result<Answer, StateError> {
        let refused = |status: u16, reason: String| Answer::Refused { status, reason };
        let request = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return Ok(refused(400, e)),
        };
        let offered = match self.verify(&request.checkpoint) {
            Ok(c) => c,
            Err(answer) => return Ok(answer),
        };
        let latest = self.state.latest().await?;
        if let Some(conflict) = self.cross_check(&offered, latest.as_ref()).await? {
            return Ok(refused(
                422,
                format!("{}: {}", conflict.kind, conflict.reason),
            ));
        }
        if request.old_size > offered.size {
            return Ok(refused(
                400,
                format!(
                    "old size {} is larger than the checkpoint's {}",
                    request.old_size, offered.size
                ),
            ));
        }
        let (held_size, held_root) = latest
            .as_ref()
            .map_or((0, empty_root()), |h| (h.size, h.root));
        if request.old_size != held_size {
            return Ok(Answer::Conflict(held_size));
        }
        if offered.size == 0 && offered.root != empty_root() {
            return Ok(refused(422, "a tree of size 0 has the empty root".into()));
        }
        if request.old_size == 0 && !request.proof.is_empty() {
            return Ok(refused(422, "a proof from size 0 must be empty".into()));
        }
        if let Err(e) = verify_consistency(
            held_size,
            &held_root,
            offered.size,
            &offered.root,
            &request.proof,
        ) {
            if let Some(held) = &latest {
                let conflict = Conflict {
                    found_ms: now_ms(),
                    kind: "inconsistent".into(),
                    reason: format!(
                        "no valid consistency proof from the cosigned tree of {} entries to the offered one of {}: {e}",
                        held.size, offered.size
                    ),
                    held: held.note.clone(),
                    offered: offered.note.clone(),
                };
                if self.state.record_conflict(&conflict).await? {
                    tracing::error!(reason = %conflict.reason, "refused to cosign: not consistent with what this witness cosigned");
                }
            }
            return Ok(refused(422, e.to_string()));
        }
        let (text, _) = split_note(&offered.note)
            .map_err(|e| StateError::Corrupt(format!("a verified note does not split: {e}")))?;
        let new = Held {
            size: offered.size,
            root: offered.root,
            time_ms: offered.time_ms,
            note: offered.note.clone(),
        };
        if offered.size != held_size && !self.state.advance(held_size, &new).await? {
            // Another request moved the state meanwhile: the caller retries.
            let now = self.state.latest().await?.map_or(0, |h| h.size);
            return Ok(Answer::Conflict(now));
        }
        let timestamp = u64::try_from(now_ms() / 1000).unwrap_or(0).max(1);
        Ok(Answer::Cosigned(cosign(
            &self.key_name,
            &self.key,
            text.as_bytes(),
            timestamp,
        )))
    }

    /// Checks a cosigned checkpoint the broker published to every agency
    /// against the witness's own history, and remembers it.
    pub async fn observe(&self, note: &str) -> Result<Observation, String> {
        let offered = self
            .verify(note)
            .map_err(|a| String::from_utf8_lossy(&a.body()).trim().to_string())?;
        let latest = self.state.latest().await.map_err(|e| e.to_string())?;
        if let Some(conflict) = self
            .cross_check(&offered, latest.as_ref())
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Observation::Conflict(conflict));
        }
        // One it cosigned itself (the usual case) is in its history already.
        let own = self
            .state
            .cosigned_at(offered.size)
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|h| h.root == offered.root);
        if own {
            return Ok(Observation::Consistent);
        }
        self.state
            .remember_seen(&Held {
                size: offered.size,
                root: offered.root,
                time_ms: offered.time_ms,
                note: offered.note.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(Observation::Consistent)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
