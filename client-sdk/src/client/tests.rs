//! Tests of the client without a broker: the application side talks to a
//! request channel the test reads, and the test drives the connection
//! task's handlers with the events a broker would cause.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rumqttc::{
    ConnAck, ConnectReturnCode, Event, Incoming, Outgoing, Publish, QoS, Request, SubAck,
    SubscribeReasonCode,
};
use serde_json::{Map, Value, json};

use super::connection::Task;
use super::*;
use crate::envelope::EnvelopeHeader;
use crate::keys::{AgencyKey, KeyRegistry};
use crate::messages::{
    self, Ack, BROKER_KEY_OWNER, Delivery, Rejection, ReplayStatus, ShareReceipt, ShareStamp,
    Signed, TAG_RECEIPT, TAG_REPLAY_STATUS, TAG_SHARE_STAMP,
};

const ME: &str = "linkoping";
const BROKER_KEY_ID: &str = "broker-test-1";

fn my_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}
fn broker_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}
fn polisen_key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

fn registered(owner: &str, key_id: &str, key: &SigningKey) -> AgencyKey {
    AgencyKey {
        owner: owner.into(),
        key_id: key_id.into(),
        public_key: key.verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    }
}

fn config() -> AgencyConfig {
    let mut broker_keys = KeyRegistry::new();
    broker_keys.insert(registered(BROKER_KEY_OWNER, BROKER_KEY_ID, &broker_key()));
    let mut agency_keys = KeyRegistry::new();
    agency_keys.insert(registered(ME, "linkoping-1", &my_key()));
    agency_keys.insert(registered("polisen", "polisen-1", &polisen_key()));
    let mut config = AgencyConfig::new(
        ME,
        "localhost",
        8883,
        TlsMaterial {
            ca_pem: vec![],
            client_cert_pem: vec![],
            client_key_pem: vec![],
        },
        my_key(),
        "linkoping-1",
        broker_keys,
        agency_keys,
    )
    .unwrap();
    config.receipt_timeout = Duration::from_secs(5);
    config.publish_deadline = Duration::from_secs(60);
    config
}

/// A client whose requests the test reads, and its connection task's handlers.
struct Harness {
    client: Arc<Client>,
    requests: flume::Receiver<Request>,
    task: Task,
    next_pkid: u16,
    /// Replay requests seen (they are skipped by [`Harness::request`]).
    replays: usize,
}

impl Harness {
    fn new(config: AgencyConfig) -> Self {
        let (tx, requests) = flume::bounded(64);
        let client = Client::with_parts(&config, rumqttc::AsyncClient::from_senders(tx));
        let task = Task::for_test(client.shared.clone(), config.brokers());
        Self {
            client: Arc::new(client),
            requests,
            task,
            next_pkid: 0,
            replays: 0,
        }
    }

    /// CONNACK, then the SUBACK of the session's SUBSCRIBE (granting all).
    fn connect(&mut self) -> Vec<String> {
        // rumqttc discards `pending` when a clean session starts.
        self.task.pending().clear();
        self.task.event(Event::Incoming(Incoming::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        })));
        let Some(Request::Subscribe(subscribe)) = self.task.pending().pop_front() else {
            panic!("no SUBSCRIBE after CONNACK");
        };
        let topics: Vec<String> = subscribe.filters.iter().map(|f| f.path.clone()).collect();
        self.suback_own(topics.len());
        topics
    }

    fn suback_own(&mut self, count: usize) {
        self.next_pkid += 1;
        let pkid = self.next_pkid;
        self.task.event(Event::Outgoing(Outgoing::Subscribe(pkid)));
        self.task
            .event(Event::Incoming(Incoming::SubAck(SubAck::new(
                pkid,
                vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); count],
            ))));
    }

    fn is_replay(&self, request: &Request) -> bool {
        matches!(request, Request::Publish(p) if p.topic == topics::replay(ME))
    }

    /// Receives the next request the application side queued, counting and
    /// skipping replay requests.
    async fn request(&mut self) -> Request {
        loop {
            let request =
                tokio::time::timeout(Duration::from_secs(120), self.requests.recv_async())
                    .await
                    .expect("no request in time")
                    .expect("request channel closed");
            if self.is_replay(&request) {
                self.replays += 1;
                continue;
            }
            return request;
        }
    }

    async fn publish_request(&mut self) -> Publish {
        match self.request().await {
            Request::Publish(p) => p,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }

    /// Waits for scheduled replay requests and returns how many were sent
    /// since the last call; fails on any other request.
    async fn replays_sent(&mut self) -> usize {
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(request) = self.requests.try_recv() {
            assert!(self.is_replay(&request), "unexpected {request:?}");
            self.replays += 1;
        }
        std::mem::take(&mut self.replays)
    }

    fn incoming(&mut self, topic: String, payload: Vec<u8>) {
        self.task
            .event(Event::Incoming(Incoming::Publish(Publish::new(
                topic,
                QoS::AtLeastOnce,
                payload,
            ))));
    }
}

