//! What the gateway lets through: many concurrent connections of one agency,
//! and only the packets an agency's client needs (docs/PROTOCOL.md 13.2).

use std::num::NonZeroU32;
use std::time::Duration;

use rumqttc::{Packet, QoS};
use samverkan_e2e::{TestBroker, prepare_dir};

use crate::raw::{Outcome, connect, poll_for};

/// Connects, subscribes to the receipts topic, and disconnects cleanly.
async fn one_session(broker: &TestBroker, client_id: &str) -> Result<(), String> {
    let tls = broker.agency_tls("polisen");
    let (client, mut events) = connect(broker.raw_options(client_id, tls)).await?;
    client
        .subscribe("/tenants/polisen/receipts", QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    match poll_for(&mut events, Duration::from_secs(10), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await
    {
        Outcome::Got(()) => {}
        Outcome::Closed(e) => return Err(format!("closed before SUBACK: {e}")),
        Outcome::Timeout => return Err("no SUBACK within 10 s".into()),
    }
    client.disconnect().await.map_err(|e| e.to_string())?;
    // Drive the event loop until the DISCONNECT has gone out.
    let _ = poll_for(&mut events, Duration::from_secs(2), |_| None::<()>).await;
    Ok(())
}

/// Many clients of one agency connecting at once, some with the same client
/// id, reconnecting as soon as they are done: every one of them gets its
/// CONNACK and SUBACK. (Two connections with one client id used to take
/// each other over inside the embedded broker, and a connection id that the
/// broker reused could be closed by the previous holder's late disconnect.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_with_shared_and_reused_client_ids_all_succeed() {
    const WORKERS: usize = 8;
    const ROUNDS: usize = 250;
    let broker = TestBroker::start_in(prepare_dir(), |config| {
        config.connection_attempts_per_minute = NonZeroU32::new(1_000_000).unwrap();
    })
    .await;
    let broker = std::sync::Arc::new(broker);
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let broker = broker.clone();
        tasks.push(tokio::spawn(async move {
            // Half the workers share one client id; the others reuse their own.
            let id = if worker % 2 == 0 {
                "shared".to_string()
            } else {
                format!("worker-{worker}")
            };
            let mut failures = Vec::new();
            for round in 0..ROUNDS {
                if let Err(e) = one_session(&broker, &id).await {
                    failures.push(format!("worker {worker} round {round}: {e}"));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} connections failed: {:#?}",
        failures.len(),
        WORKERS * ROUNDS,
        failures
    );
}

/// The broker process's resident memory, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Growth of the broker's memory that the attack below may cause: the
/// gateway refuses it packet by packet, so what remains is buffers and
/// allocator slack, far below the attack's 120 MB of payload.
const MEMORY_BOUND_MIB: f64 = 48.0;

/// The memory attack of one agency: subscribe to many distinct filters
/// inside its own prefix and publish two 2 MB messages (some retained) on
/// each, then go away. rumqttd keeps a log per filter, and the retained
/// messages, until it stops: without the gateway's checks the broker grew
/// by about 290 MB here and never gave it back. Also tries to spend more
/// distinct inbox filters than an agency may hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agency_cannot_grow_the_brokers_memory_with_filters_and_messages() {
    const FILTERS: usize = 30;
    let broker = TestBroker::start_in(prepare_dir(), |config| {
        config.connection_attempts_per_minute = NonZeroU32::new(1_000_000).unwrap();
    })
    .await;
    // A legitimate subscriber of another agency, to show it is unaffected.
    let polisen = broker.agency("polisen").await;
    let before = rss_mib();
    let big = vec![b'x'; 2 * 1024 * 1024];
    let tls = broker.agency_tls("linkoping");
    let mut refused = 0;
    for i in 0..FILTERS {
        let mut opts = broker.raw_options(&format!("attacker-{i}"), tls.clone());
        opts.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
        let (client, mut events) = connect(opts).await.unwrap();
        let filter = format!("/tenants/linkoping/attack/{i}/#");
        client.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        for n in 0..2 {
            let topic = format!("/tenants/linkoping/attack/{i}/{n}");
            client
                .publish(topic, QoS::AtLeastOnce, i % 2 == 0, big.clone())
                .await
                .unwrap();
        }
        // Run the connection until the broker has answered or closed it.
        let outcome = poll_for(&mut events, Duration::from_secs(10), |p| {
            matches!(p, Packet::PubAck(ack) if ack.pkid == 3).then_some(())
        })
        .await;
        if matches!(outcome, Outcome::Closed(_)) {
            refused += 1;
        }
    }
    // Inbox filters are allowed, but only so many distinct ones per agency.
    let mut budget_refused = false;
    for i in 0..40 {
        let (client, mut events) =
            connect(broker.raw_options(&format!("filters-{i}"), tls.clone()))
                .await
                .unwrap();
        let filter = format!("/tenants/linkoping/in/f{i}/#");
        client.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        let outcome = poll_for(&mut events, Duration::from_secs(10), |p| {
            matches!(p, Packet::SubAck(_)).then_some(())
        })
        .await;
        if matches!(outcome, Outcome::Closed(_)) {
            budget_refused = true;
            break;
        }
        client.disconnect().await.unwrap();
        let _ = poll_for(&mut events, Duration::from_secs(1), |_| None::<()>).await;
    }
    let after = rss_mib();
    eprintln!(
        "broker RSS before the attack {before:.0} MiB, after {after:.0} MiB (+{:.0} MiB)",
        after - before
    );
    assert_eq!(refused, FILTERS, "every attacking connection is closed");
    assert!(
        budget_refused,
        "distinct inbox filters are bounded per agency"
    );
    assert!(
        after - before < MEMORY_BOUND_MIB,
        "memory grew by {:.0} MiB (bound {MEMORY_BOUND_MIB} MiB)",
        after - before
    );
    // Another agency still publishes and is answered.
    let receipt = polisen
        .publish("akrim/ost/inspection", crate::fixtures::inspection_result())
        .await
        .unwrap();
    assert_eq!(
        receipt.status,
        samverkan_sdk::messages::ReceiptStatus::Accepted
    );
}
