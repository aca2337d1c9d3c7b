//! What may pass the gateway: every packet from a client is read and
//! checked here before the gateway passes it to the embedded rumqttd, and
//! every packet from rumqttd before it reaches the client ([`crate::relay`]
//! does the reading).
//!
//! rumqttd is reached over plain loopback TCP and confines nothing to a
//! tenant: these checks are the boundary between agencies. rumqttd also
//! keeps an in-memory log for every topic filter ever subscribed (never
//! freed) and every retained message. So the gateway allows exactly what
//! `docs/PROTOCOL.md` 13.2 defines for an agency, below its own
//! `/tenants/{agency}/`:
//!
//! * PUBLISH only on `out/{logical topic}`, `acks`, `replay` and a
//!   witness's answers `witness/add-checkpoint/{id}/{status}`, without the
//!   retain flag and without an MQTT 5 topic alias;
//! * SUBSCRIBE only to `receipts` and `in/…` filters (the checkpoint topic is
//!   one of them), at most [`Limits::subscriptions_per_connection`] at a
//!   time, and at most [`Limits::filters_per_agency`] distinct filters per
//!   agency for the life of the process (see [`FilterBudget`]);
//! * no will message, no topic aliases, no enhanced authentication in
//!   CONNECT;
//! * the acknowledgement, ping and disconnect packets of MQTT, and nothing
//!   else (no second CONNECT, no AUTH, no server-to-client packets).
//!
//! Only the broker publishes on an agency's `receipts` and `in/…` topics, so
//! a client can no longer flood its own agency's receipts or inbox. From
//! rumqttd a client gets messages only on those two (see
//! [`check_from_broker`]).
//!
//! The functions here are pure: they parse bytes that the gateway has read
//! (MQTT 3.1.1 section 2 and 3, MQTT 5 sections 2 and 3) and return what the
//! packet is, or why it is refused.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use thiserror::Error;

/// Limits on what one agency can make rumqttd hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Filters one connection may hold at once.
    pub subscriptions_per_connection: usize,
    /// Distinct filters one agency may subscribe to while the broker runs.
    pub filters_per_agency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // An agency's systems need one to three filters (its receipts, its
        // inbox or a few parts of it). rumqttd never frees a filter's log,
        // and each holds up to two 1 MiB segments: 32 filters bound one
        // agency's inbox logs to 64 MiB.
        Self {
            subscriptions_per_connection: 16,
            filters_per_agency: 32,
        }
    }
}

/// Why a packet from a client is refused. The connection is closed; an
/// MQTT 5 client is told the reason code first.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Violation {
    /// Not well-formed MQTT.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A packet type a client must not send, or not at this point.
    #[error("packet type {0} is not accepted from a client")]
    UnexpectedPacket(u8),
    /// PUBLISH outside `out/…`, `acks`, `replay` and witness answers.
    #[error(
        "publishing on `{0}` is not allowed: agencies publish on out/{{topic}}, acks, replay and witness/add-checkpoint/{{id}}/{{status}}"
    )]
    PublishTopic(String),
    /// SUBSCRIBE outside `receipts` and `in/…`.
    #[error("subscribing to `{0}` is not allowed: agencies subscribe to receipts and in/… filters")]
    SubscribeFilter(String),
    /// The retain flag on a PUBLISH.
    #[error("retained messages are not supported")]
    Retain,
    /// A will message in CONNECT.
    #[error("will messages are not supported")]
    Will,
    /// A topic alias in PUBLISH, or a topic alias maximum in CONNECT.
    #[error("topic aliases are not supported")]
    TopicAlias,
    /// Enhanced authentication (MQTT 5) in CONNECT.
    #[error("enhanced authentication is not supported; the TLS client certificate is the identity")]
    EnhancedAuth,
    /// More filters on one connection than allowed.
    #[error("more than {0} subscriptions on one connection")]
    TooManySubscriptions(usize),
    /// A packet larger than the gateway accepts.
    #[error("packet of {0} bytes is larger than the {1} bytes accepted")]
    TooLarge(usize, usize),
    /// More distinct filters for one agency than allowed.
    #[error(
        "the agency has used {0} distinct subscription filters, the most allowed while the broker runs"
    )]
    FilterBudgetSpent(usize),
    /// rumqttd passed on a message that is not on the agency's receipts or
    /// inbox topics (a defect behind the gateway; never sent to a client).
    #[error("rumqttd sent a message on `{0}`, which is not one of the agency's topics")]
    NotForThisAgency(String),
}

