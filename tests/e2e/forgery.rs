//! Messages forged by another client of the same agency never reach the
//! application. The gateway lets no agency client publish on its inbox or
//! receipts topics (see `connections.rs`); these tests play a client that
//! got past it anyway, straight into the embedded rumqttd, and check that
//! the SDK's signature checks hold on their own.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use rumqttc::{Packet, QoS};
use samverkan_e2e::TestBroker;
use samverkan_sdk::messages::{self, Delivery, Receipt, ReceiptStatus, Rejection, Signed};
use samverkan_sdk::topics;

use crate::fixtures::{incorrect_payment, next_item, next_share};
use crate::raw::{Outcome, connect, poll_for};

const TOPIC: &str = "welfare/incorrect-payment/ost";

#[tokio::test]
async fn forged_deliveries_are_refused_by_the_sdk() {
    let broker = TestBroker::start().await;
    let linkoping = broker.agency("linkoping").await;
    let mut inbox = linkoping.subscribe("welfare/#").await.unwrap();

    // A genuine share, captured by a second (rogue) Linköping client.
    let (rogue, mut rogue_events) =
        connect(broker.raw_options_behind_gateway("lkp-rogue", "linkoping"))
            .await
            .unwrap();
    rogue
        .subscribe("/tenants/linkoping/in/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(matches!(
        poll_for(&mut rogue_events, Duration::from_secs(5), |p| matches!(
            p,
            Packet::SubAck(_)
        )
        .then_some(()))
        .await,
        Outcome::Got(())
    ));
    let fk = broker.agency("forsakringskassan").await;
    fk.publish(TOPIC, incorrect_payment("0580")).await.unwrap();
    let genuine = next_share(&mut inbox).await;
    genuine.ack().await.unwrap();
    let captured = match poll_for(&mut rogue_events, Duration::from_secs(5), |p| match p {
        Packet::Publish(p) if !p.topic.contains("/_audit/") => Some(p.payload.to_vec()),
        _ => None,
    })
    .await
    {
        Outcome::Got(payload) => payload,
        other => panic!("the rogue client saw no delivery: {other:?}"),
    };
    let delivery = Delivery::from_json(&captured).unwrap();

    // 1. Garbage.
    // 2. A stamp signed by a key that is not the broker's.
    // 3. The genuine stamp on an altered envelope (a disclosure added back).
    // 4. A genuine delivery moved to another topic.
    let fake_key = SigningKey::from_bytes(&[7; 32]);
    let mut fake_stamp = delivery.clone();
    fake_stamp.stamp = Signed::sign(
        messages::TAG_SHARE_STAMP,
        &serde_json::from_slice::<serde_json::Value>(&delivery.stamp.body.0).unwrap(),
        &fake_key,
        &delivery.stamp.key_id,
    );
    let mut altered = delivery.clone();
    altered.envelope.disclosures.pop();
    let forgeries: Vec<(String, Vec<u8>)> = vec![
        (topics::inbox("linkoping", TOPIC), b"{not json".to_vec()),
        (topics::inbox("linkoping", TOPIC), fake_stamp.to_json()),
        (topics::inbox("linkoping", TOPIC), altered.to_json()),
        (
            topics::inbox("linkoping", "welfare/other/ost"),
            delivery.to_json(),
        ),
    ];
    for (topic, payload) in forgeries {
        rogue
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let mut code = None;
        // Keep the rogue connection running while the SDK reacts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while code.is_none() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                item = next_item(&mut inbox, Duration::from_secs(5)) => match item {
                    Some(Err(e)) => code = Some(e.code().to_string()),
                    Some(Ok(share)) => panic!("a forged delivery reached the application: {}", share.share_id()),
                    None => break,
                },
                _ = rogue_events.poll() => {}
            }
        }
        assert!(code.is_some(), "the forgery was not reported");
    }

    // 5. The genuine delivery replayed verbatim: suppressed as a duplicate.
    rogue
        .publish(
            topics::inbox("linkoping", TOPIC),
            QoS::AtLeastOnce,
            false,
            captured,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            item = next_item(&mut inbox, Duration::from_secs(1)) => {
                if let Some(item) = item {
                    panic!("a replayed delivery was handed over again: {:?}", item.map(|s| s.share_id().to_string()));
                }
            }
            _ = rogue_events.poll() => {}
        }
    }
}

#[tokio::test]
async fn forged_receipts_never_complete_a_publish() {
    let broker = TestBroker::start().await;
    let fk = broker.agency("forsakringskassan").await;
    let envelope = fk.sign(TOPIC, &incorrect_payment("0580")).unwrap();

    // A rogue Försäkringskassan client floods forged "rejected" receipts for
    // exactly this alert, signed with a key that is not the broker's.
    let forged = Receipt {
        alert_id: Some(envelope.header.alert_id.clone()),
        publisher: "forsakringskassan".into(),
        envelope_hash: Some(messages::envelope_hash(&envelope)),
        status: ReceiptStatus::Rejected,
        rejection: Some(Rejection {
            code: "bad_signature".into(),
            message: "forged".into(),
            retry_after_ms: None,
        }),
        shares: vec![],
        denials: vec![],
        audit_index: Some(0),
        policy_version: "sha256:forged".into(),
        received_at_ms: 0,
        signed_at_ms: samverkan_sdk::time::now_ms(),
    };
    let forged = serde_json::to_vec(&Signed::sign(
        messages::TAG_RECEIPT,
        &forged,
        &SigningKey::from_bytes(&[9; 32]),
        "broker-dev-1",
    ))
    .unwrap();
    let (rogue, mut rogue_events) =
        connect(broker.raw_options_behind_gateway("fk-rogue", "forsakringskassan"))
            .await
            .unwrap();
    let flood = tokio::spawn(async move {
        loop {
            if rogue
                .publish(
                    topics::receipts("forsakringskassan"),
                    QoS::AtMostOnce,
                    false,
                    forged.clone(),
                )
                .await
                .is_err()
            {
                break;
            }
            // One forged receipt every 2 ms (the connection's events are
            // drained meanwhile). A flood faster than Försäkringskassan's
            // own client reads its receipts makes rumqttd skip ahead in
            // that topic, real receipts included; within a tenant nothing
            // stops that, which is why the SDK resends (ARCHITECTURE.md
            // section 4), but this test is about forgeries, not floods.
            let pause = tokio::time::sleep(Duration::from_millis(2));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = rogue_events.poll() => {}
                    _ = &mut pause => break,
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let receipt = fk.publish_envelope(envelope).await.unwrap();
    flood.abort();
    assert_eq!(receipt.status, ReceiptStatus::Accepted);
    assert_ne!(receipt.policy_version, "sha256:forged");
    assert_eq!(receipt.shares.len(), 1);
}
