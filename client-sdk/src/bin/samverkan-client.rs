//! `samverkan-client`: publish and follow alerts from the command line, for
//! people and for systems not written in Rust.
//!
//! ```text
//! samverkan-client publish --agency linkoping --topic welfare/incorrect-payment/ost \
//!     --type welfare.incorrect_payment --file alert.json [--to polisen,forsakringskassan]
//! samverkan-client follow --agency forsakringskassan [--filter 'welfare/#'] [--no-ack]
//! samverkan-client witness --agency polisen --init        # new state and witness key
//! samverkan-client witness --agency polisen               # cosign checkpoints (long-running)
//! samverkan-client witness --agency polisen --evidence    # conflicts found, with both notes
//! ```
//!
//! All default to the development layout (`certs-dev/`, `policies/keys.toml`,
//! broker at `localhost:8883`). When the broker runs as several nodes, give
//! each with `--broker host:port`, repeated or comma-separated
//! (`--broker b1.example:8883,b2.example:8883`): the client connects to the
//! first that answers and moves on to the next whenever its connection
//! fails or drops. `publish` prints the broker's verified
//! receipt as JSON and exits 0 when the alert was accepted, 2 when it was
//! rejected and 1 on any other error. `follow` prints every verified share as
//! one JSON line on stdout and acknowledges it after printing (unless
//! `--no-ack`); refused deliveries go to stderr as JSON lines
//! `{"error", "message", "topic"}`. Log lines (stderr) are controlled with
//! `RUST_LOG` (default `warn`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use samverkan_sdk::alerts::Alert;
use samverkan_sdk::client::{AgencyConfig, BrokerAddress, Client, PublishError, ReceivedShare};
use serde_json::{Map, Value, json};

#[derive(Parser)]
#[command(
    name = "samverkan-client",
    version,
    about = "Publish alerts to and follow shares from a Samverkan broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// The agency to act as (its certificate, key and tenant).
    #[arg(long)]
    agency: String,
    /// The broker's MQTT-over-TLS address, `host:port` (`[::1]:8883` for
    /// IPv6). Several broker nodes: repeat it or separate them with commas;
    /// they are tried in this order, and the client moves on to the next
    /// whenever a connection fails or drops.
    #[arg(
        long = "broker",
        value_name = "HOST:PORT",
        default_value = "localhost:8883",
        value_delimiter = ',',
        value_parser = parse_broker
    )]
    brokers: Vec<BrokerAddress>,
    /// Directory of the development PKI (`ca.pem`, `<agency>/client.pem`, ...).
    #[arg(long, default_value = "certs-dev")]
    certs: PathBuf,
    /// The agencies' public key registry.
    #[arg(long, default_value = "policies/keys.toml")]
    keys: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Sign and publish one alert; print the broker's receipt.
    Publish(PublishArgs),
    /// Print every share delivered to the agency as a JSON line.
    Follow(FollowArgs),
    /// Witness the audit log: cosign the broker's checkpoints after checking
    /// that each extends the last one cosigned (runs until stopped).
    Witness(WitnessArgs),
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    connection: Connection,
    /// The logical topic, e.g. `welfare/incorrect-payment/ost`.
    #[arg(long)]
    topic: String,
    /// The alert type, e.g. `welfare.incorrect_payment`.
    #[arg(long = "type")]
    alert_type: String,
    /// A JSON object with the alert's fields (`-` reads standard input).
    #[arg(long)]
    file: PathBuf,
    /// Address the alert explicitly to these agencies (comma-separated).
    #[arg(long, value_delimiter = ',')]
    to: Option<Vec<String>>,
    /// Give up after this many seconds without a receipt.
    #[arg(long, default_value_t = 60)]
    deadline: u64,
}

#[derive(Args)]
struct FollowArgs {
    #[command(flatten)]
    connection: Connection,
    /// The logical topic filter (`#` for everything).
    #[arg(long, default_value = "#")]
    filter: String,
    /// Do not acknowledge the shares (they will be delivered again).
    #[arg(long)]
    no_ack: bool,
}

