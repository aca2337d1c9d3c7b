//! The committed known-answer vectors (`tests/vectors/envelope-v1.json`)
//! must be reproduced byte for byte: they are what other implementations
//! are checked against.

use ed25519_dalek::SigningKey;
use samverkan_sdk::envelope::{Disclosure, Envelope, EnvelopeHeader, signing_input};
use samverkan_sdk::keys::{AgencyKey, KeyRegistry};
use serde_json::Value;

#[test]
fn known_answer_vectors_match() {
    let text = include_str!("vectors/envelope-v1.json");
    let file: Value = serde_json::from_str(text).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for v in vectors {
        let seed: [u8; 32] = hex::decode(v["signing_key_seed_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            v["public_key_hex"].as_str().unwrap()
        );
        let header: EnvelopeHeader = serde_json::from_value(v["header"].clone()).unwrap();
        let mut disclosures = Vec::new();
        for f in v["fields"].as_array().unwrap() {
            let salt: [u8; 16] = hex::decode(f["salt_hex"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let value: Value = serde_json::from_str(f["value_json"].as_str().unwrap()).unwrap();
            let d = Disclosure::with_salt(salt, f["name"].as_str().unwrap(), &value).unwrap();
            assert_eq!(
                hex::encode(d.encoded()),
                f["disclosure_hex"].as_str().unwrap()
            );
            assert_eq!(
                hex::encode(d.digest().as_bytes()),
                f["digest_hex"].as_str().unwrap()
            );
            disclosures.push(d);
        }
        let envelope = Envelope::sign_disclosures(header.clone(), disclosures, &key).unwrap();
        let sorted: Vec<String> = envelope
            .digests
            .iter()
            .map(|d| hex::encode(d.as_bytes()))
            .collect();
        assert_eq!(
            serde_json::to_value(&sorted).unwrap(),
            v["sorted_digests_hex"]
        );
        assert_eq!(
            hex::encode(signing_input(&header, &envelope.digests)),
            v["signing_input_hex"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(&envelope.signature.0),
            v["signature_hex"].as_str().unwrap()
        );
        assert_eq!(serde_json::to_value(&envelope).unwrap(), v["envelope"]);

        // And the committed envelope verifies as received.
        let received: Envelope = serde_json::from_value(v["envelope"].clone()).unwrap();
        let mut reg = KeyRegistry::new();
        reg.insert(AgencyKey {
            owner: header.publisher.clone(),
            key_id: header.key_id.clone(),
            public_key: key.verifying_key(),
            not_before_ms: None,
            not_after_ms: None,
            revoked_at_ms: None,
            revocation_reason: None,
        });
        received.verify(&reg).unwrap();
    }
}
