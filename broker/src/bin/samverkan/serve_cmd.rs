//! `samverkan serve`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use samverkan_broker::config::{BrokerConfig, DEV_PKI_DIR};
use samverkan_broker::pki::{self, DevPkiLayout};
use samverkan_broker::server::{Broker, redact_url};
use tokio::net::TcpListener;

/// Shown after the options in `samverkan serve --help`.
pub const AFTER_HELP: &str = "Every setting of the configuration file, with its default and why, is in samverkan.example.toml at the root of the source repository. Relative paths in a configuration file resolve against the file's directory, not the working directory; a relative sqlite:// path given with --store resolves against the working directory.";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A configuration file (TOML; every setting is optional, see samverkan.example.toml).
    /// Relative paths in it resolve against its directory.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the public listen address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Override the database URL (sqlite://FILE or postgres://…).
    #[arg(long)]
    pub store: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Only load and check the configuration file: print one line when it
    /// is valid, or every mistake with its file and line, and exit 0 or 1
    /// without opening the database, reading the keys or listening.
    #[arg(long, requires = "config")]
    pub check_config: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            // rumqttd reports every ordinary disconnect as an error; its
            // other warnings (such as a lagging subscriber) stay visible.
            "info,rumqttd=warn,rumqttd::server::broker=off",
        )
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    if args.check_config {
        return Ok(check_config(&args));
    }
    init_logging(args.log_format);
    let mut config = match &args.config {
        Some(path) => match BrokerConfig::load(path) {
            Ok(c) => c,
            Err(mistakes) => {
                eprintln!("{mistakes}");
                return Ok(ExitCode::FAILURE);
            }
        },
        None => development_config()?,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = args.store {
        config.store_url = url;
    }
    println!("Samverkan broker");
    println!(
        "  listening    mqtts://{} (MQTT 3.1.1 and 5, client certificate required)",
        config.listen
    );
    println!("  policy       {}", config.policy_dir.display());
    println!("  store        {}", redact_url(&config.store_url));
    println!("  federation CA {}", config.tls.ca.display());
    println!("  server cert  {}", config.tls.cert.display());
    println!(
        "  signing key  {} ({})",
        config.signing_key.display(),
        config.signing_key_id
    );
    if let Some(crl) = &config.tls.crl {
        println!("  CRL          {}", crl.display());
    }
    match config.admin_listen {
        Some(addr) => println!(
            "  admin        http://{addr}/health, /metrics, POST /admin/reload (or SIGHUP)"
        ),
        None => println!("  admin        off (reload with SIGHUP)"),
    }
    match config.console_listen {
        Some(addr) => println!(
            "  console      https://{}/ (auditors: client certificate with OU=samverkan-auditor or OU=samverkan-supervisor)",
            console_host(addr)
        ),
        None => println!("  console      off"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let mut broker = match Broker::start(config, listener).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: the broker did not start: {e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        let stopped = loop {
            tokio::select! {
                _ = shutdown_signal() => break None,
                _ = reload_signal() => {
                    let report = broker.reload().await;
                    tracing::info!(policy = %report.policy.message, tls = %report.tls.message, "reload (SIGHUP)");
                }
                r = broker.wait() => break Some(r),
            }
        };
        match stopped {
            None => {
                broker.shutdown().await;
                Ok(ExitCode::SUCCESS)
            }
            Some(r) => {
                eprintln!("error: the router stopped: {r:?}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// `--check-config`: loads the file as `serve` would, with the command
/// line's overrides, and reports.
fn check_config(args: &ServeArgs) -> ExitCode {
    let Some(path) = &args.config else {
        // clap requires --config with --check-config.
        eprintln!("error: --check-config needs --config FILE");
        return ExitCode::FAILURE;
    };
    match checked(path, args.listen, args.store.as_deref()) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(mistakes) => {
            eprintln!("{mistakes}");
            ExitCode::FAILURE
        }
    }
}

/// The one-line summary of a valid configuration file, or its mistakes
/// (one per line, each with file and line).
fn checked(
    path: &Path,
    listen: Option<SocketAddr>,
    store: Option<&str>,
) -> Result<String, samverkan_broker::config::ConfigError> {
    let mut config = BrokerConfig::load(path)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(url) = store {
        config.store_url = url.to_string();
    }
    let off = |addr: Option<SocketAddr>| addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    let node = config.cluster.as_ref().map_or_else(
        || "single broker".to_string(),
        |c| format!("node {}", c.node),
    );
    Ok(format!(
        "OK {}: {node}, listen {}, store {}, admin {}, console {}, CRL {}",
        path.display(),
        config.listen,
        shown_url(&config.store_url),
        off(config.admin_listen),
        off(config.console_listen),
        config
            .tls
            .crl
            .as_ref()
            .map_or_else(|| "none".to_string(), |crl| crl.display().to_string()),
    ))
}

/// The URL as shown: its password, if it has one, replaced by `***`.
fn shown_url(url: &str) -> String {
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo);
    match userinfo {
        Some(userinfo) if userinfo.contains(':') => redact_url(url),
        _ => url.to_string(),
    }
}

/// The console's address as a browser should open it: `localhost` for
/// loopback (the development server certificate names it).
fn console_host(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// The development defaults in the working directory, generating the
/// development PKI first if it is missing.
fn development_config() -> Result<BrokerConfig> {
    let root = Path::new(".");
    let config = BrokerConfig::development(root);
    let agencies = samverkan_broker::policy::agency_ids(&config.policy_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let layout = DevPkiLayout::new(DEV_PKI_DIR);
    if !layout.is_complete(&agencies) {
        println!(
            "No complete development PKI in {DEV_PKI_DIR}/: generating one (DEVELOPMENT ONLY)"
        );
        pki::generate_dev(Path::new(DEV_PKI_DIR), &config.policy_dir)?;
    } else {
        // A PKI made before the console existed gets its auditor certificates.
        let issued = pki::add_console_certs(Path::new(DEV_PKI_DIR), &agencies)?;
        if issued > 0 {
            println!(
                "Issued {issued} auditor console certificate(s) in {DEV_PKI_DIR}/ (DEVELOPMENT ONLY)"
            );
        }
    }
    Ok(config)
}

/// Resolves on SIGHUP (never elsewhere).
async fn reload_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            hup.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration shipped for the containers (compose.yaml) is valid.
    #[test]
    fn the_container_configurations_pass_the_check() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let mut nodes = Vec::new();
        for entry in std::fs::read_dir(&deploy).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let summary = checked(&path, None, None).unwrap_or_else(|e| panic!("{e}"));
                assert!(summary.starts_with("OK "), "{summary}");
                assert!(!summary.contains('\n'), "one line: {summary}");
                let config = BrokerConfig::load(&path).unwrap();
                assert!(config.tls.crl.is_some(), "{}: no CRL", path.display());
                nodes.extend(config.cluster.map(|c| c.node));
            }
        }
        nodes.sort();
        assert_eq!(nodes, ["node-a", "node-b"]);
    }

    #[test]
    fn the_check_shows_overrides_and_hides_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("samverkan.toml");
        std::fs::write(
            &file,
            "[store]\nurl = \"postgres://svk:secret@db1:5432,db2:5432/svk\"\n\n[admin]\nlisten = \"off\"\n\n[cluster]\nnode = \"n1\"\nstate_dir = \"state\"\n",
        )
        .unwrap();
        let summary = checked(&file, Some("127.0.0.1:1884".parse().unwrap()), None).unwrap();
        assert!(summary.contains("node n1"), "{summary}");
        assert!(summary.contains("listen 127.0.0.1:1884"), "{summary}");
        assert!(
            summary.contains("svk:***@db1:5432,db2:5432/svk"),
            "{summary}"
        );
        assert!(!summary.contains("secret"), "{summary}");
        assert!(summary.contains("admin off"), "{summary}");
        let summary = checked(&file, None, Some("postgres://svk@db/svk")).unwrap();
        assert!(
            summary.contains("store postgres://svk@db/svk,"),
            "{summary}"
        );
    }

    #[test]
    fn the_check_reports_every_mistake_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("samverkan.toml");
        std::fs::write(
            &file,
            "[router]\nbatch_max = 0\n\n[cluster]\nnode = \"node a\"\n",
        )
        .unwrap();
        let shown = checked(&file, None, None).unwrap_err().to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 2, "{shown}");
        assert!(
            lines[0].starts_with(&format!("{}:2:", file.display())),
            "{shown}"
        );
        assert!(
            lines[1].starts_with(&format!("{}:5:", file.display())),
            "{shown}"
        );
    }
}
