//! Broker addresses, and the order in which a client tries them.
//!
//! Several broker nodes that share one database are interchangeable: any of
//! them accepts any agency. A client is given their addresses in order of
//! preference and connects to the first. When a connection attempt fails, or
//! an established connection drops, it goes on to the next address, after
//! the last back to the first.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::ServerName;
use thiserror::Error;

/// One broker's MQTT-over-TLS address. The host is also the name the
/// broker's TLS certificate must carry (a DNS name or an IP address in its
/// subject alternative names).
///
/// Parsed from `host:port`, with an IPv6 address in brackets:
///
/// ```
/// use samverkan_sdk::client::BrokerAddress;
///
/// let a: BrokerAddress = "broker-2.samverkan.example.se:8883".parse()?;
/// assert_eq!((a.host.as_str(), a.port), ("broker-2.samverkan.example.se", 8883));
/// let b: BrokerAddress = "[::1]:8883".parse()?;
/// assert_eq!(b.host, "::1");
/// assert_eq!(b.to_string(), "[::1]:8883");
/// assert!("broker-2.samverkan.example.se".parse::<BrokerAddress>().is_err());
/// # Ok::<(), samverkan_sdk::client::BrokerAddressError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddress {
    /// The host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// A broker address that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the broker address `{address}` {reason}")]
pub struct BrokerAddressError {
    address: String,
    reason: String,
}

impl BrokerAddressError {
    fn new(address: &str, reason: impl Into<String>) -> Self {
        Self {
            address: address.to_string(),
            reason: reason.into(),
        }
    }

    /// The address as it was given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl BrokerAddress {
    /// An address from its parts (checked when the configuration is validated).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// Checks that the address can be connected to: a host that is a DNS
    /// name or an IP address (the TLS server name), and a port other than 0.
    pub fn check(&self) -> Result<(), BrokerAddressError> {
        let fail = |reason: &str| Err(BrokerAddressError::new(&self.to_string(), reason));
        if self.host.is_empty() {
            return fail("has no host");
        }
        if ServerName::try_from(self.host.as_str()).is_err() {
            return fail(
                "has a host that is neither a DNS name nor an IP address (the broker's certificate is checked against it)",
            );
        }
        if self.port == 0 {
            return fail("has port 0");
        }
        Ok(())
    }

    /// Parses a comma-separated list of addresses (`a:8883,b:8883`), in
    /// order; spaces around each address are ignored. At least one is needed.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, BrokerAddressError> {
        if text.trim().is_empty() {
            return Err(BrokerAddressError::new(text, "list is empty"));
        }
        text.split(',').map(str::parse).collect()
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerAddress {
    type Err = BrokerAddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let given = text.trim();
        let fail = |reason: &str| BrokerAddressError::new(given, reason);
        if given.is_empty() {
            return Err(fail("is empty (expected host:port)"));
        }
        let (host, port) = if let Some(rest) = given.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| fail("opens a `[` that is not closed (expected [IPv6]:port)"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| fail("has no port after the `]` (expected [IPv6]:port)"))?;
            (host, port)
        } else {
            let (host, port) = given
                .rsplit_once(':')
                .ok_or_else(|| fail("has no port (expected host:port, e.g. localhost:8883)"))?;
            if host.contains(':') {
                return Err(fail(
                    "has an IPv6 address without brackets (write [IPv6]:port, e.g. [::1]:8883)",
                ));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(fail("has no host (expected host:port)"));
        }
        let port: u16 = match port.parse() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(fail(&format!(
                    "has the port `{port}`, not a number from 1 to 65535"
                )));
            }
        };
        let address = Self::new(host, port);
        address
            .check()
            .map_err(|e| BrokerAddressError::new(given, e.reason))?;
        Ok(address)
    }
}

/// The addresses a client connects to (never empty), the one it uses now,
/// and what it keeps for each (its MQTT options, for instance).
#[derive(Debug, Clone)]
pub(crate) struct Rotation<T> {
    entries: Vec<(BrokerAddress, T)>,
    current: usize,
}

