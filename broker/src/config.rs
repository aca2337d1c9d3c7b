//! The broker's configuration: a TOML file of plain values (every setting
//! optional, with development defaults), checked into a [`BrokerConfig`].
//!
//! Three steps, each done in one place:
//!
//! 1. **Parse.** serde reads the file into [`ConfigFile`], one struct per
//!    `[section]`. The parser refuses unknown keys and values of the wrong
//!    type, at their line.
//! 2. **Default.** A key the file leaves out takes its value from its
//!    section's `Default`, the one place each default is written: settings
//!    a run-time module owns (the router's limits, the gateway's timeouts
//!    and packet limits) are read from that module's `Default`, the file
//!    names of the development PKI from [`DevPkiLayout`], and the rest are
//!    written in the section's `Default` here.
//! 3. **Check.** [`ConfigFile::check`] validates every value (ranges,
//!    addresses, names), reports every mistake at once with file and line,
//!    and builds the [`BrokerConfig`] the broker runs with.
//!
//! Relative paths in a file are relative to the file's directory; the
//! development defaults are relative to the working directory.
//!
//! `samverkan.example.toml` at the repository root sets every setting to its
//! default and says why; a test below fails when a setting is added to the
//! parser without it, or when its value there is not the default.

use std::borrow::Borrow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use samverkan_sdk::audit::checkpoint;
use samverkan_sdk::names;
use samverkan_sdk::source::SourceError;
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::gateway::{GatewaySettings, TlsFiles};
use crate::inspect;
use crate::mqtt::MqttSettings;
use crate::pipeline::RouterSettings;
use crate::pki::DevPkiLayout;

/// The development PKI directory, relative to the working directory.
pub const DEV_PKI_DIR: &str = "certs-dev";
/// The development policy set, relative to the working directory.
pub const DEV_POLICY_DIR: &str = "policies";
/// The development database, relative to the working directory (also when
/// a configuration file leaves `[store] url` out).
pub const DEV_STORE_URL: &str = "sqlite://samverkan.db";
/// The public MQTT-over-TLS address unless configured.
pub const DEFAULT_LISTEN: SocketAddr = loopback(8883);
/// The admin endpoint unless configured; also where `samverkan admin` looks.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = loopback(9883);
/// The auditor console unless configured.
pub const DEFAULT_CONSOLE_LISTEN: SocketAddr = loopback(9443);

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Settings of the audit log.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The log's name in checkpoints (and the signed-note key name).
    pub origin: String,
    /// The secret key of subject hashes.
    pub subject_key: PathBuf,
    /// Longest time between checkpoints while entries are added.
    pub checkpoint_interval: Duration,
    /// Entries after which a checkpoint is signed at once.
    pub checkpoint_every_entries: u64,
    /// How often content past its retention period is purged.
    pub retention_interval: Duration,
}

/// One node of several on one PostgreSQL (`[cluster]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's name, unique among the nodes (in `/health`, metrics
    /// and the log).
    pub node: String,
    /// Where this node keeps the newest checkpoint published (the no-fork
    /// guard), out of reach of a restored or failed-over database.
    pub state_dir: PathBuf,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The public MQTT-over-TLS address.
    pub listen: SocketAddr,
    /// The public listener's certificates.
    pub tls: TlsFiles,
    /// The broker's ed25519 signing key (PKCS#8 PEM).
    pub signing_key: PathBuf,
    /// The id of that key in the broker key registry.
    pub signing_key_id: String,
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub store_url: String,
    /// Gateway timeouts.
    pub gateway: GatewaySettings,
    /// TCP connections per minute per source address.
    pub connection_attempts_per_minute: NonZeroU32,
    /// Concurrent connections per agency.
    pub max_connections_per_agency: usize,
    /// Pipeline limits.
    pub router: RouterSettings,
    /// Embedded broker sizes.
    pub mqtt: MqttSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// The health, metrics and admin HTTP listener (`None`: off).
    pub admin_listen: Option<SocketAddr>,
    /// The auditor console's HTTPS listener (`None`: off).
    pub console_listen: Option<SocketAddr>,
    /// How often the CRL file is checked for changes.
    pub crl_check_interval: Duration,
    /// `None`: the only node.
    pub cluster: Option<ClusterSettings>,
}

