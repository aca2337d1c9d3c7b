//! The allowed flows of the acceptance criteria, through the SDK.

use std::time::Duration;

use samverkan_broker::audit::EntryKind;
use samverkan_e2e::TestBroker;
use samverkan_sdk::messages::ReceiptStatus;

use crate::fixtures::{TEST_PNR, assert_nothing, incorrect_payment, inspection_result, next_share};

#[tokio::test]
async fn forsakringskassan_to_linkoping_about_its_resident() {
    let broker = TestBroker::start().await;
    let linkoping = broker.agency("linkoping").await;
    let norrkoping = broker.agency("norrkoping").await;
    let mut lkp_inbox = linkoping.subscribe("welfare/#").await.unwrap();
    let mut nkp_inbox = norrkoping.subscribe("welfare/#").await.unwrap();
    let fk = broker.agency("forsakringskassan").await;

    let receipt = fk
        .publish("welfare/incorrect-payment/ost", incorrect_payment("0580"))
        .await
        .unwrap();
    assert_eq!(receipt.status, ReceiptStatus::Accepted);
    assert_eq!(receipt.shares.len(), 1);
    let share = &receipt.shares[0];
    assert_eq!(share.recipient, "linkoping");
    assert_eq!(share.rule_id, "incorrect-payment-to-home-municipality");
    assert_eq!(share.legal_basis, "uppgiftsskyldighet-valfard");
    let permitted = [
        "benefit",
        "case_reference",
        "period",
        "subject_kommunkod",
        "subject_personnummer",
        "suspected_amount_sek",
    ];
    assert_eq!(share.fields, permitted);
    // Norrköping is denied, with the condition that stopped it.
    let denial = receipt
        .denials
        .iter()
        .find(|d| d.recipient.as_deref() == Some("norrkoping"))
        .expect("a denial for norrkoping");
    assert_eq!(denial.code, "condition_not_met");

    // Linköping gets exactly the permitted fields, verified end to end.
    let got = next_share(&mut lkp_inbox).await;
    let mut names: Vec<String> = got.fields().keys().cloned().collect();
    names.sort();
    assert_eq!(names, permitted);
    assert_eq!(got.fields()["subject_personnummer"], TEST_PNR);
    assert!(
        got.fields().get("grounds").is_none(),
        "grounds is not permitted"
    );
    assert_eq!(got.stamp().rule_id, share.rule_id);
    assert_eq!(got.stamp().legal_basis, "uppgiftsskyldighet-valfard");
    assert_eq!(got.alert().header().publisher, "forsakringskassan");
    assert_eq!(got.share_id(), share.share_id);
    got.ack().await.unwrap();

    // Norrköping receives nothing.
    assert_nothing(&mut nkp_inbox, Duration::from_secs(1)).await;

    // The audit log has the share with legal basis and field names, and the denial.
    let alert_id = receipt.alert_id.clone().unwrap();
    let entries = broker
        .broker()
        .store()
        .audit_for_alert(&alert_id)
        .await
        .unwrap();
    let shares: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Share)
        .collect();
    assert_eq!(shares.len(), 1);
    let entry = shares[0];
    assert_eq!(entry.index, share.audit_index);
    assert_eq!(entry.recipient.as_deref(), Some("linkoping"));
    assert_eq!(
        entry.legal_basis.as_deref(),
        Some("uppgiftsskyldighet-valfard")
    );
    assert_eq!(
        entry.rule_id.as_deref(),
        Some("incorrect-payment-to-home-municipality")
    );
    assert_eq!(entry.fields, permitted);
    assert_eq!(entry.publisher.as_deref(), Some("forsakringskassan"));
    assert!(
        entry
            .purpose
            .as_deref()
            .unwrap_or("")
            .contains("economic assistance")
    );
    assert_eq!(
        entry.policy_version.as_deref(),
        Some(receipt.policy_version.as_str())
    );
    assert!(entry.signature.is_some() && entry.disclosed_digest.is_some());
    assert!(entries.iter().any(|e| e.kind == EntryKind::Denial
        && e.recipient.as_deref() == Some("norrkoping")
        && e.reason_code.as_deref() == Some("condition_not_met")));
    // No entry holds the personnummer.
    for e in &entries {
        assert!(!format!("{e:?}").contains("1212-1212"), "{e:?}");
    }

    // The acknowledgement is recorded as proof of receipt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let entries = broker
            .broker()
            .store()
            .audit_for_alert(&alert_id)
            .await
            .unwrap();
        if let Some(ack) = entries.iter().find(|e| e.kind == EntryKind::Ack) {
            assert_eq!(ack.recipient.as_deref(), Some("linkoping"));
            assert_eq!(ack.share_id.as_deref(), Some(share.share_id.as_str()));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ack was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn akrim_result_reaches_the_centre_and_skatteverket_but_not_a_municipality() {
    let broker = TestBroker::start().await;
    let akrimost = broker.agency("akrimost").await;
    let skatteverket = broker.agency("skatteverket").await;
    let linkoping = broker.agency("linkoping").await;
    let mut centre = akrimost.subscribe("akrim/ost/#").await.unwrap();
    let mut skv = skatteverket.subscribe("akrim/#").await.unwrap();
    let mut lkp = linkoping.subscribe("#").await.unwrap();
    let polisen = broker.agency("polisen").await;

    let alert = inspection_result().addressed_to(["akrimost", "skatteverket", "linkoping"]);
    let receipt = polisen
        .publish("akrim/ost/inspection", alert)
        .await
        .unwrap();
    let recipients: Vec<&str> = receipt
        .shares
        .iter()
        .map(|s| s.recipient.as_str())
        .collect();
    assert_eq!(recipients, ["akrimost", "skatteverket"]);
    assert!(
        receipt
            .shares
            .iter()
            .all(|s| s.legal_basis == "uppgiftsskyldighet-akrim")
    );
    assert_eq!(receipt.denials.len(), 1);
    let denial = &receipt.denials[0];
    assert_eq!(denial.recipient.as_deref(), Some("linkoping"));
    assert_eq!(denial.code, "no_rule_for_recipient");

    let got = next_share(&mut centre).await;
    assert_eq!(
        got.stamp().rule_id,
        "akrim-inspection-results-regional-centre"
    );
    assert!(got.fields().contains_key("findings"));
    let got = next_share(&mut skv).await;
    assert_eq!(got.stamp().rule_id, "akrim-inspection-results");
    assert_nothing(&mut lkp, Duration::from_secs(1)).await;

    let entries = broker
        .broker()
        .store()
        .audit_for_alert(receipt.alert_id.as_deref().unwrap())
        .await
        .unwrap();
    let denial_entry = entries
        .iter()
        .find(|e| e.kind == EntryKind::Denial)
        .expect("the denial is audited");
    assert_eq!(denial_entry.index, denial.audit_index);
    assert_eq!(denial_entry.recipient.as_deref(), Some("linkoping"));
    assert_eq!(
        denial_entry.reason_code.as_deref(),
        Some("no_rule_for_recipient")
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::Share)
            .count(),
        2
    );
}

