//! Replay of a backlog larger than rumqttd's ring: one follow session
//! receives every pending share, without reconnecting; the SDK asks again
//! when a replay stops at its limit; a third-party client that neither
//! acknowledges nor reads the replay status still receives the whole replay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use samverkan_e2e::{Backend, TestBroker, prepare_dir};
use samverkan_sdk::client::Client;
use samverkan_sdk::messages::ReceiptStatus;

use crate::fixtures::{incorrect_payment, next_item};

/// Shares pending for Linköping before it connects: about 10 MB of
/// deliveries, five times rumqttd's ring of two 1 MiB segments.
const BACKLOG: usize = 4000;

/// Publishes `count` alerts (a multiple of 100) from Försäkringskassan,
/// each shared with Linköping, while Linköping is not connected; returns
/// their share ids.
async fn make_backlog(broker: &TestBroker, count: usize) -> HashSet<String> {
    let mut config = broker.agency_config("forsakringskassan");
    config.receipt_timeout = Duration::from_secs(60);
    config.publish_deadline = Duration::from_secs(300);
    let fk = Arc::new(Client::connect(config).await.unwrap());
    let alert = incorrect_payment("0580");
    let mut expected = HashSet::new();
    // In rounds, so that a loaded machine is not handed 4,000 tasks at once.
    for round in 0..count.div_ceil(500) {
        let mut publishes = tokio::task::JoinSet::new();
        for _ in 0..(count - round * 500).min(500) {
            let (fk, alert) = (fk.clone(), alert.clone());
            publishes
                .spawn(async move { fk.publish("welfare/incorrect-payment/ost", alert).await });
        }
        for receipt in publishes.join_all().await {
            let receipt = receipt.unwrap();
            assert_eq!(receipt.status, ReceiptStatus::Accepted);
            assert_eq!(receipt.shares.len(), 1);
            assert_eq!(receipt.shares[0].recipient, "linkoping");
            expected.insert(receipt.shares[0].share_id.clone());
        }
    }
    assert_eq!(expected.len(), count);
    if let Ok(fk) = Arc::try_unwrap(fk) {
        fk.close().await;
    }
    expected
}

/// Follows Linköping's shares with one SDK client and one subscription, as
/// `samverkan-client follow` does (each share acknowledged once handled),
/// until all of `expected` have arrived or none comes for a long while;
/// returns how many arrived, and the client (still connected, so that the
/// last acknowledgements are not cut off by closing it).
async fn follow(broker: &TestBroker, expected: &HashSet<String>) -> (usize, Client) {
    let linkoping = broker.agency("linkoping").await;
    let mut inbox = linkoping.subscribe("#").await.unwrap();
    let mut received = HashSet::new();
    // Bounded: the wait for each next share is generous for a loaded
    // machine, and a share that never comes ends the loop.
    while received.len() < expected.len() {
        match next_item(&mut inbox, Duration::from_secs(60)).await {
            Some(Ok(share)) => {
                assert!(
                    expected.contains(share.share_id()),
                    "a share outside the backlog"
                );
                share.ack().await.unwrap();
                received.insert(share.share_id().to_string());
            }
            Some(Err(e)) => panic!("delivery refused: {e}"),
            None => break,
        }
    }
    drop(inbox);
    (received.len(), linkoping)
}

