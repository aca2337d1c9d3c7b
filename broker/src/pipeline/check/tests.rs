//! The check stage on its own: a policy set copied from `policies/` with
//! test keys (valid, revoked, not yet valid, expired) and a tight publish
//! limit for one agency, and alerts signed or broken on purpose.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey};
use samverkan_sdk::envelope::{Base64Url, Digest, EnvelopeHeader, signing_input};
use serde_json::{Map, Value, json};

use super::*;

/// The broker's clock in every test.
const NOW: i64 = 1_800_000_000_000;
const DAY: i64 = 86_400_000;

/// Agencies of `policies/agencies.toml`, each with a test key `<agency>-t1`.
const AGENCIES: [&str; 7] = [
    "linkoping",
    "norrkoping",
    "polisen",
    "skatteverket",
    "forsakringskassan",
    "kronofogden",
    "akrimost",
];

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A `[[key]]` of keys.toml.
fn key_entry(owner: &str, id: &str, seed: u8, extra: &str) -> String {
    key_entry_from(owner, id, seed, NOW - 30 * DAY, extra)
}

fn key_entry_from(owner: &str, id: &str, seed: u8, not_before: i64, extra: &str) -> String {
    use base64::Engine;
    let public = base64::engine::general_purpose::STANDARD.encode(key(seed).verifying_key());
    format!(
        "[[key]]\nowner = \"{owner}\"\nid = \"{id}\"\npublic_key = \"{public}\"\nnot_before = {}\n{extra}\n",
        samverkan_sdk::time::format_ms(not_before)
    )
}

/// The repository's policy set with test keys and `kronofogden` limited
/// to a burst of 2.
fn policy() -> Arc<PolicySet> {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "samverkan-check-{}-{}",
        std::process::id(),
        std::thread::current()
            .name()
            .unwrap_or("t")
            .replace("::", "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
        &dir,
    );
    let mut keys = String::new();
    for (i, agency) in AGENCIES.iter().enumerate() {
        keys += &key_entry(agency, &format!("{agency}-t1"), i as u8 + 1, "");
    }
    let at = samverkan_sdk::time::format_ms;
    keys += &key_entry(
        "skatteverket",
        "sk-revoked",
        100,
        &format!("revoked_at = {}", at(NOW - DAY)),
    );
    keys += &key_entry(
        "skatteverket",
        "sk-revoked-now",
        101,
        &format!("revoked_at = {}", at(NOW - 1000)),
    );
    keys += &key_entry(
        "skatteverket",
        "sk-expired",
        102,
        &format!("not_after = {}", at(NOW - DAY)),
    );
    keys += &key_entry_from("skatteverket", "sk-future", 103, NOW + DAY, "");
    std::fs::write(dir.join("keys.toml"), keys).unwrap();
    std::fs::write(
        dir.join("limits.toml"),
        "[default]\npublish_per_second = 2000\npublish_burst = 4000\n\n[agency.kronofogden]\npublish_per_second = 1\npublish_burst = 2\n",
    )
    .unwrap();
    let set = PolicySet::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(set)
}

fn context(policy: Arc<PolicySet>) -> CheckContext {
    CheckContext {
        limits: Arc::new(PublishLimits::from_policy(&policy)),
        policy,
        max_payload_bytes: 16 * 1024,
        max_clock_skew_ms: 300_000,
        now: NOW,
    }
}