#[tokio::test]
async fn the_same_alert_twice_gives_one_set_of_shares_and_the_same_receipt() {
    let broker = TestBroker::start().await;
    let linkoping = broker.agency("linkoping").await;
    let mut inbox = linkoping.subscribe("welfare/#").await.unwrap();
    let fk = broker.agency("forsakringskassan").await;

    let envelope = fk
        .sign("welfare/incorrect-payment/ost", &incorrect_payment("0580"))
        .unwrap();
    let first = fk.publish_envelope(envelope.clone()).await.unwrap();
    let second = fk.publish_envelope(envelope.clone()).await.unwrap();
    assert_eq!(first, second, "a resend gets the original receipt");

    let share = next_share(&mut inbox).await;
    share.ack().await.unwrap();
    assert_nothing(&mut inbox, Duration::from_secs(1)).await;
    assert_eq!(
        broker
            .broker()
            .store()
            .delivery_count("linkoping")
            .await
            .unwrap(),
        1
    );
    let entries = broker
        .broker()
        .store()
        .audit_for_alert(&envelope.header.alert_id)
        .await
        .unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::Share)
            .count(),
        1
    );
}

/// A burst larger than rumqttd's ring for the router's topic filter (two
/// segments of 1 MiB, about 900 alerts of this size) is answered in full
/// without a single resend: the router's intake reads ahead of its own pace.
#[tokio::test]
async fn a_burst_larger_than_rumqttds_ring_is_answered_without_resends() {
    const BURST: usize = 1500;
    let broker = TestBroker::start().await;
    let mut config = broker.agency_config("forsakringskassan");
    // A lost alert would wait for a resend after this long and fail the test.
    config.receipt_timeout = Duration::from_secs(60);
    config.publish_deadline = Duration::from_secs(60);
    let fk = std::sync::Arc::new(
        samverkan_sdk::client::Client::connect(config)
            .await
            .unwrap(),
    );
    let alert = incorrect_payment("0580");
    let envelopes: Vec<_> = (0..BURST)
        .map(|_| fk.sign("welfare/incorrect-payment/ost", &alert).unwrap())
        .collect();
    let total: usize = envelopes.iter().map(|e| e.to_json().len()).sum();
    assert!(total > 2 * 1024 * 1024, "the burst is only {total} bytes");

    let started = std::time::Instant::now();
    let mut publishes = tokio::task::JoinSet::new();
    for envelope in envelopes {
        let fk = fk.clone();
        publishes.spawn(async move { fk.publish_envelope(envelope).await });
    }
    let receipts = tokio::time::timeout(Duration::from_secs(30), publishes.join_all())
        .await
        .expect("some alerts of the burst were never answered");
    let accepted = receipts
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.status == ReceiptStatus::Accepted))
        .count();
    assert_eq!(
        accepted,
        BURST,
        "{:?}",
        receipts.iter().find(|r| r.is_err())
    );
    eprintln!("{BURST} alerts answered in {:?}", started.elapsed());
}

