//! Shared helpers for the SDK's integration tests.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use samverkan_sdk::envelope::{EnvelopeHeader, VERSION};
use samverkan_sdk::keys::{AgencyKey, KeyRegistry};
use serde_json::{Map, Value, json};

pub const T0: i64 = 1_795_953_600_000; // 2026-11-29T12:00:00Z

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn registry() -> KeyRegistry {
    let mut reg = KeyRegistry::new();
    reg.insert(AgencyKey {
        owner: "forsakringskassan".into(),
        key_id: "fk-1".into(),
        public_key: key(1).verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    reg
}

pub fn header() -> EnvelopeHeader {
    EnvelopeHeader {
        version: VERSION,
        alert_id: "a1b2c3".into(),
        publisher: "forsakringskassan".into(),
        key_id: "fk-1".into(),
        alert_type: "welfare.incorrect_payment".into(),
        topic: "welfare/incorrect-payment/ost".into(),
        issued_at_ms: T0,
        to: None,
    }
}

pub fn fields() -> Map<String, Value> {
    let Value::Object(map) = json!({
        "subject_personnummer": "19121212-1212",
        "subject_kommunkod": "0580",
        "benefit": "assistansersattning",
        "suspected_amount_sek": 125000,
        "period": {"from": "2026-01-01", "to": "2026-06-30"},
        "grounds": "Billed hours exceed verified hours.",
    }) else {
        unreachable!()
    };
    map
}
