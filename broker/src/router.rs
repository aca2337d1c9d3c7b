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

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use samverkan_sdk::envelope::{Envelope, EnvelopeError};
use samverkan_sdk::messages::{
    self, Ack, Delivery, DenialReceipt, Receipt, ReceiptStatus, Rejection, ReplayRequest,
    ShareReceipt, ShareStamp, Signed,
};
use samverkan_sdk::time::Clock;
use samverkan_sdk::topics::{self, BrokerTopic};
use samverkan_sdk::{VerifiedAlert, names};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use sha2::Digest as _;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::audit::subject::SubjectHasher;
use crate::audit::tree::Frontier;
use crate::audit::{AuditEntry, EntryKind, disclosed_digest};
use crate::config::AuditSettings;
use crate::limits::PublishLimits;
use crate::mqtt::RouterLink;
use crate::policy::{Decision, DecisionInput, PolicyHandle, PolicySet};
use crate::signer::BrokerSigner;
use crate::store::{
    AckUpdate, AlertRow, Commit, DeliveryRow, Purge, Store, StoreError, StoredCheckpoint,
};

/// The topic filters the router subscribes to.
pub const ROUTER_FILTERS: [&str; 3] = ["/tenants/+/out/#", "/tenants/+/acks", "/tenants/+/replay"];

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
    /// A new policy is in force: record it, and the keys it revokes.
    PolicyChanged {
        /// The policy that was in force before.
        previous: Arc<PolicySet>,
        /// Answered once recorded.
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
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

/// An alert that passed every check.
struct Accepted {
    tenant: String,
    alert: VerifiedAlert,
    envelope_hash: String,
    decision: Decision,
}

/// An alert that was refused, with whatever could be read of it.
#[derive(Default)]
struct Rejected {
    tenant: String,
    alert_id: Option<String>,
    topic: Option<String>,
    alert_type: Option<String>,
    envelope_hash: Option<String>,
    signature: Option<String>,
    code: String,
    message: String,
    retry_after_ms: Option<u64>,
}

enum Outcome {
    Accepted(Box<Accepted>),
    Rejected(Box<Rejected>),
    /// Already accepted earlier: resend the stored receipt.
    Resend {
        tenant: String,
        receipt: Vec<u8>,
    },
    /// Same as an earlier alert of this batch (by position).
    SameAs {
        tenant: String,
        index: usize,
    },
}

/// Hands messages to rumqttd from a thread of its own: rumqttd's `LinkTx`
/// blocks while rumqttd's router is busy, which must not stall the async
/// runtime. Order is kept; a full queue makes the router wait (back-pressure).
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
}

/// The router task's state.
pub struct Router {
    rx: LinkRx,
    outbox: Outbox,
    policy: Arc<PolicyHandle>,
    store: Store,
    signer: Arc<BrokerSigner>,
    settings: RouterSettings,
    clock: Arc<dyn Clock>,
    limits: PublishLimits,
    limits_version: String,
    recorded_policy: Option<String>,
    replays: DefaultKeyedRateLimiter<String>,
    next_index: u64,
    resync: bool,
    commands: mpsc::Receiver<RouterCommand>,
    audit: AuditSettings,
    subjects: SubjectHasher,
    frontier: Frontier,
    checkpointed: Option<u64>,
    metrics: Arc<crate::metrics::Metrics>,
}

fn reject(tenant: &str, code: &str, message: impl Into<String>) -> Rejected {
    Rejected {
        tenant: tenant.to_string(),
        code: code.to_string(),
        message: message.into(),
        ..Default::default()
    }
}