fn fields() -> Map<String, Value> {
    let Value::Object(map) = json!({
        "subject_kommunkod": "0580",
        "suspected_amount_sek": 125000,
        "grounds": "secret grounds"
    }) else {
        unreachable!()
    };
    map
}

fn alert() -> Alert {
    Alert::new("welfare.incorrect_payment", fields())
}

fn receipt_for(envelope: &Envelope, status: ReceiptStatus) -> Receipt {
    Receipt {
        alert_id: Some(envelope.header.alert_id.clone()),
        publisher: envelope.header.publisher.clone(),
        envelope_hash: Some(messages::envelope_hash(envelope)),
        status,
        rejection: (status == ReceiptStatus::Rejected).then(|| Rejection {
            code: "schema_violation".into(),
            message: "field `x` is not allowed".into(),
            retry_after_ms: None,
        }),
        shares: vec![ShareReceipt {
            share_id: "s".into(),
            recipient: "polisen".into(),
            rule_id: "r".into(),
            legal_basis: "lb".into(),
            purpose: "p".into(),
            fields: vec![],
            audit_index: 1,
        }],
        denials: vec![],
        audit_index: None,
        policy_version: "v1".into(),
        received_at_ms: now_ms(),
        signed_at_ms: now_ms(),
    }
}

fn signed_receipt(receipt: &Receipt, key: &SigningKey) -> Vec<u8> {
    serde_json::to_vec(&Signed::sign(TAG_RECEIPT, receipt, key, BROKER_KEY_ID)).unwrap()
}

fn delivery(topic: &str, alert_id: &str, stamp_key: &SigningKey) -> (Vec<u8>, String) {
    let header = EnvelopeHeader {
        version: crate::envelope::VERSION,
        alert_id: alert_id.into(),
        publisher: "polisen".into(),
        key_id: "polisen-1".into(),
        alert_type: "welfare.incorrect_payment".into(),
        topic: topic.into(),
        issued_at_ms: now_ms(),
        to: None,
    };
    let envelope = Envelope::sign(header, &fields(), &polisen_key()).unwrap();
    let redacted = envelope.redact(|name| name != "grounds");
    let hash = messages::envelope_hash(&envelope);
    let share_id = messages::share_id(&hash, ME);
    let stamp = ShareStamp {
        share_id: share_id.clone(),
        alert_id: alert_id.into(),
        publisher: "polisen".into(),
        recipient: ME.into(),
        topic: topic.into(),
        alert_type: "welfare.incorrect_payment".into(),
        rule_id: "incorrect-payment-to-paying-agency".into(),
        legal_basis: "underrattelse-2008-206".into(),
        purpose: "review".into(),
        fields: vec!["subject_kommunkod".into(), "suspected_amount_sek".into()],
        envelope_hash: hash,
        policy_version: "v1".into(),
        audit_index: 7,
        signed_at_ms: now_ms(),
    };
    let delivery = Delivery {
        envelope: redacted,
        stamp: Signed::sign(TAG_SHARE_STAMP, &stamp, stamp_key, BROKER_KEY_ID),
    };
    (delivery.to_json(), share_id)
}

#[tokio::test(start_paused = true)]
async fn replays_are_requested_once_inbox_filters_are_subscribed() {
    let mut h = Harness::new(config());
    assert!(!h.client.is_connected());
    let topics = h.connect();
    assert_eq!(
        topics,
        vec![topics::receipts(ME), topics::replay_status(ME)]
    );
    assert!(h.client.is_connected());
    // Nothing subscribed: a replay could reach nobody.
    assert_eq!(h.replays_sent().await, 0);
    let _a = subscribe(&mut h, "welfare/#").await;
    assert_eq!(h.replays_sent().await, 1);
    // Subscriptions made together share one replay request.
    let _b = subscribe(&mut h, "akrim/#").await;
    let _c = subscribe(&mut h, "akrim/ost").await;
    assert_eq!(h.replays_sent().await, 1);
    // Every reconnect re-subscribes and asks again.
    h.connect();
    assert_eq!(h.replays_sent().await, 1);
}

