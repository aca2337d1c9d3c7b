//! The pipeline every alert goes through, and the only component that
//! crosses tenants.
//!
//! The router is an in-process client of rumqttd subscribed to
//! `/tenants/+/out/#` (alerts), `/tenants/+/acks` and `/tenants/+/replay`.
//! It takes whatever has arrived as one batch and, per alert:
//!
//! 1. checks size and logical topic, and applies the publisher's rate limit
//!    (before any signature work: a flood costs a JSON parse, a receipt and
//!    an audit row per alert, not a signature check);
//! 2. parses and authenticates the envelope (publisher = tenant, key
//!    registered and valid, signature, disclosures, clock skew);
//! 3. validates the fields against the alert type's schema;
//! 4. decides shares and denials with the policy;
//! 5. detects resends by alert id (same content: the original receipt again;
//!    other content: refused);
//!
//! then writes the whole batch — alerts, one audit entry per share, denial
//! and rejection, and the delivery queue — in **one transaction** (group
//! commit), and only after it has committed publishes the deliveries (only
//! the permitted disclosures plus a broker-signed stamp) and the
//! broker-signed receipts. If the database fails, nothing of the batch is
//! sent: publishers get no receipt and resend (fail closed).
//!
//! Two batches overlap: while one commits (in a task of its own, which
//! then sends its answers), the next is checked and decided on a blocking
//! thread ([`decide`]). Only one batch is ever in flight, so answers stay in
//! order and memory stays bounded; a batch built on one that then fails to
//! commit is dropped unanswered, and the appender's state is reread.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use samverkan_sdk::envelope::Envelope;
use samverkan_sdk::messages::{self, Ack, ReplayRequest, ReplayStatus, Signed};
use samverkan_sdk::time::Clock;
use samverkan_sdk::topics::{self, BrokerTopic};
use sha2::Digest as _;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

mod decide;
mod replay;

pub use self::decide::BatchDecider;
use self::decide::{Arrived, Decider, b64, take_index};
use self::replay::Pacer;

use crate::audit::subject::SubjectHasher;
use crate::audit::tree::Frontier;
use crate::audit::{AuditEntry, EntryKind};
use crate::config::AuditSettings;
use crate::limits::PublishLimits;
use crate::mqtt::RouterLink;
use crate::policy::{PolicyHandle, PolicySet};
use crate::signer::BrokerSigner;
use crate::store::{AckUpdate, Commit, KnownAlert, Purge, Store, StoreError, StoredCheckpoint};
use crate::witness::{Coordinator, SignedHead, WitnessAnswer, WitnessBoard};

/// The topic filters the router subscribes to.
pub const ROUTER_FILTERS: [&str; 4] = [
    "/tenants/+/out/#",
    "/tenants/+/acks",
    "/tenants/+/replay",
    "/tenants/+/witness/#",
];

/// Limits of the pipeline.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Largest alert payload accepted; larger ones are refused with a receipt.
    pub max_payload_bytes: usize,
    /// Largest allowed difference between `issued_at` and the broker's clock.
    pub max_clock_skew_ms: i64,
    /// Most messages handled (and committed) as one batch.
    pub batch_max: usize,
    /// Most deliveries sent per replay request.
    pub replay_limit: u32,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_clock_skew_ms: 5 * 60 * 1000,
            batch_max: 512,
            replay_limit: 10_000,
        }
    }
}

/// Why the router stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RouterError {
    /// rumqttd's router went away.
    #[error("embedded MQTT router link failed: {0}")]
    Link(String),
    /// The store failed at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Work the router is asked to do besides routing, so that every audit
/// entry is appended by the one appender.
#[derive(Debug)]
pub enum RouterCommand {
    /// Sign and publish a checkpoint of the log (if it grew).
    Checkpoint {
        /// Answered with the checkpoint's size.
        done: Option<oneshot::Sender<Result<u64, String>>>,
    },
    /// Purge content past its retention period.
    Purge {
        /// Answered with how many alerts and deliveries were purged.
        done: Option<oneshot::Sender<Result<(u64, u64), String>>>,
    },
    /// An auditor used the console: record it as an `auditor_access` entry
    /// before the console answers.
    RecordAccess {
        /// What was done, by whom.
        access: AccessRecord,
        /// Answered with the entry's index once committed.
        done: oneshot::Sender<Result<u64, String>>,
    },
    /// A new policy is in force: record it, and the keys it revokes.
    PolicyChanged {
        /// The policy that was in force before.
        previous: Arc<PolicySet>,
        /// Answered once recorded.
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
}

/// One use of the auditor console, to be recorded (PROTOCOL.md 13.8.2,
/// `auditor_access`). Holds no personal data: a subject only as its hash.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The auditor's organization (O=): an agency, or the supervisor's body.
    pub organization: String,
    /// What was done: `search`, `entry`, `case`, `evidence`, `subject`, `export`, `consistency`.
    pub action: String,
    /// Who (certificate common name and serial) and what was asked.
    pub reason: String,
    /// The alert looked at (case pages).
    pub alert_id: Option<String>,
    /// The subject hash looked up (subject searches).
    pub subject_hash: Option<String>,
}

