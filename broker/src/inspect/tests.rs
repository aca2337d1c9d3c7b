use super::*;
use proptest::strategy::Strategy;

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

fn check_connect(packet: &[u8]) -> Result<(), Violation> {
    parse_connect(packet).map(|_| ())
}

#[test]
fn connect_without_will_alias_or_enhanced_auth() {
    assert_eq!(check_connect(&connect(4, 0x02, &[])), Ok(()));
    assert_eq!(check_connect(&connect(5, 0x02, &[0x21, 0, 10])), Ok(()));
    assert_eq!(check_connect(&connect(4, 0x06, &[])), Err(Violation::Will));
    assert_eq!(
        check_connect(&connect(5, 0x02, &[0x22, 0, 10])),
        Err(Violation::TopicAlias)
    );
    // A topic alias maximum of 0 means none.
    assert_eq!(check_connect(&connect(5, 0x02, &[0x22, 0, 0])), Ok(()));
    let mut auth = vec![0x15];
    auth.extend(string("SCRAM-SHA-1"));
    assert_eq!(
        check_connect(&connect(5, 0x02, &auth)),
        Err(Violation::EnhancedAuth)
    );
    // Reserved flag, will QoS without a will, another protocol, bytes after.
    for flags in [0x03, 0x0A, 0x22] {
        assert!(matches!(
            check_connect(&connect(4, flags, &[])),
            Err(Violation::Malformed(_))
        ));
    }
    assert!(check_connect(&connect(3, 0x02, &[])).is_err());
    let mut trailing = connect(4, 0x02, &[]);
    trailing[1] += 1;
    trailing.push(0);
    assert!(matches!(
        check_connect(&trailing),
        Err(Violation::Malformed(_))
    ));
}

#[test]
fn connect_is_forwarded_with_the_gateways_client_id_and_login() {
    // MQTT 5, clean start, a session expiry property, user name and password.
    let mut packet = connect(5, 0xC2, &[0x11, 0, 0, 0, 60]);
    packet.extend(string("someone"));
    packet.extend(string("guess"));
    packet[1] += 16;
    let parsed = parse_connect(&packet).unwrap();
    assert_eq!(parsed.client_id, "client");
    assert_eq!(parsed.username, Some("someone"));
    assert_eq!(parsed.password, Some(&b"guess"[..]));
    let forwarded = parsed
        .for_backend("polisen.client", "samverkan-gateway", b"secret")
        .unwrap();
    let again = parse_connect(&forwarded).unwrap();
    assert_eq!(
        again,
        Connect {
            client_id: "polisen.client",
            username: Some("samverkan-gateway"),
            password: Some(&b"secret"[..]),
            ..parsed
        }
    );
    // 3.1.1 without login, clean session off: the flag is kept.
    let packet = connect(4, 0x00, &[]);
    let parsed = parse_connect(&packet).unwrap();
    let forwarded = parsed.for_backend("a.b", "u", b"p").unwrap();
    let again = parse_connect(&forwarded).unwrap();
    assert!(!again.clean);
    assert_eq!((again.level, again.keep_alive), (4, 30));
    assert_eq!(again.username, Some("u"));
    // A client id that no longer fits in a CONNECT with the agency before it.
    assert!(matches!(
        parsed.for_backend(&"x".repeat(70_000), "u", b"p"),
        Err(Violation::Malformed(_))
    ));
}

