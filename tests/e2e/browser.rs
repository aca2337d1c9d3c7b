//! The auditor console in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver), with an auditor's client certificate imported
//! into the NSS database of a temporary HOME and chosen automatically by the
//! `AutoSelectCertificateForUrls` policy. The browser talks to 127.0.0.1 only.
//!
//! The test searches, opens the case page, runs the in-browser evidence
//! check (Web Crypto), sees it fail for a tampered bundle, and checks a kept
//! checkpoint against today's log. With `SAMVERKAN_CONSOLE_SCREENSHOTS=DIR`
//! it saves screenshots of the main pages there (docs/console/ holds them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use samverkan_e2e::TestBroker;

use crate::console::walk_through;

/// Where Debian's chromium reads managed policies.
const POLICY_DIR: &str = "/etc/chromium/policies/managed";
const POLICY_FILE: &str = "samverkan-console-test.json";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A HOME whose NSS database trusts the federation CA and holds the
/// auditor's certificate and key.
fn browser_home(broker: &TestBroker, agency: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    run(Command::new("certutil").args(["-N", "-d", &db_arg, "--empty-password"]));
    let pki = broker.pki();
    run(Command::new("certutil")
        .args([
            "-A",
            "-d",
            &db_arg,
            "-t",
            "C,,",
            "-n",
            "samverkan-dev-ca",
            "-i",
        ])
        .arg(pki.ca_cert()));
    let p12 = home.path().join("auditor.p12");
    let (cert, key) = broker.auditor(agency);
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:test", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&p12));
    run(Command::new("pk12util")
        .args(["-d", &db_arg, "-W", "test", "-i"])
        .arg(&p12));
    home
}

