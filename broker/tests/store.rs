//! The store's own test suite: every test is written once and runs on
//! SQLite and on PostgreSQL (`SAMVERKAN_TEST_POSTGRES` names the server; a
//! fresh database is created per test and dropped afterwards). Without that
//! variable the PostgreSQL half fails instead of being skipped.
//!
//! The batches are built the way the router builds them (signed envelopes,
//! share stamps, receipts, the Merkle tree grown by the appender's
//! [`Frontier`]), so what is read back can be compared byte for byte.

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use samverkan_broker::audit::subject::SubjectHasher;
use samverkan_broker::audit::tree::{Frontier, consistency_proof, inclusion_proof, stored_root};
use samverkan_broker::audit::{AuditEntry, EntryKind, disclosed_digest};
use samverkan_broker::policy::SubjectKind;
use samverkan_broker::signer::BrokerSigner;
use samverkan_broker::store::{
    AckUpdate, AlertRow, AuditFilter, Commit, DeliveryRow, HandoffRow, PolicyArchive, Purge,
    QueuePosition, Store, StoredCheckpoint, StoredCosignature,
};
use samverkan_sdk::audit::proof::{verify_consistency, verify_inclusion};
use samverkan_sdk::messages::{
    self, Delivery, DenialReceipt, Receipt, ReceiptStatus, ShareReceipt, ShareStamp,
};
use samverkan_sdk::{Disclosure, Envelope, EnvelopeHeader};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

const POSTGRES_ENV: &str = "SAMVERKAN_TEST_POSTGRES";

/// A fresh database for one test.
struct TestDb {
    url: String,
    _dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl TestDb {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("store.db").display()),
                _dir: dir,
                postgres: None,
            },
            Backend::Postgres => {
                use sqlx::Connection;
                let server = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
                    panic!(
                        "{POSTGRES_ENV} must name a PostgreSQL database for the store suite, \
                         e.g. postgres://postgres@127.0.0.1:5432/test"
                    )
                });
                let name = format!("samverkan_store_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let (base, query) = match server.split_once('?') {
                    Some((b, q)) => (b.to_string(), format!("?{q}")),
                    None => (server.clone(), String::new()),
                };
                let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(&base);
                Self {
                    url: format!("{prefix}/{name}{query}"),
                    _dir: dir,
                    postgres: Some((server, name)),
                }
            }
        }
    }

    /// The SQLite file (for fixtures copied in).
    fn sqlite_path(&self) -> std::path::PathBuf {
        self._dir.path().join("store.db")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((server, name)) = self.postgres.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&server).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Runs each test on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Backend::Postgres).await
            })*
        }
    };
}

on_both_backends!(
    a_failing_commit_writes_nothing,
    a_commit_longer_than_one_script_is_one_transaction,
    audit_reads_filters_and_ranges,
    tree_hashes_proofs_and_roots,
    checkpoints_and_cosignatures,
    deliveries_acks_and_replay_pages,
    retention_purges_content_and_keeps_evidence,
    known_alerts_find_resends,
    a_store_of_migration_3_is_converted,
    appends_from_two_stores_follow_one_another,
    handed_off_shares_are_claimed_once_by_their_recipients_node,
);

const VERSION: &str = "0123456789abcdef";
const T0: i64 = 1_796_083_200_000;

/// What a test needs to know about an accepted alert.
#[derive(Debug, Clone)]
struct Accepted {
    publisher: String,
    alert_id: String,
    envelope_hash: String,
    content: Vec<u8>,
    signed_envelope: Vec<u8>,
    receipt: Vec<u8>,
    /// (share id, recipient, audit index, payload)
    shares: Vec<(String, String, u64, Vec<u8>)>,
    denials: Vec<u64>,
    subject: String,
}

/// The appender's side, as the router does it.
struct Log {
    commit: Commit,
    next: u64,
    frontier: Frontier,
    publisher_key: SigningKey,
    signer: BrokerSigner,
    subjects: SubjectHasher,
}

impl Log {
    fn new() -> Self {
        Self {
            commit: Commit::default(),
            next: 0,
            frontier: Frontier::empty(),
            publisher_key: SigningKey::from_bytes(&[7; 32]),
            signer: BrokerSigner::new(SigningKey::from_bytes(&[9; 32]), "broker-k1"),
            subjects: SubjectHasher::new([3; 32]),
        }
    }

    /// Appends an entry (with the next index) and its tree hashes.
    fn entry(&mut self, mut e: AuditEntry) -> u64 {
        e.index = self.next;
        self.next += 1;
        self.commit
            .tree_hashes
            .extend(self.frontier.append(e.leaf_hash()));
        self.commit
            .subjects
            .extend(e.subject_hashes.iter().map(|s| (s.clone(), e.index)));
        self.commit.audit.push(e);
        self.next - 1
    }

    fn policy_loaded(&mut self, at_ms: i64) -> u64 {
        let mut e = AuditEntry::new(EntryKind::PolicyLoaded, at_ms);
        e.policy_version = Some(VERSION.into());
        self.commit.policy = Some(PolicyArchive {
            version: VERSION.into(),
            files_json: "[]".into(),
            at_ms,
        });
        self.entry(e)
    }

