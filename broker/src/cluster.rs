//! One node of several on one highly available PostgreSQL.
//!
//! Nodes share nothing but the database: the log is sequenced by a lock
//! taken in each append transaction (`store/sequence.rs`), shares for
//! agencies connected elsewhere are handed off through a queue in the
//! database (`store/handoffs.rs`, `pipeline/handoff.rs`), and a node writes
//! to whichever host of the database is not in recovery
//! (`store/hosts.rs`). This module holds what a node knows about its own
//! part, for `/health` and metrics, and the **no-fork guard**: before a
//! node appends after a failure or signs a checkpoint, it checks that the
//! database's tree still contains the newest checkpoint ever published,
//! which it also keeps in a file of its own, out of reach of a database
//! restored from a backup or a standby promoted without the last commits.
//! If the database has lost part of the published log, the node stops
//! appending and signing and says so, until an operator acts
//! (ARCHITECTURE.md, "No fork").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::Serialize;
use tracing::error;

use crate::audit::tree::stored_root;
use crate::config::ClusterSettings;
use crate::store::{Store, StoreError, StoredCheckpoint};

/// The file in the state directory holding the newest published checkpoint.
const PUBLISHED_FILE: &str = "published-checkpoint";

/// What a node knows of its part in the cluster.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    state_file: PathBuf,
    /// The node is in an append transaction (holds the sequencing lock).
    sequencing: Arc<AtomicBool>,
    /// Why the node stopped appending and signing, once it has.
    halted: Mutex<Option<String>>,
    /// Checkpoints this node signed.
    signed: AtomicU64,
    /// The size of the newest checkpoint this node signed.
    last_signed: AtomicU64,
    /// Shares handed off by other nodes and claimed here.
    claimed: AtomicU64,
    /// Milliseconds from recording to claim of the last share claimed.
    last_lag_ms: AtomicU64,
    /// Handed-off shares waiting, per recipient (as last counted).
    depths: Mutex<Vec<(String, u64)>>,
}

/// `cluster` in `GET /health`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    /// This node's name.
    pub node: String,
    /// `host:port` of the database host written to.
    pub database_host: String,
    /// The locks this node holds right now (`sequence` while it appends).
    pub holds: Vec<&'static str>,
    /// Whether this node may append and sign (false once the no-fork guard stopped it).
    pub signing: bool,
    /// Why the no-fork guard stopped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// Checkpoints this node signed since start.
    pub checkpoints_signed: u64,
    /// The size of the newest checkpoint this node signed.
    pub last_checkpoint_signed: u64,
    /// Shares handed off by other nodes that this node claimed.
    pub handoffs_claimed: u64,
    /// Milliseconds from recording to claim of the last one (notification lag).
    pub handoff_lag_ms: u64,
    /// Handed-off shares waiting for a node holding their recipient.
    pub handoff_queue: std::collections::BTreeMap<String, u64>,
}

/// Set while an append transaction is open; cleared when it ends however it ends.
#[derive(Debug)]
pub struct Sequencing(Arc<AtomicBool>);

