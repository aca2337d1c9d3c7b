//! The client's errors: one enum per kind of operation, each variant saying
//! what an agency's operator can do about it. Messages never contain field
//! values (they may be personal data); they name alert ids, share ids,
//! topics, files and error codes.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::envelope::EnvelopeError;
use crate::messages::{MessageError, Receipt};
use crate::names::NameError;

/// Why the client could not be configured, connect, subscribe or acknowledge.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration is unusable (bad agency id, empty host, …).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A file of the configuration could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate, private key or key registry could not be parsed.
    #[error("{what}: {reason}")]
    Credentials {
        /// What was being read (a file name or `client certificate`, …).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS handshake failed: the broker's certificate is not trusted, or
    /// the broker refused this agency's client certificate.
    #[error("TLS with the broker at {address} failed: {reason}")]
    Tls {
        /// `host:port` of the broker.
        address: String,
        /// What TLS reported.
        reason: String,
    },
    /// Nothing accepts connections at the broker's address.
    #[error("the broker at {address} refused the connection: {reason}")]
    ConnectionRefused {
        /// `host:port` of the broker.
        address: String,
        /// What the operating system reported.
        reason: String,
    },
    /// The broker answered CONNECT with a refusal.
    #[error("the broker at {address} refused the MQTT session: {code}")]
    SessionRefused {
        /// `host:port` of the broker.
        address: String,
        /// The CONNACK return code.
        code: String,
    },
    /// The connection failed in another way (closed by the broker, network error).
    #[error("connection to the broker at {address} failed: {reason}")]
    Connection {
        /// `host:port` of the broker.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// An operation did not complete in time.
    #[error("{what} did not complete within {}s", after.as_secs_f64())]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// The topic filter is not a valid logical topic filter.
    #[error("invalid topic filter: {0}")]
    InvalidFilter(#[from] NameError),
    /// The broker refused a subscription (SUBACK failure).
    #[error("the broker refused the subscription to `{topic}`")]
    SubscribeRefused {
        /// The MQTT topic filter.
        topic: String,
    },
    /// The client has been closed or its connection task has stopped.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// Whether the same call may succeed later without anything being
    /// changed, so that retrying with a backoff is the right answer: the
    /// broker was unreachable or unavailable, the connection broke, or an
    /// operation timed out. Errors of certificates, keys, configuration or
    /// permissions are not transient: retrying them only hides the problem.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::ConnectionRefused { .. }
            | ClientError::Connection { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::SessionRefused { code, .. } => code == "ServiceUnavailable",
            ClientError::Config(_)
            | ClientError::Io { .. }
            | ClientError::Credentials { .. }
            | ClientError::Tls { .. }
            | ClientError::InvalidFilter(_)
            | ClientError::SubscribeRefused { .. }
            | ClientError::Closed => false,
        }
    }
}

/// Why a publish did not end with an accepted receipt.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The alert cannot be signed (bad topic, alert type, field name or
    /// recipients, or an envelope of another publisher). Nothing was sent.
    #[error("invalid alert: {0}")]
    InvalidAlert(#[from] EnvelopeError),
    /// The signed envelope is larger than the broker accepts. Nothing was sent.
    #[error("the alert is {size} bytes on the wire, more than the allowed {max}")]
    TooLarge {
        /// Size of the MQTT packet.
        size: usize,
        /// The configured maximum packet size.
        max: usize,
    },
    /// The broker verified the alert and refused it; the receipt says why.
    #[error("the broker rejected alert {}: {}", .0.alert_id.as_deref().unwrap_or("?"), rejection_text(.0))]
    Rejected(Box<Receipt>),
    /// No verified receipt arrived before the publish deadline. The alert may
    /// or may not have been accepted: publishing the same envelope again is
    /// safe (same alert id).
    #[error("no receipt for alert {alert_id} before the publish deadline")]
    Timeout {
        /// The alert id.
        alert_id: String,
    },
    /// The client has been closed.
    #[error("the client is closed")]
    Closed,
}

fn rejection_text(receipt: &Receipt) -> String {
    match &receipt.rejection {
        Some(r) => format!("{} ({})", r.code, r.message),
        None => "no reason given".to_string(),
    }
}

/// A delivery that was refused because it does not verify. It is reported
/// on the subscription instead of the data, so that an agency notices forged
/// or corrupted traffic; its content must not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The delivery is malformed, its broker stamp or the publisher's
    /// envelope does not verify, or they disagree.
    #[error("refused delivery on `{topic}`: {source}")]
    Refused {
        /// The logical topic it arrived on.
        topic: String,
        /// Why.
        source: MessageError,
    },
}

impl DeliveryError {
    /// A stable, machine-readable code (the [`MessageError`] code).
    pub fn code(&self) -> &'static str {
        match self {
            DeliveryError::Refused { source, .. } => source.code(),
        }
    }

    /// The logical topic the refused delivery arrived on.
    pub fn topic(&self) -> &str {
        match self {
            DeliveryError::Refused { topic, .. } => topic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreachable_brokers_and_timeouts_are_transient() {
        let address = || "broker:8883".to_string();
        let transient = [
            ClientError::ConnectionRefused {
                address: address(),
                reason: "refused".into(),
            },
            ClientError::Connection {
                address: address(),
                reason: "reset".into(),
            },
            ClientError::Timeout {
                what: "connecting to the broker",
                after: Duration::from_secs(10),
            },
            ClientError::SessionRefused {
                address: address(),
                code: "ServiceUnavailable".into(),
            },
        ];
        for e in &transient {
            assert!(e.is_transient(), "{e}");
        }
        let permanent = [
            ClientError::Config("empty host".into()),
            ClientError::Tls {
                address: address(),
                reason: "unknown CA".into(),
            },
            ClientError::SessionRefused {
                address: address(),
                code: "NotAuthorized".into(),
            },
            ClientError::SubscribeRefused {
                topic: "/tenants/linkoping/in/#".into(),
            },
            ClientError::Closed,
        ];
        for e in &permanent {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
