//! Sign, verify, redact and tamper with envelopes.

mod common;

use common::*;
use proptest::prelude::*;
use samverkan_sdk::envelope::{Envelope, EnvelopeError};
use samverkan_sdk::keys::{AgencyKey, KeyError, KeyRegistry};

fn signed() -> Envelope {
    Envelope::sign(header(), &fields(), &key(1)).unwrap()
}

#[test]
fn sign_then_verify_round_trips_through_json() {
    let env = signed();
    let back = Envelope::from_json(&env.to_json()).unwrap();
    assert_eq!(back, env);
    let verified = back.verify(&registry()).unwrap();
    assert_eq!(verified.fields(), fields());
    assert_eq!(verified.header(), &header());
}

#[test]
fn redacted_envelope_still_verifies_without_the_removed_field() {
    let env = signed();
    let redacted = env.redact(|name| name != "subject_personnummer" && name != "grounds");
    let verified = redacted.verify(&registry()).unwrap();
    assert_eq!(verified.field("subject_personnummer"), None);
    assert_eq!(verified.field("grounds"), None);
    assert_eq!(verified.field("subject_kommunkod"), Some(&"0580".into()));
    assert_eq!(verified.disclosures().len(), 4);
    // The withheld value appears nowhere in what is sent.
    let wire = String::from_utf8(redacted.to_json()).unwrap();
    assert!(!wire.contains("1212"));
    // Redacting a verified alert gives the same result.
    let again = env
        .verify(&registry())
        .unwrap()
        .redacted(|name| name != "subject_personnummer" && name != "grounds");
    assert_eq!(again, redacted);
    // Redacting everything leaves a header-only alert that still verifies.
    assert!(
        env.redact(|_| false)
            .verify(&registry())
            .unwrap()
            .fields()
            .is_empty()
    );
}

#[test]
fn specific_errors() {
    let env = signed();

    let mut other_key = env.clone();
    other_key.header.key_id = "fk-2".into();
    assert!(matches!(
        other_key.verify(&registry()),
        Err(EnvelopeError::Key(KeyError::UnknownKey { .. }))
    ));

    let mut bad_version = env.clone();
    bad_version.header.version = 2;
    assert_eq!(
        bad_version.verify(&registry()),
        Err(EnvelopeError::UnsupportedVersion { found: 2 })
    );

    let forged = Envelope::sign(header(), &fields(), &key(9)).unwrap();
    assert_eq!(forged.verify(&registry()), Err(EnvelopeError::BadSignature));

    // A disclosure from another alert (validly encoded, not signed here).
    let mut added = env.clone();
    let foreign = Envelope::sign(header(), &fields(), &key(1)).unwrap();
    added.disclosures.push(foreign.disclosures[0].clone());
    assert_eq!(
        added.verify(&registry()),
        Err(EnvelopeError::DisclosureWithoutDigest { index: 6 })
    );

    // The same disclosure twice.
    let mut twice = env.clone();
    twice.disclosures.push(env.disclosures[0].clone());
    assert!(matches!(
        twice.verify(&registry()),
        Err(EnvelopeError::DuplicateField { .. })
    ));

    // Expired and revoked keys.
    let mut reg = KeyRegistry::new();
    let base = AgencyKey {
        owner: "forsakringskassan".into(),
        key_id: "fk-1".into(),
        public_key: key(1).verifying_key(),
        not_before_ms: None,
        not_after_ms: Some(T0),
        revoked_at_ms: None,
        revocation_reason: None,
    };
    reg.insert(base.clone());
    assert!(matches!(
        env.verify(&reg),
        Err(EnvelopeError::Key(KeyError::Expired { .. }))
    ));
    reg.insert(AgencyKey {
        not_after_ms: None,
        revoked_at_ms: Some(T0 - 1),
        ..base
    });
    assert_eq!(env.verify(&reg).unwrap_err().code(), "key_revoked");

    // Clock skew is checked against the verifier's clock.
    assert!(env.header.check_clock_skew(T0 + 299_000, 300_000).is_ok());
    assert!(matches!(
        env.header.check_clock_skew(T0 + 301_000, 300_000),
        Err(EnvelopeError::ClockSkew { .. })
    ));

    // Malformed JSON and unknown members.
    assert!(matches!(
        Envelope::from_json(b"{\"header\":1}"),
        Err(EnvelopeError::Malformed(_))
    ));
    let mut json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
    json["extra"] = 1.into();
    assert!(Envelope::from_json(json.to_string().as_bytes()).is_err());
}

