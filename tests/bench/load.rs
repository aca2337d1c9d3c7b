//! Driving load: publishers and receivers over mutual TLS, with latencies
//! measured from publish to receipt and from publish to delivery.
//!
//! The generator does not verify receipts and deliveries (the SDK does, and
//! on a 2-core machine that would measure the generator rather than the
//! broker); it signs every alert for real, acknowledges every share with a
//! signed acknowledgement (batched every 100 ms), and parses what it gets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use samverkan_sdk::messages::{self, Ack, Delivery, Receipt, ReceiptStatus, Signed};
use samverkan_sdk::{Envelope, EnvelopeHeader, topics};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::stats::Latency;

/// The shape of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Shape {
    /// Four publishers, alert types with one, two and three recipients.
    Mixed,
    /// One publisher, every alert to three recipients.
    OneToThree,
    /// One publisher, every alert to one recipient.
    OneToOne,
}

/// Counters of one run.
#[derive(Default)]
pub struct Counters {
    /// Alerts published.
    pub sent: AtomicU64,
    /// Receipts: accepted.
    pub accepted: AtomicU64,
    /// Receipts: refused.
    pub rejected: AtomicU64,
    /// Deliveries received.
    pub delivered: AtomicU64,
    /// Connection errors seen by clients.
    pub connection_errors: AtomicU64,
    /// Time of each publish, by alert id (or sequence for plain MQTT).
    pub sent_at: Mutex<HashMap<String, Instant>>,
    /// Publish → receipt.
    pub receipt_latency: Latency,
    /// Publish → delivery.
    pub delivery_latency: Latency,
    /// Refusals by code.
    pub refusals: Mutex<HashMap<String, u64>>,
    /// Accepted alerts whose entries no checkpoint at quorum covers yet:
    /// (largest audit index, when the receipt arrived).
    pub awaiting_quorum: Mutex<Vec<(u64, Instant)>>,
    /// Receipt → the first checkpoint at the witness quorum that covers its entries.
    pub quorum_latency: Latency,
}

