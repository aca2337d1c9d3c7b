//! What an agency client needs to know: who it is (TLS identity and signing
//! key), whom it trusts (the federation CA, the broker's and the agencies'
//! signing keys), where the broker nodes are, and how long to wait.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;

use super::brokers::{self, BrokerAddress};
use super::error::ClientError;
use crate::keys::{self, KeyRegistry};
use crate::names;

/// The TLS material of an agency: the federation CA that signed the broker's
/// certificate, and the agency's own client certificate and private key
/// (whose O= is the agency id; the broker derives the tenant from it).
#[derive(Clone)]
pub struct TlsMaterial {
    /// PEM of the CA certificate(s) to trust for the broker.
    pub ca_pem: Vec<u8>,
    /// PEM of the agency's client certificate (chain).
    pub client_cert_pem: Vec<u8>,
    /// PEM of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key_pem: Vec<u8>,
}

impl fmt::Debug for TlsMaterial {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// Configuration of one agency's connection to the broker.
///
/// Build it with [`AgencyConfig::from_dev_pki`] for the development layout
/// or [`AgencyConfig::new`] from explicit parts, then adjust the public
/// fields (time limits) if needed.
///
/// **Several broker nodes.** `host` and `port` are the first broker the
/// client connects to. When the broker runs as several nodes sharing one
/// database, give the others with [`AgencyConfig::with_fallback_brokers`]:
/// the client then tries the addresses in order ([`AgencyConfig::brokers`])
/// and, whenever a connection fails or drops, goes on to the next one (after
/// the last, back to the first). Each address's host is the name the TLS
/// certificate of that node must carry.
///
/// In production the parts come from the agency's own files:
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::path::Path;
/// use samverkan_sdk::client::{AgencyConfig, BrokerAddress, TlsMaterial};
/// use samverkan_sdk::keys::{self, KeyRegistry};
///
/// let dir = Path::new("/etc/samverkan");
/// let tls = TlsMaterial {
///     ca_pem: std::fs::read(dir.join("federation-ca.pem"))?,
///     client_cert_pem: std::fs::read(dir.join("client.pem"))?,
///     client_key_pem: std::fs::read(dir.join("client.key"))?,
/// };
/// let registry = |file: &str| {
///     KeyRegistry::load(&dir.join(file)).map_err(|problems| {
///         let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
///         problems.join("; ")
///     })
/// };
/// let config = AgencyConfig::new(
///     "forsakringskassan",
///     "broker-1.samverkan.example.se", // must match the broker's certificate
///     8883,
///     tls,
///     keys::read_signing_key(&dir.join("signing.key"))?,
///     "forsakringskassan-2026", // its id in the policy's keys.toml
///     registry("broker-keys.toml")?, // verifies receipts and share stamps
///     registry("keys.toml")?, // verifies the alerts of every agency
/// )?
/// // The other nodes, tried in this order when the first is unreachable.
/// .with_fallback_brokers(BrokerAddress::parse_list(
///     "broker-2.samverkan.example.se:8883,broker-3.samverkan.example.se:8883",
/// )?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AgencyConfig {
    /// The agency id (also the O= of the client certificate).
    pub agency: String,
    /// The first broker's host name; must match its certificate.
    pub host: String,
    /// The first broker's MQTT-over-TLS port.
    pub port: u16,
    /// The other broker nodes, tried in this order after `host:port` (see
    /// [`AgencyConfig::brokers`]). Empty for a single broker.
    pub fallback_brokers: Vec<BrokerAddress>,
    /// PEM of the CA certificate(s) to trust for the broker.
    pub ca_pem: Vec<u8>,
    /// PEM of the agency's client certificate (chain).
    pub client_cert_pem: Vec<u8>,
    /// PEM of the client certificate's private key.
    pub client_key_pem: Vec<u8>,
    /// The agency's ed25519 key that signs alerts and acknowledgements.
    pub signing_key: SigningKey,
    /// The id under which `signing_key` is registered in `keys.toml`.
    pub signing_key_id: String,
    /// The broker's public keys, to verify receipts and share stamps.
    pub broker_keys: KeyRegistry,
    /// The agencies' public keys, to verify the alerts delivered.
    pub agency_keys: KeyRegistry,
    /// How long to wait for a receipt before sending the same alert again.
    pub receipt_timeout: Duration,
    /// How long a publish may take in total, resends included.
    pub publish_deadline: Duration,
    /// Whether a publish refused for exceeding the agency's publish limit is
    /// sent again when the broker says it may (within `publish_deadline`);
    /// when false the refusal is returned at once, for callers that pace
    /// themselves.
    pub wait_when_rate_limited: bool,
    /// How long connecting (and subscribing) may take. With several broker
    /// addresses this is the limit for each one: [`Client::connect`] tries
    /// them in turn and gives up after this times the number of addresses.
    ///
    /// [`Client::connect`]: super::Client::connect
    pub connect_timeout: Duration,
    /// Largest MQTT packet sent or accepted, in bytes.
    pub max_packet_size: usize,
}

