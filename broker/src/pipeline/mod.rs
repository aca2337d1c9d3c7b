//! The pipeline every alert goes through, and the only component that
//! crosses tenants.
//!
//! The pipeline is an in-process client of rumqttd subscribed to
//! `/tenants/+/out/#` (alerts), `/tenants/+/acks`, `/tenants/+/replay` and
//! the witnesses' answers. Its stages, one module each:
//!
//! * [`intake`] — reads rumqttd's link into a queue and takes whatever has
//!   arrived as one batch; the [`intake::Outbox`] writes answers back;
//! * [`check`] — pure: each alert of the batch against the policy, its
//!   keys, the publish limits and the clock (size, topic, rate limit,
//!   envelope and signature, key valid now, schema, policy decision,
//!   resends), one decision per alert;
//! * [`record`] — decisions into the store's rows, audit entries and the
//!   broker-signed share stamps and receipts;
//! * [`acks`] — acknowledgements verified and recorded;
//! * [`replay`] — replays of unacknowledged shares, paced by the
//!   recipients' acknowledgements;
//! * `commands` — checkpoints, purges, console accesses and policy changes,
//!   run between batches.
//!
//! Audit entries are numbered and added to the Merkle tree by the one
//! [`Appender`]; this module wires the stages around it. The whole batch —
//! alerts, one audit entry per share, denial and rejection, the
//! acknowledgements and the delivery queue — is written in **one
//! transaction** (group commit), and only after it has committed are the
//! deliveries (only the permitted disclosures plus a broker-signed stamp)
//! and the broker-signed receipts published. If the database fails, nothing
//! of the batch is sent: publishers get no receipt and resend (fail closed).
//!
//! Two batches overlap: while one commits (in a task of its own, which
//! then sends its answers), the next is checked and recorded on a blocking
//! thread. Only one batch is ever in flight, so answers stay in order and
//! memory stays bounded; a batch built on one that then fails to commit is
//! dropped unanswered, and the appender's state is reread.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use rumqttd::local::LinkRx;
use samverkan_sdk::time::Clock;
use samverkan_sdk::topics;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

pub mod acks;
pub mod check;
mod commands;
mod handoff;
pub mod intake;
pub mod record;
mod replay;

use self::check::{Arrived, CheckContext};
pub use self::commands::{AccessRecord, Command, CommandError};
use self::intake::{Inbound, Outbox};
pub use self::record::BatchDecider;
use self::record::{Recorded, Recorder};
use self::replay::Replays;

use crate::audit::EntryKind;
use crate::audit::appender::{Appender, Draft, Sealed};
use crate::audit::subject::SubjectHasher;
use crate::audit::tree::Frontier;
use crate::cluster::{Cluster, Sequencing};
use crate::config::AuditSettings;
use crate::inspect::Receivers;
use crate::limits::PublishLimits;
use crate::mqtt::RouterLink;
use crate::policy::{PolicyHandle, PolicySet};
use crate::signer::BrokerSigner;
use crate::store::{
    Append, Commit, DeliveryRow, Handoff, HandoffRow, KnownAlert, Store, StoreError,
};
use crate::witness::{Coordinator, SignedHead, WitnessBoard};

/// The topic filters the pipeline subscribes to.
pub const PIPELINE_FILTERS: [&str; 4] = [
    "/tenants/+/out/#",
    "/tenants/+/acks",
    "/tenants/+/replay",
    "/tenants/+/witness/#",
];

/// Limits of the pipeline (the configuration's `[router]` section).
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

/// Why the pipeline stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// rumqttd's router went away, or the pipeline's link was lost.
    #[error("embedded MQTT router link failed: {0}")]
    Link(String),
    /// The store failed at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a pipeline works with.
pub struct PipelineParts {
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
    /// Checkpoint, purge, access and policy commands.
    pub commands: mpsc::Receiver<Command>,
    /// Where the pipeline counts what it does.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where the witness coordinator shows what it knows.
    pub witnesses: Arc<WitnessBoard>,
    /// The agencies that receive shares on this node (the gateway's count).
    pub receivers: Arc<Receivers>,
    /// This node's part, when it is one of several on one database.
    pub cluster: Option<Arc<Cluster>>,
}

/// The publish limits of the policy version they were built from.
struct Limits {
    limits: Arc<PublishLimits>,
    version: String,
}

impl Limits {
    fn of(policy: &PolicySet) -> Self {
        Self {
            limits: Arc::new(PublishLimits::from_policy(policy)),
            version: policy.version().to_string(),
        }
    }

