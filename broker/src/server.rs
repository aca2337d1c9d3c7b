//! Starting, running and stopping the whole broker: store, policy, embedded
//! rumqttd, pipeline, gateway, and the operator's control plane (health,
//! metrics, reload).
//!
//! The library takes an already-bound listener (tests bind `127.0.0.1:0`)
//! and returns a handle; `samverkan serve` binds the configured address,
//! reloads on SIGHUP and stops on SIGTERM or Ctrl-C.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use samverkan_sdk::keys::{self, KeyFileError};
use samverkan_sdk::time::{Clock, SystemClock};
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::audit::subject::{SubjectError, SubjectHasher};
use crate::cluster::{Cluster, ClusterHealth};
use crate::config::BrokerConfig;
use crate::console::{ConsoleState, ConsoleTls};
use crate::gateway::{Gateway, GatewayError, GatewaySettings, TlsFiles, server_config};
use crate::inspect::Receivers;
use crate::limits::ConnectionLimits;
use crate::metrics::{AgencyLabel, Metrics};
use crate::mqtt::{Embedded, MqttError};
use crate::pipeline::{
    Command, CommandError, PIPELINE_FILTERS, Pipeline, PipelineError, PipelineParts,
};
use crate::policy::{PolicyError, PolicyHandle, PolicySet};
use crate::signer::BrokerSigner;
use crate::store::{Backend, Store, StoreError};
use crate::witness::{WitnessBoard, WitnessHealth};

