use std::task::{Context, Poll};

use proptest::prelude::*;

use super::in_memory::{packets, run, topic};
use super::*;
use crate::inspect::{FilterBudget, Limits, Session, push_varint};

/// Relays `input` from a client of agency `a` at protocol `level`; returns
/// what reached rumqttd and how the relay ended.
fn from_client(input: &[u8], level: u8) -> (Vec<u8>, Ended) {
    let budget = FilterBudget::default();
    let mut session = Session::new("a", Limits::default(), &budget);
    let mut out = Vec::new();
    let mut reader = BufReader::with_capacity(64, input);
    let ended = run(client_to_broker(
        &mut reader,
        &mut out,
        level,
        &mut session,
        1 << 20,
    ));
    (out, ended)
}

/// Relays `input` from rumqttd to a client of agency `a`.
fn from_broker(input: &[u8], level: u8) -> (Vec<u8>, Ended) {
    let mut out = Vec::new();
    let mut reader = BufReader::with_capacity(64, input);
    let ended = run(broker_to_client(&mut reader, &mut out, level, "a", 1 << 20));
    (out, ended)
}

/// A whole PUBLISH packet.
fn publish(topic: &str, qos: u8, level: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&[0, 9]);
    }
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    let mut packet = vec![0x30 | qos << 1];
    push_varint(&mut packet, body.len());
    packet.extend(body);
    packet
}

/// A whole SUBSCRIBE packet with one filter.
fn subscribe(filter: &str, level: u8) -> Vec<u8> {
    let mut body = vec![0, 3];
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    let mut packet = vec![0x82];
    push_varint(&mut packet, body.len());
    packet.extend(body);
    packet
}

#[test]
fn reads_connect_levels() {
    // A minimal 3.1.1 CONNECT: name, level 4, flags, keep-alive, client id "a".
    let v4 = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'a',
    ];
    let (level, bytes) = run(read_connect(&mut &v4[..], 1024)).unwrap();
    assert_eq!((level, bytes.as_slice()), (4, &v4[..]));
    let mut v5 = v4;
    v5[8] = 5;
    assert_eq!(run(read_connect(&mut &v5[..], 1024)).unwrap().0, 5);
    let mut v3 = v4;
    v3[8] = 3;
    assert!(run(read_connect(&mut &v3[..], 1024)).is_err());
    assert!(run(read_connect(&mut &[0x30u8, 0][..], 1024)).is_err());
    assert!(run(read_connect(&mut &v4[..], 5)).is_err());
    assert!(
        run(read_connect(
            &mut &[0x10u8, 0xff, 0xff, 0xff, 0xff][..],
            1024
        ))
        .is_err()
    );
}

#[test]
fn allowed_packets_pass_unchanged_until_one_is_refused() {
    let mut input = subscribe("/tenants/a/in/#", 4);
    input.extend(publish("/tenants/a/out/x/y", 1, 4, &[7; 300]));
    input.extend([0x40, 2, 0, 9, 0xC0, 0]); // PUBACK, PINGREQ
    let allowed = input.len();
    input.extend(publish("/tenants/b/out/x/y", 0, 4, b"into b"));
    input.extend(publish("/tenants/a/out/x/y", 0, 4, b"after"));
    let (out, ended) = from_client(&input, 4);
    assert_eq!(out, input[..allowed]);
    assert!(
        matches!(ended, Ended::Refused(Violation::PublishTopic(ref t)) if t == "/tenants/b/out/x/y"),
        "{ended:?}"
    );
    // A clean end of input after whole packets is a close.
    let (out, ended) = from_client(&input[..allowed], 4);
    assert_eq!(out, input[..allowed]);
    assert!(matches!(ended, Ended::Closed(_)), "{ended:?}");
}

/// A writer that keeps each write apart, to see how packets went out.
#[derive(Default)]
struct Writes(Vec<Vec<u8>>);

impl AsyncWrite for Writes {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn an_ordinary_publish_goes_out_in_one_write_and_a_large_one_whole() {
    // Two deliveries of an alert's size: one write each (header and
    // payload apart would be two TLS records or TCP segments each).
    let first = publish("/tenants/a/in/x", 1, 4, &[7; 2300]);
    let second = publish("/tenants/a/in/y", 0, 4, &[8; 2300]);
    let input = [first.clone(), second.clone()].concat();
    let mut writes = Writes::default();
    let mut reader = BufReader::with_capacity(4096, &input[..]);
    let ended = run(broker_to_client(&mut reader, &mut writes, 4, "a", 1 << 20));
    assert!(matches!(ended, Ended::Closed(_)), "{ended:?}");
    assert_eq!(writes.0, [first, second]);