impl Violation {
    /// The MQTT 5 reason code that tells a client why (MQTT 5 section 2.4).
    pub fn reason_code(&self) -> u8 {
        match self {
            Violation::Malformed(_) => 0x81,
            Violation::TooLarge(..) => 0x95,
            Violation::UnexpectedPacket(_) => 0x82,
            Violation::PublishTopic(_) => 0x90,
            Violation::SubscribeFilter(_) => 0x87,
            Violation::Retain => 0x9A,
            Violation::Will => 0x83,
            Violation::TopicAlias => 0x94,
            Violation::EnhancedAuth => 0x8C,
            Violation::TooManySubscriptions(_) | Violation::FilterBudgetSpent(_) => 0x97,
            Violation::NotForThisAgency(_) => 0x83,
        }
    }
}

/// MQTT control packet types (the high nibble of the first byte).
pub mod kind {
    /// CONNECT.
    pub const CONNECT: u8 = 1;
    /// CONNACK.
    pub const CONNACK: u8 = 2;
    /// PUBLISH.
    pub const PUBLISH: u8 = 3;
    /// PUBACK.
    pub const PUBACK: u8 = 4;
    /// PUBREC.
    pub const PUBREC: u8 = 5;
    /// PUBREL.
    pub const PUBREL: u8 = 6;
    /// PUBCOMP.
    pub const PUBCOMP: u8 = 7;
    /// SUBSCRIBE.
    pub const SUBSCRIBE: u8 = 8;
    /// SUBACK.
    pub const SUBACK: u8 = 9;
    /// UNSUBSCRIBE.
    pub const UNSUBSCRIBE: u8 = 10;
    /// UNSUBACK.
    pub const UNSUBACK: u8 = 11;
    /// PINGREQ.
    pub const PINGREQ: u8 = 12;
    /// PINGRESP.
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 14;
}

/// A packet from a client, as far as the gateway needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket<'a> {
    /// A PUBLISH (its variable header; the payload is not read here).
    Publish {
        /// The topic name.
        topic: &'a str,
    },
    /// A SUBSCRIBE with its filters.
    Subscribe(Vec<&'a str>),
    /// An UNSUBSCRIBE with its filters.
    Unsubscribe(Vec<&'a str>),
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ or DISCONNECT.
    Control,
}

/// Reads a cursor over a packet's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Violation> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| Violation::Malformed("packet ends early".into()))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, Violation> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Violation> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A variable byte integer (MQTT 5 section 1.5.5): at most four bytes.
    fn varint(&mut self) -> Result<usize, Violation> {
        let mut value = 0usize;
        for i in 0..4 {
            let b = self.byte()?;
            value |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Violation::Malformed(
            "variable byte integer longer than four bytes".into(),
        ))
    }

    fn binary(&mut self) -> Result<&'a [u8], Violation> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A UTF-8 string (MQTT 3.1.1 section 1.5.3): no NUL, valid UTF-8.
    fn string(&mut self) -> Result<&'a str, Violation> {
        let bytes = self.binary()?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Violation::Malformed("string is not UTF-8".into()))?;
        if text.contains('\0') {
            return Err(Violation::Malformed("string contains NUL".into()));
        }
        Ok(text)
    }
}

/// MQTT 5 property identifiers the gateway looks at.
mod property {
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
}

/// Reads an MQTT 5 property list and returns the identifiers with a
/// non-zero value or a presence that matters (MQTT 5 section 2.2.2.2).
fn properties(c: &mut Cursor<'_>) -> Result<Vec<(u8, u32)>, Violation> {
    let len = c.varint()?;
    let mut list = Cursor::new(c.take(len)?);
    let mut seen = Vec::new();
    while !list.is_empty() {
        let id = list.byte()?;
        let value = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => u32::from(list.byte()?),
            0x13 | 0x21 | 0x22 | 0x23 => u32::from(list.u16()?),
            0x02 | 0x11 | 0x18 | 0x27 => {
                let b = list.take(4)?;
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            }
            0x0B => u32::try_from(list.varint()?).unwrap_or(u32::MAX),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                list.string()?;
                1
            }
            0x09 | 0x16 => {
                list.binary()?;
                1
            }
            0x26 => {
                list.string()?;
                list.string()?;
                1
            }
            other => {
                return Err(Violation::Malformed(format!(
                    "unknown property 0x{other:02x}"
                )));
            }
        };
        seen.push((id, value));
    }
    Ok(seen)
}

