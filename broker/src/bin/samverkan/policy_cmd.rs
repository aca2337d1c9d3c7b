//! `samverkan policy check` and `samverkan policy explain`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use samverkan_broker::config::{BrokerConfig, DEV_POLICY_DIR};
use samverkan_broker::policy::{DecisionInput, PolicySet, Rule};
use serde_json::{Map, Value};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy set and print a summary; exit 1 with every mistake (file:line) otherwise.
    Check(CheckArgs),
    /// Show which rule lets one agency share an alert type with another, and which fields go.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The policy directory.
    #[arg(default_value = DEV_POLICY_DIR)]
    pub dir: PathBuf,
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// The publishing agency.
    #[arg(long)]
    pub from: String,
    /// The receiving agency.
    #[arg(long)]
    pub to: String,
    /// The alert type.
    #[arg(long = "type")]
    pub alert_type: String,
    /// The logical topic (required with --alert).
    #[arg(long)]
    pub topic: Option<String>,
    /// A JSON file with the alert's fields, to decide for a concrete alert.
    #[arg(long, requires = "topic")]
    pub alert: Option<PathBuf>,
    #[command(flatten)]
    pub source: PolicySource,
}

/// Which policy to explain: a directory, or an archived version.
#[derive(clap::Args)]
pub struct PolicySource {
    /// The policy directory.
    #[arg(long, default_value = DEV_POLICY_DIR)]
    pub dir: PathBuf,
    /// Explain with an archived policy version instead (full `sha256:…` or its first 12 hex digits), read from the broker's store.
    #[arg(long)]
    pub version: Option<String>,
    /// The database URL of the store holding the archive (with --version).
    #[arg(long, requires = "version")]
    pub store: Option<String>,
    /// The broker's configuration file (for the store, with --version).
    #[arg(long, requires = "version")]
    pub config: Option<PathBuf>,
}

pub fn run(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Check(args) => check(&args.dir),
        PolicyCommand::Explain(args) => explain(&args),
    }
}

fn load(dir: &Path) -> Result<Option<PolicySet>> {
    match PolicySet::load(dir) {
        Ok(set) => Ok(Some(set)),
        Err(e) => {
            eprintln!("{e}");
            Ok(None)
        }
    }
}

