//! Hostile and broken alerts: each is refused with a specific reason in the
//! receipt and an audit entry, while other agencies keep being served.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use samverkan_broker::audit::EntryKind;
use samverkan_e2e::{TestBroker, prepare_dir};
use samverkan_sdk::alerts::{CompanyFlag, CompanyFlagContext, CompanyIndicator};
use samverkan_sdk::client::Client;
use samverkan_sdk::identifiers::{Kommunkod, Organisationsnummer};
use samverkan_sdk::keys::{self, AgencyKey, KeyRegistry};
use samverkan_sdk::messages::{Receipt, ReceiptStatus};
use samverkan_sdk::{Alert, Envelope, PublishError};
use serde_json::{Value, json};

use crate::fixtures::{TEST_ORGNR, incorrect_payment};

const TOPIC: &str = "welfare/incorrect-payment/ost";

fn company_flag() -> Alert {
    CompanyFlag::new(
        Organisationsnummer::parse(TEST_ORGNR).unwrap(),
        Kommunkod::parse("0581").unwrap(),
        [CompanyIndicator::DebtsAtKronofogden],
        CompanyFlagContext::Procurement,
    )
    .build()
    .unwrap()
}

/// Publishes and expects a rejection; returns its receipt.
async fn refused(client: &Client, envelope: Envelope) -> Receipt {
    match client.publish_envelope(envelope).await {
        Err(PublishError::Rejected(receipt)) => *receipt,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Asserts the receipt's code and that the audit log holds the rejection.
async fn assert_refused(broker: &TestBroker, receipt: &Receipt, code: &str) {
    assert_eq!(receipt.status, ReceiptStatus::Rejected);
    let rejection = receipt.rejection.as_ref().unwrap();
    assert_eq!(rejection.code, code, "{}", rejection.message);
    assert!(!rejection.message.is_empty());
    let index = receipt.audit_index.expect("a rejection has an audit entry");
    let entries = broker
        .broker()
        .store()
        .audit_range(index, index + 1)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.kind, EntryKind::Rejection);
    assert_eq!(entry.reason_code.as_deref(), Some(code));
    assert_eq!(entry.publisher.as_deref(), Some("forsakringskassan"));
    assert_eq!(entry.alert_id, receipt.alert_id);
}

fn signing_key(broker: &TestBroker, agency: &str) -> SigningKey {
    keys::read_signing_key(&broker.pki().signing_key(agency)).unwrap()
}

/// Signs `fields` as Försäkringskassan with `key` under `key_id`.
fn sign_as_fk(client: &Client, alert: &Alert, key: &SigningKey, key_id: &str) -> Envelope {
    let mut header = client.sign(TOPIC, alert).unwrap().header;
    header.key_id = key_id.into();
    Envelope::sign(header, &alert.fields, key).unwrap()
}

#[tokio::test]
async fn every_kind_of_bad_alert_is_refused_specifically_and_audited() {
    // An extra, expired key for Försäkringskassan.
    let dir = prepare_dir();
    let expired = SigningKey::from_bytes(&[42; 32]);
    let keys_file = dir.path().join("policies/keys.toml");
    let mut registry = KeyRegistry::load(&keys_file).unwrap();
    registry.insert(AgencyKey {
        owner: "forsakringskassan".into(),
        key_id: "forsakringskassan-2020".into(),
        public_key: expired.verifying_key(),
        not_before_ms: None,
        not_after_ms: Some(1_600_000_000_000),
        revoked_at_ms: None,
        revocation_reason: None,
    });
    std::fs::write(&keys_file, registry.to_toml("test keys")).unwrap();
    let broker = TestBroker::start_in(dir, |_| {}).await;

    let mut config = broker.agency_config("forsakringskassan");
    config.max_packet_size = 16 * 1024 * 1024;
    let fk = Client::connect(config).await.unwrap();

    // Meanwhile Skatteverket keeps publishing.
    let skv = broker.agency("skatteverket").await;
    let background = tokio::spawn(async move {
        let mut accepted = 0;
        for _ in 0..20 {
            let r = skv
                .publish("welfare/company/ost", company_flag())
                .await
                .unwrap();
            assert_eq!(r.status, ReceiptStatus::Accepted);
            accepted += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (skv, accepted)
    });

    let fk_key = signing_key(&broker, "forsakringskassan");
    let alert = incorrect_payment("0580");

    // A forged signature.
    let mut env = fk.sign(TOPIC, &alert).unwrap();
    env.signature.0[10] ^= 1;
    assert_refused(&broker, &refused(&fk, env).await, "bad_signature").await;

    // A disclosure that does not match its digest.
    let mut env = fk.sign(TOPIC, &alert).unwrap();
    let last = env.disclosures[0].0.len() - 2;
    env.disclosures[0].0[last] ^= 1;
    assert_refused(
        &broker,
        &refused(&fk, env).await,
        "disclosure_without_digest",
    )
    .await;

    // An unknown key id.
    let env = sign_as_fk(&fk, &alert, &fk_key, "forsakringskassan-ghost");
    assert_refused(&broker, &refused(&fk, env).await, "unknown_key").await;

    // An expired key.
    let env = sign_as_fk(&fk, &alert, &expired, "forsakringskassan-2020");
    assert_refused(&broker, &refused(&fk, env).await, "key_expired").await;

    // A signature by another agency's key under Försäkringskassan's key id.
    let env = sign_as_fk(
        &fk,
        &alert,
        &signing_key(&broker, "polisen"),
        "forsakringskassan-dev-1",
    );
    assert_refused(&broker, &refused(&fk, env).await, "bad_signature").await;

    // Clock skew: signed an hour ago.
    let mut header = fk.sign(TOPIC, &alert).unwrap().header;
    header.issued_at_ms -= 3_600_000;
    let env = Envelope::sign(header, &alert.fields, &fk_key).unwrap();
    assert_refused(&broker, &refused(&fk, env).await, "clock_skew").await;

    // A replayed alert id with different content.
    let original = fk.sign(TOPIC, &alert).unwrap();
    assert_eq!(
        fk.publish_envelope(original.clone()).await.unwrap().status,
        ReceiptStatus::Accepted
    );
    let mut header = original.header.clone();
    header.issued_at_ms += 1;
    let changed = Envelope::sign(header, &incorrect_payment("0581").fields, &fk_key).unwrap();
    assert_refused(&broker, &refused(&fk, changed).await, "alert_id_reused").await;

    // A schema violation: a field the alert type does not have.
    let mut fields = alert.fields.clone();
    fields.insert("shoe_size".into(), json!(44));
    let env = fk
        .sign(TOPIC, &Alert::new("welfare.incorrect_payment", fields))
        .unwrap();
    let receipt = refused(&fk, env).await;
    assert_refused(&broker, &receipt, "schema_violation").await;
    assert!(
        receipt
            .rejection
            .as_ref()
            .unwrap()
            .message
            .contains("shoe_size")
    );

    // A wrong personnummer check digit; the number is not repeated back.
    let mut fields = alert.fields.clone();
    fields.insert("subject_personnummer".into(), json!("19121212-1213"));
    let env = fk
        .sign(TOPIC, &Alert::new("welfare.incorrect_payment", fields))
        .unwrap();
    let receipt = refused(&fk, env).await;
    assert_refused(&broker, &receipt, "schema_violation").await;
    let message = &receipt.rejection.as_ref().unwrap().message;
    assert!(message.contains("check digit"), "{message}");
    assert!(!message.contains("1213"), "{message}");

    // An unknown alert type.
    let env = fk
        .sign(
            TOPIC,
            &Alert::new("welfare.parking_ticket", alert.fields.clone()),
        )
        .unwrap();
    assert_refused(&broker, &refused(&fk, env).await, "unknown_alert_type").await;

    // A 10 MiB payload.
    let mut fields = alert.fields.clone();
    fields.insert(
        "grounds".into(),
        Value::String("x".repeat(10 * 1024 * 1024)),
    );
    let env = fk
        .sign(TOPIC, &Alert::new("welfare.incorrect_payment", fields))
        .unwrap();
    let receipt = refused(&fk, env).await;
    assert_refused(&broker, &receipt, "payload_too_large").await;
    assert!(
        receipt.alert_id.is_some(),
        "the receipt names the refused alert"
    );

    // The other agency was served throughout, and still is.
    let (skv, accepted) = background.await.unwrap();
    assert_eq!(accepted, 20);
    let after = skv
        .publish("welfare/company/ost", company_flag())
        .await
        .unwrap();
    assert_eq!(after.status, ReceiptStatus::Accepted);
    // And so is Försäkringskassan, with a good alert.
    let ok = fk.publish(TOPIC, incorrect_payment("0580")).await.unwrap();
    assert_eq!(ok.status, ReceiptStatus::Accepted);
}

#[tokio::test]
async fn exceeding_the_publish_limit_is_refused_and_others_are_unaffected() {
    let dir = prepare_dir();
    let limits = dir.path().join("policies/limits.toml");
    let mut text = std::fs::read_to_string(&limits).unwrap();
    text.push_str("\n[agency.kronofogden]\npublish_per_second = 2\npublish_burst = 2\n");
    std::fs::write(&limits, text).unwrap();
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let skv = broker.agency("skatteverket").await;

    // A client that will not wait: the refusals reach it, with when to retry.
    let mut impatient = broker.agency_config("kronofogden");
    impatient.wait_when_rate_limited = false;
    let kfm = Client::connect(impatient).await.unwrap();
    let mut limited = Vec::new();
    let mut accepted = 0;
    for _ in 0..6 {
        match kfm.publish("welfare/company/ost", company_flag()).await {
            Ok(r) => {
                assert_eq!(r.status, ReceiptStatus::Accepted);
                accepted += 1;
            }
            Err(PublishError::Rejected(r)) => limited.push(r),
            Err(e) => panic!("{e}"),
        }
    }
    assert!((2..6).contains(&accepted), "accepted {accepted}");
    assert!(!limited.is_empty());
    for r in &limited {
        let rejection = r.rejection.as_ref().unwrap();
        assert_eq!(rejection.code, "rate_limited");
        assert!(rejection.retry_after_ms.unwrap_or(0) > 0);
        let index = r.audit_index.unwrap();
        let entry = &broker
            .broker()
            .store()
            .audit_range(index, index + 1)
            .await
            .unwrap()[0];
        assert_eq!(entry.reason_code.as_deref(), Some("rate_limited"));
    }

    // Skatteverket is not slowed by Kronofogden's flood.
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let r = skv
            .publish("welfare/company/ost", company_flag())
            .await
            .unwrap();
        assert_eq!(r.status, ReceiptStatus::Accepted);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    // A patient client (the default) waits as the broker says and gets through.
    let kfm = broker.agency("kronofogden").await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let r = kfm
            .publish("welfare/company/ost", company_flag())
            .await
            .unwrap();
        assert_eq!(r.status, ReceiptStatus::Accepted);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// Publishes `payload` raw (not through the SDK) as Försäkringskassan and
/// returns the broker-verified receipt that answers it.
async fn raw_receipt(broker: &TestBroker, client_id: &str, payload: Vec<u8>) -> Receipt {
    use rumqttc::{Packet, QoS};
    use samverkan_sdk::messages::{BROKER_KEY_OWNER, Signed, TAG_RECEIPT};
    use samverkan_sdk::topics;

    use crate::raw::{Outcome, connect, poll_for};

    let (client, mut events) =
        connect(broker.raw_options(client_id, broker.agency_tls("forsakringskassan")))
            .await
            .unwrap();
    client
        .subscribe(topics::receipts("forsakringskassan"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let suback = poll_for(&mut events, Duration::from_secs(10), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    assert!(matches!(suback, Outcome::Got(())), "{suback:?}");
    client
        .publish(
            topics::outbox("forsakringskassan", TOPIC),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
    let receipts = topics::receipts("forsakringskassan");
    let got = poll_for(&mut events, Duration::from_secs(20), |p| match p {
        Packet::Publish(p) if p.topic == receipts => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    let Outcome::Got(bytes) = got else {
        panic!("no receipt: {got:?}");
    };
    let broker_keys = KeyRegistry::load(&broker.pki().broker_keys()).unwrap();
    serde_json::from_slice::<Signed>(&bytes)
        .unwrap()
        .verify::<Receipt>(TAG_RECEIPT, &broker_keys, BROKER_KEY_OWNER)
        .unwrap()
}

#[tokio::test]
async fn an_envelope_with_a_repeated_member_is_refused_as_malformed_and_audited() {
    let broker = TestBroker::start().await;
    let key = signing_key(&broker, "forsakringskassan");
    let alert = incorrect_payment("0580");
    let sign = |alert_id: &str| {
        let header = alert.header(
            TOPIC,
            "forsakringskassan",
            "forsakringskassan-dev-1",
            alert_id,
            samverkan_sdk::time::now_ms(),
        );
        String::from_utf8(
            Envelope::sign(header, &alert.fields, &key)
                .unwrap()
                .to_json(),
        )
        .unwrap()
    };

    // The header names a publisher twice: a reader keeping the first member
    // sees an alert of the Police, one keeping the last an alert of
    // Försäkringskassan, validly signed.
    let text = sign("dup-publisher").replacen(
        "\"publisher\":\"forsakringskassan\"",
        "\"publisher\":\"polisen\",\"publisher\":\"forsakringskassan\"",
        1,
    );
    assert!(text.contains("polisen"));
    let receipt = raw_receipt(&broker, "fk-raw-1", text.into_bytes()).await;
    assert_refused(&broker, &receipt, "malformed_envelope").await;
    let message = &receipt.rejection.as_ref().unwrap().message;
    assert!(message.contains("repeats a member name"), "{message}");
    // Nothing is read from such bytes, not even the alert id or the hash.
    assert_eq!(receipt.alert_id, None);
    assert_eq!(receipt.envelope_hash, None);

    // A repeated signature, the last one forged: refused as malformed, not
    // as a bad signature.
    let forged = format!("\"signature\":\"{}\",", "A".repeat(86));
    let text =
        sign("dup-signature").replacen("\"disclosures\"", &format!("{forged}\"disclosures\""), 1);
    let receipt = raw_receipt(&broker, "fk-raw-2", text.into_bytes()).await;
    assert_refused(&broker, &receipt, "malformed_envelope").await;
}
