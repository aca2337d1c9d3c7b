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
