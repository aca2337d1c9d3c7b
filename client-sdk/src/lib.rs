//! # samverkan-sdk
//!
//! The Rust SDK of Samverkan, for agency systems: sign and publish alerts,
//! receive the shares the broker's policy sends your agency, and verify
//! everything the broker and other agencies signed. It is also the one
//! definition of the wire format, shared with the broker.
#![cfg_attr(
    feature = "client",
    doc = r#"
## Quick start

Publish a signed alert as Försäkringskassan, read the broker-signed receipt,
then receive and acknowledge the share as Linköping, against a broker started
with `cargo run -- serve` in the repository (development PKI in `certs-dev/`,
agency keys in `policies/keys.toml`, broker on `localhost:8883`). Dependencies:
`samverkan-sdk` and `tokio` (features `macros`, `rt-multi-thread`).

```no_run
use std::path::Path;
use std::time::Duration;

use samverkan_sdk::alerts::{Date, IncorrectPayment, Period};
use samverkan_sdk::client::{AgencyConfig, Client, ClientError, PublishError, Subscription};
use samverkan_sdk::identifiers::{Kommunkod, Personnummer};

type Error = Box<dyn std::error::Error>;

/// Connects as `agency`, retrying while the broker is unreachable: those
/// errors are transient. Certificate, key or configuration errors are not.
async fn connect(agency: &str) -> Result<Client, Error> {
    let mut attempt = 0;
    loop {
        // Mutual-TLS certificate and key, the agency's ed25519 signing key,
        // and the public keys of the broker and of every agency.
        let config = AgencyConfig::from_dev_pki(
            Path::new("certs-dev"),
            Path::new("policies/keys.toml"),
            agency,
            "localhost",
            8883,
        )?;
        match Client::connect(config).await {
            Ok(client) => return Ok(client),
            Err(e @ (ClientError::ConnectionRefused { .. }
            | ClientError::Connection { .. }
            | ClientError::Timeout { .. }))
                if attempt < 5 =>
            {
                attempt += 1;
                eprintln!("broker unreachable ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // A typed alert: a field that breaks the alert type's schema is an
    // error here, before anything is signed or sent.
    let alert = IncorrectPayment::new(
        Personnummer::parse("19121212-1212")?,
        Kommunkod::parse("0580")?,
        "sjukpenning",
        "forsakringskassan",
        Period::new(Date::new(2026, 1, 1)?, Date::new(2026, 3, 31)?)?,
    )
    .suspected_amount_sek(48_000)
    .case_reference("FK-2026-0001")
    .build()?;

    // The recipient subscribes first, so it is listening when the share is sent
    // (an unacknowledged share would also be replayed to it later).
    let linkoping = connect("linkoping").await?;
    let mut inbox = linkoping.subscribe("welfare/#").await?;

    let fk = connect("forsakringskassan").await?;
    // Signing once and resending the same envelope after a timeout is safe:
    // the broker recognises the alert id and answers with the same receipt.
    let envelope = fk.sign("welfare/incorrect-payment/ost", &alert)?;
    let receipt = match fk.publish_envelope(envelope.clone()).await {
        Err(PublishError::Timeout { .. }) => fk.publish_envelope(envelope).await,
        outcome => outcome,
    };
    let receipt = match receipt {
        Ok(receipt) => receipt,
        // Verified and refused by the broker: fix the alert (or the key);
        // sending it unchanged again gets the same answer.
        Err(PublishError::Rejected(receipt)) => {
            let code = receipt.rejection.as_ref().map_or("", |r| r.code.as_str());
            return Err(format!("alert rejected: {code}").into());
        }
        Err(e) => return Err(e.into()),
    };
    for share in &receipt.shares {
        println!("shared with {} under {}: {:?}", share.recipient, share.rule_id, share.fields);
    }
    for denial in &receipt.denials {
        let recipient = denial.recipient.as_deref().unwrap_or("everyone");
        println!("denied {recipient}: {}", denial.code);
    }
    fk.close().await;

    if let Some(ours) = receipt.shares.iter().find(|s| s.recipient == "linkoping") {
        tokio::time::timeout(Duration::from_secs(30), receive(&mut inbox, &ours.share_id))
            .await??;
    }
    drop(inbox);
    linkoping.close().await;
    Ok(())
}

/// Handles and acknowledges shares until the one with `share_id` has come.
async fn receive(inbox: &mut Subscription, share_id: &str) -> Result<(), ClientError> {
    while let Some(item) = inbox.next().await {
        match item {
            // Verified: the broker's stamp, the publisher's signature and
            // every disclosed field.
            Ok(share) => {
                println!("received {} under {}", share.share_id(), share.stamp().rule_id);
                // ... store share.fields() in the case system, then:
                share.ack().await?;
                if share.share_id() == share_id {
                    return Ok(());
                }
            }
            // Forged or corrupted traffic: never use it; raise an alarm.
            Err(refused) => eprintln!("ALARM {}: {refused}", refused.code()),
        }
    }
    Err(ClientError::Closed)
}
```