/// A client over mutual TLS with an agency's development certificate.
pub fn options(certs: &std::path::Path, agency: &str, port: u16, id: &str) -> Result<MqttOptions> {
    let tls = samverkan_e2e::tls_client(
        &std::fs::read(certs.join("ca.pem"))?,
        &std::fs::read(certs.join(agency).join("client.pem"))?,
        &std::fs::read(certs.join(agency).join("client.key"))?,
    );
    let mut opts = MqttOptions::new(id, "localhost", port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    opts.set_inflight(200);
    Ok(opts)
}

/// Connects and sets TCP_NODELAY.
pub fn client(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

/// The alerts each publisher of a shape sends, and who receives them.
pub fn plan(shape: Shape) -> (Vec<&'static str>, Vec<&'static str>) {
    match shape {
        Shape::Mixed => (
            vec![
                "forsakringskassan",
                "skatteverket",
                "kronofogden",
                "polisen",
            ],
            vec![
                "linkoping",
                "norrkoping",
                "akrimost",
                "skatteverket",
                "forsakringskassan",
                "polisen",
            ],
        ),
        Shape::OneToThree => (
            vec!["polisen"],
            vec!["akrimost", "skatteverket", "forsakringskassan"],
        ),
        Shape::OneToOne => (vec!["forsakringskassan"], vec!["linkoping"]),
    }
}

/// The `i`-th alert of `publisher`: (logical topic, alert type, fields).
fn alert(
    publisher: &str,
    shape: Shape,
    i: u64,
) -> (&'static str, &'static str, Map<String, Value>) {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    // Grounds of 100–900 characters make envelopes of roughly 0.7–2 KB.
    let grounds = "x".repeat(100 + (i as usize * 37) % 800);
    match (publisher, shape) {
        ("forsakringskassan", _) => (
            "welfare/incorrect-payment/ost",
            "welfare.incorrect_payment",
            obj(json!({
                "subject_personnummer": "19121212-1212",
                "subject_kommunkod": if shape == Shape::OneToOne || i.is_multiple_of(2) { "0580" } else { "0581" },
                "benefit": "sjukpenning",
                "paying_agency": "forsakringskassan",
                "suspected_amount_sek": 1000 + i % 50_000,
                "period": {"from": "2026-01-01", "to": "2026-03-31"},
                "grounds": grounds,
                "case_reference": format!("FK-{i}"),
            })),
        ),
        ("skatteverket", _) if i % 2 == 1 => (
            "akrim/ost/exploitation",
            "akrim.exploitation_signal",
            obj(json!({
                "region": "ost",
                "indicators": ["housing_at_workplace", "no_salary_paid"],
                "description": grounds,
                "urgency": "urgent",
            })),
        ),
        ("polisen", _) => (
            "akrim/ost/inspection",
            "akrim.inspection_result",
            obj(json!({
                "orgnr": "556677-8899",
                "kommunkod": "0580",
                "region": "ost",
                "inspection_date": "2026-11-20",
                "findings": {"workers_without_work_permit": i % 7, "undeclared_workers": i % 5, "tax_discrepancies": true},
                "follow_up_actions": grounds.as_bytes().chunks(250).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>(),
                "case_reference": format!("NOA-{i}"),
            })),
        ),
        (_, _) => (
            "welfare/company/ost",
            "welfare.company_flag",
            obj(json!({
                "orgnr": "556677-8899",
                "company_name": format!("Bygg & Städ {i} AB {}", &grounds[..grounds.len().min(150)]),
                "kommunkod": if i.is_multiple_of(2) { "0580" } else { "0581" },
                "indicators": ["f_tax_revoked", "debts_at_kronofogden"],
                "context": "procurement",
                "case_reference": format!("SKV-{i}"),
            })),
        ),
    }
}

/// One Samverkan publisher: signs and publishes alerts, `window` at a time
/// (flat out) or at `interval`, until `stop`; matches receipts.
#[allow(clippy::too_many_arguments)]
pub async fn samverkan_publisher(
    certs: std::path::PathBuf,
    port: u16,
    agency: &'static str,
    shape: Shape,
    window: usize,
    interval: Option<Duration>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Result<()> {
    let key: SigningKey =
        samverkan_sdk::keys::read_signing_key(&certs.join(agency).join("signing.key"))?;
    let key_id = format!("{agency}-dev-1");
    let (client, mut eventloop) = client(options(
        &certs,
        agency,
        port,
        &format!("bench-pub-{agency}"),
    )?);
    client
        .subscribe(topics::receipts(agency), QoS::AtLeastOnce)
        .await?;
    // Wait for the subscription before publishing, so no receipt is missed.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) =
            eventloop.poll().await.context("publisher connect")?
        {
            break;
        }
    }
    let permits = Arc::new(Semaphore::new(window));
    let driver = {
        let (counters, permits, stop) = (counters.clone(), permits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(signed) = serde_json::from_slice::<Signed>(&p.payload) else {
                            continue;
                        };
                        let Ok(receipt) = serde_json::from_slice::<Receipt>(&signed.body.0) else {
                            continue;
                        };
                        let Some(id) = receipt.alert_id else { continue };
                        let at = counters
                            .sent_at
                            .lock()
                            .map(|m| m.get(&id).copied())
                            .ok()
                            .flatten();
                        if let Some(at) = at {
                            counters.receipt_latency.record(at.elapsed());
                            let last_entry = receipt
                                .shares
                                .iter()
                                .map(|s| s.audit_index)
                                .chain(receipt.denials.iter().map(|d| d.audit_index))
                                .max();
                            if let (Some(index), Ok(mut awaiting)) =
                                (last_entry, counters.awaiting_quorum.lock())
                            {
                                awaiting.push((index, Instant::now()));
                            }
                            if receipt.status == ReceiptStatus::Accepted {
                                counters.accepted.fetch_add(1, Ordering::Relaxed);
                            } else {
                                counters.rejected.fetch_add(1, Ordering::Relaxed);
                                let code = receipt.rejection.map(|r| r.code).unwrap_or_default();
                                if let Ok(mut m) = counters.refusals.lock() {
                                    *m.entry(code).or_default() += 1;
                                }
                            }
                            permits.add_permits(1);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };
    let mut i = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(every) = interval {
            next += every;
            tokio::time::sleep_until(next.into()).await;
        }
        let Ok(permit) = tokio::time::timeout(Duration::from_millis(200), permits.acquire()).await
        else {
            continue;
        };
        if let Ok(p) = permit {
            p.forget();
        }
        let (topic, alert_type, fields) = alert(agency, shape, i);
        let header = EnvelopeHeader {
            version: samverkan_sdk::envelope::VERSION,
            alert_id: uuid::Uuid::now_v7().to_string(),
            publisher: agency.into(),
            key_id: key_id.clone(),
            alert_type: alert_type.into(),
            topic: topic.into(),
            issued_at_ms: samverkan_sdk::time::now_ms(),
            to: None,
        };
        let id = header.alert_id.clone();
        let envelope = Envelope::sign(header, &fields, &key)?;
        if let Ok(mut m) = counters.sent_at.lock() {
            m.insert(id, Instant::now());
        }
        client
            .publish(
                topics::outbox(agency, topic),
                QoS::AtLeastOnce,
                false,
                envelope.to_json(),
            )
            .await?;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
    // Let outstanding receipts arrive before the caller reads the counters.
    tokio::time::sleep(Duration::from_secs(3)).await;
    driver.abort();
    let _ = client.disconnect().await;
    Ok(())
}

/// One Samverkan receiver: takes deliveries, records latency, acknowledges
/// them (one signed acknowledgement per 100 ms).
pub async fn samverkan_receiver(
    certs: std::path::PathBuf,
    port: u16,
    agency: &'static str,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Result<()> {
    let key = samverkan_sdk::keys::read_signing_key(&certs.join(agency).join("signing.key"))?;
    let key_id = format!("{agency}-dev-1");
    let (client, mut eventloop) = client(options(
        &certs,
        agency,
        port,
        &format!("bench-rcv-{agency}"),
    )?);
    client
        .subscribe(topics::inbox(agency, "#"), QoS::AtLeastOnce)
        .await?;
    let mut pending: Vec<String> = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic.contains("/_audit/") {
                        continue;
                    }
                    let Ok(delivery) = Delivery::from_json(&p.payload) else { continue };
                    let id = &delivery.envelope.header.alert_id;
                    let at = counters.sent_at.lock().map(|m| m.get(id).copied()).ok().flatten();
                    if let Some(at) = at {
                        counters.delivery_latency.record(at.elapsed());
                    }
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    pending.push(messages::share_id(&messages::envelope_hash(&delivery.envelope), agency));
                }
                Ok(_) => {}
                Err(_) => {
                    counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = flush.tick() => {
                if !pending.is_empty() {
                    for chunk in pending.chunks(1000) {
                        let ack = Ack { agency: agency.into(), share_ids: chunk.to_vec(), signed_at_ms: samverkan_sdk::time::now_ms() };
                        let signed = Signed::sign(messages::TAG_ACK, &ack, &key, &key_id);
                        let _ = client.try_publish(topics::acks(agency), QoS::AtLeastOnce, false, serde_json::to_vec(&signed)?);
                    }
                    pending.clear();
                }
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
    }
}

/// A plain MQTT publisher (rumqttd or Mosquitto): payloads of about the
/// same size as Samverkan's envelopes, carrying their send time.
pub async fn plain_publisher(
    certs: std::path::PathBuf,
    port: u16,
    interval: Option<Duration>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    epoch: Instant,
) -> Result<()> {
    let (client, mut eventloop) = client(options(&certs, "polisen", port, "bench-pub-plain")?);
    let acked = Arc::new(AtomicU64::new(0));
    let driver = {
        let (acked, counters, stop) = (acked.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };
    let mut i = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(every) = interval {
            next += every;
            tokio::time::sleep_until(next.into()).await;
        }
        let mut payload = vec![b'x'; 700 + (i as usize * 37) % 800];
        payload[..16].copy_from_slice(&(epoch.elapsed().as_nanos()).to_be_bytes());
        client
            .publish(
                "/tenants/polisen/out/bench",
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    driver.abort();
    Ok(())
}

/// A plain MQTT subscriber.
pub async fn plain_subscriber(
    certs: std::path::PathBuf,
    port: u16,
    n: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    epoch: Instant,
) -> Result<()> {
    let (client, mut eventloop) =
        client(options(&certs, "polisen", port, &format!("bench-sub-{n}"))?);
    client
        .subscribe("/tenants/polisen/out/#", QoS::AtLeastOnce)
        .await?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) if p.payload.len() >= 16 => {
                let sent = u128::from_be_bytes(p.payload[..16].try_into().unwrap_or([0; 16]));
                let now = epoch.elapsed().as_nanos();
                counters
                    .delivery_latency
                    .record(Duration::from_nanos(now.saturating_sub(sent) as u64));
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Opens `n` idle connections (cycling through the agencies) and keeps them alive.
pub async fn idle_connections(
    certs: std::path::PathBuf,
    port: u16,
    n: usize,
    stop: Arc<AtomicBool>,
    agencies: &[&str],
) -> Result<usize> {
    let connected = Arc::new(AtomicU64::new(0));
    for i in 0..n {
        let agency = agencies[i % agencies.len()];
        let (_client, mut eventloop) = client(options(&certs, agency, port, &format!("idle-{i}"))?);
        let (connected, stop) = (connected.clone(), stop.clone());
        tokio::spawn(async move {
            let _keep = _client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        });
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (connected.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(connected.load(Ordering::Relaxed) as usize)
}

/// Follows the checkpoints the broker publishes once they reach the witness
/// quorum (as `agency`), and records for every receipt how long after it the
/// first such checkpoint covering its entries arrived.
pub async fn quorum_watcher(
    certs: std::path::PathBuf,
    port: u16,
    agency: &'static str,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Result<()> {
    let (client, mut eventloop) = client(options(&certs, agency, port, "bench-quorum")?);
    client
        .subscribe(topics::cosigned_checkpoint(agency), QoS::AtLeastOnce)
        .await?;
    while !stop.load(Ordering::Relaxed) {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // The size is the note's second line (the bench does not
                // verify: the witnesses and the broker did).
                let size = std::str::from_utf8(&p.payload)
                    .ok()
                    .and_then(|t| t.lines().nth(1))
                    .and_then(|l| l.parse::<u64>().ok());
                let (Some(size), Ok(mut awaiting)) = (size, counters.awaiting_quorum.lock()) else {
                    continue;
                };
                let now = Instant::now();
                awaiting.retain(|(index, at)| {
                    if *index < size {
                        counters.quorum_latency.record(now.duration_since(*at));
                        false
                    } else {
                        true
                    }
                });
            }
            Ok(_) => {}
            Err(_) => {
                counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}