fn company_flag() -> Map<String, Value> {
    match json!({
        "orgnr": "556036-0793",
        "company_name": "Bygg AB",
        "kommunkod": "0580",
        "indicators": ["f_tax_revoked"],
        "context": "procurement",
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn header(publisher: &str, key_id: &str, alert_id: &str) -> EnvelopeHeader {
    EnvelopeHeader {
        version: samverkan_sdk::envelope::VERSION,
        alert_id: alert_id.into(),
        publisher: publisher.into(),
        key_id: key_id.into(),
        alert_type: "welfare.company_flag".into(),
        topic: "welfare/company/ost".into(),
        issued_at_ms: NOW - 1000,
        to: None,
    }
}

/// The seed of a test key id.
fn seed_of(key_id: &str) -> u8 {
    match key_id {
        "sk-revoked" => 100,
        "sk-revoked-now" => 101,
        "sk-expired" => 102,
        "sk-future" => 103,
        id => AGENCIES
            .iter()
            .position(|a| id == format!("{a}-t1"))
            .map_or(99, |i| i as u8 + 1),
    }
}

fn sign(header: EnvelopeHeader, fields: &Map<String, Value>) -> Envelope {
    let seed = seed_of(&header.key_id);
    Envelope::sign(header, fields, &key(seed)).unwrap()
}

/// Signs `e` again after its header or digests were changed.
fn resign(e: &mut Envelope, seed: u8) {
    let signature = key(seed).sign(&signing_input(&e.header, &e.digests));
    e.signature = Base64Url(signature.to_bytes().to_vec());
}

fn arrived(tenant: &str, logical: &str, payload: Vec<u8>) -> Arrived {
    Arrived::new(tenant.into(), logical.into(), Bytes::from(payload))
}

fn from(tenant: &str, e: &Envelope) -> Arrived {
    arrived(tenant, &e.header.topic.clone(), e.to_json())
}

fn check_one(ctx: &CheckContext, a: Arrived) -> Outcome {
    check(ctx, vec![a], &HashMap::new()).pop().unwrap()
}

fn rejected(outcome: &Outcome) -> &Rejected {
    match outcome {
        Outcome::Rejected(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn code(ctx: &CheckContext, a: Arrived) -> RejectionCode {
    rejected(&check_one(ctx, a)).code
}

fn valid(alert_id: &str) -> Envelope {
    sign(
        header("skatteverket", "skatteverket-t1", alert_id),
        &company_flag(),
    )
}

#[test]
fn an_alert_is_accepted_with_its_shares_and_denials() {
    let ctx = context(policy());
    let mut h = header("skatteverket", "skatteverket-t1", "a-1");
    h.to = Some(vec!["linkoping".into(), "polisen".into()]);
    let e = sign(h, &company_flag());
    let Outcome::Accepted(a) = check_one(&ctx, from("skatteverket", &e)) else {
        panic!("not accepted");
    };
    assert_eq!(a.tenant, "skatteverket");
    assert_eq!(a.envelope_hash, messages::envelope_hash(&e));
    let shares: Vec<_> = a.decision.shares.iter().map(|s| &s.recipient).collect();
    assert_eq!(shares, ["linkoping"]);
    assert_eq!(a.decision.denials.len(), 1);
    assert_eq!(a.decision.denials[0].recipient.as_deref(), Some("polisen"));
    assert_eq!(
        a.decision.denials[0].reason.denial_code(),
        samverkan_sdk::codes::DenialCode::NoRuleForRecipient
    );
}

#[test]
fn refusals_before_the_envelope_is_read() {
    let ctx = context(policy());
    let e = valid("a-2");
    // 1. Too large; still named, since it can be read.
    let mut big = company_flag();
    big.insert("company_name".into(), json!("x".repeat(20_000)));
    let large = sign(header("skatteverket", "skatteverket-t1", "big"), &big);
    let r = check_one(&ctx, from("skatteverket", &large));
    let r = rejected(&r);
    assert_eq!(r.code, RejectionCode::PayloadTooLarge);
    assert_eq!(r.alert_id.as_deref(), Some("big"));
    assert!(r.envelope_hash.is_some());
    // 2. Not a valid logical topic.
    assert_eq!(
        code(&ctx, arrived("skatteverket", "Welfare//x", e.to_json())),
        RejectionCode::InvalidTopic
    );
    // 4. Not an envelope: no hash; the alert id only if it can be peeked.
    let r = check_one(
        &ctx,
        arrived("skatteverket", "welfare/company/ost", b"{]".to_vec()),
    );
    let r = rejected(&r);
    assert_eq!(r.code, RejectionCode::MalformedEnvelope);
    assert_eq!(
        (r.alert_id.as_deref(), r.envelope_hash.as_deref()),
        (None, None)
    );
    let peekable = br#"{"header": {"alert_id": "peek-1"}}"#.to_vec();
    let r = check_one(
        &ctx,
        arrived("skatteverket", "welfare/company/ost", peekable),
    );
    let r = rejected(&r);
    assert_eq!(r.code, RejectionCode::MalformedEnvelope);
    assert_eq!(r.alert_id.as_deref(), Some("peek-1"));
    assert_eq!(r.envelope_hash, None);
}

#[test]
fn the_publish_limit_refuses_with_a_retry_time() {
    let ctx = context(policy());
    let alerts: Vec<Arrived> = (0..3)
        .map(|i| {
            let e = sign(
                header("kronofogden", "kronofogden-t1", &format!("k-{i}")),
                &company_flag(),
            );
            from("kronofogden", &e)
        })
        .collect();
    let outcomes = check(&ctx, alerts, &HashMap::new());
    assert!(matches!(outcomes[0], Outcome::Accepted(_)));
    assert!(matches!(outcomes[1], Outcome::Accepted(_)));
    let r = rejected(&outcomes[2]);
    assert_eq!(r.code, RejectionCode::RateLimited);
    assert!(r.retry_after_ms.is_some_and(|ms| ms >= 1));
    assert_eq!(r.alert_id.as_deref(), Some("k-2"));
    // Other agencies are not affected.
    assert!(matches!(
        check_one(&ctx, from("skatteverket", &valid("a-3"))),
        Outcome::Accepted(_)
    ));
}

#[test]
fn refusals_of_the_envelope_against_the_connection_and_the_clock() {
    let ctx = context(policy());
    let e = valid("a-4");
    // 5. Published by another agency's connection.
    let r = check_one(&ctx, from("linkoping", &e));
    assert_eq!(rejected(&r).code, RejectionCode::PublisherMismatch);
    // 6. On another topic than the signed one.
    assert_eq!(
        code(
            &ctx,
            arrived("skatteverket", "welfare/company/vast", e.to_json())
        ),
        RejectionCode::TopicMismatch
    );
    // 7. Signed too long ago; the limit itself is accepted.
    let mut h = header("skatteverket", "skatteverket-t1", "old");
    h.issued_at_ms = NOW - 300_001;
    assert_eq!(
        code(&ctx, from("skatteverket", &sign(h, &company_flag()))),
        RejectionCode::ClockSkew
    );
    let mut h = header("skatteverket", "skatteverket-t1", "edge");
    h.issued_at_ms = NOW + 300_000;
    assert!(matches!(
        check_one(&ctx, from("skatteverket", &sign(h, &company_flag()))),
        Outcome::Accepted(_)
    ));
}

#[test]
fn every_verification_refusal_keeps_its_code() {
    let ctx = context(policy());
    let sk = |e: &Envelope| from("skatteverket", e);
    let seed = seed_of("skatteverket-t1");

    let mut e = valid("v-1");
    e.header.version = 2;
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::UnsupportedVersion);

    let mut e = valid("v-2");
    e.header.to = Some(vec!["polisen".into(), "linkoping".into()]);
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::InvalidHeader);

    let mut e = valid("v-3");
    e.digests.extend((0..64u8).map(|i| Digest::of(&[i])));
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::TooManyFields);

    let e = sign(header("skatteverket", "sk-unknown", "v-4"), &company_flag());
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::UnknownKey);

    let e = sign(header("skatteverket", "sk-revoked", "v-5"), &company_flag());
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::KeyRevoked);

    let e = sign(header("skatteverket", "sk-expired", "v-6"), &company_flag());
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::KeyExpired);

    let e = sign(header("skatteverket", "sk-future", "v-6b"), &company_flag());
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::KeyNotYetValid);

    let mut e = valid("v-7");
    e.signature.0[5] ^= 1;
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::BadSignature);

    let mut e = valid("v-8");
    e.digests.reverse();
    resign(&mut e, seed);
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::DigestsNotSorted);

    let mut e = valid("v-9");
    let stranger = valid("v-9b");
    e.disclosures.push(stranger.disclosures[0].clone());
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::DisclosureWithoutDigest);

    let mut e = valid("v-10");
    e.digests.push(Digest::of(b"not a disclosure"));
    e.digests.sort();
    e.disclosures.push(Base64Url(b"not a disclosure".to_vec()));
    resign(&mut e, seed);
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::MalformedDisclosure);

    let mut e = valid("v-11");
    e.disclosures.push(e.disclosures[0].clone());
    assert_eq!(code(&ctx, sk(&e)), RejectionCode::DuplicateField);
}

