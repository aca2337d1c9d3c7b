//! Prometheus metrics (prometheus-client): what an operator watches.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set with one `code` (refusal reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code.
    pub code: String,
}

/// A label set with one `agency`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgencyLabel {
    /// The agency id.
    pub agency: String,
}

/// A label set with one `witness` (agency id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WitnessLabel {
    /// The witness's agency.
    pub witness: String,
}

/// A label set with a `witness` and the `status` of its answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WitnessStatusLabel {
    /// The witness's agency.
    pub witness: String,
    /// HTTP status of the answer, `timeout` or `bad_cosignature`.
    pub status: String,
}

/// Every metric the broker exports.
pub struct Metrics {
    registry: Registry,
    /// Alerts accepted.
    pub accepted: Counter,
    /// Alerts refused, by code.
    pub rejected: Family<CodeLabel, Counter>,
    /// Exact resends answered with the stored receipt.
    pub resent: Counter,
    /// Shares recorded.
    pub shares: Counter,
    /// Denials recorded.
    pub denials: Counter,
    /// Acknowledgements recorded.
    pub acks: Counter,
    /// Batches that could not be committed (database unavailable).
    pub failed_commits: Counter,
    /// Seconds per batch commit.
    pub commit_seconds: Histogram,
    /// Messages per batch.
    pub batch_size: Histogram,
    /// 1 while the database answers, 0 while the broker fails closed.
    pub database_up: Gauge,
    /// Audit log size.
    pub audit_entries: Gauge,
    /// Open connections per agency (set when scraped).
    pub connections: Family<AgencyLabel, Gauge>,
    /// Cosignatures received, per witness.
    pub witness_cosignatures: Family<WitnessLabel, Counter>,
    /// Requests a witness did not cosign, per witness and answer.
    pub witness_refusals: Family<WitnessStatusLabel, Counter>,
    /// Seconds from a cosigning request to its verified cosignature.
    pub witness_round_seconds: Histogram,
    /// Seconds from signing a checkpoint to its reaching the quorum.
    pub witness_quorum_seconds: Histogram,
    /// Seconds since the newest checkpoint that reached the quorum was signed (set when scraped; -1: none yet).
    pub witness_quorum_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Entries between the newest checkpoint and the one each witness last cosigned (set when scraped).
    pub witness_lag_entries: Family<WitnessLabel, Gauge>,
    /// Several nodes: 1 while this node may append and sign, 0 once the no-fork guard stopped it.
    pub node_signing: Gauge,
    /// Several nodes: time from taking the sequencing lock to the append's commit.
    pub sequence_hold_seconds: Histogram,
    /// Several nodes: 1 while this node holds the sequencing lock (set when scraped).
    pub node_holds_sequence: Gauge,
    /// Several nodes: shares handed off by other nodes and claimed here.
    pub handoffs_claimed: Gauge,
    /// Several nodes: seconds from recording to claim of the last handed-off share.
    pub handoff_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Several nodes: handed-off shares waiting, per recipient.
    pub handoff_queue: Family<AgencyLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("samverkan");
        let m = Self {
            accepted: Counter::default(),
            rejected: Family::default(),
            resent: Counter::default(),
            shares: Counter::default(),
            denials: Counter::default(),
            acks: Counter::default(),
            failed_commits: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            database_up: Gauge::default(),
            audit_entries: Gauge::default(),
            connections: Family::default(),
            witness_cosignatures: Family::default(),
            witness_refusals: Family::default(),
            witness_round_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            witness_quorum_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            witness_quorum_age_seconds: Gauge::default(),
            witness_lag_entries: Family::default(),
            node_signing: Gauge::default(),
            node_holds_sequence: Gauge::default(),
            sequence_hold_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            handoffs_claimed: Gauge::default(),
            handoff_lag_seconds: Gauge::default(),
            handoff_queue: Family::default(),
            registry: Registry::default(),
        };
        registry.register("alerts_accepted", "Alerts accepted", m.accepted.clone());
        registry.register(
            "alerts_rejected",
            "Alerts refused, by reason code",
            m.rejected.clone(),
        );
        registry.register(
            "alerts_resent",
            "Exact resends answered with the stored receipt",
            m.resent.clone(),
        );
        registry.register("shares", "Shares recorded", m.shares.clone());
        registry.register("denials", "Denials recorded", m.denials.clone());
        registry.register(
            "acks",
            "Acknowledgements of receipt recorded",
            m.acks.clone(),
        );
        registry.register(
            "failed_commits",
            "Batches not committed (database unavailable)",
            m.failed_commits.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit one batch",
            m.commit_seconds.clone(),
        );
        registry.register("batch_size", "Messages per batch", m.batch_size.clone());
        registry.register(
            "database_up",
            "1 while the database answers",
            m.database_up.clone(),
        );
        registry.register(
            "audit_entries",
            "Entries in the audit log",
            m.audit_entries.clone(),
        );
        registry.register(
            "connections",
            "Open connections per agency",
            m.connections.clone(),
        );
        registry.register(
            "witness_cosignatures",
            "Cosignatures received, per witness",
            m.witness_cosignatures.clone(),
        );
        registry.register(
            "witness_refusals",
            "Cosigning requests not cosigned, per witness and answer (HTTP status, timeout, bad_cosignature)",
            m.witness_refusals.clone(),
        );
        registry.register(
            "witness_round_seconds",
            "Time from a cosigning request to its verified cosignature",
            m.witness_round_seconds.clone(),
        );
        registry.register(
            "witness_quorum_seconds",
            "Time from signing a checkpoint to its reaching the witness quorum",
            m.witness_quorum_seconds.clone(),
        );
        registry.register(
            "witness_quorum_age_seconds",
            "Age of the newest checkpoint that reached the witness quorum (-1: none yet)",
            m.witness_quorum_age_seconds.clone(),
        );
        registry.register(
            "witness_lag_entries",
            "Entries between the newest checkpoint and the one each witness last cosigned",
            m.witness_lag_entries.clone(),
        );
        registry.register(
            "node_signing",
            "1 while this node may append and sign; 0 once the no-fork guard stopped it (several nodes)",
            m.node_signing.clone(),
        );
        registry.register(
            "node_holds_sequence",
            "1 while this node holds the log's sequencing lock (several nodes)",
            m.node_holds_sequence.clone(),
        );
        registry.register(
            "sequence_hold_seconds",
            "Time from taking the log's sequencing lock to the append's commit (several nodes)",
            m.sequence_hold_seconds.clone(),
        );
        registry.register(
            "handoffs_claimed",
            "Shares handed off by other nodes and delivered by this one (several nodes)",
            m.handoffs_claimed.clone(),
        );
        registry.register(
            "handoff_lag_seconds",
            "Seconds from recording to delivery of the last handed-off share (several nodes)",
            m.handoff_lag_seconds.clone(),
        );
        registry.register(
            "handoff_queue",
            "Handed-off shares waiting for a node that holds their recipient (several nodes)",
            m.handoff_queue.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
