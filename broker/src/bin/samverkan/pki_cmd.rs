//! `samverkan pki …`

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use samverkan_broker::pki;

pub fn dev(out: &Path, policies: &Path, force: bool) -> Result<ExitCode> {
    if out.join("ca.pem").exists() && !force {
        bail!(
            "{} already holds a PKI (ca.pem exists); pass --force to replace it (this also rewrites {})",
            out.display(),
            policies.join("keys.toml").display()
        );
    }
    let report = pki::generate_dev(out, policies)?;
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
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(dir: &Path, certificate: &Path) -> Result<ExitCode> {
    let serial = pki::revoke_dev(dir, certificate)?;
    println!(
        "revoked {} (serial {serial}); {} now lists it. A running broker closes its connections within its CRL check interval, or at once on SIGHUP / `samverkan admin reload`.",
        certificate.display(),
        dir.join("crl.pem").display()
    );
    Ok(ExitCode::SUCCESS)
}