#[test]
fn a_key_valid_at_signing_but_revoked_now_is_refused() {
    let ctx = context(policy());
    let mut h = header("skatteverket", "sk-revoked-now", "r-1");
    h.issued_at_ms = NOW - 2000;
    let e = sign(h, &company_flag());
    assert_eq!(
        code(&ctx, from("skatteverket", &e)),
        RejectionCode::KeyRevoked
    );
}

#[test]
fn refusals_by_the_policy() {
    let ctx = context(policy());
    let mut h = header("skatteverket", "skatteverket-t1", "p-1");
    h.alert_type = "welfare.no_such_type".into();
    assert_eq!(
        code(&ctx, from("skatteverket", &sign(h, &company_flag()))),
        RejectionCode::UnknownAlertType
    );
    let mut fields = company_flag();
    fields.insert("context".into(), json!("lottery"));
    let e = sign(header("skatteverket", "skatteverket-t1", "p-2"), &fields);
    let r = check_one(&ctx, from("skatteverket", &e));
    let r = rejected(&r);
    assert_eq!(r.code, RejectionCode::SchemaViolation);
    // The message masks the value.
    assert!(!r.message.contains("lottery"), "{}", r.message);
}

#[test]
fn resends_with_the_same_or_other_content() {
    let ctx = context(policy());
    let e = valid("s-1");
    let known: HashMap<_, _> = [(
        ("skatteverket".to_string(), "s-1".to_string()),
        KnownAlert {
            envelope_hash: messages::envelope_hash(&e),
            receipt: b"the receipt".to_vec(),
        },
    )]
    .into();
    // The same content: the stored receipt, even if the clock has moved on.
    let later = CheckContext {
        now: NOW + DAY,
        ..context(policy())
    };
    let outcome = check(&later, vec![from("skatteverket", &e)], &known).pop();
    assert!(matches!(
        outcome,
        Some(Outcome::Resend { ref tenant, ref receipt, .. }) if tenant == "skatteverket" && receipt == b"the receipt"
    ));
    // Other content under the same id.
    let mut fields = company_flag();
    fields.insert("context".into(), json!("other"));
    let other = sign(header("skatteverket", "skatteverket-t1", "s-1"), &fields);
    let outcome = check(&ctx, vec![from("skatteverket", &other)], &known);
    assert_eq!(rejected(&outcome[0]).code, RejectionCode::AlertIdReused);

    // Within one batch: the same alert twice, then other content.
    let outcomes = check(
        &ctx,
        vec![
            from("skatteverket", &valid("s-2")),
            from("skatteverket", &valid("s-2")),
        ],
        &HashMap::new(),
    );
    assert!(matches!(outcomes[0], Outcome::Accepted(_)));
    // Two signatures of the same content differ in their salts: a reuse.
    assert_eq!(rejected(&outcomes[1]).code, RejectionCode::AlertIdReused);
    let twice = valid("s-3");
    let outcomes = check(
        &ctx,
        vec![from("skatteverket", &twice), from("skatteverket", &twice)],
        &HashMap::new(),
    );
    assert!(matches!(outcomes[1], Outcome::SameAs { index: 0, .. }));
}

