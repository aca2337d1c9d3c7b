//! Audit evidence for legal staff, against SQLite and PostgreSQL: the log
//! verifies, tampering is found, evidence bundles check offline, heads are
//! consistent, subject lookups find exactly the person's shares, and
//! retention purges content without breaking any proof.

use std::collections::BTreeSet;
use std::process::Output;

use samverkan_broker::audit::{AuditEntry, EntryKind};
use samverkan_e2e::{Backend, TestBroker, prepare_dir};
use samverkan_sdk::Alert;
use samverkan_sdk::alerts::{Date, IncorrectPayment, Period};
use samverkan_sdk::audit::evidence::check_bundle;
use samverkan_sdk::audit::proof::{parse_hashes, verify_consistency};
use samverkan_sdk::identifiers::{Kommunkod, Personnummer, with_check_digit};
use samverkan_sdk::keys::KeyRegistry;
use samverkan_sdk::messages::ReceiptStatus;

use crate::fixtures::TEST_PNR;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(samverkan_e2e::Backend::Sqlite).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name(samverkan_e2e::Backend::Postgres).await
                }
            }
        )*
    };
}

on_both_backends!(
    tampering_is_detected,
    evidence_checks_offline_and_breaks_on_any_change,
    heads_are_consistent_across_restarts,
    subject_lookup_finds_exactly_the_persons_shares,
    retention_purges_content_but_not_the_proof,
    retention_purges_alert_types_no_longer_in_the_policy,
);

/// A fictitious personnummer other than Tolvan's.
fn other_person() -> String {
    format!("19{}", with_check_digit("811218987").unwrap())
}

fn payment_about(pnr: &str) -> Alert {
    IncorrectPayment::new(
        Personnummer::parse(pnr).unwrap(),
        Kommunkod::parse("0580").unwrap(),
        "bostadsbidrag",
        "forsakringskassan",
        Period::new(
            Date::new(2026, 2, 1).unwrap(),
            Date::new(2026, 2, 28).unwrap(),
        )
        .unwrap(),
    )
    .build()
    .unwrap()
}

/// Publishes `alerts` as Försäkringskassan; returns the receipts' alert ids.
async fn publish_all(broker: &TestBroker, alerts: Vec<Alert>) -> Vec<String> {
    let fk = broker.agency("forsakringskassan").await;
    let mut ids = Vec::new();
    for alert in alerts {
        let receipt = fk
            .publish("welfare/incorrect-payment/ost", alert)
            .await
            .unwrap();
        assert_eq!(receipt.status, ReceiptStatus::Accepted);
        ids.push(receipt.alert_id.unwrap());
    }
    ids
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn started(backend: Backend) -> TestBroker {
    TestBroker::start_with(backend, prepare_dir(), |_| {}).await
}

async fn tampering_is_detected(backend: Backend) {
    let mut broker = started(backend).await;
    publish_all(
        &broker,
        vec![payment_about(TEST_PNR), payment_about(&other_person())],
    )
    .await;
    broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;

    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("the audit log verifies"));

    // Change one field of one row: the first share.
    let share = store_share_index(&broker).await;
    assert_eq!(
        broker
            .execute_sql(&format!(
                "UPDATE audit_entries SET recipient = 'norrkoping' WHERE idx = {share}"
            ))
            .await,
        1
    );
    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("entry {share} does not match its recorded hash")),
        "{}",
        text(&out)
    );
    broker
        .execute_sql(&format!(
            "UPDATE audit_entries SET recipient = 'linkoping' WHERE idx = {share}"
        ))
        .await;
    assert!(
        broker
            .samverkan(&["audit", "verify", "--quiet"])
            .status
            .success()
    );

    // Change it and recompute its leaf hash: the stored tree gives it away.
    broker.restart().await;
    let original = broker
        .broker()
        .store()
        .audit_range(share, share + 1)
        .await
        .unwrap()
        .remove(0);
    broker.stop().await;
    let mut forged = original.clone();
    forged.recipient = Some("norrkoping".into());
    broker.rewrite_audit_row(&forged).await;
    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the stored Merkle tree does not match"),
        "{}",
        text(&out)
    );
    // …and with the whole tree recomputed too, the signed checkpoint does.
    broker.rebuild_tree().await;
    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("does not match the signed checkpoint"),
        "{}",
        text(&out)
    );
    // Undo everything.
    broker.rewrite_audit_row(&original).await;
    broker.rebuild_tree().await;
    assert!(
        broker
            .samverkan(&["audit", "verify", "--quiet"])
            .status
            .success()
    );

    // Remove a row.
    assert_eq!(
        broker
            .execute_sql("DELETE FROM audit_entries WHERE idx = 2")
            .await,
        1
    );
    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("entry 2 is missing"), "{}", text(&out));
}