#[test]
fn invalid_headers_are_refused_before_signing_and_verifying() {
    for mutate in [
        (|h: &mut samverkan_sdk::EnvelopeHeader| h.topic = "welfare/#".into())
            as fn(&mut samverkan_sdk::EnvelopeHeader),
        |h| h.topic = "welfare//ost".into(),
        |h| h.publisher = "Polisen".into(),
        |h| h.to = Some(vec![]),
        |h| h.to = Some(vec!["polisen".into(), "akrimost".into()]),
        |h| h.alert_id = "a b".into(),
    ] {
        let mut h = header();
        mutate(&mut h);
        assert!(matches!(
            Envelope::sign(h.clone(), &fields(), &key(1)),
            Err(EnvelopeError::InvalidHeader { .. })
        ));
        let mut env = signed();
        env.header = h;
        assert!(matches!(
            env.verify(&registry()),
            Err(EnvelopeError::InvalidHeader { .. })
        ));
    }
}

#[test]
fn explicit_recipients_are_signed() {
    let mut h = header();
    h.to = Some(vec!["akrimost".into(), "skatteverket".into()]);
    let env = Envelope::sign(h, &fields(), &key(1)).unwrap();
    assert!(env.verify(&registry()).is_ok());
    let mut narrowed = env.clone();
    narrowed.header.to = Some(vec!["akrimost".into()]);
    assert_eq!(
        narrowed.verify(&registry()),
        Err(EnvelopeError::BadSignature)
    );
    let mut widened = env;
    widened.header.to = None;
    assert_eq!(
        widened.verify(&registry()),
        Err(EnvelopeError::BadSignature)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_flipped_signature_byte_is_a_bad_signature(pos in 0usize..64, bit in 0u8..8) {
        let mut env = signed();
        env.signature.0[pos] ^= 1 << bit;
        prop_assert_eq!(env.verify(&registry()), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn any_flipped_digest_byte_is_a_bad_signature(which in 0usize..6, pos in 0usize..32, bit in 0u8..8) {
        let mut env = signed();
        env.digests[which].0[pos] ^= 1 << bit;
        prop_assert_eq!(env.verify(&registry()), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn any_flipped_disclosure_byte_is_detected(which in 0usize..6, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut env = signed();
        let d = &mut env.disclosures[which].0;
        let i = pos.index(d.len());
        d[i] ^= 1 << bit;
        prop_assert_eq!(
            env.verify(&registry()),
            Err(EnvelopeError::DisclosureWithoutDigest { index: which })
        );
    }

    #[test]
    fn any_flipped_header_byte_is_detected(field in 0usize..5, pos in any::<prop::sample::Index>(), bit in 0u8..7) {
        let mut env = signed();
        let h = &mut env.header;
        let target = match field {
            0 => &mut h.alert_id,
            1 => &mut h.publisher,
            2 => &mut h.key_id,
            3 => &mut h.alert_type,
            _ => &mut h.topic,
        };
        let mut bytes = target.clone().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit; // stays ASCII: bit < 7
        *target = String::from_utf8(bytes).unwrap();
        let result = env.verify(&registry());
        prop_assert!(result.is_err());
        // Whatever still parses and names a known key fails on the signature.
        if env.header.validate().is_ok() && field != 1 && field != 2 {
            prop_assert_eq!(result, Err(EnvelopeError::BadSignature));
        }
    }

    #[test]
    fn any_changed_issue_time_is_a_bad_signature(delta in 1i64..1_000_000_000) {
        let mut env = signed();
        env.header.issued_at_ms += delta;
        prop_assert_eq!(env.verify(&registry()), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn any_subset_of_disclosures_verifies(mask in 0u32..64) {
        let env = signed();
        let names: Vec<String> = fields().keys().cloned().collect();
        let keep: Vec<&String> = names.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| n).collect();
        let redacted = env.redact(|n| keep.iter().any(|k| k.as_str() == n));
        let verified = redacted.verify(&registry()).unwrap();
        prop_assert_eq!(verified.disclosures().len(), keep.len());
    }
}