    /// An accepted alert about `person`, shared with `shares` (each sees
    /// the field `subject_personnummer` and `amount`) and denied to `denied`.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        at_ms: i64,
        publisher: &str,
        alert_id: &str,
        alert_type: &str,
        shares: &[&str],
        denied: &[&str],
        person: &str,
    ) -> Accepted {
        let topic = "welfare/incorrect-payment/ost".to_string();
        let header = EnvelopeHeader {
            version: samverkan_sdk::envelope::VERSION,
            alert_id: alert_id.into(),
            publisher: publisher.into(),
            key_id: "pub-k1".into(),
            alert_type: alert_type.into(),
            topic: topic.clone(),
            issued_at_ms: at_ms - 5,
            to: None,
        };
        let fields = json!({
            "subject_personnummer": person,
            "amount": 1200,
            "grounds": "Uppgifter enligt bifogat underlag. ".repeat(3),
        });
        let serde_json::Value::Object(fields) = fields else {
            unreachable!()
        };
        let disclosures: Vec<Disclosure> = fields
            .iter()
            .map(|(name, value)| Disclosure::new(name, value).unwrap())
            .collect();
        let envelope =
            Envelope::sign_disclosures(header, disclosures.clone(), &self.publisher_key).unwrap();
        let envelope_hash = messages::envelope_hash(&envelope);
        let signature = base64_url(&envelope.signature.0);
        let subject = self
            .subjects
            .hash_value(SubjectKind::Personnummer, person)
            .unwrap();
        let base = |kind: EntryKind| {
            let mut e = AuditEntry::new(kind, at_ms);
            e.alert_id = Some(alert_id.into());
            e.publisher = Some(publisher.into());
            e.topic = Some(topic.clone());
            e.alert_type = Some(alert_type.into());
            e.envelope_hash = Some(envelope_hash.clone());
            e.signature = Some(signature.clone());
            e.policy_version = Some(VERSION.into());
            e.subject_hashes = vec![subject.clone()];
            e
        };
        let shown = ["amount".to_string(), "subject_personnummer".to_string()];
        let mut accepted = Accepted {
            publisher: publisher.into(),
            alert_id: alert_id.into(),
            envelope_hash: envelope_hash.clone(),
            content: envelope.to_json(),
            signed_envelope: envelope.redact(|_| false).to_json(),
            receipt: Vec::new(),
            shares: Vec::new(),
            denials: Vec::new(),
            subject: subject.clone(),
        };
        let mut share_receipts = Vec::new();
        for recipient in shares {
            let share_id = messages::share_id(&envelope_hash, recipient);
            let mut digests: Vec<_> = disclosures
                .iter()
                .filter(|d| shown.iter().any(|f| f == d.name()))
                .map(|d| d.digest())
                .collect();
            digests.sort();
            let mut e = base(EntryKind::Share);
            e.recipient = Some(recipient.to_string());
            e.rule_id = Some("rule-1".into());
            e.legal_basis = Some("basis-1".into());
            e.purpose = Some("control".into());
            e.fields = shown.to_vec();
            e.disclosed_digest = Some(disclosed_digest(&digests));
            e.share_id = Some(share_id.clone());
            let index = self.entry(e);
            let stamp = ShareStamp {
                share_id: share_id.clone(),
                alert_id: alert_id.into(),
                publisher: publisher.into(),
                recipient: recipient.to_string(),
                topic: topic.clone(),
                alert_type: alert_type.into(),
                rule_id: "rule-1".into(),
                legal_basis: "basis-1".into(),
                purpose: "control".into(),
                fields: shown.to_vec(),
                envelope_hash: envelope_hash.clone(),
                policy_version: VERSION.into(),
                audit_index: index,
                signed_at_ms: at_ms,
            };
            let stamp = self.signer.sign(messages::TAG_SHARE_STAMP, &stamp);
            let payload = Delivery {
                envelope: envelope.redact(|name| shown.iter().any(|f| f == name)),
                stamp: stamp.clone(),
            }
            .to_json();
            self.commit.deliveries.push(DeliveryRow {
                share_id: share_id.clone(),
                recipient: recipient.to_string(),
                audit_idx: index,
                stamp,
                created_at_ms: at_ms,
            });
            share_receipts.push(ShareReceipt {
                share_id: share_id.clone(),
                recipient: recipient.to_string(),
                rule_id: "rule-1".into(),
                legal_basis: "basis-1".into(),
                purpose: "control".into(),
                fields: shown.to_vec(),
                audit_index: index,
            });
            accepted
                .shares
                .push((share_id, recipient.to_string(), index, payload));
        }
        let mut denial_receipts = Vec::new();
        for recipient in denied {
            let mut e = base(EntryKind::Denial);
            e.recipient = Some(recipient.to_string());
            e.rule_id = Some("rule-2".into());
            e.reason_code = Some("no_rule".into());
            e.reason = Some("no rule allows it".into());
            let index = self.entry(e);
            denial_receipts.push(DenialReceipt {
                recipient: Some(recipient.to_string()),
                rule_id: Some("rule-2".into()),
                code: "no_rule".into(),
                message: "no rule allows it".into(),
                audit_index: index,
            });
            accepted.denials.push(index);
        }
        let receipt = Receipt {
            alert_id: Some(alert_id.into()),
            publisher: publisher.into(),
            envelope_hash: Some(envelope_hash.clone()),
            status: ReceiptStatus::Accepted,
            rejection: None,
            shares: share_receipts,
            denials: denial_receipts,
            audit_index: None,
            policy_version: VERSION.into(),
            received_at_ms: at_ms,
            signed_at_ms: at_ms,
        };
        let receipt = self.signer.sign(messages::TAG_RECEIPT, &receipt);
        accepted.receipt = serde_json::to_vec(&receipt).unwrap();
        self.commit.alerts.push(AlertRow {
            publisher: publisher.into(),
            alert_id: alert_id.into(),
            envelope_hash,
            alert_type: alert_type.into(),
            topic,
            issued_at_ms: at_ms - 5,
            received_at_ms: at_ms,
            policy_version: VERSION.into(),
            signed_envelope: accepted.signed_envelope.clone(),
            disclosures: envelope.disclosures.clone(),
            receipt,
        });
        accepted
    }

    /// The recipient acknowledges shares of `alert` in one signed message.
    fn ack(&mut self, at_ms: i64, alert: &Accepted, recipient: &str) -> u64 {
        let (share_id, _, _, _) = alert
            .shares
            .iter()
            .find(|s| s.1 == recipient)
            .unwrap()
            .clone();
        let message = format!("{{\"ack\":\"{share_id}\"}}").into_bytes();
        let mut e = AuditEntry::new(EntryKind::Ack, at_ms);
        e.alert_id = Some(alert.alert_id.clone());
        e.publisher = Some(alert.publisher.clone());
        e.recipient = Some(recipient.into());
        e.topic = Some("welfare/incorrect-payment/ost".into());
        e.share_id = Some(share_id.clone());
        e.signature = Some("c2lnbmF0dXJl".into());
        e.policy_version = Some(VERSION.into());
        let index = self.entry(e);
        self.commit.acks.push(AckUpdate {
            share_id,
            recipient: recipient.into(),
            acked_at_ms: at_ms,
            ack_audit_idx: index,
            message_hash: hex::encode(sha2_256(&message)),
            ack_message: message.into(),
        });
        index
    }

    fn purge(&mut self, at_ms: i64, alert_type: &str, cutoff_ms: i64) -> u64 {
        let mut e = AuditEntry::new(EntryKind::RetentionPurge, at_ms);
        e.alert_type = Some(alert_type.into());
        e.reason = Some(format!(
            "content of 1 alerts and 1 deliveries received before {} purged (1 days of retention)",
            samverkan_sdk::time::format_ms(cutoff_ms)
        ));
        self.commit.purges.push(Purge {
            alert_type: alert_type.into(),
            cutoff_ms,
        });
        self.entry(e)
    }

    fn take(&mut self) -> Commit {
        std::mem::take(&mut self.commit)
    }

    async fn commit(&mut self, store: &Store) {
        let c = self.take();
        store.commit(&c).await.unwrap();
    }
}

