//! Follows an agency's inbox: prints every verified share, acknowledges it
//! once handled, and raises an alarm for every delivery that does not verify.
//!
//! ```sh
//! cargo run -- serve                                   # the development broker
//! cargo run -p samverkan-sdk --example follow          # as Linköping, until Ctrl-C
//! cargo run -p samverkan-sdk --example follow -- --broker localhost:8883 \
//!     --certs certs-dev --policies policies --agency linkoping --filter 'welfare/#' --count 1
//! ```
//!
//! Shares that arrived while nobody followed are replayed by the broker until
//! they are acknowledged, so nothing is lost between runs. Only identifiers,
//! rules and field *names* are printed, never field values: in production
//! they are personal data, and belong in the agency's case system, not in logs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use samverkan_sdk::client::{AgencyConfig, Client, DeliveryError, ReceivedShare};

/// Follow the shares a Samverkan broker sends an agency.
#[derive(Parser)]
struct Args {
    /// The receiving agency (its certificate and tenant).
    #[arg(long, default_value = "linkoping")]
    agency: String,
    /// The broker's MQTT-over-TLS address, `host:port`.
    #[arg(long, default_value = "localhost:8883")]
    broker: String,
    /// The development PKI (`ca.pem`, `<agency>/client.pem`, `broker-keys.toml`, …).
    #[arg(long, default_value = "certs-dev")]
    certs: PathBuf,
    /// The policy directory; its `keys.toml` holds every agency's public keys.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// The logical topic filter (`#` for everything).
    #[arg(long, default_value = "#")]
    filter: String,
    /// Stop after this many shares (default: follow until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
}

/// How often connecting is tried while the broker is unreachable.
const CONNECT_ATTEMPTS: u32 = 4;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let client = connect(args).await?;
    // After a lost connection the client reconnects, subscribes again and
    // asks for a replay by itself: the loop below just goes on.
    let mut inbox = client
        .subscribe(&args.filter)
        .await
        .context("subscribing")?;
    println!("following {} as {}", args.filter, args.agency);
    let mut handled = 0;
    while args.count.is_none_or(|count| handled < count) {
        let item = tokio::select! {
            item = inbox.next() => item,
            _ = tokio::signal::ctrl_c() => break,
        };
        match item {
            Some(Ok(share)) => {
                handle(&share);
                // Acknowledge only once the share is safely handled: the
                // broker replays unacknowledged shares, and the signed
                // acknowledgement is the agency's proof of receipt.
                share.ack().await.context("acknowledging a share")?;
                println!("acknowledged {}", share.share_id());
                handled += 1;
            }
            Some(Err(refused)) => alarm(&refused),
            None => bail!("the client was closed"),
        }
    }
    drop(inbox);
    client.close().await;
    Ok(())
}

/// What an agency system does with a share: everything here has been
/// verified (the broker's stamp, the publisher's signature, every disclosed
/// field). A real system stores `share.fields()` in its case system.
fn handle(share: &ReceivedShare) {
    let stamp = share.stamp();
    println!(
        "share {} of alert {} from {} on {}: rule {}, legal basis {}, purpose {:?}, fields {}",
        stamp.share_id,
        stamp.alert_id,
        stamp.publisher,
        stamp.topic,
        stamp.rule_id,
        stamp.legal_basis,
        stamp.purpose,
        stamp.fields.join(", ")
    );
}

/// A delivery that does not verify is forged, corrupted, or signed with a
/// key that is unknown or revoked. Its content must never be used; someone
/// must look into it. The subscription goes on.
fn alarm(refused: &DeliveryError) {
    eprintln!(
        "ALARM: refused delivery on {} ({}): {refused}",
        refused.topic(),
        refused.code()
    );
}

/// Connects, retrying with a growing pause while the broker is unreachable.
/// Certificate, key and configuration errors end at once.
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
            Err(e) if e.is_transient() && attempt < CONNECT_ATTEMPTS => {
                eprintln!("broker not reachable ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                attempt += 1;
            }
            Err(e) => return Err(e).context("connecting to the broker"),
        }
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
