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
    verify_checks_stored_content_against_the_log,
    verify_finds_a_deleted_checkpoint,
    verify_names_the_first_changed_entry_even_when_rehashed,
    rollback_is_found_only_against_kept_checkpoints,
    evidence_in_any_other_form_is_refused,
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
    // …and with the whole tree recomputed too, the broker's signed receipt
    // names the entry.
    broker.rebuild_tree().await;
    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("entry {share} differs from the receipt")),
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
    // As a table: the summary, the entries and the count, each a whole line
    // on standard output, and nothing on standard error.
    let out = broker.samverkan(&["audit", "subject", TEST_PNR]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.starts_with("2 share(s) about this subject; received by: linkoping\n"),
        "{table}"
    );
    assert!(table.ends_with("\n2 entries\n"), "{table}");
    // Captured (not a terminal), no command writes progress that rewrites
    // its line, so two commands' output never runs together.
    let out = broker.samverkan(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !out.stderr.contains(&b'\r') && !out.stdout.contains(&b'\r'),
        "{}",
        text(&out)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.is_empty() || stderr.ends_with('\n'), "{stderr}");
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
    // (A delivery has no type of its own: it is its alert's.)
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

/// `audit verify` must fail (exit 1) and say `expected`.
fn assert_verify_fails(broker: &TestBroker, extra: &[&str], expected: &str) {
    let mut args = vec!["audit", "verify", "--quiet"];
    args.extend_from_slice(extra);
    let out = broker.samverkan(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(expected),
        "lacks `{expected}`:\n{}",
        text(&out)
    );
}

fn assert_verifies(broker: &TestBroker) -> String {
    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// One column of the rows matching `condition`, as bytes (text columns as UTF-8).
async fn read_column(broker: &TestBroker, table: &str, column: &str, condition: &str) -> Vec<u8> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&broker.config.store_url)
        .await
        .unwrap();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {column} AS v FROM {table} WHERE {condition}"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    row.try_get::<Vec<u8>, _>("v")
        .or_else(|_| row.try_get::<String, _>("v").map(String::into_bytes))
        .unwrap()
}

/// Sets one column of the rows matching `condition` (bytes, text or NULL).
async fn write_column(
    broker: &TestBroker,
    table: &str,
    column: &str,
    condition: &str,
    value: Option<Vec<u8>>,
    as_text: bool,
) -> u64 {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&broker.config.store_url)
        .await
        .unwrap();
    let sql = sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET {column} = $1 WHERE {condition}"
    ));
    let q = sqlx::query(sql);
    let q = match (value, as_text) {
        (Some(v), true) => q.bind(String::from_utf8(v).unwrap()),
        (Some(v), false) => q.bind(v),
        (None, true) => q.bind(None::<String>),
        (None, false) => q.bind(None::<Vec<u8>>),
    };
    q.execute(&mut conn).await.unwrap().rows_affected()
}

