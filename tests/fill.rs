//! A realistic audit log of any size, written fast: the console's benchmark
//! and its test fill a store with it.
//!
//! Nothing is made up that the broker would compute: every alert is signed
//! by its publisher's development key and decided by the pipeline's own code
//! ([`BatchDecider`]: signature, schema, policy, audit entries, share stamps,
//! receipts), so shares, denials and rejections, the stored alerts and
//! deliveries and the subject rows are exactly the broker's. Every audit
//! entry, the Merkle tree and the checkpoints come from the broker's own
//! appender ([`Appender`]); what the pipeline does around a batch
//! (acknowledgements, policy loads, retention purges, console accesses) is
//! done here in the same way, with a simulated clock over a chosen period,
//! and written with [`Store::commit`] in group commits. `samverkan audit verify` accepts the
//! result.
//!
//! Differences from a broker that ran for the period: a checkpoint is
//! signed at the first group commit after the log grew by
//! [`CHECKPOINT_EVERY`] entries (a broker also signs one a minute when the
//! log grew), the policy is reloaded (a `load` entry) every 30 days,
//! content is purged once a week instead of every hour, and only half of the
//! shares are acknowledged by default (so that shares and denials are most
//! of the log).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use samverkan_broker::audit::appender::{AckFacts, Appender, Draft};
use samverkan_broker::audit::subject::SubjectHasher;
use samverkan_broker::audit::tree::Frontier;
use samverkan_broker::pipeline::BatchDecider;
use samverkan_broker::pki::DevPkiLayout;
use samverkan_broker::policy::PolicySet;
use samverkan_broker::signer::BrokerSigner;
use samverkan_broker::store::{Store, StoreError};
use samverkan_sdk::codes::AccessAction;
use samverkan_sdk::identifiers::with_check_digit;
use samverkan_sdk::messages::{self, Ack, Signed};
use samverkan_sdk::{Envelope, EnvelopeHeader};
use serde_json::{Map, Value, json};
use sha2::Digest as _;

/// A checkpoint is signed at the first group commit after the log has grown
/// by this many entries.
pub const CHECKPOINT_EVERY: u64 = 1000;
/// Entries per group commit.
const COMMIT_EVERY: usize = 2000;
const DAY_MS: i64 = 86_400_000;
/// Synthetic persons and companies the alerts are about (skewed: a few
/// appear in many alerts, most in a few).
const PERSONS: u64 = 20_000;
const COMPANIES: u64 = 3_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct FillOptions {
    /// At least this many entries (the last alert may add a few more).
    pub entries: u64,
    /// The simulated clock starts here (ms); keys must be valid from then.
    pub start_ms: i64,
    /// Over how many days the entries are spread.
    pub days: u32,
    /// Share of shares acknowledged by their recipient.
    pub ack_ratio: f64,
    /// Seed of the pseudo-random choices (the same seed, the same log,
    /// apart from alert ids and signatures' salts).
    pub seed: u64,
}

impl FillOptions {
    /// `entries` entries over a year from 2026-12-01 (after the development
    /// keys' `not_before`).
    pub fn year(entries: u64) -> Self {
        Self {
            entries,
            start_ms: 1_796_083_200_000,
            days: 365,
            ack_ratio: 0.5,
            seed: 1,
        }
    }
}

/// What was generated: counts, and handles for the benchmark's queries.
#[derive(Debug, Clone, Default)]
pub struct FillReport {
    /// Entries in the log.
    pub entries: u64,
    /// Entries per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Alerts offered to the decider.
    pub alerts: u64,
    /// Checkpoints signed.
    pub checkpoints: u64,
    /// Seconds the fill took.
    pub seconds: f64,
    /// The simulated period, `[from, to)` in ms.
    pub period: (i64, i64),
    /// The identifier most alerts are about, and one that appears rarely
    /// (synthetic numbers, never to be logged).
    pub frequent_subject: String,
    /// See `frequent_subject`.
    pub rare_subject: String,
    /// An alert id with shares, from the middle of the log.
    pub sample_alert: String,
}

/// splitmix64: deterministic, dependency-free choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Skewed towards 0: index `n·u³`.
    fn skewed(&mut self, n: u64) -> u64 {
        let u = self.unit();
        ((n as f64) * u * u * u) as u64 % n.max(1)
    }
}

