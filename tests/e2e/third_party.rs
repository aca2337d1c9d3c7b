//! Standard third-party MQTT clients (Mosquitto's command-line tools, in
//! MQTT 3.1.1 and 5) work with an agency's certificate, receive verifiable
//! deliveries, and are cut off when they touch another agency's topics.

use std::process::Stdio;
use std::time::Duration;

use samverkan_e2e::TestBroker;
use samverkan_sdk::messages::Delivery;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::fixtures::incorrect_payment;

fn mosquitto(tool: &str, broker: &TestBroker, agency: &str, version: &str) -> Command {
    let pki = broker.pki();
    let mut cmd = Command::new(tool);
    cmd.arg("-h")
        .arg("localhost")
        .arg("-p")
        .arg(broker.addr().port().to_string())
        .arg("--cafile")
        .arg(pki.ca_cert())
        .arg("--cert")
        .arg(pki.client_cert(agency))
        .arg("--key")
        .arg(pki.client_key(agency))
        .arg("-V")
        .arg(version)
        .arg("-q")
        .arg("1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn require(tool: &str) {
    let found = std::process::Command::new(tool)
        .arg("--help")
        .output()
        .is_ok();
    assert!(
        found,
        "{tool} is missing: install mosquitto-clients (.ci/run does)"
    );
}

#[tokio::test]
async fn mosquitto_clients_receive_deliveries_in_both_protocol_versions() {
    require("mosquitto_sub");
    let broker = TestBroker::start().await;
    let fk = broker.agency("forsakringskassan").await;
    for version in ["mqttv311", "mqttv5"] {
        let mut sub = mosquitto("mosquitto_sub", &broker, "linkoping", version)
            .args([
                "-t",
                "/tenants/linkoping/in/welfare/#",
                "-C",
                "1",
                "-W",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        // Publish until the subscriber (which subscribes on its own time) prints a delivery.
        let line = loop {
            fk.publish("welfare/incorrect-payment/ost", incorrect_payment("0580"))
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
                Ok(Ok(Some(line))) => break line,
                Ok(other) => panic!("mosquitto_sub {version} ended: {other:?}"),
                Err(_) => continue,
            }
        };
        // What a third-party client gets is the same verifiable delivery.
        let delivery = Delivery::from_json(line.as_bytes()).unwrap();
        let config = broker.agency_config("linkoping");
        let verified = delivery
            .verify(
                "linkoping",
                "welfare/incorrect-payment/ost",
                &config.broker_keys,
                &config.agency_keys,
            )
            .unwrap();
        assert_eq!(verified.stamp.recipient, "linkoping");
        let status = sub.wait().await.unwrap();
        assert!(status.success(), "mosquitto_sub {version}: {status}");
    }
}

#[tokio::test]
async fn mosquitto_clients_are_cut_off_from_other_agencies_topics() {
    require("mosquitto_sub");
    require("mosquitto_pub");
    let broker = TestBroker::start().await;
    for version in ["mqttv311", "mqttv5"] {
        // Own inbox: subscribed.
        let own = mosquitto("mosquitto_sub", &broker, "linkoping", version)
            .args(["-t", "/tenants/linkoping/in/#", "-d", "-W", "1"])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&own.stdout);
        assert!(text.contains("received SUBACK"), "{version}: {text}");

        // Another agency's inbox: never subscribed; the broker drops the
        // connection (MQTT 5 is told why: 135, not authorized).
        let other = mosquitto("mosquitto_sub", &broker, "linkoping", version)
            .args(["-t", "/tenants/polisen/in/#", "-d", "-W", "2"])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&other.stdout);
        assert!(!text.contains("received SUBACK"), "{version}: {text}");
        if version == "mqttv5" {
            // mosquitto_sub ends without an error when told to disconnect.
            assert!(text.contains("Received DISCONNECT (135)"), "{text}");
        } else {
            assert!(
                text.matches("sending CONNECT").count() >= 2,
                "no disconnect seen ({version}): {text}"
            );
            assert!(!other.status.success());
        }

        // Publishing into another agency's outbox: the connection is lost.
        let publish = mosquitto("mosquitto_pub", &broker, "linkoping", version)
            .args(["-t", "/tenants/polisen/out/akrim/ost/x", "-m", "forged"])
            .output()
            .await
            .unwrap();
        assert!(
            !publish.status.success(),
            "{version}: the publish went through"
        );
        let err = String::from_utf8_lossy(&publish.stderr);
        let expected = if version == "mqttv5" {
            // Told to disconnect (144, topic name invalid) before the publish completed.
            "not currently connected"
        } else {
            "connection was lost"
        };
        assert!(err.contains(expected), "{version}: {err}");
    }
}