/// A message taken from rumqttd.
enum Inbound {
    Alert {
        tenant: String,
        logical: String,
        payload: Bytes,
    },
    Ack {
        tenant: String,
        payload: Bytes,
    },
    Replay {
        tenant: String,
        payload: Bytes,
    },
}

/// Hands messages to rumqttd from a thread of its own: rumqttd's `LinkTx`
/// blocks while rumqttd's router is busy, which must not stall the async
/// runtime. Order is kept; a full queue makes the router wait (back-pressure).
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl Outbox {
    fn spawn(mut link: rumqttd::local::LinkTx) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, Vec<u8>)>(4096);
        let spawned = std::thread::Builder::new()
            .name("samverkan-outbox".into())
            .spawn(move || {
                while let Some((topic, payload)) = rx.blocking_recv() {
                    if let Err(e) = link.publish(topic.clone(), payload) {
                        error!(topic, error = %e, "could not hand a message to the embedded broker");
                    }
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "could not start the outbox thread; nothing will be delivered");
        }
        Self { tx }
    }

    async fn send(&self, topic: String, payload: Vec<u8>) {
        if self.tx.send((topic, payload)).await.is_err() {
            error!("the outbox thread has stopped; a message was not delivered");
        }
    }
}

/// What a router works with.
pub struct RouterParts {
    /// Its link into rumqttd.
    pub link: RouterLink,
    /// The policy in force.
    pub policy: Arc<PolicyHandle>,
    /// The database.
    pub store: Store,
    /// The broker's signing key.
    pub signer: Arc<BrokerSigner>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The subject hash key.
    pub subjects: SubjectHasher,
    /// Checkpoint and purge requests.
    pub commands: mpsc::Receiver<RouterCommand>,
    /// Where the router counts what it does.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where the witness coordinator shows what it knows.
    pub witnesses: Arc<WitnessBoard>,
}

/// The router task's state.
pub struct Router {
    /// rumqttd's link, until [`Router::run`] hands it to the intake task.
    rx: Option<LinkRx>,
    outbox: Outbox,
    policy: Arc<PolicyHandle>,
    store: Store,
    signer: Arc<BrokerSigner>,
    settings: RouterSettings,
    clock: Arc<dyn Clock>,
    limits: Arc<PublishLimits>,
    limits_version: String,
    recorded_policy: Option<String>,
    replays: DefaultKeyedRateLimiter<String>,
    /// The replays in progress, paced by the recipients' acknowledgements.
    pacer: Pacer,
    next_index: u64,
    resync: bool,
    commands: mpsc::Receiver<RouterCommand>,
    audit: AuditSettings,
    subjects: SubjectHasher,
    /// The tree as it will be once every batch built so far has committed.
    frontier: Frontier,
    /// The tree as committed (what checkpoints sign).
    committed: Frontier,
    checkpointed: Option<u64>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The batch whose transaction runs while the next one is prepared.
    in_flight: Option<InFlight>,
    /// Each new checkpoint, for the witness coordinator.
    heads: watch::Sender<Option<Arc<SignedHead>>>,
    witnesses: Arc<WitnessBoard>,
}

/// A batch being committed by a task of its own, which sends the batch's
/// deliveries and receipts once the transaction has committed. The router
/// meanwhile checks and decides the next batch (signatures, policy,
/// signing), so that CPU work and the database's commit overlap; at most
/// one batch is in flight, which keeps answers in order and memory bounded.
struct InFlight {
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
    /// Its accepted alerts by (publisher, alert id), so that a resend
    /// arriving meanwhile is answered like one of a committed alert.
    alerts: HashMap<(String, String), KnownAlert>,
    /// The shares it records as acknowledged.
    acked: std::collections::HashSet<String>,
    /// The tree after it.
    frontier: Frontier,
}

/// What a committed batch sends, in this order.
struct Answers {
    deliveries: Vec<(String, Vec<u8>)>,
    receipts: Vec<(String, Vec<u8>)>,
}