impl Drop for Sequencing {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Cluster {
    /// The node of `settings`; creates its state directory.
    pub fn open(settings: &ClusterSettings) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create the state directory {}: {e}",
                    settings.state_dir.display()
                ),
            )
        })?;
        Ok(Self {
            node: settings.node.clone(),
            state_file: settings.state_dir.join(PUBLISHED_FILE),
            sequencing: Arc::default(),
            halted: Mutex::new(None),
            signed: AtomicU64::new(0),
            last_signed: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            last_lag_ms: AtomicU64::new(0),
            depths: Mutex::new(Vec::new()),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Marks the node as holding the sequencing lock until the guard drops.
    pub fn sequencing(&self) -> Sequencing {
        self.sequencing.store(true, Ordering::Release);
        Sequencing(self.sequencing.clone())
    }

    /// Why the node has stopped appending and signing, if it has.
    pub fn halted(&self) -> Option<String> {
        self.halted.lock().ok().and_then(|h| h.clone())
    }

    fn halt(&self, reason: String) -> StoreError {
        if let Ok(mut halted) = self.halted.lock()
            && halted.is_none()
        {
            error!(node = %self.node, %reason, "no-fork guard: this node stops appending and signing until an operator acts (ARCHITECTURE.md, \"No fork\")");
            *halted = Some(reason.clone());
        }
        StoreError::Forked(reason)
    }

    /// Checks that the database's log of `size` entries contains the newest
    /// checkpoint published, from this node's file and from the database,
    /// and keeps the newer of the two in the file; returns the database's
    /// newest. Once it has failed it keeps failing.
    pub async fn guard(
        &self,
        store: &Store,
        size: u64,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        if let Some(reason) = self.halted() {
            return Err(StoreError::Forked(reason));
        }
        let local = self.published().map_err(|e| self.halt(e))?;
        let stored = store.latest_checkpoint().await?;
        // Usually the file holds the database's newest: checked once.
        let same =
            |a: &StoredCheckpoint, b: &StoredCheckpoint| a.size == b.size && a.root == b.root;
        let local_to_check = local
            .as_ref()
            .filter(|l| stored.as_ref().is_none_or(|s| !same(l, s)));
        for (cp, source) in [
            (local_to_check, "this node's state file"),
            (stored.as_ref(), "the database"),
        ] {
            let Some(cp) = cp else { continue };
            if cp.size > size {
                return Err(self.halt(format!(
                    "the database holds {size} entries, but a checkpoint of {} entries was published (from {source})",
                    cp.size
                )));
            }
            if cp.size > 0 && stored_root(store, cp.size).await? != cp.root {
                return Err(self.halt(format!(
                    "the database's tree at {} entries differs from the published checkpoint (from {source})",
                    cp.size
                )));
            }
        }
        if let Some(stored) = &stored
            && local.as_ref().is_none_or(|l| l.size < stored.size)
        {
            self.keep(&stored.note).map_err(|e| self.halt(e))?;
        }
        Ok(stored)
    }

    /// This node signed and stored `cp`: it is the newest published.
    pub fn signed(&self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        self.signed.fetch_add(1, Ordering::Relaxed);
        self.last_signed.store(cp.size, Ordering::Relaxed);
        self.keep(&cp.note).map_err(|e| self.halt(e))
    }

    /// Counts a claimed share and its lag.
    pub fn claimed(&self, lag_ms: u64) {
        self.claimed.fetch_add(1, Ordering::Relaxed);
        self.last_lag_ms.store(lag_ms, Ordering::Relaxed);
    }

    /// The handed-off shares waiting, per recipient.
    pub fn set_depths(&self, depths: Vec<(String, u64)>) {
        if let Ok(mut d) = self.depths.lock() {
            *d = depths;
        }
    }

    /// The handed-off shares waiting, per recipient, as last counted.
    pub fn depths(&self) -> Vec<(String, u64)> {
        self.depths.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// `cluster` in `/health`.
    pub fn health(&self, store: &Store) -> ClusterHealth {
        let halted = self.halted();
        ClusterHealth {
            node: self.node.clone(),
            database_host: store.target_host(),
            holds: if self.sequencing.load(Ordering::Acquire) {
                vec!["sequence"]
            } else {
                Vec::new()
            },
            signing: halted.is_none(),
            halted,
            checkpoints_signed: self.signed.load(Ordering::Relaxed),
            last_checkpoint_signed: self.last_signed.load(Ordering::Relaxed),
            handoffs_claimed: self.claimed.load(Ordering::Relaxed),
            handoff_lag_ms: self.last_lag_ms.load(Ordering::Relaxed),
            handoff_queue: self.depths().into_iter().collect(),
        }
    }

    /// The newest checkpoint in this node's file.
    fn published(&self) -> Result<Option<StoredCheckpoint>, String> {
        let note = match std::fs::read_to_string(&self.state_file) {
            Ok(note) => note,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.state_file.display())),
        };
        parse_note(&note)
            .map(Some)
            .ok_or_else(|| format!("{} does not hold a checkpoint", self.state_file.display()))
    }

    /// Replaces the file's checkpoint with `note`, durably (written beside
    /// it, synced, then renamed over it).
    fn keep(&self, note: &str) -> Result<(), String> {
        write_durably(&self.state_file, note.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.state_file.display()))
    }
}

/// Size and root of a signed checkpoint note (C2SP tlog-checkpoint: origin,
/// size, base64 root, then extensions and signatures).
fn parse_note(note: &str) -> Option<StoredCheckpoint> {
    let mut lines = note.lines();
    let _origin = lines.next()?;
    let size = lines.next()?.parse().ok()?;
    let root = base64::engine::general_purpose::STANDARD
        .decode(lines.next()?)
        .ok()?
        .try_into()
        .ok()?;
    Some(StoredCheckpoint {
        size,
        root,
        at_ms: 0,
        note: note.to_string(),
    })
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("new");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_gives_its_size_and_root() {
        let root = [7u8; 32];
        let note = format!(
            "samverkan-dev/audit\n42\n{}\ntime 1\n\n— samverkan-dev/audit abc=\n",
            base64::engine::general_purpose::STANDARD.encode(root)
        );
        let cp = parse_note(&note).unwrap();
        assert_eq!((cp.size, cp.root), (42, root));
        assert!(parse_note("origin\nforty\nxx\n").is_none());
        assert!(parse_note("origin\n42\nAAAA\n").is_none(), "a short root");
    }
}