/// Every mistake found in a configuration file, each naming the file and,
/// where it has one, the line. Displayed one mistake per line.
#[derive(Debug, Error)]
#[error("{}", one_per_line(.problems))]
pub struct ConfigError {
    /// The mistakes, in the order of the checks.
    pub problems: Vec<SourceError>,
}

fn one_per_line(problems: &[SourceError]) -> String {
    problems
        .iter()
        .map(SourceError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl BrokerConfig {
    /// The development defaults, with paths under `root`.
    pub fn development(root: &Path) -> Self {
        ConfigFile::default()
            .check(root, Path::new("(defaults)"), "")
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }

    /// Reads a configuration file; every mistake names the file and line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let only = |problem| ConfigError {
            problems: vec![problem],
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| only(SourceError::file(path, format!("cannot read: {e}"))))?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| only(SourceError::from_toml(path, &text, &e)))?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.check(base, path, &text)
    }
}

/// A default: a value with no place in the file.
fn unwritten<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// A default duration as the file writes it, in milliseconds.
fn unwritten_ms(duration: Duration) -> Spanned<u64> {
    unwritten(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A default count as the file writes it.
fn unwritten_count(count: usize) -> Spanned<u64> {
    unwritten(u64::try_from(count).unwrap_or(u64::MAX))
}

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    gateway: GatewaySection,
    tls: TlsSection,
    signing: SigningSection,
    policy: PolicySection,
    store: StoreSection,
    router: RouterSection,
    audit: AuditSection,
    admin: AdminSection,
    console: ConsoleSection,
    cluster: ClusterSection,
}

/// `[gateway]`: the public listener and what one client or agency may hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GatewaySection {
    listen: Spanned<String>,
    handshake_timeout_ms: Spanned<u64>,
    connect_timeout_ms: Spanned<u64>,
    max_connections_per_agency: Spanned<u64>,
    connection_attempts_per_minute: Spanned<u32>,
    max_subscriptions_per_connection: Spanned<u64>,
    max_filters_per_agency: Spanned<u64>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        let gateway = GatewaySettings::default();
        Self {
            listen: unwritten(DEFAULT_LISTEN.to_string()),
            handshake_timeout_ms: unwritten_ms(gateway.handshake_timeout),
            connect_timeout_ms: unwritten_ms(gateway.connect_timeout),
            max_connections_per_agency: unwritten(256),
            connection_attempts_per_minute: unwritten(600),
            max_subscriptions_per_connection: unwritten_count(
                gateway.packet_limits.subscriptions_per_connection,
            ),
            max_filters_per_agency: unwritten_count(gateway.packet_limits.filters_per_agency),
        }
    }
}

/// `[tls]`: the public listener's certificates and revocation list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsSection {
    /// `None`: the development CA, with its CRL when that file exists and
    /// `crl` is not given either.
    ca: Option<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
    crl_check_interval_ms: Spanned<u64>,
}

impl Default for TlsSection {
    fn default() -> Self {
        let pki = DevPkiLayout::new(DEV_PKI_DIR);
        Self {
            ca: None,
            cert: pki.server_cert(),
            key: pki.server_key(),
            crl: None,
            crl_check_interval_ms: unwritten(5_000),
        }
    }
}

/// `[signing]`: the broker's own signing key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SigningSection {
    key: PathBuf,
    key_id: Spanned<String>,
}

impl Default for SigningSection {
    fn default() -> Self {
        Self {
            key: DevPkiLayout::new(DEV_PKI_DIR).broker_signing_key(),
            key_id: unwritten(DevPkiLayout::broker_key_id()),
        }
    }
}

/// `[policy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PolicySection {
    dir: PathBuf,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEV_POLICY_DIR),
        }
    }
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StoreSection {
    /// `None`: [`DEV_STORE_URL`], relative to the working directory.
    url: Option<Spanned<String>>,
}

/// `[router]`: the pipeline's limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RouterSection {
    max_payload_bytes: Spanned<u64>,
    max_clock_skew_ms: Spanned<u64>,
    batch_max: Spanned<u64>,
}

