//! # samverkan-broker
//!
//! The Samverkan broker: an MQTT broker (rumqttd inside) through which
//! Swedish authorities exchange signed alerts. A written policy decides which
//! agency may receive which fields under which legal basis, and an audit log
//! proves every share.
//!
//! Modules, one concept each:
//!
//! * [`policy`] — load, validate and apply the policy set;
//! * [`pki`] — the development PKI (never for production).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pki;
pub mod policy;