fn replay_status(request_id: &str, remaining: u64, key: &SigningKey) -> Vec<u8> {
    let status = ReplayStatus {
        agency: ME.into(),
        request_id: request_id.into(),
        sent: 500,
        remaining,
        signed_at_ms: now_ms(),
    };
    serde_json::to_vec(&Signed::sign(
        TAG_REPLAY_STATUS,
        &status,
        key,
        BROKER_KEY_ID,
    ))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_client_asks_again_while_its_replay_leaves_shares() {
    let mut h = Harness::new(config());
    h.connect();
    let mut sub = subscribe(&mut h, "#").await;
    assert_eq!(h.replays_sent().await, 1);
    let asked = lock(&h.client.shared.replay_request).clone().unwrap();
    let again = |h: &mut Harness, payload: Vec<u8>| {
        h.incoming(topics::replay_status(ME), payload);
    };

    // Nothing acknowledged since the request: asking again would only bring
    // the same shares back.
    again(&mut h, replay_status(&asked, 700, &broker_key()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.replays_sent().await, 0);

    let topic = "welfare/x";
    let (payload, _) = delivery(topic, "alert-1", &broker_key());
    h.incoming(topics::inbox(ME, topic), payload);
    sub.next().await.unwrap().unwrap().ack().await.unwrap();
    assert_eq!(h.publish_request().await.topic, topics::acks(ME));

    // Not this client's request, not signed by the broker, or nothing left:
    // no new request.
    again(&mut h, replay_status("another-client", 700, &broker_key()));
    again(&mut h, replay_status(&asked, 700, &polisen_key()));
    again(&mut h, replay_status(&asked, 0, &broker_key()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.replays_sent().await, 0);

    // Shares left and progress made: ask again, once the broker's rate allows.
    again(&mut h, replay_status(&asked, 700, &broker_key()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.replays_sent().await, 1);
    assert_ne!(
        lock(&h.client.shared.replay_request).as_deref(),
        Some(asked.as_str()),
        "a new request id"
    );
}

#[tokio::test(start_paused = true)]
async fn publish_resends_the_same_bytes_until_a_verified_receipt_arrives() {
    let mut h = Harness::new(config());
    h.connect();
    let client = h.client.clone();
    let publishing = tokio::spawn(async move { client.publish("welfare/x", alert()).await });

    let first = h.publish_request().await;
    assert_eq!(first.topic, topics::outbox(ME, "welfare/x"));
    assert_eq!(first.qos, QoS::AtLeastOnce);
    let started = tokio::time::Instant::now();
    let second = h.publish_request().await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        second.payload, first.payload,
        "a resend must carry the same envelope"
    );

    let envelope = Envelope::from_json(&first.payload).unwrap();
    assert_eq!(envelope.header.publisher, ME);
    assert_eq!(envelope.header.key_id, "linkoping-1");
    let accepted = receipt_for(&envelope, ReceiptStatus::Accepted);

    // A receipt signed by someone else, one for another envelope and one
    // for another publisher never complete the publish.
    h.incoming(
        topics::receipts(ME),
        signed_receipt(&accepted, &polisen_key()),
    );
    let mut other_hash = accepted.clone();
    other_hash.envelope_hash = Some("00".repeat(32));
    h.incoming(
        topics::receipts(ME),
        signed_receipt(&other_hash, &broker_key()),
    );
    let mut other_publisher = accepted.clone();
    other_publisher.publisher = "norrkoping".into();
    h.incoming(
        topics::receipts(ME),
        signed_receipt(&other_publisher, &broker_key()),
    );
    h.incoming(topics::receipts(ME), b"not json".to_vec());
    tokio::task::yield_now().await;
    assert!(!publishing.is_finished());

    h.incoming(
        topics::receipts(ME),
        signed_receipt(&accepted, &broker_key()),
    );
    let receipt = publishing.await.unwrap().unwrap();
    assert_eq!(receipt, accepted);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_receipt_is_an_error_with_the_receipt() {
    let mut h = Harness::new(config());
    h.connect();
    let client = h.client.clone();
    let publishing = tokio::spawn(async move { client.publish("welfare/x", alert()).await });
    let sent = h.publish_request().await;
    let envelope = Envelope::from_json(&sent.payload).unwrap();
    let rejected = receipt_for(&envelope, ReceiptStatus::Rejected);
    h.incoming(
        topics::receipts(ME),
        signed_receipt(&rejected, &broker_key()),
    );
    match publishing.await.unwrap() {
        Err(PublishError::Rejected(receipt)) => {
            assert_eq!(receipt.rejection.unwrap().code, "schema_violation")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn publish_gives_up_at_the_deadline_with_the_alert_id() {
    let mut config = config();
    config.receipt_timeout = Duration::from_secs(5);
    config.publish_deadline = Duration::from_secs(12);
    let mut h = Harness::new(config);
    h.connect();
    let client = h.client.clone();
    let publishing = tokio::spawn(async move { client.publish("welfare/x", alert()).await });
    let first = h.publish_request().await;
    let alert_id = Envelope::from_json(&first.payload).unwrap().header.alert_id;
    // Sent at 0 s, 5 s and 10 s.
    h.publish_request().await;
    h.publish_request().await;
    match publishing.await.unwrap() {
        Err(PublishError::Timeout { alert_id: id }) => assert_eq!(id, alert_id),
        other => panic!("{other:?}"),
    }
    assert!(h.requests.is_empty());
    assert_eq!(lock(&h.client.shared.receipts).len(), 0);
}

#[tokio::test(start_paused = true)]
async fn publish_waits_for_the_connection_and_resends_after_a_reconnect() {
    let mut h = Harness::new(config());
    let client = h.client.clone();
    let publishing = tokio::spawn(async move { client.publish("welfare/x", alert()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        h.requests.is_empty(),
        "nothing is sent before the receipts topic is subscribed"
    );
    h.connect();
    let first = h.publish_request().await;
    // The connection breaks and comes back: the alert goes out again at
    // once, not only after the receipt timeout.
    h.task.lost().await;
    assert!(!h.client.is_connected());
    let reconnected = tokio::time::Instant::now();
    h.connect();
    let second = h.publish_request().await;
    assert!(reconnected.elapsed() < Duration::from_secs(1));
    assert_eq!(second.payload, first.payload);
    let envelope = Envelope::from_json(&first.payload).unwrap();
    h.incoming(
        topics::receipts(ME),
        signed_receipt(
            &receipt_for(&envelope, ReceiptStatus::Accepted),
            &broker_key(),
        ),
    );
    assert!(publishing.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn invalid_alerts_are_refused_before_anything_is_sent() {
    let mut h = Harness::new(config());
    h.connect();
    let bad_topic = h.client.publish("welfare/#", alert()).await;
    assert!(
        matches!(bad_topic, Err(PublishError::InvalidAlert(_))),
        "{bad_topic:?}"
    );
    let mut bad_fields = fields();
    bad_fields.insert("Bad Name".into(), json!(1));
    let bad_field = h
        .client
        .publish(
            "welfare/x",
            Alert::new("welfare.incorrect_payment", bad_fields),
        )
        .await;
    assert!(matches!(bad_field, Err(PublishError::InvalidAlert(_))));
    let empty_to = h
        .client
        .publish("welfare/x", alert().addressed_to(Vec::<String>::new()))
        .await;
    assert!(matches!(empty_to, Err(PublishError::InvalidAlert(_))));
    // An envelope of another publisher.
    let mut header = alert().header("welfare/x", "polisen", "polisen-1", "a1", now_ms());
    header.to = None;
    let foreign = Envelope::sign(header, &fields(), &polisen_key()).unwrap();
    assert!(matches!(
        h.client.publish_envelope(foreign).await,
        Err(PublishError::InvalidAlert(EnvelopeError::InvalidHeader {
            field: "publisher",
            ..
        }))
    ));
    // Too large for the broker.
    let mut big = Map::new();
    big.insert("text".into(), json!("x".repeat(2 * 1024 * 1024)));
    assert!(matches!(
        h.client.publish("welfare/x", Alert::new("a.b", big)).await,
        Err(PublishError::TooLarge { .. })
    ));
    assert!(h.requests.is_empty());
}

#[tokio::test(start_paused = true)]
async fn recipients_are_signed_sorted_and_unique() {
    let mut h = Harness::new(config());
    h.connect();
    let client = h.client.clone();
    let _publishing = tokio::spawn(async move {
        client
            .publish(
                "welfare/x",
                alert().addressed_to(["polisen", "forsakringskassan", "polisen"]),
            )
            .await
    });
    let sent = h.publish_request().await;
    let envelope = Envelope::from_json(&sent.payload).unwrap();
    assert_eq!(
        envelope.header.to,
        Some(vec!["forsakringskassan".to_string(), "polisen".to_string()])
    );
    assert!(envelope.verify(&config().agency_keys).is_ok());
}

/// Subscribes through the harness (SUBSCRIBE request, then its SUBACK).
async fn subscribe(h: &mut Harness, filter: &str) -> Subscription {
    let client = h.client.clone();
    let filter_owned = filter.to_string();
    let subscribing = tokio::spawn(async move { client.subscribe(&filter_owned).await });
    match h.request().await {
        Request::Subscribe(s) => assert_eq!(s.filters[0].path, topics::inbox(ME, filter)),
        other => panic!("expected a SUBSCRIBE, got {other:?}"),
    }
    h.suback_own(1);
    subscribing.await.unwrap().unwrap()
}

async fn nothing_queued(sub: &mut Subscription) -> bool {
    tokio::time::timeout(Duration::from_millis(10), sub.next())
        .await
        .is_err()
}

#[tokio::test(start_paused = true)]
async fn deliveries_are_verified_deduplicated_and_acknowledged() {
    let mut h = Harness::new(config());
    h.connect();
    let mut sub = subscribe(&mut h, "welfare/#").await;
    assert_eq!(
        h.replays_sent().await,
        1,
        "a new subscription asks for a replay"
    );

    let topic = "welfare/incorrect-payment/ost";
    let (payload, share_id) = delivery(topic, "alert-1", &broker_key());
    h.incoming(topics::inbox(ME, topic), payload.clone());
    let share = sub.next().await.unwrap().unwrap();
    assert_eq!(share.share_id(), share_id);
    assert_eq!(share.topic(), topic);
    assert_eq!(share.stamp().audit_index, 7);
    assert_eq!(
        share.fields().get("subject_kommunkod"),
        Some(&json!("0580"))
    );
    assert_eq!(share.fields().get("grounds"), None);
    assert!(!format!("{share:?}").contains("0580"));

    // A redelivery while the share is in hand is suppressed.
    h.incoming(topics::inbox(ME, topic), payload.clone());
    assert!(nothing_queued(&mut sub).await);

    // Acknowledging publishes an ack signed with the agency's key.
    share.ack().await.unwrap();
    assert!(share.is_acked());
    let ack = h.publish_request().await;
    assert_eq!(ack.topic, topics::acks(ME));
    let signed: Signed = serde_json::from_slice(&ack.payload).unwrap();
    let ack: Ack = signed
        .verify(messages::TAG_ACK, &config().agency_keys, ME)
        .unwrap();
    assert_eq!(ack.share_ids, vec![share_id.clone()]);
    drop(share);

    // An acknowledged share is not handed out again, but acknowledged again.
    h.incoming(topics::inbox(ME, topic), payload);
    assert!(nothing_queued(&mut sub).await);
    let reacks: Vec<Request> = h.task.pending().drain(..).collect();
    assert!(matches!(&reacks[..], [Request::Publish(p)] if p.topic == topics::acks(ME)));

    // A share dropped without acknowledgement is handed out again.
    let (payload2, share_id2) = delivery(topic, "alert-2", &broker_key());
    h.incoming(topics::inbox(ME, topic), payload2.clone());
    let share2 = sub.next().await.unwrap().unwrap();
    drop(share2);
    h.incoming(topics::inbox(ME, topic), payload2);
    assert_eq!(sub.next().await.unwrap().unwrap().share_id(), share_id2);
}

#[tokio::test(start_paused = true)]
async fn refused_deliveries_are_errors_and_checkpoints_are_ignored() {
    let mut h = Harness::new(config());
    h.connect();
    let mut sub = subscribe(&mut h, "#").await;
    let topic = "welfare/x";
    let (forged, _) = delivery(topic, "alert-1", &polisen_key());
    h.incoming(topics::inbox(ME, topic), forged);
    let err = sub.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), "bad_broker_signature");
    assert_eq!(err.topic(), topic);

    h.incoming(topics::inbox(ME, topic), b"{}".to_vec());
    assert_eq!(
        sub.next().await.unwrap().unwrap_err().code(),
        "malformed_message"
    );

    // Delivered on another topic than stamped.
    let (moved, _) = delivery(topic, "alert-2", &broker_key());
    h.incoming(topics::inbox(ME, "welfare/y"), moved);
    assert_eq!(
        sub.next().await.unwrap().unwrap_err().code(),
        "stamp_mismatch"
    );

    h.incoming(topics::checkpoint(ME), b"{\"anything\":1}".to_vec());
    assert!(nothing_queued(&mut sub).await);
}

#[tokio::test(start_paused = true)]
async fn deliveries_go_to_every_matching_subscription_only() {
    let mut h = Harness::new(config());
    h.connect();
    let mut welfare = subscribe(&mut h, "welfare/#").await;
    let mut akrim = subscribe(&mut h, "akrim/#").await;
    let mut all = subscribe(&mut h, "#").await;
    let (payload, share_id) = delivery("welfare/x", "alert-1", &broker_key());
    h.incoming(topics::inbox(ME, "welfare/x"), payload);
    assert_eq!(welfare.next().await.unwrap().unwrap().share_id(), share_id);
    assert_eq!(all.next().await.unwrap().unwrap().share_id(), share_id);
    assert!(nothing_queued(&mut akrim).await);

    // Dropping a subscription unsubscribes its filter.
    drop(akrim);
    match h.request().await {
        Request::Unsubscribe(u) => assert_eq!(u.topics, vec![topics::inbox(ME, "akrim/#")]),
        other => panic!("expected an UNSUBSCRIBE, got {other:?}"),
    }
    // The next session re-subscribes the remaining filters after receipts.
    let topics = h.connect();
    assert_eq!(
        topics,
        vec![
            topics::receipts(ME),
            topics::replay_status(ME),
            topics::inbox(ME, "#"),
            topics::inbox(ME, "welfare/#")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscription_lost_with_the_connection_completes_after_the_reconnect() {
    let mut h = Harness::new(config());
    h.connect();
    let client = h.client.clone();
    let subscribing = tokio::spawn(async move { client.subscribe("akrim/#").await });
    // The SUBSCRIBE was queued, then drained into rumqttc's pending queue
    // when the connection broke; the next CONNACK discards it.
    let Request::Subscribe(lost) = h.request().await else {
        panic!("expected a SUBSCRIBE");
    };
    h.task.pending().push_back(Request::Subscribe(lost));
    h.task.lost().await;
    h.task.pending().clear();
    assert!(!subscribing.is_finished());
    let topics = h.connect();
    assert_eq!(
        topics,
        vec![
            topics::receipts(ME),
            topics::replay_status(ME),
            topics::inbox(ME, "akrim/#")
        ]
    );
    let sub = subscribing.await.unwrap().unwrap();
    assert_eq!(sub.filter(), "akrim/#");
}

/// Three broker nodes: every lost connection moves on to the next address,
/// after the last back to the first, and a connection to another node
/// gets what every reconnect gets: the subscriptions again, a replay
/// request, and the same bytes of an alert still waiting for its receipt.
#[tokio::test(start_paused = true)]
async fn a_lost_connection_moves_on_to_the_next_broker_and_wraps_around() {
    let config = config().with_fallback_brokers([
        BrokerAddress::new("broker-2.example", 8884),
        BrokerAddress::new("broker-3.example", 8885),
    ]);
    let mut h = Harness::new(config);
    assert_eq!(h.task.next_broker(), ("localhost".into(), 8883));
    assert_eq!(h.client.connected_broker(), None);
    h.connect();
    assert_eq!(
        h.client.connected_broker(),
        Some(BrokerAddress::new("localhost", 8883))
    );
    let sub = subscribe(&mut h, "welfare/#").await;
    assert_eq!(h.replays_sent().await, 1);
    let client = h.client.clone();
    let publishing = tokio::spawn(async move { client.publish("welfare/x", alert()).await });
    let first = h.publish_request().await;

    h.task.lost().await;
    assert_eq!(h.client.connected_broker(), None);
    assert_eq!(h.task.next_broker(), ("broker-2.example".into(), 8884));
    let topics = h.connect();
    assert_eq!(
        h.client.connected_broker(),
        Some(BrokerAddress::new("broker-2.example", 8884))
    );
    assert_eq!(
        topics,
        vec![
            topics::receipts(ME),
            topics::replay_status(ME),
            topics::inbox(ME, "welfare/#")
        ]
    );
    let again = h.publish_request().await;
    assert_eq!(again.payload, first.payload);
    assert_eq!(h.replays_sent().await, 1);

    // Failed attempts move on as well, and the last address is followed by the first.
    h.task.lost().await;
    assert_eq!(h.task.next_broker(), ("broker-3.example".into(), 8885));
    h.task.lost().await;
    assert_eq!(h.task.next_broker(), ("localhost".into(), 8883));
    h.connect();
    let third = h.publish_request().await;
    assert_eq!(third.payload, first.payload);
    let envelope = Envelope::from_json(&first.payload).unwrap();
    h.incoming(
        topics::receipts(ME),
        signed_receipt(
            &receipt_for(&envelope, ReceiptStatus::Accepted),
            &broker_key(),
        ),
    );
    assert!(publishing.await.unwrap().is_ok());
    drop(sub);
}

/// With one address every reconnect goes back to it.
#[tokio::test(start_paused = true)]
async fn a_single_broker_is_reconnected_to() {
    let mut h = Harness::new(config());
    h.connect();
    h.task.lost().await;
    assert_eq!(h.task.next_broker(), ("localhost".into(), 8883));
    h.connect();
    assert_eq!(
        h.client.connected_broker(),
        Some(BrokerAddress::new("localhost", 8883))
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_filters_are_refused() {
    let h = Harness::new(config());
    for bad in ["", "a/#/b", "_audit/#", "A/b", "/a"] {
        assert!(
            matches!(
                h.client.subscribe(bad).await,
                Err(ClientError::InvalidFilter(_))
            ),
            "{bad}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn closing_ends_subscriptions_and_publishes() {
    let mut h = Harness::new(config());
    h.connect();
    let mut sub = subscribe(&mut h, "#").await;
    let Harness {
        client, requests, ..
    } = h;
    let client = Arc::try_unwrap(client).unwrap();
    let publishing = {
        let shared = client.shared.clone();
        tokio::spawn(async move {
            // Wait on the same state a publish waits on.
            let mut state = shared.state.subscribe();
            let _ = state.wait_for(|s| s.closed).await;
        })
    };
    client.close().await;
    let disconnect = loop {
        match requests.recv_async().await {
            Ok(Request::Publish(p)) if p.topic == topics::replay(ME) => continue,
            other => break other,
        }
    };
    assert!(matches!(disconnect, Ok(Request::Disconnect(_))));
    assert!(sub.next().await.is_none());
    publishing.await.unwrap();
}

#[test]
fn packet_size_matches_rumqttc() {
    for payload in [
        0, 100, 127, 128, 16_000, 16_383, 16_384, 2_000_000, 2_097_152,
    ] {
        let topic = topics::outbox(ME, "welfare/incorrect-payment/ost");
        let mut publish = Publish::new(topic.clone(), QoS::AtLeastOnce, vec![0u8; payload]);
        publish.pkid = 1;
        assert_eq!(
            publish_packet_size(&topic, payload),
            publish.size(),
            "{payload}"
        );
    }
}

#[test]
fn prepare_encodes_the_envelope_for_the_outbox() {
    let config = config();
    let h = Harness::new(config);
    let envelope = h.client.sign("welfare/x", &alert()).unwrap();
    let prepared = prepare(ME, 1024 * 1024, &envelope).unwrap();
    assert_eq!(prepared.topic, "/tenants/linkoping/out/welfare/x");
    assert_eq!(prepared.payload, envelope.to_json());
    assert_eq!(prepared.alert_id, envelope.header.alert_id);
    assert_eq!(prepared.envelope_hash, messages::envelope_hash(&envelope));
    assert!(uuid::Uuid::parse_str(&prepared.alert_id).is_ok());
    assert!(matches!(
        prepare(ME, 300, &envelope),
        Err(PublishError::TooLarge { max: 300, .. })
    ));
}

#[test]
fn handles_can_move_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
    send_sync::<Subscription>();
    send_sync::<ReceivedShare>();
    send_sync::<AgencyConfig>();
}