/// A client's CONNECT packet, read and checked (MQTT 3.1.1 section 3.1,
/// MQTT 5 section 3.1): what the gateway keeps when it writes the CONNECT
/// it forwards to rumqttd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The protocol level: 4 (3.1.1) or 5.
    pub level: u8,
    /// The clean-session (3.1.1) or clean-start (5) flag.
    pub clean: bool,
    /// The keep-alive in seconds.
    pub keep_alive: u16,
    /// MQTT 5 only: the property list as sent, its length included.
    pub properties: &'a [u8],
    /// The client identifier as sent.
    pub client_id: &'a str,
    /// The user name, if any (ignored: the TLS certificate is the identity).
    pub username: Option<&'a str>,
    /// The password, if any (ignored, as the user name).
    pub password: Option<&'a [u8]>,
}

/// Reads and checks a CONNECT packet (the whole packet, fixed header
/// included): MQTT 3.1.1 or 5, no will, no reserved flag, and for MQTT 5 no
/// topic aliases and no enhanced authentication; nothing after its last field.
pub fn parse_connect(packet: &[u8]) -> Result<Connect<'_>, Violation> {
    let mut outer = Cursor::new(packet);
    if outer.byte()? != 0x10 {
        return Err(Violation::Malformed("not a CONNECT".into()));
    }
    let remaining = outer.varint()?;
    let mut c = Cursor::new(outer.take(remaining)?);
    if !outer.is_empty() {
        return Err(Violation::Malformed("bytes after CONNECT".into()));
    }
    if c.string()? != "MQTT" {
        return Err(Violation::Malformed("protocol name is not MQTT".into()));
    }
    let level = c.byte()?;
    if level != 4 && level != 5 {
        return Err(Violation::Malformed(format!("protocol level {level}")));
    }
    let flags = c.byte()?;
    if flags & 0x01 != 0 {
        return Err(Violation::Malformed("reserved CONNECT flag set".into()));
    }
    if flags & 0x04 != 0 {
        return Err(Violation::Will);
    }
    if flags & 0x38 != 0 {
        return Err(Violation::Malformed(
            "will QoS or retain without a will".into(),
        ));
    }
    let keep_alive = c.u16()?;
    let mut properties: &[u8] = &[];
    if level == 5 {
        let start = c.pos;
        for (id, value) in self::properties(&mut c)? {
            match id {
                property::TOPIC_ALIAS_MAXIMUM if value > 0 => return Err(Violation::TopicAlias),
                property::AUTHENTICATION_METHOD => return Err(Violation::EnhancedAuth),
                _ => {}
            }
        }
        properties = &c.bytes[start..c.pos];
    }
    let client_id = c.string()?;
    let username = if flags & 0x80 != 0 {
        Some(c.string()?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(c.binary()?)
    } else {
        None
    };
    if !c.is_empty() {
        return Err(Violation::Malformed("bytes after CONNECT payload".into()));
    }
    Ok(Connect {
        level,
        clean: flags & 0x02 != 0,
        keep_alive,
        properties,
        client_id,
        username,
        password,
    })
}

impl Connect<'_> {
    /// The CONNECT the gateway forwards to rumqttd: the same protocol level,
    /// clean flag, keep-alive and MQTT 5 properties, with `client_id` and the
    /// gateway's own user name and password in place of the client's.
    pub fn for_backend(
        &self,
        client_id: &str,
        username: &str,
        password: &[u8],
    ) -> Result<Vec<u8>, Violation> {
        let mut body = Vec::with_capacity(
            16 + self.properties.len() + client_id.len() + username.len() + password.len(),
        );
        push_binary(&mut body, b"MQTT")?;
        body.push(self.level);
        // User name and password always; clean flag as the client sent it.
        body.push(0xC0 | if self.clean { 0x02 } else { 0 });
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        body.extend_from_slice(self.properties);
        push_binary(&mut body, client_id.as_bytes())?;
        push_binary(&mut body, username.as_bytes())?;
        push_binary(&mut body, password)?;
        let mut packet = Vec::with_capacity(body.len() + 5);
        packet.push(0x10);
        push_varint(&mut packet, body.len());
        packet.extend_from_slice(&body);
        Ok(packet)
    }
}

