//! `samverkan`: the broker and its tools in one binary.
//!
//! Argument parsing lives here and only here; the subcommands call into the
//! library.

mod admin_cmd;
mod audit_cmd;
mod pki_cmd;
mod policy_cmd;
mod serve_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Samverkan: policy-filtered, signed and audited alert sharing between
/// Swedish authorities over MQTT.
#[derive(Parser)]
#[command(name = "samverkan", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Without --config: development defaults in the working
    /// directory (policies/, certs-dev/ generated if missing, samverkan.db).
    #[command(
        after_help = "Every setting of the configuration file, with its default and why, is in samverkan.example.toml at the root of the source repository. Relative paths in a configuration file resolve against the file's directory, not the working directory; a relative sqlite:// path given with --store resolves against the working directory."
    )]
    Serve {
        /// A configuration file (TOML; every setting is optional, see samverkan.example.toml).
        /// Relative paths in it resolve against its directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the public listen address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Override the database URL (sqlite://FILE or postgres://…).
        #[arg(long)]
        store: Option<String>,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Inspect a policy set before it is deployed.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit log, for legal staff: verify, query, prove, subject lookup.
    Audit {
        #[command(flatten)]
        source: SourceArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Talk to a running broker: reload its policy and CRL, or ask its health.
    Admin {
        /// The broker's admin endpoint ([admin] listen in its configuration file).
        #[arg(long, default_value = "127.0.0.1:9883")]
        admin: std::net::SocketAddr,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Certificates and signing keys.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy set and print a summary; exit 1 with every mistake (file:line) otherwise.
    Check {
        /// The policy directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Show which rule lets one agency share an alert type with another, and which fields go.
    Explain {
        /// The publishing agency.
        #[arg(long)]
        from: String,
        /// The receiving agency.
        #[arg(long)]
        to: String,
        /// The alert type.
        #[arg(long = "type")]
        alert_type: String,
        /// The logical topic (required with --alert).
        #[arg(long)]
        topic: Option<String>,
        /// A JSON file with the alert's fields, to decide for a concrete alert.
        #[arg(long, requires = "topic")]
        alert: Option<PathBuf>,
        /// The policy directory.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// Explain with an archived policy version instead (full `sha256:…` or its first 12 hex digits), read from the broker's store.
        #[arg(long)]
        version: Option<String>,
        /// The database URL of the store holding the archive (with --version).
        #[arg(long, requires = "version")]
        store: Option<String>,
        /// The broker's configuration file (for the store, with --version).
        #[arg(long, requires = "version")]
        config: Option<PathBuf>,
    },
}

/// Where the audit log is (default: the development layout in the working directory).
#[derive(clap::Args)]
struct SourceArgs {
    /// The broker's configuration file (for the database URL and keys).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The database URL (overrides the configuration).
    #[arg(long, global = true)]
    store: Option<String>,
    /// The broker's public keys (default: broker-keys.toml beside the broker's signing key).
    #[arg(long, global = true)]
    broker_keys: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the whole log and check it against every signed checkpoint; exit 1 at the first problem.
    Verify {
        /// Checkpoints kept by agencies (signed notes) that the log must be consistent with.
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// List entries, filtered.
    Query {
        /// Entries about this alert.
        #[arg(long)]
        alert: Option<String>,
        /// Entries where this agency is publisher or recipient.
        #[arg(long)]
        agency: Option<String>,
        /// Entries under this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Entries under this legal basis.
        #[arg(long)]
        legal_basis: Option<String>,
        /// Entries about this alert type.
        #[arg(long = "type")]
        alert_type: Option<String>,
        /// share, denial, rejection, ack, policy_loaded, key_revoked or retention_purge.
        #[arg(long)]
        kind: Option<String>,
        /// From this date or time (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Until this date or time (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = audit_cmd::Format::Table)]
        format: audit_cmd::Format,
    },
    /// Write the evidence bundle for one entry (checkable offline with `check-proof`).
    Prove {
        /// The entry's index.
        entry: u64,
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an evidence bundle offline, with only the bundle and the broker's public keys.
    CheckProof {
        /// The bundle.
        bundle: PathBuf,
    },
    /// Every share that concerned a person or company (registerutdrag).
    Subject {
        /// A personnummer, samordningsnummer or organisationsnummer.
        identifier: String,
        /// Also list denials.
        #[arg(long)]
        include_denials: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = audit_cmd::Format::Table)]
        format: audit_cmd::Format,
    },
    /// Prove that the log at one signed checkpoint is a prefix of the log at a later one.
    Consistency {
        /// The older checkpoint's size.
        old: u64,
        /// The newer checkpoint's size (default: the newest).
        new: Option<u64>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Re-read the policy set and the TLS files (like SIGHUP); exit 1 if either was refused.
    Reload,
    /// Print the broker's health; exit 1 unless it is healthy.
    Health,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Revoke a certificate of the DEVELOPMENT PKI: add it to crl.pem (a running broker reloads it).
    Revoke {
        /// The certificate to revoke (PEM), e.g. certs-dev/linkoping/client.pem.
        certificate: PathBuf,
        /// The development PKI directory.
        #[arg(long, default_value = "certs-dev")]
        dir: PathBuf,
    },
    /// Create a DEVELOPMENT PKI: CA, agency client certificates, broker certificate, signing keys.
    Dev {
        /// Where to write certificates and keys.
        #[arg(long, default_value = "certs-dev")]
        out: PathBuf,
        /// The policy set whose agencies get certificates (default: policies);
        /// given, its keys.toml is rewritten with their new public keys.
        /// Without it, policies/keys.toml is rewritten only for --out certs-dev
        /// (the development layout); any other --out gets the public keys in
        /// OUT/keys.toml, beside their private halves.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Overwrite an existing PKI in --out.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            // rumqttd reports every ordinary disconnect as an error; its
            // other warnings (such as a lagging subscriber) stay visible.
            "info,rumqttd=warn,rumqttd::server::broker=off",
        )
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // `samverkan … | head -1`: end quietly, as Unix tools do, once the reader has gone.
    samverkan_sdk::closed_output::end_quietly_when_closed();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            store,
            log_format,
        } => {
            init_logging(log_format);
            serve_cmd::serve(serve_cmd::ServeArgs {
                config,
                listen,
                store,
            })
        }
        Command::Policy { command } => match command {
            PolicyCommand::Check { dir } => policy_cmd::check(&dir),
            PolicyCommand::Explain {
                from,
                to,
                alert_type,
                topic,
                alert,
                dir,
                version,
                store,
                config,
            } => policy_cmd::explain(
                &policy_cmd::PolicySource {
                    dir,
                    version,
                    store,
                    config,
                },
                &from,
                &to,
                &alert_type,
                topic.as_deref(),
                alert.as_deref(),
            ),
        },
        Command::Audit { source, command } => {
            let source = audit_cmd::Source {
                config: source.config,
                store: source.store,
                broker_keys: source.broker_keys,
            };
            match command {
                AuditCommand::Verify { checkpoints, quiet } => {
                    audit_cmd::verify(&source, &checkpoints, quiet)
                }
                AuditCommand::Query {
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
                } => audit_cmd::query(
                    &source,
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
                ),
                AuditCommand::Prove { entry, out } => {
                    audit_cmd::prove(&source, entry, out.as_deref())
                }
                AuditCommand::CheckProof { bundle } => audit_cmd::check_proof(&source, &bundle),
                AuditCommand::Subject {
                    identifier,
                    include_denials,
                    format,
                } => audit_cmd::subject(&source, &identifier, include_denials, format),
                AuditCommand::Consistency { old, new } => audit_cmd::consistency(&source, old, new),
            }
        }
        Command::Admin { admin, command } => match command {
            AdminCommand::Reload => admin_cmd::reload(admin),
            AdminCommand::Health => admin_cmd::health(admin),
        },
        Command::Pki { command } => match command {
            PkiCommand::Revoke { certificate, dir } => pki_cmd::revoke(&dir, &certificate),
            PkiCommand::Dev {
                out,
                policies,
                force,
            } => pki_cmd::dev(&out, policies.as_deref(), force),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            samverkan_sdk::closed_output::end_if_closed(e.as_ref());
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