/// Runs `program` in `dir` with standard output a pipe whose reader has
/// already gone (as `program … | head -1` once `head` has exited), and waits
/// at most a minute for it to end.
#[cfg(unix)]
fn run_into_closed_pipe(
    program: &std::path::Path,
    args: &[String],
    dir: &std::path::Path,
) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "{} {args:?} did not end: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The program ended as a Unix tool does when its reader goes: by SIGPIPE,
/// without a panic or a message.
#[cfg(unix)]
fn assert_ended_by_sigpipe(out: &std::process::Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    const SIGPIPE: i32 = 13;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(SIGPIPE),
        "{what}: {:?}, stderr: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{what}: {stderr}");
}

/// `samverkan-client publish | head -1`, `samverkan-client follow | head -1`
/// and `samverkan audit query --format json | head -1` end quietly once the
/// reader has gone.
#[cfg(unix)]
#[tokio::test]
async fn a_closed_stdout_ends_the_client_and_the_audit_commands_quietly() {
    let mut broker = TestBroker::start().await;
    let dir = broker.dir.path().to_path_buf();
    let client = samverkan_e2e::samverkan_binary().with_file_name("samverkan-client");
    let connection = |agency: &str| {
        [
            "--agency",
            agency,
            "--broker",
            &format!("localhost:{}", broker.addr().port()),
            "--certs",
            "certs-dev",
            "--keys",
            "policies/keys.toml",
        ]
        .map(String::from)
        .to_vec()
    };
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/incorrect-payment.json")
        .display()
        .to_string();
    let mut publish = vec!["publish".to_string()];
    publish.extend(connection("forsakringskassan"));
    publish.extend(
        [
            "--topic",
            "welfare/incorrect-payment/ost",
            "--type",
            "welfare.incorrect_payment",
            "--file",
            &example,
        ]
        .map(String::from),
    );
    // The broker runs on this test's runtime: the client waits elsewhere.
    let (program, run_dir) = (client.clone(), dir.clone());
    let out =
        tokio::task::spawn_blocking(move || run_into_closed_pipe(&program, &publish, &run_dir))
            .await
            .unwrap();
    assert_ended_by_sigpipe(&out, "samverkan-client publish");

    // Linköping's share is replayed to `follow`, which cannot print it.
    let mut follow = vec!["follow".to_string()];
    follow.extend(connection("linkoping"));
    let (program, run_dir) = (client.clone(), dir.clone());
    let out =
        tokio::task::spawn_blocking(move || run_into_closed_pipe(&program, &follow, &run_dir))
            .await
            .unwrap();
    assert_ended_by_sigpipe(&out, "samverkan-client follow");

    broker.stop().await;
    let query = [
        "audit",
        "query",
        "--format",
        "json",
        "--store",
        &broker.config.store_url,
        "--broker-keys",
        &broker.pki().broker_keys().display().to_string(),
    ]
    .map(String::from);
    let out = run_into_closed_pipe(&samverkan_e2e::samverkan_binary(), &query, &dir);
    assert_ended_by_sigpipe(&out, "samverkan audit query --format json");
}
