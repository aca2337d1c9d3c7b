//! `samverkan pki …`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use samverkan_broker::config::{DEV_PKI_DIR, DEV_POLICY_DIR};
use samverkan_broker::pki;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Revoke a certificate of the DEVELOPMENT PKI: add it to crl.pem (a running broker reloads it).
    Revoke(RevokeArgs),
    /// Create a DEVELOPMENT PKI: CA, agency client certificates, broker certificate, signing keys.
    Dev(DevArgs),
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The certificate to revoke (PEM), e.g. certs-dev/linkoping/client.pem.
    pub certificate: PathBuf,
    /// The development PKI directory.
    #[arg(long, default_value = DEV_PKI_DIR)]
    pub dir: PathBuf,
}

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where to write certificates and keys.
    #[arg(long, default_value = DEV_PKI_DIR)]
    pub out: PathBuf,
    /// The policy set whose agencies get certificates (default: policies);
    /// given, its keys.toml is rewritten with their new public keys.
    /// Without it, policies/keys.toml is rewritten only for --out certs-dev
    /// (the development layout); any other --out gets the public keys in
    /// OUT/keys.toml, beside their private halves.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Overwrite an existing PKI in --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: PkiCommand) -> Result<ExitCode> {
    match command {
        PkiCommand::Revoke(args) => revoke(&args),
        PkiCommand::Dev(args) => dev(&args),
    }
}

/// Where the agencies' new public signing keys go: into the policy set's
/// `keys.toml` when `--policies` names it, or when the PKI is the
/// development one (`certs-dev/`, beside `policies/`, the layout
/// `samverkan serve` uses by default); otherwise into `OUT/keys.toml`, beside
/// their private halves, so a PKI made elsewhere never leaves the policy set
/// with keys whose private halves are not in `certs-dev/`.
fn keys_file(out: &Path, policies: Option<&Path>) -> Result<(PathBuf, bool)> {
    if let Some(dir) = policies {
        return Ok((dir.join("keys.toml"), true));
    }
    let absolute = |p: &Path| {
        std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
    };
    if absolute(out)? == absolute(Path::new(DEV_PKI_DIR))? {
        Ok((Path::new(DEV_POLICY_DIR).join("keys.toml"), true))
    } else {
        Ok((out.join("keys.toml"), false))
    }
}

fn dev(args: &DevArgs) -> Result<ExitCode> {
    let out = &args.out;
    let (keys_file, into_policy_set) = keys_file(out, args.policies.as_deref())?;
    let policies = args
        .policies
        .as_deref()
        .unwrap_or(Path::new(DEV_POLICY_DIR));
    if out.join("ca.pem").exists() && !args.force {
        bail!(
            "{} already holds a PKI (ca.pem exists); pass --force to replace it (this also rewrites {})",
            out.display(),
            keys_file.display()
        );
    }
    let report = pki::generate_dev_with_keys_file(out, policies, &keys_file)?;
    println!(
        "DEVELOPMENT PKI written to {} (not for production)",
        report.dir.display()
    );
    println!("  federation CA      {}", out.join("ca.pem").display());
    println!(
        "  broker certificate {} (localhost, 127.0.0.1)",
        out.join("broker.pem").display()
    );
    println!(
        "  broker signing key {}",
        out.join("broker-signing.key").display()
    );
    for agency in &report.agencies {
        println!(
            "  {agency:<18} {}/{{client.pem,client.key,signing.key,signing.pub}}",
            out.join(agency).display()
        );
    }
    println!(
        "  agency public signing keys written to {}",
        report.keys_file.display()
    );
    if !into_policy_set {
        println!(
            "  {} was only read: it belongs to {DEV_PKI_DIR}/. To use this PKI, put {} into a policy set (or run again with --policies DIR).",
            policies.display(),
            report.keys_file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: &RevokeArgs) -> Result<ExitCode> {
    let RevokeArgs { certificate, dir } = args;
    let serial = pki::revoke_dev(dir, certificate)?;
    println!(
        "revoked {} (serial {serial}); {} now lists it. A running broker closes its connections within its CRL check interval, or at once on SIGHUP / `samverkan admin reload`.",
        certificate.display(),
        dir.join("crl.pem").display()
    );
    Ok(ExitCode::SUCCESS)
}
