use super::*;

/// A packet: first byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> (u8, Vec<u8>) {
    (first, body.to_vec())
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn publish_header(topic: &str, qos: u8, v5_props: Option<&[u8]>) -> Vec<u8> {
    let mut body = string(topic);
    if qos > 0 {
        body.extend_from_slice(&[0, 7]);
    }
    if let Some(props) = v5_props {
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    body
}

fn subscribe(filters: &[&str], level: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    if level == 5 {
        body.push(0);
    }
    for f in filters {
        body.extend(string(f));
        body.push(1);
    }
    body
}

#[test]
fn witness_answers_are_allowed_only_in_their_exact_form() {
    for topic in [
        "/tenants/polisen/witness/add-checkpoint/1a2b/200",
        "/tenants/polisen/witness/add-checkpoint/0/409",
        "/tenants/polisen/witness/add-checkpoint/ffffffffffffffffffffffffffffffff/422",
    ] {
        assert!(publish_allowed("polisen", topic), "{topic}");
    }
    for topic in [
        "/tenants/polisen/witness",
        "/tenants/polisen/witness/",
        "/tenants/polisen/witness/add-checkpoint/1a2b",
        "/tenants/polisen/witness/add-checkpoint/1a2b/",
        "/tenants/polisen/witness/add-checkpoint/1a2b/2000",
        "/tenants/polisen/witness/add-checkpoint/1a2b/099",
        "/tenants/polisen/witness/add-checkpoint/1A2B/200",
        "/tenants/polisen/witness/add-checkpoint/+/200",
        "/tenants/polisen/witness/add-checkpoint/#",
        "/tenants/polisen/witness/add-checkpoint/1a/200/x",
        "/tenants/polisen/witness/other/1a/200",
        "/tenants/polisen/witness/add-checkpoint/fffffffffffffffffffffffffffffffff/200",
        "/tenants/skatteverket/witness/add-checkpoint/1a/200",
        "/tenants/polisen/in/_witness/add-checkpoint/1a",
    ] {
        assert!(!publish_allowed("polisen", topic), "{topic}");
    }
    // The witness receives requests and cosigned checkpoints below in/.
    for filter in [
        "/tenants/polisen/in/_witness/add-checkpoint/+",
        "/tenants/polisen/in/_audit/cosigned",
    ] {
        assert!(subscribe_allowed("polisen", filter), "{filter}");
    }
    for filter in [
        "/tenants/polisen/witness/#",
        "/tenants/polisen/witness/add-checkpoint/+/+",
        "/tenants/skatteverket/in/_witness/add-checkpoint/+",
    ] {
        assert!(!subscribe_allowed("polisen", filter), "{filter}");
    }
}

#[test]
fn publish_is_allowed_only_on_out_acks_and_replay() {
    for topic in [
        "/tenants/polisen/out/akrim/ost/inspection",
        "/tenants/polisen/acks",
        "/tenants/polisen/replay",
    ] {
        assert!(publish_allowed("polisen", topic), "{topic}");
    }
    for topic in [
        "/tenants/polisen/receipts",
        "/tenants/polisen/in/akrim/ost",
        "/tenants/polisen/in/_audit/checkpoint",
        "/tenants/polisen/out/",
        "/tenants/polisen/out/a/+",
        "/tenants/polisen/out/#",
        "/tenants/polisen/acks/x",
        "/tenants/polisen/anything",
        "/tenants/polisenx/out/a",
        "/tenants/linkoping/out/a",
        "/tenants/polisen",
        "tenants/polisen/out/a",
    ] {
        assert!(!publish_allowed("polisen", topic), "{topic}");
    }
}

#[test]
fn subscribe_is_allowed_only_to_receipts_and_inbox_filters() {
    for filter in [
        "/tenants/polisen/receipts",
        "/tenants/polisen/in/#",
        "/tenants/polisen/in/welfare/#",
        "/tenants/polisen/in/+/ost/#",
        "/tenants/polisen/in/_audit/checkpoint",
        "/tenants/polisen/in/akrim/ost/inspection",
    ] {
        assert!(subscribe_allowed("polisen", filter), "{filter}");
    }
    for filter in [
        "/tenants/polisen/out/#",
        "/tenants/polisen/#",
        "/tenants/polisen/+/x",
        "/tenants/polisen/acks",
        "/tenants/polisen/replay",
        "/tenants/polisen/in/",
        "/tenants/polisen/in",
        "/tenants/polisen/in/a#",
        "/tenants/polisen/in/#/a",
        "/tenants/polisen/in/a+/b",
        "/tenants/linkoping/in/#",
        "$share/g/tenants/polisen/in/#",
        "#",
    ] {
        assert!(!subscribe_allowed("polisen", filter), "{filter}");
    }
}

#[test]
fn publish_headers_are_parsed_and_flags_checked() {
    let (first, body) = packet(0x32, &publish_header("/tenants/a/out/x", 1, None));
    assert_eq!(
        parse(first, &body, 4),
        Ok(ClientPacket::Publish {
            topic: "/tenants/a/out/x"
        })
    );
    // Retain flag.
    assert_eq!(parse(0x31, &body, 4), Err(Violation::Retain));
    // QoS 3.
    assert!(matches!(
        parse(0x36, &body, 4),
        Err(Violation::Malformed(_))
    ));
    // Topic alias property (0x23) in MQTT 5; other properties pass.
    let with_alias = publish_header("/tenants/a/out/x", 1, Some(&[0x23, 0, 1]));
    assert_eq!(parse(0x32, &with_alias, 5), Err(Violation::TopicAlias));
    let with_expiry = publish_header("/tenants/a/out/x", 0, Some(&[0x02, 0, 0, 0, 9]));
    assert!(parse(0x30, &with_expiry, 5).is_ok());
    let unknown = publish_header("/tenants/a/out/x", 0, Some(&[0x7f, 0]));
    assert!(matches!(
        parse(0x30, &unknown, 5),
        Err(Violation::Malformed(_))
    ));
    // A topic length beyond the body.
    assert!(matches!(
        parse(0x30, &[0, 40, b'a'], 4),
        Err(Violation::Malformed(_))
    ));
    // Invalid UTF-8 in the topic.
    assert!(matches!(
        parse(0x30, &[0, 1, 0xff], 4),
        Err(Violation::Malformed(_))
    ));
}

#[test]
fn other_packets_are_checked_by_type_and_flags() {
    assert_eq!(parse(0x40, &[0, 1], 4), Ok(ClientPacket::Control)); // PUBACK
    assert_eq!(parse(0x62, &[0, 1], 4), Ok(ClientPacket::Control)); // PUBREL
    assert_eq!(parse(0xC0, &[], 4), Ok(ClientPacket::Control)); // PINGREQ
    assert_eq!(parse(0xE0, &[], 4), Ok(ClientPacket::Control)); // DISCONNECT
    assert!(matches!(
        parse(0x60, &[0, 1], 4),
        Err(Violation::Malformed(_))
    ));
    assert!(matches!(
        parse(0x80, &subscribe(&["x"], 4), 4),
        Err(Violation::Malformed(_))
    ));
    for first in [0x10, 0x20, 0x90, 0xB0, 0xD0, 0xF0, 0x00] {
        assert_eq!(
            parse(first, &[], 5),
            Err(Violation::UnexpectedPacket(first >> 4)),
            "{first:x}"
        );
    }
    let body = subscribe(&["/tenants/a/in/#", "/tenants/a/receipts"], 5);
    assert_eq!(
        parse(0x82, &body, 5),
        Ok(ClientPacket::Subscribe(vec![
            "/tenants/a/in/#",
            "/tenants/a/receipts"
        ]))
    );
    // Reserved option bits.
    let mut bad = subscribe(&["/tenants/a/in/#"], 4);
    *bad.last_mut().unwrap() = 0x04;
    assert!(matches!(parse(0x82, &bad, 4), Err(Violation::Malformed(_))));
    // No filter at all.
    assert!(matches!(
        parse(0x82, &[0, 1], 4),
        Err(Violation::Malformed(_))
    ));
    let mut unsub = vec![0, 2];
    unsub.extend(string("/tenants/a/in/#"));
    assert_eq!(
        parse(0xA2, &unsub, 4),
        Ok(ClientPacket::Unsubscribe(vec!["/tenants/a/in/#"]))
    );
}

fn connect(level: u8, flags: u8, props: &[u8]) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend_from_slice(&[level, flags, 0, 30]);
    if level == 5 {
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    body.extend(string("client"));
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

#[test]
fn connect_without_will_alias_or_enhanced_auth() {
    assert_eq!(check_connect(&connect(4, 0x02, &[]), 4), Ok(()));
    assert_eq!(check_connect(&connect(5, 0x02, &[0x21, 0, 10]), 5), Ok(()));
    assert_eq!(
        check_connect(&connect(4, 0x06, &[]), 4),
        Err(Violation::Will)
    );
    assert_eq!(
        check_connect(&connect(5, 0x02, &[0x22, 0, 10]), 5),
        Err(Violation::TopicAlias)
    );
    // A topic alias maximum of 0 means none.
    assert_eq!(check_connect(&connect(5, 0x02, &[0x22, 0, 0]), 5), Ok(()));
    let mut auth = vec![0x15];
    auth.extend(string("SCRAM-SHA-1"));
    assert_eq!(
        check_connect(&connect(5, 0x02, &auth), 5),
        Err(Violation::EnhancedAuth)
    );
    assert!(check_connect(&connect(4, 0x03, &[]), 4).is_err());
}

#[test]
fn subscriptions_are_bounded_per_connection_and_per_agency() {
    let limits = Limits {
        subscriptions_per_connection: 2,
        filters_per_agency: 3,
    };
    let budget = FilterBudget::default();
    let mut one = Session::new("a", limits, &budget);
    let sub = |f: &'static str| ClientPacket::Subscribe(vec![f]);
    assert_eq!(one.check(&sub("/tenants/a/in/x")), Ok(()));
    assert_eq!(
        one.check(&sub("/tenants/a/in/x")),
        Ok(()),
        "the same filter again"
    );
    assert_eq!(one.check(&sub("/tenants/a/in/y")), Ok(()));
    assert_eq!(
        one.check(&sub("/tenants/a/in/z")),
        Err(Violation::TooManySubscriptions(2))
    );
    // Unsubscribing frees a place on the connection.
    assert_eq!(
        one.check(&ClientPacket::Unsubscribe(vec!["/tenants/a/in/x"])),
        Ok(())
    );
    assert_eq!(one.check(&sub("/tenants/a/in/z")), Ok(()));
    // The agency has now used x, y and z: a fourth filter is refused on any
    // connection, while filters used before are still admitted.
    let mut two = Session::new("a", limits, &budget);
    assert_eq!(
        two.check(&sub("/tenants/a/in/w")),
        Err(Violation::FilterBudgetSpent(3))
    );
    assert_eq!(two.check(&sub("/tenants/a/in/x")), Ok(()));
    // Another agency has its own budget.
    let mut other = Session::new("b", limits, &budget);
    assert_eq!(other.check(&sub("/tenants/b/in/w")), Ok(()));
    assert_eq!(
        other.check(&sub("/tenants/a/in/w")),
        Err(Violation::SubscribeFilter("/tenants/a/in/w".into()))
    );
    assert_eq!(
        other.check(&ClientPacket::Publish {
            topic: "/tenants/b/receipts"
        }),
        Err(Violation::PublishTopic("/tenants/b/receipts".into()))
    );
}

#[test]
fn refusals_carry_reason_codes_for_mqtt5() {
    let v = Violation::Retain;
    assert_eq!(refusal(4, true, &v), Some(vec![0x20, 2, 0, 5]));
    assert_eq!(refusal(4, false, &v), None);
    let connack = refusal(5, true, &v).unwrap();
    assert_eq!(connack[0], 0x20);
    assert_eq!(connack[2..4], [0, 0x9A]);
    let disconnect = refusal(5, false, &Violation::PublishTopic("é".repeat(400))).unwrap();
    assert_eq!(disconnect[0], 0xE0);
    // Remaining length (two bytes here) matches, and the reason string is
    // cut at a character boundary.
    let remaining = usize::from(disconnect[1] & 0x7f) | usize::from(disconnect[2]) << 7;
    assert_eq!(remaining, disconnect.len() - 3);
    assert_eq!(disconnect[3], 0x90);
    let text_len = usize::from(u16::from_be_bytes([disconnect[7], disconnect[8]]));
    assert!(std::str::from_utf8(&disconnect[9..9 + text_len]).is_ok());
}

proptest::proptest! {
    /// No input makes the parser panic, and whatever it accepts as a PUBLISH
    /// on an allowed topic really is on that agency's topics.
    #[test]
    fn parse_never_panics(first in proptest::num::u8::ANY, body in proptest::collection::vec(proptest::num::u8::ANY, 0..64), level in 4u8..=5) {
        if let Ok(ClientPacket::Publish { topic }) = parse(first, &body, level)
            && publish_allowed("a", topic)
        {
            proptest::prop_assert!(topic.starts_with("/tenants/a/"));
        }
        let _ = check_connect(&body, level);
    }
}