fn sha2_256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn person(i: u64) -> String {
    let nine = format!("{:02}0101{:03}", 40 + i % 50, 1 + i % 900);
    let ten = samverkan_sdk::identifiers::with_check_digit(&nine).unwrap();
    format!("19{}-{}", &ten[..6], &ten[6..])
}

async fn open(backend: Backend) -> (TestDb, Store) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url).await.unwrap();
    (db, store)
}

/// Row counts of what a commit writes, to see that nothing was.
async fn counts(store: &Store) -> (u64, usize, u64, usize) {
    let (entries, _) = store.audit_extent().await.unwrap();
    let alerts = store
        .audit_query(&AuditFilter::default())
        .await
        .unwrap()
        .len();
    let deliveries = store.delivery_count("polisen").await.unwrap()
        + store.delivery_count("linkoping").await.unwrap();
    let tree = store.tree_hash_range(0, u64::MAX / 4).await.unwrap().len();
    (entries, alerts, deliveries, tree)
}

async fn a_failing_commit_writes_nothing(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut log = Log::new();
    log.policy_loaded(T0);
    let first = log.accept(
        T0 + 1,
        "forsakringskassan",
        "a-1",
        "welfare.incorrect_payment",
        &["polisen", "linkoping"],
        &["norrkoping"],
        &person(1),
    );
    log.commit(&store).await;
    let before = counts(&store).await;
    assert_eq!(before.0, 4);
    assert_eq!(before.2, 2);

    // A batch whose last row collides with a stored one: the alerts, the
    // entries, deliveries, tree hashes and subjects before it must not stay.
    let mut second = log.accept(
        T0 + 2,
        "polisen",
        "a-2",
        "welfare.incorrect_payment",
        &["linkoping"],
        &[],
        &person(2),
    );
    let mut c = log.take();
    let mut dup = c.alerts[0].clone();
    dup.publisher = first.publisher.clone();
    dup.alert_id = first.alert_id.clone();
    c.alerts.push(dup);
    assert!(store.commit(&c).await.is_err());
    assert_eq!(counts(&store).await, before);
    assert!(
        store
            .known_alerts(&[("polisen".into(), "a-2".into())])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_audit_index().await.unwrap(), 4);
    // The same batch without the collision commits whole.
    c.alerts.pop();
    store.commit(&c).await.unwrap();
    let after = counts(&store).await;
    assert_eq!(after.0, 5);
    assert_eq!(after.2, 3);
    second.shares.truncate(1);
    assert_eq!(
        store
            .audit_range(4, 5)
            .await
            .unwrap()
            .remove(0)
            .share_id
            .as_deref(),
        Some(second.shares[0].0.as_str())
    );
}

/// SQLite gets a commit's statements as scripts of a bounded length; a
/// commit of more statements is several scripts in one transaction.
async fn a_commit_longer_than_one_script_is_one_transaction(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut log = Log::new();
    log.policy_loaded(T0);
    let alerts: Vec<Accepted> = (0..80u64)
        .map(|i| {
            log.accept(
                T0 + i as i64,
                "forsakringskassan",
                &format!("a-{i}"),
                "welfare.incorrect_payment",
                &["polisen"],
                &[],
                &person(i),
            )
        })
        .collect();
    log.commit(&store).await;
    let ids: Vec<String> = alerts.iter().map(|a| a.shares[0].0.clone()).collect();
    assert_eq!(unacked_of_polisen(&store, &ids).await, 80);

    // Each acknowledgement at a time of its own is a statement of its own:
    // 80 of them, more than one script holds.
    for (i, a) in alerts.iter().enumerate() {
        log.ack(T0 + 1000 + i as i64, a, "polisen");
    }
    let mut c = log.take();
    let before = counts(&store).await;
    // A tree row that collides with a stored one, written after the
    // acknowledgements: nothing of the commit may stay.
    c.tree_hashes.push((0, [7; 32]));
    assert!(store.commit(&c).await.is_err());
    assert_eq!(counts(&store).await, before);
    assert_eq!(unacked_of_polisen(&store, &ids).await, 80);
    // Without it the whole commit lands.
    c.tree_hashes.pop();
    store.commit(&c).await.unwrap();
    assert_eq!(unacked_of_polisen(&store, &ids).await, 0);
    assert_eq!(counts(&store).await.0, before.0 + 80);
}

/// How many of `ids` are stored for `polisen` and not yet acknowledged.
async fn unacked_of_polisen(store: &Store, ids: &[String]) -> usize {
    store.unacked_among("polisen", ids).await.unwrap().len()
}

