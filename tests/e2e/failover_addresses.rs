//! A client given several broker addresses: it skips one where nothing
//! listens, and when the broker node it is connected to dies it carries on
//! at the next one, subscriptions and an alert still waiting for its
//! receipt included.

use std::path::Path;
use std::time::Duration;

use samverkan_e2e::{Backend, BrokerProcess, TestBroker, TestDatabase, client_binary};
use samverkan_sdk::client::{AgencyConfig, BrokerAddress, Client, Subscription};
use samverkan_sdk::messages::{Receipt, ReceiptStatus};

use crate::fixtures::{incorrect_payment, next_item};

/// Every address of these tests: the broker's certificate names 127.0.0.1.
const LOOPBACK: &str = "127.0.0.1";

/// The longest any single step below may take.
const STEP: Duration = Duration::from_secs(60);

/// A loopback port where nothing listens: bound, noted and released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// `agency`'s configuration in the development PKI of `dir`, with broker
/// addresses at `ports` on loopback, in that order.
fn config(dir: &Path, agency: &str, ports: &[u16]) -> AgencyConfig {
    let (first, others) = ports.split_first().unwrap();
    AgencyConfig::from_dev_pki(
        &dir.join("certs-dev"),
        &dir.join("policies/keys.toml"),
        agency,
        LOOPBACK,
        *first,
    )
    .unwrap()
    .with_fallback_brokers(others.iter().map(|p| BrokerAddress::new(LOOPBACK, *p)))
}

async fn connect(config: AgencyConfig) -> Client {
    tokio::time::timeout(STEP, Client::connect(config))
        .await
        .expect("connect did not end in time")
        .unwrap()
}

async fn subscribe(client: &Client, filter: &str) -> Subscription {
    tokio::time::timeout(STEP, client.subscribe(filter))
        .await
        .expect("subscribe did not end in time")
        .unwrap()
}

/// Publishes Försäkringskassan's alert about a resident of Linköping and
/// returns the id of Linköping's share from the accepted receipt.
async fn publish(client: &Client) -> String {
    let receipt = tokio::time::timeout(
        STEP,
        client.publish("welfare/incorrect-payment/ost", incorrect_payment("0580")),
    )
    .await
    .expect("publish did not end in time")
    .unwrap();
    linkopings_share(&receipt)
}

/// The id of Linköping's share in an accepted receipt.
fn linkopings_share(receipt: &Receipt) -> String {
    assert_eq!(receipt.status, ReceiptStatus::Accepted);
    let share = receipt
        .shares
        .iter()
        .find(|s| s.recipient == "linkoping")
        .expect("a share to linkoping");
    share.share_id.clone()
}

/// Waits for the share `share_id` and acknowledges it (and any other
/// share handed out meanwhile).
async fn receive(inbox: &mut Subscription, share_id: &str) {
    loop {
        match next_item(inbox, STEP).await {
            Some(Ok(share)) => {
                let id = share.share_id().to_string();
                share.ack().await.unwrap();
                if id == share_id {
                    return;
                }
            }
            Some(Err(refused)) => panic!("delivery refused: {refused}"),
            None => panic!("share {share_id} did not arrive within {STEP:?}"),
        }
    }
}