    // Larger than what is gathered: streamed, and still passed whole.
    let large = publish("/tenants/a/in/x", 1, 4, &[9; 40_000]);
    let (out, ended) = from_broker(&large, 4);
    assert!(matches!(ended, Ended::Closed(_)), "{ended:?}");
    assert_eq!(out, large);
}

#[test]
fn deliveries_for_another_agency_never_reach_the_client() {
    for level in [4, 5] {
        let mut input = publish("/tenants/a/receipts", 1, level, b"receipt");
        input.extend(publish("/tenants/a/in/x", 0, level, b"share"));
        input.extend([0x40, 2, 0, 9, 0x90, 3, 0, 3, 1, 0xD0, 0]); // PUBACK, SUBACK, PINGRESP
        let allowed = input.len();
        input.extend(publish("/tenants/b/in/x", 0, level, b"b's share"));
        input.extend(publish("/tenants/a/in/x", 0, level, b"after"));
        let (out, ended) = from_broker(&input, level);
        assert_eq!(out, input[..allowed], "level {level}");
        assert!(
            matches!(ended, Ended::Refused(Violation::NotForThisAgency(ref t)) if t == "/tenants/b/in/x"),
            "{ended:?}"
        );
    }
}

#[test]
fn oversized_packets_are_refused_before_their_body_is_read() {
    // A PUBLISH announcing 2 MiB with a limit of 1 MiB, and a SUBSCRIBE
    // announcing more than the control packet limit.
    let mut big = vec![0x30];
    push_varint(&mut big, 2 << 20);
    let (out, ended) = from_client(&big, 4);
    assert!(out.is_empty());
    assert!(
        matches!(ended, Ended::Refused(Violation::TooLarge(..))),
        "{ended:?}"
    );
    let mut sub = vec![0x82];
    push_varint(&mut sub, MAX_CONTROL_PACKET + 1);
    let (out, ended) = from_broker(&sub, 4);
    assert!(out.is_empty());
    assert!(matches!(ended, Ended::Refused(_)), "{ended:?}");
}

/// A packet a client might send: allowed or not, of its agency or another.
fn client_packet() -> impl Strategy<Value = Vec<u8>> {
    let topics = prop::sample::select(vec![
        "/tenants/a/out/x/y",
        "/tenants/a/acks",
        "/tenants/a/replay",
        "/tenants/a/receipts",
        "/tenants/a/in/x",
        "/tenants/b/out/x/y",
        "/tenants/ab/out/x",
        "/tenants/a/in/#",
        "/tenants/+/out/#",
        "#",
    ]);
    (
        topics,
        0u8..3,
        prop::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(topic, qos, payload, sub)| {
            if sub {
                subscribe(topic, 4)
            } else {
                publish(topic, qos, 4, &payload)
            }
        })
}

proptest! {
    /// Arbitrary bytes from a client: no panic, what reaches rumqttd is an
    /// unchanged beginning of the input, and every whole packet in it is
    /// one the agency may send, on its own topics.
    #[test]
    fn client_bytes_never_leave_their_agency(input in prop::collection::vec(any::<u8>(), 0..512), level in 4u8..=5) {
        let (out, _) = from_client(&input, level);
        prop_assert!(input.starts_with(&out));
        for (first, body) in packets(&out) {
            if first >> 4 == inspect::kind::PUBLISH {
                prop_assert!(inspect::publish_allowed("a", topic(body)), "{}", topic(body));
            }
            prop_assert!(first >> 4 != inspect::kind::CONNECT);
        }
    }

    /// Arbitrary bytes from rumqttd: no panic, what reaches the client is
    /// an unchanged beginning of the input, and no message in it is on
    /// another agency's topics.
    #[test]
    fn broker_bytes_never_reach_another_agency(input in prop::collection::vec(any::<u8>(), 0..512), level in 4u8..=5) {
        let (out, _) = from_broker(&input, level);
        prop_assert!(input.starts_with(&out));
        for (first, body) in packets(&out) {
            if first >> 4 == inspect::kind::PUBLISH {
                prop_assert!(inspect::delivery_allowed("a", topic(body)), "{}", topic(body));
            }
        }
    }

    /// Streams of well-formed packets: exactly the packets before the first
    /// refused one pass, byte for byte, and a refusal comes exactly when a
    /// packet is not the agency's to send.
    #[test]
    fn well_formed_streams_pass_whole_up_to_the_first_refusal(stream in prop::collection::vec(client_packet(), 0..12)) {
        let input: Vec<u8> = stream.concat();
        let (out, ended) = from_client(&input, 4);
        let budget = FilterBudget::default();
        let mut session = Session::new("a", Limits::default(), &budget);
        let mut expected = Vec::new();
        let mut refused = false;
        for packet in &stream {
            let (first, body) = packets(packet)[0];
            let header = if first >> 4 == inspect::kind::PUBLISH {
                2 + usize::from(u16::from_be_bytes([body[0], body[1]])) + if (first >> 1) & 3 > 0 { 2 } else { 0 }
            } else {
                body.len()
            };
            if inspect::parse(first, &body[..header], 4).and_then(|p| session.check(&p)).is_err() {
                refused = true;
                break;
            }
            expected.extend_from_slice(packet);
        }
        prop_assert_eq!(out, expected);
        prop_assert_eq!(matches!(ended, Ended::Refused(_)), refused, "{:?}", ended);
    }
}
