//! MQTT topics. Every agency's topics live below `/tenants/{agency}/`, the
//! prefix the broker enforces from the agency's TLS certificate. Users deal
//! in *logical* topics (`welfare/incorrect-payment/ost`); these helpers add
//! and strip the prefixes.
//!
//! | who | topic |
//! |---|---|
//! | agency publishes an alert | `/tenants/{me}/out/{logical topic}` |
//! | broker delivers a share | `/tenants/{recipient}/in/{logical topic}` |
//! | broker answers the publisher | `/tenants/{me}/receipts` |
//! | recipient acknowledges shares | `/tenants/{me}/acks` |
//! | recipient asks for unacknowledged shares | `/tenants/{me}/replay` |
//! | broker says a replay has ended | `/tenants/{me}/in/_replay/status` |
//! | broker publishes signed audit checkpoints | `/tenants/{agency}/in/_audit/checkpoint` |
//! | broker publishes checkpoints that reached the witness quorum | `/tenants/{agency}/in/_audit/cosigned` |
//! | broker asks an agency's witness to cosign | `/tenants/{agency}/in/_witness/add-checkpoint/{id}` |
//! | the witness answers | `/tenants/{me}/witness/add-checkpoint/{id}/{status}` |

/// Where an agency publishes alerts on a logical topic.
pub fn outbox(agency: &str, logical: &str) -> String {
    format!("/tenants/{agency}/out/{logical}")
}

/// Where the broker delivers shares on a logical topic to an agency.
pub fn inbox(agency: &str, logical: &str) -> String {
    format!("/tenants/{agency}/in/{logical}")
}

/// Where the broker answers an agency's alerts.
pub fn receipts(agency: &str) -> String {
    format!("/tenants/{agency}/receipts")
}

/// Where an agency acknowledges shares.
pub fn acks(agency: &str) -> String {
    format!("/tenants/{agency}/acks")
}

/// Where an agency asks for a replay of unacknowledged shares.
pub fn replay(agency: &str) -> String {
    format!("/tenants/{agency}/replay")
}

/// Where the broker says that a replay for an agency has ended. Below
/// `in/_`, like checkpoints, so it is never taken for a delivery.
pub fn replay_status(agency: &str) -> String {
    inbox(agency, "_replay/status")
}

/// Where the broker publishes signed audit checkpoints to an agency.
pub fn checkpoint(agency: &str) -> String {
    inbox(agency, "_audit/checkpoint")
}

/// Where the broker publishes checkpoints with the cosignatures that made
/// them reach the witness quorum.
pub fn cosigned_checkpoint(agency: &str) -> String {
    inbox(agency, "_audit/cosigned")
}

/// Where the broker asks `agency`'s witness to cosign (request `id`).
pub fn witness_request(agency: &str, id: &str) -> String {
    inbox(agency, &format!("_witness/add-checkpoint/{id}"))
}

/// The filter a witness subscribes to for requests.
pub fn witness_requests(agency: &str) -> String {
    inbox(agency, "_witness/add-checkpoint/+")
}

/// Where a witness answers request `id` with HTTP status `status`.
pub fn witness_answer(agency: &str, id: &str, status: u16) -> String {
    format!("/tenants/{agency}/witness/add-checkpoint/{id}/{status}")
}

/// The request id of a witness request topic of `agency`.
pub fn witness_request_id<'a>(agency: &str, topic: &'a str) -> Option<&'a str> {
    logical_of_inbox(agency, topic)?
        .strip_prefix("_witness/add-checkpoint/")
        .filter(|id| crate::witness::protocol::valid_request_id(id))
}

/// A topic the broker listens to, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerTopic<'a> {
    /// An alert on `/tenants/{agency}/out/{logical}`.
    Outbox {
        /// The tenant the message arrived from.
        agency: &'a str,
        /// The logical topic, as published (not yet validated).
        logical: &'a str,
    },
    /// `/tenants/{agency}/acks`.
    Acks {
        /// The tenant.
        agency: &'a str,
    },
    /// `/tenants/{agency}/replay`.
    Replay {
        /// The tenant.
        agency: &'a str,
    },
    /// A witness's answer, `/tenants/{agency}/witness/add-checkpoint/{id}/{status}`.
    WitnessAnswer {
        /// The tenant whose witness answers.
        agency: &'a str,
        /// The request id.
        id: &'a str,
        /// The HTTP status of the answer.
        status: u16,
    },
}

impl<'a> BrokerTopic<'a> {
    /// Parses a topic the broker subscribed to; `None` for anything else.
    pub fn parse(topic: &'a str) -> Option<Self> {
        let rest = topic.strip_prefix("/tenants/")?;
        let (agency, rest) = rest.split_once('/')?;
        if let Some(logical) = rest.strip_prefix("out/") {
            return Some(BrokerTopic::Outbox { agency, logical });
        }
        if let Some(answer) = rest.strip_prefix("witness/add-checkpoint/") {
            let (id, status) = answer.split_once('/')?;
            let status = status
                .parse()
                .ok()
                .filter(|s: &u16| (100..600).contains(s) && status.len() == 3)?;
            return crate::witness::protocol::valid_request_id(id)
                .then_some(BrokerTopic::WitnessAnswer { agency, id, status });
        }
        match rest {
            "acks" => Some(BrokerTopic::Acks { agency }),
            "replay" => Some(BrokerTopic::Replay { agency }),
            _ => None,
        }
    }
}

/// The logical topic of an inbox topic of `agency`, if it is one.
pub fn logical_of_inbox<'a>(agency: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix("/tenants/")?
        .strip_prefix(agency)?
        .strip_prefix("/in/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(
            outbox("polisen", "akrim/ost/x"),
            "/tenants/polisen/out/akrim/ost/x"
        );
        assert_eq!(
            BrokerTopic::parse("/tenants/polisen/out/akrim/ost/x"),
            Some(BrokerTopic::Outbox {
                agency: "polisen",
                logical: "akrim/ost/x"
            })
        );
        assert_eq!(
            BrokerTopic::parse("/tenants/polisen/acks"),
            Some(BrokerTopic::Acks { agency: "polisen" })
        );
        assert_eq!(BrokerTopic::parse("/tenants/polisen/in/x"), None);
        assert_eq!(BrokerTopic::parse(&replay_status("polisen")), None);
        assert_eq!(BrokerTopic::parse("tenants/polisen/out/x"), None);
        assert_eq!(
            logical_of_inbox("linkoping", &inbox("linkoping", "a/b")),
            Some("a/b")
        );
        assert_eq!(
            logical_of_inbox("linkoping", &inbox("linkopingx", "a/b")),
            None
        );
        assert_eq!(
            BrokerTopic::parse(&witness_answer("polisen", "7f", 409)),
            Some(BrokerTopic::WitnessAnswer {
                agency: "polisen",
                id: "7f",
                status: 409
            })
        );
        assert_eq!(
            BrokerTopic::parse("/tenants/polisen/witness/add-checkpoint/7f/4090"),
            None
        );
        assert_eq!(
            BrokerTopic::parse("/tenants/polisen/witness/add-checkpoint/A/200"),
            None
        );
        assert_eq!(
            witness_request_id("polisen", &witness_request("polisen", "1a")),
            Some("1a")
        );
        assert_eq!(
            witness_request_id("polisen", &witness_request("skatteverket", "1a")),
            None
        );
        assert_eq!(
            checkpoint("akrimost"),
            "/tenants/akrimost/in/_audit/checkpoint"
        );
    }
}