/// The `i`-th synthetic personnummer (`YYYYMMDD-NNNC`, valid check digit).
pub fn personnummer(i: u64) -> String {
    let date = i / 999;
    let serial = i % 999 + 1;
    let year = 1940 + date % 65;
    let month = 1 + (date / 65) % 12;
    let day = 1 + (date / 780) % 28;
    let nine = format!("{:02}{month:02}{day:02}{serial:03}", year % 100);
    let ten = with_check_digit(&nine).unwrap_or_else(|| format!("{nine}0"));
    format!("{year}{month:02}{day:02}-{}", &ten[6..])
}

/// The `i`-th synthetic organisationsnummer (`556NNN-NNNC`).
pub fn organisationsnummer(i: u64) -> String {
    let nine = format!("556{:06}", i % 1_000_000);
    let ten = with_check_digit(&nine).unwrap_or_else(|| format!("{nine}0"));
    format!("{}-{}", &ten[..6], &ten[6..])
}

/// Which publisher sends how much (weights).
const PUBLISHERS: [(&str, u64); 7] = [
    ("forsakringskassan", 30),
    ("skatteverket", 20),
    ("polisen", 15),
    ("kronofogden", 10),
    ("akrimost", 10),
    ("linkoping", 8),
    ("norrkoping", 7),
];

const REGIONS: [&str; 4] = ["ost", "ost", "ost", "vast"];
const KOMMUNER: [&str; 3] = ["0580", "0581", "0180"];