#[test]
fn only_the_agencys_receipts_and_inbox_reach_its_clients() {
    for topic in [
        "/tenants/polisen/receipts",
        "/tenants/polisen/in/akrim/ost",
        "/tenants/polisen/in/_audit/checkpoint",
        "/tenants/polisen/in/_witness/add-checkpoint/1a",
    ] {
        assert!(delivery_allowed("polisen", topic), "{topic}");
        let body = publish_header(topic, 1, None);
        assert_eq!(check_from_broker("polisen", 0x32, &body, 4), Ok(()));
    }
    for topic in [
        "/tenants/skatteverket/receipts",
        "/tenants/skatteverket/in/akrim/ost",
        "/tenants/polisenx/in/a",
        "/tenants/polise/in/a",
        "/tenants/polisen/out/akrim/ost",
        "/tenants/polisen/acks",
        "/tenants/polisen/in",
        "/tenants/polisen",
        "tenants/polisen/in/a",
        "",
    ] {
        assert!(!delivery_allowed("polisen", topic), "{topic}");
        let body = publish_header(topic, 0, Some(&[]));
        assert_eq!(
            check_from_broker("polisen", 0x30, &body, 5),
            Err(Violation::NotForThisAgency(topic.into()))
        );
    }
    // A topic alias is never passed on (the client allowed none).
    let aliased = publish_header("/tenants/polisen/receipts", 0, Some(&[0x23, 0, 1]));
    assert_eq!(
        check_from_broker("polisen", 0x30, &aliased, 5),
        Err(Violation::TopicAlias)
    );
    // Acknowledgements pass; what a client would send does not.
    for (first, body) in [
        (0x40, &[0, 1][..]),
        (0x90, &[0, 1, 1]),
        (0xB0, &[0, 1]),
        (0xD0, &[]),
    ] {
        assert_eq!(
            check_from_broker("polisen", first, body, 4),
            Ok(()),
            "{first:x}"
        );
    }
    for first in [0x10, 0x20, 0x82, 0xA2, 0xC0, 0xF0] {
        assert!(
            check_from_broker("polisen", first, &[], 4).is_err(),
            "{first:x}"
        );
    }
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
        let _ = parse_connect(&body);
        let _ = parse_from_broker(first, &body, level);
    }

    /// Whatever CONNECT the gateway accepts, the one it forwards keeps
    /// everything but the client id and the login, which are the gateway's.
    #[test]
    fn forwarded_connect_keeps_all_but_id_and_login(
        level in 4u8..=5,
        flags in proptest::num::u8::ANY,
        keep_alive in proptest::num::u16::ANY,
        props in proptest::sample::select(vec![vec![], vec![0x11, 0, 0, 0, 9], vec![0x21, 0, 5], vec![0x22, 0, 0], vec![0x26, 0, 1, b'k', 0, 1, b'v']]),
        id in "[^\u{0}]{0,40}",
        user in proptest::option::of("[^\u{0}]{0,20}"),
        password in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..20)),
        noise in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
    ) {
        let mut body = string("MQTT");
        let flags = (flags & 0x3F) | if user.is_some() { 0x80 } else { 0 } | if password.is_some() { 0x40 } else { 0 };
        body.extend_from_slice(&[level, flags]);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if level == 5 {
            body.push(props.len() as u8);
            body.extend_from_slice(&props);
        }
        body.extend(string(&id));
        if let Some(user) = &user {
            body.extend(string(user));
        }
        if let Some(password) = &password {
            body.extend_from_slice(&(password.len() as u16).to_be_bytes());
            body.extend_from_slice(password);
        }
        let mut packet = vec![0x10];
        push_varint(&mut packet, body.len());
        packet.extend_from_slice(&body);
        // Flags with a will or reserved bits are refused, the rest accepted.
        let parsed = parse_connect(&packet);
        proptest::prop_assert_eq!(parsed.is_ok(), flags & 0x3D == 0, "{:?}", parsed);
        if let Ok(parsed) = parsed {
            let backend_id = format!("polisen.{id}");
            let forwarded = parsed.for_backend(&backend_id, "gateway", b"secret").unwrap();
            let again = parse_connect(&forwarded).unwrap();
            proptest::prop_assert_eq!(again, Connect {
                client_id: &backend_id,
                username: Some("gateway"),
                password: Some(&b"secret"[..]),
                ..parsed
            });
        }
        // Bytes after the packet are refused.
        if !noise.is_empty() {
            let mut longer = packet.clone();
            longer.extend_from_slice(&noise);
            proptest::prop_assert!(parse_connect(&longer).is_err());
        }
    }

    /// A message from rumqttd reaches a client only on its own agency's
    /// receipts and inbox, whatever the topic.
    #[test]
    fn broker_packets_never_cross_agencies(
        agency in "[a-z][a-z0-9]{0,6}",
        topic in proptest::sample::select(vec!["/tenants/", "/tenants/a/", "/tenants/ab/in/", "/tenants/a/receipts", "/tenants/a/in/x", "/tenants/b/in/x", "", "in/x", "/tenants/a"]).prop_flat_map(|start| ".{0,12}".prop_map(move |end| format!("{start}{end}"))),
        qos in 0u8..3,
        level in 4u8..=5,
    ) {
        use proptest::prelude::*;
        let body = publish_header(&topic, qos, (level == 5).then_some(&[][..]));
        let checked = check_from_broker(&agency, 0x30 | qos << 1, &body, level);
        let own = format!("/tenants/{agency}/");
        let allowed = topic
            .strip_prefix(&own)
            .is_some_and(|rest| rest == "receipts" || rest.starts_with("in/"));
        prop_assert_eq!(checked.is_ok(), allowed, "{} {:?}", topic, checked);
    }
}

#[test]
fn a_connection_counts_as_receiving_while_it_subscribes_to_its_shares() {
    let (budget, receivers) = (FilterBudget::default(), Receivers::default());
    let limits = Limits::default();
    let sub = |filters: Vec<&'static str>| ClientPacket::Subscribe(filters);
    let unsub = |filters: Vec<&'static str>| ClientPacket::Unsubscribe(filters);

    let mut publisher = Session::new("polisen", limits, &budget).reporting_to(&receivers);
    publisher
        .check(&sub(vec!["/tenants/polisen/receipts"]))
        .unwrap();
    let mut witness = Session::new("polisen", limits, &budget).reporting_to(&receivers);
    witness
        .check(&sub(vec![
            "/tenants/polisen/in/_witness/#",
            "/tenants/polisen/in/_audit/checkpoint",
        ]))
        .unwrap();
    assert!(
        receivers.agencies().is_empty(),
        "receipts and the broker's own topics carry no shares"
    );

    let mut follower = Session::new("polisen", limits, &budget).reporting_to(&receivers);
    follower.check(&sub(vec!["/tenants/polisen/in/#"])).unwrap();
    let mut second = Session::new("polisen", limits, &budget).reporting_to(&receivers);
    second
        .check(&sub(vec!["/tenants/polisen/in/akrim/+/inspection"]))
        .unwrap();
    assert_eq!(receivers.agencies(), ["polisen"]);
    follower
        .check(&unsub(vec!["/tenants/polisen/in/#"]))
        .unwrap();
    assert_eq!(
        receivers.agencies(),
        ["polisen"],
        "the second still receives"
    );
    drop(second);
    assert!(
        receivers.agencies().is_empty(),
        "a closed connection no longer counts"
    );
    drop((publisher, witness, follower));
    assert!(receivers.agencies().is_empty());
}