/// Waits until `client` is connected to `broker`.
async fn wait_connected_to(client: &Client, broker: &BrokerAddress) {
    let deadline = tokio::time::Instant::now() + STEP;
    while client.connected_broker().as_ref() != Some(broker) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not connected to {broker} within {STEP:?} (now {:?})",
            client.connected_broker()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first address refuses connections: `Client::connect` goes on to the
/// second, and the alert gets its receipt there.
#[tokio::test]
async fn a_closed_first_address_is_skipped_and_the_alert_gets_its_receipt() {
    let broker = TestBroker::start().await;
    let closed = closed_port();
    let port = broker.addr().port();
    let fk = connect(config(
        broker.dir.path(),
        "forsakringskassan",
        &[closed, port],
    ))
    .await;
    assert_eq!(
        fk.connected_broker(),
        Some(BrokerAddress::new(LOOPBACK, port))
    );
    let linkoping = connect(config(broker.dir.path(), "linkoping", &[closed, port])).await;
    let mut inbox = subscribe(&linkoping, "welfare/#").await;

    let share_id = publish(&fk).await;
    receive(&mut inbox, &share_id).await;
    fk.close().await;
    drop(inbox);
    linkoping.close().await;
}

/// With only closed addresses, connecting fails with the refusal (an
/// answer, not a wait for the time limit).
#[tokio::test]
async fn connecting_fails_when_every_address_is_closed() {
    let dir = samverkan_e2e::prepare_dir();
    let (a, b) = (closed_port(), closed_port());
    let outcome = tokio::time::timeout(
        STEP,
        Client::connect(config(dir.path(), "forsakringskassan", &[a, b])),
    )
    .await
    .expect("connect did not end in time");
    let err = outcome.unwrap_err();
    assert!(
        matches!(
            err,
            samverkan_sdk::ClientError::ConnectionRefused { ref address, .. }
                if address == &format!("{LOOPBACK}:{b}")
        ),
        "{err}"
    );
}

/// `samverkan-client publish` takes several `--broker`s (repeated and
/// comma-separated), skips the closed one and prints the accepted receipt;
/// a malformed address is refused before anything is sent, naming it.
#[tokio::test]
async fn the_command_line_client_takes_several_brokers() {
    let broker = TestBroker::start().await;
    let closed = closed_port();
    let port = broker.addr().port();
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/incorrect-payment.json")
        .display()
        .to_string();
    let run = |brokers: Vec<String>| {
        let mut args: Vec<String> = [
            "publish",
            "--agency",
            "forsakringskassan",
            "--certs",
            "certs-dev",
            "--keys",
            "policies/keys.toml",
            "--topic",
            "welfare/incorrect-payment/ost",
            "--type",
            "welfare.incorrect_payment",
            "--file",
            &example,
        ]
        .map(String::from)
        .to_vec();
        for b in brokers {
            args.push("--broker".into());
            args.push(b);
        }
        args.extend(["--deadline".into(), STEP.as_secs().to_string()]);
        let dir = broker.dir.path().to_path_buf();
        // The broker runs on this test's runtime: the client waits elsewhere.
        let running = tokio::task::spawn_blocking(move || {
            std::process::Command::new(client_binary())
                .args(&args)
                .current_dir(dir)
                .output()
                .unwrap()
        });
        async move {
            tokio::time::timeout(2 * STEP, running)
                .await
                .expect("samverkan-client did not end in time")
                .unwrap()
        }
    };

    let out = run(vec![
        format!("{LOOPBACK}:{}", closed_port()),
        format!("{LOOPBACK}:{closed},{LOOPBACK}:{port}"),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["status"], "accepted", "{receipt}");

    let out = run(vec![format!("{LOOPBACK}:{port}"), LOOPBACK.to_string()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("the broker address `{LOOPBACK}` has no port")),
        "stderr: {stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// Makes `node` (not started) a cluster node named `name` on the database
/// at `url`: the same store for every node, a state directory of its own.
fn join(node: &mut BrokerProcess, url: &str, name: &str) {
    let path = node.path().join("samverkan.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let own = format!("url = \"{}\"", node.store_url);
    assert!(config.contains(&own), "no store URL in {config}");
    let config = config.replace(&own, &format!("url = \"{url}\""));
    std::fs::write(
        &path,
        format!("{config}\n[cluster]\nnode = \"{name}\"\nstate_dir = \"state\"\n"),
    )
    .unwrap();
    node.store_url = url.to_string();
}

/// Two broker nodes on one PostgreSQL database. A publisher and a
/// recipient are connected to the first; it is stopped while an alert
/// waits for its receipt, then killed with SIGKILL. Both clients carry on
/// at the second node: the waiting alert is sent there and gets its
/// receipt, the recipient, subscribed again there, receives the share, and
/// an alert the first node accepted, sent again unchanged, is answered with
/// the receipt the first node gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_carries_on_at_the_next_node_when_its_node_is_killed() {
    samverkan_e2e::init_logging();
    // Declared first, dropped last: after both nodes have stopped.
    let database = TestDatabase::new(Backend::Postgres, Path::new(".")).await;
    let mut first = BrokerProcess::new();
    let mut second = first.sibling();
    join(&mut first, &database.url, "node-a");
    join(&mut second, &database.url, "node-b");
    first.start().await;
    second.start().await;
    let ports = [first.port, second.port];
    let (at_first, at_second) = (
        BrokerAddress::new(LOOPBACK, first.port),
        BrokerAddress::new(LOOPBACK, second.port),
    );

    let fk = connect(config(first.path(), "forsakringskassan", &ports)).await;
    let linkoping = connect(config(first.path(), "linkoping", &ports)).await;
    assert_eq!(fk.connected_broker().as_ref(), Some(&at_first));
    assert_eq!(linkoping.connected_broker().as_ref(), Some(&at_first));
    let mut inbox = subscribe(&linkoping, "welfare/#").await;
    let accepted = fk
        .sign("welfare/incorrect-payment/ost", &incorrect_payment("0580"))
        .unwrap();
    let receipt = tokio::time::timeout(STEP, fk.publish_envelope(accepted.clone()))
        .await
        .expect("publish did not end in time")
        .unwrap();
    receive(&mut inbox, &linkopings_share(&receipt)).await;

    // Stopped, the first node takes the alert's bytes and answers
    // nothing; killed, it drops the connections with the alert unanswered.
    first.signal("STOP");
    let fk = std::sync::Arc::new(fk);
    let publishing = tokio::spawn({
        let fk = fk.clone();
        async move { publish(&fk).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill();

    let share_id = tokio::time::timeout(STEP, publishing)
        .await
        .expect("the publish did not end in time")
        .unwrap();
    assert_eq!(fk.connected_broker().as_ref(), Some(&at_second));
    receive(&mut inbox, &share_id).await;
    wait_connected_to(&linkoping, &at_second).await;

    // The second node answers the alert the first one accepted with the
    // stored receipt.
    let again = tokio::time::timeout(STEP, fk.publish_envelope(accepted))
        .await
        .expect("publish did not end in time")
        .unwrap();
    assert_eq!(again, receipt);

    drop(inbox);
    linkoping.close().await;
    if let Ok(fk) = std::sync::Arc::try_unwrap(fk) {
        fk.close().await;
    }
}