/// One alert: (topic, alert type, fields, explicit recipients).
fn alert(
    rng: &mut Rng,
    publisher: &str,
    now: i64,
) -> (
    String,
    &'static str,
    Map<String, Value>,
    Option<Vec<String>>,
) {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let person = personnummer(rng.skewed(PERSONS));
    let company = organisationsnummer(rng.skewed(COMPANIES));
    let kommun = *rng.pick(&KOMMUNER);
    let region = *rng.pick(&REGIONS);
    let text = "Uppgifter enligt bifogat underlag. ".repeat(1 + rng.below(6) as usize);
    let date = samverkan_sdk::time::format_ms(now)
        .chars()
        .take(10)
        .collect::<String>();
    let reference = format!(
        "{}-{}",
        &publisher[..3].to_uppercase(),
        rng.below(1_000_000)
    );
    let incorrect_payment = |rng: &mut Rng, paying: &str| {
        obj(json!({
            "subject_personnummer": person,
            "subject_kommunkod": kommun,
            "benefit": *rng.pick(&["sjukpenning", "bostadsbidrag", "ekonomiskt bistånd", "aktivitetsstöd"]),
            "paying_agency": paying,
            "suspected_amount_sek": 1000 + rng.below(200_000),
            "period": {"from": "2026-01-01", "to": "2026-06-30"},
            "grounds": text,
            "case_reference": reference,
        }))
    };
    let company_flag = |rng: &mut Rng| {
        obj(json!({
            "orgnr": company,
            "company_name": format!("Bygg & Städ {} AB", rng.below(5000)),
            "kommunkod": kommun,
            "indicators": ["f_tax_revoked", "debts_at_kronofogden"],
            "context": *rng.pick(&["procurement", "association_grant", "other"]),
            "case_reference": reference,
        }))
    };
    let exploitation = |rng: &mut Rng| {
        obj(json!({
            "workplace_orgnr": company,
            "kommunkod": kommun,
            "region": region,
            "indicators": ["housing_at_workplace", "no_salary_paid"],
            "description": text,
            "urgency": *rng.pick(&["routine", "urgent", "routine", "immediate_danger"]),
        }))
    };
    let inspection_result = |rng: &mut Rng| {
        obj(json!({
            "orgnr": company,
            "kommunkod": kommun,
            "region": region,
            "inspection_date": date,
            "findings": {"workers_without_work_permit": rng.below(7), "undeclared_workers": rng.below(5), "tax_discrepancies": rng.chance(0.4)},
            "follow_up_actions": [text],
            "case_reference": reference,
        }))
    };
    let inspection_planned = |rng: &mut Rng| {
        obj(json!({
            "workplace_orgnr": company,
            "address": format!("Industrigatan {}", 1 + rng.below(90)),
            "kommunkod": kommun,
            "region": region,
            "planned_date": date,
            "lead_agency": "polisen",
            "participating_agencies": ["polisen", "skatteverket"],
            "industry": "bygg",
        }))
    };
    // `to` is signed sorted and without repeats.
    let to = |list: &[&str]| {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v.dedup();
        Some(v)
    };
    match publisher {
        "forsakringskassan" => match rng.below(10) {
            0..=6 => (
                "welfare/incorrect-payment/ost".into(),
                "welfare.incorrect_payment",
                incorrect_payment(rng, "forsakringskassan"),
                None,
            ),
            7 => (
                "welfare/incorrect-payment/ost".into(),
                "welfare.incorrect_payment",
                incorrect_payment(rng, "forsakringskassan"),
                to(&["polisen", "linkoping"]),
            ),
            8 => (
                format!("akrim/{region}/exploitation"),
                "akrim.exploitation_signal",
                exploitation(rng),
                None,
            ),
            _ => (
                format!("akrim/{region}/inspection"),
                "akrim.inspection_result",
                inspection_result(rng),
                None,
            ),
        },
        "skatteverket" => match rng.below(10) {
            0..=3 => (
                "welfare/company/ost".into(),
                "welfare.company_flag",
                company_flag(rng),
                None,
            ),
            4..=6 => (
                format!("akrim/{region}/exploitation"),
                "akrim.exploitation_signal",
                exploitation(rng),
                None,
            ),
            7 => (
                "welfare/incorrect-payment/ost".into(),
                "welfare.incorrect_payment",
                incorrect_payment(rng, "forsakringskassan"),
                None,
            ),
            _ => (
                format!("akrim/{region}/planning"),
                "akrim.inspection_planned",
                inspection_planned(rng),
                None,
            ),
        },
        "polisen" => match rng.below(10) {
            0..=5 => (
                format!("akrim/{region}/inspection"),
                "akrim.inspection_result",
                inspection_result(rng),
                if rng.chance(0.3) {
                    to(&["akrimost", "skatteverket", "linkoping"])
                } else {
                    None
                },
            ),
            _ => (
                format!("akrim/{region}/planning"),
                "akrim.inspection_planned",
                inspection_planned(rng),
                None,
            ),
        },
        "kronofogden" => match rng.below(10) {
            0..=6 => (
                "welfare/company/ost".into(),
                "welfare.company_flag",
                company_flag(rng),
                None,
            ),
            _ => (
                "welfare/incorrect-payment/ost".into(),
                "welfare.incorrect_payment",
                incorrect_payment(rng, "forsakringskassan"),
                None,
            ),
        },
        "akrimost" => match rng.below(10) {
            0..=4 => (
                "akrim/ost/inspection".into(),
                "akrim.inspection_result",
                inspection_result(rng),
                None,
            ),
            5..=7 => (
                "akrim/ost/planning".into(),
                "akrim.inspection_planned",
                inspection_planned(rng),
                None,
            ),
            _ => (
                "akrim/ost/exploitation".into(),
                "akrim.exploitation_signal",
                exploitation(rng),
                None,
            ),
        },
        _ => match rng.below(10) {
            0..=6 => (
                "welfare/assistance-fraud/ost".into(),
                "welfare.assistance_fraud",
                obj(json!({
                    "provider_orgnr": company,
                    "provider_name": format!("Omsorg {} AB", rng.below(800)),
                    "kommunkod": kommun,
                    "hours_billed": 100 + rng.below(900),
                    "hours_verified": rng.below(100),
                    "period": {"from": "2026-01-01", "to": "2026-03-31"},
                    "case_reference": reference,
                })),
                None,
            ),
            7 => (
                "welfare/company/ost".into(),
                "welfare.company_flag",
                company_flag(rng),
                None,
            ),
            _ => (
                format!("akrim/{region}/exploitation"),
                "akrim.exploitation_signal",
                exploitation(rng),
                None,
            ),
        },
    }
}

/// A share waiting for its recipient's acknowledgement.
struct Pending {
    share_id: String,
    recipient: String,
    alert_id: String,
    publisher: String,
    topic: String,
    due_ms: i64,
}