fn check(dir: &Path) -> Result<ExitCode> {
    let Some(set) = load(dir)? else {
        return Ok(ExitCode::FAILURE);
    };
    let list = |names: Vec<&str>| names.join(", ");
    let revoked = set
        .keys()
        .iter()
        .filter(|k| k.revoked_at_ms.is_some())
        .count();
    println!("policy set {} is valid", dir.display());
    println!("  version      {}", set.version());
    println!(
        "  agencies     {}: {}",
        set.agencies().len(),
        list(set.agencies().keys().map(String::as_str).collect())
    );
    println!("  signing keys {} ({revoked} revoked)", set.keys().len());
    let witnesses = set.witnesses();
    println!(
        "  witnesses    {}{}; quorum `{}`",
        witnesses.witnesses().len(),
        if witnesses.witnesses().is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                list(witnesses.witnesses().keys().map(String::as_str).collect())
            )
        },
        witnesses.quorum_name()
    );
    println!(
        "  legal bases  {}: {}",
        set.legal_bases().len(),
        list(set.legal_bases().keys().map(String::as_str).collect())
    );
    println!(
        "  alert types  {}: {}",
        set.alert_types().len(),
        list(set.alert_types().keys().map(String::as_str).collect())
    );
    println!("  rules        {}:", set.rules().len());
    for rule in set.rules() {
        println!(
            "    {:<44} {} -> {} under {}",
            rule.id,
            list(rule.publishers.iter().map(String::as_str).collect()),
            list(rule.recipients.iter().map(String::as_str).collect()),
            rule.legal_basis
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_rule(set: &PolicySet, rule: &Rule, recipient: &str) {
    let basis = set.legal_bases().get(&rule.legal_basis);
    println!("rule {} ({})", rule.id, rule.origin);
    println!("  {}", rule.description);
    println!(
        "  legal basis  {}{}",
        rule.legal_basis,
        basis
            .map(|b| format!(": {}", b.reference))
            .unwrap_or_default()
    );
    println!("  purpose      {}", rule.purpose);
    println!("  topics       {}", rule.topics.join(", "));
    println!("  fields       {}", rule.fields.join(", "));
    if rule.only_when_addressed {
        println!("  only when    the publisher names {recipient} in the alert's `to`");
    }
    for c in &rule.conditions {
        println!("  only if      {c}");
    }
}

/// Loads an archived policy version from the store into a temporary directory.
fn archived(
    source: &PolicySource,
    version: &str,
) -> Result<(tempfile::TempDir, Option<PolicySet>)> {
    let mut config = match &source.config {
        Some(path) => BrokerConfig::load(path)?,
        None => BrokerConfig::development(Path::new(".")),
    };
    if let Some(url) = &source.store {
        config.store_url = url.clone();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let files = runtime.block_on(async {
        let store = samverkan_broker::store::Store::open(&config.store_url).await?;
        let versions = store.policy_versions().await?;
        let wanted = version.trim_start_matches("sha256:");
        let matching: Vec<&String> = versions
            .iter()
            .map(|(v, _)| v)
            .filter(|v| v.trim_start_matches("sha256:").starts_with(wanted) && wanted.len() >= 12)
            .collect();
        let full = match matching.as_slice() {
            [one] => (*one).clone(),
            [] => anyhow::bail!(
                "policy version {version} is not archived in the store (archived: {})",
                versions
                    .iter()
                    .map(|(v, _)| &v[..19.min(v.len())])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => anyhow::bail!("policy version {version} is ambiguous; give more digits"),
        };
        let files = store.policy_files(&full).await?.unwrap_or_default();
        Ok::<_, anyhow::Error>(files)
    })?;
    let dir = tempfile::tempdir()?;
    for f in &files {
        let path = dir.path().join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, &f.text)?;
    }
    let set = load(dir.path())?;
    Ok((dir, set))
}

fn explain(args: &ExplainArgs) -> Result<ExitCode> {
    let ExplainArgs {
        from,
        to,
        alert_type,
        topic,
        alert,
        source,
    } = args;
    let (from, to, alert_type) = (from.as_str(), to.as_str(), alert_type.as_str());
    let (topic, alert) = (topic.as_deref(), alert.as_deref());
    let (_archive, set) = match &source.version {
        Some(version) => {
            let (dir, set) = archived(source, version)?;
            (Some(dir), set)
        }
        None => (None, load(&source.dir)?),
    };
    let Some(set) = set else {
        return Ok(ExitCode::FAILURE);
    };
    for (what, id) in [("--from", from), ("--to", to)] {
        if set.agency(id).is_none() {
            eprintln!(
                "{what} {id}: not an agency of the policy (agencies: {})",
                set.agencies()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let Some(schema) = set.alert_type(alert_type) else {
        eprintln!(
            "--type {alert_type}: not an alert type of the policy (alert types: {})",
            set.alert_types()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::FAILURE);
    };
    println!(
        "{from} -> {to}, {alert_type}{} (policy {})\n",
        topic.map(|t| format!(" on {t}")).unwrap_or_default(),
        set.short_version()
    );

    if let (Some(path), Some(topic)) = (alert, topic) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let Value::Object(fields) = value else {
            eprintln!(
                "{}: the alert must be a JSON object of fields",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        };
        if let Err(problems) = schema.validate(&Value::Object(fields.clone())) {
            println!("The alert would be refused: it does not match the schema of {alert_type}:");
            for p in problems {
                println!("  {p}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        explain_alert(&set, from, to, alert_type, topic, &fields);
        return Ok(ExitCode::SUCCESS);
    }

    let rules: Vec<&Rule> = set
        .rules()
        .iter()
        .filter(|r| {
            r.publishers.contains(from)
                && r.recipients.contains(to)
                && r.alert_types.contains(alert_type)
                && topic.is_none_or(|t| {
                    r.topics
                        .iter()
                        .any(|f| samverkan_sdk::names::topic_matches(f, t))
                })
        })
        .collect();
    if rules.is_empty() {
        println!(
            "Nothing goes: no rule lets {to} receive {alert_type} from {from} (default deny)."
        );
        let others: std::collections::BTreeSet<&str> = set
            .rules()
            .iter()
            .filter(|r| r.publishers.contains(from) && r.alert_types.contains(alert_type))
            .flat_map(|r| r.recipients.iter().map(String::as_str))
            .filter(|r| *r != from)
            .collect();
        if others.is_empty() {
            println!("No rule lets {from} share {alert_type} with anyone.");
        } else {
            println!(
                "Rules let {from} share {alert_type} with: {}.",
                others.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} rule{} can apply, tried in this order; the first whose conditions hold decides:\n",
        rules.len(),
        if rules.len() == 1 { "" } else { "s" }
    );
    for rule in rules {
        print_rule(&set, rule, to);
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn explain_alert(
    set: &PolicySet,
    from: &str,
    to: &str,
    alert_type: &str,
    topic: &str,
    fields: &Map<String, Value>,
) {
    let addressed = [to.to_string()];
    for (label, to_list) in [
        ("Without an explicit `to`", None),
        (&*format!("With `to` naming {to}"), Some(&addressed[..])),
    ] {
        let decision = set.decide(&DecisionInput {
            publisher: from,
            topic,
            alert_type,
            fields,
            to: to_list,
        });
        print!("{label}: ");
        if let Some(share) = decision.shares.iter().find(|s| s.recipient == to) {
            println!(
                "{to} receives under rule {} ({})",
                share.rule_id, share.legal_basis
            );
            println!("  purpose  {}", share.purpose);
            println!("  fields   {}", share.fields.join(", "));
            let withheld: Vec<&String> = fields
                .keys()
                .filter(|f| !share.fields.contains(f))
                .collect();
            if !withheld.is_empty() {
                println!(
                    "  withheld {}",
                    withheld
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        } else if let Some(denial) = decision
            .denials
            .iter()
            .find(|d| d.recipient.as_deref() == Some(to))
        {
            println!("{to} receives nothing: {}", denial.reason);
        } else {
            println!("{to} receives nothing: no rule covers it unless it is addressed");
        }
    }
}
