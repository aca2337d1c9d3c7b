//! # samverkan-broker
//!
//! The Samverkan broker: an MQTT broker (rumqttd inside) through which
//! Swedish authorities exchange signed alerts. A written policy decides which
//! agency may receive which fields under which legal basis, and an audit log
//! proves every share.
//!
//! Modules, one concept each:
//!
//! * [`server`] — starts and stops everything below; health and reload;
//! * [`admin`] — the operator's HTTP endpoints;
//! * [`console`] — the auditor console for legal staff (HTTPS, client certificates);
//! * [`metrics`] — Prometheus metrics;
//! * [`config`] — the configuration file;
//! * [`gateway`] — the public mutual-TLS listener in front of rumqttd;
//! * [`identity`] — the agency named by a client certificate;
//! * [`inspect`] — what an agency's client may send, packet by packet;
//! * [`relay`] — the gateway's packet reader, both directions checked;
//! * [`client_ids`] — client ids as rumqttd sees them;
//! * [`mqtt`] — the embedded rumqttd;
//! * [`pipeline`] — intake, check, record, acks, replay: authenticate,
//!   validate, decide, record, deliver;
//! * [`policy`] — load, validate and apply the policy set;
//! * [`limits`] — publish and connection limits;
//! * [`audit`] — the audit appender (the only place that creates entries),
//!   the Merkle tree, checkpoints, verification and evidence;
//! * [`store`] — SQLite and PostgreSQL through sqlx;
//! * [`signer`] — the broker's signing key;
//! * [`pki`] — the development PKI (never for production).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod client_ids;
pub mod cluster;
pub mod config;
pub mod console;
pub mod gateway;
pub mod identity;
pub mod inspect;
pub mod limits;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod pki;
pub mod policy;
pub mod quickack;
pub mod relay;
pub mod server;
pub mod signer;
pub mod store;
pub mod witness;
