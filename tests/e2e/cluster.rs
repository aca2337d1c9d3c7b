//! Several `samverkan serve` nodes on one PostgreSQL: shares cross nodes,
//! replay works from any node, and neither a node killed with SIGKILL nor
//! the database primary killed and its synchronous standby promoted loses
//! or duplicates anything; a database rolled back behind a published
//! checkpoint makes the nodes stop appending and signing.

use std::collections::HashSet;
use std::time::Duration;

use samverkan_broker::audit::EntryKind;
use samverkan_broker::store::{AuditFilter, Store};
use samverkan_e2e::nodes::Nodes;
use samverkan_e2e::pg_cluster::PgCluster;
use samverkan_e2e::{Backend, TestDatabase, prepare_dir};
use samverkan_sdk::client::Client;
use samverkan_sdk::messages::{Receipt, ReceiptStatus};

use crate::crash::{Tally, alert_for, count_shares, wait_for_all};
use crate::fixtures::{incorrect_payment, next_item, next_share};

/// Alerts each publisher sends in a traffic run.
const PER_PUBLISHER: usize = 40;
/// Receivers and the node each starts on.
const RECEIVERS: [(&str, usize); 3] = [("linkoping", 1), ("norrkoping", 0), ("polisen", 1)];
/// Publishers and the node each starts on.
const PUBLISHERS: [(&str, usize); 3] = [
    ("forsakringskassan", 0),
    ("skatteverket", 1),
    ("kronofogden", 0),
];

