//! The gateway's packet reader: moves MQTT packets between a client and
//! rumqttd, one at a time, each checked before it is passed on.
//!
//! rumqttd is reached over plain TCP on loopback and confines nothing to a
//! tenant, so this reader is the security boundary between agencies: a
//! client's packet goes on only if [`crate::inspect`] allows it for the
//! client's agency, and a packet from rumqttd reaches the client only if
//! it is for that agency. Both directions use the same framing:
//!
//! * the fixed header and remaining length are read first; a packet larger
//!   than the direction allows is refused before its body is read;
//! * a PUBLISH's variable header (topic, packet identifier, MQTT 5
//!   properties) is read and checked, and its payload then streamed, so an
//!   alert of megabytes is never held whole;
//! * every other packet is read whole and checked.
//!
//! Nothing here knows about sockets or TLS: the functions take any tokio
//! reader and writer, so the tests and the fuzz target (`broker/fuzz`) run
//! them over bytes in memory.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::inspect::{self, Violation};

/// Largest packet other than PUBLISH accepted in either direction: a
/// SUBSCRIBE within the subscription limits, or its SUBACK, is far smaller.
pub const MAX_CONTROL_PACKET: usize = 64 * 1024;

/// Largest PUBLISH payload read whole and written with its header in one
/// write; larger payloads are streamed, so no connection holds more.
const GATHERED_PAYLOAD: u64 = 16 * 1024;

/// How relaying one direction ended.
#[derive(Debug)]
pub enum Ended {
    /// The sending side closed or failed, or the receiving side failed.
    Closed(String),
    /// A packet was refused; nothing of it was passed on.
    Refused(Violation),
}

/// Passes packets from `from` to `to` until either side closes or a packet
/// is refused. `check(first byte, body)` decides each packet, where `body`
/// is a PUBLISH's variable header or another packet's whole body. Writes
/// are flushed when no more input is buffered, so a burst of small packets
/// goes out together.
pub async fn relay<R, W, F>(
    from: &mut BufReader<R>,
    to: &mut W,
    level: u8,
    max_publish: usize,
    mut check: F,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(u8, &[u8]) -> Result<(), Violation>,
{
    let mut head = Vec::new();
    loop {
        let first = match from.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ended::Closed("closed".into());
            }
            Err(e) => return Ended::Closed(format!("ended: {e}")),
        };
        head.clear();
        head.push(first);
        let remaining = match read_remaining_length(from, &mut head).await {
            Ok(n) => n,
            Err(Read::Io(e)) => return Ended::Closed(format!("ended: {e}")),
            Err(Read::Bad(v)) => return Ended::Refused(v),
        };
        let is_publish = first >> 4 == inspect::kind::PUBLISH;
        let limit = if is_publish {
            max_publish
        } else {
            MAX_CONTROL_PACKET
        };
        if remaining > limit {
            return Ended::Refused(Violation::TooLarge(remaining, limit));
        }
        let body_start = head.len();
        let read = if is_publish {
            read_publish_header(from, &mut head, first, remaining, level).await
        } else {
            read_more(from, &mut head, remaining, remaining).await
        };
        match read {
            Ok(()) => {}
            Err(Read::Io(e)) => return Ended::Closed(format!("ended: {e}")),
            Err(Read::Bad(v)) => return Ended::Refused(v),
        }
        if let Err(violation) = check(first, &head[body_start..]) {
            return Ended::Refused(violation);
        }
        let payload = (remaining - (head.len() - body_start)) as u64;
        let sent = async {
            // A packet of ordinary size goes out in one write: header and
            // payload written apart cost a TLS record or TCP segment, a
            // send and a wake-up each. Larger ones are streamed.
            if payload > 0 && payload <= GATHERED_PAYLOAD {
                let start = head.len();
                head.resize(start + payload as usize, 0);
                from.read_exact(&mut head[start..]).await?;
                to.write_all(&head).await?;
            } else {
                to.write_all(&head).await?;
            }
            if payload > GATHERED_PAYLOAD {
                let copied = tokio::io::copy_buf(&mut (&mut *from).take(payload), to).await?;
                if copied < payload {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            if from.buffer().is_empty() {
                to.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        if let Err(e) = sent.await {
            return Ended::Closed(format!("ended: {e}"));
        }
    }
}

/// Relays a client's packets to rumqttd, each parsed by [`inspect::parse`]
/// and allowed by `session` (the client's agency and subscriptions).
pub async fn client_to_broker<R, W>(
    client: &mut BufReader<R>,
    broker: &mut W,
    level: u8,
    session: &mut inspect::Session<'_>,
    max_publish: usize,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    relay(client, broker, level, max_publish, |first, body| {
        inspect::parse(first, body, level).and_then(|packet| session.check(&packet))
    })
    .await
}

/// Relays rumqttd's packets to a client of `agency`, each checked by
/// [`inspect::check_from_broker`]: messages only on the agency's own
/// receipts and inbox topics.
pub async fn broker_to_client<R, W>(
    broker: &mut BufReader<R>,
    client: &mut W,
    level: u8,
    agency: &str,
    max_publish: usize,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    relay(broker, client, level, max_publish, |first, body| {
        inspect::check_from_broker(agency, first, body, level)
    })
    .await
}

/// Why reading a packet stopped.
enum Read {
    Io(std::io::Error),
    Bad(Violation),
}

impl From<std::io::Error> for Read {
    fn from(e: std::io::Error) -> Self {
        Read::Io(e)
    }
}

/// Reads a remaining length (1 to 4 bytes, MQTT 3.1.1 section 2.2.3),
/// appending its bytes to `packet`.
async fn read_remaining_length<R: AsyncRead + Unpin>(
    r: &mut R,
    packet: &mut Vec<u8>,
) -> Result<usize, Read> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let b = r.read_u8().await?;
        packet.push(b);
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(remaining);
        }
    }
    Err(Read::Bad(Violation::Malformed(
        "malformed remaining length".into(),
    )))
}