async fn audit_reads_filters_and_ranges(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut log = Log::new();
    assert_eq!(store.next_audit_index().await.unwrap(), 0);
    assert_eq!(store.audit_extent().await.unwrap(), (0, 0));
    log.policy_loaded(T0);
    let a = log.accept(
        T0 + 10,
        "forsakringskassan",
        "a-1",
        "welfare.incorrect_payment",
        &["polisen", "linkoping"],
        &["norrkoping"],
        &person(1),
    );
    let b = log.accept(
        T0 + 20,
        "skatteverket",
        "b-1",
        "welfare.company_flag",
        &["polisen", "linkoping"],
        &[],
        &person(2),
    );
    let written: Vec<AuditEntry> = log.commit.audit.clone();
    log.commit(&store).await;
    log.ack(T0 + 30, &a, "polisen");
    let ack = log.commit.audit[0].clone();
    log.commit(&store).await;

    assert_eq!(store.next_audit_index().await.unwrap(), 7);
    assert_eq!(store.audit_extent().await.unwrap(), (7, 7));
    let all = store.audit_range(0, 100).await.unwrap();
    assert_eq!(all[..6], written[..]);
    assert_eq!(all[6], ack);
    assert_eq!(store.audit_range(2, 4).await.unwrap(), written[2..4]);
    assert!(store.audit_range(7, 10).await.unwrap().is_empty());
    for (entry, leaf) in store.audit_range_with_leaves(0, 7).await.unwrap() {
        assert_eq!(leaf, entry.leaf_hash().to_vec());
    }

    let query = |f: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .audit_query(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.index)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        query(AuditFilter {
            alert_id: Some("a-1".into()),
            ..Default::default()
        })
        .await,
        vec![1, 2, 3, 6]
    );
    assert_eq!(
        query(AuditFilter {
            agency: Some("polisen".into()),
            ..Default::default()
        })
        .await,
        vec![1, 4, 6]
    );
    assert_eq!(
        query(AuditFilter {
            kind: Some(EntryKind::Denial),
            ..Default::default()
        })
        .await,
        vec![3]
    );
    assert_eq!(
        query(AuditFilter {
            alert_type: Some("welfare.company_flag".into()),
            ..Default::default()
        })
        .await,
        vec![4, 5]
    );
    assert_eq!(
        query(AuditFilter {
            from_ms: Some(T0 + 10),
            to_ms: Some(T0 + 30),
            limit: Some(3),
            ..Default::default()
        })
        .await,
        vec![1, 2, 3]
    );
    // Subject access: the entries about one person, not another's.
    assert_eq!(
        query(AuditFilter {
            subject_hash: Some(a.subject.clone()),
            ..Default::default()
        })
        .await,
        vec![1, 2, 3]
    );
    assert_eq!(
        query(AuditFilter {
            subject_hash: Some(b.subject.clone()),
            ..Default::default()
        })
        .await,
        vec![4, 5]
    );
    assert_eq!(
        store
            .audit_for_alert("b-1")
            .await
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let mut subjects = store.subjects_of_entries(0, 7).await.unwrap();
    subjects.sort_by_key(|(_, i)| *i);
    assert_eq!(
        subjects,
        vec![
            (a.subject.clone(), 1),
            (a.subject.clone(), 2),
            (a.subject.clone(), 3),
            (b.subject.clone(), 4),
            (b.subject.clone(), 5),
        ]
    );
    // The stored alerts of the share and denial entries, as recorded.
    let mut alerts = store.alerts_of_entries(0, 7).await.unwrap();
    alerts.sort_by(|x, y| x.alert_id.cmp(&y.alert_id));
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0].alert_id, "a-1");
    assert_eq!(alerts[0].content.as_deref(), Some(a.content.as_slice()));
    assert_eq!(alerts[0].signed_envelope, a.signed_envelope);
    assert_eq!(alerts[0].receipt, a.receipt);
    assert_eq!(alerts[0].received_at_ms, T0 + 10);
    assert_eq!(alerts[1].signed_envelope, b.signed_envelope);
    assert_eq!(store.alerts_of_entries(6, 7).await.unwrap().len(), 0);
    assert_eq!(
        store
            .signed_envelope("forsakringskassan", "a-1")
            .await
            .unwrap(),
        Some(a.signed_envelope.clone())
    );
    assert_eq!(
        store
            .alert_content("forsakringskassan", "a-1")
            .await
            .unwrap(),
        Some(a.content.clone())
    );
    assert_eq!(store.alert_content("polisen", "a-1").await.unwrap(), None);
    assert_eq!(store.rows_without_entries(7).await.unwrap(), (0, 0, 0));
    assert_eq!(store.rows_without_entries(4).await.unwrap().0, 2);
    assert!(store.policy_archived(VERSION).await.unwrap());
    assert!(!store.policy_archived("other").await.unwrap());
    assert_eq!(
        store.policy_versions().await.unwrap(),
        vec![(VERSION.to_string(), T0)]
    );
    assert_eq!(store.policy_files(VERSION).await.unwrap(), Some(Vec::new()));
}

async fn tree_hashes_proofs_and_roots(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut log = Log::new();
    let mut all = std::collections::BTreeMap::new();
    let mut roots = vec![log.frontier.root()];
    // Commits of varied sizes, so runs of hashes start and end anywhere.
    for (n, batch) in [1usize, 2, 5, 1, 17, 3, 64, 1, 40].iter().enumerate() {
        for i in 0..*batch {
            let mut e = AuditEntry::new(EntryKind::AuditorAccess, T0 + (n * 100 + i) as i64);
            e.reason = Some(format!("access {n}/{i}"));
            log.entry(e);
            roots.push(log.frontier.root());
        }
        all.extend(log.commit.tree_hashes.iter().copied());
        log.commit(&store).await;
    }
    let size = log.next;
    // Every stored hash by index, singly, as a set and as ranges.
    let indexes: Vec<u64> = all.keys().copied().collect();
    let found = store.tree_hashes(&indexes).await.unwrap();
    assert_eq!(found.len(), all.len());
    for (i, h) in &all {
        assert_eq!(found.get(i), Some(h));
    }
    assert!(
        store
            .tree_hashes(&[all.len() as u64 + 5])
            .await
            .unwrap()
            .is_empty()
    );
    let range = store.tree_hash_range(0, u64::MAX / 4).await.unwrap();
    assert_eq!(range, all.iter().map(|(i, h)| (*i, *h)).collect::<Vec<_>>());
    for (from, to) in [(0, 1), (3, 9), (10, 11), (17, 90), (90, 400)] {
        let got = store.tree_hash_range(from, to).await.unwrap();
        let want: Vec<(u64, [u8; 32])> = all.range(from..to).map(|(i, h)| (*i, *h)).collect();
        assert_eq!(got, want, "[{from}, {to})");
    }
    // The frontier reloads, roots and proofs come out of the stored tree.
    for s in [1, 2, 7, 64, size] {
        let f = Frontier::load(&store, s).await.unwrap();
        assert_eq!(f.root(), roots[s as usize]);
        assert_eq!(stored_root(&store, s).await.unwrap(), roots[s as usize]);
    }
    let entries = store.audit_range(0, size).await.unwrap();
    for (index, s) in [(0, 1), (0, size), (5, 9), (77, 100), (size - 1, size)] {
        let proof = inclusion_proof(&store, s, index).await.unwrap();
        verify_inclusion(
            index,
            s,
            &entries[index as usize].leaf_hash(),
            &proof,
            &roots[s as usize],
        )
        .unwrap();
    }
    for (old, new) in [(1, 2), (3, 9), (64, size), (1, size)] {
        let proof = consistency_proof(&store, new, old).await.unwrap();
        verify_consistency(old, &roots[old as usize], new, &roots[new as usize], &proof).unwrap();
    }
}