/// Reads just the alert id of an envelope (for receipts of refused alerts).
fn peek_alert_id(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        header: PeekHeader,
        #[serde(flatten)]
        _rest: HashMap<String, IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct PeekHeader {
        alert_id: String,
        #[serde(flatten)]
        _rest: HashMap<String, IgnoredAny>,
    }
    let peek: Peek = serde_json::from_slice(payload).ok()?;
    names::validate_alert_id(&peek.header.alert_id).ok()?;
    Some(peek.header.alert_id)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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
        } = parts;
        let current = policy.current();
        let limits = PublishLimits::from_policy(&current);
        let quota = Quota::per_second(NonZeroU32::MIN)
            .allow_burst(NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN));
        Self {
            rx: link.rx,
            outbox: Outbox::spawn(link.tx),
            policy,
            store,
            signer,
            settings,
            clock,
            limits,
            limits_version: current.version().to_string(),
            recorded_policy: None,
            replays: RateLimiter::keyed(quota),
            next_index: 0,
            resync: true,
            commands,
            audit,
            subjects,
            frontier: Frontier::empty(),
            checkpointed: None,
            metrics,
        }
    }

    /// Reads the appender's state (next index, tree frontier, last
    /// checkpoint) from the database, after start-up or a failed commit.
    async fn sync(&mut self) -> Result<(), StoreError> {
        if !self.resync {
            return Ok(());
        }
        let next = self.store.next_audit_index().await?;
        let frontier = Frontier::load(&self.store, next).await?;
        let checkpointed = self.store.latest_checkpoint().await?.map(|c| c.size);
        self.next_index = next;
        self.frontier = frontier;
        self.checkpointed = checkpointed;
        self.resync = false;
        Ok(())
    }

    /// Appends the commit's entries to the tree and writes everything in one
    /// transaction; the router's state moves on only if it committed.
    async fn finish(&mut self, mut commit: Commit, next: u64) -> Result<(), StoreError> {
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
        let started = Instant::now();
        if let Err(e) = self.store.commit(&commit).await {
            self.resync = true;
            self.metrics.failed_commits.inc();
            return Err(e);
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for entry in &commit.audit {
            match entry.kind {
                EntryKind::Share => self.metrics.shares.inc(),
                EntryKind::Denial => self.metrics.denials.inc(),
                EntryKind::Ack => self.metrics.acks.inc(),
                _ => 0,
            };
        }
        self.next_index = next;
        self.frontier = frontier;
        self.metrics
            .audit_entries
            .set(i64::try_from(next).unwrap_or(i64::MAX));
        Ok(())
    }

    async fn handle(&mut self, command: RouterCommand) {
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
            entry.index = self.take_index(&mut next);
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

    /// Signs, stores and publishes a checkpoint of the log as it is now,
    /// unless the last one already covers every entry.
    async fn checkpoint(&mut self) -> Result<u64, String> {
        self.sync().await.map_err(|e| e.to_string())?;
        let size = self.frontier.size();
        if self.checkpointed == Some(size) {
            return Ok(size);
        }
        let now = self.clock.now_ms();
        let root = self.frontier.root();
        let note = self
            .signer
            .sign_checkpoint(&self.audit.origin, size, &root, now)
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
        for alert_type in policy.alert_types().keys() {
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
            entry.index = self.take_index(&mut next);
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
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(command) = self.commands.recv() => self.handle(command).await,
                batch = receive_batch(&mut self.rx, self.settings.batch_max) => {
                    let batch = batch?;
                    self.process(batch).await;
                }
            }
        }
        // Drain what rumqttd already handed over.
        let mut rest = Vec::new();
        while let Ok(Some(n)) = self.rx.recv_deadline(Instant::now()) {
            classify(&self.rx, n, &mut rest);
        }
        if !rest.is_empty() {
            self.process(rest).await;
        }
        if let Err(e) = self.checkpoint().await {
            warn!(error = %e, "no final checkpoint at shutdown");
        }
        info!("router stopped");
        Ok(())
    }

    /// Checks one alert; no database access.
    /// `parsed` is the payload parsed as an envelope, unless it was too large to parse.
    fn evaluate(
        &self,
        policy: &PolicySet,
        tenant: &str,
        logical: &str,
        payload: &[u8],
        parsed: Option<Result<Envelope, EnvelopeError>>,
        now: i64,
    ) -> Outcome {
        // A refusal names the alert when it can be read, so that the
        // publisher's SDK can match the receipt to what it sent.
        let refused = |mut r: Rejected| {
            if r.envelope_hash.is_none() {
                match parsed.as_ref().map(|p| p.as_ref()) {
                    Some(Ok(envelope)) => {
                        let h = &envelope.header;
                        r.alert_id = Some(h.alert_id.clone())
                            .filter(|id| names::validate_alert_id(id).is_ok());
                        r.topic = Some(logical.to_string())
                            .filter(|t| names::validate_logical_topic(t).is_ok());
                        r.alert_type = Some(h.alert_type.clone())
                            .filter(|t| names::validate_alert_type(t).is_ok());
                        r.envelope_hash = Some(messages::envelope_hash(envelope));
                        r.signature = Some(b64(&envelope.signature.0));
                    }
                    _ => r.alert_id = peek_alert_id(payload),
                }
            }
            Outcome::Rejected(Box::new(r))
        };
        if payload.len() > self.settings.max_payload_bytes {
            return refused(reject(
                tenant,
                "payload_too_large",
                format!(
                    "the alert is {} bytes; at most {} are accepted",
                    payload.len(),
                    self.settings.max_payload_bytes
                ),
            ));
        }
        if let Err(e) = names::validate_logical_topic(logical) {
            return refused(reject(tenant, "invalid_topic", e.to_string()));
        }
        if let Err(wait) = self.limits.check(tenant) {
            let mut r = reject(
                tenant,
                "rate_limited",
                format!("`{tenant}` exceeds its publish limit; retry later"),
            );
            r.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
            return refused(r);
        }
        let envelope = match parsed.clone() {
            Some(Ok(e)) => e,
            Some(Err(e)) => return refused(reject(tenant, e.code(), e.to_string())),
            None => {
                return refused(reject(
                    tenant,
                    "malformed_envelope",
                    "not parsed".to_string(),
                ));
            }
        };
        let h = &envelope.header;
        let base = |code: &str, message: String| Rejected {
            tenant: tenant.to_string(),
            alert_id: Some(h.alert_id.clone()).filter(|id| names::validate_alert_id(id).is_ok()),
            topic: Some(logical.to_string()),
            alert_type: Some(h.alert_type.clone())
                .filter(|t| names::validate_alert_type(t).is_ok()),
            envelope_hash: Some(messages::envelope_hash(&envelope)),
            signature: Some(b64(&envelope.signature.0)),
            code: code.to_string(),
            message,
            retry_after_ms: None,
        };
        if h.publisher != tenant {
            return refused(base(
                "publisher_mismatch",
                format!(
                    "the envelope names `{}` as publisher but arrived from `{tenant}`",
                    names_or_escaped(&h.publisher)
                ),
            ));
        }
        if h.topic != logical {
            return refused(base(
                "topic_mismatch",
                "the signed topic differs from the topic the alert was published on".into(),
            ));
        }
        if let Err(e) = h.check_clock_skew(now, self.settings.max_clock_skew_ms) {
            return refused(base(e.code(), e.to_string()));
        }
        let alert = match envelope.verify(policy.keys()) {
            Ok(a) => a,
            Err(e) => return refused(base(e.code(), e.to_string())),
        };
        // A key revoked now is refused even for an alert signed just before.
        if let Some(key) = policy
            .keys()
            .keys_of(tenant)
            .find(|k| k.key_id == alert.header().key_id)
            && let Err(e) = key.check_at(now)
        {
            let e = EnvelopeError::from(e);
            return refused(base(e.code(), e.to_string()));
        }
        let Some(schema) = policy.alert_type(&h.alert_type) else {
            return refused(base(
                "unknown_alert_type",
                format!("`{}` is not an alert type of the policy", h.alert_type),
            ));
        };
        let fields = alert.fields();
        if let Err(problems) = schema.validate(&Value::Object(fields.clone())) {
            return refused(base("schema_violation", problems.join("; ")));
        }
        let decision = policy.decide(&DecisionInput {
            publisher: tenant,
            topic: logical,
            alert_type: &h.alert_type,
            fields: &fields,
            to: h.to.as_deref(),
        });
        Outcome::Accepted(Box::new(Accepted {
            tenant: tenant.to_string(),
            envelope_hash: messages::envelope_hash(&envelope),
            alert,
            decision,
        }))
    }

    fn refresh_limits(&mut self, policy: &PolicySet) {
        if policy.version() != self.limits_version {
            self.limits = PublishLimits::from_policy(policy);
            self.limits_version = policy.version().to_string();
        }
    }

    fn take_index(&self, next: &mut u64) -> u64 {
        let i = *next;
        *next += 1;
        i
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
        let mut publish: Vec<(String, Vec<u8>)> = Vec::new();

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
                    // Even an oversized alert is parsed (rumqttd bounds packets
                    // at 16 MiB), so that its refusal can name it.
                    let parsed = Some(Envelope::from_json(&payload));
                    alerts.push((tenant, logical, payload, parsed));
                }
                Inbound::Ack { tenant, payload } => acks.push((tenant, payload)),
                Inbound::Replay { tenant, payload } => replays.push((tenant, payload)),
            }
        }

        // An exact resend of an alert accepted earlier gets its receipt again
        // before any other check: it was verified and decided then, and a
        // later clock, limit, key or policy must not turn it into a refusal.
        let resend_keys: Vec<(String, String)> = alerts
            .iter()
            .filter_map(|(tenant, _, _, parsed)| match parsed {
                Some(Ok(e)) => Some((tenant.clone(), e.header.alert_id.clone())),
                _ => None,
            })
            .collect();
        let earlier = match self.store.known_alerts(&resend_keys).await {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        };
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(alerts.len());
        for (tenant, logical, payload, parsed) in alerts {
            if let Some(Ok(envelope)) = &parsed
                && let Some(k) = earlier.get(&(tenant.clone(), envelope.header.alert_id.clone()))
                && k.envelope_hash == messages::envelope_hash(envelope)
            {
                outcomes.push(Outcome::Resend {
                    tenant,
                    receipt: k.receipt.clone(),
                });
                continue;
            }
            outcomes.push(self.evaluate(&policy, &tenant, &logical, &payload, parsed, now));
        }

        // Resends: by (publisher, alert id), against the store and within the batch.
        let keys: Vec<(String, String)> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Accepted(a) => Some((a.tenant.clone(), a.alert.header().alert_id.clone())),
                _ => None,
            })
            .collect();
        let known = match self.store.known_alerts(&keys).await {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        };
        let mut first_in_batch: HashMap<(String, String), (usize, String)> = HashMap::new();
        for (i, outcome) in outcomes.iter_mut().enumerate() {
            let Outcome::Accepted(a) = outcome else {
                continue;
            };
            let key = (a.tenant.clone(), a.alert.header().alert_id.clone());
            let same_content = |hash: &str| hash == a.envelope_hash;
            let replacement = if let Some(k) = known.get(&key) {
                Some(if same_content(&k.envelope_hash) {
                    Outcome::Resend {
                        tenant: a.tenant.clone(),
                        receipt: k.receipt.clone(),
                    }
                } else {
                    reused(a)
                })
            } else if let Some((j, hash)) = first_in_batch.get(&key) {
                Some(if same_content(hash) {
                    Outcome::SameAs {
                        tenant: a.tenant.clone(),
                        index: *j,
                    }
                } else {
                    reused(a)
                })
            } else {
                first_in_batch.insert(key, (i, a.envelope_hash.clone()));
                None
            };
            if let Some(r) = replacement {
                *outcome = r;
            }
        }

        // Audit entries, deliveries and signed receipts.
        let mut receipts: Vec<Option<(String, Vec<u8>)>> = Vec::with_capacity(outcomes.len());
        for outcome in &outcomes {
            let receipt = match outcome {
                Outcome::Accepted(a) => Some(self.record_accepted(
                    &policy,
                    a,
                    now,
                    &mut next,
                    &mut commit,
                    &mut publish,
                )),
                Outcome::Rejected(r) => {
                    Some(self.record_rejected(&policy, r, now, &mut next, &mut commit))
                }
                Outcome::Resend { tenant, receipt } => Some((tenant.clone(), receipt.clone())),
                Outcome::SameAs { .. } => None,
            };
            receipts.push(receipt);
        }
        for i in 0..outcomes.len() {
            if let Outcome::SameAs { tenant, index } = &outcomes[i] {
                let receipt = receipts[*index]
                    .as_ref()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                receipts[i] = Some((tenant.clone(), receipt));
            }
        }

        // Acknowledgements.
        for (tenant, payload) in acks {
            if let Err(e) = self
                .record_ack(&policy, &tenant, &payload, now, &mut next, &mut commit)
                .await
            {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        }

        // One transaction for everything; nothing is sent before it commits.
        let policy_recorded = commit
            .audit
            .iter()
            .any(|e| e.kind == EntryKind::PolicyLoaded);
        let entries = commit.audit.len();
        if let Err(e) = self.finish(commit, next).await {
            error!(error = %e, entries, "commit failed: nothing of this batch is answered (publishers will resend)");
            return;
        }
        if policy_recorded {
            self.recorded_policy = Some(policy.version().to_string());
        }
        for (topic, payload) in publish {
            self.send(topic, payload).await;
        }
        for outcome in &outcomes {
            match outcome {
                Outcome::Accepted(_) => self.metrics.accepted.inc(),
                Outcome::Rejected(r) => self
                    .metrics
                    .rejected
                    .get_or_create(&crate::metrics::CodeLabel {
                        code: r.code.clone(),
                    })
                    .inc(),
                Outcome::Resend { .. } | Outcome::SameAs { .. } => self.metrics.resent.inc(),
            };
        }
        self.metrics.batch_size.observe(outcomes.len() as f64);
        for (tenant, receipt) in receipts.into_iter().flatten() {
            self.send(topics::receipts(&tenant), receipt).await;
        }
        for (tenant, payload) in replays {
            self.replay(&tenant, &payload).await;
        }
        let since = self.frontier.size() - self.checkpointed.unwrap_or(0);
        if since >= self.audit.checkpoint_every_entries
            && let Err(e) = self.checkpoint().await
        {
            error!(error = %e, "could not sign a checkpoint");
        }
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
        entry.index = self.take_index(next);
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

    fn record_accepted(
        &self,
        policy: &PolicySet,
        a: &Accepted,
        now: i64,
        next: &mut u64,
        commit: &mut Commit,
        publish: &mut Vec<(String, Vec<u8>)>,
    ) -> (String, Vec<u8>) {
        let h = a.alert.header();
        let signature = b64(&a.alert.envelope().signature.0);
        let subject_hashes: Vec<String> = policy
            .alert_type(&h.alert_type)
            .map(|t| t.subject_fields.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|(field, kind)| {
                let value = a.alert.field(field)?.as_str()?;
                self.subjects.hash_value(*kind, value)
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let base = |kind: EntryKind, index: u64| {
            let mut e = AuditEntry::new(kind, now);
            e.index = index;
            e.alert_id = Some(h.alert_id.clone());
            e.publisher = Some(a.tenant.clone());
            e.topic = Some(h.topic.clone());
            e.alert_type = Some(h.alert_type.clone());
            e.envelope_hash = Some(a.envelope_hash.clone());
            e.signature = Some(signature.clone());
            e.policy_version = Some(policy.version().to_string());
            e.subject_hashes = subject_hashes.clone();
            e
        };
        let mut shares = Vec::new();
        for share in &a.decision.shares {
            let index = self.take_index(next);
            let share_id = messages::share_id(&a.envelope_hash, &share.recipient);
            let mut digests: Vec<_> = a
                .alert
                .disclosures()
                .iter()
                .filter(|d| share.fields.iter().any(|f| f == d.name()))
                .map(|d| d.digest())
                .collect();
            digests.sort();
            let mut entry = base(EntryKind::Share, index);
            entry.recipient = Some(share.recipient.clone());
            entry.rule_id = Some(share.rule_id.clone());
            entry.legal_basis = Some(share.legal_basis.clone());
            entry.purpose = Some(share.purpose.clone());
            entry.fields = share.fields.clone();
            entry.disclosed_digest = Some(disclosed_digest(&digests));
            entry.share_id = Some(share_id.clone());
            commit
                .subjects
                .extend(subject_hashes.iter().map(|s| (s.clone(), index)));
            commit.audit.push(entry);

            let stamp = ShareStamp {
                share_id: share_id.clone(),
                alert_id: h.alert_id.clone(),
                publisher: a.tenant.clone(),
                recipient: share.recipient.clone(),
                topic: h.topic.clone(),
                alert_type: h.alert_type.clone(),
                rule_id: share.rule_id.clone(),
                legal_basis: share.legal_basis.clone(),
                purpose: share.purpose.clone(),
                fields: share.fields.clone(),
                envelope_hash: a.envelope_hash.clone(),
                policy_version: policy.version().to_string(),
                audit_index: index,
                signed_at_ms: now,
            };
            let delivery = Delivery {
                envelope: a
                    .alert
                    .redacted(|name| share.fields.iter().any(|f| f == name)),
                stamp: self.signer.sign(messages::TAG_SHARE_STAMP, &stamp),
            }
            .to_json();
            commit.deliveries.push(DeliveryRow {
                share_id: share_id.clone(),
                recipient: share.recipient.clone(),
                alert_id: h.alert_id.clone(),
                publisher: a.tenant.clone(),
                alert_type: h.alert_type.clone(),
                topic: h.topic.clone(),
                audit_idx: index,
                payload: delivery.clone(),
                created_at_ms: now,
            });
            publish.push((topics::inbox(&share.recipient, &h.topic), delivery));
            shares.push(ShareReceipt {
                share_id,
                recipient: share.recipient.clone(),
                rule_id: share.rule_id.clone(),
                legal_basis: share.legal_basis.clone(),
                purpose: share.purpose.clone(),
                fields: share.fields.clone(),
                audit_index: index,
            });
        }
        let mut denials = Vec::new();
        for denial in &a.decision.denials {
            let index = self.take_index(next);
            let mut entry = base(EntryKind::Denial, index);
            entry.recipient = denial.recipient.clone();
            entry.rule_id = denial.rule_id.clone();
            entry.reason_code = Some(denial.reason.code().to_string());
            entry.reason = Some(denial.reason.to_string());
            commit
                .subjects
                .extend(subject_hashes.iter().map(|s| (s.clone(), index)));
            commit.audit.push(entry);
            denials.push(DenialReceipt {
                recipient: denial.recipient.clone(),
                rule_id: denial.rule_id.clone(),
                code: denial.reason.code().to_string(),
                message: denial.reason.to_string(),
                audit_index: index,
            });
        }
        let receipt = Receipt {
            alert_id: Some(h.alert_id.clone()),
            publisher: a.tenant.clone(),
            envelope_hash: Some(a.envelope_hash.clone()),
            status: ReceiptStatus::Accepted,
            rejection: None,
            shares,
            denials,
            audit_index: None,
            policy_version: policy.version().to_string(),
            received_at_ms: now,
            signed_at_ms: now,
        };
        let receipt = serde_json::to_vec(&self.signer.sign(messages::TAG_RECEIPT, &receipt))
            .unwrap_or_default();
        let envelope = a.alert.envelope();
        commit.alerts.push(AlertRow {
            publisher: a.tenant.clone(),
            alert_id: h.alert_id.clone(),
            envelope_hash: a.envelope_hash.clone(),
            alert_type: h.alert_type.clone(),
            topic: h.topic.clone(),
            issued_at_ms: h.issued_at_ms,
            received_at_ms: now,
            policy_version: policy.version().to_string(),
            signed_envelope: envelope.redact(|_| false).to_json(),
            content: envelope.to_json(),
            receipt: receipt.clone(),
        });
        info!(
            alert = %h.alert_id,
            publisher = %a.tenant,
            alert_type = %h.alert_type,
            shares = a.decision.shares.len(),
            denials = a.decision.denials.len(),
            "alert accepted"
        );
        (a.tenant.clone(), receipt)
    }

    fn record_rejected(
        &self,
        policy: &PolicySet,
        r: &Rejected,
        now: i64,
        next: &mut u64,
        commit: &mut Commit,
    ) -> (String, Vec<u8>) {
        let index = self.take_index(next);
        let mut entry = AuditEntry::new(EntryKind::Rejection, now);
        entry.index = index;
        entry.alert_id = r.alert_id.clone();
        entry.publisher = Some(r.tenant.clone());
        entry.topic = r.topic.clone();
        entry.alert_type = r.alert_type.clone();
        entry.envelope_hash = r.envelope_hash.clone();
        entry.signature = r.signature.clone();
        entry.policy_version = Some(policy.version().to_string());
        entry.reason_code = Some(r.code.clone());
        entry.reason = Some(r.message.clone());
        commit.audit.push(entry);
        let receipt = Receipt {
            alert_id: r.alert_id.clone(),
            publisher: r.tenant.clone(),
            envelope_hash: r.envelope_hash.clone(),
            status: ReceiptStatus::Rejected,
            rejection: Some(Rejection {
                code: r.code.clone(),
                message: r.message.clone(),
                retry_after_ms: r.retry_after_ms,
            }),
            shares: Vec::new(),
            denials: Vec::new(),
            audit_index: Some(index),
            policy_version: policy.version().to_string(),
            received_at_ms: now,
            signed_at_ms: now,
        };
        warn!(
            publisher = %r.tenant,
            alert = r.alert_id.as_deref().unwrap_or("-"),
            code = %r.code,
            reason = %r.message,
            "alert refused"
        );
        let receipt = serde_json::to_vec(&self.signer.sign(messages::TAG_RECEIPT, &receipt))
            .unwrap_or_default();
        (r.tenant.clone(), receipt)
    }

    async fn record_ack(
        &self,
        policy: &PolicySet,
        tenant: &str,
        payload: &[u8],
        now: i64,
        next: &mut u64,
        commit: &mut Commit,
    ) -> Result<(), StoreError> {
        let ack = serde_json::from_slice::<Signed>(payload)
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
                return Ok(());
            }
        };
        if ack.agency != tenant || ack.share_ids.len() > 1000 {
            warn!(
                agency = tenant,
                "acknowledgement refused: wrong agency or too many share ids"
            );
            return Ok(());
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
            return Ok(());
        }
        let pending = self.store.unacked_among(tenant, &ack.share_ids).await?;
        let message = serde_json::to_vec(&signed).unwrap_or_default();
        let message_hash = hex::encode(sha2::Sha256::digest(&message));
        for p in pending {
            // The same share acknowledged twice in one batch is recorded once.
            if commit.acks.iter().any(|a| a.share_id == p.share_id) {
                continue;
            }
            let index = self.take_index(next);
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
        Ok(())
    }

    async fn replay(&mut self, tenant: &str, payload: &[u8]) {
        let request = serde_json::from_slice::<ReplayRequest>(payload)
            .map(|r| r.request_id)
            .unwrap_or_else(|_| "-".into());
        if self.replays.check_key(&tenant.to_string()).is_err() {
            warn!(
                agency = tenant,
                request, "replay request refused: too frequent"
            );
            return;
        }
        match self
            .store
            .pending_deliveries(tenant, self.settings.replay_limit)
            .await
        {
            Ok(pending) => {
                let count = pending.len();
                for p in pending {
                    if let Some(payload) = p.payload {
                        self.send(topics::inbox(tenant, &p.topic), payload).await;
                    }
                }
                info!(
                    agency = tenant,
                    request, count, "replayed unacknowledged shares"
                );
            }
            Err(e) => error!(agency = tenant, error = %e, "replay failed: database unavailable"),
        }
    }
}

/// Sorts one notification from rumqttd into the batch.
fn classify(rx: &LinkRx, notification: Notification, batch: &mut Vec<Inbound>) {
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

/// Waits for at least one message, then takes whatever else has already
/// arrived, up to `max`: under load, batches grow and commits get fewer.
async fn receive_batch(rx: &mut LinkRx, max: usize) -> Result<Vec<Inbound>, RouterError> {
    let mut batch = Vec::new();
    while batch.is_empty() {
        let first = rx
            .next()
            .await
            .map_err(|e| RouterError::Link(e.to_string()))?;
        if let Some(n) = first {
            classify(rx, n, &mut batch);
        }
    }
    while batch.len() < max {
        match rx.recv_deadline(Instant::now()) {
            Ok(Some(n)) => classify(rx, n, &mut batch),
            Ok(None) => {}
            Err(_) => break,
        }
    }
    Ok(batch)
}

fn reused(a: &Accepted) -> Outcome {
    let h = a.alert.header();
    Outcome::Rejected(Box::new(Rejected {
        tenant: a.tenant.clone(),
        alert_id: Some(h.alert_id.clone()),
        topic: Some(h.topic.clone()),
        alert_type: Some(h.alert_type.clone()),
        envelope_hash: Some(a.envelope_hash.clone()),
        signature: Some(b64(&a.alert.envelope().signature.0)),
        code: "alert_id_reused".into(),
        message: "this alert id was already used for an alert with different content".into(),
        retry_after_ms: None,
    }))
}

/// A name for logs: as is when it is a valid agency id, escaped otherwise.
fn names_or_escaped(s: &str) -> String {
    if names::validate_agency_id(s).is_ok() {
        s.to_string()
    } else {
        s.chars().take(40).flat_map(char::escape_default).collect()
    }
}
