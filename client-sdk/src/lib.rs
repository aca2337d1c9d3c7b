//! # samverkan-sdk
//!
//! The one definition of Samverkan's wire format, shared by the broker and by
//! every agency system:
//!
//! * [`envelope`] — signed alert envelopes with selective disclosure: each
//!   top-level field travels as a salted disclosure whose SHA-256 digest is
//!   covered by the publisher's ed25519 signature, so fields can be withheld
//!   per recipient without breaking the signature;
//! * [`identifiers`] — personnummer, samordningsnummer, organisationsnummer
//!   and kommunkod with their check rules;
//! * [`keys`] — the registry of agency signing keys (validity windows,
//!   revocation) and key files;
//! * [`messages`] — receipts, share stamps and deliveries signed by the broker;
//! * [`json`] — the one JSON reader for everything read from the wire, which
//!   refuses an object that repeats a member name;
//! * [`topics`] — the MQTT topic layout;
//! * [`names`] — the syntax of agency ids, logical topics, alert types and
//!   field names.
//!
//! The exact bytes that are hashed and signed are specified in
//! `docs/PROTOCOL.md` together with known-answer test vectors.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alerts;
pub mod audit;
pub mod client;
pub mod closed_output;
pub mod encoding;
pub mod envelope;
pub mod identifiers;
pub mod json;
pub mod keys;
pub mod messages;
pub mod names;
pub mod source;
pub mod time;
pub mod topics;

pub use alerts::{Alert, AlertError};
pub use client::{
    AgencyConfig, Client, ClientError, DeliveryError, PublishError, ReceivedShare, Subscription,
};
pub use envelope::{Digest, Disclosure, Envelope, EnvelopeError, EnvelopeHeader, VerifiedAlert};
pub use keys::{AgencyKey, KeyError, KeyRegistry, KeyResolver};