async fn checkpoints_and_cosignatures(backend: Backend) {
    let (_db, store) = open(backend).await;
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    let cp = |size: u64| StoredCheckpoint {
        size,
        root: [size as u8; 32],
        at_ms: T0 + size as i64,
        note: format!("note {size}\n"),
    };
    for size in [0, 3, 10, 11, 40] {
        store.insert_checkpoint(&cp(size)).await.unwrap();
    }
    // Stored once: a second insert of a size changes nothing.
    let mut again = cp(10);
    again.note = "other".into();
    store.insert_checkpoint(&again).await.unwrap();
    assert_eq!(store.checkpoint_at(10).await.unwrap(), Some(cp(10)));
    assert_eq!(store.checkpoint_at(9).await.unwrap(), None);
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some(cp(40)));
    assert_eq!(store.checkpoint_covering(3).await.unwrap(), Some(cp(10)));
    assert_eq!(store.checkpoint_covering(2).await.unwrap(), Some(cp(3)));
    assert_eq!(store.checkpoint_covering(40).await.unwrap(), None);
    assert_eq!(
        store.checkpoints().await.unwrap(),
        vec![cp(0), cp(3), cp(10), cp(11), cp(40)]
    );
    assert_eq!(
        store.checkpoints_after(None, 2).await.unwrap(),
        vec![cp(0), cp(3)]
    );
    assert_eq!(
        store.checkpoints_after(Some(3), 2).await.unwrap(),
        vec![cp(10), cp(11)]
    );
    assert!(
        store
            .checkpoints_after(Some(40), 5)
            .await
            .unwrap()
            .is_empty()
    );

    let cosig = |size: u64, witness: &str| StoredCosignature {
        size,
        witness: witness.into(),
        vkey: format!("{witness}+key"),
        line: format!("— {witness} {size}\n"),
        at_ms: T0 + 100,
    };
    store
        .insert_cosignatures(&[cosig(10, "w2"), cosig(10, "w1"), cosig(11, "w1")])
        .await
        .unwrap();
    store.insert_cosignatures(&[cosig(10, "w1")]).await.unwrap();
    assert_eq!(
        store.cosignatures(10).await.unwrap(),
        vec![cosig(10, "w1"), cosig(10, "w2")]
    );
    assert!(store.cosignatures(3).await.unwrap().is_empty());
    assert_eq!(store.last_cosigned("w1+key").await.unwrap(), Some(11));
    assert_eq!(store.last_cosigned("w2+key").await.unwrap(), Some(10));
    assert_eq!(store.last_cosigned("w3+key").await.unwrap(), None);
}

async fn deliveries_acks_and_replay_pages(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut log = Log::new();
    log.policy_loaded(T0);
    let mut alerts = Vec::new();
    for i in 0..7u64 {
        alerts.push(log.accept(
            T0 + 10 * i as i64,
            "forsakringskassan",
            &format!("a-{i}"),
            "welfare.incorrect_payment",
            &["polisen", "linkoping"],
            &[],
            &person(i),
        ));
        if i % 3 == 2 {
            log.commit(&store).await;
        }
    }
    log.commit(&store).await;
    assert_eq!(store.delivery_count("polisen").await.unwrap(), 7);
    assert_eq!(store.delivery_count("skatteverket").await.unwrap(), 0);

    // Every share of polisen, page by page, exactly as first sent.
    let polisen: Vec<(String, Vec<u8>)> = alerts
        .iter()
        .map(|a| (a.shares[0].0.clone(), a.shares[0].3.clone()))
        .collect();
    let mut after = QueuePosition::START;
    let mut seen = Vec::new();
    loop {
        let page = store.replay_page("polisen", after, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        for d in &page {
            assert!(d.position > after);
            assert_eq!(d.topic, "welfare/incorrect-payment/ost");
            seen.push((d.share_id.clone(), d.payload.clone()));
        }
        after = page.last().unwrap().position;
        let remaining = store.replay_remaining("polisen", after).await.unwrap();
        assert_eq!(remaining, 7 - seen.len() as u64);
    }
    assert_eq!(seen, polisen);
    let pending = store.pending_deliveries("linkoping", 2).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].share_id, alerts[0].shares[1].0);
    assert_eq!(
        pending[0].payload.as_deref(),
        Some(alerts[0].shares[1].3.as_slice())
    );
    assert_eq!(pending[1].alert_id, "a-1");

    // Acknowledgements: the recipient's own unacknowledged shares only.
    let ids: Vec<String> = alerts[..3].iter().map(|a| a.shares[0].0.clone()).collect();
    let mut asked = ids.clone();
    asked.push(alerts[0].shares[1].0.clone()); // linkoping's
    asked.push("0123".into());
    let found = store.unacked_among("polisen", &asked).await.unwrap();
    let found: BTreeSet<String> = found.into_iter().map(|p| p.share_id).collect();
    assert_eq!(found, ids.iter().cloned().collect());
    let unacked = store.unacked_among("polisen", &ids[..1]).await.unwrap();
    assert_eq!(unacked[0].alert_id, "a-0");
    assert_eq!(unacked[0].publisher, "forsakringskassan");
    assert_eq!(unacked[0].topic, "welfare/incorrect-payment/ost");
    for a in &alerts[..3] {
        log.ack(T0 + 1000, a, "polisen");
    }
    log.commit(&store).await;
    assert_eq!(unacked_of_polisen(&store, &ids).await, 0);
    let page = store
        .replay_page("polisen", QueuePosition::START, 100)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|d| d.share_id.clone()).collect::<Vec<_>>(),
        polisen[3..]
            .iter()
            .map(|(s, _)| s.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        store
            .replay_remaining("polisen", QueuePosition::START)
            .await
            .unwrap(),
        4
    );
    // linkoping's queue is untouched; acknowledged deliveries stay stored.
    assert_eq!(
        store
            .replay_remaining("linkoping", QueuePosition::START)
            .await
            .unwrap(),
        7
    );
    assert_eq!(store.delivery_count("polisen").await.unwrap(), 7);

    // What `audit verify` reads: one delivery per share entry.
    let stored = store.deliveries_of_entries(0, log.next).await.unwrap();
    assert_eq!(stored.len(), 14);
    let first = stored
        .iter()
        .find(|d| d.audit_idx == alerts[0].shares[0].2)
        .unwrap();
    assert_eq!(first.share_id, alerts[0].shares[0].0);
    assert_eq!(first.recipient, "polisen");
    assert_eq!(first.alert_id, "a-0");
    assert_eq!(first.publisher, "forsakringskassan");
    assert_eq!(first.alert_type, "welfare.incorrect_payment");
    assert_eq!(first.created_at_ms, T0);
    assert_eq!(
        first.payload.as_deref(),
        Some(alerts[0].shares[0].3.as_slice())
    );
}