async fn evidence_checks_offline_and_breaks_on_any_change(backend: Backend) {
    let mut broker = started(backend).await;
    publish_all(&broker, vec![payment_about(TEST_PNR)]).await;
    broker.broker().checkpoint_now().await.unwrap();
    let share = broker
        .broker()
        .store()
        .audit_range(0, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == EntryKind::Share)
        .unwrap();
    broker.stop().await;

    let bundle_path = broker.dir.path().join("evidence.json");
    let out = broker.samverkan(&[
        "audit",
        "prove",
        &share.index.to_string(),
        "--out",
        bundle_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // A machine with only the bundle and the broker's public keys.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(&bundle_path, elsewhere.path().join("evidence.json")).unwrap();
    std::fs::copy(
        broker.pki().broker_keys(),
        elsewhere.path().join("broker-keys.toml"),
    )
    .unwrap();
    let out = std::process::Command::new(samverkan_e2e::samverkan_binary())
        .args([
            "audit",
            "check-proof",
            "evidence.json",
            "--broker-keys",
            "broker-keys.toml",
        ])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("EVIDENCE VERIFIES"), "{report}");
    assert!(
        report.contains("id = \"incorrect-payment-to-home-municipality\""),
        "{report}"
    );
    assert!(report.contains("signature over the alert's header and field digests verified"));
    // The proof reveals no field values and no other entries.
    let bytes = std::fs::read(&bundle_path).unwrap();
    let as_text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        !as_text.contains("1212-1212"),
        "the bundle holds a personnummer"
    );
    assert!(
        !as_text.contains("norrkoping\","),
        "the bundle names another entry's recipient"
    );

    // Any changed byte breaks it.
    let keys = KeyRegistry::load(&broker.pki().broker_keys()).unwrap();
    check_bundle(&bytes, &keys).unwrap();
    let policy_start = as_text.find("\"policy_files\"").unwrap();
    let positions: Vec<usize> = (0..policy_start)
        .chain((policy_start..bytes.len()).step_by(61))
        .collect();
    for i in positions {
        let mut changed = bytes.clone();
        changed[i] ^= 0x01;
        assert!(
            check_bundle(&changed, &keys).is_err(),
            "byte {i} ({:?}) changed and the bundle still verified",
            bytes[i] as char
        );
    }
}

