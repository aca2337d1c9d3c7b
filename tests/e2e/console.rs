//! The auditor console over real HTTPS: who may open it, who sees which
//! entries (not even a guessed index or permalink reaches another pair's
//! entries), CSRF, CSV escaping, and subject lookups that leave no trace of
//! the identifier in logs or the database.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use samverkan_broker::audit::EntryKind;
use samverkan_e2e::TestBroker;
use samverkan_sdk::messages::ReceiptStatus;

use crate::fixtures::{TEST_ORGNR, inspection_result};

/// The README's walk-through: Polisen → akrimost, skatteverket (shares) and
/// linkoping (denied). Returns the alert id and the three entry indices.
pub(crate) async fn walk_through(broker: &TestBroker) -> (String, u64, u64, u64) {
    let polisen = broker.agency("polisen").await;
    let alert = inspection_result().addressed_to(["akrimost", "skatteverket", "linkoping"]);
    let receipt = polisen
        .publish("akrim/ost/inspection", alert)
        .await
        .unwrap();
    assert_eq!(receipt.status, ReceiptStatus::Accepted);
    let share = |r: &str| {
        receipt
            .shares
            .iter()
            .find(|s| s.recipient == r)
            .map(|s| s.audit_index)
            .unwrap()
    };
    let denial = receipt
        .denials
        .iter()
        .find(|d| d.recipient.as_deref() == Some("linkoping"))
        .map(|d| d.audit_index)
        .unwrap();
    broker.broker().checkpoint_now().await.unwrap();
    (
        receipt.alert_id.clone().unwrap(),
        share("skatteverket"),
        share("akrimost"),
        denial,
    )
}

fn id(pair: &(PathBuf, PathBuf)) -> Option<(&std::path::Path, &std::path::Path)> {
    Some((pair.0.as_path(), pair.1.as_path()))
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field");
    let rest = &html[at + 19..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test]
async fn console_access_is_by_auditor_certificate_and_scoped_to_the_agency() {
    let broker = TestBroker::start().await;
    let (alert_id, skv_share, akrim_share, lkp_denial) = walk_through(&broker).await;

    // No certificate, an agency's MQTT certificate, a foreign key: refused.
    let none = broker.console_get(None, "/search").await;
    assert_eq!(none.status, 403);
    assert!(none.body.contains("no client certificate"), "{}", none.body);
    let pki = broker.pki();
    let mqtt = broker
        .console_get(
            Some((&pki.client_cert("polisen"), &pki.client_key("polisen"))),
            "/search",
        )
        .await;
    assert_eq!(mqtt.status, 403);
    assert!(
        mqtt.body.contains("MQTT client certificate"),
        "{}",
        mqtt.body
    );

    // Skatteverket's auditor sees its own share, and nothing of the pairs
    // Polisen–akrimost or Polisen–linkoping, whichever way it asks.
    let skv = broker.auditor("skatteverket");
    let list = broker
        .console_get(id(&skv), &format!("/search?alert_id={alert_id}"))
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains(&format!("href=\"/entry/{skv_share}\"")));
    assert!(
        !list
            .body
            .contains(&format!("href=\"/entry/{akrim_share}\""))
    );
    assert!(!list.body.contains(&format!("href=\"/entry/{lkp_denial}\"")));
    for other in [akrim_share, lkp_denial] {
        let page = broker
            .console_get(id(&skv), &format!("/entry/{other}"))
            .await;
        assert_eq!(page.status, 404, "entry {other}: {}", page.body);
        let bundle = broker
            .console_get(id(&skv), &format!("/entry/{other}/evidence.json"))
            .await;
        assert_eq!(bundle.status, 404);
    }
    let permalink = broker
        .console_get(id(&skv), &format!("/search?index={akrim_share}"))
        .await;
    assert_eq!(permalink.status, 200);
    assert!(
        !permalink
            .body
            .contains(&format!("href=\"/entry/{akrim_share}\""))
    );
    let case = broker
        .console_get(id(&skv), &format!("/case/{alert_id}"))
        .await;
    assert_eq!(case.status, 200, "{}", case.body);
    assert!(case.body.contains("class=\"recipient\">skatteverket"));
    assert!(!case.body.contains("class=\"recipient\">akrimost"));
    assert!(case.body.contains("uppgiftsskyldighet-akrim"));
    let export = broker
        .console_get(
            id(&skv),
            &format!("/export.jsonl?alert_id={alert_id}&kind=share"),
        )
        .await;
    assert_eq!(export.status, 200);
    let exported: Vec<serde_json::Value> = export
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 1, "{}", export.body);
    assert_eq!(exported[0]["index"], skv_share);

    // Kronofogden's auditor sees nothing of this alert at all.
    let kfm = broker.auditor("kronofogden");
    let case = broker
        .console_get(id(&kfm), &format!("/case/{alert_id}"))
        .await;
    assert_eq!(case.status, 404);

    // Polisen (publisher) and the supervisor see the two shares and the denial.
    for who in [broker.auditor("polisen"), broker.supervisor()] {
        let case = broker
            .console_get(id(&who), &format!("/case/{alert_id}"))
            .await;
        assert_eq!(case.status, 200, "{}", case.body);
        for entry in [skv_share, akrim_share, lkp_denial] {
            assert!(case.body.contains(&format!("href=\"/entry/{entry}\"")));
        }
        assert!(case.body.contains("no_rule_for_recipient"));
        // akrimost got five fields: case_reference withheld.
        assert!(case.body.contains("case_reference"));
        let bundle = broker
            .console_get(id(&who), &format!("/entry/{akrim_share}/evidence.json"))
            .await;
        assert_eq!(bundle.status, 200);
        assert!(
            bundle
                .body
                .starts_with("{\n  \"format\": \"samverkan-evidence/v1\"")
        );
    }

    // Every view above is an auditor_access entry naming who and what.
    let store = broker.broker().store();
    let (_, next) = store.audit_extent().await.unwrap();
    let accesses: Vec<_> = store
        .audit_range(0, next)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::AuditorAccess)
        .collect();
    assert!(
        accesses
            .iter()
            .any(|e| e.recipient.as_deref() == Some("skatteverket")
                && e.reason_code.as_deref() == Some("search"))
    );
    assert!(
        accesses
            .iter()
            .any(|e| e.recipient.as_deref() == Some("tillsyn")
                && e.reason_code.as_deref() == Some("case")
                && e.alert_id.as_deref() == Some(alert_id.as_str()))
    );
    assert!(
        accesses
            .iter()
            .any(|e| e.reason_code.as_deref() == Some("evidence"))
    );
    assert!(
        accesses
            .iter()
            .any(|e| e.reason_code.as_deref() == Some("export"))
    );
    // The log with its new kind still verifies.
    let out = broker.samverkan(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn auditor_certificates_do_not_open_mqtt() {
    let broker = TestBroker::start().await;
    let (cert, key) = broker.auditor("polisen");
    let mut config = broker.agency_config("polisen");
    config.client_cert_pem = std::fs::read(cert).unwrap();
    config.client_key_pem = std::fs::read(key).unwrap();
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        samverkan_sdk::client::Client::connect(config),
    )
    .await;
    assert!(
        !matches!(connected, Ok(Ok(_))),
        "an auditor certificate opened an MQTT session"
    );
}