    /// The limits of `policy`, rebuilt if it is a new version.
    fn refresh(&mut self, policy: &PolicySet) -> Arc<PublishLimits> {
        if policy.version() != self.version {
            *self = Self::of(policy);
        }
        self.limits.clone()
    }
}

/// The pipeline task's state.
pub struct Pipeline {
    /// rumqttd's link, until [`Pipeline::run`] hands it to the intake.
    rx: Option<LinkRx>,
    outbox: Outbox,
    policy: Arc<PolicyHandle>,
    store: Store,
    signer: Arc<BrokerSigner>,
    settings: RouterSettings,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// The policy version whose load the log records, once it does.
    recorded_policy: Option<String>,
    replays: Replays,
    commands: mpsc::Receiver<Command>,
    audit: AuditSettings,
    subjects: SubjectHasher,
    appender: Appender,
    metrics: Arc<crate::metrics::Metrics>,
    /// The batch whose transaction runs while the next one is prepared.
    in_flight: Option<InFlight>,
    /// Each new checkpoint, for the witness coordinator.
    heads: watch::Sender<Option<Arc<SignedHead>>>,
    witnesses: Arc<WitnessBoard>,
    receivers: Arc<Receivers>,
    /// Several nodes: every append takes the sequencing lock, no batch is
    /// built before it has it, and shares for agencies connected elsewhere
    /// are handed off.
    cluster: Option<Arc<Cluster>>,
}

/// The right to append, from [`Pipeline::turn`]: on a single broker the
/// appender's own position; on a node of several, the sequencing lock.
pub(super) struct Turn(Option<(Append, Sequencing, Instant)>);

/// A batch being committed by a task of its own, which sends the batch's
/// deliveries and receipts once the transaction has committed. The pipeline
/// meanwhile checks and records the next batch (signatures, policy,
/// signing), so that CPU work and the database's commit overlap; at most
/// one batch is in flight, which keeps answers in order and memory bounded.
struct InFlight {
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
    /// Its accepted alerts by (publisher, alert id), so that a resend
    /// arriving meanwhile is answered like one of a committed alert.
    alerts: HashMap<(String, String), KnownAlert>,
    /// The shares it records as acknowledged.
    acked: HashSet<String>,
    /// The tree after it.
    frontier: Frontier,
}

/// What a committed batch sends, in this order.
struct Answers {
    deliveries: Vec<(String, Vec<u8>)>,
    receipts: Vec<(String, Vec<u8>)>,
    /// The accepted alerts with their receipts (see [`Recorded::known`]).
    known: Vec<((String, String), KnownAlert)>,
}

impl Pipeline {
    /// A pipeline over `parts.link`, deciding with `parts.policy` and recording in `parts.store`.
    pub fn new(parts: PipelineParts, settings: RouterSettings, audit: AuditSettings) -> Self {
        let PipelineParts {
            link,
            policy,
            store,
            signer,
            clock,
            subjects,
            commands,
            metrics,
            witnesses,
            receivers,
            cluster,
        } = parts;
        let outbox = Outbox::spawn(link.tx);
        let replays = Replays::new(
            settings.replay_limit,
            store.clone(),
            outbox.clone(),
            signer.clone(),
            clock.clone(),
        );
        Self {
            rx: Some(link.rx),
            outbox,
            limits: Limits::of(&policy.current()),
            policy,
            store,
            signer,
            settings,
            clock,
            recorded_policy: None,
            replays,
            commands,
            audit,
            subjects,
            appender: Appender::new(),
            metrics,
            in_flight: None,
            heads: watch::channel(None).0,
            witnesses,
            receivers,
            cluster,
        }
    }

    /// Takes the right to append. On a node of several: waits for the
    /// sequencing lock, moves the appender to the log's size read under it
    /// and, after a failure or at start, checks the no-fork guard first.
    pub(super) async fn turn(&mut self) -> Result<Turn, StoreError> {
        let Some(cluster) = self.cluster.clone() else {
            self.appender.sync(&self.store).await?;
            return Ok(Turn(None));
        };
        if let Some(reason) = cluster.halted() {
            return Err(StoreError::Forked(reason));
        }
        let append = self.store.begin_append().await?;
        let since = Instant::now();
        let holding = cluster.sequencing();
        if self.appender.is_stale() {
            cluster.guard(&self.store, append.next()).await?;
        }
        self.appender.sync_at(&self.store, append.next()).await?;
        Ok(Turn(Some((append, holding, since))))
    }