Runnable versions with complete error handling are in `client-sdk/examples/`
(`publish.rs`, `follow.rs`). Production agencies build their
[`client::AgencyConfig`] with [`client::AgencyConfig::new`] from their own
certificates and keys.

## What to do with each error

| error | meaning | what a production system does |
|---|---|---|
| [`client::ClientError::ConnectionRefused`], [`client::ClientError::Connection`], [`client::ClientError::Timeout`] | the broker is unreachable or slow | retry with backoff |
| [`client::PublishError::Timeout`] | no receipt before the deadline: the alert may or may not have been accepted | publish the *same* envelope again ([`client::Client::sign`], [`client::Client::publish_envelope`]) |
| [`client::PublishError::Rejected`] | the broker verified the alert and refused it; the receipt's rejection code says why (`docs/PROTOCOL.md` 13.5.5) | fix the alert or the key, sign again; never resend unchanged (`rate_limited` is retried by the client itself) |
| [`client::PublishError::InvalidAlert`], [`client::PublishError::TooLarge`], [`alerts::AlertError`] | the alert cannot be sent; nothing was sent | fix the code that builds it |
| [`client::DeliveryError`] (an item of a subscription) | a delivery that does not verify: forged, corrupted, or signed with an unknown or revoked key | never use its content; raise an alarm; the subscription goes on |
| [`client::ClientError::Tls`], [`client::ClientError::SessionRefused`], [`client::ClientError::Credentials`], [`client::ClientError::Config`], [`client::ClientError::Io`] | the agency's certificates, keys or settings are wrong | stop and tell the operator |
"#
)]
//!
//! ## Modules
//!
//! * [`alerts`] — alerts before signing, with typed builders for the alert
//!   types of the policy set;
//! * [`envelope`] — signed alert envelopes with selective disclosure: each
//!   top-level field travels as a salted disclosure whose SHA-256 digest is
//!   covered by the publisher's ed25519 signature, so fields can be withheld
//!   per recipient without breaking the signature;
//! * [`messages`] — receipts, share stamps and deliveries signed by the broker;
//! * [`keys`] — the registry of agency signing keys (validity windows,
//!   revocation) and key files;
//! * [`identifiers`] — personnummer, samordningsnummer, organisationsnummer
//!   and kommunkod with their check rules;
//! * [`audit`] — audit log entries, inclusion and consistency proofs, signed
//!   checkpoints and evidence files, checked offline;
//! * [`batch`] — ed25519 batch verification with the strict check's semantics;
//! * [`json`] — the one JSON reader for everything read from the wire, which
//!   refuses an object that repeats a member name;
//! * [`topics`] — the MQTT topic layout;
//! * [`witness`] — an agency's witness of the audit log (cosigns checkpoints);
//! * [`codes`] — the protocol's machine-readable codes (verification,
//!   rejection, denial, audit reasons) as enums with their wire strings;
//! * [`names`] — the syntax of agency ids, logical topics, alert types and
//!   field names;
//! * `client` (feature `client`) — the agency client: MQTT over mutual TLS,
//!   publishing with verified receipts, subscriptions of verified shares.
//!
//! ## Features
//!
//! * `client` (default) — the network client and the `samverkan-client`
//!   command line, with their dependencies (Tokio, rumqttc, rustls, clap).
//!   A system that only verifies — an auditor's tool, a witness keeping
//!   checkpoints — depends on the crate with `default-features = false` and
//!   builds none of them.
//!
//! The exact bytes that are hashed and signed are specified in
//! `docs/PROTOCOL.md` together with known-answer test vectors.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alerts;
pub mod audit;
pub mod batch;
#[cfg(feature = "client")]
pub mod client;
pub mod closed_output;
pub mod codes;
pub mod encoding;
pub mod envelope;
pub mod identifiers;
pub mod json;
pub mod keys;
pub mod messages;
pub mod names;
pub mod source;
pub mod time;
pub mod topics;
pub mod witness;

pub use alerts::{Alert, AlertError};
#[cfg(feature = "client")]
pub use client::{
    AgencyConfig, Client, ClientError, DeliveryError, PublishError, ReceivedShare, Subscription,
};
pub use envelope::{Digest, Disclosure, Envelope, EnvelopeError, EnvelopeHeader, VerifiedAlert};
pub use keys::{AgencyKey, KeyError, KeyRegistry, KeyResolver};
