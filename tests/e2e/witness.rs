//! Witnessed checkpoints with real processes: a `samverkan serve` broker and
//! `samverkan-client witness` processes over mutual TLS, each with its own
//! state file. Every wait is bounded; nothing here measures time.

use std::time::Duration;

use samverkan_e2e::{BrokerProcess, WitnessProcess, write_witnesses};
use samverkan_sdk::audit::checkpoint::verify_checkpoint;
use samverkan_sdk::client::Client;
use samverkan_sdk::keys::KeyRegistry;
use serde_json::Value;

use crate::fixtures::incorrect_payment;

/// Waits (at most 60 s) until `check` holds for the broker's health report.
async fn wait_health(broker: &BrokerProcess, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let health = broker.health().await;
        if check(&health) {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: not reached; health {}\n{}",
        broker.health().await,
        broker.log_text()
    );
}

fn witnessing(health: &Value) -> &Value {
    &health["witnessing"]
}

/// The newest checkpoint has reached the quorum, and `agencies` cosigned it.
fn at_quorum(health: &Value, agencies: &[&str]) -> bool {
    let w = witnessing(health);
    let newest = &w["newest_checkpoint"];
    !newest.is_null()
        && w["newest_quorum"] == *newest
        && agencies.iter().all(|a| {
            w["witnesses"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["agency"] == *a && r["cosigned_size"] == *newest)
            })
        })
}

/// A broker whose policy names a witness for each of `agencies`, with
/// `threshold` of them as the quorum; the witnesses' states are made, not started.
fn witnessed(agencies: &[&str], threshold: &str) -> (BrokerProcess, Vec<WitnessProcess>) {
    let broker = BrokerProcess::new();
    let mut witnesses = Vec::new();
    let mut entries = Vec::new();
    for agency in agencies {
        let (w, entry) = WitnessProcess::init(broker.path(), agency);
        witnesses.push(w);
        entries.push(entry);
    }
    write_witnesses(&broker.path().join("policies"), &entries, threshold);
    (broker, witnesses)
}

/// Publishes `n` alerts as Försäkringskassan; returns the share entries' indices.
async fn publish(broker: &BrokerProcess, n: usize) -> Vec<u64> {
    let client = Client::connect(broker.agency_config("forsakringskassan"))
        .await
        .unwrap();
    let mut indices = Vec::new();
    for _ in 0..n {
        let receipt = client
            .publish("welfare/incorrect-payment/ost", incorrect_payment("0580"))
            .await
            .unwrap();
        indices.extend(receipt.shares.iter().map(|s| s.audit_index));
    }
    client.close().await;
    assert!(!indices.is_empty(), "the alerts were shared");
    indices
}