impl Default for RouterSection {
    fn default() -> Self {
        let router = RouterSettings::default();
        Self {
            max_payload_bytes: unwritten_count(router.max_payload_bytes),
            max_clock_skew_ms: unwritten(u64::try_from(router.max_clock_skew_ms).unwrap_or(0)),
            batch_max: unwritten_count(router.batch_max),
        }
    }
}

/// `[audit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuditSection {
    origin: Spanned<String>,
    subject_key: PathBuf,
    checkpoint_interval_ms: Spanned<u64>,
    checkpoint_every_entries: Spanned<u64>,
    retention_interval_ms: Spanned<u64>,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            origin: unwritten(checkpoint::DEV_ORIGIN.to_string()),
            subject_key: DevPkiLayout::new(DEV_PKI_DIR).subject_key(),
            checkpoint_interval_ms: unwritten(500),
            checkpoint_every_entries: unwritten(1000),
            retention_interval_ms: unwritten(3_600_000),
        }
    }
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AdminSection {
    listen: Spanned<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: unwritten(DEFAULT_ADMIN_LISTEN.to_string()),
        }
    }
}

/// `[cluster]`: several nodes on one PostgreSQL. An empty `node` means
/// this broker is the only one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ClusterSection {
    node: Spanned<String>,
    state_dir: Spanned<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node: unwritten(String::new()),
            state_dir: unwritten(String::new()),
        }
    }
}

/// `[console]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConsoleSection {
    listen: Spanned<String>,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self {
            listen: unwritten(DEFAULT_CONSOLE_LISTEN.to_string()),
        }
    }
}

/// Why a value in the file is refused; shown at the value's line.
#[derive(Debug, Error)]
enum Invalid {
    #[error("listen: `{given}` is not an address like {example}")]
    Address { given: String, example: SocketAddr },
    #[error("listen: `{given}` is not an address like {example} (or \"off\")")]
    AddressOrOff { given: String, example: SocketAddr },
    #[error("{key} must be more than 0")]
    Zero { key: &'static str },
    #[error("{key} must be at least {min}, not {given}")]
    TooSmall {
        key: &'static str,
        min: u64,
        given: u64,
    },
    #[error("{key} must be between {min} and {max}, not {given}")]
    OutOfRange {
        key: &'static str,
        min: usize,
        max: usize,
        given: u64,
    },
    #[error("key_id: {0}")]
    KeyId(#[from] names::NameError),
    #[error(
        "origin must be non-empty ASCII without spaces or `+`, e.g. \"samverkan.example.se/audit\""
    )]
    Origin,
    #[error("url must start with sqlite:// or postgres://")]
    StoreUrl,
    #[error(
        "node must be 1 to 64 letters, digits, `-` or `_` (e.g. \"node-a\"), or empty for a single broker"
    )]
    NodeName,
    #[error("state_dir must be set when node is: it keeps the newest published checkpoint")]
    StateDir,
    #[error("a cluster node needs a postgres:// [store] url: SQLite cannot be shared by nodes")]
    ClusterStore,
}

/// The mistakes found so far in one file.
struct Mistakes<'a> {
    file: &'a Path,
    text: &'a str,
    found: Vec<SourceError>,
}

impl Mistakes<'_> {
    /// `value` converted by `convert`; when `convert` refuses it, the
    /// reason is noted at the value's line and `None` returned, so that
    /// every setting is checked before the first mistake is reported.
    fn check<T: Borrow<B>, B: ?Sized, U>(
        &mut self,
        value: &Spanned<T>,
        convert: impl FnOnce(&B) -> Result<U, Invalid>,
    ) -> Option<U> {
        match convert(value.get_ref().borrow()) {
            Ok(converted) => Some(converted),
            Err(invalid) => {
                self.found.push(SourceError::at(
                    self.file,
                    self.text,
                    value.span().start,
                    invalid.to_string(),
                ));
                None
            }
        }
    }
}

/// An address to listen on.
fn address(example: SocketAddr) -> impl FnOnce(&str) -> Result<SocketAddr, Invalid> {
    move |given| {
        given.parse().map_err(|_| Invalid::Address {
            given: given.to_string(),
            example,
        })
    }
}

