//! Publishes one signed `welfare.incorrect_payment` alert and prints the
//! broker's verified receipt: who receives which fields under which rule,
//! and who is denied and why.
//!
//! ```sh
//! cargo run -- serve                                   # the development broker
//! cargo run -p samverkan-sdk --example publish         # as Försäkringskassan
//! cargo run -p samverkan-sdk --example publish -- --broker localhost:8883 \
//!     --certs certs-dev --policies policies --agency forsakringskassan
//! ```
//!
//! Exit status: 0 when the broker accepted the alert, 2 when it rejected it
//! (the rejection code is printed), 1 on any other error. The alert carries
//! the development fixture of `docs/examples/incorrect-payment.json`; only
//! identifiers, rule names, codes and field *names* are printed, never field
//! values, because in production they are personal data.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use samverkan_sdk::alerts::{Alert, Date, IncorrectPayment, Period};
use samverkan_sdk::client::{AgencyConfig, Client, PublishError};
use samverkan_sdk::identifiers::{Kommunkod, Personnummer};
use samverkan_sdk::messages::Receipt;

/// Publish one signed alert to a Samverkan broker and print its receipt.
#[derive(Parser)]
struct Args {
    /// The publishing agency (its certificate, signing key and tenant).
    #[arg(long, default_value = "forsakringskassan")]
    agency: String,
    /// The broker's MQTT-over-TLS address, `host:port`.
    #[arg(long, default_value = "localhost:8883")]
    broker: String,
    /// The development PKI (`ca.pem`, `<agency>/client.pem`, `<agency>/signing.key`, …).
    #[arg(long, default_value = "certs-dev")]
    certs: PathBuf,
    /// The policy directory; its `keys.toml` holds every agency's public keys.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// The logical topic to publish on.
    #[arg(long, default_value = "welfare/incorrect-payment/ost")]
    topic: String,
}

/// How often connecting and publishing are tried when the broker is
/// unreachable or does not answer in time.
const ATTEMPTS: u32 = 4;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<ExitCode> {
    let client = connect(args).await?;
    let outcome = publish(&client, &args.topic, alert()?).await;
    client.close().await;
    match outcome {
        Ok(receipt) => {
            print_accepted(&receipt);
            Ok(ExitCode::SUCCESS)
        }
        // The broker verified the alert and refused it. Sending it unchanged
        // again would get the same answer: the alert (or the signing key)
        // has to be fixed. The client already waited out `rate_limited`.
        Err(PublishError::Rejected(receipt)) => {
            let (code, message) = receipt
                .rejection
                .as_ref()
                .map_or(("", ""), |r| (r.code.as_str(), r.message.as_str()));
            println!(
                "rejected alert {}: {code} ({message})",
                receipt.alert_id.as_deref().unwrap_or("?")
            );
            Ok(ExitCode::from(2))
        }
        // Nothing was sent: the alert itself is wrong (a bug to fix), or the
        // client was closed.
        Err(e) => Err(e).context("publishing the alert"),
    }
}

/// The development fixture `docs/examples/incorrect-payment.json` as a typed
/// alert: a field that breaks the schema is an error here, not a rejection.
fn alert() -> Result<Alert> {
    Ok(IncorrectPayment::new(
        Personnummer::parse("19121212-1212")?,
        Kommunkod::parse("0580")?,
        "sjukpenning",
        "forsakringskassan",
        Period::new(Date::new(2026, 1, 1)?, Date::new(2026, 3, 31)?)?,
    )
    .suspected_amount_sek(48_000)
    .grounds("Income from employment during the sick leave.")
    .case_reference("FK-2026-0001")
    .build()?)
}

/// Connects, retrying with a growing pause while the broker is unreachable.
/// Certificate, key and configuration errors end at once: retrying would
/// only hide them.
async fn connect(args: &Args) -> Result<Client> {
    let (host, port) = split_address(&args.broker)?;
    let mut attempt = 1;
    loop {
        let config = AgencyConfig::from_dev_pki(
            &args.certs,
            &args.policies.join("keys.toml"),
            &args.agency,
            &host,
            port,
        )
        .context("reading the agency's certificates and keys")?;
        match Client::connect(config).await {
            Ok(client) => return Ok(client),
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                eprintln!("broker not reachable ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                attempt += 1;
            }
            Err(e) => return Err(e).context("connecting to the broker"),
        }
    }
}

/// Signs the alert once and publishes it. When no receipt comes before the
/// deadline the alert may or may not have been accepted: the *same* envelope
/// is sent again, and the broker answers a repeat with the original receipt
/// (a new signature would be a new alert).
async fn publish(client: &Client, topic: &str, alert: Alert) -> Result<Receipt, PublishError> {
    let envelope = client.sign(topic, &alert)?;
    let mut attempt = 1;
    loop {
        match client.publish_envelope(envelope.clone()).await {
            Err(PublishError::Timeout { alert_id }) if attempt < ATTEMPTS => {
                eprintln!("no receipt for alert {alert_id} yet; sending it again");
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Prints the receipt the broker signed and the client verified: field
/// names, rule ids and codes only.
fn print_accepted(receipt: &Receipt) {
    println!(
        "accepted alert {}: {} share(s), {} denial(s), policy {}",
        receipt.alert_id.as_deref().unwrap_or("?"),
        receipt.shares.len(),
        receipt.denials.len(),
        receipt.policy_version
    );
    for share in &receipt.shares {
        println!(
            "share {} to {} under {} ({}), audit entry {}: {}",
            share.share_id,
            share.recipient,
            share.rule_id,
            share.legal_basis,
            share.audit_index,
            share.fields.join(", ")
        );
    }
    for denial in &receipt.denials {
        println!(
            "denied {}: {} ({}), audit entry {}",
            denial.recipient.as_deref().unwrap_or("everyone"),
            denial.code,
            denial.message,
            denial.audit_index
        );
    }
}

/// Splits `host:port` (`[::1]:8883` for IPv6).
fn split_address(address: &str) -> Result<(String, u16)> {
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!("the broker address `{address}` is not host:port");
    };
    let port = port
        .parse()
        .with_context(|| format!("the broker port `{port}` is not a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("the broker address `{address}` has no host");
    }
    Ok((host.to_string(), port))
}