async fn retention_purges_content_and_keeps_evidence(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut log = Log::new();
    log.policy_loaded(T0);
    let old = log.accept(
        T0 + 10,
        "forsakringskassan",
        "old",
        "akrim.exploitation_signal",
        &["polisen"],
        &["norrkoping"],
        &person(1),
    );
    let other_type = log.accept(
        T0 + 11,
        "forsakringskassan",
        "other-type",
        "welfare.incorrect_payment",
        &["polisen"],
        &[],
        &person(2),
    );
    let young = log.accept(
        T0 + 500,
        "polisen",
        "young",
        "akrim.exploitation_signal",
        &["linkoping"],
        &[],
        &person(3),
    );
    log.commit(&store).await;
    let mut types = store.alert_types_with_content().await.unwrap();
    types.sort();
    assert_eq!(
        types,
        vec!["akrim.exploitation_signal", "welfare.incorrect_payment"]
    );
    assert_eq!(
        store
            .purgeable("akrim.exploitation_signal", T0 + 100)
            .await
            .unwrap(),
        (1, 1)
    );
    assert_eq!(
        store
            .purgeable("akrim.exploitation_signal", T0)
            .await
            .unwrap(),
        (0, 0)
    );

    log.purge(T0 + 600, "akrim.exploitation_signal", T0 + 100);
    log.commit(&store).await;
    // The content of the old alert and its delivery are gone ...
    assert_eq!(
        store
            .alert_content("forsakringskassan", "old")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .purgeable("akrim.exploitation_signal", T0 + 100)
            .await
            .unwrap(),
        (0, 0)
    );
    let deliveries = store.deliveries_of_entries(0, log.next).await.unwrap();
    let purged = deliveries
        .iter()
        .find(|d| d.audit_idx == old.shares[0].2)
        .unwrap();
    assert_eq!(purged.payload, None);
    // ... and no field value of it is stored anywhere any more.
    let known = store
        .known_alerts(&[("forsakringskassan".into(), "old".into())])
        .await
        .unwrap();
    let receipt = &known[&("forsakringskassan".to_string(), "old".to_string())].receipt;
    let alerts = store.alerts_of_entries(0, log.next).await.unwrap();
    let old_row = alerts.iter().find(|a| a.alert_id == "old").unwrap();
    assert_eq!(old_row.content, None);
    let secret = person(1);
    for bytes in [&old_row.signed_envelope, receipt] {
        assert!(!String::from_utf8_lossy(bytes).contains(&secret[2..8]));
    }
    // What remains is the evidence: the signed envelope, the receipt.
    assert_eq!(old_row.signed_envelope, old.signed_envelope);
    assert_eq!(*receipt, old.receipt);
    // A purged share is not delivered any more; the others are.
    let page = store
        .replay_page("polisen", QueuePosition::START, 10)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|d| d.share_id.clone()).collect::<Vec<_>>(),
        vec![other_type.shares[0].0.clone()]
    );
    assert_eq!(
        store
            .replay_remaining("polisen", QueuePosition::START)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.alert_content("polisen", "young").await.unwrap(),
        Some(young.content.clone())
    );
    assert_eq!(
        store
            .replay_page("linkoping", QueuePosition::START, 10)
            .await
            .unwrap()[0]
            .payload,
        young.shares[0].3
    );
    let mut types = store.alert_types_with_content().await.unwrap();
    types.sort();
    assert_eq!(
        types,
        vec!["akrim.exploitation_signal", "welfare.incorrect_payment"]
    );
    // Purging everything leaves no content of any type.
    log.purge(T0 + 700, "akrim.exploitation_signal", T0 + 1000);
    log.purge(T0 + 700, "welfare.incorrect_payment", T0 + 1000);
    log.commit(&store).await;
    assert!(store.alert_types_with_content().await.unwrap().is_empty());
    assert!(
        store
            .replay_page("linkoping", QueuePosition::START, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn known_alerts_find_resends(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut log = Log::new();
    log.policy_loaded(T0);
    let mut accepted = Vec::new();
    for i in 0..5u64 {
        let publisher = if i % 2 == 0 {
            "polisen"
        } else {
            "skatteverket"
        };
        accepted.push(log.accept(
            T0 + i as i64,
            publisher,
            &format!("alert-{i}"),
            "welfare.incorrect_payment",
            &["linkoping"],
            if i == 3 { &["norrkoping"] } else { &[] },
            &person(i),
        ));
    }
    log.commit(&store).await;
    let mut keys: Vec<(String, String)> = accepted
        .iter()
        .map(|a| (a.publisher.clone(), a.alert_id.clone()))
        .collect();
    // The same alert id from another publisher is another alert.
    keys.push(("skatteverket".into(), "alert-0".into()));
    keys.push(("polisen".into(), "unknown".into()));
    let known = store.known_alerts(&keys).await.unwrap();
    assert_eq!(known.len(), 5);
    for a in &accepted {
        let k = &known[&(a.publisher.clone(), a.alert_id.clone())];
        assert_eq!(k.envelope_hash, a.envelope_hash);
        // The receipt to send again is the one first sent, byte for byte.
        assert_eq!(k.receipt, a.receipt);
    }
    assert!(store.known_alerts(&[]).await.unwrap().is_empty());
}

/// The database written by the broker before migration 4 (alerts, shares,
/// denials, rejections, acknowledgements, retention purges, checkpoints):
/// `tests/fixtures/v3.*`, made with the generator of `tests/fill.rs` and
/// the development keys in `certs-dev`.
async fn fixture_of_migration_3(backend: Backend) -> TestDb {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let db = TestDb::new(backend).await;
    match backend {
        Backend::Sqlite => {
            std::fs::copy(fixtures.join("v3.sqlite"), db.sqlite_path()).unwrap();
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let dump = std::fs::read_to_string(fixtures.join("v3.postgres.sql")).unwrap();
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }
    db
}

/// An alert as the old layout holds it: publisher, alert id, alert type,
/// signed envelope, content, receipt.
type OldAlert = (String, String, String, Vec<u8>, Option<Vec<u8>>, Vec<u8>);
/// A delivery as the old layout holds it: audit index, recipient, created,
/// payload, acknowledged.
type OldDelivery = (i64, String, i64, Option<Vec<u8>>, Option<i64>);

/// What the old layout holds, read with plain SQL before the migration.
struct OldLayout {
    alerts: Vec<OldAlert>,
    deliveries: Vec<OldDelivery>,
    tree: Vec<(u64, [u8; 32])>,
    subjects: BTreeSet<(String, u64)>,
}

async fn read_old_layout(url: &str) -> OldLayout {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let alerts = sqlx::query(
        "SELECT publisher, alert_id, alert_type, signed_envelope, content, receipt FROM alerts",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("publisher"),
            r.get("alert_id"),
            r.get("alert_type"),
            r.get("signed_envelope"),
            r.get("content"),
            r.get("receipt"),
        )
    })
    .collect();
    let deliveries = sqlx::query(
        "SELECT audit_idx, recipient, created_at_ms, payload, acked_at_ms FROM deliveries ORDER BY created_at_ms, audit_idx",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("audit_idx"),
            r.get("recipient"),
            r.get("created_at_ms"),
            r.get("payload"),
            r.get("acked_at_ms"),
        )
    })
    .collect();
    let tree = sqlx::query("SELECT idx, hash FROM tree_hashes ORDER BY idx")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let idx: i64 = r.get("idx");
            let hash: Vec<u8> = r.get("hash");
            (idx as u64, hash.try_into().unwrap())
        })
        .collect();
    let subjects = sqlx::query("SELECT subject_hash, idx FROM audit_subjects")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("subject_hash"), r.get::<i64, _>("idx") as u64))
        .collect();
    conn.close().await.unwrap();
    OldLayout {
        alerts,
        deliveries,
        tree,
        subjects,
    }
}