impl fmt::Debug for AgencyConfig {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgencyConfig")
            .field("agency", &self.agency)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("fallback_brokers", &self.fallback_brokers)
            .field("signing_key_id", &self.signing_key_id)
            .field("broker_keys", &self.broker_keys.len())
            .field("agency_keys", &self.agency_keys.len())
            .field("receipt_timeout", &self.receipt_timeout)
            .field("publish_deadline", &self.publish_deadline)
            .field("wait_when_rate_limited", &self.wait_when_rate_limited)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_packet_size", &self.max_packet_size)
            .finish_non_exhaustive()
    }
}

impl AgencyConfig {
    /// Default wait for a receipt before resending.
    pub const DEFAULT_RECEIPT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default total time a publish may take.
    pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(60);
    /// Default time connecting may take.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default largest packet: 1 MiB.
    pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;

    /// A configuration from explicit parts, with default time limits and
    /// packet size. Every part is required: without the broker's keys no
    /// receipt or delivery could be trusted, without the agencies' keys no
    /// delivered alert could be verified.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        agency: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        tls: TlsMaterial,
        signing_key: SigningKey,
        signing_key_id: impl Into<String>,
        broker_keys: KeyRegistry,
        agency_keys: KeyRegistry,
    ) -> Result<Self, ClientError> {
        let config = Self {
            agency: agency.into(),
            host: host.into(),
            port,
            fallback_brokers: Vec::new(),
            ca_pem: tls.ca_pem,
            client_cert_pem: tls.client_cert_pem,
            client_key_pem: tls.client_key_pem,
            signing_key,
            signing_key_id: signing_key_id.into(),
            broker_keys,
            agency_keys,
            receipt_timeout: Self::DEFAULT_RECEIPT_TIMEOUT,
            publish_deadline: Self::DEFAULT_PUBLISH_DEADLINE,
            wait_when_rate_limited: true,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            max_packet_size: Self::DEFAULT_MAX_PACKET_SIZE,
        };
        config.validate()?;
        config.check_signing_key_registered()?;
        Ok(config)
    }

    /// The configuration of `agency` in the development PKI layout written by
    /// `samverkan pki dev` (normally `certs-dev/`): `ca.pem`,
    /// `{agency}/client.pem`, `{agency}/client.key`, `{agency}/signing.key`
    /// (key id `{agency}-dev-1`) and `broker-keys.toml`; the agencies' keys
    /// come from `agency_keys_toml` (normally `policies/keys.toml`).
    pub fn from_dev_pki(
        certs_dir: &Path,
        agency_keys_toml: &Path,
        agency: &str,
        host: &str,
        port: u16,
    ) -> Result<Self, ClientError> {
        names::validate_agency_id(agency)
            .map_err(|e| ClientError::Config(format!("agency: {e}")))?;
        let agency_dir = certs_dir.join(agency);
        let tls = TlsMaterial {
            ca_pem: read(&certs_dir.join("ca.pem"))?,
            client_cert_pem: read(&agency_dir.join("client.pem"))?,
            client_key_pem: read(&agency_dir.join("client.key"))?,
        };
        let signing_key = keys::read_signing_key(&agency_dir.join("signing.key")).map_err(|e| {
            ClientError::Credentials {
                what: "signing key".into(),
                reason: e.to_string(),
            }
        })?;
        Self::new(
            agency,
            host,
            port,
            tls,
            signing_key,
            format!("{agency}-dev-1"),
            load_registry(&certs_dir.join("broker-keys.toml"))?,
            load_registry(agency_keys_toml)?,
        )
    }

    /// Adds the addresses of the other broker nodes, to be tried in this
    /// order after `host:port` (replacing any given before). They are
    /// checked by [`Self::validate`], which [`Client::connect`] calls.
    ///
    /// [`Client::connect`]: super::Client::connect
    #[must_use]
    pub fn with_fallback_brokers(
        mut self,
        brokers: impl IntoIterator<Item = BrokerAddress>,
    ) -> Self {
        self.fallback_brokers = brokers.into_iter().collect();
        self
    }

    /// Every broker address in the order the client tries them: `host:port`
    /// first, then [`Self::fallback_brokers`](AgencyConfig::fallback_brokers).
    pub fn brokers(&self) -> Vec<BrokerAddress> {
        std::iter::once(BrokerAddress::new(self.host.clone(), self.port))
            .chain(self.fallback_brokers.iter().cloned())
            .collect()
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), ClientError> {
        names::validate_agency_id(&self.agency)
            .map_err(|e| ClientError::Config(format!("agency: {e}")))?;
        names::validate_key_id(&self.signing_key_id)
            .map_err(|e| ClientError::Config(format!("signing key id: {e}")))?;
        if self.host.is_empty() {
            return Err(ClientError::Config("the broker host is empty".into()));
        }
        if self.port == 0 {
            return Err(ClientError::Config("the broker port is 0".into()));
        }
        for broker in self.brokers() {
            broker
                .check()
                .map_err(|e| ClientError::Config(e.to_string()))?;
        }
        if self.receipt_timeout.is_zero() || self.publish_deadline.is_zero() {
            return Err(ClientError::Config(
                "receipt_timeout and publish_deadline must be positive".into(),
            ));
        }
        if self.max_packet_size < 1024 {
            return Err(ClientError::Config(
                "max_packet_size must be at least 1024 bytes".into(),
            ));
        }
        if self
            .broker_keys
            .keys_of(crate::messages::BROKER_KEY_OWNER)
            .next()
            .is_none()
        {
            return Err(ClientError::Config(
                "the broker key registry has no key of owner `broker`".into(),
            ));
        }
        Ok(())
    }

    /// Checks that `signing_key` is registered under `signing_key_id` for
    /// this agency in `agency_keys`: otherwise every alert would be rejected
    /// by the broker, which is better found out before connecting.
    pub fn check_signing_key_registered(&self) -> Result<(), ClientError> {
        let public_key = self.signing_key.verifying_key();
        if self
            .agency_keys
            .keys_of(&self.agency)
            .any(|k| k.key_id == self.signing_key_id && k.public_key == public_key)
        {
            Ok(())
        } else {
            Err(ClientError::Config(format!(
                "the signing key is not registered as `{}` of `{}` in the agency key registry",
                self.signing_key_id, self.agency
            )))
        }
    }

    /// The first broker's `host:port` (an IPv6 address in brackets), for
    /// messages.
    pub fn address(&self) -> String {
        BrokerAddress::new(self.host.clone(), self.port).to_string()
    }

    /// Every broker address, in order, as one string for messages:
    /// `host:port` alone, or `a:8883, b:8883`.
    pub(crate) fn addresses(&self) -> String {
        brokers::describe(&self.brokers())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn load_registry(path: &Path) -> Result<KeyRegistry, ClientError> {
    KeyRegistry::load(path).map_err(|errors| ClientError::Credentials {
        what: "key registry".into(),
        reason: errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn reads_the_development_layout() {
        let root = repo();
        let config = AgencyConfig::from_dev_pki(
            &root.join("certs-dev"),
            &root.join("policies/keys.toml"),
            "linkoping",
            "localhost",
            8883,
        )
        .unwrap();
        assert_eq!(config.signing_key_id, "linkoping-dev-1");
        assert_eq!(config.receipt_timeout, Duration::from_secs(5));
        assert_eq!(config.publish_deadline, Duration::from_secs(60));
        assert_eq!(config.max_packet_size, 1024 * 1024);
        assert_eq!(config.address(), "localhost:8883");
        let debug = format!("{config:?}");
        assert!(!debug.contains("PRIVATE"));
        // The TLS material parses.
        super::super::tls::client_config(&config).unwrap();
    }

    #[test]
    fn refuses_a_signing_key_of_another_agency() {
        let root = repo();
        let mut config = AgencyConfig::from_dev_pki(
            &root.join("certs-dev"),
            &root.join("policies/keys.toml"),
            "linkoping",
            "localhost",
            8883,
        )
        .unwrap();
        config.signing_key = SigningKey::from_bytes(&[7; 32]);
        assert!(config.validate().is_ok());
        assert!(matches!(
            config.check_signing_key_registered(),
            Err(ClientError::Config(_))
        ));
        let err = AgencyConfig::from_dev_pki(
            &root.join("certs-dev"),
            &root.join("policies/keys.toml"),
            "nosuchagency",
            "localhost",
            8883,
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
    }

    #[test]
    fn one_address_is_a_list_of_one_and_fallbacks_follow_it_in_order() {
        let root = repo();
        let config = AgencyConfig::from_dev_pki(
            &root.join("certs-dev"),
            &root.join("policies/keys.toml"),
            "linkoping",
            "localhost",
            8883,
        )
        .unwrap();
        assert_eq!(
            config.brokers(),
            vec![BrokerAddress::new("localhost", 8883)]
        );
        assert_eq!(config.addresses(), "localhost:8883");
        let config = config.with_fallback_brokers([
            BrokerAddress::new("broker-2.example", 8884),
            BrokerAddress::new("::1", 8885),
        ]);
        assert!(config.validate().is_ok());
        assert_eq!(
            config.brokers(),
            vec![
                BrokerAddress::new("localhost", 8883),
                BrokerAddress::new("broker-2.example", 8884),
                BrokerAddress::new("::1", 8885),
            ]
        );
        assert_eq!(config.address(), "localhost:8883");
        assert_eq!(
            config.addresses(),
            "localhost:8883, broker-2.example:8884, [::1]:8885"
        );
        assert!(format!("{config:?}").contains("broker-2.example"));
        // A fallback that cannot be connected to is found before connecting.
        let bad = config.with_fallback_brokers([BrokerAddress::new("no such host", 8883)]);
        let err = bad.validate().unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err}");
        assert!(err.to_string().contains("`no such host:8883`"), "{err}");
    }
}
