//! Who may connect at all: certificates from the federation CA with exactly
//! one lowercase-ASCII O= naming an agency; a stalled handshake harms nobody.

use std::time::{Duration, Instant};

use samverkan_broker::pki::{Ca, DEV_CA_NAME};
use samverkan_e2e::{TestBroker, tls_client};
use tokio::io::AsyncReadExt;

use crate::raw::connect;

fn ca_pem(broker: &TestBroker) -> Vec<u8> {
    std::fs::read(broker.pki().ca_cert()).unwrap()
}

/// Connects with a client certificate for `orgs` issued by `ca`.
async fn try_with(broker: &TestBroker, ca: &Ca, orgs: &[&str]) -> Result<(), String> {
    let cert = ca.issue_client(orgs, "test client", 1).unwrap();
    let tls = tls_client(
        &ca_pem(broker),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    );
    connect(broker.raw_options("odd-cert", tls))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn only_single_ascii_organization_from_the_federation_ca() {
    let broker = TestBroker::start().await;
    let pki = broker.pki();
    let federation = Ca::load(&pki.ca_cert(), &pki.ca_key(), DEV_CA_NAME).unwrap();

    // The harness's own certificate path works…
    try_with(&broker, &federation, &["linkoping"])
        .await
        .unwrap();

    // …but not another CA, even with a valid O=.
    let other = Ca::generate("Some other CA", 1).unwrap();
    let err = try_with(&broker, &other, &["linkoping"]).await.unwrap_err();
    assert!(!err.is_empty());

    // Federation CA, but an unusable subject.
    for orgs in [
        &[][..],
        &["linkoping", "polisen"][..],
        &["link\u{f6}ping"][..],
        &["p\u{43e}lisen"][..],
        &["sapo"][..],
    ] {
        let result = try_with(&broker, &federation, orgs).await;
        assert!(
            result.is_err(),
            "a certificate with O={orgs:?} was accepted"
        );
    }
}

#[tokio::test]
async fn stalled_handshake_does_not_block_others_and_is_dropped() {
    let broker = TestBroker::start().await; // handshake timeout: 2 s
    let mut stalled = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    let started = Instant::now();

    // Others connect while the stalled connection sits there.
    for agency in ["polisen", "skatteverket"] {
        let t = Instant::now();
        connect(broker.raw_options(agency, broker.agency_tls(agency)))
            .await
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{agency} waited {:?}",
            t.elapsed()
        );
    }

    // The stalled connection is closed after the handshake timeout.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("the stalled connection was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}
