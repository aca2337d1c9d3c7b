//! Starting and stopping the whole broker: store, policy, embedded rumqttd,
//! router and gateway.
//!
//! The library takes an already-bound listener (tests bind `127.0.0.1:0`)
//! and returns a handle; `samverkan serve` binds the configured address and
//! waits for SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use samverkan_sdk::keys::{self, KeyFileError};
use samverkan_sdk::time::{Clock, SystemClock};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::audit::subject::{SubjectError, SubjectHasher};
use crate::config::BrokerConfig;
use crate::gateway::{Gateway, GatewayError, server_config};
use crate::limits::ConnectionLimits;
use crate::mqtt::{Embedded, MqttError};
use crate::policy::{PolicyError, PolicyHandle, PolicySet};
use crate::router::{ROUTER_FILTERS, Router, RouterCommand, RouterError, RouterParts};
use crate::signer::BrokerSigner;
use crate::store::{Store, StoreError};

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
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    router: JoinHandle<Result<(), RouterError>>,
    gateway_task: JoinHandle<()>,
    timers: JoinHandle<()>,
    commands: mpsc::Sender<RouterCommand>,
    gateway: Arc<Gateway>,
    policy: Arc<PolicyHandle>,
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
        let (embedded, link) = Embedded::start(&config.mqtt, &ROUTER_FILTERS).await?;
        let embedded = Arc::new(embedded);
        info!(v4 = %embedded.v4, v5 = %embedded.v5, "embedded MQTT broker listening on loopback");

        let subjects = SubjectHasher::load(&config.audit.subject_key)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (commands, commands_rx) = mpsc::channel(16);
        let router = Router::new(
            RouterParts {
                link,
                policy: policy.clone(),
                store: store.clone(),
                signer,
                clock,
                subjects,
                commands: commands_rx,
            },
            config.router.clone(),
            config.audit.clone(),
        );
        let router = tokio::spawn(router.run(shutdown_rx.clone()));
        let timers = tokio::spawn(timers(
            commands.clone(),
            config.audit.checkpoint_interval,
            config.audit.retention_interval,
            shutdown_rx.clone(),
        ));

        let gateway = Arc::new(Gateway::new(
            tls,
            embedded.clone(),
            policy.clone(),
            ConnectionLimits::new(
                config.connection_attempts_per_minute,
                config.max_connections_per_agency,
            ),
            config.gateway.clone(),
        ));
        let local_addr = listener.local_addr()?;
        let gateway_task = tokio::spawn(gateway.clone().serve(listener, shutdown_rx));
        info!(listen = %local_addr, "accepting MQTT over mutual TLS (3.1.1 and 5)");
        Ok(Broker {
            local_addr,
            shutdown,
            router,
            gateway_task,
            timers,
            commands,
            gateway,
            policy,
            store,
            _embedded: embedded,
        })
    }

    /// The public address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<PolicyHandle> {
        &self.policy
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Signs and publishes a checkpoint now; returns its size.
    pub async fn checkpoint_now(&self) -> Result<u64, String> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(RouterCommand::Checkpoint { done: Some(done) })
            .await
            .map_err(|_| "the router has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the router has stopped".to_string())?
    }

    /// Purges content past its retention period now; returns how many alerts
    /// and deliveries were purged.
    pub async fn purge_now(&self) -> Result<(u64, u64), String> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(RouterCommand::Purge { done: Some(done) })
            .await
            .map_err(|_| "the router has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the router has stopped".to_string())?
    }

    /// Stops accepting, lets the router commit and answer what it has
    /// received, closes connections, and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        match self.router.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "router stopped with an error"),
            Err(e) => error!(error = %e, "router task failed"),
        }
        let _ = self.gateway_task.await;
        let _ = self.timers.await;
        self.store.close().await;
        info!("broker stopped");
    }

    /// Waits until the router stops on its own (which only an error does).
    pub async fn wait(&mut self) -> Result<(), RouterError> {
        match (&mut self.router).await {
            Ok(r) => r,
            Err(e) => Err(RouterError::Link(e.to_string())),
        }
    }
}

/// Asks the router for checkpoints and retention purges at their intervals.
async fn timers(
    commands: mpsc::Sender<RouterCommand>,
    checkpoint_every: std::time::Duration,
    purge_every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut checkpoint = tokio::time::interval(checkpoint_every);
    let mut purge = tokio::time::interval(purge_every);
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            _ = shutdown.changed() => return,
            _ = checkpoint.tick() => RouterCommand::Checkpoint { done: None },
            _ = purge.tick() => RouterCommand::Purge { done: None },
        };
        if commands.send(command).await.is_err() {
            return;
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
