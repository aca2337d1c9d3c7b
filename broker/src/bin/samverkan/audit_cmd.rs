//! `samverkan audit …`: the audit log for legal staff.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use samverkan_broker::audit::evidence::build_bundle;
use samverkan_broker::audit::subject::SubjectHasher;
use samverkan_broker::audit::tree::{consistency_proof, stored_root};
use samverkan_broker::audit::verify::{check_cosignatures, verify_log};
use samverkan_broker::audit::{AuditEntry, EntryKind};
use samverkan_broker::config::BrokerConfig;
use samverkan_broker::store::{AuditFilter, Store};
use samverkan_sdk::audit::checkpoint::verify_checkpoint;
use samverkan_sdk::audit::evidence::check_bundle;
use samverkan_sdk::audit::proof::verify_consistency;
use samverkan_sdk::keys::KeyRegistry;
use samverkan_sdk::time::{format_ms, parse_rfc3339_ms};

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub source: Source,
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Where the audit log is (default: the development layout in the working directory).
#[derive(clap::Args)]
pub struct Source {
    /// The broker's configuration file (for the database URL and keys).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The database URL (overrides the configuration).
    #[arg(long, global = true)]
    pub store: Option<String>,
    /// The broker's public keys (default: broker-keys.toml beside the broker's signing key).
    #[arg(long, global = true)]
    pub broker_keys: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the whole log and check it against every signed checkpoint; exit 1 at the first problem.
    Verify(VerifyArgs),
    /// List entries, filtered.
    Query(QueryArgs),
    /// Write the evidence bundle for one entry (checkable offline with `check-proof`).
    Prove(ProveArgs),
    /// Check an evidence bundle offline, with only the bundle and the broker's public keys.
    CheckProof(CheckProofArgs),
    /// Every share that concerned a person or company (registerutdrag).
    Subject(SubjectArgs),
    /// Prove that the log at one signed checkpoint is a prefix of the log at a later one.
    Consistency(ConsistencyArgs),
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Checkpoints kept by agencies (signed notes) that the log must be consistent with.
    #[arg(long = "checkpoint")]
    pub checkpoints: Vec<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct QueryArgs {
    /// Entries about this alert.
    #[arg(long)]
    pub alert: Option<String>,
    /// Entries where this agency is publisher or recipient.
    #[arg(long)]
    pub agency: Option<String>,
    /// Entries under this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Entries under this legal basis.
    #[arg(long)]
    pub legal_basis: Option<String>,
    /// Entries about this alert type.
    #[arg(long = "type")]
    pub alert_type: Option<String>,
    /// share, denial, rejection, ack, policy_loaded, key_revoked or retention_purge.
    #[arg(long)]
    pub kind: Option<String>,
    /// From this date or time (inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// Until this date or time (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(clap::Args)]
pub struct ProveArgs {
    /// The entry's index.
    pub entry: u64,
    /// Where to write it (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct CheckProofArgs {
    /// The bundle.
    pub bundle: PathBuf,
}

#[derive(clap::Args)]
pub struct SubjectArgs {
    /// A personnummer, samordningsnummer or organisationsnummer.
    pub identifier: String,
    /// Also list denials.
    #[arg(long)]
    pub include_denials: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(clap::Args)]
pub struct ConsistencyArgs {
    /// The older checkpoint's size.
    pub old: u64,
    /// The newer checkpoint's size (default: the newest).
    pub new: Option<u64>,
}

pub fn run(args: AuditArgs) -> Result<ExitCode> {
    let source = &args.source;
    match args.command {
        AuditCommand::Verify(args) => verify(source, &args),
        AuditCommand::Query(args) => query(source, args),
        AuditCommand::Prove(args) => prove(source, &args),
        AuditCommand::CheckProof(args) => check_proof(source, &args),
        AuditCommand::Subject(args) => subject(source, &args),
        AuditCommand::Consistency(args) => consistency(source, &args),
    }
}

impl Source {
    fn config(&self) -> Result<BrokerConfig> {
        let mut config = match &self.config {
            Some(path) => BrokerConfig::load(path)?,
            None => BrokerConfig::development(Path::new(".")),
        };
        if let Some(url) = &self.store {
            config.store_url = url.clone();
        }
        Ok(config)
    }

    async fn store(&self) -> Result<Store> {
        let config = self.config()?;
        Store::open(&config.store_url).await.with_context(|| {
            format!(
                "cannot open the store {}",
                samverkan_broker::server::redact_url(&config.store_url)
            )
        })
    }

    fn broker_keys(&self) -> Result<KeyRegistry> {
        let path = match &self.broker_keys {
            Some(p) => p.clone(),
            None => self
                .config()?
                .signing_key
                .with_file_name("broker-keys.toml"),
        };
        KeyRegistry::load(&path).map_err(|errors| {
            anyhow::anyhow!(
                "broker keys {}: {}",
                path.display(),
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What `audit verify` cannot see, said with every result.
const CANNOT_DETECT: &str = "\
  not detectable from the database alone:
    a rollback (the newest entries removed together with their checkpoints) cannot be detected from the database alone;
      give checkpoints the agencies kept with --checkpoint FILE to detect it; the witnesses refuse to
      cosign after a rollback and keep both checkpoints (samverkan admin health shows the refusals)
    the newest checkpoints removed while their entries stay (those entries then show as not yet covered)
    entries appended with correct hashes before the broker signs its next checkpoint
    a changed entry whose leaf hashes and tree were recomputed, when no record signed by the broker
      covers the changed field, is found, but only as the range between two checkpoints";

fn verify(source: &Source, args: &VerifyArgs) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let VerifyArgs {
        checkpoints: witnessed,
        quiet,
    } = args;
    let keys = source.broker_keys()?;
    let notes = witnessed
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    // Progress rewrites one line, so only on a terminal: captured, it would
    // run into whatever is written next.
    let show_progress = !*quiet && std::io::stderr().is_terminal();
    runtime()?.block_on(async {
        let store = source.store().await?;
        let started = std::time::Instant::now();
        let mut last_report = std::time::Instant::now();
        let mut shown = false;
        let result = verify_log(&store, &keys, &notes, |done, total| {
            if show_progress && (last_report.elapsed().as_secs() >= 1 || done == total) {
                eprint!("\rverified {done} of {total} entries");
                shown = true;
                last_report = std::time::Instant::now();
            }
        })
        .await;
        if shown {
            eprintln!();
        }
        let result = match result {
            Ok(report) => check_cosignatures(&store, &keys, &notes)
                .await
                .map(|witnesses| (report, witnesses)),
            Err(e) => Err(e),
        };
        let mut out = std::io::stdout().lock();
        match result {
            Ok((report, witnesses)) => {
                writeln!(out, "the audit log verifies")?;
                writeln!(out, "  entries      {} (each against its leaf hash and the Merkle tree)", report.entries)?;
                writeln!(out, "  root         {}", hex::encode(report.root))?;
                writeln!(
                    out,
                    "  checkpoints  {} verified (signatures, roots, stored as signed, times in order, none missing between the first and the newest), {} of them kept outside the database",
                    report.checkpoints, report.witnessed
                )?;
                writeln!(out, "  policies     {} archived versions hash to their version", report.policy_versions)?;
                writeln!(
                    out,
                    "  alerts       {} (signed envelope, content and the broker's receipt against the entries)",
                    report.alerts
                )?;
                writeln!(
                    out,
                    "  deliveries   {} (the broker's share stamp and the disclosed fields against the share entries)",
                    report.deliveries
                )?;
                writeln!(
                    out,
                    "  purged       {} alert contents and delivery payloads, each removed by a recorded retention purge",
                    report.purged
                )?;
                match &report.last_checkpoint {
                    Some(cp) => {
                        writeln!(
                            out,
                            "  last signed  size {} at {} by key {}",
                            cp.size,
                            format_ms(cp.time_ms),
                            cp.key_id
                        )?;
                        let unsigned = report.entries.saturating_sub(cp.size);
                        if unsigned > 0 {
                            writeln!(out, "  {unsigned} newer entries are not yet covered by a signed checkpoint")?;
                        }
                    }
                    None => writeln!(out, "  no signed checkpoint yet: the entries are consistent but not yet signed")?,
                }
                if witnesses.quorum == "none" {
                    writeln!(out, "  witnesses    none in the policy in force (no cosignatures required); {} stored cosignatures verified", witnesses.cosignatures)?;
                } else {
                    writeln!(
                        out,
                        "  witnesses    {} stored cosignatures verified; {} of {} checkpoints reached the quorum `{}`, the newest of them of size {}",
                        witnesses.cosignatures,
                        witnesses.at_quorum,
                        witnesses.checkpoints,
                        witnesses.quorum,
                        witnesses.newest_at_quorum.map_or("-".to_string(), |s| s.to_string())
                    )?;
                    if let Some((size, signed, missing)) = &witnesses.newest {
                        writeln!(
                            out,
                            "  newest       checkpoint {size} cosigned by [{}]; missing [{}]",
                            signed.join(", "),
                            missing.join(", ")
                        )?;
                    }
                }
                for (size, names) in &witnesses.given {
                    writeln!(out, "  kept         checkpoint {size} cosigned by [{}]", names.join(", "))?;
                }
                writeln!(out, "  took         {:.1?}", started.elapsed())?;
                writeln!(out, "{CANNOT_DETECT}")?;
                if report.witnessed == 0 {
                    writeln!(out, "  no checkpoint kept outside the database was given: a rollback would not have been seen")?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(failure) => {
                drop(out);
                eprintln!("AUDIT LOG DOES NOT VERIFY: {failure}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

fn parse_time(s: &str) -> Result<i64> {
    if let Some(ms) = parse_rfc3339_ms(s) {
        return Ok(ms);
    }
    parse_rfc3339_ms(&format!("{s}T00:00:00Z")).with_context(|| {
        format!("`{s}` is not a date (2026-11-29) or an RFC 3339 time (2026-11-29T12:00:00Z)")
    })
}

/// How entries are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

fn query(source: &Source, args: QueryArgs) -> Result<ExitCode> {
    let QueryArgs {
        alert,
        agency,
        rule,
        legal_basis,
        alert_type,
        kind,
        from,
        to,
        limit,
        format,
    } = args;
    let kind = kind
        .map(|k| {
            EntryKind::parse(&k).with_context(|| {
                format!("unknown kind `{k}` (share, denial, rejection, ack, policy_loaded, key_revoked, retention_purge)")
            })
        })
        .transpose()?;
    let filter = AuditFilter {
        alert_id: alert,
        agency,
        rule_id: rule,
        legal_basis,
        alert_type,
        kind,
        from_ms: from.as_deref().map(parse_time).transpose()?,
        to_ms: to.as_deref().map(parse_time).transpose()?,
        subject_hash: None,
        limit,
    };
    runtime()?.block_on(async {
        let store = source.store().await?;
        let entries = store.audit_query(&filter).await?;
        print_entries(&mut std::io::stdout().lock(), &entries, format)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Writes entries to `out` and flushes it, so everything a command prints
/// is on standard output, whole, before it returns.
fn print_entries(out: &mut impl Write, entries: &[AuditEntry], format: Format) -> Result<()> {
    match format {
        Format::Json => {
            for e in entries {
                serde_json::to_writer(&mut *out, e)?;
                writeln!(out)?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut *out);
            w.write_record([
                "index",
                "time",
                "kind",
                "alert_id",
                "publisher",
                "recipient",
                "topic",
                "alert_type",
                "rule_id",
                "legal_basis",
                "purpose",
                "fields",
                "reason_code",
                "reason",
                "policy_version",
            ])?;
            for e in entries {
                w.write_record([
                    e.index.to_string(),
                    format_ms(e.at_ms),
                    e.kind.to_string(),
                    e.alert_id.clone().unwrap_or_default(),
                    e.publisher.clone().unwrap_or_default(),
                    e.recipient.clone().unwrap_or_default(),
                    e.topic.clone().unwrap_or_default(),
                    e.alert_type.clone().unwrap_or_default(),
                    e.rule_id.clone().unwrap_or_default(),
                    e.legal_basis.clone().unwrap_or_default(),
                    e.purpose.clone().unwrap_or_default(),
                    e.fields.join(" "),
                    e.reason_code.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.policy_version.clone().unwrap_or_default(),
                ])?;
            }
            w.flush()?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:>7}  {:<24}  {:<15}  {:<17}  {:<17}  {:<40}  {:<26}  details",
                "index", "time", "kind", "publisher", "recipient", "rule", "legal basis"
            )?;
            for e in entries {
                let details = match e.kind {
                    EntryKind::Share => format!(
                        "fields: {}  alert {}",
                        e.fields.join(", "),
                        e.alert_id.as_deref().unwrap_or("")
                    ),
                    EntryKind::Ack => format!("share {}", e.share_id.as_deref().unwrap_or("")),
                    _ => format!(
                        "{}{}",
                        e.reason_code
                            .as_deref()
                            .map(|c| format!("{c}: "))
                            .unwrap_or_default(),
                        e.reason.as_deref().unwrap_or("")
                    ),
                };
                writeln!(
                    out,
                    "{:>7}  {:<24}  {:<15}  {:<17}  {:<17}  {:<40}  {:<26}  {}",
                    e.index,
                    format_ms(e.at_ms),
                    e.kind.as_str(),
                    e.publisher.as_deref().unwrap_or("-"),
                    e.recipient.as_deref().unwrap_or("-"),
                    e.rule_id.as_deref().unwrap_or("-"),
                    e.legal_basis.as_deref().unwrap_or("-"),
                    details
                )?;
            }
            writeln!(out, "{} entries", entries.len())?;
        }
    }
    out.flush()?;
    Ok(())
}

fn prove(source: &Source, args: &ProveArgs) -> Result<ExitCode> {
    let (index, out) = (args.entry, args.out.as_deref());
    runtime()?.block_on(async {
        let store = source.store().await?;
        let bundle = build_bundle(&store, index).await?;
        let bytes = bundle.to_canonical_json();
        match out {
            Some(path) => {
                std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!(
                    "evidence for entry {index} written to {} (check it with `samverkan audit check-proof {}`)",
                    path.display(),
                    path.display()
                );
            }
            None => std::io::stdout().write_all(&bytes)?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn check_proof(source: &Source, args: &CheckProofArgs) -> Result<ExitCode> {
    let bundle = &args.bundle;
    let keys = source.broker_keys()?;
    let bytes =
        std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    match check_bundle(&bytes, &keys) {
        Ok(report) => {
            let e = &report.entry;
            println!("EVIDENCE VERIFIES");
            println!(
                "  entry        {} ({}) at {}",
                e.index,
                e.kind,
                format_ms(e.at_ms)
            );
            if let Some(alert) = &e.alert_id {
                println!(
                    "  alert        {alert} ({})",
                    e.alert_type.as_deref().unwrap_or("-")
                );
            }
            println!(
                "  from → to    {} → {}",
                e.publisher.as_deref().unwrap_or("-"),
                e.recipient.as_deref().unwrap_or("-")
            );
            if !e.fields.is_empty() {
                println!("  fields       {}", e.fields.join(", "));
            }
            if let Some(r) = &e.reason {
                println!("  reason       {r}");
            }
            println!(
                "  included in  checkpoint of {} entries signed {} by broker key {}",
                report.checkpoint.size,
                format_ms(report.checkpoint.time_ms),
                report.checkpoint.key_id
            );
            if report.quorum == "none" {
                println!("  witnesses    none required by the entry's policy");
            } else {
                println!(
                    "  witnesses    cosigned by [{}]: quorum `{}` met",
                    report.cosigners.join(", "),
                    report.quorum
                );
            }
            println!(
                "  publisher    {}",
                if report.publisher_signature_checked {
                    "signature over the alert's header and field digests verified"
                } else {
                    "(no publisher signature to check for this kind of entry)"
                }
            );
            println!(
                "  policy       {}",
                e.policy_version.as_deref().unwrap_or("-")
            );
            if let Some(rule) = &report.rule_text {
                println!("\nrule in force (from that policy version):\n{rule}");
            }
            if let Some(basis) = &report.legal_basis_text {
                println!("legal basis:\n{basis}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("EVIDENCE DOES NOT VERIFY: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn subject(source: &Source, args: &SubjectArgs) -> Result<ExitCode> {
    let SubjectArgs {
        identifier,
        include_denials,
        format,
    } = args;
    let (include_denials, format) = (*include_denials, *format);
    let config = source.config()?;
    let hasher = SubjectHasher::load(&config.audit.subject_key)?;
    let hash = match hasher.hash_identifier(identifier) {
        Ok(h) => h,
        Err(e) => bail!("{e}"),
    };
    runtime()?.block_on(async {
        let store = source.store().await?;
        let entries = store
            .audit_query(&AuditFilter {
                subject_hash: Some(hash),
                ..AuditFilter::default()
            })
            .await?;
        let entries: Vec<AuditEntry> = entries
            .into_iter()
            .filter(|e| {
                e.kind == EntryKind::Share || (include_denials && e.kind == EntryKind::Denial)
            })
            .collect();
        let mut out = std::io::stdout().lock();
        if format == Format::Table {
            let agencies: std::collections::BTreeSet<&str> = entries
                .iter()
                .filter(|e| e.kind == EntryKind::Share)
                .filter_map(|e| e.recipient.as_deref())
                .collect();
            writeln!(
                out,
                "{} share(s) about this subject; received by: {}\n",
                entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::Share)
                    .count(),
                if agencies.is_empty() {
                    "nobody".to_string()
                } else {
                    agencies.into_iter().collect::<Vec<_>>().join(", ")
                }
            )?;
        }
        print_entries(&mut out, &entries, format)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn consistency(source: &Source, args: &ConsistencyArgs) -> Result<ExitCode> {
    let ConsistencyArgs { old, new } = *args;
    let keys = source.broker_keys()?;
    runtime()?.block_on(async {
        let store = source.store().await?;
        let checkpoints = store.checkpoints().await?;
        let newest = checkpoints.last().context("there is no signed checkpoint yet")?;
        let new_size = new.unwrap_or(newest.size);
        let find = |size: u64| checkpoints.iter().find(|c| c.size == size);
        let old_cp = find(old).with_context(|| format!("no signed checkpoint of size {old}"))?;
        let new_cp = find(new_size).with_context(|| format!("no signed checkpoint of size {new_size}"))?;
        let old_signed = verify_checkpoint(&old_cp.note, &keys)?;
        let new_signed = verify_checkpoint(&new_cp.note, &keys)?;
        let proof = consistency_proof(&store, new_size, old).await?;
        verify_consistency(old, &old_signed.root, new_size, &new_signed.root, &proof)?;
        let root = stored_root(&store, new_size).await?;
        if root != new_signed.root {
            bail!("the stored tree of size {new_size} does not match its signed checkpoint");
        }
        let out = serde_json::json!({
            "old": {"size": old, "root": hex::encode(old_signed.root), "checkpoint": old_cp.note},
            "new": {"size": new_size, "root": hex::encode(new_signed.root), "checkpoint": new_cp.note},
            "consistency_proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        eprintln!("the log of {new_size} entries is consistent with the checkpoint of {old} entries");
        Ok(ExitCode::SUCCESS)
    })
}
