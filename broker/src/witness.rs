//! Collecting the witnesses' cosignatures (C2SP tlog-witness, over MQTT).
//!
//! After the pipeline signs a checkpoint, this task asks every witness of the
//! policy in force to cosign it: an `add-checkpoint` request with the size
//! the witness last cosigned and the consistency proof from there. It
//! verifies and stores every cosignature, and once the cosignatures of a
//! checkpoint meet the quorum it publishes the checkpoint with them to every
//! agency (`/tenants/{agency}/in/_audit/cosigned`).
//!
//! A witness that does not answer never holds anything up: the pipeline goes
//! on signing, and the witness is asked again with the newest checkpoint,
//! after a timeout and then with a growing pause. One request per witness is
//! in flight at a time, so a witness that comes back catches up in one
//! request: a single consistency proof from the size it last cosigned.
//!
//! What the task knows is on the [`WitnessBoard`], for `/health` and the
//! metrics: per witness the size it last cosigned, how far behind it is,
//! its last refusal, and any conflict (a witness that has cosigned more than
//! the log holds, or refuses a checkpoint as inconsistent: the log was
//! rolled back or forked).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use samverkan_sdk::audit::cosignature::{WitnessKey, join_note, split_note, verify_cosignatures};
use samverkan_sdk::audit::witnesses::WitnessPolicy;
use samverkan_sdk::topics;
use samverkan_sdk::witness::{AddCheckpoint, Answer};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::audit::tree::consistency_proof;
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::store::{Store, StoredCosignature};

/// How long a witness has to answer before it is asked again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failure grows from the first to the longest.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));
/// How long a witness may be behind the newest checkpoint before health
/// reports it.
pub const BEHIND_GRACE: Duration = Duration::from_secs(5);
/// Checkpoints whose cosignatures are kept in memory for the quorum count.
const RECENT: usize = 64;
/// Most requests answered by one witness with 409 in a row before pausing.
const MAX_RESENDS: u32 = 3;

/// A checkpoint the pipeline signed.
#[derive(Debug, Clone)]
pub struct SignedHead {
    /// Tree size.
    pub size: u64,
    /// The broker-signed note.
    pub note: String,
    /// When the pipeline signed it.
    pub signed: Instant,
}

/// A witness's answer, as the pipeline's intake read it.
#[derive(Debug)]
pub struct WitnessAnswer {
    /// The agency whose witness answers.
    pub agency: String,
    /// The request id.
    pub id: String,
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: bytes::Bytes,
}

/// One witness on the board.
#[derive(Debug, Clone, Serialize)]
pub struct WitnessRow {
    /// The agency running it.
    pub agency: String,
    /// Its key (verifier key string).
    pub key: String,
    /// The largest checkpoint it cosigned, as far as the broker knows.
    pub cosigned_size: Option<u64>,
    /// Entries between that and the newest checkpoint.
    pub lag_entries: u64,
    /// Seconds since the newest checkpoint it has not cosigned was signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind_seconds: Option<f64>,
    /// Why its last answer was not a cosignature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Evidence that the log contradicts what it cosigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
}

/// What `/health` shows about witnessing.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WitnessHealth {
    /// The quorum of the policy in force (`none`: witnessing is off).
    pub quorum: String,
    /// The newest checkpoint signed.
    pub newest_checkpoint: Option<u64>,
    /// The newest checkpoint that reached the quorum.
    pub newest_quorum: Option<u64>,
    /// Seconds since that checkpoint was signed.
    pub newest_quorum_age_seconds: Option<f64>,
    /// Every witness of the policy.
    pub witnesses: Vec<WitnessRow>,
    /// Why witnessing is degraded, if it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl WitnessHealth {
    /// Whether every witness keeps up and none reports a conflict.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The coordinator's view, shared with the control plane.
#[derive(Default)]
pub struct WitnessBoard {
    inner: Mutex<BoardInner>,
}

#[derive(Default)]
struct BoardInner {
    quorum: String,
    newest: Option<(u64, Instant)>,
    newest_quorum: Option<(u64, Instant)>,
    rows: BTreeMap<String, (WitnessRow, Option<Instant>)>,
}