/// Appends a two-byte length and `bytes` (MQTT 3.1.1 section 1.5.3).
fn push_binary(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Violation> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| Violation::Malformed("a CONNECT field is longer than 65,535 bytes".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Parses a packet from a client after CONNECT. `first` is its first byte,
/// `body` what follows the remaining length: for PUBLISH its variable
/// header only, otherwise the whole rest.
pub fn parse(first: u8, body: &[u8], level: u8) -> Result<ClientPacket<'_>, Violation> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    // Fixed flags per packet type (MQTT 3.1.1 table 2.2).
    let expected_flags = match kind {
        kind::PUBLISH => None,
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Some(0b0010),
        kind::PUBACK | kind::PUBREC | kind::PUBCOMP | kind::PINGREQ | kind::DISCONNECT => Some(0),
        other => return Err(Violation::UnexpectedPacket(other)),
    };
    if let Some(expected) = expected_flags
        && flags != expected
    {
        return Err(Violation::Malformed(format!(
            "flags 0x{flags:x} on packet type {kind}"
        )));
    }
    let mut c = Cursor::new(body);
    match kind {
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(Violation::Malformed("QoS 3".into()));
            }
            if flags & 0x01 != 0 {
                return Err(Violation::Retain);
            }
            let topic = c.string()?;
            if qos > 0 {
                c.u16()?;
            }
            if level == 5
                && properties(&mut c)?
                    .iter()
                    .any(|(id, _)| *id == property::TOPIC_ALIAS)
            {
                return Err(Violation::TopicAlias);
            }
            if !c.is_empty() {
                return Err(Violation::Malformed("bytes after PUBLISH header".into()));
            }
            Ok(ClientPacket::Publish { topic })
        }
        kind::SUBSCRIBE | kind::UNSUBSCRIBE => {
            c.u16()?; // packet identifier
            if level == 5 {
                properties(&mut c)?;
            }
            let mut filters = Vec::new();
            while !c.is_empty() {
                filters.push(c.string()?);
                if kind == kind::SUBSCRIBE {
                    let options = c.byte()?;
                    let reserved = if level == 5 { 0b1100_0000 } else { 0b1111_1100 };
                    if options & reserved != 0 || options & 0b11 == 3 {
                        return Err(Violation::Malformed(format!(
                            "subscription options 0x{options:02x}"
                        )));
                    }
                }
            }
            if filters.is_empty() {
                return Err(Violation::Malformed("no topic filter".into()));
            }
            Ok(if kind == kind::SUBSCRIBE {
                ClientPacket::Subscribe(filters)
            } else {
                ClientPacket::Unsubscribe(filters)
            })
        }
        _ => Ok(ClientPacket::Control),
    }
}

/// A packet from rumqttd to a client, as far as the gateway needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerPacket<'a> {
    /// A PUBLISH (its variable header; the payload is not read here).
    Publish {
        /// The topic name.
        topic: &'a str,
    },
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP or DISCONNECT.
    Control,
}

/// Parses a packet from rumqttd to a client after the CONNACK, as
/// [`parse`] does for the other direction: `body` is a PUBLISH's variable
/// header only, otherwise the whole rest. rumqttd is behind the gateway,
/// but since nothing else confines its deliveries to a tenant, what it
/// sends is read as carefully as what a client sends.
pub fn parse_from_broker(first: u8, body: &[u8], level: u8) -> Result<BrokerPacket<'_>, Violation> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    let expected_flags = match kind {
        kind::PUBLISH => None,
        kind::PUBREL => Some(0b0010),
        kind::PUBACK
        | kind::PUBREC
        | kind::PUBCOMP
        | kind::SUBACK
        | kind::UNSUBACK
        | kind::PINGRESP
        | kind::DISCONNECT => Some(0),
        other => return Err(Violation::UnexpectedPacket(other)),
    };
    if let Some(expected) = expected_flags
        && flags != expected
    {
        return Err(Violation::Malformed(format!(
            "flags 0x{flags:x} on packet type {kind}"
        )));
    }
    if kind != kind::PUBLISH {
        return Ok(BrokerPacket::Control);
    }
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(Violation::Malformed("QoS 3".into()));
    }
    let mut c = Cursor::new(body);
    let topic = c.string()?;
    if qos > 0 {
        c.u16()?;
    }
    // The client was never allowed topic aliases (its CONNECT is checked),
    // so a delivery always names its topic in full.
    if level == 5
        && properties(&mut c)?
            .iter()
            .any(|(id, _)| *id == property::TOPIC_ALIAS)
    {
        return Err(Violation::TopicAlias);
    }
    if !c.is_empty() {
        return Err(Violation::Malformed("bytes after PUBLISH header".into()));
    }
    Ok(BrokerPacket::Publish { topic })
}

