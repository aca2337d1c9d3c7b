//! An agency's witness of the audit log (C2SP `tlog-witness`, answered over
//! the agency's own MQTT connection; see `docs/PROTOCOL.md` 13.12).
//!
//! For every checkpoint the broker asks it to cosign, the witness checks
//! the broker's signature, that the request starts from the size it last
//! cosigned, and the consistency proof from its stored root to the new one;
//! it stores the new checkpoint and only then returns its `cosignature/v1`
//! line. It also reads the cosigned checkpoints the broker publishes to every
//! agency, and flags any that contradicts what it cosigned.
//!
//! It never cosigns a checkpoint that does not extend what it cosigned
//! before. Two checkpoints signed by the broker's key that cannot both be
//! true (two roots for one size; a smaller tree signed later than a larger
//! one) are kept, both notes, as evidence that the log was changed.

pub mod protocol;
// The witness itself needs the network client and its state file.
#[cfg(feature = "client")]
mod core;
#[cfg(feature = "client")]
pub mod service;
#[cfg(feature = "client")]
pub mod state;

#[cfg(feature = "client")]
pub use self::core::{Observation, Witness};
pub use protocol::{AddCheckpoint, Answer};
#[cfg(feature = "client")]
pub use state::{Conflict, Held, StateError, WitnessState};

/// The default key name of an agency's witness key.
pub fn default_key_name(agency: &str) -> String {
    format!("samverkan/{agency}/witness")
}