/// An address to listen on, or `"off"` (or `""`) for none.
fn optional_address(
    example: SocketAddr,
) -> impl FnOnce(&str) -> Result<Option<SocketAddr>, Invalid> {
    move |given| match given {
        "" | "off" => Ok(None),
        _ => given.parse().map(Some).map_err(|_| Invalid::AddressOrOff {
            given: given.to_string(),
            example,
        }),
    }
}

/// A time in milliseconds, more than 0.
fn positive_ms(key: &'static str) -> impl FnOnce(&u64) -> Result<Duration, Invalid> {
    move |&ms| match ms {
        0 => Err(Invalid::Zero { key }),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// A number of at least `min` (and within `N`).
fn at_least<N: TryFrom<u64>>(
    key: &'static str,
    min: u64,
) -> impl FnOnce(&u64) -> Result<N, Invalid> {
    move |&given| match N::try_from(given) {
        Ok(n) if given >= min => Ok(n),
        _ => Err(Invalid::TooSmall { key, min, given }),
    }
}

/// A count within `range`.
fn within(
    key: &'static str,
    range: RangeInclusive<usize>,
) -> impl FnOnce(&u64) -> Result<usize, Invalid> {
    move |&given| match usize::try_from(given) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(Invalid::OutOfRange {
            key,
            min: *range.start(),
            max: *range.end(),
            given,
        }),
    }
}

fn key_id(id: &str) -> Result<String, Invalid> {
    names::validate_key_id(id)?;
    Ok(id.to_string())
}

fn node_name(node: &str) -> Result<Option<String>, Invalid> {
    if node.is_empty() {
        return Ok(None);
    }
    if node.len() > 64
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Invalid::NodeName);
    }
    Ok(Some(node.to_string()))
}

fn origin(origin: &str) -> Result<String, Invalid> {
    if origin.is_empty()
        || !origin.is_ascii()
        || origin.chars().any(|c| c.is_whitespace() || c == '+')
    {
        return Err(Invalid::Origin);
    }
    Ok(origin.to_string())
}

/// A database URL; a relative SQLite file is relative to `base`.
fn store_url(base: &Path) -> impl FnOnce(&str) -> Result<String, Invalid> {
    move |url| {
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(Invalid::StoreUrl);
        }
        Ok(match url.strip_prefix("sqlite://") {
            Some(rest) if !rest.starts_with('/') && !rest.starts_with(':') => {
                format!("sqlite://{}", base.join(rest).display())
            }
            _ => url.to_string(),
        })
    }
}