/// Checks a packet from rumqttd before it goes to a client of `agency`:
/// a message only on the agency's own receipts or inbox topics (the only
/// ones it may subscribe to, see [`subscribe_allowed`]).
pub fn check_from_broker(agency: &str, first: u8, body: &[u8], level: u8) -> Result<(), Violation> {
    match parse_from_broker(first, body, level)? {
        BrokerPacket::Publish { topic } if !delivery_allowed(agency, topic) => {
            Err(Violation::NotForThisAgency(topic.to_string()))
        }
        _ => Ok(()),
    }
}

/// Whether a message on `topic` may reach a client of `agency`: its
/// receipts or a topic below its inbox.
pub fn delivery_allowed(agency: &str, topic: &str) -> bool {
    own(agency, topic).is_some_and(|rest| rest == "receipts" || rest.starts_with("in/"))
}

/// Whether `topic` is one an agency's client may publish on.
pub fn publish_allowed(agency: &str, topic: &str) -> bool {
    let Some(rest) = own(agency, topic) else {
        return false;
    };
    if let Some(logical) = rest.strip_prefix("out/") {
        return !logical.is_empty() && !logical.contains(['+', '#']);
    }
    if rest.starts_with("witness/") {
        // A witness's answer: exactly the form the router reads.
        return matches!(
            samverkan_sdk::topics::BrokerTopic::parse(topic),
            Some(samverkan_sdk::topics::BrokerTopic::WitnessAnswer { agency: a, .. }) if a == agency
        );
    }
    rest == "acks" || rest == "replay"
}

/// Whether `filter` is one an agency's client may subscribe to.
pub fn subscribe_allowed(agency: &str, filter: &str) -> bool {
    let Some(rest) = own(agency, filter) else {
        return false;
    };
    if rest == "receipts" {
        return true;
    }
    let Some(inbox) = rest.strip_prefix("in/") else {
        return false;
    };
    // A well-formed filter (MQTT 3.1.1 section 4.7.1): `#` only as the whole
    // last level, `+` only as a whole level.
    let levels: Vec<&str> = inbox.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        if level.contains('#') {
            *level == "#" && i == levels.len() - 1
        } else {
            !level.contains('+') || *level == "+"
        }
    }) && !inbox.is_empty()
}

/// The part of `topic` after the agency's own prefix.
fn own<'a>(agency: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix("/tenants/")?
        .strip_prefix(agency)?
        .strip_prefix('/')
}

/// The distinct filters each agency has subscribed to since start. rumqttd
/// keeps a log per filter until it stops, so this is what bounds the
/// memory one agency's subscriptions can hold.
#[derive(Debug, Default)]
pub struct FilterBudget {
    used: Mutex<HashMap<String, HashSet<String>>>,
}

impl FilterBudget {
    /// Admits `filter` for `agency`: a filter it used before is always
    /// admitted, a new one while fewer than `limit` are used.
    pub fn admit(&self, agency: &str, filter: &str, limit: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let filters = used.entry(agency.to_string()).or_default();
        if filters.contains(filter) {
            return true;
        }
        if filters.len() >= limit {
            return false;
        }
        filters.insert(filter.to_string());
        true
    }
}

/// Whether `filter` (allowed for `agency`) can match a share's topic: an
/// inbox filter other than the broker's own `in/_…` topics (checkpoints,
/// witnessing, replay status).
pub fn receives_shares(agency: &str, filter: &str) -> bool {
    own(agency, filter)
        .and_then(|rest| rest.strip_prefix("in/"))
        .is_some_and(|inbox| !inbox.starts_with('_'))
}

/// How many connections of each agency are subscribed to a filter that can
/// match its shares. A node of several delivers a share itself only if its
/// recipient receives on it, and hands it off otherwise (ARCHITECTURE.md
/// section 14.3).
#[derive(Debug, Default)]
pub struct Receivers {
    counts: Mutex<HashMap<String, usize>>,
}

impl Receivers {
    /// The agencies with at least one receiving connection.
    pub fn agencies(&self) -> Vec<String> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(agency, _)| agency.clone())
            .collect()
    }

    fn change(&self, agency: &str, receiving: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(agency.to_string()).or_default();
        *n = if receiving {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
    }
}