    /// Seals `draft`, commits it in `turn` and waits for it; the appender
    /// moves on only if it committed. Never called with a batch in flight.
    async fn commit_now(&mut self, turn: Turn, draft: Draft) -> Result<(), StoreError> {
        let sealed = self.appender.seal(draft)?;
        let started = Instant::now();
        let result = match turn.0 {
            Some((append, _holding, since)) => {
                let done = self.store.finish_append(append, &sealed.commit).await;
                self.metrics
                    .sequence_hold_seconds
                    .observe(since.elapsed().as_secs_f64());
                done
            }
            None => self.store.commit(&sealed.commit).await,
        };
        if let Err(e) = result {
            self.metrics.failed_commits.inc();
            self.appender.failed();
            return Err(e);
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        count_commit(&self.metrics, &sealed.commit, sealed.next);
        self.appender.launched(sealed.next, &sealed.frontier);
        self.appender.committed(sealed.frontier);
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
                self.appender.committed(in_flight.frontier);
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the commit task ended abnormally: {e}"),
        };
        error!(error = %failure, "commit failed: nothing of that batch was answered (publishers will resend)");
        // The appender's state is reread before the next batch; the policy
        // in force is recorded again with it.
        self.appender.failed();
        self.recorded_policy = None;
        false
    }

    /// Starts committing `sealed` in a task of its own, which sends
    /// `answers` once it has committed.
    fn launch(&mut self, sealed: Sealed, answers: Answers) {
        let Sealed {
            commit,
            next,
            frontier,
        } = sealed;
        let Answers {
            deliveries,
            receipts,
            known,
        } = answers;
        let alerts = known.into_iter().collect();
        let acked = commit.acks.iter().map(|a| a.share_id.clone()).collect();
        let (store, metrics, outbox) = (
            self.store.clone(),
            self.metrics.clone(),
            self.outbox.clone(),
        );
        let task = tokio::spawn(async move {
            let started = Instant::now();
            if let Err(e) = store.commit(&commit).await {
                metrics.failed_commits.inc();
                return Err(e);
            }
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            count_commit(&metrics, &commit, next);
            drop(commit);
            for (topic, payload) in deliveries {
                outbox.send(topic, payload).await;
            }
            for (tenant, receipt) in receipts {
                outbox.send(topics::receipts(&tenant), receipt).await;
            }
            Ok(())
        });
        self.appender.launched(next, &frontier);
        self.in_flight = Some(InFlight {
            task,
            alerts,
            acked,
            frontier,
        });
    }