/// Appends `n` bytes to `packet`, refusing to read past a packet body of
/// `body_len` bytes (the body starts after the fixed header).
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    packet: &mut Vec<u8>,
    n: usize,
    body_len: usize,
) -> Result<(), Read> {
    let header = packet
        .iter()
        .skip(1)
        .position(|b| b & 0x80 == 0)
        .map_or(packet.len(), |i| i + 2);
    if packet.len() - header + n > body_len {
        return Err(Read::Bad(Violation::Malformed(
            "a length inside the packet exceeds the packet".into(),
        )));
    }
    let start = packet.len();
    packet.resize(start + n, 0);
    r.read_exact(&mut packet[start..]).await?;
    Ok(())
}

/// Reads a PUBLISH's variable header (topic, packet identifier, MQTT 5
/// properties) after its fixed header, leaving the payload unread.
async fn read_publish_header<R: AsyncRead + Unpin>(
    r: &mut R,
    packet: &mut Vec<u8>,
    first: u8,
    body_len: usize,
    level: u8,
) -> Result<(), Read> {
    read_more(r, packet, 2, body_len).await?;
    let topic_len = usize::from(u16::from_be_bytes([
        packet[packet.len() - 2],
        packet[packet.len() - 1],
    ]));
    let packet_id = if (first >> 1) & 0b11 > 0 { 2 } else { 0 };
    read_more(r, packet, topic_len + packet_id, body_len).await?;
    if level == 5 {
        let mut props_len = 0usize;
        for i in 0..4 {
            read_more(r, packet, 1, body_len).await?;
            let b = packet[packet.len() - 1];
            props_len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
            if i == 3 {
                return Err(Read::Bad(Violation::Malformed(
                    "malformed properties length".into(),
                )));
            }
        }
        read_more(r, packet, props_len, body_len).await?;
    }
    Ok(())
}

/// Reads one MQTT packet (fixed header, remaining length, body), at most
/// `max_bytes` long.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    read_packet_after(first[0], r, max_bytes).await
}

/// Reads the rest of a packet whose first byte was `first`.
async fn read_packet_after<R: AsyncRead + Unpin>(
    first: u8,
    r: &mut R,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let mut packet = vec![first];
    let remaining = match read_remaining_length(r, &mut packet).await {
        Ok(n) => n,
        Err(Read::Io(e)) => return Err(e.to_string()),
        Err(Read::Bad(v)) => return Err(v.to_string()),
    };
    if remaining > max_bytes {
        return Err(format!(
            "packet of {remaining} bytes is larger than {max_bytes}"
        ));
    }
    let start = packet.len();
    packet.resize(start + remaining, 0);
    r.read_exact(&mut packet[start..])
        .await
        .map_err(|e| e.to_string())?;
    Ok(packet)
}

/// Reads one MQTT CONNECT packet and returns its protocol level (4 or 5)
/// with the packet's bytes. Anything else is refused at its first byte.
pub async fn read_connect<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<(u8, Vec<u8>), String> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    if first[0] != 0x10 {
        return Err(format!(
            "first packet type is 0x{:02x}, not CONNECT",
            first[0] >> 4
        ));
    }
    let packet = read_packet_after(first[0], r, max_bytes).await?;
    // The variable header starts after the fixed header's 2 to 5 bytes.
    let header = packet
        .iter()
        .skip(1)
        .position(|b| b & 0x80 == 0)
        .map_or(packet.len(), |i| i + 2);
    let body = &packet[header..];
    if body.len() < 7 {
        return Err("CONNECT too short".into());
    }
    if body[0..6] != [0, 4, b'M', b'Q', b'T', b'T'] {
        return Err("protocol name is not MQTT".into());
    }
    match body[6] {
        level @ (4 | 5) => Ok((level, packet)),
        other => Err(format!(
            "protocol level {other} (only 4 = 3.1.1 and 5 are served)"
        )),
    }
}

// The paths are spelled out because the fuzz crate (broker/fuzz) includes
// this file by path, where the default would point elsewhere.
#[cfg(any(test, fuzzing))]
#[path = "relay/in_memory.rs"]
pub mod in_memory;
#[cfg(test)]
#[path = "relay/tests.rs"]
mod tests;
