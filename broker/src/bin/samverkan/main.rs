//! `samverkan`: the broker and its tools in one binary.
//!
//! Argument parsing lives here and only here; the subcommands call into the
//! library.

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
    Serve {
        /// A configuration file (TOML).
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
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a DEVELOPMENT PKI: CA, agency client certificates, broker certificate, signing keys.
    Dev {
        /// Where to write certificates and keys.
        #[arg(long, default_value = "certs-dev")]
        out: PathBuf,
        /// The policy set whose agencies get certificates; its keys.toml is rewritten.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
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
            } => policy_cmd::explain(
                &dir,
                &from,
                &to,
                &alert_type,
                topic.as_deref(),
                alert.as_deref(),
            ),
        },
        Command::Pki { command } => match command {
            PkiCommand::Dev {
                out,
                policies,
                force,
            } => pki_cmd::dev(&out, &policies, force),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