fn broker_keys(broker: &BrokerProcess) -> KeyRegistry {
    let path = broker.path().join("certs-dev/broker-keys.toml");
    KeyRegistry::from_toml(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

/// `audit prove` until it succeeds (at most 5 s: cosignatures are stored
/// just after the checkpoint reached the quorum).
async fn prove_ok(broker: &BrokerProcess, index: u64) -> std::path::PathBuf {
    let mut last = None;
    for _ in 0..50 {
        let (output, bundle) = prove(broker, index);
        if output.status.success() {
            return bundle;
        }
        last = Some(output);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "audit prove {index} failed: {:?}",
        last.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
}

fn prove(broker: &BrokerProcess, index: u64) -> (std::process::Output, std::path::PathBuf) {
    let out = broker.path().join(format!("evidence-{index}.json"));
    let output = broker.samverkan(&[
        "audit",
        "prove",
        &index.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    (output, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_checkpoint_reaches_the_quorum_and_evidence_carries_the_cosignatures() {
    let (mut broker, mut witnesses) = witnessed(&["polisen", "skatteverket", "kronofogden"], "2");
    broker.start().await;
    for w in &mut witnesses {
        w.start(&broker);
    }
    // A linkoping system keeps the cosigned checkpoints the broker publishes.
    let mut options = rumqttc::MqttOptions::new("linkoping-keeper", "localhost", broker.port);
    let config = broker.agency_config("linkoping");
    let tls = samverkan_e2e::tls_client(
        &config.ca_pem,
        &config.client_cert_pem,
        &config.client_key_pem,
    );
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    let (keeper, mut events) = rumqttc::AsyncClient::new(options, 16);
    keeper
        .subscribe(
            samverkan_sdk::topics::cosigned_checkpoint("linkoping"),
            rumqttc::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let (kept_tx, mut kept) = tokio::sync::mpsc::unbounded_channel();
    let keeper_task = tokio::spawn(async move {
        for _ in 0..100_000 {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    let _ = kept_tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });

    let indices = publish(&broker, 5).await;
    let all = ["polisen", "skatteverket", "kronofogden"];
    let health = wait_health(&broker, "all three cosign the newest checkpoint", |h| {
        at_quorum(h, &all)
    })
    .await;
    assert_eq!(health["status"], "ok", "{health}");

    // The checkpoint published to the agencies carries the cosignatures.
    let policy = samverkan_sdk::audit::evidence::witness_policy_of(&[
        samverkan_sdk::audit::evidence::PolicyFile {
            path: "witnesses.toml".into(),
            text: std::fs::read_to_string(broker.path().join("policies/witnesses.toml")).unwrap(),
        },
    ])
    .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(30), kept.recv())
        .await
        .expect("a cosigned checkpoint is published")
        .unwrap();
    verify_checkpoint(&note, &broker_keys(&broker)).unwrap();
    let cosignatures =
        samverkan_sdk::audit::cosignature::verify_cosignatures(&note, &policy.keys()).unwrap();
    assert!(cosignatures.len() >= 2, "{note}");
    keeper_task.abort();

    // Evidence for a share made afterwards checks with the cosignatures.
    let index = *indices.last().unwrap();
    let bundle = prove_ok(&broker, index).await;
    let bytes = std::fs::read(&bundle).unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("samverkan-evidence/v2"));
    let report =
        samverkan_sdk::audit::evidence::check_bundle(&bytes, &broker_keys(&broker)).unwrap();
    assert!(report.cosigners.len() >= 2, "{:?}", report.cosigners);
    assert_eq!(report.quorum, "agencies");
    let check = broker.samverkan(&["audit", "check-proof", bundle.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("quorum `agencies` met"), "{text}");

    // A bundle left with fewer cosignatures than the quorum does not check,
    // nor does one with an edited cosignature.
    let mut parsed: samverkan_sdk::audit::evidence::EvidenceBundle =
        serde_json::from_slice(&bytes).unwrap();
    let (text, lines) = samverkan_sdk::audit::cosignature::split_note(&parsed.checkpoint).unwrap();
    assert!(
        lines.len() >= 3,
        "the broker's line and at least two cosignatures"
    );
    let full = parsed.checkpoint.clone();
    parsed.checkpoint = samverkan_sdk::audit::cosignature::join_note(&text, &lines[..2]);
    let error = samverkan_sdk::audit::evidence::check_bundle(
        &parsed.to_canonical_json(),
        &broker_keys(&broker),
    )
    .unwrap_err();
    assert!(error.to_string().contains("quorum"), "{error}");
    let last = lines.last().unwrap();
    let middle = last.len() - 40;
    let mut flipped = last.clone();
    flipped.replace_range(
        middle..middle + 1,
        if &last[middle..middle + 1] == "A" {
            "B"
        } else {
            "A"
        },
    );
    parsed.checkpoint = full.replace(last.as_str(), &flipped);
    assert!(
        samverkan_sdk::audit::evidence::check_bundle(
            &parsed.to_canonical_json(),
            &broker_keys(&broker)
        )
        .is_err()
    );
    drop(cosignatures);

    // audit verify checks every stored cosignature and reports the quorum.
    let verify = broker.samverkan(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(text.contains("reached the quorum `agencies`"), "{text}");
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("samverkan_witness_cosignatures_total{witness=\"polisen\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("samverkan_witness_quorum_age_seconds"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_witness_catches_up_and_the_quorum_returns() {
    let (mut broker, mut witnesses) = witnessed(&["polisen", "skatteverket"], "\"all\"");
    broker.start().await;
    for w in &mut witnesses {
        w.start(&broker);
    }
    publish(&broker, 2).await;
    wait_health(&broker, "both cosign", |h| {
        at_quorum(h, &["polisen", "skatteverket"])
    })
    .await;

    // Skatteverket's witness goes away; sharing goes on without a quorum.
    witnesses[1].kill();
    let indices = publish(&broker, 4).await;
    let health = wait_health(&broker, "health shows the missing cosignatures", |h| {
        h["status"] == "degraded"
    })
    .await;
    assert_eq!(health["ok"], true, "sharing goes on: {health}");
    let problems = witnessing(&health)["problems"].to_string();
    assert!(problems.contains("skatteverket"), "{health}");
    let newest = witnessing(&health)["newest_checkpoint"].as_u64().unwrap();
    assert!(
        witnessing(&health)["newest_quorum"].as_u64().unwrap_or(0) < newest,
        "{health}"
    );
    let metrics = broker.metrics().await;
    let lag = metrics
        .lines()
        .find(|l| l.starts_with("samverkan_witness_lag_entries{witness=\"skatteverket\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!lag.ends_with(" 0"), "{lag}");
    // No evidence for the new shares reaches the quorum meanwhile.
    let (output, _) = prove(&broker, *indices.last().unwrap());
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("witness quorum"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Back again: it catches up by one consistency proof, the quorum returns.
    witnesses[1].start(&broker);
    let health = wait_health(&broker, "health is ok again", |h| {
        h["status"] == "ok" && at_quorum(h, &["polisen", "skatteverket"])
    })
    .await;
    assert!(witnessing(&health)["problems"].is_null(), "{health}");
    let bundle = prove_ok(&broker, *indices.last().unwrap()).await;
    let report = samverkan_sdk::audit::evidence::check_bundle(
        &std::fs::read(bundle).unwrap(),
        &broker_keys(&broker),
    )
    .unwrap();
    assert_eq!(report.cosigners, ["polisen", "skatteverket"]);
    let log = witnesses[1].log_text();
    assert!(!log.contains("refused to cosign"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_log_is_refused_by_every_witness() {
    let (mut broker, mut witnesses) = witnessed(&["polisen", "skatteverket"], "\"all\"");
    broker.start().await;
    for w in &mut witnesses {
        w.start(&broker);
    }
    let indices = publish(&broker, 6).await;
    let size = indices.iter().max().unwrap() + 1;
    // A checkpoint of the log before these alerts may already be at the
    // quorum: wait for one that covers them all.
    let health = wait_health(&broker, "both cosign the alerts", |h| {
        at_quorum(h, &["polisen", "skatteverket"])
            && witnessing(h)["newest_quorum"].as_u64() >= Some(size)
    })
    .await;
    let cosigned = witnessing(&health)["newest_quorum"].as_u64().unwrap();

    // The operator stops the broker and removes the newest entries, their
    // tree hashes, checkpoints and cosignatures, as if they never were.
    assert!(
        broker
            .signal_and_wait("TERM", Duration::from_secs(20))
            .is_some()
    );
    let keep = cosigned - 4;
    let first_removed_hash = tlog_tiles::tlog::stored_hash_index(0, keep);
    let sql = [
        format!("DELETE FROM audit_entries WHERE idx >= {keep}"),
        // The tree is stored as runs of hashes: whole rows after the cut,
        // and the row across it shortened.
        format!("DELETE FROM tree_hashes WHERE first_idx >= {first_removed_hash}"),
        format!(
            "UPDATE tree_hashes SET hashes = substr(hashes, 1, CAST(32 * ({first_removed_hash} - first_idx) AS INTEGER)) \
             WHERE first_idx < {first_removed_hash} AND first_idx + length(hashes) / 32 > {first_removed_hash}"
        ),
        format!("DELETE FROM checkpoints WHERE size > {keep}"),
        format!("DELETE FROM cosignatures WHERE size > {keep}"),
        format!("DELETE FROM deliveries WHERE audit_idx >= {keep}"),
        format!("DELETE FROM audit_subjects WHERE idx >= {keep}"),
    ];
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&broker.store_url)
            .await
            .unwrap();
        for statement in &sql {
            let _ = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut conn)
                .await;
        }
    }
    broker.start().await;
    let indices = publish(&broker, 8).await;

    // Every witness refuses, keeps the broker-signed notes, and health shows it.
    let health = wait_health(&broker, "both witnesses report a conflict", |h| {
        witnessing(h)["witnesses"]
            .as_array()
            .is_some_and(|rows| rows.iter().all(|r| !r["conflict"].is_null()))
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(witnessing(&health)["newest_quorum"].is_null(), "{health}");
    for w in &witnesses {
        let (code, conflicts) = w.evidence(broker.path());
        assert_eq!(code, 1, "{}: {conflicts:?}", w.agency);
        assert!(!conflicts.is_empty());
        let keys = broker_keys(&broker);
        for c in &conflicts {
            let held = verify_checkpoint(c["held"].as_str().unwrap(), &keys).unwrap();
            let offered = verify_checkpoint(c["offered"].as_str().unwrap(), &keys).unwrap();
            assert_ne!((held.size, held.root), (offered.size, offered.root));
            assert!(
                ["rollback", "inconsistent", "split_view"].contains(&c["kind"].as_str().unwrap())
            );
        }
        assert!(w.log_text().contains("evidence kept") || w.log_text().contains("not consistent"));
    }
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("samverkan_witness_refusals_total{witness=\"polisen\""),
        "{metrics}"
    );
    // No bundle for the rewritten entries reaches the quorum.
    let (output, _) = prove(&broker, *indices.last().unwrap());
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("witness quorum"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_histories_under_one_broker_key_are_flagged() {
    let (mut a, mut witnesses) = witnessed(&["polisen", "skatteverket"], "\"any\"");
    let mut b = a.sibling();
    a.start().await;
    b.start().await;
    // Each broker has logged its own start: one entry each, different roots.
    witnesses[0].start(&a);
    witnesses[1].start(&b);
    wait_health(&a, "polisen cosigns A", |h| at_quorum(h, &["polisen"])).await;
    wait_health(&b, "skatteverket cosigns B", |h| {
        at_quorum(h, &["skatteverket"])
    })
    .await;

    // Polisen's witness now meets the other history.
    witnesses[0].kill();
    witnesses[0].start(&b);
    let mut found = Vec::new();
    for _ in 0..300 {
        let (code, conflicts) = witnesses[0].evidence(b.path());
        if code == 1 {
            found = conflicts;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !found.is_empty(),
        "no conflict flagged:\n{}",
        witnesses[0].log_text()
    );
    let keys = broker_keys(&a);
    let c = &found[0];
    assert_eq!(c["kind"], "split_view", "{c}");
    let held = verify_checkpoint(c["held"].as_str().unwrap(), &keys).unwrap();
    let offered = verify_checkpoint(c["offered"].as_str().unwrap(), &keys).unwrap();
    assert_eq!(held.size, offered.size, "one size");
    assert_ne!(
        held.root, offered.root,
        "two roots, both signed by the broker key"
    );
    wait_health(&b, "B shows the refusal", |h| {
        witnessing(h)["witnesses"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["agency"] == "polisen" && !r["conflict"].is_null())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_that_lost_its_state_cosigns_only_with_a_new_key() {
    let (mut broker, mut witnesses) = witnessed(&["polisen"], "\"all\"");
    broker.start().await;
    witnesses[0].start(&broker);
    publish(&broker, 1).await;
    wait_health(&broker, "polisen cosigns", |h| at_quorum(h, &["polisen"])).await;

    // The state file is lost: the witness refuses to start.
    witnesses[0].kill();
    std::fs::remove_file(&witnesses[0].state).unwrap();
    let _ = std::fs::remove_file(witnesses[0].state.with_extension("db-wal"));
    let _ = std::fs::remove_file(witnesses[0].state.with_extension("db-shm"));
    let output = witnesses[0].run_to_end(&broker);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no witness state") && stderr.contains("new key"),
        "{stderr}"
    );

    // A new state comes with a new key, which the policy does not list yet.
    let entry = WitnessProcess::init_state(broker.path(), "polisen", &witnesses[0].state);
    let old = std::fs::read_to_string(broker.path().join("policies/witnesses.toml")).unwrap();
    let new_key = entry
        .lines()
        .find_map(|l| l.strip_prefix("key = "))
        .unwrap();
    assert!(!old.contains(new_key), "a new key");
    witnesses[0].start(&broker);
    let before = publish(&broker, 1).await;
    let health = wait_health(&broker, "the new key is not counted", |h| {
        h["status"] == "degraded"
    })
    .await;
    let rows = witnessing(&health)["witnesses"].to_string();
    assert!(rows.contains("no cosignature of"), "{health}");
    let (output, _) = prove(&broker, *before.last().unwrap());
    assert!(!output.status.success());

    // The federation puts the new key into the policy: cosigning resumes.
    write_witnesses(&broker.path().join("policies"), &[entry], "\"all\"");
    broker.signal("HUP");
    publish(&broker, 1).await;
    wait_health(&broker, "quorum with the new key", |h| {
        h["status"] == "ok" && at_quorum(h, &["polisen"])
    })
    .await;
}
