//! The SDK's example programs (`client-sdk/examples/`), which agency
//! developers copy, run as separate processes against a real broker: what
//! they print is what the README and the crate documentation promise.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use rumqttc::{Packet, QoS};
use samverkan_broker::audit::EntryKind;
use samverkan_broker::pki::DevPkiLayout;
use samverkan_e2e::{TestBroker, sdk_example_binary};
use samverkan_sdk::keys::KeyRegistry;
use samverkan_sdk::topics;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::fixtures::TEST_PNR;
use crate::raw::{Outcome, connect, poll_for};

const TOPIC: &str = "welfare/incorrect-payment/ost";
/// Generous: the examples connect over TLS and wait for signed answers.
const LIMIT: Duration = Duration::from_secs(60);

/// An example run as `agency` against `broker`, with its own arguments.
fn example(broker: &TestBroker, name: &str, agency: &str, extra: &[&str]) -> Command {
    let address = format!("localhost:{}", broker.addr().port());
    example_at(broker, &address, name, agency, extra)
}

/// An example run as `agency` with the broker's PKI and policies, against
/// the broker address `address`.
fn example_at(
    broker: &TestBroker,
    address: &str,
    name: &str,
    agency: &str,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(sdk_example_binary(name));
    command
        .args(["--agency", agency, "--broker", address])
        .arg("--certs")
        .arg(broker.pki().dir)
        .arg("--policies")
        .arg(broker.policies())
        .args(extra)
        // Not the repository: the paths above must be all the examples need.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs an example to its end (the broker runs on this test's runtime,
/// so the child is awaited, never waited for in a blocking way).
async fn run(mut command: Command) -> Output {
    tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("the example did not end")
        .expect("run the example")
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut Lines<R>, what: &str) -> String {
    match tokio::time::timeout(LIMIT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        other => panic!("no {what}: {other:?}"),
    }
}

struct Follower {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

async fn start_follow(broker: &TestBroker, agency: &str, count: u64) -> Follower {
    let count = count.to_string();
    let mut child = example(
        broker,
        "follow",
        agency,
        &["--filter", "welfare/#", "--count", &count],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the follow example");
    let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut follower = Follower {
        child,
        stdout,
        stderr,
    };
    // Printed once the broker has acknowledged the subscription.
    assert_eq!(
        next_line(&mut follower.stdout, "subscription line").await,
        format!("following welfare/# as {agency}")
    );
    follower
}

/// Every line of a finished follower's output, and its exit status.
async fn finish(mut follower: Follower) -> (Vec<String>, Vec<String>, std::process::ExitStatus) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    // Bounded by the output of a run of `--count` shares.
    for _ in 0..100 {
        match tokio::time::timeout(LIMIT, follower.stdout.next_line()).await {
            Ok(Ok(Some(line))) => out.push(line),
            Ok(Ok(None)) => break,
            other => panic!("the follow example did not end: {other:?}, so far {out:?}"),
        }
    }
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(5), follower.stderr.next_line()).await
    {
        err.push(line);
    }
    let status = tokio::time::timeout(LIMIT, follower.child.wait())
        .await
        .expect("the follow example did not exit")
        .expect("wait for the follow example");
    (out, err, status)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_sdk_examples_publish_receive_acknowledge_and_raise_alarms() {
    let broker = TestBroker::start().await;
    let mut follower = start_follow(&broker, "linkoping", 1).await;

    // A forged delivery on Linköping's inbox, from a client that got past
    // the gateway: `follow` raises an alarm, uses nothing, and goes on.
    let (rogue, mut rogue_events) =
        connect(broker.raw_options_behind_gateway("lkp-rogue", "linkoping"))
            .await
            .expect("the rogue client connects");
    rogue
        .publish(
            topics::inbox("linkoping", TOPIC),
            QoS::AtLeastOnce,
            false,
            b"{not a delivery".to_vec(),
        )
        .await
        .expect("queue the forgery");
    assert!(matches!(
        poll_for(&mut rogue_events, Duration::from_secs(10), |p| matches!(
            p,
            Packet::PubAck(_)
        )
        .then_some(()))
        .await,
        Outcome::Got(())
    ));
    let alarm = next_line(&mut follower.stderr, "alarm").await;
    assert!(
        alarm.starts_with(&format!(
            "ALARM: refused delivery on {TOPIC} (malformed_message)"
        )),
        "{alarm}"
    );

    // Försäkringskassan publishes; the receipt lists Linköping's share and
    // Norrköping's denial.
    let published = run(example(&broker, "publish", "forsakringskassan", &[])).await;
    let stdout = text(&published.stdout);
    assert!(
        published.status.success(),
        "{:?}\n{stdout}\n{}",
        published.status,
        text(&published.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("accepted alert ") && lines[0].contains("1 share(s), 1 denial(s)"),
        "{stdout}"
    );
    let share_line = lines
        .iter()
        .find(|l| l.starts_with("share ") && l.contains(" to linkoping under "))
        .unwrap_or_else(|| panic!("no share to Linköping: {stdout}"));
    assert!(
        share_line.contains("incorrect-payment-to-home-municipality (uppgiftsskyldighet-valfard)")
            && share_line.ends_with(
                "benefit, case_reference, period, subject_kommunkod, subject_personnummer, suspected_amount_sek"
            ),
        "{share_line}"
    );
    let share_id = share_line
        .split(' ')
        .nth(1)
        .expect("a share id")
        .to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("denied norrkoping: condition_not_met")),
        "{stdout}"
    );

    // Linköping's `follow` prints the verified share and acknowledges it.
    let (out, err, status) = finish(follower).await;
    assert!(status.success(), "{status:?}: {out:?} {err:?}");
    assert!(
        out[0].starts_with(&format!("share {share_id} of alert "))
            && out[0].contains(" from forsakringskassan on welfare/incorrect-payment/ost: rule incorrect-payment-to-home-municipality, legal basis uppgiftsskyldighet-valfard"),
        "{out:?}"
    );
    assert_eq!(out[1], format!("acknowledged {share_id}"));
    assert_eq!(out.len(), 2, "{out:?}");
    // Field values (personal data) are printed by neither.
    let pnr_digits = &TEST_PNR[TEST_PNR.len() - 9..];
    assert!(!stdout.contains(pnr_digits) && !out.concat().contains(pnr_digits));

    // The acknowledgement reached the audit log as proof of receipt.
    let alert_id = out[0].split(' ').nth(4).expect("an alert id").to_string();
    let mut recorded = false;
    for _ in 0..200 {
        let entries = broker
            .broker()
            .store()
            .audit_for_alert(&alert_id)
            .await
            .expect("read the audit log");
        if entries.iter().any(|e| {
            e.kind == EntryKind::Ack
                && e.recipient.as_deref() == Some("linkoping")
                && e.share_id.as_deref() == Some(share_id.as_str())
        }) {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorded, "the acknowledgement was never recorded");

    // Försäkringskassan's key is revoked: `publish` reports the rejection
    // with its code and exits 2.
    revoke_signing_key(&broker, "forsakringskassan");
    assert!(broker.broker().reload().await.ok());
    let rejected = run(example(&broker, "publish", "forsakringskassan", &[])).await;
    let stdout = text(&rejected.stdout);
    assert_eq!(rejected.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.starts_with("rejected alert ") && stdout.contains(": key_revoked ("),
        "{stdout}"
    );

    // A broker that is not there: `publish` tries a few times, then fails
    // with the reason.
    let closed_port = samverkan_e2e::free_port();
    let unreachable = run(example_at(
        &broker,
        &format!("localhost:{closed_port}"),
        "publish",
        "forsakringskassan",
        &[],
    ))
    .await;
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = text(&unreachable.stderr);
    assert!(stderr.contains("connecting to the broker"), "{stderr}");
}

fn revoke_signing_key(broker: &TestBroker, agency: &str) {
    let keys_file = broker.policies().join("keys.toml");
    let mut registry = KeyRegistry::load(&keys_file).expect("the test's key registry");
    let mut key = registry
        .keys_of(agency)
        .find(|k| k.key_id == DevPkiLayout::signing_key_id(agency))
        .expect("the agency's development key")
        .clone();
    key.revoked_at_ms = Some(samverkan_sdk::time::now_ms());
    key.revocation_reason = Some("test".into());
    registry.insert(key);
    std::fs::write(&keys_file, registry.to_toml("test")).expect("write the key registry");
}

#[test]
fn the_examples_default_to_the_development_layout() {
    // What a fresh clone has, and `cargo run -- serve` listens on.
    for name in ["publish", "follow"] {
        let help = std::process::Command::new(sdk_example_binary(name))
            .arg("--help")
            .output()
            .expect("run the example");
        assert!(help.status.success(), "{name}");
        let help = text(&help.stdout);
        for default in [
            "[default: localhost:8883]",
            "[default: certs-dev]",
            "[default: policies]",
        ] {
            assert!(help.contains(default), "{name}: {default}\n{help}");
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(root.join("certs-dev/ca.pem").is_file());
    assert!(root.join("policies/keys.toml").is_file());
}
