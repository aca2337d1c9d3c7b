//! `samverkan-bench console`: the auditor console's queries on a large log.
//!
//! Fills a store with a realistic log ([`samverkan_e2e::fill`]) unless it
//! already holds one, then runs every kind of search the console offers,
//! the case page's, the subject lookup's, the overview's and the export's
//! reads, through the same `Store` functions the HTTP handlers call, each
//! `--runs` times, and prints p50, p95 and max per query, the index sizes,
//! and with `--explain` the database's plan of every search.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use samverkan_broker::audit::subject::SubjectHasher;
use samverkan_broker::audit::{AuditEntry, EntryKind};
use samverkan_broker::console::export;
use samverkan_broker::pki::DevPkiLayout;
use samverkan_broker::store::Store;
use samverkan_broker::store::console::{ConsoleFilter, Cursor, DAY_MS, Scope};
use samverkan_e2e::fill::{self, FillOptions};

/// Entries per search page, as the console shows them.
const PAGE: u32 = samverkan_broker::console::search::PAGE_SIZE;

#[derive(clap::Args, Clone)]
pub struct ConsoleArgs {
    /// Entries in the log (when the store is filled).
    #[arg(long, default_value_t = 20_000)]
    entries: u64,
    /// The store: `sqlite:///tmp/x.db` or `postgres://…`. Filled if empty,
    /// reused as it is if it already holds a log.
    #[arg(long)]
    store: String,
    /// Times each query is run (after one unmeasured run).
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// Print the plan of every search.
    #[arg(long)]
    explain: bool,
    /// Only fill the store.
    #[arg(long)]
    fill_only: bool,
    /// The development PKI (keys the log is signed with).
    #[arg(long, default_value = "certs-dev")]
    certs: PathBuf,
    /// The policy set.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

/// One read of the console, as a closure over the store.
enum Query {
    Search(Scope, ConsoleFilter, Cursor),
    Subject(Scope, String),
    Case(Scope, String),
    Overview(Scope, i64, i64),
    Export(Scope, ConsoleFilter),
}

impl Query {
    /// Runs it; returns how many rows (entries, cells) it produced.
    async fn run(&self, store: &Store) -> Result<usize> {
        Ok(match self {
            Query::Search(scope, filter, cursor) => store
                .console_search(scope, filter, *cursor, PAGE)
                .await?
                .len(),
            Query::Subject(scope, hash) => store.console_subject(scope, hash, 500).await?.len(),
            Query::Case(scope, alert_id) => {
                // The case page's reads, in its order.
                let entries = store.console_alert(scope, alert_id).await?;
                let publisher = entries.iter().find_map(|e| e.publisher.clone());
                if let Some(p) = &publisher {
                    store.signed_envelope(p, alert_id).await?;
                    store.alert_content(p, alert_id).await?;
                }
                let shares: Vec<u64> = entries
                    .iter()
                    .filter(|e| e.share_id.is_some())
                    .map(|e| e.index)
                    .collect();
                store.console_deliveries(&shares).await?;
                let mut versions: Vec<&String> = entries
                    .iter()
                    .filter_map(|e| e.policy_version.as_ref())
                    .collect();
                versions.dedup();
                for v in versions {
                    store.policy_files(v).await?;
                }
                entries.len()
            }
            Query::Overview(scope, from, to) => {
                let flows = store.console_flows(scope, *from, *to).await?;
                let counts = store.console_kind_counts(scope, *from, *to).await?;
                store.latest_checkpoint().await?;
                flows.len() + counts.len()
            }
            Query::Export(scope, filter) => export::collect(store, scope, filter).await?.len(),
        })
    }
}

fn filter(f: impl FnOnce(&mut ConsoleFilter)) -> ConsoleFilter {
    let mut filter = ConsoleFilter::default();
    f(&mut filter);
    filter
}

fn text(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// The queries: every filter alone, typical combinations, both scopes,
/// first and deep pages, subject, case, overview, export.
fn queries(
    size: u64,
    period: (i64, i64),
    sample: &AuditEntry,
    frequent_subject: &str,
    rare_subject: &str,
) -> Vec<(String, Query)> {
    let all = Scope::All;
    let agency = Scope::Agency("linkoping".into());
    let (from, to) = period;
    let mid_day = from + (to - from) / 2 / DAY_MS * DAY_MS;
    let month = (to - 30 * DAY_MS, to);
    let deep = Cursor::Before(size / 10);
    let mut searches: Vec<(String, Query)> = Vec::new();
    let mut q: Vec<(String, Query)> = Vec::new();
    let mut search = |name: &str, scope: &Scope, f: ConsoleFilter, cursor: Cursor| {
        searches.push((name.to_string(), Query::Search(scope.clone(), f, cursor)));
    };
    for (label, scope) in [("supervisor", &all), ("auditor linkoping", &agency)] {
        let s = |n: &str| format!("search {n} ({label})");
        search(&s("no filter"), scope, filter(|_| {}), Cursor::Newest);
        search(&s("no filter, deep page"), scope, filter(|_| {}), deep);
        search(
            &s("publisher=forsakringskassan"),
            scope,
            filter(|f| f.publisher = text("forsakringskassan")),
            Cursor::Newest,
        );
        search(
            &s("publisher=forsakringskassan, deep page"),
            scope,
            filter(|f| f.publisher = text("forsakringskassan")),
            deep,
        );
        search(
            &s("recipient=norrkoping"),
            scope,
            filter(|f| f.recipient = text("norrkoping")),
            Cursor::Newest,
        );
        for kind in EntryKind::ALL {
            search(
                &s(&format!("kind={}", kind.as_str())),
                scope,
                filter(|f| f.kind = text(kind.as_str())),
                Cursor::Newest,
            );
        }
        search(
            &s("kind=denial, deep page"),
            scope,
            filter(|f| f.kind = text("denial")),
            deep,
        );
        search(
            &s("legal_basis=osl-10-24"),
            scope,
            filter(|f| f.legal_basis = text("osl-10-24")),
            Cursor::Newest,
        );
        search(
            &s("rule=incorrect-payment-to-home-municipality"),
            scope,
            filter(|f| f.rule_id = text("incorrect-payment-to-home-municipality")),
            Cursor::Newest,
        );
        search(
            &s("rule=incorrect-payment-crime-report"),
            scope,
            filter(|f| f.rule_id = text("incorrect-payment-crime-report")),
            Cursor::Newest,
        );
        search(
            &s("rule=no-such-rule (nothing matches)"),
            scope,
            filter(|f| f.rule_id = text("no-such-rule")),
            Cursor::Newest,
        );
        search(
            &s("alert_type=akrim.inspection_planned"),
            scope,
            filter(|f| f.alert_type = text("akrim.inspection_planned")),
            Cursor::Newest,
        );
        search(
            &s("topic=akrim/vast/inspection"),
            scope,
            filter(|f| f.topic = text("akrim/vast/inspection")),
            Cursor::Newest,
        );
        search(
            &s("topic=welfare/nowhere (nothing matches)"),
            scope,
            filter(|f| f.topic = text("welfare/nowhere")),
            Cursor::Newest,
        );
        search(
            &s("alert_id"),
            scope,
            filter(|f| f.alert_id = sample.alert_id.clone()),
            Cursor::Newest,
        );
        search(
            &s("index"),
            scope,
            filter(|f| f.index = Some(sample.index)),
            Cursor::Newest,
        );
        search(
            &s("one day"),
            scope,
            filter(|f| {
                f.from_ms = Some(mid_day);
                f.to_ms = Some(mid_day + DAY_MS);
            }),
            Cursor::Newest,
        );
        search(
            &s("share, forsakringskassan → linkoping"),
            scope,
            filter(|f| {
                f.kind = text("share");
                f.publisher = text("forsakringskassan");
                f.recipient = text("linkoping");
            }),
            Cursor::Newest,
        );
        search(
            &s("denial, polisen, last month"),
            scope,
            filter(|f| {
                f.kind = text("denial");
                f.publisher = text("polisen");
                f.from_ms = Some(month.0);
                f.to_ms = Some(month.1);
            }),
            Cursor::Newest,
        );
        search(
            &s("share, uppgiftsskyldighet-akrim → akrimost, one week"),
            scope,
            filter(|f| {
                f.kind = text("share");
                f.legal_basis = text("uppgiftsskyldighet-akrim");
                f.recipient = text("akrimost");
                f.from_ms = Some(mid_day);
                f.to_ms = Some(mid_day + 7 * DAY_MS);
            }),
            Cursor::Newest,
        );
        search(
            &s("skatteverket, welfare.company_flag, welfare/company/ost"),
            scope,
            filter(|f| {
                f.publisher = text("skatteverket");
                f.alert_type = text("welfare.company_flag");
                f.topic = text("welfare/company/ost");
            }),
            Cursor::Newest,
        );
        search(
            &s("denial, rule=incorrect-payment-to-home-municipality, recipient=linkoping"),
            scope,
            filter(|f| {
                f.kind = text("denial");
                f.rule_id = text("incorrect-payment-to-home-municipality");
                f.recipient = text("linkoping");
            }),
            Cursor::Newest,
        );
        search(
            &s("share, norrkoping → forsakringskassan (rare pair)"),
            scope,
            filter(|f| {
                f.kind = text("share");
                f.publisher = text("norrkoping");
                f.recipient = text("forsakringskassan");
            }),
            Cursor::Newest,
        );
        q.push((
            format!("subject, frequent person ({label})"),
            Query::Subject(scope.clone(), frequent_subject.to_string()),
        ));
        q.push((
            format!("subject, rare person ({label})"),
            Query::Subject(scope.clone(), rare_subject.to_string()),
        ));
        if let Some(id) = &sample.alert_id {
            q.push((
                format!("case page ({label})"),
                Query::Case(scope.clone(), id.clone()),
            ));
        }
        q.push((
            format!("overview, last 30 days ({label})"),
            Query::Overview(scope.clone(), month.0, month.1),
        ));
        q.push((
            format!("overview, whole year ({label})"),
            Query::Overview(scope.clone(), from, to),
        ));
        q.push((
            format!("export, denials of polisen, last month ({label})"),
            Query::Export(
                scope.clone(),
                filter(|f| {
                    f.kind = text("denial");
                    f.publisher = text("polisen");
                    f.from_ms = Some(month.0);
                    f.to_ms = Some(month.1);
                }),
            ),
        ));
    }
    searches.extend(q);
    searches
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Sizes of the audit tables' indexes, in bytes, from the database.
async fn index_sizes(url: &str) -> Result<Vec<(String, i64)>> {
    use sqlx::Row;
    let sql = if url.starts_with("sqlite:") {
        "SELECT name, SUM(pgsize) AS bytes FROM dbstat \
         WHERE name IN (SELECT name FROM sqlite_master WHERE type IN ('index', 'table') \
         AND tbl_name IN ('audit_entries', 'audit_day_counts')) GROUP BY name ORDER BY name"
    } else {
        "SELECT c.relname::text AS name, pg_relation_size(c.oid) AS bytes FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('i', 'r') \
         AND (c.relname LIKE 'audit_entries%' OR c.relname LIKE 'audit_day_counts%') ORDER BY 1"
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    let rows = sqlx::query(sql).fetch_all(&pool).await?;
    pool.close().await;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("name")?,
                r.try_get::<i64, _>("bytes")?,
            ))
        })
        .collect()
}

