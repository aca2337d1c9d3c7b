//! The `samverkan` binary's policy and pki commands, run as a user would.

mod common;

use common::{copy_dir, shipped_policies};
use std::path::PathBuf;
use std::process::{Command, Output};

fn samverkan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samverkan"))
        .args(args)
        .output()
        .expect("run samverkan")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped() -> PathBuf {
    shipped_policies()
}

#[test]
fn policy_check_accepts_the_shipped_set() {
    let out = samverkan(&["policy", "check", shipped().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("is valid"));
    assert!(stdout.contains("version      sha256:"));
    assert!(stdout.contains("agencies     7:"));
    assert!(stdout.contains("alert types  6:"));
}

#[test]
fn policy_check_refuses_an_unknown_legal_basis_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped(), dir.path());
    let rules = dir.path().join("rules/welfare.toml");
    let text_before = std::fs::read_to_string(&rules).unwrap();
    let changed = text_before.replacen(
        "legal_basis = \"osl-10-24\"",
        "legal_basis = \"brottsbalken\"",
        1,
    );
    let line = changed[..changed.find("brottsbalken").unwrap()]
        .matches('\n')
        .count()
        + 1;
    std::fs::write(&rules, changed).unwrap();

    let out = samverkan(&["policy", "check", dir.path().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let expected = format!("{}:{line}:", rules.display());
    assert!(stderr.contains(&expected), "{stderr} lacks {expected}");
    assert!(
        stderr.contains("unknown legal basis `brottsbalken`"),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem"), "{stderr}");
}

#[test]
fn policy_explain_says_what_goes_and_what_does_not() {
    let p = shipped();
    let dir = p.to_str().unwrap();
    let out = samverkan(&[
        "policy",
        "explain",
        "--dir",
        dir,
        "--from",
        "polisen",
        "--to",
        "linkoping",
        "--type",
        "akrim.inspection_result",
    ]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("Nothing goes"), "{stdout}");

    let alert = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        alert.path(),
        r#"{"subject_personnummer": "19121212-1212", "subject_kommunkod": "0580",
            "benefit": "sjukpenning", "paying_agency": "forsakringskassan",
            "period": {"from": "2026-01-01", "to": "2026-03-31"}, "grounds": "x"}"#,
    )
    .unwrap();
    let out = samverkan(&[
        "policy",
        "explain",
        "--dir",
        dir,
        "--from",
        "forsakringskassan",
        "--to",
        "linkoping",
        "--type",
        "welfare.incorrect_payment",
        "--topic",
        "welfare/incorrect-payment/ost",
        "--alert",
        alert.path().to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("receives under rule incorrect-payment-to-home-municipality"),
        "{stdout}"
    );
    assert!(
        stdout.contains("withheld grounds, paying_agency"),
        "{stdout}"
    );

    let out = samverkan(&[
        "policy",
        "explain",
        "--dir",
        dir,
        "--from",
        "forsakringskassan",
        "--to",
        "nobody",
        "--type",
        "welfare.incorrect_payment",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("not an agency"));
}

#[test]
fn pki_dev_makes_certificates_openssl_accepts() {
    let work = tempfile::tempdir().unwrap();
    let policies = work.path().join("policies");
    copy_dir(&shipped(), &policies);
    std::fs::remove_file(policies.join("keys.toml")).unwrap();
    let out_dir = work.path().join("certs");
    let out = samverkan(&[
        "pki",
        "dev",
        "--out",
        out_dir.to_str().unwrap(),
        "--policies",
        policies.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("DEVELOPMENT"));

    // The rewritten keys.toml makes the set valid again.
    let out = samverkan(&["policy", "check", policies.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);

    // A second run refuses to overwrite without --force.
    let again = samverkan(&[
        "pki",
        "dev",
        "--out",
        out_dir.to_str().unwrap(),
        "--policies",
        policies.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));

    let ca = out_dir.join("ca.pem");
    for agency in [
        "linkoping",
        "norrkoping",
        "polisen",
        "skatteverket",
        "forsakringskassan",
        "kronofogden",
        "akrimost",
    ] {
        let cert = out_dir.join(agency).join("client.pem");
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&cert)
            .output()
            .expect("openssl must be installed (the CI script installs it)");
        assert!(
            verify.status.success(),
            "{}",
            text(&verify).0 + &text(&verify).1
        );
        let subject = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let subject = text(&subject).0;
        assert!(subject.contains(&format!("O={agency}")), "{subject}");
        assert!(subject.contains("DEVELOPMENT"), "{subject}");
        // The signing key is one OpenSSL reads (PKCS#8 v1), its public half
        // is the one in signing.pub, and its key id is next to it.
        let public = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(out_dir.join(agency).join("signing.key"))
            .output()
            .unwrap();
        assert!(public.status.success(), "{}", text(&public).1);
        assert_eq!(
            text(&public).0,
            std::fs::read_to_string(out_dir.join(agency).join("signing.pub")).unwrap()
        );
        let key_id = std::fs::read_to_string(out_dir.join(agency).join("signing.key-id")).unwrap();
        assert_eq!(key_id, format!("{agency}-dev-1\n"));
        let keys = std::fs::read_to_string(policies.join("keys.toml")).unwrap();
        assert!(
            keys.contains(&format!("id = \"{}\"", key_id.trim())),
            "{keys}"
        );
    }
    let broker_key = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(out_dir.join("broker-signing.key"))
        .output()
        .unwrap();
    assert!(broker_key.status.success(), "{}", text(&broker_key).1);
    let broker_key_id = std::fs::read_to_string(out_dir.join("broker-signing.key-id")).unwrap();
    assert!(
        std::fs::read_to_string(out_dir.join("broker-keys.toml"))
            .unwrap()
            .contains(&format!("id = \"{}\"", broker_key_id.trim()))
    );
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(out_dir.join("broker.pem"))
        .output()
        .unwrap();
    assert!(verify.status.success());
    assert!(
        std::fs::read_to_string(out_dir.join("README.md"))
            .unwrap()
            .contains("NOT FOR PRODUCTION")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.join("linkoping/signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private keys must not be readable by others"
        );
    }
}

/// Whether every agency's public key in `keys_file` is the public half of
/// its private signing key in the PKI directory `pki`.
fn keys_match_pki(keys_file: &std::path::Path, pki: &std::path::Path) -> bool {
    let registry = samverkan_sdk::keys::KeyRegistry::load(keys_file).unwrap();
    let owners: Vec<String> = registry.iter().map(|k| k.owner.clone()).collect();
    assert!(owners.len() >= 7, "{owners:?}");
    owners.iter().all(|agency| {
        let private =
            samverkan_sdk::keys::read_signing_key(&pki.join(agency).join("signing.key")).unwrap();
        registry
            .keys_of(agency)
            .any(|k| k.public_key == private.verifying_key())
    })
}

#[test]
fn pki_dev_elsewhere_writes_the_public_keys_beside_the_private_ones() {
    let work = tempfile::tempdir().unwrap();
    let policies = work.path().join("policies");
    copy_dir(&shipped(), &policies);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_samverkan"))
            .args(args)
            .current_dir(work.path())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };

    // The development layout: certs-dev/ and policies/ belong together.
    run(&["pki", "dev"]);
    let committed = std::fs::read_to_string(policies.join("keys.toml")).unwrap();
    assert!(keys_match_pki(
        &policies.join("keys.toml"),
        &work.path().join("certs-dev")
    ));

    // Another directory: the policy set is only read, the public keys go
    // beside the private halves.
    let other = work.path().join("elsewhere");
    let stdout = run(&["pki", "dev", "--out", other.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(policies.join("keys.toml")).unwrap(),
        committed,
        "policies/keys.toml was rewritten for another PKI"
    );
    assert!(keys_match_pki(
        &policies.join("keys.toml"),
        &work.path().join("certs-dev")
    ));
    assert!(keys_match_pki(&other.join("keys.toml"), &other));
    assert!(
        stdout.contains(&other.join("keys.toml").display().to_string()),
        "{stdout}"
    );
    assert!(stdout.contains("--policies"), "{stdout}");

    // With --policies given, that policy set follows the new PKI.
    run(&[
        "pki",
        "dev",
        "--out",
        other.to_str().unwrap(),
        "--policies",
        "policies",
        "--force",
    ]);
    assert!(keys_match_pki(&policies.join("keys.toml"), &other));
}

/// Runs `samverkan` in `dir` with standard output a pipe whose reader has
/// already gone (as `samverkan … | head -1` once `head` has exited).
#[cfg(unix)]
fn samverkan_into_closed_pipe(args: &[&str], dir: &std::path::Path) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_samverkan"))
        .args(args)
        .current_dir(dir)
        .stdout(writer)
        .output()
        .unwrap()
}

/// The program ended as a Unix tool does when its reader goes: by SIGPIPE,
/// without a word on standard error.
#[cfg(unix)]
fn assert_ended_by_sigpipe(out: &Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    const SIGPIPE: i32 = 13;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(SIGPIPE),
        "{what}: {:?}, stderr: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{what}: {stderr}");
}

#[cfg(unix)]
#[test]
fn closed_stdout_ends_commands_quietly() {
    let work = tempfile::tempdir().unwrap();
    copy_dir(&shipped(), &work.path().join("policies"));
    let out = samverkan_into_closed_pipe(&["pki", "dev"], work.path());
    assert_ended_by_sigpipe(&out, "pki dev");
    // The PKI is complete (written before the report), so the rest can run.
    assert!(work.path().join("certs-dev/akrimost/signing.key").exists());

    let out = samverkan_into_closed_pipe(&["policy", "check"], work.path());
    assert_ended_by_sigpipe(&out, "policy check");
    let out = samverkan_into_closed_pipe(
        &[
            "policy",
            "explain",
            "--from",
            "polisen",
            "--to",
            "linkoping",
            "--type",
            "akrim.inspection_result",
        ],
        work.path(),
    );
    assert_ended_by_sigpipe(&out, "policy explain");
    let out = samverkan_into_closed_pipe(&["audit", "verify"], work.path());
    assert_ended_by_sigpipe(&out, "audit verify");
}

/// A `samverkan serve` process, killed when the test ends however it ends.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve`'s --listen, --store and --log-format win over the configuration
/// file, and `admin --admin` reaches the admin endpoint it opened.
#[test]
fn serve_flags_override_the_file_and_admin_reaches_the_broker() {
    use std::io::BufRead;
    let work = tempfile::tempdir().unwrap();
    copy_dir(&shipped(), &work.path().join("policies"));
    let pki = Command::new(env!("CARGO_BIN_EXE_samverkan"))
        .args(["pki", "dev"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(pki.status.success(), "{}", text(&pki).1);
    // The file names an address and a database the flags replace.
    std::fs::write(
        work.path().join("samverkan.toml"),
        "[gateway]\nlisten = \"127.0.0.1:1\"\n\n[store]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[console]\nlisten = \"off\"\n",
    )
    .unwrap();
    let mut broker = Serving(
        Command::new(env!("CARGO_BIN_EXE_samverkan"))
            .args([
                "serve",
                "--config",
                "samverkan.toml",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--store", "sqlite://override.db", "--log-format", "json"])
            .current_dir(work.path())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The start summary, then JSON log lines until the broker accepts
    // connections (or its output ends, if it does not start).
    let stdout = std::io::BufReader::new(broker.0.stdout.take().unwrap());
    let (mut summary, mut admin, mut mqtt) = (String::new(), None, None);
    for line in stdout.lines() {
        let line = line.unwrap();
        let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
            summary += &line;
            summary += "\n";
            continue;
        };
        let fields = &log["fields"];
        let listen = fields["listen"].as_str().map(str::to_string);
        match fields["message"].as_str() {
            Some("health, metrics and admin endpoints") => admin = listen,
            Some("accepting MQTT over mutual TLS (3.1.1 and 5)") => {
                mqtt = listen;
                break;
            }
            _ => {}
        }
    }
    assert!(
        summary.contains("listening    mqtts://127.0.0.1:0 "),
        "{summary}"
    );
    assert!(
        summary.contains("store        sqlite://override.db\n"),
        "{summary}"
    );
    let mqtt: std::net::SocketAddr = mqtt
        .unwrap_or_else(|| panic!("no JSON log line saying the broker started:\n{summary}"))
        .parse()
        .unwrap();
    assert_ne!(mqtt.port(), 1, "the file's address was used");
    // A relative SQLite file from --store is in the working directory.
    assert!(work.path().join("override.db").exists());

    let admin = admin.expect("the admin endpoint's address in the logs");
    for command in ["health", "reload"] {
        let out = samverkan(&["admin", "--admin", &admin, command]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "admin {command}: {stdout}\n{stderr}");
        assert!(
            stdout.trim_start().starts_with('{'),
            "admin {command}: {stdout}"
        );
    }
}

/// `admin` without a broker at --admin says where it looked.
#[test]
fn admin_names_the_endpoint_it_cannot_reach() {
    // A port nothing listens on: one just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let out = samverkan(&["admin", "--admin", &address, "health"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no broker admin endpoint at {address}")),
        "{stderr}"
    );
}

/// `serve --config` with mistakes prints each at its file and line and
/// starts nothing.
#[test]
fn serve_refuses_a_configuration_with_mistakes_naming_file_and_line() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("samverkan.toml");
    std::fs::write(
        &file,
        "[router]\nbatch_max = 0\n\n[gateway]\nlisten = \"localhost\"\n",
    )
    .unwrap();
    let out = samverkan(&["serve", "--config", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{}:2:", file.display()))
            && lines[0].contains("batch_max must be between 1 and 10000"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{}:5:", file.display()))
            && lines[1].contains("`localhost` is not an address like 127.0.0.1:8883"),
        "{stderr}"
    );
    assert!(!stdout.contains("listening"), "{stdout}");

    std::fs::write(&file, "[gateway]\nlisen = \"127.0.0.1:8883\"\n").unwrap();
    let out = samverkan(&["serve", "--config", file.to_str().unwrap()]);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:2:", file.display()))
            && stderr.contains("unknown field `lisen`"),
        "{stderr}"
    );
}

/// Every subcommand explains itself with --help, naming each of its flags.
#[test]
fn help_names_every_flag_of_every_command() {
    let commands: [(&[&str], &[&str]); 12] = [
        (
            &["serve"],
            &[
                "--config",
                "--listen",
                "--store",
                "--log-format",
                "samverkan.example.toml",
            ],
        ),
        (&["policy", "check"], &["[DIR]", "[default: policies]"]),
        (
            &["policy", "explain"],
            &[
                "--from",
                "--to",
                "--type",
                "--topic",
                "--alert",
                "--dir",
                "--version",
                "--store",
                "--config",
            ],
        ),
        (
            &["audit", "verify"],
            &[
                "--checkpoint",
                "--quiet",
                "--config",
                "--store",
                "--broker-keys",
            ],
        ),
        (
            &["audit", "query"],
            &[
                "--alert",
                "--agency",
                "--rule",
                "--legal-basis",
                "--type",
                "--kind",
                "--from",
                "--to",
                "--limit",
                "--format",
                "--config",
                "--store",
                "--broker-keys",
            ],
        ),
        (&["audit", "prove"], &["<ENTRY>", "--out"]),
        (&["audit", "check-proof"], &["<BUNDLE>"]),
        (
            &["audit", "subject"],
            &["<IDENTIFIER>", "--include-denials", "--format"],
        ),
        (&["audit", "consistency"], &["<OLD>", "[NEW]"]),
        (
            &["admin"],
            &["--admin", "[default: 127.0.0.1:9883]", "reload", "health"],
        ),
        (
            &["pki", "revoke"],
            &["<CERTIFICATE>", "--dir", "[default: certs-dev]"],
        ),
        (&["pki", "dev"], &["--out", "--policies", "--force"]),
    ];
    for (command, flags) in commands {
        let out = samverkan(&[command, &["--help"]].concat());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{command:?}: {stderr}");
        for flag in flags {
            assert!(
                stdout.contains(flag),
                "{command:?} --help lacks {flag}:\n{stdout}"
            );
        }
    }
}
