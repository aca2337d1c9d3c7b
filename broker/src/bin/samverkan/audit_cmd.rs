//! `samverkan audit …`: the audit log for legal staff.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
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

/// Where the log is and how to read it: from a configuration file, or the
/// development defaults, with overrides.
pub struct Source {
    pub config: Option<PathBuf>,
    pub store: Option<String>,
    pub broker_keys: Option<PathBuf>,
}

impl Source {
    fn config(&self) -> Result<BrokerConfig> {
        let mut config = match &self.config {
            Some(path) => BrokerConfig::load(path).map_err(|errors| {
                anyhow::anyhow!(
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?,
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

pub fn verify(source: &Source, witnessed: &[PathBuf], quiet: bool) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let keys = source.broker_keys()?;
    let notes = witnessed
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    // Progress rewrites one line, so only on a terminal: captured, it would
    // run into whatever is written next.
    let show_progress = !quiet && std::io::stderr().is_terminal();
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
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[allow(clippy::too_many_arguments)]
pub fn query(
    source: &Source,
    alert: Option<String>,
    agency: Option<String>,
    rule: Option<String>,
    legal_basis: Option<String>,
    alert_type: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u64>,
    format: Format,
) -> Result<ExitCode> {
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

pub fn prove(source: &Source, index: u64, out: Option<&Path>) -> Result<ExitCode> {
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

pub fn check_proof(source: &Source, bundle: &Path) -> Result<ExitCode> {
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

pub fn subject(
    source: &Source,
    identifier: &str,
    include_denials: bool,
    format: Format,
) -> Result<ExitCode> {
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

pub fn consistency(source: &Source, old: u64, new: Option<u64>) -> Result<ExitCode> {
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