/// Why the broker did not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The policy set has mistakes.
    #[error("policy set {dir}:\n{error}")]
    Policy {
        /// The policy directory.
        dir: String,
        /// Every mistake.
        error: PolicyError,
    },
    /// The database could not be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The broker's signing key could not be read.
    #[error("broker signing key: {0}")]
    SigningKey(#[from] KeyFileError),
    /// The public TLS listener could not be configured.
    #[error("TLS: {0}")]
    Tls(#[from] GatewayError),
    /// The embedded MQTT broker did not start.
    #[error("embedded MQTT broker: {0}")]
    Mqtt(#[from] MqttError),
    /// The subject hash key could not be read.
    #[error(transparent)]
    SubjectKey(#[from] SubjectError),
    /// A listener could not be bound or read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Why a reload was refused, or did not finish; the previous policy or TLS
/// configuration stays in force unless it says otherwise.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The policy set has mistakes.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The task reading the policy set ended abnormally.
    #[error("reading the policy set failed: {0}")]
    PolicyRead(#[from] tokio::task::JoinError),
    /// The new policy is in force, but its load is not yet in the audit
    /// log (the pipeline records it with its next batch).
    #[error("the new policy is in force but could not be recorded yet: {0}")]
    NotRecorded(CommandError),
    /// The pipeline has stopped.
    #[error("the pipeline has stopped")]
    Stopped,
    /// The certificate, key, CA or CRL files do not load.
    #[error(transparent)]
    Tls(#[from] GatewayError),
}

/// Whether the database answers (watched by the health endpoint).
#[derive(Debug, Clone, Default)]
pub struct DatabaseHealth {
    /// The last ping failed.
    pub down: bool,
    /// Why, if it failed.
    pub error: Option<String>,
}

/// What `GET /health` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// The broker works; `false` while it fails closed.
    pub ok: bool,
    /// `ok`; `degraded` while it works but witnesses lag behind, the newest
    /// checkpoint has not reached the quorum, or a witness reports a
    /// conflict; `down` while the database is unavailable.
    pub status: &'static str,
    /// `up` or `down`.
    pub database: &'static str,
    /// The database error while it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_error: Option<String>,
    /// The policy version in force.
    pub policy_version: String,
    /// Entries in the audit log.
    pub audit_entries: i64,
    /// Open connections per agency.
    pub connections: BTreeMap<String, usize>,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The witnesses of the audit log and their cosignatures.
    pub witnessing: WitnessHealth,
    /// This node's part, when it is one of several on one database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
}

/// The outcome of one part of a reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadPart {
    /// Whether it succeeded. On failure the old state stays in force,
    /// except for a policy that is in force but whose load could not be
    /// recorded yet (the message says so; the next batch records it).
    pub ok: bool,
    /// What happened, or every error.
    pub message: String,
}

impl ReloadPart {
    fn failed(e: &ReloadError) -> Self {
        Self {
            ok: false,
            message: e.to_string(),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// The policy set.
    pub policy: ReloadPart,
    /// The TLS configuration and CRL.
    pub tls: ReloadPart,
}

impl ReloadReport {
    /// Whether every part succeeded.
    pub fn ok(&self) -> bool {
        self.policy.ok && self.tls.ok
    }
}

/// The running broker's controls, shared by the admin endpoint, signal
/// handlers and the CRL watcher.
pub struct Control {
    config: BrokerConfig,
    policy: Arc<PolicyHandle>,
    gateway: Arc<Gateway>,
    commands: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
    witnesses: Arc<WitnessBoard>,
    health: watch::Receiver<DatabaseHealth>,
    cluster: Option<Arc<Cluster>>,
    store: Store,
    started: Instant,
    reloading: tokio::sync::Mutex<()>,
    console_tls: Option<Arc<ConsoleTls>>,
}

impl Control {
    /// The health report.
    pub async fn health(&self) -> HealthReport {
        let db = self.health.borrow().clone();
        let witnessing = self.witnesses.health();
        let cluster = self.cluster.as_ref().map(|c| c.health(&self.store));
        let halted = cluster.as_ref().is_some_and(|c| !c.signing);
        HealthReport {
            ok: !db.down && !halted,
            status: if db.down {
                "down"
            } else if halted {
                "halted"
            } else if witnessing.ok() {
                "ok"
            } else {
                "degraded"
            },
            witnessing,
            database: if db.down { "down" } else { "up" },
            database_error: db.error,
            policy_version: self.policy.current().version().to_string(),
            audit_entries: self.metrics.audit_entries.get(),
            connections: self.gateway.open_connections().into_iter().collect(),
            uptime_seconds: self.started.elapsed().as_secs(),
            cluster,
        }
    }

    /// The Prometheus text of every metric.
    pub fn metrics_text(&self) -> String {
        self.metrics.connections.clear();
        for (agency, n) in self.gateway.open_connections() {
            self.metrics
                .connections
                .get_or_create(&AgencyLabel { agency })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let witnessing = self.witnesses.health();
        self.metrics
            .witness_quorum_age_seconds
            .set(witnessing.newest_quorum_age_seconds.unwrap_or(-1.0));
        if let Some(cluster) = &self.cluster {
            let health = cluster.health(&self.store);
            let m = &self.metrics;
            m.node_signing.set(i64::from(health.signing));
            m.node_holds_sequence
                .set(i64::from(!health.holds.is_empty()));
            m.handoffs_claimed
                .set(i64::try_from(health.handoffs_claimed).unwrap_or(i64::MAX));
            m.handoff_lag_seconds
                .set(health.handoff_lag_ms as f64 / 1000.0);
            m.handoff_queue.clear();
            for (agency, n) in health.handoff_queue {
                m.handoff_queue
                    .get_or_create(&AgencyLabel { agency })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        self.metrics.witness_lag_entries.clear();
        for row in &witnessing.witnesses {
            self.metrics
                .witness_lag_entries
                .get_or_create(&crate::metrics::WitnessLabel {
                    witness: row.agency.clone(),
                })
                .set(i64::try_from(row.lag_entries).unwrap_or(i64::MAX));
        }
        self.metrics.encode()
    }

    /// Re-reads the policy set and the TLS files. A part that fails leaves
    /// the old state in force and reports every error.
    pub async fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let policy = match self.reload_policy().await {
            Ok(message) => ReloadPart { ok: true, message },
            Err(e) => {
                if let ReloadError::NotRecorded(_) = e {
                    error!(error = %e, "policy reloaded, but its load is not in the audit log yet");
                } else {
                    error!(errors = %e, "policy reload refused; the previous policy stays in force");
                }
                ReloadPart::failed(&e)
            }
        };
        let tls = match self.reload_tls() {
            Ok(message) => ReloadPart { ok: true, message },
            Err(e) => {
                error!(error = %e, "TLS reload refused; the previous configuration stays in force");
                ReloadPart::failed(&e)
            }
        };
        ReloadReport { policy, tls }
    }

    async fn reload_policy(&self) -> Result<String, ReloadError> {
        let dir = self.config.policy_dir.clone();
        let set = tokio::task::spawn_blocking(move || PolicySet::load(&dir)).await??;
        let current = self.policy.current();
        if set.version() == current.version() {
            return Ok(format!("policy {} unchanged", set.short_version()));
        }
        let version = set.version().to_string();
        let short = set.short_version().to_string();
        let previous = self.policy.replace(set);
        let now_in_force = self.policy.current();
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::PolicyChanged {
                previous,
                done: Some(done),
            })
            .await
            .map_err(|_| ReloadError::Stopped)?;
        let recorded = answer.await.map_err(|_| ReloadError::Stopped)?;
        // Connections of agencies that left the policy end now, whether or
        // not the load could be recorded yet: the policy is in force.
        let closed = self
            .gateway
            .close_where(|id| now_in_force.agency(&id.agency).is_none());
        recorded.map_err(ReloadError::NotRecorded)?;
        info!(version, closed, "policy reloaded");
        Ok(format!(
            "policy {short} in force{}",
            if closed > 0 {
                format!("; {closed} connection(s) of agencies no longer in the policy closed")
            } else {
                String::new()
            }
        ))
    }

    /// Rebuilds the TLS configuration (CA, certificate, CRL) and closes live
    /// connections whose certificate the CRL now revokes.
    pub fn reload_tls(&self) -> Result<String, ReloadError> {
        let tls = server_config(&self.config.tls)?;
        let revoked = crl_serials(&self.config.tls)?;
        self.gateway.set_tls(tls);
        if let Some(console) = &self.console_tls {
            console.reload(&self.config.tls)?;
        }
        let closed = self.gateway.close_where(|id| revoked.contains(&id.serial));
        if closed > 0 {
            warn!(
                closed,
                "closed live connections whose certificate is revoked"
            );
        }
        Ok(format!(
            "TLS configuration reloaded ({} revoked certificate(s) in the CRL; {closed} live connection(s) closed)",
            revoked.len()
        ))
    }
}

/// The serial numbers the configured CRL revokes.
pub fn crl_serials(tls: &TlsFiles) -> Result<HashSet<Vec<u8>>, GatewayError> {
    let mut serials = HashSet::new();
    let Some(path) = &tls.crl else {
        return Ok(serials);
    };
    let bad = |reason: String| GatewayError::File {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    for der in CertificateRevocationListDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| bad(format!("not a PEM CRL: {e}")))?;
        let (_, crl) =
            x509_parser::parse_x509_crl(&der).map_err(|e| bad(format!("not a CRL: {e}")))?;
        for revoked in crl.iter_revoked_certificates() {
            serials.insert(revoked.raw_serial().to_vec());
        }
    }
    Ok(serials)
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    console_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    pipeline: JoinHandle<Result<(), PipelineError>>,
    tasks: Vec<JoinHandle<()>>,
    control: Arc<Control>,
    store: Store,
    _embedded: Arc<Embedded>,
}

impl Broker {
    /// Starts the broker on `listener` with the system clock.
    pub async fn start(config: BrokerConfig, listener: TcpListener) -> Result<Broker, StartError> {
        Self::start_with_clock(config, listener, Arc::new(SystemClock)).await
    }

    /// Starts the broker with a given clock (tests).
    pub async fn start_with_clock(
        config: BrokerConfig,
        listener: TcpListener,
        clock: Arc<dyn Clock>,
    ) -> Result<Broker, StartError> {
        let started = Instant::now();
        let policy = PolicySet::load(&config.policy_dir).map_err(|error| StartError::Policy {
            dir: config.policy_dir.display().to_string(),
            error,
        })?;
        info!(
            dir = %config.policy_dir.display(),
            version = policy.version(),
            agencies = policy.agencies().len(),
            rules = policy.rules().len(),
            "policy loaded"
        );
        let policy = Arc::new(PolicyHandle::new(policy));
        let store = Store::open(&config.store_url).await?;
        info!(store = %redact_url(&config.store_url), "store opened");
        let signer = Arc::new(BrokerSigner::new(
            keys::read_signing_key(&config.signing_key)?,
            config.signing_key_id.clone(),
        ));
        info!(
            key_id = signer.key_id(),
            public_key = keys::public_key_base64(&signer.verifying_key()),
            "broker signing key loaded"
        );
        let tls = server_config(&config.tls)?;
        let revoked = crl_serials(&config.tls)?;
        let subjects = SubjectHasher::load(&config.audit.subject_key)?;
        let broker_keys = broker_key_registry(&config, &signer);
        let (embedded, link) = Embedded::start(&config.mqtt, &PIPELINE_FILTERS).await?;
        let embedded = Arc::new(embedded);
        info!(v4 = %embedded.v4, v5 = %embedded.v5, "embedded MQTT broker listening on loopback");

        let metrics = Arc::new(Metrics::new());
        let witnesses = Arc::new(WitnessBoard::default());
        let receivers = Arc::new(Receivers::default());
        let cluster = match &config.cluster {
            Some(settings) => {
                let cluster = Arc::new(Cluster::open(settings)?);
                info!(node = cluster.node(), database = %store.target_host(), "one node of several on this database");
                Some(cluster)
            }
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (commands, commands_rx) = mpsc::channel(16);
        let pipeline = Pipeline::new(
            PipelineParts {
                link,
                policy: policy.clone(),
                store: store.clone(),
                signer,
                clock,
                subjects: subjects.clone(),
                commands: commands_rx,
                metrics: metrics.clone(),
                witnesses: witnesses.clone(),
                receivers: receivers.clone(),
                cluster: cluster.clone(),
            },
            config.router.clone(),
            config.audit.clone(),
        );
        let pipeline = tokio::spawn(pipeline.run(shutdown_rx.clone()));

        let gateway = Arc::new(Gateway::new(
            tls,
            embedded.clone(),
            policy.clone(),
            ConnectionLimits::new(
                config.connection_attempts_per_minute,
                config.max_connections_per_agency,
            ),
            receivers,
            GatewaySettings {
                // One limit for the gateway and rumqttd behind it.
                max_packet_bytes: config.mqtt.max_packet_bytes,
                ..config.gateway.clone()
            },
        ));
        if !revoked.is_empty() {
            info!(
                revoked = revoked.len(),
                "certificate revocation list loaded"
            );
        }
        let console_tls = match config.console_listen {
            Some(_) => Some(Arc::new(ConsoleTls::new(&config.tls)?)),
            None => None,
        };
        let (health_tx, health_rx) = watch::channel(DatabaseHealth::default());
        let control = Arc::new(Control {
            config: config.clone(),
            policy: policy.clone(),
            gateway: gateway.clone(),
            commands: commands.clone(),
            metrics: metrics.clone(),
            witnesses,
            health: health_rx,
            cluster,
            store: store.clone(),
            started,
            reloading: tokio::sync::Mutex::new(()),
            console_tls: console_tls.clone(),
        });

        let mut tasks = vec![
            tokio::spawn(timers(
                commands.clone(),
                config.audit.checkpoint_interval,
                config.audit.retention_interval,
                shutdown_rx.clone(),
            )),
            tokio::spawn(watch_database(
                store.clone(),
                health_tx,
                metrics.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(watch_crl(control.clone(), shutdown_rx.clone())),
            tokio::spawn(checkpoint_wal(
                store.clone(),
                control.health.clone(),
                shutdown_rx.clone(),
            )),
        ];
        let admin_addr = match config.admin_listen {
            Some(addr) => {
                let admin = TcpListener::bind(addr).await?;
                let bound = admin.local_addr()?;
                tasks.push(tokio::spawn(crate::admin::serve(
                    admin,
                    control.clone(),
                    shutdown_rx.clone(),
                )));
                info!(listen = %bound, "health, metrics and admin endpoints");
                Some(bound)
            }
            None => None,
        };
        let console_addr = match (config.console_listen, console_tls) {
            (Some(addr), Some(tls)) => {
                let console = TcpListener::bind(addr).await?;
                let mut csrf_key = [0u8; 32];
                getrandom::fill(&mut csrf_key)
                    .map_err(|e| std::io::Error::other(format!("random source: {e}")))?;
                let state = Arc::new(ConsoleState {
                    store: store.clone(),
                    policy: policy.clone(),
                    commands: commands.clone(),
                    subjects,
                    broker_keys,
                    origin: config.audit.origin.clone(),
                    csrf_key,
                });
                let (bound, task) =
                    crate::console::spawn(console, state, tls, shutdown_rx.clone())?;
                tasks.push(task);
                Some(bound)
            }
            _ => None,
        };
        let local_addr = listener.local_addr()?;
        tasks.push(tokio::spawn(gateway.clone().serve(listener, shutdown_rx)));
        info!(listen = %local_addr, "accepting MQTT over mutual TLS (3.1.1 and 5)");
        Ok(Broker {
            local_addr,
            admin_addr,
            console_addr,
            shutdown,
            pipeline,
            tasks,
            control,
            store,
            _embedded: embedded,
        })
    }

    /// The public address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the health, metrics and admin endpoints, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The address of the auditor console, if enabled.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<PolicyHandle> {
        &self.control.policy
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.control.gateway
    }

    /// The controls (health, reload).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Re-reads the policy set and TLS files (SIGHUP, `POST /admin/reload`).
    pub async fn reload(&self) -> ReloadReport {
        self.control.reload().await
    }

    /// Signs and publishes a checkpoint now; returns its size.
    pub async fn checkpoint_now(&self) -> Result<u64, CommandError> {
        let (done, answer) = oneshot::channel();
        self.control
            .commands
            .send(Command::Checkpoint { done: Some(done) })
            .await
            .map_err(|_| CommandError::Stopped)?;
        answer.await.map_err(|_| CommandError::Stopped)?
    }

    /// Purges content past its retention period now; returns how many alerts
    /// and deliveries were purged.
    pub async fn purge_now(&self) -> Result<(u64, u64), CommandError> {
        let (done, answer) = oneshot::channel();
        self.control
            .commands
            .send(Command::Purge { done: Some(done) })
            .await
            .map_err(|_| CommandError::Stopped)?;
        answer.await.map_err(|_| CommandError::Stopped)?
    }

    /// Stops accepting, lets the pipeline commit and answer what it has
    /// received, closes connections, and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        match self.pipeline.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "pipeline stopped with an error"),
            Err(e) => error!(error = %e, "pipeline task failed"),
        }
        for task in self.tasks {
            let _ = task.await;
        }
        self.store.close().await;
        info!("broker stopped");
    }

    /// Waits until the pipeline stops on its own (which only an error does).
    pub async fn wait(&mut self) -> Result<(), PipelineError> {
        match (&mut self.pipeline).await {
            Ok(r) => r,
            Err(e) => Err(PipelineError::Link(e.to_string())),
        }
    }
}

/// The broker's public keys for the console's in-browser check: the
/// `broker-keys.toml` beside the signing key (the registry agencies hold),
/// or else the signing key alone.
fn broker_key_registry(config: &BrokerConfig, signer: &BrokerSigner) -> keys::KeyRegistry {
    let beside = config
        .signing_key
        .parent()
        .map(|d| d.join("broker-keys.toml"));
    if let Some(path) = beside.filter(|p| p.exists()) {
        match keys::KeyRegistry::load(&path) {
            Ok(registry)
                if registry
                    .keys_of(samverkan_sdk::messages::BROKER_KEY_OWNER)
                    .any(|k| k.public_key == signer.verifying_key()) =>
            {
                return registry;
            }
            Ok(_) => {
                warn!(file = %path.display(), "broker-keys.toml does not hold the signing key; the console uses the signing key alone")
            }
            Err(errors) => {
                warn!(file = %path.display(), errors = errors.len(), "broker-keys.toml does not load; the console uses the signing key alone")
            }
        }
    }
    let mut registry = keys::KeyRegistry::new();
    registry.insert(keys::AgencyKey {
        owner: samverkan_sdk::messages::BROKER_KEY_OWNER.into(),
        key_id: signer.key_id().to_string(),
        public_key: signer.verifying_key(),
        not_before_ms: None,
        not_after_ms: None,
        revoked_at_ms: None,
        revocation_reason: None,
    });
    registry
}

/// Asks the pipeline for checkpoints and retention purges at their intervals.
async fn timers(
    commands: mpsc::Sender<Command>,
    checkpoint_every: Duration,
    purge_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut checkpoint = tokio::time::interval(checkpoint_every);
    let mut purge = tokio::time::interval(purge_every);
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            _ = shutdown.changed() => return,
            _ = checkpoint.tick() => Command::Checkpoint { done: None },
            _ = purge.tick() => Command::Purge { done: None },
        };
        if commands.send(command).await.is_err() {
            return;
        }
    }
}

/// Pings the database every second and reports every change of state: the
/// broker fails closed while it is down (nothing is answered that could not
/// be recorded) and resumes by itself when it is back.
async fn watch_database(
    store: Store,
    health: watch::Sender<DatabaseHealth>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        // With standbys, a ping may also look for the new primary: a second
        // per host more.
        let limit = if store.has_standbys() { 6 } else { 2 };
        let result = match tokio::time::timeout(Duration::from_secs(limit), store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit} s")),
        };
        let was_down = health.borrow().down;
        match result {
            Ok(()) => {
                if was_down {
                    info!("database is back: accepting alerts again");
                }
                metrics.database_up.set(1);
                health.send_replace(DatabaseHealth::default());
            }
            Err(e) => {
                if !was_down {
                    error!(error = %e, "database unavailable: failing closed (alerts get no receipt until it is back; publishers resend)");
                }
                metrics.database_up.set(0);
                health.send_replace(DatabaseHealth {
                    down: true,
                    error: Some(e),
                });
            }
        }
    }
}

/// How often SQLite's write-ahead log is copied into the database file.
/// Measured at 1,000 alerts/s: every second, each checkpoint wrote tens of
/// megabytes at once and the commits beside it stalled (publish→receipt p99
/// 42-50 ms); every 50 ms the bursts are small (p99 about 25 ms).
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Checkpoints SQLite's write-ahead log in small steps while the database
/// is up, so that commits never have to (see [`Store::checkpoint_wal`]).
/// Does nothing on PostgreSQL.
async fn checkpoint_wal(
    store: Store,
    health: watch::Receiver<DatabaseHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    if store.backend() != Backend::Sqlite {
        return;
    }
    let mut tick = tokio::time::interval(WAL_CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if health.borrow().down {
            continue;
        }
        match store.checkpoint_wal().await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "write-ahead log checkpoint failed (commits will do it)");
            }
            Err(_) => {}
        }
    }
}

/// Reloads the TLS configuration when the CRL file changes.
async fn watch_crl(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let Some(path) = control.config.tls.crl.clone() else {
        return;
    };
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = modified(&path);
    let mut tick = tokio::time::interval(control.config.crl_check_interval);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = modified(&path);
        if now != last {
            last = now;
            // Not beside a reload from SIGHUP or the admin endpoint, which
            // also rebuilds the TLS configuration.
            let _one_at_a_time = control.reloading.lock().await;
            match control.reload_tls() {
                Ok(message) => {
                    info!(crl = %path.display(), message, "certificate revocation list reloaded")
                }
                Err(e) => {
                    error!(crl = %path.display(), error = %e, "CRL changed but could not be loaded; the previous one stays in force")
                }
            }
        }
    }
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            super::redact_url("postgres://svk:secret@db:5432/x"),
            "postgres://svk:***@db:5432/x"
        );
        assert_eq!(super::redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