impl WitnessBoard {
    fn with<R>(&self, f: impl FnOnce(&mut BoardInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The report, as of now.
    pub fn health(&self) -> WitnessHealth {
        self.with(|b| {
            let now = Instant::now();
            let mut problems = Vec::new();
            let newest = b.newest.map(|(s, _)| s);
            let witnesses: Vec<WitnessRow> = b
                .rows
                .values()
                .map(|(row, behind)| {
                    let mut row = row.clone();
                    row.lag_entries = newest
                        .unwrap_or(0)
                        .saturating_sub(row.cosigned_size.unwrap_or(0));
                    row.behind_seconds = behind.map(|t| now.duration_since(t).as_secs_f64());
                    if let Some(c) = &row.conflict {
                        problems.push(format!("witness {}: {c}", row.agency));
                    } else if behind.is_some_and(|t| now.duration_since(t) > BEHIND_GRACE) {
                        problems.push(format!(
                            "witness {} has not cosigned checkpoint {} ({})",
                            row.agency,
                            newest.unwrap_or(0),
                            row.last_error.as_deref().unwrap_or("no answer")
                        ));
                    }
                    row
                })
                .collect();
            if b.quorum != "none"
                && let Some((size, at)) = b.newest
                && b.newest_quorum.is_none_or(|(q, _)| q < size)
                && now.duration_since(at) > BEHIND_GRACE
            {
                problems.push(format!(
                    "checkpoint {size} has not reached the quorum `{}`",
                    b.quorum
                ));
            }
            WitnessHealth {
                quorum: b.quorum.clone(),
                newest_checkpoint: newest,
                newest_quorum: b.newest_quorum.map(|(s, _)| s),
                newest_quorum_age_seconds: b
                    .newest_quorum
                    .map(|(_, t)| now.duration_since(t).as_secs_f64()),
                witnesses,
                problems,
            }
        })
    }
}

/// A request in flight to one witness.
struct InFlight {
    id: String,
    head: Arc<SignedHead>,
    sent: Instant,
}

/// What the coordinator knows of one witness.
struct Peer {
    key: WitnessKey,
    vkey: String,
    /// The size its state is at (from the store at first, then its answers).
    known: Option<u64>,
    /// The size of the newest checkpoint whose cosignature from it is stored.
    cosigned: Option<u64>,
    loaded: bool,
    in_flight: Option<InFlight>,
    next_try: Instant,
    pause: Duration,
    resends: u32,
}

/// The task's state.
pub struct Coordinator {
    store: Store,
    policy: Arc<PolicyHandle>,
    outbox: mpsc::Sender<(String, Vec<u8>)>,
    board: Arc<WitnessBoard>,
    metrics: Arc<Metrics>,
    peers: BTreeMap<String, Peer>,
    head: Option<Arc<SignedHead>>,
    /// Cosignature lines per checkpoint size, by agency (recent sizes).
    cosigned: BTreeMap<u64, (Arc<SignedHead>, BTreeMap<String, String>)>,
    published: u64,
    nonce: String,
    counter: u64,
    /// Verified cosignatures on their way to the store (written off the
    /// path from answer to quorum: the database's single writer is busy
    /// with the pipeline's commits).
    writer: Option<mpsc::Sender<StoredCosignature>>,
    /// The consistency proofs of the newest checkpoint, by old size.
    proofs: Option<(u64, ProofsByOld)>,
}

/// Consistency proofs to one checkpoint, by the old size they start from.
type ProofsByOld = BTreeMap<u64, Vec<[u8; 32]>>;

/// Cosignatures waiting to be stored; beyond this the coordinator waits.
const STORE_QUEUE: usize = 4096;

/// Writes cosignatures as they come, in batches, until the channel closes.
async fn store_cosignatures(store: Store, mut rx: mpsc::Receiver<StoredCosignature>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        // A failed write is tried again with the next batch, a few times.
        for attempt in 0..5u32 {
            match store.insert_cosignatures(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %e, attempt, rows = batch.len(), "cosignatures could not be stored yet");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        batch.clear();
    }
}

impl Coordinator {
    /// A coordinator that sends through `outbox` (topic, payload).
    pub fn new(
        store: Store,
        policy: Arc<PolicyHandle>,
        outbox: mpsc::Sender<(String, Vec<u8>)>,
        board: Arc<WitnessBoard>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut nonce = [0u8; 4];
        let _ = getrandom::fill(&mut nonce);
        Self {
            store,
            policy,
            outbox,
            board,
            metrics,
            peers: BTreeMap::new(),
            head: None,
            cosigned: BTreeMap::new(),
            published: 0,
            nonce: hex::encode(nonce),
            counter: 0,
            writer: None,
            proofs: None,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(
        mut self,
        mut heads: watch::Receiver<Option<Arc<SignedHead>>>,
        mut answers: mpsc::Receiver<WitnessAnswer>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (writer, rx) = mpsc::channel(STORE_QUEUE);
        let store_task = tokio::spawn(store_cosignatures(self.store.clone(), rx));
        self.writer = Some(writer);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                changed = heads.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let head = heads.borrow_and_update().clone();
                    if let Some(head) = head {
                        self.new_head(head);
                    }
                    self.dispatch().await;
                }
                Some(answer) = answers.recv() => {
                    self.answer(answer).await;
                    self.dispatch().await;
                }
                _ = tick.tick() => self.dispatch().await,
            }
        }
        // What was verified is stored before the task ends.
        self.writer = None;
        let _ = store_task.await;
    }

    fn new_head(&mut self, head: Arc<SignedHead>) {
        let at = head.signed;
        self.board.with(|b| {
            b.newest = Some((head.size, at));
            for (row, behind) in b.rows.values_mut() {
                if row.cosigned_size != Some(head.size) && behind.is_none() {
                    *behind = Some(at);
                }
            }
        });
        self.head = Some(head);
    }

    /// Brings the peers in line with the policy in force.
    fn sync_peers(&mut self, policy: &WitnessPolicy) {
        let wanted: BTreeMap<String, (WitnessKey, String)> = policy
            .witnesses()
            .values()
            .map(|w| (w.agency.clone(), (w.key.clone(), w.key.vkey())))
            .collect();
        self.peers
            .retain(|agency, p| wanted.get(agency).is_some_and(|(_, v)| *v == p.vkey));
        let now = Instant::now();
        for (agency, (key, vkey)) in &wanted {
            self.peers.entry(agency.clone()).or_insert_with(|| Peer {
                key: key.clone(),
                vkey: vkey.clone(),
                known: None,
                cosigned: None,
                loaded: false,
                in_flight: None,
                next_try: now,
                pause: RETRY.0,
                resends: 0,
            });
        }
        let newest = self.head.as_ref().map(|h| (h.size, h.signed));
        self.board.with(|b| {
            b.quorum = policy.quorum_name().to_string();
            b.rows
                .retain(|agency, (row, _)| wanted.get(agency).is_some_and(|(_, v)| *v == row.key));
            for (agency, (_, vkey)) in &wanted {
                b.rows.entry(agency.clone()).or_insert_with(|| {
                    (
                        WitnessRow {
                            agency: agency.clone(),
                            key: vkey.clone(),
                            cosigned_size: None,
                            lag_entries: 0,
                            behind_seconds: None,
                            last_error: None,
                            conflict: None,
                        },
                        newest.map(|(_, t)| t),
                    )
                });
            }
        });
    }

    fn update_row(&self, agency: &str, f: impl FnOnce(&mut WitnessRow, &mut Option<Instant>)) {
        self.board.with(|b| {
            if let Some((row, behind)) = b.rows.get_mut(agency) {
                f(row, behind);
            }
        });
    }

    /// Sends the newest checkpoint to every witness that is free and due.
    async fn dispatch(&mut self) {
        let policy = self.policy.current();
        self.sync_peers(policy.witnesses());
        let Some(head) = self.head.clone() else {
            return;
        };
        let now = Instant::now();
        let agencies: Vec<String> = self.peers.keys().cloned().collect();
        for agency in agencies {
            let Some(peer) = self.peers.get_mut(&agency) else {
                continue;
            };
            if let Some(f) = &peer.in_flight {
                if now.duration_since(f.sent) < ANSWER_TIMEOUT {
                    continue;
                }
                peer.in_flight = None;
                peer.next_try = now + peer.pause;
                peer.pause = (peer.pause * 2).min(RETRY.1);
                self.metrics
                    .witness_refusals
                    .get_or_create(&crate::metrics::WitnessStatusLabel {
                        witness: agency.clone(),
                        status: "timeout".into(),
                    })
                    .inc();
                self.update_row(&agency, |row, _| {
                    row.last_error = Some(format!(
                        "no answer within {} s (offline?)",
                        ANSWER_TIMEOUT.as_secs()
                    ));
                });
                continue;
            }
            if now < peer.next_try || peer.cosigned == Some(head.size) {
                continue;
            }
            if !peer.loaded {
                match self.store.last_cosigned(&peer.vkey).await {
                    Ok(known) => {
                        peer.known = known;
                        peer.cosigned = known;
                        peer.loaded = true;
                        let known = peer.known;
                        self.update_row(&agency, |row, _| row.cosigned_size = known);
                        if known == Some(head.size) {
                            continue;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot read cosignatures; witnesses wait");
                        return;
                    }
                }
            }
            self.send(&agency, head.clone()).await;
        }
    }

    /// Sends `head` to the witness of `agency` with a proof from its size.
    async fn send(&mut self, agency: &str, head: Arc<SignedHead>) {
        let Some(peer) = self.peers.get(agency) else {
            return;
        };
        let old = peer.known.unwrap_or(0);
        let proof = if old > head.size {
            // The witness has cosigned more than the log holds: ask anyway,
            // so that it keeps the new checkpoint as evidence, and say so.
            let conflict = format!(
                "it has cosigned a tree of {old} entries, the log now has {}: the log was rolled back or forked",
                head.size
            );
            error!(witness = agency, "{conflict}");
            self.update_row(agency, |row, _| row.conflict = Some(conflict));
            Vec::new()
        } else {
            // Witnesses that are in step share one proof per checkpoint.
            let cached = self
                .proofs
                .as_ref()
                .filter(|(size, _)| *size == head.size)
                .and_then(|(_, by_old)| by_old.get(&old).cloned());
            let computed = match cached {
                Some(p) => Ok(p),
                None => consistency_proof(&self.store, head.size, old).await,
            };
            match computed {
                Ok(p) => {
                    if self
                        .proofs
                        .as_ref()
                        .is_none_or(|(size, _)| *size != head.size)
                    {
                        self.proofs = Some((head.size, BTreeMap::new()));
                    }
                    if let Some((_, by_old)) = self.proofs.as_mut() {
                        by_old.insert(old, p.clone());
                    }
                    p
                }
                Err(e) => {
                    warn!(witness = agency, error = %e, "no consistency proof; asked again later");
                    if let Some(peer) = self.peers.get_mut(agency) {
                        peer.next_try = Instant::now() + RETRY.1;
                    }
                    return;
                }
            }
        };
        self.counter += 1;
        let id = format!("{}{:x}", self.nonce, self.counter);
        let body = AddCheckpoint {
            old_size: old,
            proof,
            checkpoint: head.note.clone(),
        }
        .to_bytes();
        debug!(
            witness = agency,
            id,
            old,
            size = head.size,
            "asking for a cosignature"
        );
        if self
            .outbox
            .send((topics::witness_request(agency, &id), body))
            .await
            .is_err()
        {
            return;
        }
        if let Some(peer) = self.peers.get_mut(agency) {
            peer.in_flight = Some(InFlight {
                id,
                head,
                sent: Instant::now(),
            });
        }
    }

    /// Handles a witness's answer to a request in flight.
    async fn answer(&mut self, answer: WitnessAnswer) {
        let agency = answer.agency.clone();
        let Some(peer) = self.peers.get_mut(&agency) else {
            return;
        };
        let Some(in_flight) = peer.in_flight.take_if(|f| f.id == answer.id) else {
            debug!(
                witness = agency,
                id = answer.id,
                "an answer to no request in flight (late or repeated)"
            );
            return;
        };
        let round = in_flight.sent.elapsed();
        let head = in_flight.head;
        let parsed = Answer::parse(answer.status, &answer.body);
        let status_label = |s: &str| crate::metrics::WitnessStatusLabel {
            witness: agency.clone(),
            status: s.to_string(),
        };
        match parsed {
            Ok(Answer::Cosigned(lines)) => {
                let key = peer.key.clone();
                let vkey = peer.vkey.clone();
                match verify_answer(&head.note, &lines, &key) {
                    Ok(line) => {
                        peer.known = Some(head.size);
                        peer.cosigned = Some(head.size);
                        peer.pause = RETRY.0;
                        peer.resends = 0;
                        self.metrics
                            .witness_round_seconds
                            .observe(round.as_secs_f64());
                        self.metrics
                            .witness_cosignatures
                            .get_or_create(&crate::metrics::WitnessLabel {
                                witness: agency.clone(),
                            })
                            .inc();
                        let newest = self.head.as_ref().map(|h| h.size);
                        self.update_row(&agency, |row, behind| {
                            row.cosigned_size = Some(head.size);
                            row.last_error = None;
                            if newest == Some(head.size) {
                                *behind = None;
                            }
                        });
                        let stored = StoredCosignature {
                            size: head.size,
                            witness: agency.clone(),
                            vkey,
                            line: line.clone(),
                            at_ms: samverkan_sdk::time::now_ms(),
                        };
                        if let Some(writer) = &self.writer
                            && writer.send(stored).await.is_err()
                        {
                            error!(witness = agency, "the cosignature store has stopped");
                        }
                        self.count(head, &agency, line).await;
                    }
                    Err(e) => {
                        warn!(witness = agency, error = %e, "a cosignature does not verify");
                        peer.next_try = Instant::now() + peer.pause;
                        self.metrics
                            .witness_refusals
                            .get_or_create(&status_label("bad_cosignature"))
                            .inc();
                        self.update_row(&agency, |row, _| row.last_error = Some(e.to_string()));
                    }
                }
            }
            Ok(Answer::Conflict(size)) => {
                info!(
                    witness = agency,
                    size, "the witness has cosigned another size; asking again from there"
                );
                self.metrics
                    .witness_refusals
                    .get_or_create(&status_label("409"))
                    .inc();
                peer.known = Some(size);
                peer.loaded = true;
                peer.resends += 1;
                if peer.resends > MAX_RESENDS {
                    peer.resends = 0;
                    peer.next_try = Instant::now() + peer.pause;
                    peer.pause = (peer.pause * 2).min(RETRY.1);
                }
                self.update_row(&agency, |row, _| {
                    row.cosigned_size = Some(size);
                    row.last_error = Some(format!("the witness is at size {size}"));
                });
            }
            Ok(Answer::Refused { status, reason }) => {
                warn!(
                    witness = agency,
                    status, reason, "the witness refused to cosign"
                );
                self.metrics
                    .witness_refusals
                    .get_or_create(&status_label(&status.to_string()))
                    .inc();
                peer.next_try = Instant::now() + peer.pause;
                peer.pause = (peer.pause * 2).min(RETRY.1);
                let conflict = (status == 422).then(|| {
                    format!(
                        "it refuses checkpoint {} as inconsistent with what it cosigned: {reason}",
                        head.size
                    )
                });
                if let Some(c) = &conflict {
                    error!(witness = agency, "{c}");
                }
                self.update_row(&agency, |row, _| {
                    row.last_error = Some(format!("{status}: {reason}"));
                    if conflict.is_some() {
                        row.conflict = conflict;
                    }
                });
            }
            Err(e) => {
                warn!(witness = agency, error = %e, "an answer that is not one of add-checkpoint");
                peer.next_try = Instant::now() + peer.pause;
                self.update_row(&agency, |row, _| row.last_error = Some(e.to_string()));
            }
        }
    }

    /// Counts a cosignature towards the quorum of its checkpoint, and
    /// publishes the checkpoint once the quorum is met.
    async fn count(&mut self, head: Arc<SignedHead>, agency: &str, line: String) {
        let size = head.size;
        let entry = self
            .cosigned
            .entry(size)
            .or_insert_with(|| (head.clone(), BTreeMap::new()));
        entry.1.insert(agency.to_string(), line);
        while self.cosigned.len() > RECENT {
            self.cosigned.pop_first();
        }
        let Some((head, lines)) = self.cosigned.get(&size) else {
            return;
        };
        let policy = self.policy.current();
        let signed: BTreeSet<String> = lines.keys().cloned().collect();
        if size <= self.published || !policy.witnesses().quorum_met(&signed) {
            return;
        }
        let note = match cosigned_note(&head.note, lines.values().cloned().collect()) {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "cannot assemble the cosigned checkpoint");
                return;
            }
        };
        self.published = size;
        let signed_at = head.signed;
        self.board
            .with(|b| b.newest_quorum = Some((size, signed_at)));
        self.metrics
            .witness_quorum_seconds
            .observe(signed_at.elapsed().as_secs_f64());
        for agency in policy.agencies().keys() {
            let _ = self
                .outbox
                .send((
                    topics::cosigned_checkpoint(agency),
                    note.clone().into_bytes(),
                ))
                .await;
        }
        info!(
            size,
            witnesses = signed.len(),
            "checkpoint reached the witness quorum and was published"
        );
    }
}