async fn shares(broker: &TestBroker) -> Vec<AuditEntry> {
    let out = broker.samverkan(&["audit", "query", "--kind", "share", "--format", "json"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn verify_checks_stored_content_against_the_log(backend: Backend) {
    let mut broker = started(backend).await;
    let ids = publish_all(
        &broker,
        vec![payment_about(TEST_PNR), payment_about(&other_person())],
    )
    .await;
    broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;
    assert_verifies(&broker);
    let shares = shares(&broker).await;
    let share = shares
        .iter()
        .find(|e| e.alert_id.as_deref() == Some(ids[0].as_str()))
        .unwrap();
    let version = share.policy_version.clone().unwrap();

    // The archived text of the policy version the entries name.
    let at_version = format!("version = '{version}'");
    let files = read_column(&broker, "policy_versions", "files", &at_version).await;
    let changed = String::from_utf8(files.clone()).unwrap().replacen(
        "uppgiftsskyldighet",
        "uppgiftsskyldigheT",
        1,
    );
    assert_ne!(changed.as_bytes(), files.as_slice());
    let set = |v| write_column(&broker, "policy_versions", "files", &at_version, v, true);
    assert_eq!(set(Some(changed.into_bytes())).await, 1);
    assert_verify_fails(&broker, &[], &format!("policy version {version}"));
    set(Some(files)).await;
    assert_verifies(&broker);

    // The publisher's signed envelope of one alert, replaced by another's.
    let alert = |id: &str| format!("alert_id = '{id}'");
    let envelope = read_column(&broker, "alerts", "signed_envelope", &alert(&ids[0])).await;
    let other = read_column(&broker, "alerts", "signed_envelope", &alert(&ids[1])).await;
    let first = alert(&ids[0]);
    let set = |v| write_column(&broker, "alerts", "signed_envelope", &first, v, false);
    assert_eq!(set(Some(other)).await, 1);
    assert_verify_fails(
        &broker,
        &[],
        &format!("the stored signed envelope of alert {}", ids[0]),
    );
    // One changed signature byte.
    let mut flipped = envelope.clone();
    let at = String::from_utf8_lossy(&envelope)
        .find("\"signature\":\"")
        .unwrap()
        + 14;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    set(Some(flipped)).await;
    assert_verify_fails(
        &broker,
        &[],
        &format!("the stored signed envelope of alert {}", ids[0]),
    );
    set(Some(envelope)).await;
    assert_verifies(&broker);

    // The delivery of one share: replaced by another share's, or removed
    // without a retention purge.
    let delivery = |idx: u64| format!("audit_idx = {idx}");
    let other_share = shares.iter().find(|e| e.index != share.index).unwrap();
    // (The stored delivery is the broker's signature over its stamp; the
    // message is rebuilt from it, the share's entry and the alert.)
    let payload = read_column(
        &broker,
        "deliveries",
        "stamp_signature",
        &delivery(share.index),
    )
    .await;
    let other = read_column(
        &broker,
        "deliveries",
        "stamp_signature",
        &delivery(other_share.index),
    )
    .await;
    let this = delivery(share.index);
    let set = |v| write_column(&broker, "deliveries", "stamp_signature", &this, v, false);
    assert_eq!(set(Some(other)).await, 1);
    assert_verify_fails(
        &broker,
        &[],
        &format!("the stored delivery of entry {}", share.index),
    );
    set(None).await;
    assert_verify_fails(
        &broker,
        &[],
        &format!(
            "the stored delivery of entry {}: its content was removed, but no retention purge",
            share.index
        ),
    );
    set(Some(payload)).await;
    assert_verifies(&broker);
}

async fn verify_finds_a_deleted_checkpoint(backend: Backend) {
    let mut broker = started(backend).await;
    let mut sizes = Vec::new();
    for _ in 0..3 {
        publish_all(&broker, vec![payment_about(TEST_PNR)]).await;
        sizes.push(broker.broker().checkpoint_now().await.unwrap());
    }
    broker.stop().await;
    assert_verifies(&broker);
    // Each of them: the first, one in the middle.
    for size in [sizes[0], sizes[1]] {
        let condition = format!("size = {size}");
        let note = read_column(&broker, "checkpoints", "note", &condition).await;
        let root = read_column(&broker, "checkpoints", "root", &condition).await;
        let at: i64 = String::from_utf8(note.clone())
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("time "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            broker
                .execute_sql(&format!("DELETE FROM checkpoints WHERE {condition}"))
                .await,
            1
        );
        assert_verify_fails(
            &broker,
            &[],
            &format!("the signed checkpoint of size {size} is missing"),
        );
        {
            use sqlx::Connection;
            let mut conn = sqlx::AnyConnection::connect(&broker.config.store_url)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO checkpoints (size, root, at_ms, note) VALUES ($1, $2, $3, $4)",
            )
            .bind(size as i64)
            .bind(root)
            .bind(at)
            .bind(String::from_utf8(note).unwrap())
            .execute(&mut conn)
            .await
            .unwrap();
        }
        assert_verifies(&broker);
    }
    // A stored time that is not the signed one.
    assert_eq!(
        broker
            .execute_sql(&format!(
                "UPDATE checkpoints SET at_ms = at_ms + 1 WHERE size = {}",
                sizes[1]
            ))
            .await,
        1
    );
    assert_verify_fails(&broker, &[], &format!("checkpoint of size {}", sizes[1]));
}

async fn verify_names_the_first_changed_entry_even_when_rehashed(backend: Backend) {
    let mut broker = started(backend).await;
    publish_all(
        &broker,
        vec![
            payment_about(TEST_PNR),
            payment_about(&other_person()),
            payment_about(TEST_PNR),
        ],
    )
    .await;
    broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;
    let shares = shares(&broker).await;
    assert!(shares.len() >= 3);
    // Two entries changed, leaf hashes and the whole tree recomputed: only
    // the signed checkpoint and the broker's signed records still differ.
    for share in [&shares[2], &shares[1]] {
        let mut forged = share.clone();
        forged.recipient = Some("norrkoping".into());
        broker.rewrite_audit_row(&forged).await;
    }
    broker.rebuild_tree().await;
    assert_verify_fails(
        &broker,
        &[],
        &format!("entry {} differs from the receipt", shares[1].index),
    );
}

async fn rollback_is_found_only_against_kept_checkpoints(backend: Backend) {
    let mut broker = started(backend).await;
    publish_all(&broker, vec![payment_about(TEST_PNR)]).await;
    let kept_before = broker.broker().checkpoint_now().await.unwrap();
    let later = publish_all(&broker, vec![payment_about(&other_person())]).await;
    let size = broker.broker().checkpoint_now().await.unwrap();
    let note = broker
        .broker()
        .store()
        .latest_checkpoint()
        .await
        .unwrap()
        .unwrap()
        .note;
    assert!(size > kept_before);
    broker.stop().await;
    // An agency kept the newest checkpoint.
    let kept = broker.dir.path().join("kept-checkpoint.txt");
    std::fs::write(&kept, &note).unwrap();

    // Roll back: the newest entries, their tree, checkpoints and rows.
    let first_stored = 2 * kept_before - u64::from(kept_before.count_ones());
    for sql in [
        format!("DELETE FROM audit_entries WHERE idx >= {kept_before}"),
        // (The tree is stored as runs of hashes: whole rows after the cut,
        // and the row across it shortened.)
        format!("DELETE FROM tree_hashes WHERE first_idx >= {first_stored}"),
        format!(
            "UPDATE tree_hashes SET hashes = substr(hashes, 1, CAST(32 * ({first_stored} - first_idx) AS INTEGER)) \
             WHERE first_idx < {first_stored} AND first_idx + length(hashes) / 32 > {first_stored}"
        ),
        format!("DELETE FROM checkpoints WHERE size > {kept_before}"),
        format!("DELETE FROM audit_subjects WHERE idx >= {kept_before}"),
        format!("DELETE FROM deliveries WHERE audit_idx >= {kept_before}"),
        format!("DELETE FROM alerts WHERE alert_id = '{}'", later[0]),
        // The overview's day counts, recounted from what is left.
        "DELETE FROM audit_day_counts".to_string(),
        "INSERT INTO audit_day_counts (day, kind, publisher, recipient, legal_basis, n) \
         SELECT (at_ms + 3600000) / 86400000, kind, COALESCE(publisher, ''), COALESCE(recipient, ''), \
         COALESCE(legal_basis, ''), COUNT(*) FROM audit_entries \
         GROUP BY (at_ms + 3600000) / 86400000, kind, COALESCE(publisher, ''), COALESCE(recipient, ''), \
         COALESCE(legal_basis, '')"
            .to_string(),
    ] {
        broker.execute_sql(&sql).await;
    }
    // Without checkpoints kept elsewhere it cannot be seen, and verify says so.
    let said = assert_verifies(&broker);
    assert!(
        said.contains("a rollback (the newest entries removed together with their checkpoints) cannot be detected from the database alone"),
        "{said}"
    );
    // With the agency's checkpoint it is found.
    assert_verify_fails(
        &broker,
        &["--checkpoint", kept.to_str().unwrap()],
        &format!(
            "the log was rolled back: a signed checkpoint covers {size} entries but the log has only {kept_before}"
        ),
    );
}

async fn evidence_in_any_other_form_is_refused(backend: Backend) {
    use samverkan_sdk::audit::evidence::EvidenceBundle;
    let mut broker = started(backend).await;
    publish_all(&broker, vec![payment_about(TEST_PNR)]).await;
    broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;
    let share = shares(&broker).await.remove(0);
    let out = broker.samverkan(&["audit", "prove", &share.index.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let bytes = out.stdout;
    let keys = KeyRegistry::load(&broker.pki().broker_keys()).unwrap();
    check_bundle(&bytes, &keys).unwrap();
    let bundle: EvidenceBundle = serde_json::from_slice(&bytes).unwrap();
    // Written as the writer always did (pretty JSON, members as given), so
    // only the variation itself differs.
    let write = |b: &EvidenceBundle| {
        let mut v = serde_json::to_vec_pretty(b).unwrap();
        v.push(b'\n');
        v
    };
    assert_eq!(write(&bundle), bytes);

    let mut upper = bundle.clone();
    let hash = upper
        .inclusion_proof
        .iter_mut()
        .find(|h| h.chars().any(|c| c.is_ascii_alphabetic()))
        .unwrap();
    *hash = hash.to_ascii_uppercase();
    let mut reordered = bundle.clone();
    reordered.policy_files.reverse();
    assert!(reordered.policy_files.len() > 1);
    let signature_line = bundle.checkpoint.lines().last().unwrap().to_string();
    let mut twice = bundle.clone();
    twice.checkpoint.push_str(&format!("{signature_line}\n"));
    let mut cosigned = bundle.clone();
    cosigned.checkpoint.push_str(&format!(
        "\u{2014} witness.example/w1 {}\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 76])
    ));
    for (what, variant) in [
        ("upper-case hex in the inclusion proof", &upper),
        ("policy files out of order", &reordered),
        ("the broker's signature line twice", &twice),
        ("another signature line", &cosigned),
    ] {
        let changed = write(variant);
        assert_ne!(changed, bytes, "{what}");
        let err = check_bundle(&changed, &keys).expect_err(what);
        assert!(
            err.to_string().contains("malformed evidence bundle"),
            "{what}: {err}"
        );
        let path = broker.dir.path().join("variant.json");
        std::fs::write(&path, &changed).unwrap();
        let out = broker.samverkan(&["audit", "check-proof", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(text(&out).contains("EVIDENCE DOES NOT VERIFY"), "{what}");
    }
}
