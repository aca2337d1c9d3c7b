//! A JSON object that repeats a member name is refused wherever the SDK reads
//! JSON from the wire: two parsers (one keeping the first, one the last of
//! the repeated members) must never read two different messages from the
//! same bytes.

mod common;

use common::*;
use samverkan_sdk::encoding::{TAG_DISCLOSURE, Writer};
use samverkan_sdk::envelope::{
    Base64Url, Digest, Envelope, EnvelopeError, signing_input, verify_signature,
};
use samverkan_sdk::keys::{AgencyKey, KeyRegistry};
use samverkan_sdk::messages::{
    self, Ack, BROKER_KEY_OWNER, Delivery, Receipt, ReceiptStatus, Signed,
};
use serde_json::json;

fn signed() -> Envelope {
    Envelope::sign(header(), &fields(), &key(1)).unwrap()
}

/// A JSON object written member by member, in order, repeats included.
fn object(members: &[(&str, String)]) -> String {
    let inner: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

/// The members of `env` as JSON texts, in the order the SDK writes them.
fn members(env: &Envelope) -> Vec<(&'static str, String)> {
    vec![
        ("header", to_json(&env.header)),
        ("digests", to_json(&env.digests)),
        ("signature", to_json(&env.signature)),
        ("disclosures", to_json(&env.disclosures)),
    ]
}

fn assert_malformed(text: &str) {
    match Envelope::from_json(text.as_bytes()) {
        Err(e) => assert_eq!(e.code(), "malformed_envelope", "{e}"),
        Ok(env) => panic!(
            "accepted, and it verifies as {:?}",
            env.verify(&registry()).map(|a| a.header().clone())
        ),
    }
}

#[test]
fn the_unchanged_envelope_is_read_and_verifies() {
    let env = signed();
    let text = object(&members(&env));
    let back = Envelope::from_json(text.as_bytes()).unwrap();
    assert_eq!(back, env);
    back.verify(&registry()).unwrap();
}

#[test]
fn a_repeated_top_level_member_is_a_malformed_envelope() {
    let env = signed();
    let mut m = members(&env);
    // Even a repeat with the same value.
    m.insert(2, m[1].clone());
    assert_malformed(&object(&m));
    // A repeated header: the first names another publisher.
    let mut other = env.header.clone();
    other.publisher = "polisen".into();
    let mut m = members(&env);
    m.insert(0, ("header", to_json(&other)));
    assert_malformed(&object(&m));
}

#[test]
fn a_repeated_header_member_is_a_malformed_envelope() {
    let env = signed();
    let header = to_json(&env.header).replacen(
        "\"publisher\":\"forsakringskassan\"",
        "\"publisher\":\"polisen\",\"publisher\":\"forsakringskassan\"",
        1,
    );
    assert!(header.contains("polisen"));
    let mut m = members(&env);
    m[0].1 = header;
    assert_malformed(&object(&m));
    // A repeated optional member, and names that repeat only once unescaped.
    for (from, to) in [
        (
            "\"issued_at_ms\"",
            "\"to\":null,\"to\":null,\"issued_at_ms\"",
        ),
        ("\"topic\"", "\"\\u0074opic\":\"x\",\"topic\""),
    ] {
        let mut m = members(&env);
        m[0].1 = m[0].1.replacen(from, to, 1);
        assert_malformed(&object(&m));
    }
}

#[test]
fn repeated_disclosures_are_a_malformed_envelope() {
    let env = signed();
    // A reader keeping the first sees an alert without fields, one keeping
    // the last sees all of them.
    let mut m = members(&env);
    m.insert(3, ("disclosures", "[]".into()));
    assert_malformed(&object(&m));
}

#[test]
fn a_repeated_signature_is_a_malformed_envelope_not_a_bad_signature() {
    let env = signed();
    let mut forged = env.signature.clone();
    forged.0[0] ^= 1;
    for (first, second) in [(&env.signature, &forged), (&forged, &env.signature)] {
        let mut m = members(&env);
        m[2].1 = to_json(first);
        m.insert(3, ("signature", to_json(second)));
        assert_malformed(&object(&m));
    }
}

/// An envelope, correctly signed, whose only disclosure has `value_json` as
/// its value text.
fn signed_with_value_text(value_json: &str) -> Envelope {
    let mut w = Writer::with_tag(TAG_DISCLOSURE);
    w.bytes(&[7; 16]).str("period").bytes(value_json.as_bytes());
    let disclosure = w.finish();
    let digests = vec![Digest::of(&disclosure)];
    let header = header();
    let key = key(1);
    let signature = ed25519_dalek::Signer::sign(&key, &signing_input(&header, &digests));
    let env = Envelope {
        header,
        digests,
        signature: Base64Url(signature.to_bytes().to_vec()),
        disclosures: vec![Base64Url(disclosure)],
    };
    // The publisher really signed it.
    verify_signature(
        &key.verifying_key(),
        &signing_input(&env.header, &env.digests),
        &env.signature.0,
    )
    .unwrap();
    env
}

#[test]
fn a_repeated_member_inside_a_field_value_is_a_malformed_disclosure() {
    let good = signed_with_value_text(r#"{"from":"2026-01-01","to":"2026-06-30"}"#);
    assert_eq!(
        good.verify(&registry()).unwrap().field("period"),
        Some(&json!({"from": "2026-01-01", "to": "2026-06-30"}))
    );
    for value in [
        r#"{"from":"2026-01-01","to":"2026-06-30","from":"2025-01-01"}"#,
        r#"[{"a":{"b":1,"b":1}}]"#,
    ] {
        let env = signed_with_value_text(value);
        // Through the wire form as well as directly.
        let env = Envelope::from_json(&env.to_json()).unwrap();
        match env.verify(&registry()) {
            Err(e @ EnvelopeError::MalformedDisclosure { index: 0, .. }) => {
                assert_eq!(e.code(), "malformed_disclosure");
                assert!(e.to_string().contains("repeats a member name"), "{e}");
            }
            other => panic!("{value}: {other:?}"),
        }
    }
}

fn broker_keys() -> KeyRegistry {
    let mut reg = KeyRegistry::new();
    reg.insert(AgencyKey {
        owner: BROKER_KEY_OWNER.into(),
        key_id: "b1".into(),
        public_key: key(5).verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    reg.insert(AgencyKey {
        owner: "linkoping".into(),
        key_id: "l1".into(),
        public_key: key(6).verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    reg
}

/// A message signed over `body` exactly as given (section 13.3.1).
fn signed_body(tag: &str, body: &str, seed: u8, key_id: &str) -> Signed {
    let mut w = Writer::with_tag(tag);
    w.str(key_id).bytes(body.as_bytes());
    let signature = ed25519_dalek::Signer::sign(&key(seed), &w.finish());
    Signed {
        body: Base64Url(body.as_bytes().to_vec()),
        key_id: key_id.into(),
        signature: Base64Url(signature.to_bytes().to_vec()),
    }
}

fn receipt_body() -> String {
    to_json(&Receipt {
        alert_id: Some("a1b2c3".into()),
        publisher: "forsakringskassan".into(),
        envelope_hash: Some(messages::envelope_hash(&signed())),
        status: ReceiptStatus::Accepted,
        rejection: None,
        shares: vec![],
        denials: vec![],
        audit_index: None,
        policy_version: "sha256:ab".into(),
        received_at_ms: T0,
        signed_at_ms: T0,
    })
}

#[test]
fn a_signed_body_with_a_repeated_member_is_a_malformed_message() {
    let body = receipt_body();
    let ok = signed_body(messages::TAG_RECEIPT, &body, 5, "b1");
    ok.verify::<Receipt>(messages::TAG_RECEIPT, &broker_keys(), BROKER_KEY_OWNER)
        .unwrap();
    // Members the reader does not know are ignored, but not repeated ones;
    // nor repeats inside a nested object.
    for repeated in [
        body.replacen('{', r#"{"note":1,"note":2,"#, 1),
        body.replacen("\"status\"", r#""extra":{"a":1,"a":2},"status""#, 1),
    ] {
        let message = signed_body(messages::TAG_RECEIPT, &repeated, 5, "b1");
        let e = message
            .verify::<Receipt>(messages::TAG_RECEIPT, &broker_keys(), BROKER_KEY_OWNER)
            .unwrap_err();
        assert_eq!(e.code(), "malformed_message", "{repeated}: {e}");
    }
    // The same for an acknowledgement, signed by the agency.
    let ack = r#"{"agency":"linkoping","share_ids":[],"signed_at_ms":1795953600000,"by":1,"by":2}"#;
    let message = signed_body(messages::TAG_ACK, ack, 6, "l1");
    let e = message
        .verify::<Ack>(messages::TAG_ACK, &broker_keys(), "linkoping")
        .unwrap_err();
    assert_eq!(e.code(), "malformed_message", "{e}");
}

#[test]
fn a_delivery_with_a_repeated_member_is_a_malformed_message() {
    let env = signed();
    let stamp = to_json(&Signed::sign(
        messages::TAG_SHARE_STAMP,
        &json!({}),
        &key(5),
        "b1",
    ));
    let good = object(&[
        ("envelope", object(&members(&env))),
        ("stamp", stamp.clone()),
    ]);
    assert_eq!(Delivery::from_json(good.as_bytes()).unwrap().envelope, env);
    let mut m = members(&env);
    m[0].1 = m[0].1.replacen(
        "\"publisher\"",
        "\"publisher\":\"polisen\",\"publisher\"",
        1,
    );
    for text in [
        object(&[("envelope", object(&m)), ("stamp", stamp.clone())]),
        object(&[
            ("envelope", object(&members(&env))),
            ("stamp", stamp.clone()),
            ("stamp", stamp.clone()),
        ]),
    ] {
        let e = Delivery::from_json(text.as_bytes()).unwrap_err();
        assert_eq!(e.code(), "malformed_message", "{e}");
    }
}