pub async fn run(args: ConsoleArgs) -> Result<()> {
    let pki = DevPkiLayout::new(&args.certs);
    let store = Store::open(&args.store)
        .await
        .with_context(|| "opening the store".to_string())?;
    let mut size = store.next_audit_index().await?;
    if size == 0 {
        println!("filling the store with {} entries …", args.entries);
        let report = fill::fill(
            &store,
            &args.policies,
            &pki,
            "samverkan-dev/audit",
            &FillOptions::year(args.entries),
        )
        .await?;
        println!(
            "filled: {} entries from {} alerts in {:.1} s ({:.0} entries/s), {} checkpoints",
            report.entries,
            report.alerts,
            report.seconds,
            report.entries as f64 / report.seconds.max(1e-9),
            report.checkpoints
        );
        for (kind, n) in &report.by_kind {
            println!(
                "  {kind:<16} {n:>9}  {:>5.1} %",
                100.0 * *n as f64 / report.entries.max(1) as f64
            );
        }
        size = report.entries;
    } else {
        println!("the store holds {size} entries: reused as it is");
    }
    if args.fill_only {
        return Ok(());
    }
    // Handles for the queries, read from the log itself.
    let first = store
        .console_entry(&Scope::All, 0)
        .await?
        .context("entry 0")?;
    let newest = store
        .console_search(&Scope::All, &ConsoleFilter::default(), Cursor::Newest, 1)
        .await?
        .into_iter()
        .next()
        .context("newest entry")?;
    let period = (first.at_ms, newest.at_ms + 1);
    let sample = store
        .console_search(
            &Scope::All,
            &filter(|f| {
                f.kind = text("share");
                f.recipient = text("linkoping");
            }),
            Cursor::Before(size / 2),
            1,
        )
        .await?
        .into_iter()
        .next()
        .context("a share to linkoping in the middle of the log")?;
    let subjects = SubjectHasher::load(&pki.subject_key()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let frequent = subjects
        .hash_identifier(&fill::personnummer(0))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(rare) = sample.subject_hashes.first().cloned() else {
        bail!("the sample share has no subject");
    };
    let queries = queries(size, period, &sample, &frequent, &rare);

    if args.explain {
        for (name, q) in &queries {
            if let Query::Search(scope, f, cursor) = q {
                println!("\n{name}");
                for line in store.console_search_plan(scope, f, *cursor, PAGE).await? {
                    println!("    {line}");
                }
            }
        }
    }

    println!(
        "\n{} entries, {} runs per query (after one unmeasured run), times in ms\n",
        size, args.runs
    );
    println!(
        "{:<92} {:>7} {:>8} {:>8} {:>8}",
        "query", "rows", "p50", "p95", "max"
    );
    let mut worst: Option<(String, f64)> = None;
    for (name, q) in &queries {
        let rows = q.run(&store).await?;
        let mut times = Vec::with_capacity(args.runs as usize);
        for _ in 0..args.runs {
            let started = Instant::now();
            q.run(&store).await?;
            times.push(started.elapsed());
        }
        times.sort();
        let p95 = quantile(&times, 0.95);
        println!(
            "{name:<92} {rows:>7} {:>8.2} {p95:>8.2} {:>8.2}",
            quantile(&times, 0.5),
            quantile(&times, 1.0)
        );
        if worst.as_ref().is_none_or(|(_, w)| p95 > *w) {
            worst = Some((name.clone(), p95));
        }
    }
    if let Some((name, p95)) = worst {
        println!("\nslowest p95: {p95:.2} ms ({name})");
    }
    println!("\nsizes of the audit tables and their indexes:");
    for (name, bytes) in index_sizes(&args.store).await? {
        println!("  {name:<32} {:>10.1} MB", bytes as f64 / 1e6);
    }
    store.close().await;
    Ok(())
}