/// Removes the managed policy file when the test ends, however it ends.
struct PolicyFile(PathBuf);
impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_policy(port: u16) -> PolicyFile {
    std::fs::create_dir_all(POLICY_DIR).unwrap();
    let path = Path::new(POLICY_DIR).join(POLICY_FILE);
    let rule = serde_json::json!({"pattern": format!("https://localhost:{port}"), "filter": {}})
        .to_string();
    let policy = serde_json::json!({ "AutoSelectCertificateForUrls": [rule] });
    std::fs::write(&path, policy.to_string()).unwrap();
    PolicyFile(path)
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver(Child, u16);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver(home: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .env("HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; .ci/run installs it)");
    Driver(child, port)
}

async fn connect(driver: &Driver, profile: &Path) -> Client {
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1360,1000", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let url = format!("http://127.0.0.1:{}", driver.1);
    // chromedriver needs a moment to listen; bounded retries.
    for _ in 0..50 {
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        match builder.capabilities(caps.clone()).connect(&url).await {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("chromedriver did not start on {url}");
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits (bounded) until the element has class `ok` or `fail`; returns it and the text.
async fn outcome(client: &Client, css: &str) -> (String, String) {
    for _ in 0..150 {
        // After a form is sent the element appears only once the answer loads.
        let Some(el) = client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .into_iter()
            .next()
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let class = el.attr("class").await.unwrap().unwrap_or_default();
        if class == "ok" || class == "fail" {
            return (class, el.text().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Ok(png) = client.screenshot().await {
        let _ = std::fs::write(
            std::env::temp_dir().join("samverkan-console-failure.png"),
            png,
        );
    }
    let url = client
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
    let page = format!("{url}\n{}", client.source().await.unwrap_or_default());
    panic!("{css} shows no outcome; the page:\n{page}");
}

async fn screenshot(client: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("SAMVERKAN_CONSOLE_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

#[tokio::test]
async fn an_auditor_searches_opens_the_case_and_verifies_evidence_in_chromium() {
    let broker = TestBroker::start().await;
    let (alert_id, skv_share, akrim_share, lkp_denial) = walk_through(&broker).await;
    let port = broker.broker().console_addr().unwrap().port();
    let base = format!("https://localhost:{port}");
    let home = browser_home(&broker, "polisen");
    let _policy = write_policy(port);
    let driver = start_driver(home.path());
    let profile = tempfile::tempdir().unwrap();
    let client = connect(&driver, profile.path()).await;

    // The overview: who shares with whom.
    client.goto(&format!("{base}/")).await.unwrap();
    let matrix = text_of(&client, "#share-matrix").await;
    assert!(matrix.contains("uppgiftsskyldighet-akrim"), "{matrix}");
    assert!(text_of(&client, "#denial-matrix").await.contains('1'));
    screenshot(&client, "overview").await;

    // Search: this alert's entries, newest first.
    client
        .goto(&format!("{base}/search?alert_id={alert_id}"))
        .await
        .unwrap();
    let list = text_of(&client, "table.entries").await;
    for entry in [skv_share, akrim_share, lkp_denial] {
        assert!(list.contains(&entry.to_string()), "{list}");
    }
    assert!(list.contains("delning") && list.contains("nekad"), "{list}");
    screenshot(&client, "search").await;

    // The case page: two shares and the denial with their legal bases.
    client
        .find(Locator::Css(&format!("a[href='/case/{alert_id}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let decisions = text_of(&client, "section.decisions").await;
    assert!(decisions.contains("skatteverket") && decisions.contains("akrimost"));
    assert!(decisions.contains("linkoping") && decisions.contains("no_rule_for_recipient"));
    assert!(
        decisions.contains("uppgiftsskyldighet-akrim"),
        "{decisions}"
    );
    screenshot(&client, "case").await;

    // The evidence of Skatteverket's share, checked by the browser itself.
    client
        .goto(&format!("{base}/entry/{skv_share}"))
        .await
        .unwrap();
    client
        .find(Locator::Id("verify"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let (class, text) = outcome(&client, "#verify-result").await;
    assert_eq!(class, "ok", "{text}");
    assert!(
        text.contains(&format!("Verifierat: post {skv_share} finns i loggen")),
        "{text}"
    );
    assert!(
        text.contains("polisen") && text.contains("broker-dev-1"),
        "{text}"
    );
    client
        .execute(
            "document.getElementById('verify-result').scrollIntoView({block: 'center'});",
            vec![],
        )
        .await
        .unwrap();
    screenshot(&client, "evidence").await;

    // The same check refuses a bundle whose entry was changed.
    let (cert, key) = broker.auditor("polisen");
    let bundle = broker
        .console_get(
            Some((&cert, &key)),
            &format!("/entry/{skv_share}/evidence.json"),
        )
        .await
        .body;
    let tampered = bundle.replacen(
        "\"recipient\": \"skatteverket\"",
        "\"recipient\": \"kronofogden\"",
        1,
    );
    assert_ne!(tampered, bundle);
    client
        .execute(
            "document.getElementById('paste').open = true; document.getElementById('bundle-text').value = arguments[0];",
            vec![serde_json::Value::String(tampered)],
        )
        .await
        .unwrap();
    client
        .find(Locator::Id("verify-pasted"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let (class, text) = outcome(&client, "#verify-result").await;
    assert_eq!(class, "fail", "{text}");
    assert!(text.contains("INTE verifierat"), "{text}");
    // And accepts the untouched bundle pasted the same way.
    client
        .execute(
            "document.getElementById('bundle-text').value = arguments[0];",
            vec![serde_json::Value::String(bundle)],
        )
        .await
        .unwrap();
    client
        .find(Locator::Id("verify-pasted"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let (class, text) = outcome(&client, "#verify-result").await;
    assert_eq!(class, "ok", "{text}");

    // A checkpoint kept earlier, against today's log.
    let kept = broker
        .broker()
        .store()
        .checkpoints()
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("a first checkpoint")
        .note;
    broker.broker().checkpoint_now().await.unwrap();
    client.goto(&format!("{base}/consistency")).await.unwrap();
    client
        .execute(
            "document.getElementById('checkpoint-text').value = arguments[0];",
            vec![serde_json::Value::String(kept)],
        )
        .await
        .unwrap();
    client
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let (class, text) = outcome(&client, "#consistency-result").await;
    assert_eq!(class, "ok", "{text}");
    assert!(text.contains("bara byggts på"), "{text}");
    screenshot(&client, "consistency").await;

    // English on request.
    client
        .goto(&format!("{base}/lang/en?back=/policy"))
        .await
        .unwrap();
    assert!(text_of(&client, "h1").await.contains("Policy history"));
    screenshot(&client, "policy").await;
    client.close().await.unwrap();
}