async fn heads_are_consistent_across_restarts(backend: Backend) {
    let mut broker = started(backend).await;
    publish_all(&broker, vec![payment_about(TEST_PNR)]).await;
    let old = broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;
    // The appender picks up the tree where it was.
    broker.restart().await;
    publish_all(
        &broker,
        vec![payment_about(&other_person()), payment_about(TEST_PNR)],
    )
    .await;
    let new = broker.broker().checkpoint_now().await.unwrap();
    assert!(new > old);
    broker.stop().await;

    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = broker.samverkan(&["audit", "consistency", &old.to_string(), &new.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let proof: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = |side: &str| -> [u8; 32] {
        hex::decode(proof[side]["root"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let hashes: Vec<String> = serde_json::from_value(proof["consistency_proof"].clone()).unwrap();
    let hashes = parse_hashes(&hashes).unwrap();
    verify_consistency(old, &root("old"), new, &root("new"), &hashes).unwrap();
    // A different old root is not consistent.
    let mut wrong = root("old");
    wrong[0] ^= 1;
    assert!(verify_consistency(old, &wrong, new, &root("new"), &hashes).is_err());
}

async fn subject_lookup_finds_exactly_the_persons_shares(backend: Backend) {
    let mut broker = started(backend).await;
    let about_tolvan = publish_all(
        &broker,
        vec![payment_about(TEST_PNR), payment_about(TEST_PNR)],
    )
    .await;
    let about_other = publish_all(&broker, vec![payment_about(&other_person())]).await;
    broker.stop().await;

    let out = broker.samverkan(&["audit", "subject", TEST_PNR, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let entries: Vec<AuditEntry> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let alerts: BTreeSet<String> = entries.iter().filter_map(|e| e.alert_id.clone()).collect();
    assert_eq!(alerts, about_tolvan.iter().cloned().collect());
    assert!(
        entries
            .iter()
            .all(|e| e.kind == EntryKind::Share && e.recipient.as_deref() == Some("linkoping"))
    );
    assert!(!alerts.contains(&about_other[0]));
    // The short form of the same number finds the same shares; the log holds no numbers.
    let out = broker.samverkan(&["audit", "subject", "121212+1212", "--format", "json"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().count(),
        entries.len()
    );
    let all = broker.samverkan(&["audit", "query", "--format", "json"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains("1212-1212"));
    // A wrong check digit is refused with a reason.
    let out = broker.samverkan(&["audit", "subject", "19121212-1213"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("check digit"), "{}", text(&out));
}

async fn retention_purges_content_but_not_the_proof(backend: Backend) {
    let dir = prepare_dir();
    std::fs::write(
        dir.path().join("policies/retention.toml"),
        "[default]\ncontent_days = 365\n\n[alert_type.\"welfare.incorrect_payment\"]\ncontent_days = 0\n",
    )
    .unwrap();
    let mut broker = TestBroker::start_with(backend, dir, |_| {}).await;
    let ids = publish_all(&broker, vec![payment_about(TEST_PNR)]).await;
    let store = broker.broker().store().clone();
    assert_eq!(
        store
            .pending_deliveries("linkoping", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .alert_content("forsakringskassan", &ids[0])
            .await
            .unwrap()
            .is_some()
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    let (alerts, deliveries) = broker.broker().purge_now().await.unwrap();
    assert_eq!((alerts, deliveries), (1, 1));
    assert!(
        store
            .alert_content("forsakringskassan", &ids[0])
            .await
            .unwrap()
            .is_none()
    );
    // The undelivered share's content is gone, so it is no longer delivered.
    assert!(
        store
            .pending_deliveries("linkoping", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Nothing left to purge; the purge is audited once.
    assert_eq!(broker.broker().purge_now().await.unwrap(), (0, 0));
    let purges: Vec<AuditEntry> = store
        .audit_range(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::RetentionPurge)
        .collect();
    assert_eq!(purges.len(), 1);
    assert_eq!(
        purges[0].alert_type.as_deref(),
        Some("welfare.incorrect_payment")
    );
    broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;

    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let share = store_share_index(&broker).await;
    let bundle = broker.dir.path().join("after-purge.json");
    let out = broker.samverkan(&[
        "audit",
        "prove",
        &share.to_string(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = broker.samverkan(&["audit", "check-proof", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Content of an alert type that a new policy no longer has is purged
/// after the default period, not kept forever.
async fn retention_purges_alert_types_no_longer_in_the_policy(backend: Backend) {
    let dir = prepare_dir();
    std::fs::write(
        dir.path().join("policies/retention.toml"),
        "[default]\ncontent_days = 0\n",
    )
    .unwrap();
    let broker = TestBroker::start_with(backend, dir, |_| {}).await;
    let ids = publish_all(&broker, vec![payment_about(TEST_PNR)]).await;
    // As if the alert type had been removed from the policy since.
    assert_eq!(
        broker
            .execute_sql("UPDATE alerts SET alert_type = 'welfare.retired_type'")
            .await,
        1
    );
    assert_eq!(
        broker
            .execute_sql("UPDATE deliveries SET alert_type = 'welfare.retired_type'")
            .await,
        1
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    assert_eq!(broker.broker().purge_now().await.unwrap(), (1, 1));
    let store = broker.broker().store().clone();
    assert!(
        store
            .alert_content("forsakringskassan", &ids[0])
            .await
            .unwrap()
            .is_none()
    );
    let purge = store
        .audit_range(0, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == EntryKind::RetentionPurge)
        .unwrap();
    assert_eq!(purge.alert_type.as_deref(), Some("welfare.retired_type"));
}

async fn store_share_index(broker: &TestBroker) -> u64 {
    let out = broker.samverkan(&["audit", "query", "--kind", "share", "--format", "json"]);
    let first = String::from_utf8(out.stdout).unwrap();
    let entry: AuditEntry = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    entry.index
}