async fn a_store_of_migration_3_is_converted(backend: Backend) {
    use samverkan_broker::audit::verify::verify_log;
    use samverkan_sdk::keys::KeyRegistry;
    let db = fixture_of_migration_3(backend).await;
    let old = read_old_layout(&db.url).await;
    assert!(old.alerts.iter().any(|a| a.4.is_none()), "no purged alert");
    assert!(
        old.deliveries.iter().any(|d| d.4.is_some()),
        "no acknowledged share"
    );
    assert!(
        old.deliveries.iter().any(|d| d.3.is_none()),
        "no purged share"
    );

    let store = Store::open(&db.url).await.unwrap();
    // Opening again finds nothing left to convert.
    Store::open(&db.url).await.unwrap().close().await;

    // `audit verify` accepts it, with the same counts the old layout gave.
    let keys = KeyRegistry::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs-dev/broker-keys.toml"),
    )
    .unwrap();
    let report = verify_log(&store, &keys, &[], |_, _| {}).await.unwrap();
    let (entries, _) = store.audit_extent().await.unwrap();
    assert_eq!(report.entries, entries);
    assert_eq!(report.alerts, old.alerts.len() as u64);
    assert_eq!(report.deliveries, old.deliveries.len() as u64);
    let purged = old.alerts.iter().filter(|a| a.4.is_none()).count()
        + old.deliveries.iter().filter(|d| d.3.is_none()).count();
    assert_eq!(report.purged, purged as u64);

    // The tree, hash for hash; roots, inclusion and consistency proofs
    // against every signed checkpoint.
    assert_eq!(
        store.tree_hash_range(0, u64::MAX / 4).await.unwrap(),
        old.tree
    );
    let checkpoints = store.checkpoints().await.unwrap();
    assert!(checkpoints.len() > 3);
    let log = store.audit_range(0, entries).await.unwrap();
    let mut previous: Option<&StoredCheckpoint> = None;
    for cp in &checkpoints {
        assert_eq!(stored_root(&store, cp.size).await.unwrap(), cp.root);
        for index in [0, cp.size / 2, cp.size.saturating_sub(1)] {
            if index >= cp.size {
                continue;
            }
            let proof = inclusion_proof(&store, cp.size, index).await.unwrap();
            verify_inclusion(
                index,
                cp.size,
                &log[index as usize].leaf_hash(),
                &proof,
                &cp.root,
            )
            .unwrap();
        }
        if let Some(p) = previous.filter(|p| p.size > 0) {
            let proof = consistency_proof(&store, cp.size, p.size).await.unwrap();
            verify_consistency(p.size, &p.root, cp.size, &cp.root, &proof).unwrap();
        }
        previous = Some(cp);
    }

    // Subject lookups.
    let subjects: BTreeSet<(String, u64)> = store
        .subjects_of_entries(0, entries)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(subjects, old.subjects);
    for (hash, _) in old.subjects.iter().take(5) {
        let want: Vec<u64> = old
            .subjects
            .iter()
            .filter(|(h, _)| h == hash)
            .map(|(_, i)| *i)
            .collect();
        let got: Vec<u64> = store
            .audit_query(&AuditFilter {
                subject_hash: Some(hash.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(got, want);
    }

    // Every alert: its evidence, its content unless purged, the receipt a
    // resend gets, byte for byte.
    for (publisher, alert_id, _, signed_envelope, content, receipt) in &old.alerts {
        assert_eq!(
            store
                .signed_envelope(publisher, alert_id)
                .await
                .unwrap()
                .as_ref(),
            Some(signed_envelope)
        );
        assert_eq!(
            &store.alert_content(publisher, alert_id).await.unwrap(),
            content
        );
        let known = store
            .known_alerts(&[(publisher.clone(), alert_id.clone())])
            .await
            .unwrap();
        assert_eq!(
            &known[&(publisher.clone(), alert_id.clone())].receipt,
            receipt
        );
    }

    // Replay: each recipient's unacknowledged, unpurged shares, in order,
    // exactly as first sent; acknowledged ones stay acknowledged.
    let recipients: BTreeSet<String> = old.deliveries.iter().map(|d| d.1.clone()).collect();
    for recipient in &recipients {
        let want: Vec<Vec<u8>> = old
            .deliveries
            .iter()
            .filter(|d| &d.1 == recipient && d.4.is_none())
            .filter_map(|d| d.3.clone())
            .collect();
        let got: Vec<Vec<u8>> = store
            .replay_page(recipient, QueuePosition::START, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.payload)
            .collect();
        assert_eq!(got, want, "replay of {recipient}");
        assert_eq!(
            store
                .replay_remaining(recipient, QueuePosition::START)
                .await
                .unwrap(),
            want.len() as u64
        );
    }

    // Retention: the same content is left to purge, and purging it leaves none.
    let mut types: Vec<String> = old
        .alerts
        .iter()
        .filter(|a| a.4.is_some())
        .map(|a| a.2.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut stored_types = store.alert_types_with_content().await.unwrap();
    stored_types.sort();
    assert_eq!(stored_types, types);
    let end = i64::MAX / 2;
    let mut purges = Vec::new();
    for t in types.drain(..) {
        let alerts = old
            .alerts
            .iter()
            .filter(|a| a.2 == t && a.4.is_some())
            .count();
        let (a, _) = store.purgeable(&t, end).await.unwrap();
        assert_eq!(a, alerts as u64, "{t}");
        purges.push(Purge {
            alert_type: t,
            cutoff_ms: end,
        });
    }
    store
        .commit(&Commit {
            purges,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.alert_types_with_content().await.unwrap().is_empty());
    for recipient in &recipients {
        assert_eq!(
            store
                .replay_remaining(recipient, QueuePosition::START)
                .await
                .unwrap(),
            0
        );
    }
    for (publisher, alert_id, ..) in &old.alerts {
        assert_eq!(
            store.alert_content(publisher, alert_id).await.unwrap(),
            None
        );
    }
}

/// Two stores on one database, as two nodes: an append waits for the other
/// store's append to end and continues the log after it; a draft that does
/// not continue the log is refused and writes nothing.
async fn appends_from_two_stores_follow_one_another(backend: Backend) {
    let (db, a) = open(backend).await;
    let b = Store::open(&db.url).await.unwrap();
    let mut log = Log::new();
    log.policy_loaded(T0);
    let first = a.begin_append().await.unwrap();
    assert_eq!(first.next(), 0);
    let other = b.clone();
    let mut second = tokio::spawn(async move { other.begin_append().await });
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a second append began while the first was open"
    );
    if backend == Backend::Postgres {
        // A holder that never finishes: the waiting node gives up after
        // the lock timeout instead of waiting without end.
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), &mut second)
            .await
            .expect("no lock timeout within 30 s")
            .unwrap();
        let error = waited.unwrap_err().to_string();
        assert!(error.contains("lock timeout"), "{error}");
        let other = b.clone();
        second = tokio::spawn(async move { other.begin_append().await });
    }
    a.finish_append(first, &log.commit).await.unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(
        second.next(),
        1,
        "the second append continues after the first"
    );

    let mut stale = Log::new();
    stale.policy_loaded(T0);
    let refused = b.finish_append(second, &stale.commit).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("does not continue a log of 1 entries"),
        "{refused}"
    );
    assert_eq!(a.next_audit_index().await.unwrap(), 1);
    b.close().await;
}

