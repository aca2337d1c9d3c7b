//! The gateway's packet reader, built alone for fuzzing: the broker's own
//! `inspect.rs` (what may pass, packet by packet) and `relay.rs` (the
//! framing in both directions), included by path so the fuzz build does
//! not compile the rest of the broker. [`check`] runs one input and asserts
//! what the property tests in those files assert.

#[path = "../../src/inspect.rs"]
#[allow(dead_code)]
pub mod inspect;
#[path = "../../src/relay.rs"]
#[allow(dead_code)]
pub mod relay;

use inspect::{FilterBudget, Limits, Session, kind};
use relay::in_memory::{packets, run, topic};
use tokio::io::BufReader;

/// The agency every input is read as.
const AGENCY: &str = "a";

/// One fuzz input: its first byte picks the direction and protocol level,
/// the rest is what that side sends.
pub fn check(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let level = if selector & 1 == 0 { 4 } else { 5 };
    match (selector >> 1) % 3 {
        0 => client_stream(input, level),
        1 => broker_stream(input, level),
        _ => connect(input),
    }
}

/// A client's bytes after its CONNECT: what reaches rumqttd is an unchanged
/// beginning of them, and every whole packet of it is the agency's to send.
fn client_stream(input: &[u8], level: u8) {
    let budget = FilterBudget::default();
    let mut session = Session::new(AGENCY, Limits::default(), &budget);
    let mut out = Vec::new();
    let mut reader = BufReader::with_capacity(64, input);
    run(relay::client_to_broker(
        &mut reader,
        &mut out,
        level,
        &mut session,
        1 << 16,
    ));
    assert!(
        input.starts_with(&out),
        "the relay changed or invented bytes"
    );
    for (first, body) in packets(&out) {
        match first >> 4 {
            kind::PUBLISH => assert!(inspect::publish_allowed(AGENCY, topic(body))),
            kind::SUBSCRIBE => match inspect::parse(first, body, level) {
                Ok(inspect::ClientPacket::Subscribe(filters)) => {
                    for f in filters {
                        assert!(inspect::subscribe_allowed(AGENCY, f), "{f}");
                    }
                }
                other => panic!("a SUBSCRIBE passed that does not parse: {other:?}"),
            },
            kind::CONNECT => panic!("a second CONNECT passed"),
            _ => {}
        }
    }
}

/// rumqttd's bytes towards a client: what reaches the client is an
/// unchanged beginning of them, with messages only on the agency's topics.
fn broker_stream(input: &[u8], level: u8) {
    let mut out = Vec::new();
    let mut reader = BufReader::with_capacity(64, input);
    run(relay::broker_to_client(
        &mut reader,
        &mut out,
        level,
        AGENCY,
        1 << 16,
    ));
    assert!(
        input.starts_with(&out),
        "the relay changed or invented bytes"
    );
    for (first, body) in packets(&out) {
        if first >> 4 == kind::PUBLISH {
            assert!(inspect::delivery_allowed(AGENCY, topic(body)));
        }
    }
}

/// A CONNECT: read as the gateway reads it; one it accepts is forwarded
/// with everything kept but the client id and the login.
fn connect(input: &[u8]) {
    let _ = run(relay::read_connect(&mut &input[..], 1 << 16));
    let Ok(parsed) = inspect::parse_connect(input) else {
        return;
    };
    let id = format!("{AGENCY}.{}", parsed.client_id);
    let Ok(forwarded) = parsed.for_backend(&id, "gateway", b"secret") else {
        assert!(
            id.len() > usize::from(u16::MAX),
            "only a too long id is refused"
        );
        return;
    };
    let again = inspect::parse_connect(&forwarded).expect("the forwarded CONNECT parses");
    assert_eq!(
        again,
        inspect::Connect {
            client_id: &id,
            username: Some("gateway"),
            password: Some(&b"secret"[..]),
            ..parsed
        }
    );
}