/// Waits (bounded) until Linköping has nothing pending; returns what is left.
async fn pending_after_acks(broker: &TestBroker) -> usize {
    let mut left = usize::MAX;
    for _ in 0..600 {
        left = broker
            .broker()
            .store()
            .pending_deliveries("linkoping", 10_000)
            .await
            .unwrap()
            .len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    left
}

async fn one_follow_session_receives_the_whole_backlog(backend: Backend) {
    let broker = TestBroker::start_with(backend, prepare_dir(), |_| {}).await;
    let expected = make_backlog(&broker, BACKLOG).await;
    let pending = broker
        .broker()
        .store()
        .pending_deliveries("linkoping", 10_000)
        .await
        .unwrap();
    let bytes: usize = pending
        .iter()
        .filter_map(|p| p.payload.as_ref())
        .map(Vec::len)
        .sum();
    assert_eq!(pending.len(), BACKLOG);
    assert!(bytes > 2 * 1024 * 1024, "the backlog is only {bytes} bytes");

    let (received, linkoping) = follow(&broker, &expected).await;
    eprintln!("one follow session received {received} of {BACKLOG} shares");
    assert_eq!(
        received, BACKLOG,
        "one follow session received {received} of {BACKLOG} pending shares"
    );
    // Every acknowledgement is recorded: nothing is pending any more.
    assert_eq!(
        pending_after_acks(&broker).await,
        0,
        "shares still unacknowledged"
    );
    linkoping.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_follow_session_receives_a_backlog_larger_than_rumqttds_ring() {
    one_follow_session_receives_the_whole_backlog(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_follow_session_receives_a_backlog_larger_than_rumqttds_ring_on_postgres() {
    one_follow_session_receives_the_whole_backlog(Backend::Postgres).await;
}

/// A replay stops at its limit and says how many shares it left; the SDK
/// then asks again, so one session still receives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_asks_again_while_a_replay_leaves_shares() {
    const LIMITED: usize = 1200;
    let broker = TestBroker::start_in(prepare_dir(), |c| c.router.replay_limit = 500).await;
    let expected = make_backlog(&broker, LIMITED).await;
    let (received, linkoping) = follow(&broker, &expected).await;
    assert_eq!(
        received, LIMITED,
        "one session received {received} of {LIMITED} with replays of at most 500"
    );
    assert_eq!(pending_after_acks(&broker).await, 0);
    linkoping.close().await;
}

/// A client that knows nothing of replay statuses and never acknowledges
/// (here a plain MQTT client) still receives a whole backlog larger than
/// one window from one request: unacknowledged shares leave the window
/// after a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acknowledges_receives_the_whole_replay() {
    const SMALL: usize = 600;
    let broker = TestBroker::start().await;
    let expected = make_backlog(&broker, SMALL).await;

    let keys = broker.agency_config("linkoping");
    let options = broker.raw_options("plain-follower", broker.agency_tls("linkoping"));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    client
        .subscribe("/tenants/linkoping/in/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut received = HashSet::new();
    let mut asked = false;
    // Bounded: each wait for the next event is generous for a loaded machine.
    while received.len() < SMALL {
        let event = tokio::time::timeout(Duration::from_secs(60), events.poll()).await;
        let Ok(Ok(event)) = event else { break };
        match event {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) if !asked => {
                asked = true;
                client
                    .publish(
                        "/tenants/linkoping/replay",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        br#"{"request_id":"plain-1"}"#.to_vec(),
                    )
                    .await
                    .unwrap();
            }
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                let logical = samverkan_sdk::topics::logical_of_inbox("linkoping", &p.topic)
                    .unwrap()
                    .to_string();
                // Checkpoints and replay statuses are not deliveries (PROTOCOL 13.2).
                if logical.starts_with('_') {
                    continue;
                }
                let share_id = samverkan_sdk::messages::Delivery::from_json(&p.payload)
                    .unwrap()
                    .verify("linkoping", &logical, &keys.broker_keys, &keys.agency_keys)
                    .unwrap()
                    .stamp
                    .share_id;
                assert!(expected.contains(&share_id));
                received.insert(share_id);
            }
            _ => {}
        }
    }
    assert_eq!(
        received.len(),
        SMALL,
        "one replay request, no acknowledgements"
    );
    // Nothing was acknowledged.
    assert_eq!(
        broker
            .broker()
            .store()
            .pending_deliveries("linkoping", 10_000)
            .await
            .unwrap()
            .len(),
        SMALL
    );
}
