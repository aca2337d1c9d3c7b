//! Writes the known-answer vector of witness cosignatures
//! (`tests/vectors/cosignature-v1.json`) to standard output:
//! `cargo run -p samverkan-sdk --example cosignature_vectors`.

use ed25519_dalek::SigningKey;
use samverkan_sdk::audit::cosignature::{WitnessKey, cosign, cosigned_message};
use serde_json::json;

fn main() {
    // The secret key of RFC 8032 section 7.1, TEST 2.
    let seed: [u8; 32] =
        hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
            .ok()
            .and_then(|s| s.try_into().ok())
            .unwrap_or_else(|| unreachable!("a valid seed"));
    let key = SigningKey::from_bytes(&seed);
    let name = "samverkan/polisen/witness";
    let witness = WitnessKey {
        name: name.into(),
        public_key: key.verifying_key(),
    };
    // The checkpoint of PROTOCOL.md section 13.9.2 (its text, without the signature).
    let text = "samverkan-dev/audit\n1\ns1T/dut3CnJhSCd7Bg9woxP2rmRB4H6UwzLL+JER6Wg=\ntime 1795961035398\n";
    let timestamp = 1_795_961_036u64;
    let message = cosigned_message(text.as_bytes(), timestamp);
    let line = cosign(name, &key, text.as_bytes(), timestamp);
    let vectors = json!({
        "description": "Known-answer vector of a witness cosignature (C2SP tlog-cosignature, cosignature/v1, Ed25519) as Samverkan's witnesses make them (PROTOCOL.md section 13.12). Fictitious data only.",
        "vectors": [{
            "name": "cosignature of the example checkpoint of section 13.9.2",
            "witness_key_seed_hex": hex::encode(seed),
            "public_key_hex": hex::encode(key.verifying_key().as_bytes()),
            "key_name": name,
            "key_id_hex": format!("{:08x}", witness.key_id()),
            "verifier_key": witness.vkey(),
            "timestamp": timestamp,
            "checkpoint_text": text,
            "signed_message": String::from_utf8_lossy(&message),
            "signed_message_hex": hex::encode(&message),
            "signature_line": line,
        }]
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&vectors).unwrap_or_default()
    );
}