/// Why a witness's answer or a cosigned note could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CosignError {
    /// The note or the answer's lines do not parse, or a line does not verify.
    #[error(transparent)]
    Note(#[from] samverkan_sdk::audit::AuditProofError),
    /// The answer holds no cosignature of the witness's key.
    #[error("no cosignature of {0} in the answer")]
    Missing(String),
}

/// The one cosignature line of `key` in a witness's answer, verified over
/// the checkpoint's text.
fn verify_answer(note: &str, lines: &str, key: &WitnessKey) -> Result<String, CosignError> {
    let lines = samverkan_sdk::audit::cosignature::parse_signature_lines(lines)?;
    let (text, _) = split_note(note)?;
    let own: Vec<String> = lines
        .into_iter()
        .filter(|l| l.starts_with(&format!("\u{2014} {} ", key.name)))
        .collect();
    let combined = join_note(&text, &own);
    let verified = verify_cosignatures(&combined, std::slice::from_ref(key))?;
    verified
        .into_iter()
        .next()
        .map(|c| c.line)
        .ok_or_else(|| CosignError::Missing(key.vkey()))
}

/// The broker's note with the cosignature lines added, sorted by key name
/// (the canonical order of evidence bundles).
pub fn cosigned_note(note: &str, mut cosignatures: Vec<String>) -> Result<String, CosignError> {
    let (text, broker) = split_note(note)?;
    cosignatures.sort();
    cosignatures.dedup();
    let mut lines = broker;
    lines.extend(cosignatures);
    Ok(join_note(&text, &lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use samverkan_sdk::audit::checkpoint::sign_checkpoint;
    use samverkan_sdk::audit::cosignature::cosign;

    fn witness(seed: u8, name: &str) -> (SigningKey, WitnessKey) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let public = WitnessKey {
            name: name.into(),
            public_key: key.verifying_key(),
        };
        (key, public)
    }

    #[test]
    fn answers_are_verified_and_cosigned_notes_are_sorted() {
        let note = sign_checkpoint(
            "o/log",
            3,
            &[1; 32],
            1_000,
            None,
            &SigningKey::from_bytes(&[9; 32]),
        )
        .unwrap();
        let (text, broker) = split_note(&note).unwrap();
        let (ka, a) = witness(1, "w/a");
        let (kb, b) = witness(2, "w/b");
        let line_a = cosign(&a.name, &ka, text.as_bytes(), 5);
        let line_b = cosign(&b.name, &kb, text.as_bytes(), 6);
        assert_eq!(verify_answer(&note, &line_a, &a).unwrap(), line_a);
        // Another witness's line, or a line over another text, is not a's.
        assert!(verify_answer(&note, &line_b, &a).is_err());
        let other = cosign(&a.name, &ka, b"o/log\n4\nAAAA\n", 5);
        assert!(verify_answer(&note, &other, &a).is_err());
        assert!(verify_answer(&note, "not a line", &a).is_err());
        // Broker line first, then the cosignatures sorted, each once.
        let cosigned =
            cosigned_note(&note, vec![line_b.clone(), line_a.clone(), line_a.clone()]).unwrap();
        let (_, lines) = split_note(&cosigned).unwrap();
        assert_eq!(lines, vec![broker[0].clone(), line_a, line_b]);
    }

    #[test]
    fn health_reports_witnesses_behind_and_conflicts() {
        let board = WitnessBoard::default();
        let long_ago = Instant::now() - BEHIND_GRACE * 2;
        board.with(|b| {
            b.quorum = "agencies".into();
            b.newest = Some((10, long_ago));
            b.newest_quorum = Some((8, long_ago));
            for (agency, size, conflict) in [
                ("a", 10, None),
                ("b", 8, None),
                ("c", 12, Some("rolled back")),
            ] {
                b.rows.insert(
                    agency.to_string(),
                    (
                        WitnessRow {
                            agency: agency.into(),
                            key: String::new(),
                            cosigned_size: Some(size),
                            lag_entries: 0,
                            behind_seconds: None,
                            last_error: None,
                            conflict: conflict.map(str::to_string),
                        },
                        (size != 10).then_some(long_ago),
                    ),
                );
            }
        });
        let health = board.health();
        assert!(!health.ok());
        assert_eq!(health.problems.len(), 3, "{:?}", health.problems);
        assert!(
            health
                .problems
                .iter()
                .any(|p| p.contains("witness b has not cosigned checkpoint 10"))
        );
        assert!(
            health
                .problems
                .iter()
                .any(|p| p.contains("witness c: rolled back"))
        );
        assert!(
            health
                .problems
                .iter()
                .any(|p| p.contains("checkpoint 10 has not reached"))
        );
        assert_eq!(health.witnesses[1].lag_entries, 2);
        board.with(|b| {
            b.newest_quorum = Some((10, Instant::now()));
            b.rows.retain(|a, _| a == "a");
        });
        assert!(board.health().ok());
    }
}
