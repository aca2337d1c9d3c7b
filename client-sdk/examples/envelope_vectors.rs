//! Prints the envelope known-answer test vectors as JSON.
//!
//! `cargo run -p samverkan-sdk --example envelope_vectors > client-sdk/tests/vectors/envelope-v1.json`
//!
//! The committed file is checked by `tests/vectors.rs`; regenerate it only
//! when the format itself changes (and then bump the envelope version).

use ed25519_dalek::SigningKey;
use samverkan_sdk::envelope::{Disclosure, Envelope, EnvelopeHeader, VERSION, signing_input};
use serde_json::{Value, json};

const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn vector(name: &str, to: Option<Vec<String>>, fields: Value) -> Value {
    let seed: [u8; 32] = hex::decode(SEED_HEX).unwrap().try_into().unwrap();
    let key = SigningKey::from_bytes(&seed);
    let header = EnvelopeHeader {
        version: VERSION,
        alert_id: "00000000-0000-4000-8000-000000000001".into(),
        publisher: "forsakringskassan".into(),
        key_id: "forsakringskassan-test-1".into(),
        alert_type: "welfare.incorrect_payment".into(),
        topic: "welfare/incorrect-payment/ost".into(),
        issued_at_ms: 1_795_953_600_000,
        to,
    };
    let mut disclosures = Vec::new();
    let mut field_vectors = Vec::new();
    for (i, (name, value)) in fields.as_object().unwrap().iter().enumerate() {
        let salt: [u8; 16] = std::array::from_fn(|j| (i * 16 + j) as u8);
        let d = Disclosure::with_salt(salt, name, value).unwrap();
        field_vectors.push(json!({
            "name": name,
            "salt_hex": hex::encode(salt),
            "value_json": String::from_utf8(serde_json::to_vec(value).unwrap()).unwrap(),
            "disclosure_hex": hex::encode(d.encoded()),
            "digest_hex": hex::encode(d.digest().as_bytes()),
        }));
        disclosures.push(d);
    }
    let envelope = Envelope::sign_disclosures(header.clone(), disclosures, &key).unwrap();
    json!({
        "name": name,
        "signing_key_seed_hex": SEED_HEX,
        "public_key_hex": hex::encode(key.verifying_key().as_bytes()),
        "header": header,
        "fields": field_vectors,
        "sorted_digests_hex": envelope.digests.iter().map(|d| hex::encode(d.as_bytes())).collect::<Vec<_>>(),
        "signing_input_hex": hex::encode(signing_input(&header, &envelope.digests)),
        "signature_hex": hex::encode(&envelope.signature.0),
        "envelope": envelope,
    })
}

fn main() {
    let out = json!({
        "description": "Samverkan envelope v1 known-answer vectors (docs/PROTOCOL.md). All data is fictitious.",
        "vectors": [
            vector("two fields, no explicit recipients", None, json!({
                "subject_kommunkod": "0580",
                "suspected_amount_sek": 125000,
            })),
            vector("explicit recipients, nested value, non-ASCII text", Some(vec!["linkoping".into(), "skatteverket".into()]), json!({
                "benefit": "assistansersättning",
                "period": {"from": "2026-01-01", "to": "2026-06-30"},
                "subject_personnummer": "19121212-1212",
            })),
        ]
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
