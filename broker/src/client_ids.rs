//! Client ids as rumqttd sees them, chosen so that rumqttd can never be
//! driven into a panic that disables a listener.
//!
//! rumqttd registers a last-will handler per client id when a CONNECT
//! arrives. If that connection then fails before rumqttd has sent its
//! CONNACK, the handler is left behind, and the next CONNECT with the same
//! client id makes rumqttd panic *while it holds the handlers' lock*: the
//! lock is poisoned and every later connection on that listener is refused.
//! (Seen under load: after one such failure no agency could connect.)
//!
//! The gateway therefore keeps a client's own id only while that is safe:
//! an id that is mid-connect on another connection, or whose earlier
//! connection ended without a CONNACK, is replaced by `<id>~<n>`, unique for
//! the life of the process. Keeping ids stable otherwise matters: rumqttd
//! keeps a small record per client id that has ever disconnected, so fresh
//! ids for every connection would grow its memory without bound.

use std::collections::HashSet;
use std::sync::Mutex;

/// The client id of a CONNECT packet of protocol `level` (4 or 5).
pub fn client_id(packet: &[u8], level: u8) -> Result<String, String> {
    let (start, len) = locate(packet, level)?;
    std::str::from_utf8(&packet[start..start + len])
        .map(str::to_string)
        .map_err(|_| "client id is not UTF-8".to_string())
}

/// The same CONNECT packet with another client id.
pub fn with_client_id(packet: &[u8], level: u8, id: &str) -> Result<Vec<u8>, String> {
    let (start, len) = locate(packet, level)?;
    let id_len = u16::try_from(id.len()).map_err(|_| "client id too long".to_string())?;
    let header_len = header_len(packet)?;
    let mut body = Vec::with_capacity(packet.len() + id.len());
    body.extend_from_slice(&packet[header_len..start - 2]);
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(&packet[start + len..]);
    let mut out = vec![packet[0]];
    let mut remaining = body.len();
    loop {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if remaining == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Length of the fixed header (type byte and remaining length).
fn header_len(packet: &[u8]) -> Result<usize, String> {
    let mut pos = 1;
    while packet.get(pos).ok_or("CONNECT too short")? & 0x80 != 0 {
        pos += 1;
        if pos > 4 {
            return Err("malformed remaining length".into());
        }
    }
    Ok(pos + 1)
}

/// Where the client id's bytes are: (offset, length).
fn locate(packet: &[u8], level: u8) -> Result<(usize, usize), String> {
    let short = || "CONNECT too short".to_string();
    // Variable header: protocol name (6), level (1), flags (1), keep-alive (2).
    let mut pos = header_len(packet)? + 10;
    if level == 5 {
        // Properties: a variable byte integer length, then the properties.
        let mut len: usize = 0;
        let mut shift = 0;
        loop {
            let b = *packet.get(pos).ok_or_else(short)?;
            pos += 1;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            if shift > 21 {
                return Err("malformed properties length".into());
            }
        }
        pos += len;
    }
    let len = usize::from(u16::from_be_bytes([
        *packet.get(pos).ok_or_else(short)?,
        *packet.get(pos + 1).ok_or_else(short)?,
    ]));
    if packet.len() < pos + 2 + len {
        return Err(short());
    }
    Ok((pos + 2, len))
}

/// Which client ids are mid-connect and which are unsafe to reuse.
#[derive(Debug, Default)]
pub struct ClientIds {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    connecting: HashSet<String>,
    tainted: HashSet<String>,
}

/// A connection's claim on a client id, until its CONNACK (or failure).
#[derive(Debug)]
pub struct Claim {
    key: Option<String>,
    /// The id to use instead of the client's, if its own is not safe now.
    pub renamed: Option<String>,
}

impl ClientIds {
    /// Claims `client_id` of `agency` for connection `n`.
    pub fn claim(&self, agency: &str, client_id: &str, n: u64) -> Claim {
        // An empty id gets a fresh one from rumqttd itself.
        if client_id.is_empty() {
            return Claim {
                key: None,
                renamed: None,
            };
        }
        let key = format!("{agency}.{client_id}");
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.tainted.contains(&key) || state.connecting.contains(&key) {
            return Claim {
                key: None,
                renamed: Some(format!("{client_id}~{n}")),
            };
        }
        state.connecting.insert(key.clone());
        Claim {
            key: Some(key),
            renamed: None,
        }
    }

    /// Ends a claim: with a CONNACK the id is free again; without one it is
    /// never used as is again.
    pub fn release(&self, claim: Claim, connack: bool) {
        let Some(key) = claim.key else { return };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.connecting.remove(&key);
        if !connack {
            state.tainted.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_and_replaced() {
        // 3.1.1 CONNECT with client id "a".
        let v4 = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'a',
        ];
        assert_eq!(client_id(&v4, 4).unwrap(), "a");
        let out = with_client_id(&v4, 4, "a~7").unwrap();
        assert_eq!(
            out,
            [
                0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 3, b'a', b'~', b'7'
            ]
        );
        // MQTT 5 with two bytes of properties and an empty client id.
        let v5 = [
            0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 2, 0x21, 0, 0, 0,
        ];
        assert_eq!(client_id(&v5, 5).unwrap(), "");
        let out = with_client_id(&v5, 5, "x").unwrap();
        assert_eq!(&out[13..], &[0x21, 0, 0, 1, b'x']);
        assert_eq!(out[1] as usize, out.len() - 2);
        // A long packet whose remaining length needs two bytes.
        let mut long = vec![
            0x10,
            0x80 | 14,
            1,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            2,
            0,
            30,
            0,
            130,
        ];
        long.extend(std::iter::repeat_n(b'x', 130));
        assert_eq!(client_id(&long, 4).unwrap().len(), 130);
        let out = with_client_id(&long, 4, "y").unwrap();
        assert_eq!(out.len(), long.len() - 129 - 1);
        assert!(client_id(&v4[..13], 4).is_err());
    }

    #[test]
    fn unsafe_ids_are_renamed() {
        let ids = ClientIds::default();
        let first = ids.claim("polisen", "c", 1);
        assert!(first.renamed.is_none());
        // Mid-connect: a second connection with the same id is renamed.
        let second = ids.claim("polisen", "c", 2);
        assert_eq!(second.renamed.as_deref(), Some("c~2"));
        // Another agency's id of the same name is independent.
        assert!(ids.claim("skatteverket", "c", 3).renamed.is_none());
        ids.release(second, false);
        ids.release(first, true);
        // After a CONNACK the id is free again…
        let again = ids.claim("polisen", "c", 4);
        assert!(again.renamed.is_none());
        // …but after a connection without one, never again.
        ids.release(again, false);
        assert_eq!(ids.claim("polisen", "c", 5).renamed.as_deref(), Some("c~5"));
        assert!(ids.claim("polisen", "", 6).renamed.is_none());
    }
}
