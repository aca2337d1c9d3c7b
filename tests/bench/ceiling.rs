//! `ceiling`: what one core of this machine does per second for each kind
//! of work the pipeline needs, and the alert rate those costs allow.

use std::time::Instant;

use anyhow::Result;
use ed25519_dalek::{Signer, SigningKey};
use samverkan_broker::audit::tree::Frontier;
use samverkan_broker::audit::{AuditEntry, EntryKind};
use samverkan_broker::policy::PolicySet;
use samverkan_broker::store::{Commit, Store};
use samverkan_sdk::keys::{AgencyKey, KeyRegistry};
use samverkan_sdk::{Envelope, EnvelopeHeader};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Runs `f` repeatedly for about `ms` milliseconds; returns calls per second.
fn per_second(ms: u64, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_millis() < u128::from(ms) {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Prints the measurements; returns the estimated ceiling on two cores in alerts/s.
pub async fn run() -> Result<Ceiling> {
    let key = SigningKey::from_bytes(&[1; 32]);
    let fields = match json!({
        "subject_personnummer": "19121212-1212", "subject_kommunkod": "0580", "benefit": "sjukpenning",
        "paying_agency": "forsakringskassan", "suspected_amount_sek": 48000,
        "period": {"from": "2026-01-01", "to": "2026-03-31"}, "grounds": "x".repeat(500), "case_reference": "FK-1",
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let header = EnvelopeHeader {
        version: 1,
        alert_id: "00000000-0000-4000-8000-000000000001".into(),
        publisher: "forsakringskassan".into(),
        key_id: "fk".into(),
        alert_type: "welfare.incorrect_payment".into(),
        topic: "welfare/incorrect-payment/ost".into(),
        issued_at_ms: samverkan_sdk::time::now_ms(),
        to: None,
    };
    let envelope = Envelope::sign(header.clone(), &fields, &key)?;
    let json = envelope.to_json();
    let mut reg = KeyRegistry::new();
    reg.insert(AgencyKey {
        owner: "forsakringskassan".into(),
        key_id: "fk".into(),
        public_key: key.verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    let input = samverkan_sdk::envelope::signing_input(&envelope.header, &envelope.digests);
    let signature = key.sign(&input);
    let vk = key.verifying_key();

    println!(
        "One core of this machine, per second (envelope of {} bytes):",
        json.len()
    );
    let verify = per_second(1000, || {
        let _ = vk.verify_strict(&input, &signature);
    });
    println!("  ed25519 verify (strict)        {verify:>12.0}");
    let batch = 64;
    let msgs: Vec<&[u8]> = vec![&input; batch];
    let sigs = vec![signature; batch];
    let keys = vec![vk; batch];
    let batched = per_second(1000, || {
        let _ = ed25519_dalek::verify_batch(&msgs, &sigs, &keys);
    }) * batch as f64;
    println!("  ed25519 verify (batches of {batch}) {batched:>12.0}");
    // What the broker's check stage uses: batches that accept exactly what
    // the strict check accepts (docs/DECISIONS.md).
    let signature_bytes = signature.to_bytes();
    let items: Vec<samverkan_sdk::batch::Item<'_>> = (0..batch)
        .map(|_| (&vk, input.as_slice(), signature_bytes.as_slice()))
        .collect();
    let strict_batched = per_second(1000, || {
        let _ = samverkan_sdk::batch::verify_strict_batch(&items);
    }) * batch as f64;
    println!("  ed25519 verify (strict batches) {strict_batched:>11.0}");
    let sign = per_second(1000, || {
        let _ = key.sign(&input);
    });
    println!("  ed25519 sign                   {sign:>12.0}");
    let kb = vec![7u8; 1024];
    let sha = per_second(500, || {
        let _ = Sha256::digest(&kb);
    });
    println!("  SHA-256 of 1 KiB               {sha:>12.0}");
    let parse = per_second(1000, || {
        let _ = Envelope::from_json(&json);
    });
    println!("  envelope JSON parse            {parse:>12.0}");
    let full = per_second(1000, || {
        let _ = Envelope::from_json(&json).map(|e| e.verify(&reg));
    });
    println!("  envelope parse + full verify   {full:>12.0}");

    let dir = samverkan_e2e::prepare_dir();
    let policy =
        PolicySet::load(&dir.path().join("policies")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let schema = policy
        .alert_type("welfare.incorrect_payment")
        .ok_or_else(|| anyhow::anyhow!("no schema"))?;
    let fields_value = Value::Object(fields.clone());
    let validate = per_second(1000, || {
        let _ = schema.validate(&fields_value);
    });
    println!("  schema validation              {validate:>12.0}");

    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("ceiling.db").display()
    ))
    .await?;
    let mut frontier = Frontier::empty();
    let entries = 50_000u64;
    let started = Instant::now();
    let mut i = 0;
    while i < entries {
        let mut commit = Commit::default();
        for _ in 0..1000 {
            let mut e = AuditEntry::new(EntryKind::Share, 0);
            e.index = i;
            e.alert_id = Some(format!("alert-{i}"));
            e.publisher = Some("forsakringskassan".into());
            e.recipient = Some("linkoping".into());
            e.rule_id = Some("incorrect-payment-to-home-municipality".into());
            e.legal_basis = Some("uppgiftsskyldighet-valfard".into());
            e.fields = vec!["benefit".into(), "period".into()];
            e.signature = Some("S".repeat(86));
            commit.tree_hashes.extend(frontier.append(e.leaf_hash()));
            commit.audit.push(e);
            i += 1;
        }
        store.commit(&commit).await?;
    }
    let inserts = entries as f64 / started.elapsed().as_secs_f64();
    println!(
        "  SQLite audit entries + tree    {inserts:>12.0}   (group commits of 1000, synchronous=FULL)"
    );
    store.close().await;

    // The mixed shape averages about two shares per alert. Per alert the
    // broker verifies one signature, signs one receipt and one stamp per
    // share, and appends one entry per share and per acknowledgement.
    let shares = 2.0;
    let crypto = 1.0 / verify + (1.0 + shares) / sign;
    let other = 1.0 / parse + 1.0 / validate;
    let db = (2.0 * shares) / inserts;
    println!("\nPer alert with {shares} shares (mixed shape), single core:");
    println!(
        "  signatures    {:>8.0} µs  ({:.0} alerts/s)",
        crypto * 1e6,
        1.0 / crypto
    );
    println!("  parse+schema  {:>8.0} µs", other * 1e6);
    println!(
        "  database      {:>8.0} µs  ({:.0} alerts/s)",
        db * 1e6,
        1.0 / db
    );
    println!(
        "  together      {:>8.0} µs  → ceiling ≈ {:.0} alerts/s on one core, {:.0} on two (before TLS, MQTT and the load generator)",
        (crypto + other + db) * 1e6,
        1.0 / (crypto + other + db),
        2.0 / (crypto + other + db)
    );
    Ok(Ceiling {
        alerts_per_s: 2.0 / (crypto + other + db),
        per_alert_us: (crypto + other + db) * 1e6,
    })
}

/// What every alert needs at least, measured on this machine now.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Alerts per second two cores could do at that cost alone.
    pub alerts_per_s: f64,
    /// CPU time per mixed alert (two shares), in microseconds.
    pub per_alert_us: f64,
}