#[derive(Args)]
struct WitnessArgs {
    #[command(flatten)]
    connection: Connection,
    /// The witness's state file (its key and history); never shared.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Make a new state with a new witness key and print its
    /// `[[witness]]` entry for policies/witnesses.toml, then exit.
    #[arg(long, conflicts_with_all = ["evidence", "show_key"])]
    init: bool,
    /// With --init: the witness key's name.
    #[arg(long, requires = "init")]
    key_name: Option<String>,
    /// With --init: the origin of the log to witness.
    #[arg(long, requires = "init", default_value = samverkan_sdk::audit::checkpoint::DEV_ORIGIN)]
    origin: String,
    /// Print every conflict found (both broker-signed notes) as JSON lines, then exit (1 if there are any).
    #[arg(long, conflicts_with = "show_key")]
    evidence: bool,
    /// Print the `[[witness]]` entry of the existing state, then exit.
    #[arg(long)]
    show_key: bool,
}

fn main() -> ExitCode {
    // `samverkan-client follow … | head -1`: end quietly, as Unix tools do, once the reader has gone.
    samverkan_sdk::closed_output::end_quietly_when_closed();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            samverkan_sdk::closed_output::end_if_closed(e.as_ref());
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Publish(args) => publish(args).await,
        Command::Follow(args) => follow(args).await,
        Command::Witness(args) => witness(args).await,
    }
}

