//! `nodes`: one broker node against two on one PostgreSQL database.
//!
//! Every run starts fresh nodes on a new database, all in cluster mode (a
//! single node has a `[cluster]` section too, so the runs differ only in
//! the number of nodes), spreads the mixed load over them, and reads from
//! each node's metrics how long it held the log's sequencing lock per
//! append. Whichever node appends, it holds that one lock from the start
//! of recording a batch to its commit, so the appends of all nodes follow
//! one another: the lock admits at most 1 / hold appends per second.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use samverkan_e2e::{Backend, POSTGRES_ENV, TestDatabase, free_port, prepare_dir};
use serde::Serialize;

use crate::load::{self, Counters, Shape};
use crate::stats::{self, LatencySummary};
use crate::targets;

/// Options of `samverkan-bench nodes`.
#[derive(clap::Args)]
pub struct NodesArgs {
    /// Seconds of load measured per run.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Alerts per second in total for the fixed-rate runs.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    warmup: u64,
    /// Alerts in flight per publisher (flat out).
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Also write the reports as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The node counts compared.
const NODE_COUNTS: [usize; 2] = [1, 2];

/// The node an agency connects to, of `n`. An agency's publisher and
/// receiver share a node: a node delivers a share itself when the
/// recipient has any connection to it, so an agency is placed as one
/// client. The publishers alternate between the nodes (in the order of
/// `load::plan`), and the agencies that only receive sit on the node
/// opposite the publishers that send them most, so that most shares are
/// handed from one node to the other.
fn node_of(agency: &str, n: usize) -> usize {
    let side = match agency {
        "forsakringskassan" | "kronofogden" | "akrimost" => 0,
        _ => 1,
    };
    side % n
}

/// One `samverkan serve` process; killed when dropped.
struct Node {
    name: String,
    child: Child,
    port: u16,
    admin: u16,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes on one database; the nodes stop before the database is dropped.
struct Nodes {
    nodes: Vec<Node>,
    _database: TestDatabase,
}

impl Nodes {
    /// Starts `count` nodes in `dir` on a new database, one after the
    /// other (the first creates the schema). `label` names their files.
    async fn start(dir: &Path, count: usize, label: &str) -> Result<Self> {
        let database = TestDatabase::new(Backend::Postgres, dir).await;
        let binary = targets::sibling("samverkan")?;
        let mut nodes = Vec::new();
        for i in 0..count {
            // A port picked free can be taken before the node binds it (by
            // a client's outgoing connection, say): then pick again.
            let mut attempt = 0;
            let node = loop {
                attempt += 1;
                match Self::start_one(dir, &binary, &database.url, i, label).await {
                    Ok(node) => break node,
                    Err(e)
                        if attempt < 3 && format!("{e:#}").contains("Address already in use") =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            nodes.push(node);
        }
        Ok(Self {
            nodes,
            _database: database,
        })
    }

    /// Starts node `i`: its ports, configuration and process; waits until
    /// it listens.
    async fn start_one(
        dir: &Path,
        binary: &Path,
        url: &str,
        i: usize,
        label: &str,
    ) -> Result<Node> {
        let port = free_port();
        let admin = loop {
            let p = free_port();
            if p != port {
                break p;
            }
        };
        let config = format!("{label}-node-{i}.toml");
        std::fs::write(
            dir.join(&config),
            format!(
                "[gateway]\nlisten = \"127.0.0.1:{port}\"\nmax_connections_per_agency = 2000\nconnection_attempts_per_minute = 100000\n\n[store]\nurl = \"{url}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[console]\nlisten = \"off\"\n\n[router]\nbatch_max = 2048\n\n[cluster]\nnode = \"node-{i}\"\nstate_dir = \"state-{label}-{i}\"\n"
            ),
        )?;
        let log = dir.join(format!("{label}-node-{i}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .args(["serve", "--config", &config])
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("SAMVERKAN_BENCH_LOG")
                    .unwrap_or_else(|_| "warn,rumqttd=error,rumqttd::server::broker=off".into()),
            )
            // The broker logs to standard output.
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        let mut node = Node {
            name: format!("node-{i}"),
            child,
            port,
            admin,
            log,
        };
        targets::wait_for_port(port, &mut node.child, &node.log).await?;
        targets::wait_for_port(admin, &mut node.child, &node.log).await?;
        Ok(node)
    }

    /// Fails with the node's log if a node has ended.
    fn ensure_running(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "{} exited during the run ({status}): {}",
                    node.name,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// Every node's metrics and CPU time, now.
    async fn sample(&mut self) -> Result<Vec<NodeSample>> {
        self.ensure_running()?;
        let mut samples = Vec::new();
        for node in &self.nodes {
            let mut s = read_metrics(node.admin)
                .await
                .with_context(|| format!("{}: metrics not read", node.name))?;
            s.cpu_seconds = stats::sample(node.child.id())
                .map(|p| p.cpu_seconds)
                .unwrap_or(0.0);
            samples.push(s);
        }
        Ok(samples)
    }
}

/// What one node's metrics and /proc say at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct NodeSample {
    hold_sum: f64,
    hold_count: f64,
    commit_sum: f64,
    commit_count: f64,
    accepted: f64,
    batch_sum: f64,
    batch_count: f64,
    shares: f64,
    handoffs_claimed: f64,
    handoff_queue: f64,
    cpu_seconds: f64,
}

/// Reads a node's `/metrics` (bounded: a node that does not answer in
/// five seconds fails the run).
async fn read_metrics(admin: u16) -> Result<NodeSample> {
    let request = tokio::spawn(samverkan_e2e::admin_request(
        ([127, 0, 0, 1], admin).into(),
        "GET",
        "/metrics",
    ));
    let (status, text) = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .context("no answer in 5 s")?
        .context("request failed")?;
    if status != 200 {
        bail!("status {status}");
    }
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let handoff_queue = text
        .lines()
        .filter(|l| l.starts_with("samverkan_handoff_queue{"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    Ok(NodeSample {
        hold_sum: value("samverkan_sequence_hold_seconds_sum"),
        hold_count: value("samverkan_sequence_hold_seconds_count"),
        commit_sum: value("samverkan_commit_seconds_sum"),
        commit_count: value("samverkan_commit_seconds_count"),
        accepted: value("samverkan_alerts_accepted_total"),
        batch_sum: value("samverkan_batch_size_sum"),
        batch_count: value("samverkan_batch_size_count"),
        shares: value("samverkan_shares_total"),
        handoffs_claimed: value("samverkan_handoffs_claimed"),
        handoff_queue,
        cpu_seconds: 0.0,
    })
}

/// One node's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFigures {
    node: String,
    agencies: Vec<&'static str>,
    cpu_cores: f64,
    alerts_per_s: f64,
    mean_hold_ms: f64,
    /// The commit's part of the hold (the rest: recording the batch).
    mean_commit_ms: f64,
    appends_per_s: f64,
    alerts_per_append: f64,
    mean_batch_messages: f64,
    /// Shares recorded by other nodes that this one delivered, in the window.
    handoffs_delivered: f64,
    /// Handed-off shares still waiting at the end (after the load stopped).
    handoff_queue_at_end: f64,
    /// Warning and error lines in the node's log.
    log_lines: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    log_excerpt: Vec<String>,
}

/// The sequencing lock over all nodes, in the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct LockFigures {
    mean_hold_ms: f64,
    /// The commit's part of the hold.
    mean_commit_ms: f64,
    appends_per_s: f64,
    alerts_per_append: f64,
    /// Time the lock was held ÷ the window.
    held_fraction: f64,
    /// 1 / mean hold.
    max_appends_per_s: f64,
    /// `max_appends_per_s` × `alerts_per_append`.
    max_alerts_per_s: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct NodesReport {
    nodes: usize,
    rate_requested: u32,
    duration_s: u64,
    alerts_sent: u64,
    alerts_accepted: u64,
    alerts_rejected: u64,
    alerts_per_s: f64,
    deliveries: u64,
    deliveries_per_s: f64,
    receipt_latency: LatencySummary,
    delivery_latency: LatencySummary,
    nodes_cpu_cores: f64,
    load_cpu_cores: f64,
    /// Every `postgres` process of this machine (other users of the
    /// server included).
    database_cpu_cores: f64,
    lock: LockFigures,
    per_node: Vec<NodeFigures>,
    /// Shares the nodes recorded over the whole run (warm-up included).
    shares_recorded: f64,
    /// Shares recorded that no receiver got by the end (may be negative
    /// when some arrived twice).
    deliveries_missing: f64,
    missing_receipts: u64,
    connection_errors: u64,
    refusals: std::collections::BTreeMap<String, u64>,
}

/// CPU seconds of every process named `postgres` on this machine, by pid
/// (a connection's backend counts from its start).
fn postgres_cpu() -> std::collections::HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|pid| Some((pid, stats::sample(pid)?.cpu_seconds)))
        .collect()
}

/// The warning and error lines of a node's log, and the first few.
fn log_summary(log: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // The start-up summary is not a warning: only WARN and ERROR lines.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN") || l.contains(" ERROR") || l.contains("panicked"))
        .collect();
    (
        lines.len(),
        lines.iter().take(5).map(|l| l.to_string()).collect(),
    )
}

/// One run: `count` fresh nodes, flat out (`rate` 0) or at `rate`.
async fn run_once(dir: &Path, count: usize, rate: u32, args: &NodesArgs) -> Result<NodesReport> {
    let label = format!("{count}n-{}", if rate == 0 { "flat" } else { "rate" });
    let mut cluster = Nodes::start(dir, count, &label).await?;
    let certs = dir.join("certs-dev");
    let (publishers, receivers) = load::plan(Shape::Mixed);
    let counters = Arc::new(Counters::default());
    // Publishers stop first and wait for their last receipts; receivers
    // stop after them, so the last shares are delivered too.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let stop_receiving = Arc::new(AtomicBool::new(false));

    let mut receiving = Vec::new();
    for &agency in &receivers {
        receiving.push(tokio::spawn(load::samverkan_receiver(
            certs.clone(),
            cluster.nodes[node_of(agency, count)].port,
            agency,
            stop_receiving.clone(),
            counters.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let interval =
        (rate > 0).then(|| Duration::from_secs_f64(publishers.len() as f64 / f64::from(rate)));
    let mut publishing = Vec::new();
    for &agency in &publishers {
        publishing.push(tokio::spawn(load::samverkan_publisher(
            certs.clone(),
            cluster.nodes[node_of(agency, count)].port,
            agency,
            Shape::Mixed,
            args.window,
            interval,
            stop_publishing.clone(),
            counters.clone(),
        )));
    }

    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    counters.receipt_latency.reset();
    counters.delivery_latency.reset();
    let before = cluster.sample().await?;
    let load_before = stats::sample(std::process::id()).unwrap_or_default();
    let database_before = postgres_cpu();
    let (acc0, del0) = (
        counters.accepted.load(Ordering::Relaxed),
        counters.delivered.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        cluster.ensure_running()?;
        if publishing.iter().all(|p| p.is_finished()) {
            break;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = cluster.sample().await?;
    let load_after = stats::sample(std::process::id()).unwrap_or_default();
    let database_cpu: f64 = postgres_cpu()
        .iter()
        .map(|(pid, cpu)| cpu - database_before.get(pid).copied().unwrap_or(0.0))
        .sum();
    let accepted = counters.accepted.load(Ordering::Relaxed) - acc0;
    let delivered = counters.delivered.load(Ordering::Relaxed) - del0;
    let receipt_latency = counters.receipt_latency.summary();
    let delivery_latency = counters.delivery_latency.summary();

    // Publishers wait 3 s for outstanding receipts after the stop.
    stop_publishing.store(true, Ordering::Relaxed);
    for mut p in publishing {
        match tokio::time::timeout(Duration::from_secs(15), &mut p).await {
            Ok(Ok(Err(e))) => eprintln!("publisher: {e:#}"),
            Ok(_) => {}
            Err(_) => {
                eprintln!("publisher: did not stop in 15 s");
                p.abort();
            }
        }
    }
    // A little longer for handed-off shares (the nodes also poll every 0.5 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_receiving.store(true, Ordering::Relaxed);
    for mut r in receiving {
        match tokio::time::timeout(Duration::from_secs(5), &mut r).await {
            Ok(Ok(Err(e))) => eprintln!("receiver: {e:#}"),
            Ok(_) => {}
            Err(_) => {
                eprintln!("receiver: did not stop in 5 s");
                r.abort();
            }
        }
    }
    let end = cluster.sample().await?;

    let mut per_node = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (b, a) = (before[i], after[i]);
        let appends = a.hold_count - b.hold_count;
        let (log_lines, log_excerpt) = log_summary(&node.log);
        let mut agencies: Vec<&'static str> = receivers
            .iter()
            .chain(&publishers)
            .copied()
            .filter(|a| node_of(a, count) == i)
            .collect();
        agencies.sort_unstable();
        agencies.dedup();
        per_node.push(NodeFigures {
            node: node.name.clone(),
            agencies,
            cpu_cores: (a.cpu_seconds - b.cpu_seconds) / elapsed,
            alerts_per_s: (a.accepted - b.accepted) / elapsed,
            mean_hold_ms: 1000.0 * (a.hold_sum - b.hold_sum) / appends.max(1.0),
            mean_commit_ms: 1000.0 * (a.commit_sum - b.commit_sum)
                / (a.commit_count - b.commit_count).max(1.0),
            appends_per_s: appends / elapsed,
            alerts_per_append: (a.accepted - b.accepted) / appends.max(1.0),
            mean_batch_messages: (a.batch_sum - b.batch_sum)
                / (a.batch_count - b.batch_count).max(1.0),
            handoffs_delivered: a.handoffs_claimed - b.handoffs_claimed,
            handoff_queue_at_end: end[i].handoff_queue,
            log_lines,
            log_excerpt,
        });
    }
    let total = |f: fn(&NodeSample) -> f64, s: &[NodeSample]| s.iter().map(f).sum::<f64>();
    let hold_sum = total(|s| s.hold_sum, &after) - total(|s| s.hold_sum, &before);
    let appends = total(|s| s.hold_count, &after) - total(|s| s.hold_count, &before);
    let node_accepted = total(|s| s.accepted, &after) - total(|s| s.accepted, &before);
    let mean_hold = hold_sum / appends.max(1.0);
    let commits = total(|s| s.commit_count, &after) - total(|s| s.commit_count, &before);
    let commit_sum = total(|s| s.commit_sum, &after) - total(|s| s.commit_sum, &before);
    let alerts_per_append = node_accepted / appends.max(1.0);
    let max_appends_per_s = if mean_hold > 0.0 {
        1.0 / mean_hold
    } else {
        0.0
    };
    let shares_recorded = total(|s| s.shares, &end);
    let sent = counters.sent.load(Ordering::Relaxed);
    let answered =
        counters.accepted.load(Ordering::Relaxed) + counters.rejected.load(Ordering::Relaxed);
    Ok(NodesReport {
        nodes: count,
        rate_requested: rate,
        duration_s: args.duration,
        alerts_sent: sent,
        alerts_accepted: counters.accepted.load(Ordering::Relaxed),
        alerts_rejected: counters.rejected.load(Ordering::Relaxed),
        alerts_per_s: accepted as f64 / elapsed,
        deliveries: counters.delivered.load(Ordering::Relaxed),
        deliveries_per_s: delivered as f64 / elapsed,
        receipt_latency,
        delivery_latency,
        nodes_cpu_cores: (total(|s| s.cpu_seconds, &after) - total(|s| s.cpu_seconds, &before))
            / elapsed,
        load_cpu_cores: (load_after.cpu_seconds - load_before.cpu_seconds) / elapsed,
        database_cpu_cores: database_cpu / elapsed,
        lock: LockFigures {
            mean_hold_ms: 1000.0 * mean_hold,
            mean_commit_ms: 1000.0 * commit_sum / commits.max(1.0),
            appends_per_s: appends / elapsed,
            alerts_per_append,
            held_fraction: hold_sum / elapsed,
            max_appends_per_s,
            max_alerts_per_s: max_appends_per_s * alerts_per_append,
        },
        per_node,
        shares_recorded,
        deliveries_missing: shares_recorded - counters.delivered.load(Ordering::Relaxed) as f64,
        missing_receipts: sent.saturating_sub(answered),
        connection_errors: counters.connection_errors.load(Ordering::Relaxed),
        refusals: counters
            .refusals
            .lock()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default(),
    })
}

fn nodes_word(n: usize) -> String {
    if n == 1 {
        "1 node".into()
    } else {
        format!("{n} nodes")
    }
}

fn print(r: &NodesReport) {
    println!(
        "\n== {} on one PostgreSQL, mixed, {} for {} s",
        nodes_word(r.nodes),
        if r.rate_requested == 0 {
            "flat out".to_string()
        } else {
            format!("{} alerts/s", r.rate_requested)
        },
        r.duration_s
    );
    println!(
        "  accepted     {:>8.0} alerts/s   ({} sent, {} accepted, {} refused)",
        r.alerts_per_s, r.alerts_sent, r.alerts_accepted, r.alerts_rejected
    );
    println!(
        "  delivered    {:>8.0} shares/s   ({} deliveries)",
        r.deliveries_per_s, r.deliveries
    );
    let (rl, dl) = (&r.receipt_latency, &r.delivery_latency);
    println!(
        "  → receipt    p50 {:.2} ms  p99 {:.2} ms  (max {:.2} ms)",
        rl.p50_ms, rl.p99_ms, rl.max_ms
    );
    println!(
        "  → delivery   p50 {:.2} ms  p99 {:.2} ms  (max {:.2} ms)",
        dl.p50_ms, dl.p99_ms, dl.max_ms
    );
    println!(
        "  CPU          {:.2} cores for the node processes together, {:.2} for the load generator, {:.2} for PostgreSQL",
        r.nodes_cpu_cores, r.load_cpu_cores, r.database_cpu_cores
    );
    for n in &r.per_node {
        println!(
            "  {:<12} {:.2} cores, {:.0} alerts/s; lock held {:.2} ms per append (commit {:.2} ms), {:.0} appends/s, {:.1} alerts per append ({:.1} messages per batch); {:.0} handed-off shares delivered; agencies {}",
            n.node,
            n.cpu_cores,
            n.alerts_per_s,
            n.mean_hold_ms,
            n.mean_commit_ms,
            n.appends_per_s,
            n.alerts_per_append,
            n.mean_batch_messages,
            n.handoffs_delivered,
            n.agencies.join(", ")
        );
    }
    let l = &r.lock;
    println!(
        "  lock         all nodes: {:.2} ms mean hold (commit {:.2} ms), {:.0} appends/s, {:.1} alerts per append; held {:.0} % of the time",
        l.mean_hold_ms,
        l.mean_commit_ms,
        l.appends_per_s,
        l.alerts_per_append,
        100.0 * l.held_fraction
    );
    println!(
        "  check        {:.0} shares recorded, {} delivered, {:.0} missing; {} alerts without receipt, {} connection errors",
        r.shares_recorded,
        r.deliveries,
        r.deliveries_missing.max(0.0),
        r.missing_receipts,
        r.connection_errors
    );
    if !r.refusals.is_empty() {
        println!("  refusals     {:?}", r.refusals);
    }
    for n in &r.per_node {
        if n.handoff_queue_at_end > 0.0 {
            println!(
                "  {:<12} {:.0} handed-off shares still waiting at the end",
                n.node, n.handoff_queue_at_end
            );
        }
        if n.log_lines > 0 {
            println!(
                "  {:<12} {} warning/error lines in its log, the first:",
                n.node, n.log_lines
            );
            for line in &n.log_excerpt {
                println!("      {line}");
            }
        }
    }
}

/// The bound the sequencing lock sets, in words and numbers.
fn print_bound(reports: &[NodesReport]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("\n== what the sequencing lock allows");
    println!(
        "  Every append, whichever node makes it, holds one lock in the database from the start of recording its batch to its commit, so the appends of all nodes follow one another: the lock admits at most 1 / hold appends per second."
    );
    for r in reports.iter().filter(|r| r.rate_requested == 0) {
        let l = &r.lock;
        println!(
            "  {}, flat out: mean hold {:.2} ms → at most 1 / {:.2} ms = {:.1} appends/s. At the measured {:.1} alerts per append that is {:.0} alerts/s (measured: {:.0} alerts/s, the lock held {:.0} % of the time).",
            nodes_word(r.nodes),
            l.mean_hold_ms,
            l.mean_hold_ms,
            l.max_appends_per_s,
            l.alerts_per_append,
            l.max_alerts_per_s,
            r.alerts_per_s,
            100.0 * l.held_fraction
        );
    }
    if let Some(r) = reports
        .iter()
        .filter(|r| r.rate_requested == 0)
        .max_by_key(|r| r.nodes)
    {
        println!(
            "  So about {:.0} alerts/s is the most that any number of nodes on separate machines could reach on this database at this commit time: more nodes add CPU for TLS, verification and signing, not appends.",
            r.lock.max_alerts_per_s
        );
        let per_alert: Vec<String> = reports
            .iter()
            .filter(|x| x.nodes == r.nodes)
            .map(|x| {
                format!(
                    "{:.2} ms {}",
                    x.lock.mean_hold_ms / x.lock.alerts_per_append.max(1e-9),
                    if x.rate_requested == 0 {
                        "flat out".to_string()
                    } else {
                        format!("at {} alerts/s", x.rate_requested)
                    }
                )
            })
            .collect();
        println!(
            "  The hold grows with the batch ({}: {} of hold per alert), so larger batches raise the bound only as far as the hold per alert falls; a faster commit raises it directly.",
            nodes_word(r.nodes),
            per_alert.join(", ")
        );
    }
    let ratio = |rate: u32| {
        let find = |n: usize| {
            reports
                .iter()
                .find(|r| r.nodes == n && r.rate_requested == rate)
        };
        match (find(1), find(2)) {
            (Some(one), Some(two)) => Some(two.alerts_per_s / one.alerts_per_s.max(1.0)),
            _ => None,
        }
    };
    if let Some(flat) = ratio(0) {
        println!("  2 nodes ÷ 1 node, accepted alerts/s flat out: {flat:.2}");
    }
    let fixed: Vec<String> = reports
        .iter()
        .filter(|r| r.rate_requested > 0)
        .map(|r| {
            format!(
                "{} {:.2} cores ({:.0} µs per alert)",
                nodes_word(r.nodes),
                r.nodes_cpu_cores,
                1e6 * r.nodes_cpu_cores / r.alerts_per_s.max(1.0)
            )
        })
        .collect();
    if !fixed.is_empty() {
        println!(
            "  At the fixed rate the node processes used together: {}",
            fixed.join(", ")
        );
    }
    println!(
        "  On this machine ({cores} cores) both nodes, PostgreSQL and the load generator share the same cores, so two nodes here compete for the CPU one node had and cannot show what two machines would gain; the runs show what the lock and the handoffs between nodes cost, not how far separate machines scale."
    );
}

/// `samverkan-bench nodes`.
pub async fn run(args: NodesArgs) -> Result<()> {
    if std::env::var(POSTGRES_ENV).is_err() {
        bail!("the nodes share a PostgreSQL database: set {POSTGRES_ENV}");
    }
    // One PKI and policy set for every run.
    let dir = prepare_dir();
    // The benchmark measures throughput, not the publish limits.
    std::fs::write(
        dir.path().join("policies/limits.toml"),
        "[default]\npublish_per_second = 1000000\npublish_burst = 1000000\n",
    )?;
    let mut reports = Vec::new();
    let mut outcome = Ok(());
    'runs: for count in NODE_COUNTS {
        for rate in [0, args.rate] {
            match run_once(dir.path(), count, rate, &args).await {
                Ok(report) => {
                    print(&report);
                    reports.push(report);
                }
                Err(e) => {
                    outcome = Err(e);
                    break 'runs;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if !reports.is_empty() {
        print_bound(&reports);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)?;
    }
    if std::env::var_os("SAMVERKAN_BENCH_KEEP").is_some() {
        eprintln!(
            "node configurations and logs kept in {}",
            dir.keep().display()
        );
    }
    outcome
}
