//! The broker as a separate process, killed with SIGKILL again and again
//! under steady traffic: every alert that got a receipt reaches every
//! recipient its shares name, each exactly once to the application; nothing
//! is delivered that is not in the audit log; the log verifies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use samverkan_broker::audit::EntryKind;
use samverkan_e2e::{BrokerProcess, admin_request};
use samverkan_sdk::Alert;
use samverkan_sdk::alerts::{
    CompanyFlag, CompanyFlagContext, CompanyIndicator, ExploitationIndicator, ExploitationSignal,
    Region,
};
use samverkan_sdk::client::Client;
use samverkan_sdk::identifiers::{Kommunkod, Organisationsnummer};
use samverkan_sdk::messages::{Receipt, ReceiptStatus};

use crate::fixtures::{TEST_ORGNR, incorrect_payment};

const PER_PUBLISHER: usize = 50;
const RECEIVERS: [&str; 3] = ["linkoping", "norrkoping", "polisen"];

fn company_flag(kommunkod: &str) -> Alert {
    CompanyFlag::new(
        Organisationsnummer::parse(TEST_ORGNR).unwrap(),
        Kommunkod::parse(kommunkod).unwrap(),
        [CompanyIndicator::FTaxRevoked],
        CompanyFlagContext::AssociationGrant,
    )
    .build()
    .unwrap()
}

fn exploitation_signal() -> Alert {
    ExploitationSignal::new(
        Region::Ost,
        [ExploitationIndicator::HousingAtWorkplace],
        "Workers sleep in the storage room.",
    )
    .build()
    .unwrap()
}

/// The `i`-th alert of `publisher`, with its logical topic.
pub(crate) fn alert_for(publisher: &str, i: usize) -> (&'static str, Alert) {
    match (publisher, i % 2) {
        ("forsakringskassan", 0) => ("welfare/incorrect-payment/ost", incorrect_payment("0580")),
        ("forsakringskassan", _) => ("welfare/incorrect-payment/ost", incorrect_payment("0581")),
        ("skatteverket", 0) => ("welfare/company/ost", company_flag("0580")),
        ("skatteverket", _) => ("akrim/ost/exploitation", exploitation_signal()),
        (_, _) => ("welfare/company/ost", company_flag("0581")),
    }
}

fn patient(mut config: samverkan_sdk::client::AgencyConfig) -> samverkan_sdk::client::AgencyConfig {
    config.receipt_timeout = Duration::from_secs(2);
    config.publish_deadline = Duration::from_secs(120);
    config
}

/// What receivers handed to their applications, per (agency, share id),
/// and the deliveries they refused.
#[derive(Clone, Default)]
pub(crate) struct Tally {
    pub received: Arc<Mutex<HashMap<(String, String), u32>>>,
    pub refused: Arc<Mutex<Vec<String>>>,
}

/// Counts every share `client` hands to `agency`'s application, and
/// acknowledges it, until the subscription ends.
pub(crate) async fn count_shares(
    client: Client,
    agency: &'static str,
    tally: Tally,
) -> tokio::task::JoinHandle<()> {
    let mut inbox = client.subscribe("#").await.unwrap();
    tokio::spawn(async move {
        while let Some(item) = inbox.next().await {
            match item {
                Ok(share) => {
                    *tally
                        .received
                        .lock()
                        .unwrap()
                        .entry((agency.to_string(), share.share_id().to_string()))
                        .or_default() += 1;
                    let _ = share.ack().await;
                }
                Err(e) => tally.refused.lock().unwrap().push(format!("{agency}: {e}")),
            }
        }
        drop(client);
    })
}