impl Router {
    /// A router over `parts.link`, deciding with `parts.policy` and recording in `parts.store`.
    pub fn new(parts: RouterParts, settings: RouterSettings, audit: AuditSettings) -> Self {
        let RouterParts {
            link,
            policy,
            store,
            signer,
            clock,
            subjects,
            commands,
            metrics,
            witnesses,
        } = parts;
        let current = policy.current();
        let limits = PublishLimits::from_policy(&current);
        let pacer = Pacer::new(settings.replay_limit);
        let quota = Quota::per_second(NonZeroU32::MIN)
            .allow_burst(NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN));
        Self {
            rx: Some(link.rx),
            outbox: Outbox::spawn(link.tx),
            policy,
            store,
            signer,
            settings,
            clock,
            limits: Arc::new(limits),
            limits_version: current.version().to_string(),
            recorded_policy: None,
            replays: RateLimiter::keyed(quota),
            pacer,
            next_index: 0,
            resync: true,
            commands,
            audit,
            subjects,
            frontier: Frontier::empty(),
            committed: Frontier::empty(),
            checkpointed: None,
            metrics,
            in_flight: None,
            heads: watch::channel(None).0,
            witnesses,
        }
    }

    /// Reads the appender's state (next index, tree frontier, last
    /// checkpoint) from the database, after start-up or a failed commit.
    /// Never called with a batch in flight.
    async fn sync(&mut self) -> Result<(), StoreError> {
        if !self.resync {
            return Ok(());
        }
        let next = self.store.next_audit_index().await?;
        let frontier = Frontier::load(&self.store, next).await?;
        let checkpointed = self.store.latest_checkpoint().await?.map(|c| c.size);
        self.next_index = next;
        self.committed = frontier.clone();
        self.frontier = frontier;
        self.checkpointed = checkpointed;
        self.resync = false;
        Ok(())
    }

    /// Appends the commit's entries to a copy of the tree, recording the
    /// new stored hashes in the commit; returns the tree after them.
    fn grow_tree(&mut self, commit: &mut Commit) -> Result<Frontier, StoreError> {
        let mut frontier = self.frontier.clone();
        for entry in &commit.audit {
            if entry.index != frontier.size() {
                self.resync = true;
                return Err(StoreError::Corrupt(format!(
                    "entry {} would be appended at position {}",
                    entry.index,
                    frontier.size()
                )));
            }
            commit
                .tree_hashes
                .extend(frontier.append(entry.leaf_hash()));
        }
        Ok(frontier)
    }

    /// Writes a commit made outside the batch pipeline (policy, purge) in one
    /// transaction and waits for it; the router's state moves on only if it
    /// committed. Never called with a batch in flight.
    async fn finish(&mut self, mut commit: Commit, next: u64) -> Result<(), StoreError> {
        let frontier = self.grow_tree(&mut commit)?;
        if let Err(e) = commit_counted(&self.store, &self.metrics, &commit, next).await {
            self.resync = true;
            return Err(e);
        }
        self.next_index = next;
        self.committed = frontier.clone();
        self.frontier = frontier;
        Ok(())
    }

    /// Waits for the batch in flight. False if it did not commit: its
    /// answers were never sent, and whatever was built on it is void.
    async fn settle(&mut self) -> bool {
        let Some(in_flight) = self.in_flight.take() else {
            return true;
        };
        let failure = match in_flight.task.await {
            Ok(Ok(())) => {
                self.committed = in_flight.frontier;
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the commit task ended abnormally: {e}"),
        };
        error!(error = %failure, "commit failed: nothing of that batch was answered (publishers will resend)");
        // The appender's state is reread before the next batch; the policy
        // in force is recorded again with it.
        self.resync = true;
        self.recorded_policy = None;
        false
    }

    /// Starts committing `commit` in a task of its own, which sends
    /// `answers` once it has committed.
    fn launch(&mut self, commit: Commit, next: u64, frontier: Frontier, answers: Answers) {
        let alerts = commit
            .alerts
            .iter()
            .map(|a| {
                (
                    (a.publisher.clone(), a.alert_id.clone()),
                    KnownAlert {
                        envelope_hash: a.envelope_hash.clone(),
                        receipt: a.receipt.clone(),
                    },
                )
            })
            .collect();
        let acked = commit.acks.iter().map(|a| a.share_id.clone()).collect();
        let (store, metrics, outbox) = (
            self.store.clone(),
            self.metrics.clone(),
            self.outbox.clone(),
        );
        let task = tokio::spawn(async move {
            commit_counted(&store, &metrics, &commit, next).await?;
            drop(commit);
            for (topic, payload) in answers.deliveries {
                outbox.send(topic, payload).await;
            }
            for (tenant, receipt) in answers.receipts {
                outbox.send(topics::receipts(&tenant), receipt).await;
            }
            Ok(())
        });
        self.next_index = next;
        self.frontier = frontier.clone();
        self.in_flight = Some(InFlight {
            task,
            alerts,
            acked,
            frontier,
        });
    }

    async fn handle(&mut self, command: RouterCommand) {
        if !self.settle().await {
            warn!("a command waits for the database after a failed commit");
        }
        match command {
            RouterCommand::Checkpoint { done } => {
                let result = self.checkpoint().await;
                if let Err(e) = &result {
                    error!(error = %e, "could not sign a checkpoint");
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            RouterCommand::PolicyChanged { previous, done } => {
                let result = self
                    .record_policy_change(&previous)
                    .await
                    .map_err(|e| e.to_string());
                if let Err(e) = &result {
                    error!(error = %e, "the policy change could not be recorded yet (it will be with the next batch)");
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            RouterCommand::RecordAccess { access, done } => {
                let result = self.record_access(access).await.map_err(|e| e.to_string());
                if let Err(e) = &result {
                    error!(error = %e, "a console access could not be recorded; it is refused");
                }
                let _ = done.send(result);
            }
            RouterCommand::Purge { done } => {
                let result = self.purge().await.map_err(|e| e.to_string());
                if let Err(e) = &result {
                    error!(error = %e, "retention purge failed (will be retried)");
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
        }
    }

    async fn record_start(&mut self) -> Result<(), StoreError> {
        self.sync().await?;
        let policy = self.policy.current();
        let mut next = self.next_index;
        let mut commit = Commit::default();
        self.record_policy(&policy, self.clock.now_ms(), &mut next, &mut commit)
            .await?;
        self.finish(commit, next).await?;
        self.recorded_policy = Some(policy.version().to_string());
        Ok(())
    }

    /// Records a newly loaded policy version and every key it newly revokes.
    async fn record_policy_change(&mut self, previous: &PolicySet) -> Result<(), StoreError> {
        self.sync().await?;
        let policy = self.policy.current();
        let now = self.clock.now_ms();
        let mut next = self.next_index;
        let mut commit = Commit::default();
        let record_load = self.recorded_policy.as_deref() != Some(policy.version());
        if record_load {
            self.record_policy(&policy, now, &mut next, &mut commit)
                .await?;
        }
        for key in policy.keys().iter() {
            let Some(revoked_at) = key.revoked_at_ms else {
                continue;
            };
            let before = previous
                .keys()
                .iter()
                .find(|k| k.owner == key.owner && k.key_id == key.key_id)
                .and_then(|k| k.revoked_at_ms);
            if before == Some(revoked_at) {
                continue;
            }
            let mut entry = AuditEntry::new(EntryKind::KeyRevoked, now);
            entry.index = take_index(&mut next);
            entry.publisher = Some(key.owner.clone());
            entry.policy_version = Some(policy.version().to_string());
            entry.reason_code = Some("key_revoked".into());
            entry.reason = Some(format!(
                "signing key `{}` of `{}` is revoked from {}{}",
                key.key_id,
                key.owner,
                samverkan_sdk::time::format_ms(revoked_at),
                key.revocation_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
            warn!(agency = %key.owner, key = %key.key_id, "signing key revoked by the new policy");
            commit.audit.push(entry);
        }
        if !commit.is_empty() {
            self.finish(commit, next).await?;
            if record_load {
                self.recorded_policy = Some(policy.version().to_string());
            }
        }
        self.refresh_limits(&policy);
        Ok(())
    }

    /// Appends one `auditor_access` entry (and its subject row) and commits it.
    async fn record_access(&mut self, access: AccessRecord) -> Result<u64, StoreError> {
        self.sync().await?;
        let policy = self.policy.current();
        let mut next = self.next_index;
        let mut entry = AuditEntry::new(EntryKind::AuditorAccess, self.clock.now_ms());
        let index = take_index(&mut next);
        entry.index = index;
        entry.recipient = Some(access.organization);
        entry.alert_id = access.alert_id;
        entry.policy_version = Some(policy.version().to_string());
        entry.reason_code = Some(access.action);
        entry.reason = Some(access.reason);
        let mut commit = Commit::default();
        if let Some(hash) = access.subject_hash {
            commit.subjects.push((hash.clone(), index));
            entry.subject_hashes = vec![hash];
        }
        commit.audit.push(entry);
        self.finish(commit, next).await?;
        Ok(index)
    }

    /// Signs, stores and publishes a checkpoint of the log as it is now,
    /// unless the last one already covers every entry.
    async fn checkpoint(&mut self) -> Result<u64, String> {
        self.sync().await.map_err(|e| e.to_string())?;
        let size = self.committed.size();
        if self.checkpointed == Some(size) {
            return Ok(size);
        }
        let now = self.clock.now_ms();
        let root = self.committed.root();
        let note = self
            .signer
            .sign_checkpoint(&self.audit.origin, size, &root, now, self.checkpointed)
            .map_err(|e| e.to_string())?;
        self.store
            .insert_checkpoint(&StoredCheckpoint {
                size,
                root,
                at_ms: now,
                note: note.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        self.checkpointed = Some(size);
        let policy = self.policy.current();
        for agency in policy.agencies().keys() {
            self.send(topics::checkpoint(agency), note.clone().into_bytes())
                .await;
        }
        self.heads.send_replace(Some(Arc::new(SignedHead {
            size,
            note,
            signed: Instant::now(),
        })));
        info!(size, root = %hex::encode(root), "audit checkpoint signed and published");
        Ok(size)
    }

    /// Purges alert content past its retention period, with one audit entry
    /// per alert type purged, in one transaction.
    async fn purge(&mut self) -> Result<(u64, u64), StoreError> {
        self.sync().await?;
        let policy = self.policy.current();
        let now = self.clock.now_ms();
        let mut next = self.next_index;
        let mut commit = Commit::default();
        let (mut alerts, mut deliveries) = (0, 0);
        let mut alert_types: std::collections::BTreeSet<String> =
            policy.alert_types().keys().cloned().collect();
        alert_types.extend(self.store.alert_types_with_content().await?);
        for alert_type in &alert_types {
            let days = policy.retention_days(alert_type);
            let cutoff = now - i64::from(days) * 86_400_000;
            let (a, d) = self.store.purgeable(alert_type, cutoff).await?;
            if a + d == 0 {
                continue;
            }
            alerts += a;
            deliveries += d;
            commit.purges.push(Purge {
                alert_type: alert_type.clone(),
                cutoff_ms: cutoff,
            });
            let mut entry = AuditEntry::new(EntryKind::RetentionPurge, now);
            entry.index = take_index(&mut next);
            entry.alert_type = Some(alert_type.clone());
            entry.policy_version = Some(policy.version().to_string());
            entry.reason_code = Some("retention".into());
            entry.reason = Some(format!(
                "content of {a} alerts and {d} deliveries received before {} purged ({days} days of retention)",
                samverkan_sdk::time::format_ms(cutoff)
            ));
            commit.audit.push(entry);
        }
        if !commit.is_empty() {
            self.finish(commit, next).await?;
            info!(
                alerts,
                deliveries, "content past its retention period purged"
            );
        }
        Ok((alerts, deliveries))
    }

    /// Runs until `shutdown` turns true: everything received before that is
    /// committed and answered before this returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), RouterError> {
        // The policy in force at start is an audit entry of its own (retried
        // with the first batch if the database is not there yet).
        if let Err(e) = self.record_start().await {
            warn!(error = %e, "the policy load could not be recorded yet");
        }
        let rx = self
            .rx
            .take()
            .ok_or_else(|| RouterError::Link("the router link was already taken".into()))?;
        // Witnesses are asked for cosignatures by a task of their own, so a
        // slow or absent witness never holds up the pipeline.
        let (answers, answers_rx) = mpsc::channel(WITNESS_ANSWERS);
        if let Ok(Some(latest)) = self.store.latest_checkpoint().await {
            self.heads.send_replace(Some(Arc::new(SignedHead {
                size: latest.size,
                note: latest.note,
                signed: Instant::now(),
            })));
        }
        let coordinator = Coordinator::new(
            self.store.clone(),
            self.policy.clone(),
            self.outbox.tx.clone(),
            self.witnesses.clone(),
            self.metrics.clone(),
        );
        let coordinator =
            tokio::spawn(coordinator.run(self.heads.subscribe(), answers_rx, shutdown.clone()));
        let (intake, mut queue) =
            spawn_intake(rx, self.settings.batch_max * INTAKE_BATCHES, answers);
        let mut pace = tokio::time::interval(PACE_EVERY);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break Ok(()),
                Some(command) = self.commands.recv() => self.handle(command).await,
                _ = pace.tick(), if self.pacer.active() => self.pace().await,
                batch = receive_batch(&mut queue, self.settings.batch_max) => match batch {
                    Some(batch) => self.process(batch).await,
                    None => break Err(RouterError::Link("rumqttd closed the router link".into())),
                },
            }
        };
        // Answer what was already taken from rumqttd.
        intake.abort();
        let mut rest = Vec::new();
        while let Ok(message) = queue.try_recv() {
            rest.push(message);
        }
        if !rest.is_empty() {
            self.process(rest).await;
        }
        self.settle().await;
        if let Err(e) = self.checkpoint().await {
            warn!(error = %e, "no final checkpoint at shutdown");
        }
        coordinator.abort();
        info!("router stopped");
        result
    }

    fn refresh_limits(&mut self, policy: &PolicySet) {
        if policy.version() != self.limits_version {
            self.limits = Arc::new(PublishLimits::from_policy(policy));
            self.limits_version = policy.version().to_string();
        }
    }

    async fn process(&mut self, batch: Vec<Inbound>) {
        if let Err(e) = self.sync().await {
            error!(error = %e, messages = batch.len(), "database unavailable: nothing of this batch is recorded or answered (publishers will resend)");
            return;
        }
        let now = self.clock.now_ms();
        let policy = self.policy.current();
        self.refresh_limits(&policy);
        let mut next = self.next_index;
        let mut commit = Commit::default();
        let messages = batch.len();

        if self.recorded_policy.as_deref() != Some(policy.version()) {
            match self
                .record_policy(&policy, now, &mut next, &mut commit)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    error!(error = %e, "database unavailable: batch dropped (fail closed)");
                    return;
                }
            }
        }

        // Parse alerts (no signature work yet); collect acks and replays.
        let mut alerts = Vec::new();
        let mut acks = Vec::new();
        let mut replays = Vec::new();
        for inbound in batch {
            match inbound {
                Inbound::Alert {
                    tenant,
                    logical,
                    payload,
                } => {
                    let parsed = Envelope::from_json(&payload);
                    alerts.push(Arrived {
                        tenant,
                        logical,
                        payload,
                        parsed,
                    });
                }
                Inbound::Ack { tenant, payload } => acks.push((tenant, payload)),
                Inbound::Replay { tenant, payload } => replays.push((tenant, payload)),
            }
        }
        let keys: Vec<(String, String)> = alerts.iter().filter_map(Arrived::key).collect();
        let known = match self.known_alerts(&keys).await {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        };

        // Signatures, policy and broker signatures on a blocking thread, so
        // that the batch in flight commits and connections are served meanwhile.
        let decider = Decider {
            policy: policy.clone(),
            settings: self.settings.clone(),
            limits: self.limits.clone(),
            signer: self.signer.clone(),
            subjects: self.subjects.clone(),
            now,
        };
        let decided = tokio::task::spawn_blocking(move || {
            let decided = decider.decide(alerts, &known, &mut next, &mut commit);
            (decided, next, commit)
        })
        .await;
        let (decided, decided_next, decided_commit) = match decided {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "deciding a batch failed: nothing of it is answered (publishers will resend)");
                return;
            }
        };
        next = decided_next;
        commit = decided_commit;

        // Acknowledgements.
        let mut acked = Vec::new();
        for (tenant, payload) in acks {
            match self
                .record_ack(&policy, &tenant, &payload, now, &mut next, &mut commit)
                .await
            {
                Ok(Some(share_ids)) => acked.push((tenant, share_ids)),
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "database unavailable: batch dropped (fail closed)");
                    return;
                }
            }
        }

        // One transaction for everything, committed while the next batch is
        // prepared; nothing is sent before it commits.
        let policy_recorded = commit
            .audit
            .iter()
            .any(|e| e.kind == EntryKind::PolicyLoaded);
        let frontier = match self.grow_tree(&mut commit) {
            Ok(f) => f,
            Err(e) => {
                error!(error = %e, "nothing of this batch is answered (publishers will resend)");
                return;
            }
        };
        if !self.settle().await {
            warn!(
                messages,
                "batch dropped: it was built on a batch that did not commit (publishers will resend)"
            );
            return;
        }
        let since = self.committed.size() - self.checkpointed.unwrap_or(0);
        if since >= self.audit.checkpoint_every_entries
            && let Err(e) = self.checkpoint().await
        {
            error!(error = %e, "could not sign a checkpoint");
        }
        if policy_recorded {
            self.recorded_policy = Some(policy.version().to_string());
        }
        self.metrics.accepted.inc_by(decided.accepted);
        self.metrics.resent.inc_by(decided.resent);
        for code in decided.rejected {
            self.metrics
                .rejected
                .get_or_create(&crate::metrics::CodeLabel { code })
                .inc();
        }
        self.metrics.batch_size.observe(messages as f64);
        let answers = Answers {
            deliveries: decided.deliveries,
            receipts: decided.receipts,
        };
        self.launch(commit, next, frontier, answers);
        // A verified acknowledgement shows what the recipient has taken,
        // whether or not it commits; it only opens the replay's window.
        for (tenant, share_ids) in acked {
            self.pacer.acked(&tenant, &share_ids);
        }
        for (tenant, payload) in replays {
            self.start_replay(&tenant, &payload);
        }
        self.pace().await;
    }

    /// Alerts accepted earlier, by (publisher, alert id): committed ones
    /// from the store, and those of the batch in flight.
    async fn known_alerts(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), KnownAlert>, StoreError> {
        let mut known = self.store.known_alerts(keys).await?;
        if let Some(in_flight) = &self.in_flight {
            for key in keys {
                if let Some(k) = in_flight.alerts.get(key) {
                    known.insert(key.clone(), k.clone());
                }
            }
        }
        Ok(known)
    }

    async fn send(&mut self, topic: String, payload: Vec<u8>) {
        self.outbox.send(topic, payload).await;
    }

    async fn record_policy(
        &mut self,
        policy: &PolicySet,
        now: i64,
        next: &mut u64,
        commit: &mut Commit,
    ) -> Result<(), StoreError> {
        let first = !self.store.policy_archived(policy.version()).await?;
        // The text is archived in the same transaction as the entry.
        commit.policy = Some(crate::store::PolicyArchive {
            version: policy.version().to_string(),
            files_json: serde_json::to_string(policy.files()).unwrap_or_default(),
            at_ms: now,
        });
        let mut entry = AuditEntry::new(EntryKind::PolicyLoaded, now);
        entry.index = take_index(next);
        entry.policy_version = Some(policy.version().to_string());
        entry.reason_code = Some(if first { "first_load" } else { "load" }.into());
        entry.reason = Some(format!(
            "policy {} in force ({} agencies, {} rules)",
            policy.short_version(),
            policy.agencies().len(),
            policy.rules().len()
        ));
        commit.audit.push(entry);
        info!(
            version = policy.version(),
            "policy version recorded in the audit log"
        );
        Ok(())
    }

    /// Verifies an acknowledgement and adds what it newly acknowledges to
    /// `commit`; returns its share ids if it verified.
    async fn record_ack(
        &self,
        policy: &PolicySet,
        tenant: &str,
        payload: &[u8],
        now: i64,
        next: &mut u64,
        commit: &mut Commit,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let ack = Signed::from_json(payload)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                signed
                    .verify::<Ack>(messages::TAG_ACK, policy.keys(), tenant)
                    .map(|ack| (ack, signed))
                    .map_err(|e| e.to_string())
            });
        let (ack, signed) = match ack {
            Ok(a) => a,
            Err(reason) => {
                warn!(agency = tenant, reason, "acknowledgement refused");
                return Ok(None);
            }
        };
        if ack.agency != tenant || ack.share_ids.len() > 1000 {
            warn!(
                agency = tenant,
                "acknowledgement refused: wrong agency or too many share ids"
            );
            return Ok(None);
        }
        // Proof of receipt must be fresh and made with a key valid now, so a
        // revoked key cannot produce backdated acknowledgements.
        let fresh =
            ack.signed_at_ms.abs_diff(now) <= self.settings.max_clock_skew_ms.unsigned_abs();
        let key_valid_now = policy
            .keys()
            .keys_of(tenant)
            .find(|k| k.key_id == signed.key_id)
            .is_some_and(|k| k.check_at(now).is_ok());
        if !fresh || !key_valid_now {
            warn!(
                agency = tenant,
                fresh,
                key_valid_now,
                "acknowledgement refused: stale, or signed with a key not valid now"
            );
            return Ok(None);
        }
        let pending = self.store.unacked_among(tenant, &ack.share_ids).await?;
        let message = serde_json::to_vec(&signed).unwrap_or_default();
        let message_hash = hex::encode(sha2::Sha256::digest(&message));
        for p in pending {
            // A share acknowledged twice (in this batch, or in this one and
            // the batch in flight) is recorded once.
            if commit.acks.iter().any(|a| a.share_id == p.share_id)
                || self
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.acked.contains(&p.share_id))
            {
                continue;
            }
            let index = take_index(next);
            let mut entry = AuditEntry::new(EntryKind::Ack, now);
            entry.index = index;
            entry.alert_id = Some(p.alert_id);
            entry.publisher = Some(p.publisher);
            entry.recipient = Some(tenant.to_string());
            entry.topic = Some(p.topic);
            entry.share_id = Some(p.share_id.clone());
            entry.signature = Some(b64(&signed.signature.0));
            entry.policy_version = Some(policy.version().to_string());
            commit.audit.push(entry);
            commit.acks.push(AckUpdate {
                share_id: p.share_id,
                recipient: tenant.to_string(),
                acked_at_ms: now,
                ack_audit_idx: index,
                message_hash: message_hash.clone(),
                ack_message: message.clone(),
            });
        }
        Ok(Some(ack.share_ids))
    }

    /// Starts replaying `tenant`'s unacknowledged shares (at most one
    /// request per second, burst 3); [`Self::pace`] sends them.
    fn start_replay(&mut self, tenant: &str, payload: &[u8]) {
        let request = ReplayRequest::from_json(payload)
            .map(|r| r.request_id)
            .ok()
            .filter(|id| id.len() <= messages::MAX_REQUEST_ID_LEN)
            .unwrap_or_else(|| "-".into());
        if self.replays.check_key(&tenant.to_string()).is_err() {
            warn!(
                agency = tenant,
                request, "replay request refused: too frequent"
            );
            return;
        }
        debug!(agency = tenant, request, "replay started");
        self.pacer.start(tenant, request);
    }

    /// Sends what the replays' windows allow, after releasing the shares
    /// that have waited too long for an acknowledgement. Each call sends at
    /// most one window per agency, so a large replay cannot hold up the
    /// router, and other agencies' traffic goes on between windows.
    async fn pace(&mut self) {
        self.pacer.expire(Instant::now());
        for tenant in self.pacer.agencies() {
            self.refill(&tenant).await;
        }
        for (tenant, done) in self.pacer.take_finished() {
            self.finish_replay(&tenant, done).await;
        }
    }

    /// Sends the next shares of `tenant`'s replay that fit in its window,
    /// and marks the replay as sent in full at the end of the queue or at
    /// its limit.
    async fn refill(&mut self, tenant: &str) {
        let Some(room) = self.pacer.room(tenant) else {
            return;
        };
        let page = match self
            .store
            .replay_page(tenant, room.after, room.shares)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                let request = self.pacer.abandon(tenant).unwrap_or_default();
                error!(agency = tenant, request, error = %e, "replay stopped: database unavailable");
                return;
            }
        };
        let exhausted = page.len() < room.shares as usize;
        let mut all_sent = true;
        for share in page {
            if !self.pacer.fits(tenant) {
                all_sent = false;
                break;
            }
            let bytes = share.payload.len();
            self.pacer.sent(
                tenant,
                share.share_id,
                share.position,
                bytes,
                Instant::now(),
            );
            self.outbox
                .send(topics::inbox(tenant, &share.topic), share.payload)
                .await;
        }
        self.pacer.end_if_done(tenant, exhausted && all_sent);
    }

    /// Says, signed, that `tenant`'s replay has ended (sent in full, and
    /// every share acknowledged or released) and how many shares it left.
    async fn finish_replay(&mut self, tenant: &str, done: replay::Finished) {
        let remaining = if done.at_limit {
            match self.store.replay_remaining(tenant, done.after).await {
                Ok(n) => n,
                Err(e) => {
                    // Unknown: say that some remain, so the client asks again.
                    warn!(agency = tenant, error = %e, "could not count the shares a replay left");
                    1
                }
            }
        } else {
            0
        };
        info!(
            agency = tenant,
            request = done.request,
            count = done.sent,
            remaining,
            "replayed unacknowledged shares"
        );
        let status = ReplayStatus {
            agency: tenant.to_string(),
            request_id: done.request,
            sent: done.sent,
            remaining,
            signed_at_ms: self.clock.now_ms(),
        };
        let signed = self.signer.sign(messages::TAG_REPLAY_STATUS, &status);
        match serde_json::to_vec(&signed) {
            Ok(payload) => self.send(topics::replay_status(tenant), payload).await,
            Err(e) => error!(agency = tenant, error = %e, "could not encode a replay status"),
        }
    }
}