    /// Runs until `shutdown` turns true: everything received before that is
    /// committed and answered before this returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), PipelineError> {
        // The policy in force at start is an audit entry of its own (retried
        // with the first batch if the database is not there yet).
        if let Err(e) = self.record_start().await {
            warn!(error = %e, "the policy load could not be recorded yet");
        }
        let rx = self
            .rx
            .take()
            .ok_or_else(|| PipelineError::Link("the pipeline's link was already taken".into()))?;
        // Witnesses are asked for cosignatures by a task of their own, so a
        // slow or absent witness never holds up the pipeline.
        let (answers, answers_rx) = mpsc::channel(intake::WITNESS_ANSWERS);
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
            self.outbox.sender(),
            self.witnesses.clone(),
            self.metrics.clone(),
        );
        let coordinator =
            tokio::spawn(coordinator.run(self.heads.subscribe(), answers_rx, shutdown.clone()));
        let handoffs = self.cluster.clone().map(|cluster| {
            tokio::spawn(
                handoff::HandoffWorker {
                    store: self.store.clone(),
                    outbox: self.outbox.clone(),
                    receivers: self.receivers.clone(),
                    cluster,
                    clock: self.clock.clone(),
                }
                .run(shutdown.clone()),
            )
        });
        let (intake, mut queue) = intake::spawn(
            rx,
            self.settings.batch_max * intake::INTAKE_BATCHES,
            answers,
        );
        let mut pace = tokio::time::interval(PACE_EVERY);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break Ok(()),
                Some(command) = self.commands.recv() => self.handle(command).await,
                _ = pace.tick(), if self.replays.active() => self.replays.pace().await,
                batch = intake::next_batch(&mut queue, self.settings.batch_max) => match batch {
                    Some(batch) => self.process(batch).await,
                    None => break Err(PipelineError::Link("rumqttd closed the pipeline's link".into())),
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
        if let Some(handoffs) = handoffs {
            handoffs.abort();
        }
        info!("pipeline stopped");
        result
    }

    async fn process(&mut self, batch: Vec<Inbound>) {
        if self.cluster.is_some() {
            return self.process_sequenced(batch).await;
        }
        if let Err(e) = self.appender.sync(&self.store).await {
            error!(error = %e, messages = batch.len(), "database unavailable: nothing of this batch is recorded or answered (publishers will resend)");
            return;
        }
        let now = self.clock.now_ms();
        let policy = self.policy.current();
        let limits = self.limits.refresh(&policy);
        let mut draft = self.appender.draft(policy.version());
        let messages = batch.len();

        if self.recorded_policy.as_deref() != Some(policy.version())
            && let Err(e) = self.record_policy(&policy, now, &mut draft).await
        {
            error!(error = %e, "database unavailable: batch dropped (fail closed)");
            return;
        }

        let (alerts, acks, replays) = split(batch);
        let keys: Vec<(String, String)> = alerts.iter().filter_map(Arrived::key).collect();
        let known = match self.known_alerts(&keys).await {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        };

        // Check and record on a blocking thread (signatures, policy, broker
        // signatures), and verify the acknowledgements, so that the batch in
        // flight commits and connections are served meanwhile.
        let context = self.check_context(&policy, limits, now);
        let recorder = Recorder {
            policy: policy.clone(),
            signer: self.signer.clone(),
            subjects: self.subjects.clone(),
            now,
        };
        let ack_clock = (now, self.settings.max_clock_skew_ms);
        let decided = tokio::task::spawn_blocking(move || {
            let outcomes = check::check(&context, alerts, &known);
            let recorded = recorder.record(&outcomes, &mut draft);
            let acked = acks::verify_all(&recorder.policy, acks, ack_clock);
            (recorded, acked, draft)
        })
        .await;
        let (recorded, acked, mut draft): (Recorded, Vec<acks::Verified>, Draft) = match decided {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "deciding a batch failed: nothing of it is answered (publishers will resend)");
                return;
            }
        };

        // Acknowledgements: their shares looked up with one query per
        // acknowledging agency, their entries after the alerts'.
        let pending = match acks::pending(&self.store, &acked).await {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        };
        let no_acks = HashSet::new();
        let in_flight_acks = self.in_flight.as_ref().map_or(&no_acks, |f| &f.acked);
        acks::record(&acked, &pending, now, in_flight_acks, &mut draft);

        // One transaction for everything, committed while the next batch is
        // prepared; nothing is sent before it commits.
        let policy_recorded = draft
            .commit
            .audit
            .iter()
            .any(|e| e.kind == EntryKind::PolicyLoaded);
        let sealed = match self.appender.seal(draft) {
            Ok(s) => s,
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
        if self.appender.since_checkpoint() >= self.audit.checkpoint_every_entries
            && let Err(e) = self.checkpoint().await
        {
            error!(error = %e, "could not sign a checkpoint");
        }
        if policy_recorded {
            self.recorded_policy = Some(policy.version().to_string());
        }
        self.count_batch(&recorded, messages);
        let answers = Answers {
            deliveries: recorded.deliveries,
            receipts: recorded.receipts,
            known: recorded.known,
        };
        self.launch(sealed, answers);
        self.replay(&acked, replays).await;
    }

    /// Counts what a batch decided.
    fn count_batch(&self, recorded: &Recorded, messages: usize) {
        self.metrics.accepted.inc_by(recorded.accepted);
        self.metrics.resent.inc_by(recorded.resent);
        for code in &recorded.rejected {
            self.metrics
                .rejected
                .get_or_create(&crate::metrics::CodeLabel {
                    code: code.as_str().to_string(),
                })
                .inc();
        }
        self.metrics.batch_size.observe(messages as f64);
    }

    /// Opens replay windows for a batch's acknowledgements, starts the
    /// replays it asked for, and sends what the windows allow.
    async fn replay(&mut self, acked: &[acks::Verified], replays: Vec<(String, bytes::Bytes)>) {
        // A verified acknowledgement shows what the recipient has taken,
        // whether or not it commits; it only opens the replay's window.
        for ack in acked {
            self.replays.acked(&ack.tenant, &ack.share_ids);
        }
        for (tenant, payload) in replays {
            // A replay reads every unacknowledged share from the queue:
            // the ones handed off to this agency need not be sent twice.
            if self.cluster.is_some()
                && let Err(e) = self.store.drop_handoffs(&tenant).await
            {
                warn!(error = %e, agency = %tenant, "handed-off shares kept (they may arrive twice; the SDK drops the copy)");
            }
            self.replays.start(&tenant, &payload);
        }
        self.replays.pace().await;
    }

    /// A batch on a node of several. It is checked (signatures, policy)
    /// before the sequencing lock is taken, numbered, signed and committed
    /// under it, and answered after. No batch stays in flight across
    /// another: the next one's indices depend on what the other nodes
    /// append meanwhile. Shares for agencies with no connection here are
    /// handed off, in the same transaction, to the node that holds them.
    async fn process_sequenced(&mut self, batch: Vec<Inbound>) {
        let now = self.clock.now_ms();
        let policy = self.policy.current();
        let limits = self.limits.refresh(&policy);
        let messages = batch.len();
        let (alerts, acks, replays) = split(batch);
        let keys: Vec<(String, String)> = alerts.iter().filter_map(Arrived::key).collect();
        let known = match self.store.known_alerts(&keys).await {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        };
        let context = self.check_context(&policy, limits, now);
        let ack_clock = (now, self.settings.max_clock_skew_ms);
        let checked = tokio::task::spawn_blocking(move || {
            let outcomes = check::check(&context, alerts, &known);
            let acked = acks::verify_all(&context.policy, acks, ack_clock);
            (outcomes, acked)
        })
        .await;
        let Ok((mut outcomes, acked)) = checked else {
            error!("checking a batch failed: nothing of it is answered (publishers will resend)");
            return;
        };

        let waited = Instant::now();
        let turn = match self.turn().await {
            Ok(t) => t,
            Err(e) => {
                error!(error = %e, messages, "nothing of this batch is recorded or answered (fail closed; publishers will resend)");
                return;
            }
        };
        let locked = Instant::now();
        // A client that failed over may have resent an alert to another
        // node that accepted it after the check above: looked up again
        // under the lock, it is answered as a resend, not stored twice.
        let accepted = check::accepted_keys(&outcomes);
        if !accepted.is_empty() {
            match self.store.known_alerts(&accepted).await {
                Ok(late) => check::settle_late_resends(&mut outcomes, &late),
                Err(e) => {
                    error!(error = %e, "database unavailable: batch dropped (fail closed)");
                    return;
                }
            }
        }
        let looked_up = Instant::now();
        let resent = check::resent_keys(&outcomes);
        let mut draft = self.appender.draft(policy.version());
        if self.recorded_policy.as_deref() != Some(policy.version())
            && let Err(e) = self.record_policy(&policy, now, &mut draft).await
        {
            error!(error = %e, "database unavailable: batch dropped (fail closed)");
            return;
        }
        let recorder = Recorder {
            policy: policy.clone(),
            signer: self.signer.clone(),
            subjects: self.subjects.clone(),
            now,
        };
        let recorded = tokio::task::spawn_blocking(move || {
            let recorded = recorder.record(&outcomes, &mut draft);
            (recorded, draft)
        })
        .await;
        let Ok((mut recorded, mut draft)) = recorded else {
            error!("recording a batch failed: nothing of it is answered (publishers will resend)");
            return;
        };
        let signed = Instant::now();
        let pending = match acks::pending(&self.store, &acked).await {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "database unavailable: batch dropped (fail closed)");
                return;
            }
        };
        acks::record(&acked, &pending, now, &HashSet::new(), &mut draft);
        // Shares for agencies connected elsewhere are handed off; so are
        // the undelivered shares of resent alerts, whose first commit may
        // have gone through unconfirmed (the database failed just then)
        // without anything being sent.
        let mut redeliver = Vec::new();
        if !resent.is_empty() {
            match self.store.undelivered_of(&resent).await {
                Ok(shares) => redeliver = shares,
                Err(e) => {
                    error!(error = %e, "database unavailable: batch dropped (fail closed)");
                    return;
                }
            }
        }
        let mut deliveries = std::mem::take(&mut recorded.deliveries);
        let (handoffs, local) =
            plan_handoffs(&draft.commit.deliveries, redeliver, &self.receiving_here());
        deliveries.extend(local);
        let mut elsewhere: Vec<String> = handoffs.iter().map(|h| h.recipient.clone()).collect();
        elsewhere.sort();
        elsewhere.dedup();
        draft.commit.handoffs = handoffs;
        let policy_recorded = draft
            .commit
            .audit
            .iter()
            .any(|e| e.kind == EntryKind::PolicyLoaded);
        let sealing = Instant::now();
        if let Err(e) = self.commit_now(turn, draft).await {
            error!(error = %e, messages, "commit failed: nothing of that batch was answered (publishers will resend)");
            self.recorded_policy = None;
            return;
        }
        if policy_recorded {
            self.recorded_policy = Some(policy.version().to_string());
        }
        let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1000.0;
        let done = Instant::now();
        debug!(
            messages,
            lock_wait_ms = ms(waited, locked),
            resend_lookup_ms = ms(locked, looked_up),
            signing_ms = ms(looked_up, signed),
            acks_and_handoffs_ms = ms(signed, sealing),
            commit_ms = ms(sealing, done),
            "batch appended under the sequencing lock"
        );
        // Wake the nodes holding the recipients, after the commit and
        // outside it (a notifying commit takes a lock of its own); their
        // poll finds the shares if this is lost.
        if !elsewhere.is_empty() {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.notify_handoffs(&elsewhere).await {
                    warn!(error = %e, "handoff notification not sent (the nodes' poll finds the shares)");
                }
            });
        }
        self.count_batch(&recorded, messages);
        for (topic, payload) in deliveries {
            self.outbox.send(topic, payload).await;
        }
        for (tenant, receipt) in recorded.receipts {
            self.outbox.send(topics::receipts(&tenant), receipt).await;
        }
        if self.appender.since_checkpoint() >= self.audit.checkpoint_every_entries
            && let Err(e) = self.checkpoint().await
        {
            error!(error = %e, "could not sign a checkpoint");
        }
        self.replay(&acked, replays).await;
    }

    /// What a batch's alerts are checked against.
    fn check_context(
        &self,
        policy: &Arc<PolicySet>,
        limits: Arc<PublishLimits>,
        now: i64,
    ) -> CheckContext {
        CheckContext {
            policy: policy.clone(),
            max_payload_bytes: self.settings.max_payload_bytes,
            max_clock_skew_ms: self.settings.max_clock_skew_ms,
            limits,
            now,
        }
    }

    /// The agencies that receive shares on this node.
    fn receiving_here(&self) -> HashSet<String> {
        self.receivers.agencies().into_iter().collect()
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
}

