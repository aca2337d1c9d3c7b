//! Several `samverkan serve` nodes on one PostgreSQL database, as separate
//! processes with one PKI and policy set (copied from the first node's
//! directory), each with its own ports, node name and state directory.

use std::time::Duration;

use samverkan_sdk::client::{AgencyConfig, BrokerAddress, Client};

use crate::BrokerProcess;

/// Nodes sharing one database.
pub struct Nodes {
    /// The nodes, not started until [`Nodes::start_all`].
    pub nodes: Vec<BrokerProcess>,
}

impl Nodes {
    /// `n` nodes named `node-0`, `node-1`, … on the database at `url` (a
    /// URL may list several hosts).
    pub fn new(n: usize, url: &str) -> Self {
        let mut nodes = vec![BrokerProcess::new()];
        for _ in 1..n {
            let sibling = nodes[0].sibling();
            nodes.push(sibling);
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            node.join_cluster(url, &format!("node-{i}"));
        }
        Self { nodes }
    }

    /// Starts every node at the same moment (they migrate the database
    /// together, as nodes started by an orchestrator do).
    pub async fn start_all(&mut self) {
        for node in &mut self.nodes {
            node.spawn();
        }
        for node in &mut self.nodes {
            node.wait_ready().await;
        }
    }

    /// An SDK client of `agency` connected to node `first`, with every other
    /// node as a fallback in order.
    pub async fn agency(&self, agency: &str, first: usize) -> Client {
        Client::connect(self.agency_config(agency, first))
            .await
            .unwrap_or_else(|e| panic!("{agency} cannot connect to node {first}: {e}"))
    }

    /// The configuration of [`Nodes::agency`].
    pub fn agency_config(&self, agency: &str, first: usize) -> AgencyConfig {
        let fallbacks: Vec<BrokerAddress> = (1..self.nodes.len())
            .map(|k| (first + k) % self.nodes.len())
            .map(|k| BrokerAddress::new("localhost", self.nodes[k].port))
            .collect();
        let mut config = self.nodes[first]
            .agency_config(agency)
            .with_fallback_brokers(fallbacks);
        config.receipt_timeout = Duration::from_secs(5);
        config.publish_deadline = Duration::from_secs(120);
        config
    }
}

impl BrokerProcess {
    /// Makes this (not yet started) broker node `node` on the database at `url`.
    pub fn join_cluster(&mut self, url: &str, node: &str) {
        let path = self.dir.path().join("samverkan.toml");
        let config = std::fs::read_to_string(&path).unwrap().replace(
            &format!("url = \"{}\"", self.store_url),
            &format!("url = \"{url}\""),
        );
        assert!(config.contains(url), "the store URL was not replaced");
        std::fs::write(
            &path,
            format!("{config}\n[cluster]\nnode = \"{node}\"\nstate_dir = \"state\"\n"),
        )
        .unwrap();
        self.store_url = url.to_string();
    }
}