/// Writes `commit` in one transaction and counts it; `next` is the log's
/// size after it.
async fn commit_counted(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    commit: &Commit,
    next: u64,
) -> Result<(), StoreError> {
    let started = Instant::now();
    if let Err(e) = store.commit(commit).await {
        metrics.failed_commits.inc();
        return Err(e);
    }
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    for entry in &commit.audit {
        match entry.kind {
            EntryKind::Share => metrics.shares.inc(),
            EntryKind::Denial => metrics.denials.inc(),
            EntryKind::Ack => metrics.acks.inc(),
            _ => 0,
        };
    }
    metrics
        .audit_entries
        .set(i64::try_from(next).unwrap_or(i64::MAX));
    Ok(())
}

/// Witness answers queued for the coordinator; more are dropped (the
/// coordinator asks again).
const WITNESS_ANSWERS: usize = 1024;

/// Sorts one notification from rumqttd into the batch; witness answers go
/// to the witness coordinator.
fn classify(
    rx: &LinkRx,
    notification: Notification,
    batch: &mut Vec<Inbound>,
    answers: &mpsc::Sender<WitnessAnswer>,
) {
    match notification {
        Notification::Forward(forward) => {
            let Ok(topic) = std::str::from_utf8(&forward.publish.topic) else {
                warn!("dropped a message whose topic is not UTF-8");
                return;
            };
            let payload = forward.publish.payload;
            match BrokerTopic::parse(topic) {
                Some(BrokerTopic::Outbox { agency, logical }) => batch.push(Inbound::Alert {
                    tenant: agency.to_string(),
                    logical: logical.to_string(),
                    payload,
                }),
                Some(BrokerTopic::Acks { agency }) => batch.push(Inbound::Ack {
                    tenant: agency.to_string(),
                    payload,
                }),
                Some(BrokerTopic::Replay { agency }) => batch.push(Inbound::Replay {
                    tenant: agency.to_string(),
                    payload,
                }),
                Some(BrokerTopic::WitnessAnswer { agency, id, status }) => {
                    let answer = WitnessAnswer {
                        agency: agency.to_string(),
                        id: id.to_string(),
                        status,
                        body: payload,
                    };
                    if answers.try_send(answer).is_err() {
                        warn!(agency, "a witness answer was dropped (queue full)");
                    }
                }
                None => debug!(topic, "ignored a message outside the router's topics"),
            }
        }
        Notification::Unschedule => {
            // rumqttd pauses a link with many buffered notifications until
            // it says it is ready again.
            if let Err(e) = rx.ready() {
                error!(error = %e, "could not resume the router link");
            }
        }
        _ => {}
    }
}

