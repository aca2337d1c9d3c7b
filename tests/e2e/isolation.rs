//! Tenant isolation for raw MQTT clients (rumqttc, not the SDK): an agency's
//! certificate confines it to `/tenants/{agency}/`.

use std::time::Duration;

use rumqttc::{Packet, QoS};
use samverkan_e2e::TestBroker;

use crate::raw::{Outcome, connect, poll_for};

#[tokio::test]
async fn raw_client_is_confined_to_its_own_tenant() {
    let broker = TestBroker::start().await;
    let linkoping = broker.agency_tls("linkoping");

    // Its own inbox: allowed.
    let (client, mut events) = connect(broker.raw_options("lkp-own", linkoping.clone()))
        .await
        .unwrap();
    client
        .subscribe("/tenants/linkoping/in/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let suback = poll_for(&mut events, Duration::from_secs(5), |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(&suback, Outcome::Got(codes) if codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))),
        "{suback:?}"
    );

    // Another agency's inbox, and everything: disconnected.
    for filter in [
        "/tenants/polisen/in/#",
        "#",
        "/tenants/+/out/#",
        "+/polisen/#",
    ] {
        let (client, mut events) = connect(broker.raw_options("lkp-sub", linkoping.clone()))
            .await
            .unwrap();
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let outcome = poll_for(&mut events, Duration::from_secs(5), |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
        assert!(
            matches!(outcome, Outcome::Closed(_)),
            "subscribing to {filter} was not refused: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn raw_client_cannot_publish_into_another_tenant() {
    let broker = TestBroker::start().await;

    // Polisen watches its receipts, where the answer to a forged alert
    // in its outbox would land.
    let (watcher, mut watch_events) =
        connect(broker.raw_options("pol-watch", broker.agency_tls("polisen")))
            .await
            .unwrap();
    watcher
        .subscribe("/tenants/polisen/receipts", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(matches!(
        poll_for(&mut watch_events, Duration::from_secs(5), |p| matches!(
            p,
            Packet::SubAck(_)
        )
        .then_some(()))
        .await,
        Outcome::Got(())
    ));

    let (client, mut events) =
        connect(broker.raw_options("lkp-pub", broker.agency_tls("linkoping")))
            .await
            .unwrap();
    client
        .publish(
            "/tenants/polisen/out/akrim/ost/x",
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .unwrap();
    let outcome = poll_for(&mut events, Duration::from_secs(5), |p| {
        matches!(p, Packet::PubAck(_)).then_some(())
    })
    .await;
    assert!(matches!(outcome, Outcome::Closed(_)), "{outcome:?}");

    let seen = poll_for(&mut watch_events, Duration::from_secs(2), |p| match p {
        Packet::Publish(p) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert!(matches!(seen, Outcome::Timeout), "polisen saw {seen:?}");
}

#[tokio::test]
async fn mqtt5_client_is_confined_too() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::{AsyncClient, Event};

    let broker = TestBroker::start().await;
    let tls = broker.agency_tls("norrkoping");

    /// The next incoming packet; `Ok(None)` after 5 s of silence.
    async fn next_packet(events: &mut rumqttc::v5::EventLoop) -> Result<Option<P5>, String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(Event::Incoming(p))) => return Ok(Some(p)),
                Ok(Ok(Event::Outgoing(_))) => {}
            }
        }
    }

    // Own inbox: CONNACK and SUBACK.
    let (client, mut events) = AsyncClient::new(broker.raw_options_v5("nkp-v5", tls.clone()), 16);
    client
        .subscribe("/tenants/norrkoping/in/#", QoS5::AtLeastOnce)
        .await
        .unwrap();
    let mut got_connack = false;
    let mut got_suback = false;
    for _ in 0..10 {
        match next_packet(&mut events).await {
            Ok(Some(P5::ConnAck(_))) => got_connack = true,
            Ok(Some(P5::SubAck(_))) => {
                got_suback = true;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("v5 connection failed: {e}"),
        }
    }
    assert!(got_connack && got_suback);

    // Another tenant: disconnected.
    let (client, mut events) = AsyncClient::new(broker.raw_options_v5("nkp-v5-bad", tls), 16);
    client
        .subscribe("/tenants/linkoping/in/#", QoS5::AtLeastOnce)
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..10 {
        match next_packet(&mut events).await {
            Err(_) => {
                closed = true;
                break;
            }
            Ok(Some(P5::SubAck(s))) => panic!("cross-tenant subscription acknowledged: {s:?}"),
            Ok(Some(P5::Disconnect(_))) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the v5 client was not disconnected");
}