/// Runs `audit verify` against the nodes' database and asserts it passes.
fn assert_log_verifies(nodes: &Nodes) {
    let out = nodes.nodes[0].samverkan(&["audit", "verify", "--quiet"]);
    assert!(
        out.status.success(),
        "audit verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Entries of `kind` in the log.
async fn entries(store: &Store, kind: EntryKind) -> Vec<samverkan_broker::audit::AuditEntry> {
    store
        .audit_query(&AuditFilter {
            kind: Some(kind),
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_cross_nodes_and_replay_works_from_any_node() {
    let dir = prepare_dir();
    let db = TestDatabase::new(Backend::Postgres, dir.path()).await;
    let mut nodes = Nodes::new(3, &db.url);
    nodes.start_all().await;

    // Published on node 0, for Linköping following on node 1: handed off
    // and claimed there, although Linköping also has a connection on node 0
    // (one that publishes and does not receive shares).
    let linkoping = nodes.agency("linkoping", 1).await;
    let mut inbox = linkoping.subscribe("#").await.unwrap();
    let linkoping_publisher = nodes.agency("linkoping", 0).await;
    let fk = nodes.agency("forsakringskassan", 0).await;
    let receipt = fk
        .publish("welfare/incorrect-payment/ost", incorrect_payment("0580"))
        .await
        .unwrap();
    assert_eq!(receipt.status, ReceiptStatus::Accepted);
    assert_eq!(receipt.shares.len(), 1);
    let share = next_share(&mut inbox).await;
    assert_eq!(share.share_id(), receipt.shares[0].share_id);
    share.ack().await.unwrap();
    linkoping_publisher.close().await;

    // The acknowledgement, recorded by node 1, reaches the one log.
    let store = Store::open(&db.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while entries(&store, EntryKind::Ack).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the acknowledgement made on node 1 was not recorded:\n{}",
            nodes.nodes[1].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = nodes.nodes[1].health().await;
    assert_eq!(health["cluster"]["node"], "node-1", "{health}");
    assert!(
        health["cluster"]["handoffs_claimed"].as_u64() >= Some(1),
        "node 1 delivered the share without claiming it: {health}"
    );

    // Two more shares reach Linköping on node 1, which takes them without
    // acknowledging them and leaves; on node 2 its replay sends both again.
    let mut expected = HashSet::new();
    for _ in 0..2 {
        let r = fk
            .publish("welfare/incorrect-payment/ost", incorrect_payment("0580"))
            .await
            .unwrap();
        expected.insert(r.shares[0].share_id.clone());
    }
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        match next_item(&mut inbox, Duration::from_secs(10)).await {
            Some(Ok(share)) => {
                seen.insert(share.share_id().to_string());
            }
            other => panic!(
                "a share did not reach node 1: {:?}",
                other.map(|r| r.is_ok())
            ),
        }
    }
    assert_eq!(seen, expected);
    drop(inbox);
    linkoping.close().await;
    assert_eq!(
        nodes.nodes[2].health().await["cluster"]["handoffs_claimed"],
        0,
        "node 2 has not been asked for anything yet"
    );
    let linkoping = nodes.agency("linkoping", 2).await;
    let mut inbox = linkoping.subscribe("#").await.unwrap();
    let mut replayed = HashSet::new();
    while replayed.len() < 2 {
        match next_item(&mut inbox, Duration::from_secs(10)).await {
            Some(Ok(share)) => {
                share.ack().await.unwrap();
                replayed.insert(share.share_id().to_string());
            }
            other => panic!(
                "replay on node 2 fell short: {:?}",
                other.map(|r| r.is_ok())
            ),
        }
    }
    assert_eq!(replayed, expected);
    drop(inbox);
    linkoping.close().await;
    fk.close().await;
    for node in &mut nodes.nodes {
        let status = node.signal_and_wait("TERM", Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "{}", node.log_text());
    }
    assert_eq!(entries(&store, EntryKind::Share).await.len(), 3);
    assert_eq!(entries(&store, EntryKind::Ack).await.len(), 3);
    store.close().await;
    assert_log_verifies(&nodes);
}

/// Steady traffic over the nodes: publishers and receivers on different
/// nodes, each receiver counting what the application is handed.
struct Traffic {
    tally: Tally,
    receivers: Vec<tokio::task::JoinHandle<()>>,
    publishers: Vec<tokio::task::JoinHandle<Vec<Receipt>>>,
}

impl Traffic {
    async fn start(nodes: &Nodes) -> Self {
        let tally = Tally::default();
        let mut receivers = Vec::new();
        for (agency, node) in RECEIVERS {
            let client = nodes.agency(agency, node % nodes.nodes.len()).await;
            receivers.push(count_shares(client, agency, tally.clone()).await);
        }
        let mut publishers = Vec::new();
        for (agency, node) in PUBLISHERS {
            let client = nodes.agency(agency, node % nodes.nodes.len()).await;
            publishers.push(tokio::spawn(async move {
                let mut receipts = Vec::new();
                for i in 0..PER_PUBLISHER {
                    let (topic, alert) = alert_for(agency, i);
                    let receipt: Receipt = client
                        .publish(topic, alert)
                        .await
                        .unwrap_or_else(|e| panic!("{agency} #{i}: {e}"));
                    assert_eq!(receipt.status, ReceiptStatus::Accepted);
                    receipts.push(receipt);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                client.close().await;
                receipts
            }));
        }
        Self {
            tally,
            receivers,
            publishers,
        }
    }

    /// Waits for every publisher and every share with a receipt; checks
    /// each was handed to its recipient's application exactly once, that
    /// every delivery is in the log, and returns (receipts, shares).
    async fn finish(self, nodes: &Nodes, url: &str) -> (usize, usize) {
        let mut expected = HashSet::new();
        let mut receipts = 0;
        for p in self.publishers {
            for receipt in p.await.unwrap() {
                receipts += 1;
                for share in receipt.shares {
                    if RECEIVERS.iter().any(|(r, _)| *r == share.recipient) {
                        expected.insert((share.recipient, share.share_id));
                    }
                }
            }
        }
        assert_eq!(receipts, PUBLISHERS.len() * PER_PUBLISHER);
        wait_for_all(&self.tally, &expected, || {
            nodes
                .nodes
                .iter()
                .map(|n| n.log_text())
                .collect::<Vec<_>>()
                .join("\n----\n")
        })
        .await;
        // Late duplicates get a moment to show.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for r in self.receivers {
            r.abort();
        }
        assert!(
            self.tally.refused.lock().unwrap().is_empty(),
            "{:?}",
            self.tally.refused.lock().unwrap()
        );
        let received = self.tally.received.lock().unwrap().clone();
        for (key, count) in &received {
            assert_eq!(
                *count, 1,
                "{key:?} was handed to the application {count} times"
            );
        }
        let store = Store::open(url).await.unwrap();
        let shares: HashSet<(String, String)> = entries(&store, EntryKind::Share)
            .await
            .into_iter()
            .map(|e| {
                (
                    e.recipient.unwrap_or_default(),
                    e.share_id.unwrap_or_default(),
                )
            })
            .collect();
        for key in received.keys() {
            assert!(
                shares.contains(key),
                "{key:?} was delivered but is not in the log"
            );
        }
        let alerts = store
            .audit_query(&AuditFilter::default())
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == EntryKind::Share)
            .filter_map(|e| e.alert_id.clone())
            .collect::<HashSet<_>>()
            .len();
        assert_eq!(
            alerts, receipts,
            "every alert with a receipt is in the log, once"
        );
        let mut recorded = 0;
        for (agency, _) in RECEIVERS {
            recorded += store.delivery_count(agency).await.unwrap();
        }
        assert_eq!(
            recorded,
            expected.len() as u64,
            "one delivery row per share"
        );
        println!(
            "{receipts} receipts; {} log entries; {recorded} deliveries recorded, {} handed to the applications, each once",
            store.next_audit_index().await.unwrap(),
            received.len()
        );
        store.close().await;
        (receipts, expected.len())
    }
}

/// A small deterministic sequence for the kill moments; the seed is printed.
fn moments(seed: u64, n: usize) -> Vec<Duration> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(400 + x % 900)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_duplicates_nothing() {
    let dir = prepare_dir();
    let db = TestDatabase::new(Backend::Postgres, dir.path()).await;
    let mut nodes = Nodes::new(2, &db.url);
    nodes.start_all().await;
    let traffic = Traffic::start(&nodes).await;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    println!("kill moments from seed {seed}");
    for (round, pause) in moments(seed, 3).into_iter().enumerate() {
        tokio::time::sleep(pause).await;
        let victim = round % 2;
        nodes.nodes[victim].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes.nodes[victim].start().await;
    }
    let (receipts, shares) = traffic.finish(&nodes, &db.url).await;
    println!("{receipts} receipts, {shares} shares, each delivered once, over 3 kills");
    for node in &mut nodes.nodes {
        let status = node.signal_and_wait("TERM", Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "{}", node.log_text());
    }
    assert_log_verifies(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_carries_on_with_nothing_lost_and_no_fork() {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PgCluster::start();
        pg.create_database("samverkan");
        pg
    })
    .await
    .unwrap();
    let url = pg.multi_host_url("samverkan");
    let mut nodes = Nodes::new(2, &url);
    nodes.start_all().await;
    for node in &nodes.nodes {
        assert_eq!(
            node.health().await["cluster"]["database_host"],
            format!("127.0.0.1:{}", pg.primary().port())
        );
    }
    let traffic = Traffic::start(&nodes).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.kill_primary();
    // No writable primary until the standby is promoted: the nodes say so
    // and fail closed meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = nodes.nodes[0].health().await;
        if health["ok"] == false {
            assert_eq!(health["database"], "down", "{health}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node reported itself well without a primary: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.promote_standby();
    let (receipts, shares) = traffic.finish(&nodes, &url).await;
    println!("{receipts} receipts, {shares} shares, each delivered once, across a failover");
    for node in &nodes.nodes {
        let health = node.health().await;
        assert_eq!(
            health["cluster"]["database_host"],
            format!("127.0.0.1:{}", pg.standby().port()),
            "{health}"
        );
        assert_eq!(health["cluster"]["signing"], true, "{health}");
    }
    for node in &mut nodes.nodes {
        let status = node.signal_and_wait("TERM", Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "{}", node.log_text());
    }
    assert_log_verifies(&nodes);
}

/// Waits until the newest checkpoint in the database covers the whole log;
/// returns its size.
async fn checkpointed(url: &str) -> u64 {
    let store = Store::open(url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let size = store.next_audit_index().await.unwrap();
        let newest = store.latest_checkpoint().await.unwrap().map(|c| c.size);
        if newest == Some(size) {
            store.close().await;
            return size;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint covers the log of {size} entries (newest: {newest:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs one statement on the test server's maintenance database.
async fn on_server(sql: &str) {
    use sqlx::Connection;
    let server = std::env::var(samverkan_e2e::POSTGRES_ENV).unwrap();
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_behind_a_published_checkpoint_stops_the_nodes() {
    let dir = prepare_dir();
    let db = TestDatabase::new(Backend::Postgres, dir.path()).await;
    let name = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let mut nodes = Nodes::new(2, &db.url);
    let stop = |nodes: &mut Nodes| {
        for node in &mut nodes.nodes {
            let status = node.signal_and_wait("TERM", Duration::from_secs(15));
            assert!(status.is_some_and(|s| s.success()), "{}", node.log_text());
        }
    };
    let publish = async |nodes: &Nodes, n: usize| {
        let fk = nodes.agency("forsakringskassan", 0).await;
        for i in 0..n {
            let receipt = fk
                .publish(
                    "welfare/incorrect-payment/ost",
                    incorrect_payment(["0580", "0581"][i % 2]),
                )
                .await
                .unwrap();
            assert_eq!(receipt.status, ReceiptStatus::Accepted);
        }
        fk.close().await;
    };

    // A backup, taken after three alerts.
    nodes.start_all().await;
    publish(&nodes, 3).await;
    let backed_up = checkpointed(&db.url).await;
    stop(&mut nodes);
    on_server(&format!("CREATE DATABASE {name}_backup TEMPLATE {name}")).await;

    // Three more, signed and published in a checkpoint.
    nodes.start_all().await;
    publish(&nodes, 3).await;
    let published = checkpointed(&db.url).await;
    assert!(published > backed_up);
    stop(&mut nodes);

    // The database is restored from the backup, behind what was published.
    on_server(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
    on_server(&format!("ALTER DATABASE {name}_backup RENAME TO {name}")).await;
    nodes.start_all().await;
    for node in &nodes.nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let health = node.health().await;
            if health["status"] == "halted" {
                assert_eq!(health["ok"], false, "{health}");
                assert_eq!(health["cluster"]["signing"], false, "{health}");
                let reason = health["cluster"]["halted"].as_str().unwrap_or_default();
                assert!(reason.contains(&format!("{published} entries")), "{reason}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a node went on over a rolled-back database: {health}\n{}",
                node.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(node.metrics().await.contains("samverkan_node_signing 0"));
        assert!(node.log_text().contains("no-fork guard"));
    }
    // An alert gets no receipt, and nothing is appended or signed.
    let mut config = nodes.agency_config("forsakringskassan", 0);
    config.receipt_timeout = Duration::from_secs(1);
    config.publish_deadline = Duration::from_secs(3);
    let fk = Client::connect(config).await.unwrap();
    let refused = fk
        .publish("welfare/incorrect-payment/ost", incorrect_payment("0580"))
        .await;
    assert!(refused.is_err(), "a halted node answered: {refused:?}");
    fk.close().await;
    let store = Store::open(&db.url).await.unwrap();
    assert_eq!(store.next_audit_index().await.unwrap(), backed_up);
    assert_eq!(
        store.latest_checkpoint().await.unwrap().map(|c| c.size),
        Some(backed_up)
    );
    store.close().await;
}