/// What one connection is subscribed to, checked packet by packet.
#[derive(Debug)]
pub struct Session<'a> {
    agency: &'a str,
    limits: Limits,
    budget: &'a FilterBudget,
    filters: HashSet<String>,
    /// Where this connection counts while it receives shares.
    receivers: Option<&'a Receivers>,
    receiving: bool,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.set_receiving(false);
    }
}

impl<'a> Session<'a> {
    /// A new connection of `agency`.
    pub fn new(agency: &'a str, limits: Limits, budget: &'a FilterBudget) -> Self {
        Self {
            agency,
            limits,
            budget,
            filters: HashSet::new(),
            receivers: None,
            receiving: false,
        }
    }

    /// Counts this connection in `receivers` while it is subscribed to a
    /// filter that can match its agency's shares.
    pub fn reporting_to(mut self, receivers: &'a Receivers) -> Self {
        self.receivers = Some(receivers);
        self
    }

    fn set_receiving(&mut self, receiving: bool) {
        if receiving != self.receiving {
            self.receiving = receiving;
            if let Some(receivers) = self.receivers {
                receivers.change(self.agency, receiving);
            }
        }
    }

    fn update_receiving(&mut self) {
        let receiving = self.filters.iter().any(|f| receives_shares(self.agency, f));
        self.set_receiving(receiving);
    }

    /// Checks one packet against the rules and updates the subscriptions.
    pub fn check(&mut self, packet: &ClientPacket<'_>) -> Result<(), Violation> {
        match packet {
            ClientPacket::Publish { topic } => {
                if publish_allowed(self.agency, topic) {
                    Ok(())
                } else {
                    Err(Violation::PublishTopic((*topic).to_string()))
                }
            }
            ClientPacket::Subscribe(filters) => {
                for filter in filters {
                    if !subscribe_allowed(self.agency, filter) {
                        return Err(Violation::SubscribeFilter((*filter).to_string()));
                    }
                    if self.filters.contains(*filter) {
                        continue;
                    }
                    if self.filters.len() >= self.limits.subscriptions_per_connection {
                        return Err(Violation::TooManySubscriptions(
                            self.limits.subscriptions_per_connection,
                        ));
                    }
                    if !self
                        .budget
                        .admit(self.agency, filter, self.limits.filters_per_agency)
                    {
                        return Err(Violation::FilterBudgetSpent(self.limits.filters_per_agency));
                    }
                    self.filters.insert((*filter).to_string());
                }
                self.update_receiving();
                Ok(())
            }
            ClientPacket::Unsubscribe(filters) => {
                for filter in filters {
                    self.filters.remove(*filter);
                }
                self.update_receiving();
                Ok(())
            }
            ClientPacket::Control => Ok(()),
        }
    }
}

/// The packet that tells an MQTT 5 client why it is closed: a CONNACK with
/// `reason` during connect, a DISCONNECT after (MQTT 5 sections 3.2, 3.14),
/// each with a reason string. MQTT 3.1.1 has no such packet after CONNECT,
/// and its CONNACK codes cannot say why: 3.1.1 clients get "not authorized"
/// during connect, and the connection is closed.
pub fn refusal(level: u8, during_connect: bool, violation: &Violation) -> Option<Vec<u8>> {
    if level != 5 {
        // CONNACK, session present 0, return code 5 (not authorized).
        return during_connect.then(|| vec![0x20, 2, 0, 5]);
    }
    let text = violation.to_string();
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text.as_bytes()[..end];
    let mut props = vec![0x1F];
    props.extend_from_slice(&(text.len() as u16).to_be_bytes());
    props.extend_from_slice(text);
    let mut body = Vec::new();
    if during_connect {
        body.push(0); // session present: 0
    }
    body.push(violation.reason_code());
    push_varint(&mut body, props.len());
    body.extend_from_slice(&props);
    let mut packet = vec![if during_connect { 0x20 } else { 0xE0 }];
    push_varint(&mut packet, body.len());
    packet.extend_from_slice(&body);
    Some(packet)
}

/// Appends `value` as a variable byte integer in the fewest bytes (the
/// remaining length of MQTT 3.1.1 section 2.2.3, MQTT 5 section 1.5.5).
pub(crate) fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

// The path is spelled out because the fuzz crate (broker/fuzz) includes
// this file by path, where the default would point elsewhere.
#[cfg(test)]
#[path = "inspect/tests.rs"]
mod tests;
