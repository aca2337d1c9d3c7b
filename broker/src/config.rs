//! The broker's configuration: a TOML file of plain values (every setting
//! optional, with development defaults), checked into a [`BrokerConfig`].
//!
//! Relative paths in a file are relative to the file's directory; the
//! development defaults are relative to the working directory.
//!
//! `samverkan.example.toml` at the repository root sets every setting to its
//! default and says why; a test below fails when a setting is added to the
//! parser without it, or when its value there is not the default.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use samverkan_sdk::names;
use samverkan_sdk::source::SourceError;
use serde::Deserialize;
use toml::Spanned;

use crate::gateway::{GatewaySettings, TlsFiles};
use crate::mqtt::MqttSettings;
use crate::router::RouterSettings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    gateway: RawGateway,
    tls: RawTls,
    signing: RawSigning,
    policy: RawPolicy,
    store: RawStore,
    router: RawRouter,
    audit: RawAudit,
    admin: RawAdmin,
    console: RawConsole,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConsole {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    origin: Option<Spanned<String>>,
    subject_key: Option<String>,
    checkpoint_interval_ms: Option<Spanned<u64>>,
    checkpoint_every_entries: Option<Spanned<u64>>,
    retention_interval_ms: Option<Spanned<u64>>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGateway {
    listen: Option<Spanned<String>>,
    handshake_timeout_ms: Option<Spanned<u64>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    max_connections_per_agency: Option<Spanned<u64>>,
    connection_attempts_per_minute: Option<Spanned<u32>>,
    max_subscriptions_per_connection: Option<Spanned<u64>>,
    max_filters_per_agency: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    crl: Option<String>,
    crl_check_interval_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSigning {
    key: Option<String>,
    key_id: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    url: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouter {
    max_payload_bytes: Option<Spanned<u64>>,
    max_clock_skew_ms: Option<Spanned<u64>>,
    batch_max: Option<Spanned<u64>>,
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
}

/// The development PKI directory, relative to the working directory.
pub const DEV_PKI_DIR: &str = "certs-dev";

impl BrokerConfig {
    /// The development defaults, with paths under `root`.
    pub fn development(root: &Path) -> Self {
        Self::from_raw(RawConfig::default(), root, Path::new("(defaults)"), "")
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// Reads a configuration file; every mistake names the file and line.
    pub fn load(path: &Path) -> Result<Self, Vec<SourceError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![SourceError::file(path, format!("cannot read: {e}"))])?;
        let raw: RawConfig =
            toml::from_str(&text).map_err(|e| vec![SourceError::from_toml(path, &text, &e)])?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_raw(raw, base, path, &text)
    }

    fn from_raw(
        raw: RawConfig,
        base: &Path,
        file: &Path,
        text: &str,
    ) -> Result<Self, Vec<SourceError>> {
        let mut errors = Vec::new();
        let mut err =
            |offset: usize, msg: String| errors.push(SourceError::at(file, text, offset, msg));
        let path =
            |p: Option<String>, default: &str| base.join(p.unwrap_or_else(|| default.to_string()));

        let listen = match &raw.gateway.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 8883)),
            Some(s) => s.get_ref().parse().unwrap_or_else(|_| {
                err(
                    s.span().start,
                    format!(
                        "listen: `{}` is not an address like 127.0.0.1:8883",
                        s.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 8883))
            }),
        };
        let millis = |v: &Option<Spanned<u64>>,
                      default: u64,
                      what: &str,
                      err: &mut dyn FnMut(usize, String)| {
            match v {
                None => Duration::from_millis(default),
                Some(s) if *s.get_ref() == 0 => {
                    err(s.span().start, format!("{what} must be more than 0"));
                    Duration::from_millis(default)
                }
                Some(s) => Duration::from_millis(*s.get_ref()),
            }
        };
        let handshake_timeout = millis(
            &raw.gateway.handshake_timeout_ms,
            10_000,
            "handshake_timeout_ms",
            &mut err,
        );
        let connect_timeout = millis(
            &raw.gateway.connect_timeout_ms,
            10_000,
            "connect_timeout_ms",
            &mut err,
        );
        let attempts = match &raw.gateway.connection_attempts_per_minute {
            None => NonZeroU32::new(600).unwrap_or(NonZeroU32::MIN),
            Some(s) => NonZeroU32::new(*s.get_ref()).unwrap_or_else(|| {
                err(
                    s.span().start,
                    "connection_attempts_per_minute must be at least 1".into(),
                );
                NonZeroU32::MIN
            }),
        };
        let mut at_least_one =
            |value: &Option<Spanned<u64>>, default: usize, name: &str| match value {
                None => default,
                Some(s) if *s.get_ref() == 0 => {
                    err(s.span().start, format!("{name} must be at least 1"));
                    1
                }
                Some(s) => usize::try_from(*s.get_ref()).unwrap_or(usize::MAX),
            };
        let per_agency = at_least_one(
            &raw.gateway.max_connections_per_agency,
            256,
            "max_connections_per_agency",
        );
        let packet_defaults = crate::inspect::Limits::default();
        let packet_limits = crate::inspect::Limits {
            subscriptions_per_connection: at_least_one(
                &raw.gateway.max_subscriptions_per_connection,
                packet_defaults.subscriptions_per_connection,
                "max_subscriptions_per_connection",
            ),
            filters_per_agency: at_least_one(
                &raw.gateway.max_filters_per_agency,
                packet_defaults.filters_per_agency,
                "max_filters_per_agency",
            ),
        };
        let key_id = match raw.signing.key_id {
            None => "broker-dev-1".to_string(),
            Some(s) => {
                if let Err(e) = names::validate_key_id(s.get_ref()) {
                    err(s.span().start, format!("key_id: {e}"));
                }
                s.into_inner()
            }
        };
        let store_url = match raw.store.url {
            None => "sqlite://samverkan.db".to_string(),
            Some(s) => {
                let url = s.get_ref();
                if !(url.starts_with("sqlite:")
                    || url.starts_with("postgres://")
                    || url.starts_with("postgresql://"))
                {
                    err(
                        s.span().start,
                        "url must start with sqlite:// or postgres://".into(),
                    );
                }
                // A relative SQLite file is relative to the configuration file.
                match url.strip_prefix("sqlite://") {
                    Some(rest) if !rest.starts_with('/') && !rest.starts_with(':') => {
                        format!("sqlite://{}", base.join(rest).display())
                    }
                    _ => url.clone(),
                }
            }
        };
        let mut router = RouterSettings::default();
        if let Some(s) = &raw.router.max_payload_bytes {
            match usize::try_from(*s.get_ref()) {
                Ok(n) if (1024..=16 * 1024 * 1024).contains(&n) => router.max_payload_bytes = n,
                _ => err(
                    s.span().start,
                    "max_payload_bytes must be between 1024 and 16777216".into(),
                ),
            }
        }
        if let Some(s) = &raw.router.max_clock_skew_ms {
            match i64::try_from(*s.get_ref()) {
                Ok(n) if n >= 1000 => router.max_clock_skew_ms = n,
                _ => err(
                    s.span().start,
                    "max_clock_skew_ms must be at least 1000".into(),
                ),
            }
        }
        if let Some(s) = &raw.router.batch_max {
            match usize::try_from(*s.get_ref()) {
                Ok(n) if (1..=10_000).contains(&n) => router.batch_max = n,
                _ => err(
                    s.span().start,
                    "batch_max must be between 1 and 10000".into(),
                ),
            }
        }
        let origin = match raw.audit.origin {
            None => "samverkan-dev/audit".to_string(),
            Some(s) => {
                let o = s.get_ref();
                if o.is_empty() || o.chars().any(|c| c.is_whitespace() || c == '+') || !o.is_ascii()
                {
                    err(s.span().start, "origin must be non-empty ASCII without spaces or `+`, e.g. \"samverkan.example.se/audit\"".into());
                }
                s.into_inner()
            }
        };
        let checkpoint_interval = millis(
            &raw.audit.checkpoint_interval_ms,
            500,
            "checkpoint_interval_ms",
            &mut err,
        );
        let retention_interval = millis(
            &raw.audit.retention_interval_ms,
            3_600_000,
            "retention_interval_ms",
            &mut err,
        );
        let checkpoint_every_entries = match &raw.audit.checkpoint_every_entries {
            None => 1000,
            Some(s) if *s.get_ref() == 0 => {
                err(
                    s.span().start,
                    "checkpoint_every_entries must be at least 1".into(),
                );
                1
            }
            Some(s) => *s.get_ref(),
        };
        let admin_listen = match &raw.admin.listen {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9883))),
            Some(s) if s.get_ref().is_empty() || s.get_ref() == "off" => None,
            Some(s) => Some(s.get_ref().parse().unwrap_or_else(|_| {
                err(
                    s.span().start,
                    format!(
                        "listen: `{}` is not an address like 127.0.0.1:9883 (or \"off\")",
                        s.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 9883))
            })),
        };
        let console_listen = match &raw.console.listen {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9443))),
            Some(s) if s.get_ref().is_empty() || s.get_ref() == "off" => None,
            Some(s) => Some(s.get_ref().parse().unwrap_or_else(|_| {
                err(
                    s.span().start,
                    format!(
                        "listen: `{}` is not an address like 127.0.0.1:9443 (or \"off\")",
                        s.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 9443))
            })),
        };
        let crl_check_interval = millis(
            &raw.tls.crl_check_interval_ms,
            5_000,
            "crl_check_interval_ms",
            &mut err,
        );
        let default_ca = raw.tls.ca.is_none();
        let config = BrokerConfig {
            listen,
            tls: TlsFiles {
                ca: path(raw.tls.ca, "certs-dev/ca.pem"),
                cert: path(raw.tls.cert, "certs-dev/broker.pem"),
                key: path(raw.tls.key, "certs-dev/broker.key"),
                // The development PKI has a CRL; use it when no CA is configured otherwise.
                crl: match (raw.tls.crl, default_ca) {
                    (Some(c), _) => Some(base.join(c)),
                    (None, true) if base.join("certs-dev/crl.pem").exists() => {
                        Some(base.join("certs-dev/crl.pem"))
                    }
                    (None, _) => None,
                },
            },
            signing_key: path(raw.signing.key, "certs-dev/broker-signing.key"),
            signing_key_id: key_id,
            policy_dir: path(raw.policy.dir, "policies"),
            store_url,
            gateway: GatewaySettings {
                handshake_timeout,
                connect_timeout,
                packet_limits,
                ..GatewaySettings::default()
            },
            connection_attempts_per_minute: attempts,
            max_connections_per_agency: per_agency,
            router,
            mqtt: MqttSettings::default(),
            audit: AuditSettings {
                origin,
                subject_key: path(raw.audit.subject_key, "certs-dev/subject-hash.key"),
                checkpoint_interval,
                checkpoint_every_entries,
                retention_interval,
            },
            admin_listen,
            console_listen,
            crl_check_interval,
        };
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
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
            ("admin", keys_of::<RawAdmin>()),
            ("audit", keys_of::<RawAudit>()),
            ("console", keys_of::<RawConsole>()),
            ("gateway", keys_of::<RawGateway>()),
            ("policy", keys_of::<RawPolicy>()),
            ("router", keys_of::<RawRouter>()),
            ("signing", keys_of::<RawSigning>()),
            ("store", keys_of::<RawStore>()),
            ("tls", keys_of::<RawTls>()),
        ];
        let names: Vec<&str> = sections.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            keys_of::<RawConfig>(),
            names,
            "a section was added to RawConfig: add it here and to samverkan.example.toml"
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
            Err(errors) => panic!("{errors:?}"),
        };
        let base = example.parent().unwrap();
        let mut defaults = BrokerConfig::development(base);
        // The development store is relative to the working directory.
        assert_eq!(defaults.store_url, "sqlite://samverkan.db");
        defaults.store_url = format!("sqlite://{}", base.join("samverkan.db").display());
        assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn the_compose_configuration_loads() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/samverkan.toml");
        let config = match BrokerConfig::load(&file) {
            Ok(c) => c,
            Err(errors) => panic!("{errors:?}"),
        };
        assert!(config.store_url.starts_with("postgres://"));
        assert_eq!(config.tls.ca, file.parent().unwrap().join("certs/ca.pem"));
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
        let errors = BrokerConfig::load(&file).unwrap_err();
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
        let errors = BrokerConfig::load(&file).unwrap_err();
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
        let errors = BrokerConfig::load(&file).unwrap_err();
        assert!(
            errors[0].to_string().contains("unknown field `lisen`"),
            "{errors:?}"
        );
    }
}