/// Which shares a node hands off: those of `deliveries` and `redeliver`
/// whose recipient does not receive shares `here`. The redelivered ones
/// whose recipient does are returned as (topic, message) to send from here.
fn plan_handoffs(
    deliveries: &[DeliveryRow],
    redeliver: Vec<Handoff>,
    here: &HashSet<String>,
) -> (Vec<HandoffRow>, Vec<(String, Vec<u8>)>) {
    let mut handoffs: Vec<HandoffRow> = deliveries
        .iter()
        .filter(|d| !here.contains(&d.recipient))
        .map(HandoffRow::from)
        .collect();
    let mut local = Vec::new();
    for share in redeliver {
        if here.contains(&share.recipient) {
            local.push((topics::inbox(&share.recipient, &share.topic), share.payload));
        } else {
            handoffs.push(HandoffRow {
                audit_idx: share.audit_idx,
                recipient: share.recipient,
                created_at_ms: share.created_at_ms,
            });
        }
    }
    (handoffs, local)
}

/// A batch's alerts (parsed, no signature work yet), acknowledgements and
/// replay requests.
type Split = (
    Vec<Arrived>,
    Vec<(String, bytes::Bytes)>,
    Vec<(String, bytes::Bytes)>,
);

fn split(batch: Vec<Inbound>) -> Split {
    let mut alerts = Vec::new();
    let mut acks = Vec::new();
    let mut replays = Vec::new();
    for inbound in batch {
        match inbound {
            Inbound::Alert {
                tenant,
                logical,
                payload,
            } => alerts.push(Arrived::new(tenant, logical, payload)),
            Inbound::Ack { tenant, payload } => acks.push((tenant, payload)),
            Inbound::Replay { tenant, payload } => replays.push((tenant, payload)),
        }
    }
    (alerts, acks, replays)
}

/// Counts a committed commit; `next` is the log's size after it.
fn count_commit(metrics: &crate::metrics::Metrics, commit: &Commit, next: u64) {
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
}

/// How often replays waiting for acknowledgements are looked at (to release
/// shares that were never acknowledged).
const PACE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