#[test]
fn alerts_accepted_meanwhile_by_another_node_become_resends_or_reuses() {
    let ctx = context(policy());
    let (same, other) = (valid("n-1"), valid("n-2"));
    let mut outcomes = check(
        &ctx,
        vec![
            from("skatteverket", &same),
            from("skatteverket", &other),
            from("skatteverket", &valid("n-3")),
        ],
        &HashMap::new(),
    );
    assert_eq!(accepted_keys(&outcomes).len(), 3);
    let stored = |e: &Envelope| KnownAlert {
        envelope_hash: messages::envelope_hash(e),
        receipt: b"stored".to_vec(),
    };
    let late: HashMap<_, _> = [
        (("skatteverket".into(), "n-1".into()), stored(&same)),
        // Another node accepted other content under n-2.
        (("skatteverket".into(), "n-2".into()), stored(&valid("n-2"))),
    ]
    .into();
    settle_late_resends(&mut outcomes, &late);
    assert!(
        matches!(&outcomes[0], Outcome::Resend { receipt, alert_id, .. } if receipt == b"stored" && alert_id == "n-1")
    );
    assert_eq!(
        resent_keys(&outcomes),
        [("skatteverket".to_string(), "n-1".to_string())]
    );
    assert_eq!(rejected(&outcomes[1]).code, RejectionCode::AlertIdReused);
    assert!(matches!(outcomes[2], Outcome::Accepted(_)));
    assert_eq!(
        accepted_keys(&outcomes),
        [("skatteverket".to_string(), "n-3".to_string())]
    );
}

#[test]
fn one_forged_signature_in_a_batch_is_refused_alone() {
    let ctx = context(policy());
    let mut alerts: Vec<Envelope> = (0..12).map(|i| valid(&format!("b-{i}"))).collect();
    alerts[7].signature.0[40] ^= 0x20;
    let outcomes = check(
        &ctx,
        alerts.iter().map(|e| from("skatteverket", e)).collect(),
        &HashMap::new(),
    );
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 7 {
            let r = rejected(outcome);
            assert_eq!(r.code, RejectionCode::BadSignature);
            assert_eq!(r.alert_id.as_deref(), Some("b-7"));
        } else {
            assert!(matches!(outcome, Outcome::Accepted(_)), "{i}: {outcome:?}");
        }
    }
}

#[test]
fn every_rejection_code_is_exercised_above() {
    // The tests of this file name each code; a code added to the protocol
    // needs a test here too.
    let this_file = include_str!("tests.rs");
    for code in RejectionCode::ALL {
        let variant = format!("{code:?}");
        assert!(
            this_file.contains(&format!("RejectionCode::{variant}")),
            "no test refuses with {code}"
        );
    }
}
