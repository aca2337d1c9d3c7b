//! Changing things while the broker runs: policy reloads, signing-key
//! rotation and revocation, TLS certificate revocation, connection limits,
//! broker key rotation — and the database going away.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use samverkan_broker::audit::EntryKind;
use samverkan_broker::pki::{self, DevPkiLayout};
use samverkan_e2e::{
    Backend, POSTGRES_ENV, TcpProxy, TestBroker, admin_request, postgres_address, prepare_dir,
};
use samverkan_sdk::client::Client;
use samverkan_sdk::keys::{self, AgencyKey, KeyRegistry};
use samverkan_sdk::messages::ReceiptStatus;
use samverkan_sdk::{Envelope, PublishError};

use crate::fixtures::{incorrect_payment, inspection_result, next_share};
use crate::raw::connect;

const TOPIC: &str = "welfare/incorrect-payment/ost";

/// A broker on PostgreSQL reached through a proxy the test can cut.
async fn behind_proxy() -> (TestBroker, TcpProxy) {
    let server =
        std::env::var(POSTGRES_ENV).unwrap_or_else(|_| panic!("{POSTGRES_ENV} must be set"));
    let pg = postgres_address(&server);
    let proxy = TcpProxy::start(pg).await;
    let proxy_addr = proxy.addr.to_string();
    let broker = TestBroker::start_with(Backend::Postgres, prepare_dir(), |c| {
        c.store_url = c.store_url.replace(&pg.to_string(), &proxy_addr);
    })
    .await;
    (broker, proxy)
}

/// Whether the broker ends a raw connection within five seconds.
async fn ends_within_5s(events: &mut rumqttc::EventLoop) -> bool {
    let ended = async { while events.poll().await.is_ok() {} };
    tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .is_ok()
}

/// Removes `agency` from a copy of the policy set: its entry, its keys and
/// its places in the rules.
fn without_agency(policies: &std::path::Path, agency: &str) {
    for file in ["agencies.toml", "keys.toml"] {
        let path = policies.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let blocks: Vec<&str> = text
            .split("\n\n")
            .filter(|block| {
                !block.contains(&format!("id = \"{agency}\""))
                    && !block.contains(&format!("owner = \"{agency}\""))
            })
            .collect();
        assert!(blocks.len() < text.split("\n\n").count(), "{file}");
        std::fs::write(&path, blocks.join("\n\n")).unwrap();
    }
    for file in ["rules/akrim.toml", "rules/welfare.toml"] {
        let path = policies.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&format!("\"{agency}\", "), "")
            .replace(&format!(", \"{agency}\""), "");
        std::fs::write(&path, text).unwrap();
    }
}

fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[tokio::test]
async fn a_valid_policy_change_takes_effect_and_is_audited_an_invalid_one_is_refused() {
    let broker = TestBroker::start().await;
    let polisen = broker.agency("polisen").await;
    let admin = broker.broker().admin_addr().unwrap();
    let before = broker.broker().policy().current().version().to_string();

    // Today Linköping may not receive inspection results.
    let alert = || inspection_result().addressed_to(["linkoping"]);
    let r = polisen
        .publish("akrim/ost/inspection", alert())
        .await
        .unwrap();
    assert!(r.shares.is_empty());

    // A broken policy is refused with file and line, and the old one keeps working.
    let rules = broker.policies().join("rules/akrim.toml");
    let good = std::fs::read_to_string(&rules).unwrap();
    edit(
        &rules,
        "legal_basis = \"uppgiftsskyldighet-akrim\"",
        "legal_basis = \"no-such-law\"",
    );
    let (status, body) = admin_request(admin, "POST", "/admin/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("akrim.toml:") && body.contains("unknown legal basis `no-such-law`"),
        "{body}"
    );
    assert_eq!(broker.broker().policy().current().version(), before);
    let r = polisen
        .publish("akrim/ost/inspection", inspection_result())
        .await
        .unwrap();
    assert_eq!(r.status, ReceiptStatus::Accepted);
    assert!(!r.shares.is_empty());

    // A valid change: Linköping is added to the inspection results rule.
    std::fs::write(&rules, &good).unwrap();
    edit(
        &rules,
        "recipients = [\"polisen\", \"skatteverket\", \"forsakringskassan\"]\ntopics = [\"akrim/#\"]\nalert_types = [\"akrim.inspection_result\"]",
        "recipients = [\"polisen\", \"skatteverket\", \"forsakringskassan\", \"linkoping\"]\ntopics = [\"akrim/#\"]\nalert_types = [\"akrim.inspection_result\"]",
    );
    let report = broker.broker().reload().await;
    assert!(report.ok(), "{report:?}");
    let after = broker.broker().policy().current().version().to_string();
    assert_ne!(after, before);
    let r = polisen
        .publish("akrim/ost/inspection", alert())
        .await
        .unwrap();
    assert_eq!(r.shares.len(), 1);
    assert_eq!(r.shares[0].recipient, "linkoping");
    assert_eq!(r.policy_version, after);

    // The reload is in the audit log, and the new text is archived.
    let entries = broker.broker().store().audit_range(0, 1000).await.unwrap();
    let loads: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::PolicyLoaded)
        .collect();
    assert_eq!(loads.len(), 2, "{loads:?}");
    assert_eq!(loads[1].policy_version.as_deref(), Some(after.as_str()));
    assert!(
        broker
            .broker()
            .store()
            .policy_files(&after)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn signing_keys_rotate_without_downtime_and_revocation_cuts_them_off() {
    let broker = TestBroker::start().await;
    let fk_old = broker.agency("forsakringskassan").await;
    let ok = fk_old
        .publish(TOPIC, incorrect_payment("0580"))
        .await
        .unwrap();
    assert_eq!(ok.status, ReceiptStatus::Accepted);

    // Rotation: a second key is added; both work.
    let new_key = SigningKey::from_bytes(&[77; 32]);
    let keys_file = broker.policies().join("keys.toml");
    let mut registry = KeyRegistry::load(&keys_file).unwrap();
    registry.insert(AgencyKey {
        owner: "forsakringskassan".into(),
        key_id: "forsakringskassan-2027".into(),
        public_key: new_key.verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    std::fs::write(&keys_file, registry.to_toml("test")).unwrap();
    assert!(broker.broker().reload().await.ok());
    let mut config = broker.agency_config("forsakringskassan");
    config.agency_keys = registry.clone();
    config.signing_key = new_key;
    config.signing_key_id = "forsakringskassan-2027".into();
    let fk_new = Client::connect(config).await.unwrap();
    assert_eq!(
        fk_new
            .publish(TOPIC, incorrect_payment("0580"))
            .await
            .unwrap()
            .status,
        ReceiptStatus::Accepted
    );
    assert_eq!(
        fk_old
            .publish(TOPIC, incorrect_payment("0580"))
            .await
            .unwrap()
            .status,
        ReceiptStatus::Accepted
    );

    // Revocation of the old key: refused from its revocation time on, and audited.
    let now = samverkan_sdk::time::now_ms();
    let mut revoked = registry.clone();
    let mut old = registry
        .keys_of("forsakringskassan")
        .find(|k| k.key_id == DevPkiLayout::signing_key_id("forsakringskassan"))
        .unwrap()
        .clone();
    old.revoked_at_ms = Some(now);
    old.revocation_reason = Some("key leaked".into());
    revoked.insert(old);
    std::fs::write(&keys_file, revoked.to_toml("test")).unwrap();
    assert!(broker.broker().reload().await.ok());
    match fk_old.publish(TOPIC, incorrect_payment("0580")).await {
        Err(PublishError::Rejected(r)) => {
            let rejection = r.rejection.unwrap();
            assert_eq!(rejection.code, "key_revoked");
            assert!(
                rejection.message.contains("key leaked"),
                "{}",
                rejection.message
            );
        }
        other => panic!("a revoked key was accepted: {other:?}"),
    }
    // An alert signed just before the revocation, arriving after it, is refused too.
    let mut header = fk_old
        .sign(TOPIC, &incorrect_payment("0580"))
        .unwrap()
        .header;
    header.issued_at_ms = now - 1000;
    let key = keys::read_signing_key(&broker.pki().signing_key("forsakringskassan")).unwrap();
    let early = Envelope::sign(header, &incorrect_payment("0580").fields, &key).unwrap();
    assert!(matches!(
        fk_old.publish_envelope(early).await,
        Err(PublishError::Rejected(_))
    ));
    // The new key keeps working.
    assert_eq!(
        fk_new
            .publish(TOPIC, incorrect_payment("0580"))
            .await
            .unwrap()
            .status,
        ReceiptStatus::Accepted
    );
    let entries = broker.broker().store().audit_range(0, 1000).await.unwrap();
    let revocation = entries
        .iter()
        .find(|e| e.kind == EntryKind::KeyRevoked)
        .expect("a key_revoked entry");
    assert_eq!(revocation.publisher.as_deref(), Some("forsakringskassan"));
    assert!(
        revocation
            .reason
            .as_deref()
            .unwrap()
            .contains("forsakringskassan-dev-1")
    );
}

#[tokio::test]
async fn a_revoked_tls_certificate_is_cut_off_without_a_restart() {
    let broker = TestBroker::start().await;
    let linkoping = broker.agency("linkoping").await;
    let inbox = linkoping.subscribe("welfare/#").await.unwrap();
    let (_raw, mut raw_events) =
        connect(broker.raw_options("lkp-raw", broker.agency_tls("linkoping")))
            .await
            .unwrap();
    let norrkoping = broker.agency("norrkoping").await;

    pki::revoke_dev(&broker.pki().dir, &broker.pki().client_cert("linkoping")).unwrap();

    // The live connection is closed within the CRL check interval…
    assert!(
        ends_within_5s(&mut raw_events).await,
        "the revoked certificate's connection stayed open"
    );
    // …and it can no longer connect.
    let refused = connect(broker.raw_options("lkp-again", broker.agency_tls("linkoping"))).await;
    assert!(refused.is_err());

    // Other agencies are unaffected.
    let fk = broker.agency("forsakringskassan").await;
    let r = fk.publish(TOPIC, incorrect_payment("0581")).await.unwrap();
    assert_eq!(r.shares[0].recipient, "norrkoping");
    let mut nkp = norrkoping.subscribe("welfare/#").await.unwrap();
    next_share(&mut nkp).await;
    drop(inbox);
}

#[tokio::test]
async fn connection_limits_per_address_and_per_agency() {
    let dir = prepare_dir();
    let broker = TestBroker::start_in(dir, |c| {
        c.max_connections_per_agency = 2;
        c.connection_attempts_per_minute = std::num::NonZeroU32::new(8).unwrap();
    })
    .await;
    let tls = broker.agency_tls("polisen");
    let first = connect(broker.raw_options("p1", tls.clone()))
        .await
        .unwrap();
    let second = connect(broker.raw_options("p2", tls.clone()))
        .await
        .unwrap();
    assert!(
        connect(broker.raw_options("p3", tls.clone()))
            .await
            .is_err(),
        "a third connection was accepted"
    );
    // Another agency still connects.
    let skv = connect(broker.raw_options("s1", broker.agency_tls("skatteverket"))).await;
    assert!(skv.is_ok());
    drop((first, second, skv));
    // Attempts from one address beyond the limit are refused before TLS.
    let mut refused = 0;
    for i in 0..12 {
        if connect(broker.raw_options(&format!("a{i}"), broker.agency_tls("kronofogden")))
            .await
            .is_err()
        {
            refused += 1;
        }
    }
    assert!(refused >= 6, "only {refused} attempts were refused");
}

#[tokio::test]
async fn the_broker_key_rotates_and_old_stamps_still_verify() {
    let mut broker = TestBroker::start().await;
    let fk = broker.agency("forsakringskassan").await;
    let r = fk.publish(TOPIC, incorrect_payment("0580")).await.unwrap();
    assert_eq!(r.shares.len(), 1);
    broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;

    // A new broker key; the old one stays in the registry, valid until now.
    let pki = broker.pki();
    let new_key = SigningKey::from_bytes(&[88; 32]);
    std::fs::write(
        pki.dir.join("broker-signing-2.key"),
        keys::signing_key_pem(&new_key).unwrap(),
    )
    .unwrap();
    let mut broker_keys = KeyRegistry::load(&pki.broker_keys()).unwrap();
    let mut old = broker_keys.iter().next().unwrap().clone();
    old.not_after_ms = Some(samverkan_sdk::time::now_ms());
    broker_keys.insert(old);
    broker_keys.insert(AgencyKey {
        owner: "broker".into(),
        key_id: "broker-2".into(),
        public_key: new_key.verifying_key(),
        not_before_ms: Some(samverkan_sdk::time::now_ms() - 1000),
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    std::fs::write(pki.broker_keys(), broker_keys.to_toml("broker keys")).unwrap();
    broker.config.signing_key = pki.dir.join("broker-signing-2.key");
    broker.config.signing_key_id = "broker-2".into();
    tokio::time::sleep(Duration::from_millis(5)).await;
    broker.restart().await;

    // The share signed under the old key is replayed and still verifies.
    let linkoping = broker.agency("linkoping").await;
    let mut inbox = linkoping.subscribe("welfare/#").await.unwrap();
    let old_share = next_share(&mut inbox).await;
    assert_eq!(old_share.share_id(), r.shares[0].share_id);
    old_share.ack().await.unwrap();
    // New receipts and stamps are signed with the new key.
    let fk = broker.agency("forsakringskassan").await;
    let r2 = fk.publish(TOPIC, incorrect_payment("0580")).await.unwrap();
    assert_eq!(r2.status, ReceiptStatus::Accepted);
    next_share(&mut inbox).await.ack().await.unwrap();
    broker.broker().checkpoint_now().await.unwrap();
    broker.stop().await;
    // Old and new checkpoints all verify.
    let out = broker.samverkan(&["audit", "verify", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn no_receipt_while_the_database_is_down_and_nothing_lost_after() {
    let (broker, proxy) = behind_proxy().await;
    let admin = broker.broker().admin_addr().unwrap();
    let linkoping = broker.agency("linkoping").await;
    let mut inbox = linkoping.subscribe("welfare/#").await.unwrap();
    let mut config = broker.agency_config("forsakringskassan");
    config.receipt_timeout = Duration::from_millis(500);
    config.publish_deadline = Duration::from_secs(3);
    let fk = Client::connect(config).await.unwrap();
    assert_eq!(
        fk.publish(TOPIC, incorrect_payment("0580"))
            .await
            .unwrap()
            .status,
        ReceiptStatus::Accepted
    );
    next_share(&mut inbox).await.ack().await.unwrap();

    proxy.down();
    // No receipt while the database is down…
    let envelope = fk.sign(TOPIC, &incorrect_payment("0580")).unwrap();
    let during = fk.publish_envelope(envelope.clone()).await;
    assert!(
        matches!(during, Err(PublishError::Timeout { .. })),
        "{during:?}"
    );
    // …the health endpoint says so, and clients stay connected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = admin_request(admin, "GET", "/health").await;
        if status == 503 {
            assert!(body.contains("\"database\":\"down\""), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never reported the outage: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fk.is_connected());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.next())
            .await
            .is_err(),
        "a share was delivered while the database was down"
    );

    // Back: the publisher's resend is accepted and delivered exactly once.
    proxy.up();
    let mut patient = broker.agency_config("forsakringskassan");
    patient.receipt_timeout = Duration::from_millis(500);
    let fk2 = Client::connect(patient).await.unwrap();
    let receipt = fk2.publish_envelope(envelope).await.unwrap();
    assert_eq!(receipt.status, ReceiptStatus::Accepted);
    let share = next_share(&mut inbox).await;
    assert_eq!(share.share_id(), receipt.shares[0].share_id);
    share.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.next())
            .await
            .is_err()
    );
    // The health endpoint reports the recovery (it pings once a second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while admin_request(admin, "GET", "/health").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never reported the recovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = admin_request(admin, "GET", "/metrics").await;
    assert!(
        metrics.contains("samverkan_alerts_accepted_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_policy_reloaded_while_the_database_is_down_is_in_force_and_audited_once_it_is_back() {
    let (broker, proxy) = behind_proxy().await;
    let polisen = broker.agency("polisen").await;
    let before = broker.broker().policy().current().version().to_string();
    let (_raw, mut norrkoping) =
        connect(broker.raw_options("nkp-raw", broker.agency_tls("norrkoping")))
            .await
            .unwrap();

    proxy.down();
    // The new policy lets Linköping receive inspection results, and has no
    // Norrköping any more.
    without_agency(&broker.policies(), "norrkoping");
    let rules = broker.policies().join("rules/akrim.toml");
    edit(
        &rules,
        "recipients = [\"polisen\", \"skatteverket\", \"forsakringskassan\"]\ntopics = [\"akrim/#\"]\nalert_types = [\"akrim.inspection_result\"]",
        "recipients = [\"polisen\", \"skatteverket\", \"forsakringskassan\", \"linkoping\"]\ntopics = [\"akrim/#\"]\nalert_types = [\"akrim.inspection_result\"]",
    );
    let report = broker.broker().reload().await;
    // Not a refusal: the new policy is in force, only its record waits.
    assert!(!report.policy.ok, "{report:?}");
    assert!(
        report
            .policy
            .message
            .contains("the new policy is in force but could not be recorded yet"),
        "{report:?}"
    );
    let after = broker.broker().policy().current().version().to_string();
    assert_ne!(after, before);
    // In force means Norrköping's live connection ends now.
    assert!(
        ends_within_5s(&mut norrkoping).await,
        "a removed agency stayed connected because the database was down"
    );

    // Back: the first alert is decided by the new policy, and its load is
    // in the log before that alert's entries.
    proxy.up();
    let r = polisen
        .publish(
            "akrim/ost/inspection",
            inspection_result().addressed_to(["linkoping"]),
        )
        .await
        .unwrap();
    assert_eq!(r.policy_version, after);
    assert_eq!(r.shares.len(), 1);
    let entries = broker.broker().store().audit_range(0, 1000).await.unwrap();
    let load = entries
        .iter()
        .position(|e| {
            e.kind == EntryKind::PolicyLoaded && e.policy_version.as_deref() == Some(&after)
        })
        .expect("the new policy's load is audited");
    let share = entries
        .iter()
        .position(|e| e.kind == EntryKind::Share && e.recipient.as_deref() == Some("linkoping"))
        .expect("the share is audited");
    assert!(load < share, "{entries:?}");
}
