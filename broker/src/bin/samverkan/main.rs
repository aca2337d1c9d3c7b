//! `samverkan`: the broker and its tools in one binary.
//!
//! Each subcommand's arguments are a clap struct in its own module, next to
//! the code that runs it; this file only names the subcommands and hands
//! each its parsed arguments.

mod admin_cmd;
mod audit_cmd;
mod pki_cmd;
mod policy_cmd;
mod serve_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Samverkan: policy-filtered, signed and audited alert sharing between
/// Swedish authorities over MQTT.
#[derive(Parser)]
#[command(name = "samverkan", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Without --config: development defaults in the working
    /// directory (policies/, certs-dev/ generated if missing, samverkan.db).
    #[command(after_help = serve_cmd::AFTER_HELP)]
    Serve(serve_cmd::ServeArgs),
    /// Inspect a policy set before it is deployed.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// The audit log, for legal staff: verify, query, prove, subject lookup.
    Audit(audit_cmd::AuditArgs),
    /// Talk to a running broker: reload its policy and CRL, or ask its health.
    Admin(admin_cmd::AdminArgs),
    /// Certificates and signing keys.
    #[command(subcommand)]
    Pki(pki_cmd::PkiCommand),
}

fn main() -> ExitCode {
    // `samverkan … | head -1`: end quietly, as Unix tools do, once the reader has gone.
    samverkan_sdk::closed_output::end_quietly_when_closed();
    let result = match Cli::parse().command {
        Command::Serve(args) => serve_cmd::run(args),
        Command::Policy(command) => policy_cmd::run(command),
        Command::Audit(args) => audit_cmd::run(args),
        Command::Admin(args) => admin_cmd::run(args),
        Command::Pki(command) => pki_cmd::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            samverkan_sdk::closed_output::end_if_closed(e.as_ref());
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::PathBuf;

    fn parse(args: &[&str]) -> Command {
        let argv = std::iter::once("samverkan").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_reach_its_arguments() {
        let Command::Serve(args) = parse(&[
            "serve",
            "--config",
            "s.toml",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "sqlite://x.db",
            "--log-format",
            "json",
        ]) else {
            panic!("not serve");
        };
        assert_eq!(args.config, Some(PathBuf::from("s.toml")));
        assert_eq!(args.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(args.store.as_deref(), Some("sqlite://x.db"));
        assert_eq!(args.log_format, serve_cmd::LogFormat::Json);
        assert!(!args.check_config);
        let Command::Serve(args) = parse(&["serve"]) else {
            panic!("not serve");
        };
        assert_eq!(args.config, None);
        assert_eq!(args.log_format, serve_cmd::LogFormat::Text);
        let Command::Serve(args) = parse(&["serve", "--check-config", "--config", "s.toml"]) else {
            panic!("not serve");
        };
        assert!(args.check_config);
        // There is nothing to check without a file.
        assert!(Cli::try_parse_from(["samverkan", "serve", "--check-config"]).is_err());
    }

    #[test]
    fn audit_flags_reach_its_arguments_before_or_after_the_subcommand() {
        let Command::Audit(args) = parse(&[
            "audit",
            "--config",
            "s.toml",
            "query",
            "--alert",
            "a1",
            "--agency",
            "polisen",
            "--rule",
            "r1",
            "--legal-basis",
            "osl",
            "--type",
            "t1",
            "--kind",
            "share",
            "--from",
            "2026-01-01",
            "--to",
            "2026-02-01",
            "--limit",
            "7",
            "--format",
            "csv",
            "--store",
            "sqlite://x.db",
            "--broker-keys",
            "k.toml",
        ]) else {
            panic!("not audit");
        };
        assert_eq!(args.source.config, Some(PathBuf::from("s.toml")));
        assert_eq!(args.source.store.as_deref(), Some("sqlite://x.db"));
        assert_eq!(args.source.broker_keys, Some(PathBuf::from("k.toml")));
        let audit_cmd::AuditCommand::Query(q) = args.command else {
            panic!("not query");
        };
        assert_eq!(q.alert.as_deref(), Some("a1"));
        assert_eq!(q.agency.as_deref(), Some("polisen"));
        assert_eq!(q.rule.as_deref(), Some("r1"));
        assert_eq!(q.legal_basis.as_deref(), Some("osl"));
        assert_eq!(q.alert_type.as_deref(), Some("t1"));
        assert_eq!(q.kind.as_deref(), Some("share"));
        assert_eq!(q.from.as_deref(), Some("2026-01-01"));
        assert_eq!(q.to.as_deref(), Some("2026-02-01"));
        assert_eq!(q.limit, Some(7));
        assert_eq!(q.format, audit_cmd::Format::Csv);

        let Command::Audit(args) = parse(&[
            "audit",
            "verify",
            "--checkpoint",
            "a.note",
            "--checkpoint",
            "b.note",
            "--quiet",
        ]) else {
            panic!("not audit");
        };
        let audit_cmd::AuditCommand::Verify(v) = args.command else {
            panic!("not verify");
        };
        assert_eq!(
            v.checkpoints,
            [PathBuf::from("a.note"), PathBuf::from("b.note")]
        );
        assert!(v.quiet);

        let Command::Audit(args) = parse(&[
            "audit",
            "subject",
            "19121212-1212",
            "--include-denials",
            "--format",
            "json",
        ]) else {
            panic!("not audit");
        };
        let audit_cmd::AuditCommand::Subject(s) = args.command else {
            panic!("not subject");
        };
        assert_eq!(s.identifier, "19121212-1212");
        assert!(s.include_denials);
        assert_eq!(s.format, audit_cmd::Format::Json);

        let Command::Audit(args) = parse(&["audit", "prove", "12", "--out", "e.json"]) else {
            panic!("not audit");
        };
        let audit_cmd::AuditCommand::Prove(p) = args.command else {
            panic!("not prove");
        };
        assert_eq!((p.entry, p.out), (12, Some(PathBuf::from("e.json"))));

        let Command::Audit(args) = parse(&["audit", "consistency", "3", "9"]) else {
            panic!("not audit");
        };
        let audit_cmd::AuditCommand::Consistency(c) = args.command else {
            panic!("not consistency");
        };
        assert_eq!((c.old, c.new), (3, Some(9)));

        let Command::Audit(args) = parse(&["audit", "check-proof", "e.json"]) else {
            panic!("not audit");
        };
        let audit_cmd::AuditCommand::CheckProof(c) = args.command else {
            panic!("not check-proof");
        };
        assert_eq!(c.bundle, PathBuf::from("e.json"));
    }

    #[test]
    fn policy_explain_flags_reach_its_arguments() {
        let Command::Policy(policy_cmd::PolicyCommand::Explain(args)) = parse(&[
            "policy",
            "explain",
            "--from",
            "polisen",
            "--to",
            "linkoping",
            "--type",
            "t1",
            "--topic",
            "a/b",
            "--alert",
            "alert.json",
            "--dir",
            "p",
            "--version",
            "sha256:0123456789ab",
            "--store",
            "sqlite://x.db",
            "--config",
            "s.toml",
        ]) else {
            panic!("not policy explain");
        };
        assert_eq!(
            (
                args.from.as_str(),
                args.to.as_str(),
                args.alert_type.as_str()
            ),
            ("polisen", "linkoping", "t1")
        );
        assert_eq!(args.topic.as_deref(), Some("a/b"));
        assert_eq!(args.alert, Some(PathBuf::from("alert.json")));
        assert_eq!(args.source.dir, PathBuf::from("p"));
        assert_eq!(args.source.version.as_deref(), Some("sha256:0123456789ab"));
        assert_eq!(args.source.store.as_deref(), Some("sqlite://x.db"));
        assert_eq!(args.source.config, Some(PathBuf::from("s.toml")));

        // --store and --config need --version; --alert needs --topic.
        for refused in [
            &["--store", "sqlite://x.db"][..],
            &["--config", "s.toml"],
            &["--alert", "alert.json"],
        ] {
            let argv = [
                "samverkan",
                "policy",
                "explain",
                "--from",
                "a",
                "--to",
                "b",
                "--type",
                "t",
            ];
            let argv = argv.iter().chain(refused);
            assert!(Cli::try_parse_from(argv).is_err(), "{refused:?} accepted");
        }

        let Command::Policy(policy_cmd::PolicyCommand::Check(args)) = parse(&["policy", "check"])
        else {
            panic!("not policy check");
        };
        assert_eq!(args.dir, PathBuf::from("policies"));
    }

    #[test]
    fn admin_and_pki_flags_reach_their_arguments() {
        let Command::Admin(args) = parse(&["admin", "health"]) else {
            panic!("not admin");
        };
        assert_eq!(args.admin, "127.0.0.1:9883".parse().unwrap());
        assert!(matches!(args.command, admin_cmd::AdminCommand::Health));
        let Command::Admin(args) = parse(&["admin", "--admin", "10.0.0.1:1234", "reload"]) else {
            panic!("not admin");
        };
        assert_eq!(args.admin, "10.0.0.1:1234".parse().unwrap());
        assert!(matches!(args.command, admin_cmd::AdminCommand::Reload));
        // Also after the subcommand, as the README writes it.
        let Command::Admin(args) = parse(&["admin", "health", "--admin", "10.0.0.2:99"]) else {
            panic!("not admin");
        };
        assert_eq!(args.admin, "10.0.0.2:99".parse().unwrap());

        let Command::Pki(pki_cmd::PkiCommand::Revoke(args)) =
            parse(&["pki", "revoke", "c.pem", "--dir", "pki"])
        else {
            panic!("not pki revoke");
        };
        assert_eq!(
            (args.certificate, args.dir),
            (PathBuf::from("c.pem"), PathBuf::from("pki"))
        );
        let Command::Pki(pki_cmd::PkiCommand::Revoke(args)) = parse(&["pki", "revoke", "c.pem"])
        else {
            panic!("not pki revoke");
        };
        assert_eq!(args.dir, PathBuf::from("certs-dev"));
        let Command::Pki(pki_cmd::PkiCommand::Dev(args)) =
            parse(&["pki", "dev", "--out", "o", "--policies", "p", "--force"])
        else {
            panic!("not pki dev");
        };
        assert_eq!(args.out, PathBuf::from("o"));
        assert_eq!(args.policies, Some(PathBuf::from("p")));
        assert!(args.force);
    }
}