impl ConfigFile {
    /// Validates every value and builds the configuration, with relative
    /// paths under `base`; `file` and `text` locate the mistakes.
    fn check(self, base: &Path, file: &Path, text: &str) -> Result<BrokerConfig, ConfigError> {
        let mut mistakes = Mistakes {
            file,
            text,
            found: Vec::new(),
        };
        let config = self.build(base, &mut mistakes);
        let mut problems = mistakes.found;
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                // In the order of the file, as one reads and fixes it.
                problems.sort_by_key(|p| (p.line, p.column));
                Err(ConfigError { problems })
            }
        }
    }

    /// Checks every value (noting each mistake), then builds the
    /// configuration if none was found.
    fn build(self, base: &Path, m: &mut Mistakes) -> Option<BrokerConfig> {
        let Self {
            gateway,
            tls,
            signing,
            policy,
            store,
            router,
            audit,
            admin,
            console,
            cluster,
        } = self;

        let listen = m.check(&gateway.listen, address(DEFAULT_LISTEN));
        let handshake_timeout = m.check(
            &gateway.handshake_timeout_ms,
            positive_ms("handshake_timeout_ms"),
        );
        let connect_timeout = m.check(
            &gateway.connect_timeout_ms,
            positive_ms("connect_timeout_ms"),
        );
        let connection_attempts = m.check(&gateway.connection_attempts_per_minute, |&n: &u32| {
            NonZeroU32::new(n).ok_or(Invalid::TooSmall {
                key: "connection_attempts_per_minute",
                min: 1,
                given: 0,
            })
        });
        let per_agency = m.check(
            &gateway.max_connections_per_agency,
            at_least("max_connections_per_agency", 1),
        );
        let subscriptions = m.check(
            &gateway.max_subscriptions_per_connection,
            at_least("max_subscriptions_per_connection", 1),
        );
        let filters = m.check(
            &gateway.max_filters_per_agency,
            at_least("max_filters_per_agency", 1),
        );
        let signing_key_id = m.check(&signing.key_id, key_id);
        let store_url = match &store.url {
            None => Some(DEV_STORE_URL.to_string()),
            Some(url) => m.check(url, store_url(base)),
        };
        let max_payload_bytes = m.check(
            &router.max_payload_bytes,
            within("max_payload_bytes", 1024..=16 * 1024 * 1024),
        );
        let max_clock_skew_ms = m.check(
            &router.max_clock_skew_ms,
            at_least("max_clock_skew_ms", 1000),
        );
        let batch_max = m.check(&router.batch_max, within("batch_max", 1..=10_000));
        let origin = m.check(&audit.origin, origin);
        let checkpoint_interval = m.check(
            &audit.checkpoint_interval_ms,
            positive_ms("checkpoint_interval_ms"),
        );
        let checkpoint_every_entries = m.check(
            &audit.checkpoint_every_entries,
            at_least("checkpoint_every_entries", 1),
        );
        let retention_interval = m.check(
            &audit.retention_interval_ms,
            positive_ms("retention_interval_ms"),
        );
        let admin_listen = m.check(&admin.listen, optional_address(DEFAULT_ADMIN_LISTEN));
        let console_listen = m.check(&console.listen, optional_address(DEFAULT_CONSOLE_LISTEN));
        let crl_check_interval = m.check(
            &tls.crl_check_interval_ms,
            positive_ms("crl_check_interval_ms"),
        );
        let node = m.check(&cluster.node, node_name);
        let cluster = match node {
            Some(Some(node)) => {
                let state_dir = m.check(&cluster.state_dir, |dir: &str| match dir {
                    "" => Err(Invalid::StateDir),
                    dir => Ok(base.join(dir)),
                });
                let on_postgres = store_url
                    .as_deref()
                    .is_none_or(|url| url.starts_with("postgres"));
                if !on_postgres {
                    m.check(&cluster.node, |_: &str| Err::<(), _>(Invalid::ClusterStore));
                }
                state_dir.map(|state_dir| Some(ClusterSettings { node, state_dir }))
            }
            Some(None) => Some(None),
            None => None,
        };

        let dev_pki = DevPkiLayout::new(base.join(DEV_PKI_DIR));
        let crl = match (&tls.ca, tls.crl) {
            (_, Some(crl)) => Some(base.join(crl)),
            // The development PKI has a CRL; use it when no CA is configured otherwise.
            (None, None) => Some(dev_pki.crl()).filter(|crl| crl.exists()),
            (Some(_), None) => None,
        };
        Some(BrokerConfig {
            listen: listen?,
            tls: TlsFiles {
                ca: tls.ca.map_or_else(|| dev_pki.ca_cert(), |ca| base.join(ca)),
                cert: base.join(tls.cert),
                key: base.join(tls.key),
                crl,
            },
            signing_key: base.join(signing.key),
            signing_key_id: signing_key_id?,
            policy_dir: base.join(policy.dir),
            store_url: store_url?,
            gateway: GatewaySettings {
                handshake_timeout: handshake_timeout?,
                connect_timeout: connect_timeout?,
                packet_limits: inspect::Limits {
                    subscriptions_per_connection: subscriptions?,
                    filters_per_agency: filters?,
                },
                ..GatewaySettings::default()
            },
            connection_attempts_per_minute: connection_attempts?,
            max_connections_per_agency: per_agency?,
            router: RouterSettings {
                max_payload_bytes: max_payload_bytes?,
                max_clock_skew_ms: max_clock_skew_ms?,
                batch_max: batch_max?,
                ..RouterSettings::default()
            },
            mqtt: MqttSettings::default(),
            audit: AuditSettings {
                origin: origin?,
                subject_key: base.join(audit.subject_key),
                checkpoint_interval: checkpoint_interval?,
                checkpoint_every_entries: checkpoint_every_entries?,
                retention_interval: retention_interval?,
            },
            admin_listen: admin_listen?,
            console_listen: console_listen?,
            crl_check_interval: crl_check_interval?,
            cluster: cluster?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys serde accepts for `T`: a deserializer that stops at
    /// `deserialize_struct` and keeps its field list.
    fn keys_of<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
        struct Probe<'a>(&'a mut &'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for Probe<'_> {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(serde::de::Error::custom("probed"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Probe(&mut fields));
        let mut keys = fields.to_vec();
        keys.sort_unstable();
        keys
    }

    /// `samverkan.example.toml` names every setting the parser accepts, each
    /// set to its default: it parses, it has exactly the parser's sections and
    /// keys, and loading it gives the development defaults of its directory.
    #[test]
    fn the_example_documents_every_setting_with_its_default() {
        let sections: Vec<(&str, Vec<&str>)> = vec![
            ("admin", keys_of::<AdminSection>()),
            ("audit", keys_of::<AuditSection>()),
            ("cluster", keys_of::<ClusterSection>()),
            ("console", keys_of::<ConsoleSection>()),
            ("gateway", keys_of::<GatewaySection>()),
            ("policy", keys_of::<PolicySection>()),
            ("router", keys_of::<RouterSection>()),
            ("signing", keys_of::<SigningSection>()),
            ("store", keys_of::<StoreSection>()),
            ("tls", keys_of::<TlsSection>()),
        ];
        let names: Vec<&str> = sections.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            keys_of::<ConfigFile>(),
            names,
            "a section was added to ConfigFile: add it here and to samverkan.example.toml"
        );

        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samverkan.example.toml");
        let text = std::fs::read_to_string(&example).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let mut in_example: Vec<&str> = table.keys().map(String::as_str).collect();
        in_example.sort_unstable();
        assert_eq!(in_example, names, "sections of {}", example.display());
        for (name, keys) in &sections {
            let mut set: Vec<&str> = table[*name]
                .as_table()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            set.sort_unstable();
            assert_eq!(
                &set,
                keys,
                "[{name}] in {} must set every key",
                example.display()
            );
        }

        let loaded = match BrokerConfig::load(&example) {
            Ok(c) => c,
            Err(errors) => panic!("{errors}"),
        };
        let base = example.parent().unwrap();
        let mut defaults = BrokerConfig::development(base);
        // The development store is relative to the working directory.
        assert_eq!(defaults.store_url, "sqlite://samverkan.db");
        defaults.store_url = format!("sqlite://{}", base.join("samverkan.db").display());
        assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn the_compose_configurations_load() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        for (file, node) in [("node-a.toml", "node-a"), ("node-b.toml", "node-b")] {
            let file = deploy.join(file);
            let config = match BrokerConfig::load(&file) {
                Ok(c) => c,
                Err(errors) => panic!("{errors}"),
            };
            assert_eq!(
                config.store_url,
                "postgres://samverkan@db1:5432,db2:5432/samverkan"
            );
            assert_eq!(config.tls.ca, deploy.join("certs/ca.pem"));
            assert_eq!(config.tls.crl, Some(deploy.join("certs/crl.pem")));
            let cluster = config.cluster.expect("a cluster node");
            assert_eq!(cluster.node, node);
            assert_eq!(cluster.state_dir, Path::new("/var/lib/samverkan/state"));
        }
    }

    #[test]
    fn a_cluster_node_needs_a_name_a_state_directory_and_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("samverkan.toml");
        let url = "[store]\nurl = \"postgres://s@db1:5432,db2:5432/samverkan\"\n";
        std::fs::write(
            &file,
            format!("{url}[cluster]\nnode = \"node-a\"\nstate_dir = \"state/a\"\n"),
        )
        .unwrap();
        let config = BrokerConfig::load(&file).unwrap();
        assert_eq!(
            config.cluster,
            Some(ClusterSettings {
                node: "node-a".into(),
                state_dir: dir.path().join("state/a"),
            })
        );
        assert_eq!(BrokerConfig::development(dir.path()).cluster, None);

        let mistakes = |text: &str| -> Vec<String> {
            std::fs::write(&file, text).unwrap();
            BrokerConfig::load(&file)
                .unwrap_err()
                .problems
                .iter()
                .map(|e| e.to_string())
                .collect()
        };
        let found = mistakes(&format!("{url}[cluster]\nnode = \"node a\"\n"));
        assert!(
            found[0].contains("samverkan.toml:4:") && found[0].contains("node must be"),
            "{found:?}"
        );
        let found = mistakes(&format!("{url}[cluster]\nnode = \"node-a\"\n"));
        assert!(found[0].contains("state_dir must be set"), "{found:?}");
        let found = mistakes("[cluster]\nnode = \"node-a\"\nstate_dir = \"s\"\n");
        assert!(
            found[0].contains("samverkan.toml:2:") && found[0].contains("SQLite cannot be shared"),
            "{found:?}"
        );
    }

    #[test]
    fn defaults_and_mistakes() {
        let dev = BrokerConfig::development(Path::new("/srv"));
        assert_eq!(dev.listen.port(), 8883);
        assert_eq!(dev.policy_dir, Path::new("/srv/policies"));
        assert_eq!(dev.store_url, "sqlite://samverkan.db");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("samverkan.toml");
        std::fs::write(&file, "[gateway]\nlisten = \"localhost\"\n\n[router]\nbatch_max = 0\n[store]\nurl = \"sqlite://data/s.db\"\n").unwrap();
        let errors = BrokerConfig::load(&file).unwrap_err().problems;
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(text[0].contains("samverkan.toml:2:"), "{text:?}");
        assert!(text[1].contains("samverkan.toml:5:"), "{text:?}");

        std::fs::write(
            &file,
            "[store]\nurl = \"sqlite://data/s.db\"\n[tls]\nca = \"pki/ca.pem\"\n",
        )
        .unwrap();
        let config = BrokerConfig::load(&file).unwrap();
        assert_eq!(config.tls.ca, dir.path().join("pki/ca.pem"));
        assert_eq!(
            config.store_url,
            format!("sqlite://{}", dir.path().join("data/s.db").display())
        );

        std::fs::write(
            &file,
            "[gateway]\nmax_subscriptions_per_connection = 4\nmax_filters_per_agency = 0\n",
        )
        .unwrap();
        let errors = BrokerConfig::load(&file).unwrap_err().problems;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("samverkan.toml:3:")
                && errors[0]
                    .to_string()
                    .contains("max_filters_per_agency must be at least 1"),
            "{errors:?}"
        );
        std::fs::write(&file, "[gateway]\nmax_subscriptions_per_connection = 4\n").unwrap();
        let config = BrokerConfig::load(&file).unwrap();
        assert_eq!(config.gateway.packet_limits.subscriptions_per_connection, 4);
        assert_eq!(config.gateway.packet_limits.filters_per_agency, 32);

        std::fs::write(&file, "[gateway]\nlisen = \"x\"\n").unwrap();
        let errors = BrokerConfig::load(&file).unwrap_err().problems;
        assert!(
            errors[0].to_string().contains("unknown field `lisen`"),
            "{errors:?}"
        );
    }

    /// Loads `text` as `samverkan.toml` in a new directory; the mistakes
    /// found, displayed, with the file's path.
    fn mistakes_in(text: &str) -> (Vec<String>, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("samverkan.toml");
        std::fs::write(&file, text).unwrap();
        let error = BrokerConfig::load(&file).unwrap_err();
        let shown = error.problems.iter().map(ToString::to_string).collect();
        (shown, file, dir)
    }

    #[test]
    fn an_unknown_key_is_refused_at_its_line_with_the_known_ones() {
        let (errors, file, _dir) = mistakes_in("[router]\nbatch_max = 64\nmax_batch = 64\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let at = format!("{}:3:", file.display());
        assert!(errors[0].starts_with(&at), "{errors:?} not at {at}");
        assert!(
            errors[0].contains("unknown field `max_batch`"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("batch_max"),
            "names the keys it knows: {errors:?}"
        );

        let (errors, file, _dir) = mistakes_in("[gateway]\nlisten = \"127.0.0.1:1\"\n\n[routre]\n");
        assert!(
            errors[0].starts_with(&format!("{}:4:", file.display())),
            "{errors:?}"
        );
        assert!(errors[0].contains("unknown field `routre`"), "{errors:?}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_at_its_line() {
        let (errors, file, _dir) =
            mistakes_in("[audit]\norigin = \"x/audit\"\ncheckpoint_interval_ms = \"500\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!("{}:3:", file.display())),
            "{errors:?}"
        );
        assert!(errors[0].contains("invalid type: string"), "{errors:?}");

        let (errors, file, _dir) = mistakes_in("[tls]\nca = 7\n");
        assert!(
            errors[0].starts_with(&format!("{}:2:", file.display())),
            "{errors:?}"
        );
        assert!(errors[0].contains("invalid type: integer"), "{errors:?}");

        // Negative where only counts make sense.
        let (errors, file, _dir) = mistakes_in("\n[gateway]\nmax_connections_per_agency = -1\n");
        assert!(
            errors[0].starts_with(&format!("{}:3:", file.display())),
            "{errors:?}"
        );
    }

    #[test]
    fn values_out_of_range_are_all_reported_in_file_order_with_their_lines() {
        let (errors, file, _dir) = mistakes_in(
            "[router]\nmax_payload_bytes = 512\nmax_clock_skew_ms = 10\n\n\
             [gateway]\nhandshake_timeout_ms = 0\nconnection_attempts_per_minute = 0\n\n\
             [audit]\norigin = \"my log\"\ncheckpoint_every_entries = 0\n\n\
             [console]\nlisten = \"localhost:9443\"\n\n\
             [signing]\nkey_id = \"broker key\"\n",
        );
        let file = file.display().to_string();
        let expected = [
            (
                2,
                "max_payload_bytes must be between 1024 and 16777216, not 512",
            ),
            (3, "max_clock_skew_ms must be at least 1000, not 10"),
            (6, "handshake_timeout_ms must be more than 0"),
            (7, "connection_attempts_per_minute must be at least 1"),
            (10, "origin must be non-empty ASCII without spaces or `+`"),
            (11, "checkpoint_every_entries must be at least 1"),
            (
                14,
                "listen: `localhost:9443` is not an address like 127.0.0.1:9443 (or \"off\")",
            ),
            (17, "key_id: "),
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, (line, message)) in errors.iter().zip(expected) {
            assert!(
                error.starts_with(&format!("{file}:{line}:")),
                "{error} is not at line {line}"
            );
            assert!(error.contains(message), "{error} lacks {message}");
        }
    }

    #[test]
    fn the_error_shows_every_mistake_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("samverkan.toml");
        std::fs::write(
            &file,
            "[router]\nbatch_max = 0\n[store]\nurl = \"mysql://x\"\n",
        )
        .unwrap();
        let shown = BrokerConfig::load(&file).unwrap_err().to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 2, "{shown}");
        assert!(
            lines[0].contains("samverkan.toml:2:") && lines[0].contains("batch_max"),
            "{shown}"
        );
        assert!(
            lines[1].contains("samverkan.toml:4:") && lines[1].contains("sqlite:// or postgres://"),
            "{shown}"
        );

        let missing = dir.path().join("missing.toml");
        let shown = BrokerConfig::load(&missing).unwrap_err().to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read:", missing.display())),
            "{shown}"
        );
    }

    /// The settings a run-time module owns have their defaults there only:
    /// the file's defaults are read from it.
    #[test]
    fn defaults_owned_by_the_pipeline_and_the_gateway_come_from_them() {
        let dev = BrokerConfig::development(Path::new("/srv"));
        let router = RouterSettings::default();
        assert_eq!(dev.router.max_payload_bytes, router.max_payload_bytes);
        assert_eq!(dev.router.max_clock_skew_ms, router.max_clock_skew_ms);
        assert_eq!(dev.router.batch_max, router.batch_max);
        assert_eq!(dev.router.replay_limit, router.replay_limit);
        let gateway = GatewaySettings::default();
        assert_eq!(dev.gateway.handshake_timeout, gateway.handshake_timeout);
        assert_eq!(dev.gateway.connect_timeout, gateway.connect_timeout);
        assert_eq!(dev.gateway.packet_limits, gateway.packet_limits);
        assert_eq!(dev.signing_key_id, DevPkiLayout::broker_key_id());
        assert_eq!(dev.admin_listen, Some(DEFAULT_ADMIN_LISTEN));
        assert_eq!(dev.tls.ca, Path::new("/srv/certs-dev/ca.pem"));
    }
}
