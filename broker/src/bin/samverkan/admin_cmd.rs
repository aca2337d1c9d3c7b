//! `samverkan admin …`: talk to a running broker's admin endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use samverkan_broker::config::DEFAULT_ADMIN_LISTEN;

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The broker's admin endpoint ([admin] listen in its configuration file).
    #[arg(long, default_value_t = DEFAULT_ADMIN_LISTEN, global = true)]
    pub admin: SocketAddr,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Re-read the policy set and the TLS files (like SIGHUP); exit 1 if either was refused.
    Reload,
    /// Print the broker's health; exit 1 unless it is healthy.
    Health,
}

pub fn run(args: AdminArgs) -> Result<ExitCode> {
    let (method, path) = match args.command {
        AdminCommand::Reload => ("POST", "/admin/reload"),
        AdminCommand::Health => ("GET", "/health"),
    };
    let (status, body) = request(args.admin, method, path)?;
    println!("{body}");
    Ok(if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sends one HTTP/1.1 request and returns (status, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("no broker admin endpoint at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP response")?;
    Ok((status, body.to_string()))
}