/// Collects every log line of this test process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn subject_search_needs_csrf_and_leaves_no_trace_of_the_identifier() {
    let captured = Captured::default();
    let writer = captured.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .try_init();
    let broker = TestBroker::start().await;
    let (_, skv_share, _, _) = walk_through(&broker).await;
    let polisen = broker.auditor("polisen");
    let form = broker.console_get(id(&polisen), "/subject").await;
    assert_eq!(form.status, 200);
    let token = csrf_of(&form.body);
    let post = |body: String, headers: Vec<(&'static str, &'static str)>| {
        let polisen = polisen.clone();
        let broker = &broker;
        async move {
            let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
            h.extend(headers);
            broker
                .console_request(id(&polisen), "POST", "/subject", &h, &body)
                .await
        }
    };
    let digits = TEST_ORGNR.replace('-', "");
    // Without the token, with a wrong one, or from another site: refused.
    let no_token = post(format!("identifier={digits}"), vec![]).await;
    assert_eq!(no_token.status, 403);
    let wrong = post(format!("csrf=00&identifier={digits}"), vec![]).await;
    assert_eq!(wrong.status, 403);
    let foreign = post(
        format!("csrf={token}&identifier={digits}"),
        vec![("Sec-Fetch-Site", "cross-site")],
    )
    .await;
    assert_eq!(foreign.status, 403);
    // A wrong check digit is named as such.
    let bad = post(format!("csrf={token}&identifier=5566778898"), vec![]).await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(
        bad.body.to_lowercase().contains("check digit"),
        "{}",
        bad.body
    );
    // With the token: every share about the company.
    let found = post(format!("csrf={token}&identifier={digits}"), vec![]).await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert!(found.body.contains(&format!("href=\"/entry/{skv_share}\"")));
    assert!(
        found.body.contains("id=\"subject-summary\">2 "),
        "{}",
        found.body
    );
    assert!(!found.body.contains(&digits) && !found.body.contains(TEST_ORGNR));

    // The identifier is in no log line and no column of the log; the
    // lookup is an entry carrying only the keyed hash.
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("console request"),
        "the request log is captured"
    );
    assert!(!logs.contains(&digits) && !logs.contains(TEST_ORGNR));
    let store = broker.broker().store();
    let (_, size) = store.audit_extent().await.unwrap();
    let entries = store.audit_range(0, size).await.unwrap();
    let lookup = entries
        .iter()
        .find(|e| e.kind == EntryKind::AuditorAccess && e.reason_code.as_deref() == Some("subject"))
        .expect("the lookup is recorded");
    assert_eq!(lookup.subject_hashes.len(), 1);
    let share = entries.iter().find(|e| e.index == skv_share).unwrap();
    assert_eq!(share.subject_hashes, lookup.subject_hashes);
    let dump = serde_json::to_string(&entries).unwrap();
    assert!(!dump.contains(&digits) && !dump.contains(TEST_ORGNR));
}

#[tokio::test]
async fn csv_export_neutralises_formulas() {
    let broker = TestBroker::start().await;
    walk_through(&broker).await;
    // A row whose text a spreadsheet would run (written directly, far past
    // the log's end so the broker's own appends do not meet it).
    broker
        .execute_sql(
            "INSERT INTO audit_entries (idx, kind, at_ms, publisher, recipient, fields, reason_code, reason, subject_hashes, leaf_hash) \
             VALUES (900000, 'rejection', 1, 'polisen', '@polisen', '[]', '+cmd', '=HYPERLINK(\"http://x\")', '[]', X'00')",
        )
        .await;
    let polisen = broker.auditor("polisen");
    let csv = broker
        .console_get(id(&polisen), "/export.csv?kind=rejection")
        .await;
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let row = csv
        .body
        .lines()
        .find(|l| l.starts_with("900000,"))
        .expect("the row");
    assert!(row.contains("'@polisen"), "{row}");
    assert!(row.contains("'+cmd"), "{row}");
    assert!(row.contains("\"'=HYPERLINK(\"\"http://x\"\")\""), "{row}");
    assert!(!row.contains(",=") && !row.contains(",+") && !row.contains(",@"));
}