/// How often replays waiting for acknowledgements are looked at (to release
/// shares that were never acknowledged).
const PACE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Batches the intake may read ahead of the router. rumqttd keeps only a
/// small ring per topic filter (see `mqtt.rs`), and a reader that falls
/// further behind than the ring loses messages; reading ahead into this
/// queue means a burst waits in memory only while there is a backlog.
const INTAKE_BATCHES: usize = 4;

/// Reads rumqttd's link without pause into a queue of `capacity` messages,
/// so that the router's own pace (deciding, committing) never leaves
/// messages in rumqttd's ring. When the queue is full the reader waits,
/// and rumqttd's ring is the last buffer.
fn spawn_intake(
    mut rx: LinkRx,
    capacity: usize,
    answers: mpsc::Sender<WitnessAnswer>,
) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<Inbound>) {
    let (tx, queue) = mpsc::channel(capacity.max(1));
    let task = tokio::spawn(async move {
        let mut taken = Vec::new();
        loop {
            match rx.next().await {
                Ok(Some(n)) => classify(&rx, n, &mut taken, &answers),
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "the router link failed");
                    return;
                }
            }
            for message in taken.drain(..) {
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        }
    });
    (task, queue)
}

/// Waits for at least one message, then takes whatever else has already
/// arrived, up to `max`: under load, batches grow and commits get fewer.
/// `None` once the intake has ended.
async fn receive_batch(queue: &mut mpsc::Receiver<Inbound>, max: usize) -> Option<Vec<Inbound>> {
    let mut batch = Vec::with_capacity(max.min(64));
    if queue.recv_many(&mut batch, max).await == 0 {
        return None;
    }
    Some(batch)
}
