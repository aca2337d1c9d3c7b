//! Audit log benchmark: prints figures, asserts nothing about speed.
//!
//! ```sh
//! cargo bench -p samverkan-broker --bench audit
//! SAMVERKAN_BENCH_ENTRIES=1000000 SAMVERKAN_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p samverkan-broker --bench audit
//! ```
//!
//! For each backend (SQLite always; PostgreSQL when `SAMVERKAN_TEST_POSTGRES`
//! names a server) it measures: entries appended per second with the Merkle
//! tree maintained (group commits of 1000 entries, as the router does under
//! load), `audit verify` entries per second over the whole log, and the time
//! to build inclusion and consistency proofs at that size.

use std::time::Instant;

use ed25519_dalek::SigningKey;
use samverkan_broker::audit::tree::{Frontier, consistency_proof, inclusion_proof};
use samverkan_broker::audit::verify::verify_log;
use samverkan_broker::audit::{AuditEntry, EntryKind};
use samverkan_broker::store::{Commit, Store, StoredCheckpoint};
use samverkan_sdk::audit::checkpoint::sign_checkpoint;
use samverkan_sdk::audit::proof::verify_inclusion;
use samverkan_sdk::keys::{AgencyKey, KeyRegistry};

const BATCH: u64 = 1000;

fn entry(index: u64) -> AuditEntry {
    let mut e = AuditEntry::new(EntryKind::Share, 1_795_953_600_000 + index as i64);
    e.index = index;
    e.alert_id = Some(format!("00000000-0000-4000-8000-{index:012}"));
    e.publisher = Some("forsakringskassan".into());
    e.recipient = Some("linkoping".into());
    e.topic = Some("welfare/incorrect-payment/ost".into());
    e.alert_type = Some("welfare.incorrect_payment".into());
    e.rule_id = Some("incorrect-payment-to-home-municipality".into());
    e.legal_basis = Some("uppgiftsskyldighet-valfard".into());
    e.purpose =
        Some("Correct decisions on economic assistance in the person's home municipality".into());
    e.fields = [
        "benefit",
        "period",
        "subject_kommunkod",
        "subject_personnummer",
    ]
    .map(String::from)
    .to_vec();
    e.disclosed_digest = Some(hex::encode([7u8; 32]));
    e.envelope_hash = Some(hex::encode([index as u8; 32]));
    e.signature = Some("S".repeat(86));
    e.policy_version = Some(format!("sha256:{}", "a".repeat(64)));
    e.share_id = Some(format!("{index:032x}"));
    e.subject_hashes = vec![hex::encode([9u8; 32])];
    e
}

async fn run(name: &str, url: &str, entries: u64) {
    println!("\n== {name}: {entries} entries");
    let store = Store::open(url).await.expect("open store");
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut keys = KeyRegistry::new();
    keys.insert(AgencyKey {
        owner: "broker".into(),
        key_id: "bench".into(),
        public_key: key.verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });

    // Append with the tree maintained, in group commits.
    let mut frontier = Frontier::empty();
    let started = Instant::now();
    let mut index = 0;
    let mut half_root = None;
    while index < entries {
        let mut commit = Commit::default();
        for _ in 0..BATCH.min(entries - index) {
            let e = entry(index);
            commit.tree_hashes.extend(frontier.append(e.leaf_hash()));
            commit.audit.push(e);
            index += 1;
        }
        store.commit(&commit).await.expect("commit");
        if half_root.is_none() && index >= entries / 2 {
            half_root = Some((index, frontier.root()));
        }
    }
    let append = started.elapsed();
    println!(
        "append        {:>10.0} entries/s   ({entries} entries with tree hashes in {:.1?}, {BATCH} per transaction)",
        entries as f64 / append.as_secs_f64(),
        append
    );

    // Two signed checkpoints: half way and at the end.
    let (half, half_root) = half_root.unwrap_or((entries, frontier.root()));
    for (size, root) in [(half, half_root), (entries, frontier.root())] {
        let note = sign_checkpoint("samverkan-bench/audit", size, &root, 0, None, &key).unwrap();
        store
            .insert_checkpoint(&StoredCheckpoint {
                size,
                root,
                at_ms: 0,
                note,
            })
            .await
            .unwrap();
    }

    let started = Instant::now();
    let report = verify_log(&store, &keys, &[], |_, _| {})
        .await
        .expect("verify");
    let verify = started.elapsed();
    assert_eq!(report.entries, entries);
    println!(
        "audit verify  {:>10.0} entries/s   ({} entries, {} checkpoints in {:.1?})",
        entries as f64 / verify.as_secs_f64(),
        report.entries,
        report.checkpoints,
        verify
    );

    let samples = 200u64;
    let started = Instant::now();
    for i in 0..samples {
        let n = (i * 7919) % entries;
        let proof = inclusion_proof(&store, entries, n).await.unwrap();
        verify_inclusion(n, entries, &entry(n).leaf_hash(), &proof, &frontier.root()).unwrap();
    }
    let per = started.elapsed() / samples as u32;
    println!(
        "inclusion     {per:>10.2?} per proof      (built from the store and checked, {samples} samples)"
    );
    let started = Instant::now();
    let proof = consistency_proof(&store, entries, half).await.unwrap();
    println!(
        "consistency   {:>10.2?} per proof      ({half} → {entries} entries, {} hashes)",
        started.elapsed(),
        proof.len()
    );
    store.close().await;
}

fn main() {
    let entries: u64 = std::env::var("SAMVERKAN_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        run("SQLite (WAL, synchronous=FULL)", &url, entries).await;

        match std::env::var("SAMVERKAN_TEST_POSTGRES") {
            Err(_) => println!(
                "\n== PostgreSQL: not measured (set SAMVERKAN_TEST_POSTGRES to a server URL)"
            ),
            Ok(server) => {
                use sqlx::Connection;
                let name = format!("samverkan_bench_{}", std::process::id());
                let mut admin = sqlx::PgConnection::connect(&server)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let base = server.split('?').next().unwrap_or(&server);
                let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
                run("PostgreSQL", &format!("{prefix}/{name}"), entries).await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        }
    });
}