/// Shares handed off in a commit are claimed by the node holding their
/// recipient: each once, only for the recipients asked, not when already
/// acknowledged, exactly as first sent; rows claimed by one node are skipped
/// by another until the first has published and deleted them (PostgreSQL);
/// a replay's start drops the rest.
async fn handed_off_shares_are_claimed_once_by_their_recipients_node(backend: Backend) {
    let (db, store) = open(backend).await;
    let mut log = Log::new();
    log.policy_loaded(T0);
    let mut alerts = Vec::new();
    for i in 0..4u64 {
        alerts.push(log.accept(
            T0 + i as i64,
            "forsakringskassan",
            &format!("h-{i}"),
            "welfare.incorrect_payment",
            &["polisen", "linkoping"],
            &[],
            &person(i),
        ));
    }
    log.commit.handoffs = log.commit.deliveries.iter().map(HandoffRow::from).collect();
    log.commit(&store).await;
    let depths = store.handoff_depths().await.unwrap();
    assert_eq!(
        depths,
        [("linkoping".to_string(), 4), ("polisen".to_string(), 4)]
    );

    // Polisen acknowledges its first share before it is claimed.
    assert_eq!(alerts[0].shares[0].1, "polisen");
    log.ack(T0 + 100, &alerts[0], "polisen");
    log.commit(&store).await;

    let polisen = ["polisen".to_string()];
    let first = store.claim_handoffs(&polisen, 2).await.unwrap();
    assert_eq!(first.rows(), 2);
    let payloads = |c: &samverkan_broker::store::Claim| -> Vec<Vec<u8>> {
        c.handoffs.iter().map(|h| h.payload.clone()).collect()
    };
    assert_eq!(
        payloads(&first),
        [alerts[1].shares[0].3.clone()],
        "the acknowledged share is not sent"
    );
    if backend == Backend::Postgres {
        let other = Store::open(&db.url).await.unwrap();
        let beside = other.claim_handoffs(&polisen, 10).await.unwrap();
        assert_eq!(
            payloads(&beside),
            [alerts[2].shares[0].3.clone(), alerts[3].shares[0].3.clone()],
            "another node skips the rows claimed and takes the rest"
        );
        drop(beside);
        other.close().await;
    }
    store.finish_claim(first).await.unwrap();
    let rest = store
        .claim_handoffs(&["skatteverket".to_string(), "polisen".to_string()], 10)
        .await
        .unwrap();
    assert_eq!(
        payloads(&rest),
        [alerts[2].shares[0].3.clone(), alerts[3].shares[0].3.clone()],
        "rows not deleted by an unfinished claim are claimed again"
    );
    assert!(
        rest.handoffs
            .iter()
            .all(|h| h.recipient == "polisen" && h.topic == "welfare/incorrect-payment/ost")
    );
    store.finish_claim(rest).await.unwrap();
    assert_eq!(store.claim_handoffs(&polisen, 10).await.unwrap().rows(), 0);

    // The undelivered shares of resent alerts: all but the acknowledged one.
    let keys: Vec<(String, String)> = alerts[..2]
        .iter()
        .map(|a| (a.publisher.clone(), a.alert_id.clone()))
        .collect();
    let undelivered: Vec<(String, u64)> = store
        .undelivered_of(&keys)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.recipient, h.audit_idx))
        .collect();
    assert_eq!(
        undelivered,
        [
            ("linkoping".to_string(), alerts[0].shares[1].2),
            ("polisen".to_string(), alerts[1].shares[0].2),
            ("linkoping".to_string(), alerts[1].shares[1].2),
        ]
    );
    assert_eq!(store.drop_handoffs("linkoping").await.unwrap(), 4);
    assert!(store.handoff_depths().await.unwrap().is_empty());
}
