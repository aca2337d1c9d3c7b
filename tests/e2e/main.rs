//! End-to-end tests: a real broker over real mutual TLS with real clients.
//! One binary, one module per area (see `samverkan_e2e` for the harness).

mod audit;
mod browser;
mod cluster;
mod connections;
mod console;
mod console_queries;
mod crash;
mod examples;
mod failover_addresses;
mod fixtures;
mod flows;
mod forgery;
mod isolation;
mod pg_cluster_harness;
mod raw;
mod rejections;
mod reload;
mod replay;
mod third_party;
mod tls;
mod witness;
