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

/// The cosignature vector (`tests/vectors/cosignature-v1.json`) is reproduced
/// byte for byte, and its line verifies over its checkpoint.
#[test]
fn cosignature_vector_matches() {
    use base64::Engine;
    use samverkan_sdk::audit::cosignature::{
        WitnessKey, cosign, cosigned_message, join_note, verify_cosignatures,
    };
    let file: Value = serde_json::from_str(include_str!("vectors/cosignature-v1.json")).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 1);
    for v in vectors {
        let seed: [u8; 32] = hex::decode(v["witness_key_seed_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            v["public_key_hex"].as_str().unwrap()
        );
        let name = v["key_name"].as_str().unwrap();
        let witness = WitnessKey {
            name: name.into(),
            public_key: key.verifying_key(),
        };
        assert_eq!(
            format!("{:08x}", witness.key_id()),
            v["key_id_hex"].as_str().unwrap()
        );
        assert_eq!(witness.vkey(), v["verifier_key"].as_str().unwrap());
        assert_eq!(WitnessKey::from_vkey(&witness.vkey()).unwrap(), witness);
        let text = v["checkpoint_text"].as_str().unwrap();
        let timestamp = v["timestamp"].as_u64().unwrap();
        let message = cosigned_message(text.as_bytes(), timestamp);
        assert_eq!(
            hex::encode(&message),
            v["signed_message_hex"].as_str().unwrap()
        );
        assert_eq!(message, v["signed_message"].as_str().unwrap().as_bytes());
        let line = cosign(name, &key, text.as_bytes(), timestamp);
        assert_eq!(line, v["signature_line"].as_str().unwrap());
        // The line: key id, big-endian timestamp, the Ed25519 signature.
        let b64 = line.trim_end().rsplit_once(' ').unwrap().1;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(raw.len(), 76);
        assert_eq!(hex::encode(&raw[..4]), v["key_id_hex"].as_str().unwrap());
        assert_eq!(
            u64::from_be_bytes(raw[4..12].try_into().unwrap()),
            timestamp
        );
        let found = verify_cosignatures(&join_note(text, &[line]), &[witness]).unwrap();
        assert_eq!(found[0].timestamp, timestamp);
    }
}

/// Checked against the examples the C2SP specifications give: the key id of
/// the signed-note example key (Ed25519 note signatures, type 0x01), and the
/// layout of the tlog-cosignature example (its key id, its timestamp in the
/// signature bytes equal to the `time` line of its example message).
#[test]
fn c2sp_examples() {
    use base64::Engine;
    use samverkan_sdk::audit::checkpoint::note_key_id;
    use samverkan_sdk::audit::cosignature::cosigned_message;
    // signed-note: example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k
    let key = base64::engine::general_purpose::STANDARD
        .decode("AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
        .unwrap();
    assert_eq!(key[0], 0x01);
    let public = ed25519_dalek::VerifyingKey::from_bytes(&key[1..].try_into().unwrap()).unwrap();
    assert_eq!(note_key_id("example.com/foo", &public), 0x530d903a);
    // tlog-cosignature: the example cosignature line and signed message.
    let line = "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==";
    let raw = base64::engine::general_purpose::STANDARD
        .decode(line)
        .unwrap();
    assert_eq!(raw.len(), 4 + 8 + 64);
    let timestamp = u64::from_be_bytes(raw[4..12].try_into().unwrap());
    assert_eq!(timestamp, 1_679_315_147);
    let text =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    assert_eq!(
        cosigned_message(text.as_bytes(), timestamp),
        format!("cosignature/v1\ntime 1679315147\n{text}").into_bytes()
    );
}