/// Waits up to 60 s until every one of `expected` (agency, share id) has been
/// handed to its application; fails naming those missing, with `logs()`.
pub(crate) async fn wait_for_all(
    tally: &Tally,
    expected: &std::collections::HashSet<(String, String)>,
    logs: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<_> = {
            let got = tally.received.lock().unwrap();
            expected
                .iter()
                .filter(|k| !got.contains_key(*k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} shares never arrived, e.g. {:?}\n{}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)],
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_and_duplicates_nothing() {
    let mut broker = BrokerProcess::new();
    broker.start().await;

    // Receivers: count every share the application is handed, then ack it.
    let tally = Tally::default();
    let (received, refused) = (tally.received.clone(), tally.refused.clone());
    let mut receivers = Vec::new();
    for agency in RECEIVERS {
        let client = Client::connect(patient(broker.agency_config(agency)))
            .await
            .unwrap();
        receivers.push(count_shares(client, agency, tally.clone()).await);
    }

    // Publishers: a steady stream each; every publish waits for its receipt.
    let mut publishers = Vec::new();
    for agency in ["forsakringskassan", "skatteverket", "kronofogden"] {
        let client = Client::connect(patient(broker.agency_config(agency)))
            .await
            .unwrap();
        publishers.push(tokio::spawn(async move {
            let mut receipts: Vec<Receipt> = Vec::new();
            for i in 0..PER_PUBLISHER {
                let (topic, alert) = alert_for(agency, i);
                let receipt = client
                    .publish(topic, alert)
                    .await
                    .unwrap_or_else(|e| panic!("{agency} #{i}: {e}"));
                assert_eq!(receipt.status, ReceiptStatus::Accepted);
                receipts.push(receipt);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            receipts
        }));
    }

    // Kill the broker three times during the run.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        broker.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker.start().await;
    }

    let mut expected: HashMap<(String, String), String> = HashMap::new();
    let mut receipts = 0;
    for p in publishers {
        for receipt in p.await.unwrap() {
            receipts += 1;
            for share in receipt.shares {
                if RECEIVERS.contains(&share.recipient.as_str()) {
                    expected.insert(
                        (share.recipient.clone(), share.share_id.clone()),
                        receipt.alert_id.clone().unwrap(),
                    );
                }
            }
        }
    }
    assert_eq!(receipts, 3 * PER_PUBLISHER);
    assert!(
        expected.len() >= 3 * PER_PUBLISHER,
        "too few shares: {}",
        expected.len()
    );

    // Every share with a receipt reaches its recipient (replayed after restarts).
    let keys = expected.keys().cloned().collect();
    wait_for_all(&tally, &keys, || broker.log_text()).await;
    // Give late duplicates a chance to show, then stop gracefully.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = broker.signal_and_wait("TERM", Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit on SIGTERM: {status:?}"
    );
    for r in receivers {
        r.abort();
    }

    let received = received.lock().unwrap().clone();
    assert!(
        refused.lock().unwrap().is_empty(),
        "{:?}",
        refused.lock().unwrap()
    );
    for (key, count) in &received {
        assert_eq!(
            *count, 1,
            "{key:?} was handed to the application {count} times"
        );
    }

    // Nothing was delivered that is not in the audit log.
    let store = samverkan_broker::store::Store::open(&broker.store_url)
        .await
        .unwrap();
    let shares: HashMap<(String, String), ()> = store
        .audit_query(&samverkan_broker::store::AuditFilter {
            kind: Some(EntryKind::Share),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| ((e.recipient.unwrap(), e.share_id.unwrap()), ()))
        .collect();
    for key in received.keys() {
        assert!(
            shares.contains_key(key),
            "{key:?} was delivered but is not in the audit log"
        );
    }
    store.close().await;

    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sighup_reloads_the_policy_of_a_running_process() {
    let mut broker = BrokerProcess::new();
    broker.start().await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], broker.admin_port));
    let (_, before) = admin_request(admin, "GET", "/health").await;

    let legal = broker.dir.path().join("policies/legal-bases.toml");
    let text = std::fs::read_to_string(&legal).unwrap();
    std::fs::write(
        &legal,
        text.replacen("Duty to notify", "Duty to notify (reviewed)", 1),
    )
    .unwrap();
    broker.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = admin_request(admin, "GET", "/health").await;
        let version = |body: &str| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["policy_version"].clone()
        };
        if version(&now) != version(&before) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = broker.signal_and_wait("TERM", Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()));
    let out = broker.samverkan(&[
        "audit",
        "query",
        "--kind",
        "policy_loaded",
        "--format",
        "json",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}