async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let fields = read_fields(&args.file)?;
    let mut alert = Alert::new(args.alert_type, fields);
    if let Some(to) = args.to {
        alert = alert.addressed_to(to);
    }
    let mut config = config(&args.connection)?;
    config.publish_deadline = Duration::from_secs(args.deadline.max(1));
    let client = Client::connect(config).await?;
    let outcome = client.publish(&args.topic, alert).await;
    client.close().await;
    match outcome {
        Ok(receipt) => {
            println!("{}", serde_json::to_string_pretty(&receipt)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(PublishError::Rejected(receipt)) => {
            println!("{}", serde_json::to_string_pretty(&receipt)?);
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

async fn follow(args: FollowArgs) -> Result<ExitCode> {
    let client = Client::connect(config(&args.connection)?).await?;
    let mut subscription = client.subscribe(&args.filter).await?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let item = tokio::select! {
            item = subscription.next() => item,
            _ = tokio::signal::ctrl_c() => break,
        };
        match item {
            None => bail!("the connection to the broker ended"),
            Some(Ok(share)) => {
                writeln!(stdout, "{}", share_line(&share))?;
                stdout.flush()?;
                if !args.no_ack {
                    share.ack().await.context("acknowledging a share")?;
                }
            }
            Some(Err(refused)) => {
                let line = json!({
                    "error": refused.code(),
                    "message": refused.to_string(),
                    "topic": refused.topic(),
                });
                writeln!(stderr, "{line}")?;
            }
        }
    }
    drop(subscription);
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The `[[witness]]` entry of policies/witnesses.toml for a witness key.
fn witness_entry(agency: &str, key: &samverkan_sdk::audit::cosignature::WitnessKey) -> String {
    format!(
        "[[witness]]\nagency = \"{agency}\"\nkey = \"{}\"\n",
        key.vkey()
    )
}

async fn witness(args: WitnessArgs) -> Result<ExitCode> {
    use samverkan_sdk::witness::{Witness, WitnessState, default_key_name, service};
    let WitnessArgs {
        connection,
        state,
        init,
        key_name,
        origin,
        evidence,
        show_key,
    } = args;
    let path = &state.unwrap_or_else(|| PathBuf::from(format!("witness-{}.db", connection.agency)));
    samverkan_sdk::names::validate_agency_id(&connection.agency)?;
    if init {
        let name = key_name.unwrap_or_else(|| default_key_name(&connection.agency));
        if !signed_note_name_ok(&name) {
            bail!("`{name}` is not a valid key name (no spaces or `+`)");
        }
        let state = WitnessState::create(path, &name, &origin).await?;
        let identity = state.identity().await?;
        state.close().await;
        let key = samverkan_sdk::audit::cosignature::WitnessKey {
            name,
            public_key: identity.key.verifying_key(),
        };
        eprintln!(
            "new witness state {} for the log `{origin}`; add this to policies/witnesses.toml:",
            path.display()
        );
        print!("{}", witness_entry(&connection.agency, &key));
        return Ok(ExitCode::SUCCESS);
    }
    let state = WitnessState::open(path).await?;
    if evidence {
        let conflicts = state.conflicts().await?;
        let mut stdout = std::io::stdout();
        for c in &conflicts {
            writeln!(stdout, "{}", serde_json::to_string(c)?)?;
        }
        state.close().await;
        if conflicts.is_empty() {
            eprintln!("no conflict found");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{} conflict(s): each pair of notes is signed by the broker's key and cannot both be true",
            conflicts.len()
        );
        return Ok(ExitCode::from(1));
    }
    if show_key {
        let identity = state.identity().await?;
        let key = samverkan_sdk::audit::cosignature::WitnessKey {
            name: identity.key_name,
            public_key: identity.key.verifying_key(),
        };
        print!("{}", witness_entry(&connection.agency, &key));
        state.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let config = config(&connection)?;
    let witness = Witness::new(state, config.broker_keys.clone()).await?;
    eprintln!(
        "witness {} of `{}` for {} (state {})",
        witness.public_key().vkey(),
        witness.origin(),
        connection.agency,
        path.display()
    );
    service::run(&witness, &config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    witness.state().close().await;
    Ok(ExitCode::SUCCESS)
}

/// Key names of signed notes: not empty, no whitespace, no `+`.
fn signed_note_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

fn config(connection: &Connection) -> Result<AgencyConfig> {
    let Some((first, others)) = connection.brokers.split_first() else {
        bail!("no broker address: give --broker host:port");
    };
    Ok(AgencyConfig::from_dev_pki(
        &connection.certs,
        &connection.keys,
        &connection.agency,
        &first.host,
        first.port,
    )?
    .with_fallback_brokers(others.iter().cloned()))
}

/// One `--broker` value (`host:port`; `[::1]:8883` for IPv6).
fn parse_broker(text: &str) -> Result<BrokerAddress, String> {
    text.parse()
        .map_err(|e: samverkan_sdk::client::BrokerAddressError| e.to_string())
}

fn read_fields(file: &Path) -> Result<Map<String, Value>> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the alert from standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => bail!(
            "{}: the alert must be a JSON object of fields",
            file.display()
        ),
        Err(e) => bail!("{}: not JSON: {e}", file.display()),
    }
}

fn share_line(share: &ReceivedShare) -> Value {
    let stamp = share.stamp();
    json!({
        "share_id": stamp.share_id,
        "alert_id": stamp.alert_id,
        "publisher": stamp.publisher,
        "topic": stamp.topic,
        "alert_type": stamp.alert_type,
        "rule_id": stamp.rule_id,
        "legal_basis": stamp.legal_basis,
        "purpose": stamp.purpose,
        "fields": share.fields(),
        "audit_index": stamp.audit_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers_of(args: &[&str]) -> Result<Vec<BrokerAddress>, clap::Error> {
        let base = ["samverkan-client", "follow", "--agency", "polisen"];
        let cli = Cli::try_parse_from(base.iter().chain(args))?;
        let Command::Follow(FollowArgs { connection, .. }) = cli.command else {
            panic!("not follow");
        };
        Ok(connection.brokers)
    }

    #[test]
    fn broker_addresses() {
        let b = BrokerAddress::new;
        assert_eq!(brokers_of(&[]).unwrap(), vec![b("localhost", 8883)]);
        assert_eq!(
            brokers_of(&["--broker", "[::1]:8883"]).unwrap(),
            vec![b("::1", 8883)]
        );
        // Repeated, comma-separated, or both: in the order given.
        assert_eq!(
            brokers_of(&["--broker", "b1.example:8883", "--broker", "b2.example:8884"]).unwrap(),
            vec![b("b1.example", 8883), b("b2.example", 8884)]
        );
        assert_eq!(
            brokers_of(&[
                "--broker",
                "b1.example:8883,b2.example:8884",
                "--broker",
                "10.0.0.3:8885"
            ])
            .unwrap(),
            vec![
                b("b1.example", 8883),
                b("b2.example", 8884),
                b("10.0.0.3", 8885)
            ]
        );
        // A malformed address is refused, naming it and saying why.
        for (value, address, why) in [
            ("localhost", "localhost", "has no port"),
            (":8883", ":8883", "has no host"),
            (
                "localhost:99999",
                "localhost:99999",
                "not a number from 1 to 65535",
            ),
            ("b1.example:8883,b2.example", "b2.example", "has no port"),
            ("b1.example:8883,", "", "is empty"),
            ("::1:8883", "::1:8883", "IPv6 address without brackets"),
        ] {
            let err = brokers_of(&["--broker", value]).unwrap_err().to_string();
            assert!(
                err.contains(&format!("the broker address `{address}` ")) && err.contains(why),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn every_broker_reaches_the_configuration() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let connection = Connection {
            agency: "linkoping".into(),
            brokers: vec![
                BrokerAddress::new("b1.example", 8883),
                BrokerAddress::new("b2.example", 8884),
            ],
            certs: root.join("certs-dev"),
            keys: root.join("policies/keys.toml"),
        };
        let config = config(&connection).unwrap();
        assert_eq!(config.brokers(), connection.brokers);
        assert_eq!((config.host.as_str(), config.port), ("b1.example", 8883));
    }

    #[test]
    fn command_line_defaults() {
        let cli = Cli::try_parse_from([
            "samverkan-client",
            "publish",
            "--agency",
            "linkoping",
            "--topic",
            "welfare/x",
            "--type",
            "welfare.incorrect_payment",
            "--file",
            "alert.json",
            "--to",
            "polisen,forsakringskassan",
        ])
        .unwrap();
        let Command::Publish(PublishArgs { connection, to, .. }) = cli.command else {
            panic!("not publish");
        };
        assert_eq!(
            connection.brokers,
            vec![BrokerAddress::new("localhost", 8883)]
        );
        assert_eq!(connection.certs, PathBuf::from("certs-dev"));
        assert_eq!(connection.keys, PathBuf::from("policies/keys.toml"));
        assert_eq!(to, Some(vec!["polisen".into(), "forsakringskassan".into()]));
        let cli = Cli::try_parse_from([
            "samverkan-client",
            "follow",
            "--agency",
            "polisen",
            "--no-ack",
        ])
        .unwrap();
        let Command::Follow(FollowArgs { filter, no_ack, .. }) = cli.command else {
            panic!("not follow");
        };
        assert_eq!(filter, "#");
        assert!(no_ack);
    }

    #[test]
    fn witness_and_deadline_flags() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("samverkan-client").chain(args.iter().copied()))
        };
        let cli = parse(&[
            "witness",
            "--agency",
            "polisen",
            "--state",
            "w.db",
            "--init",
            "--key-name",
            "polisen-witness",
            "--origin",
            "x.example/audit",
        ])
        .unwrap();
        let Command::Witness(args) = cli.command else {
            panic!("not witness");
        };
        assert_eq!(args.state, Some(PathBuf::from("w.db")));
        assert!(args.init && !args.evidence && !args.show_key);
        assert_eq!(args.key_name.as_deref(), Some("polisen-witness"));
        assert_eq!(args.origin, "x.example/audit");

        let cli = parse(&["witness", "--agency", "polisen", "--show-key"]).unwrap();
        let Command::Witness(args) = cli.command else {
            panic!("not witness");
        };
        assert!(args.show_key);
        assert_eq!(args.origin, "samverkan-dev/audit");
        // --key-name and --origin only with --init; --init, --evidence and
        // --show-key exclude one another.
        for refused in [
            &["--key-name", "k"][..],
            &["--origin", "o"],
            &["--init", "--evidence"],
            &["--init", "--show-key"],
            &["--evidence", "--show-key"],
        ] {
            let args = [&["witness", "--agency", "polisen"][..], refused].concat();
            assert!(parse(&args).is_err(), "{refused:?} accepted");
        }

        let cli = parse(&[
            "publish",
            "--agency",
            "a",
            "--topic",
            "t",
            "--type",
            "x.y",
            "--file",
            "-",
            "--deadline",
            "5",
        ])
        .unwrap();
        let Command::Publish(args) = cli.command else {
            panic!("not publish");
        };
        assert_eq!(args.deadline, 5);
        assert_eq!(args.file, PathBuf::from("-"));
    }
}