/// The pipeline's state around the broker's own [`Appender`], with a
/// simulated clock.
struct Filler<'a> {
    store: &'a Store,
    policy: Arc<PolicySet>,
    signer: Arc<BrokerSigner>,
    origin: String,
    publisher_keys: BTreeMap<String, (SigningKey, String)>,
    appender: Appender,
    draft: Draft,
    /// A commit running while the next draft is built, and the tree after it.
    in_flight: Option<(tokio::task::JoinHandle<Result<(), StoreError>>, Frontier)>,
    report: FillReport,
}

impl Filler<'_> {
    /// The index the next entry gets.
    fn next(&self) -> u64 {
        self.draft.next_index()
    }

    /// Seals the entries built since the last call into the tree and
    /// commits them (in a task of its own, overlapping the next batch's
    /// signing); signs a checkpoint when the log grew enough.
    async fn flush(&mut self, now: i64, wait: bool) -> Result<()> {
        if let Some((task, frontier)) = self.in_flight.take() {
            task.await.context("commit task")??;
            self.appender.committed(frontier);
        }
        let draft = std::mem::replace(&mut self.draft, self.appender.draft(self.policy.version()));
        let sealed = self.appender.seal(draft)?;
        for e in &sealed.commit.audit {
            *self
                .report
                .by_kind
                .entry(e.kind.as_str().to_string())
                .or_default() += 1;
        }
        self.appender.launched(sealed.next, &sealed.frontier);
        self.draft = self.appender.draft(self.policy.version());
        let store = self.store.clone();
        let due = sealed.next - self.appender.last_checkpoint().unwrap_or(0) >= CHECKPOINT_EVERY;
        if wait || due {
            store.commit(&sealed.commit).await?;
            self.appender.committed(sealed.frontier);
            if let Some(checkpoint) = self
                .appender
                .checkpoint(&self.signer, &self.origin, now)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                store.insert_checkpoint(&checkpoint).await?;
                self.appender.checkpoint_stored(checkpoint.size);
                self.report.checkpoints += 1;
            }
        } else {
            let commit = sealed.commit;
            self.in_flight = Some((
                tokio::spawn(async move { store.commit(&commit).await }),
                sealed.frontier,
            ));
        }
        Ok(())
    }

    /// The policy put in force (at start, or a reload of the same version).
    async fn policy_loaded(&mut self, now: i64) -> Result<()> {
        self.flush(now, true).await?;
        let first = !self.store.policy_archived(self.policy.version()).await?;
        self.draft.policy_loaded(now, &self.policy, first);
        self.flush(now, true).await
    }

    /// Content past its retention period, as the pipeline purges it.
    async fn purge(&mut self, now: i64) -> Result<()> {
        self.flush(now, true).await?;
        let types: Vec<String> = self.policy.alert_types().keys().cloned().collect();
        for alert_type in types {
            let days = self.policy.retention_days(&alert_type);
            let cutoff = now - i64::from(days) * DAY_MS;
            let counts = self.store.purgeable(&alert_type, cutoff).await?;
            if counts.0 + counts.1 == 0 {
                continue;
            }
            self.draft
                .retention_purge(now, &alert_type, cutoff, days, counts);
        }
        self.flush(now, true).await
    }

    /// One use of the console, as the pipeline records it.
    fn access(&mut self, rng: &mut Rng, now: i64, alert_id: Option<String>) {
        let agencies: Vec<String> = self.policy.agencies().keys().cloned().collect();
        let organization = if rng.chance(0.2) {
            "tillsynen".to_string()
        } else {
            rng.pick(&agencies).clone()
        };
        let (action, reason) = match (&alert_id, rng.below(3)) {
            (Some(id), _) => (AccessAction::Case, format!("case page of alert {id}")),
            (None, 0) => (
                AccessAction::Export,
                "export csv of ?kind=share (50 entries)".to_string(),
            ),
            _ => (AccessAction::Search, "search ?kind=denial".to_string()),
        };
        self.draft
            .auditor_access(now, &organization, action, reason, alert_id, None);
    }

    /// Acknowledgements of the shares due by `now`, one signed message per
    /// recipient, recorded as the pipeline records them.
    fn acks(&mut self, pending: &mut VecDeque<Pending>, now: i64) {
        let mut due: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        while pending.front().is_some_and(|p| p.due_ms <= now) {
            if let Some(p) = pending.pop_front() {
                due.entry(p.recipient.clone()).or_default().push(p);
            }
        }
        for (recipient, shares) in due {
            let Some((key, key_id)) = self.publisher_keys.get(&recipient).cloned() else {
                continue;
            };
            for chunk in shares.chunks(1000) {
                let ack = Ack {
                    agency: recipient.clone(),
                    share_ids: chunk.iter().map(|p| p.share_id.clone()).collect(),
                    signed_at_ms: now,
                };
                let signed = Signed::sign(messages::TAG_ACK, &ack, &key, &key_id);
                let message: std::sync::Arc<[u8]> =
                    serde_json::to_vec(&signed).unwrap_or_default().into();
                let message_hash = hex::encode(sha2::Sha256::digest(&message));
                let signature = b64(&signed.signature.0);
                for p in chunk {
                    self.draft.ack(
                        now,
                        &AckFacts {
                            share_id: &p.share_id,
                            alert_id: &p.alert_id,
                            publisher: &p.publisher,
                            topic: &p.topic,
                            recipient: &recipient,
                            message: &message,
                            message_hash: &message_hash,
                            signature: &signature,
                        },
                    );
                }
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn read_key_id(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| path.display().to_string())?
        .trim()
        .to_string())
}

/// Fills the empty store `store` with a log of at least `opts.entries`
/// entries, decided with the policy set in `policies`, signed with the
/// development keys in `pki`, checkpoints named `origin`.
pub async fn fill(
    store: &Store,
    policies: &Path,
    pki: &DevPkiLayout,
    origin: &str,
    opts: &FillOptions,
) -> Result<FillReport> {
    if store.next_audit_index().await? != 0 {
        bail!("the store already holds a log: fill an empty one");
    }
    let started = Instant::now();
    let policy = Arc::new(PolicySet::load(policies).map_err(|e| anyhow::anyhow!("{e}"))?);
    let signer = Arc::new(BrokerSigner::new(
        samverkan_sdk::keys::read_signing_key(&pki.broker_signing_key())?,
        read_key_id(&pki.broker_signing_key_id())?,
    ));
    let subjects = SubjectHasher::load(&pki.subject_key()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut publisher_keys = BTreeMap::new();
    for agency in policy.agencies().keys() {
        let dir = pki.dir.join(agency);
        let key = samverkan_sdk::keys::read_signing_key(&dir.join("signing.key"))?;
        publisher_keys.insert(
            agency.clone(),
            (key, read_key_id(&dir.join("signing.key-id"))?),
        );
    }
    let appender = Appender::empty();
    let mut app = Filler {
        store,
        policy: policy.clone(),
        signer: signer.clone(),
        origin: origin.to_string(),
        publisher_keys,
        draft: appender.draft(policy.version()),
        appender,
        in_flight: None,
        report: FillReport::default(),
    };
    let mut rng = Rng(opts.seed);
    let span = i64::from(opts.days.max(1)) * DAY_MS;
    // Entries per alert: about 2.2 decisions, and 1.8 shares to acknowledge.
    let per_alert = 2.2 + 1.8 * opts.ack_ratio;
    let mean_gap = span as f64 / (opts.entries as f64 / per_alert).max(1.0);
    let total_weight: u64 = PUBLISHERS.iter().map(|(_, w)| w).sum();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut now = opts.start_ms;
    let mut next_reload = now + 30 * DAY_MS;
    let mut next_purge = now + 7 * DAY_MS;
    app.policy_loaded(now).await?;
    let mut sample_alert = String::new();
    let mut rare_subject = String::new();

    // Bounded by the entries asked for: every round appends at least one.
    while app.next() < opts.entries {
        now += (mean_gap * 2.0 * rng.unit()) as i64 + 1;
        if now >= next_reload {
            app.policy_loaded(now).await?;
            next_reload += 30 * DAY_MS;
        }
        if now >= next_purge {
            app.purge(now).await?;
            next_purge += 7 * DAY_MS;
        }
        // Acknowledgements are out of order at most by the random delay.
        app.acks(&mut pending, now);

        let mut w = rng.below(total_weight);
        let publisher = PUBLISHERS
            .iter()
            .find(|(_, weight)| {
                let hit = w < *weight;
                w = w.saturating_sub(*weight);
                hit
            })
            .map(|(p, _)| *p)
            .unwrap_or("forsakringskassan");
        let (topic, alert_type, mut fields, to) = alert(&mut rng, publisher, now);
        let Some((key, key_id)) = app.publisher_keys.get(publisher) else {
            continue;
        };
        // A few percent are refused: a schema violation, a topic that
        // differs from the signed one, a clock far off, an unknown type.
        let mut logical = topic.clone();
        let mut header = EnvelopeHeader {
            version: samverkan_sdk::envelope::VERSION,
            alert_id: uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                u64::try_from(now / 1000).unwrap_or(0),
                u32::try_from(now % 1000).unwrap_or(0) * 1_000_000,
            ))
            .to_string(),
            publisher: publisher.into(),
            key_id: key_id.clone(),
            alert_type: alert_type.into(),
            topic: topic.clone(),
            issued_at_ms: now - rng.below(2000) as i64,
            to,
        };
        match rng.below(1000) {
            0..=11 => {
                fields.insert("suspected_amount_sek".into(), json!("många"));
                fields.insert("region".into(), json!("atlantis"));
            }
            12..=17 => logical = format!("{topic}/extra"),
            18..=23 => header.issued_at_ms = now - 3_600_000,
            24..=26 => header.alert_type = "welfare.unknown_benefit".into(),
            _ => {}
        }
        let alert_id = header.alert_id.clone();
        let envelope = Envelope::sign(header, &fields, key)?;
        let payload = Bytes::from(envelope.to_json());
        let decider = BatchDecider::new(policy.clone(), signer.clone(), subjects.clone(), now);
        let deliveries_before = app.draft.commit.deliveries.len();
        let audit_before = app.draft.commit.audit.len();
        decider.decide(
            vec![(publisher.to_string(), logical, payload)],
            &mut app.draft,
        );
        app.report.alerts += 1;
        for d in &app.draft.commit.deliveries[deliveries_before..] {
            if rng.chance(opts.ack_ratio) {
                // The alert and topic of a share are its entry's.
                let Some(entry) = app.draft.commit.audit[audit_before..]
                    .iter()
                    .find(|e| e.index == d.audit_idx)
                else {
                    continue;
                };
                pending.push_back(Pending {
                    share_id: d.share_id.clone(),
                    recipient: d.recipient.clone(),
                    alert_id: entry.alert_id.clone().unwrap_or_default(),
                    publisher: entry.publisher.clone().unwrap_or_default(),
                    topic: entry.topic.clone().unwrap_or_default(),
                    due_ms: now + 60_000 + rng.below(3_600_000) as i64,
                });
            }
        }
        let shared = app.draft.commit.deliveries.len() > deliveries_before;
        if shared && sample_alert.is_empty() && app.next() >= opts.entries / 2 {
            sample_alert = alert_id.clone();
        }
        if rare_subject.is_empty() && shared && app.next() >= opts.entries / 3 {
            // A person of the long tail, published once now.
            if let Some(p) = fields
                .get("subject_personnummer")
                .and_then(Value::as_str)
                .filter(|p| *p != personnummer(0))
            {
                rare_subject = p.to_string();
            }
        }
        if rng.chance(0.004) {
            let case = app.draft.commit.audit[audit_before..]
                .first()
                .and_then(|e| e.alert_id.clone());
            app.access(&mut rng, now, case);
        }
        if app.draft.commit.audit.len() >= COMMIT_EVERY {
            app.flush(now, false).await?;
        }
    }
    app.flush(now, true).await?;
    let entries = app.next();
    let mut report = app.report;
    report.entries = entries;
    report.seconds = started.elapsed().as_secs_f64();
    report.period = (opts.start_ms, now + 1);
    report.frequent_subject = personnummer(0);
    report.rare_subject = rare_subject;
    report.sample_alert = sample_alert;
    Ok(report)
}