impl<T> Rotation<T> {
    /// The addresses in order of preference; the first is used first.
    /// `None` when there are none.
    pub(crate) fn new(entries: Vec<(BrokerAddress, T)>) -> Option<Self> {
        if entries.is_empty() {
            None
        } else {
            Some(Self {
                entries,
                current: 0,
            })
        }
    }

    /// How many addresses there are.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The address in use (or to be tried next).
    pub(crate) fn address(&self) -> &BrokerAddress {
        &self.entries[self.current].0
    }

    /// What is kept for the address in use.
    pub(crate) fn value(&self) -> &T {
        &self.entries[self.current].1
    }

    /// Moves on to the next address, after the last back to the first.
    /// Returns whether the address changed (it does not when there is one).
    pub(crate) fn advance(&mut self) -> bool {
        let before = self.current;
        self.current = (self.current + 1) % self.entries.len();
        self.current != before
    }
}

/// The addresses as one string for messages: `a:8883, b:8883`.
pub(crate) fn describe(addresses: &[BrokerAddress]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> BrokerAddress {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(
            address("localhost:8883"),
            BrokerAddress::new("localhost", 8883)
        );
        assert_eq!(address(" 10.0.0.7:1 "), BrokerAddress::new("10.0.0.7", 1));
        assert_eq!(address("[::1]:8883"), BrokerAddress::new("::1", 8883));
        for text in ["localhost:8883", "10.0.0.7:1", "[::1]:8883"] {
            assert_eq!(address(text).to_string(), text);
        }
        assert_eq!(
            BrokerAddress::parse_list("a.example:1, b.example:2,[::1]:3").unwrap(),
            vec![
                BrokerAddress::new("a.example", 1),
                BrokerAddress::new("b.example", 2),
                BrokerAddress::new("::1", 3),
            ]
        );
    }

    #[test]
    fn malformed_addresses_say_which_and_why() {
        for (text, why) in [
            ("", "is empty"),
            ("localhost", "has no port"),
            (":8883", "has no host"),
            ("localhost:", "not a number from 1 to 65535"),
            ("localhost:0", "not a number from 1 to 65535"),
            ("localhost:99999", "not a number from 1 to 65535"),
            ("localhost:88a3", "not a number from 1 to 65535"),
            ("::1:8883", "without brackets"),
            ("[::1:8883", "not closed"),
            ("[::1]8883", "no port after"),
            ("bad host:8883", "neither a DNS name nor an IP address"),
        ] {
            let err = text.parse::<BrokerAddress>().unwrap_err();
            assert_eq!(err.address(), text.trim());
            assert!(err.reason().contains(why), "{text}: {err}");
            assert!(err.to_string().contains(&format!("`{text}`")), "{err}");
        }
        let err = BrokerAddress::parse_list("a.example:1,b.example").unwrap_err();
        assert_eq!(err.address(), "b.example");
        assert!(BrokerAddress::parse_list(" ").is_err());
        assert!(BrokerAddress::parse_list("a.example:1,").is_err());
        assert!(BrokerAddress::new("", 1).check().is_err());
        assert!(BrokerAddress::new("a.example", 0).check().is_err());
        assert!(BrokerAddress::new("a.example", 1).check().is_ok());
    }

    #[test]
    fn the_rotation_goes_through_every_address_in_order_and_wraps_around() {
        let mut rotation = Rotation::new(vec![
            (address("a.example:1"), 'a'),
            (address("b.example:2"), 'b'),
            (address("c.example:3"), 'c'),
        ])
        .unwrap();
        assert_eq!(rotation.len(), 3);
        let mut seen = vec![(rotation.address().to_string(), *rotation.value())];
        for _ in 0..4 {
            assert!(rotation.advance());
            seen.push((rotation.address().to_string(), *rotation.value()));
        }
        let expected = [
            ("a.example:1", 'a'),
            ("b.example:2", 'b'),
            ("c.example:3", 'c'),
            ("a.example:1", 'a'),
            ("b.example:2", 'b'),
        ]
        .map(|(a, v)| (a.to_string(), v));
        assert_eq!(seen, expected);

        let mut one = Rotation::new(vec![(address("a.example:1"), ())]).unwrap();
        assert!(!one.advance());
        assert_eq!(one.address().to_string(), "a.example:1");
        assert!(Rotation::<()>::new(Vec::new()).is_none());
    }
}
