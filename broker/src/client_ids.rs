//! Client ids as rumqttd sees them, chosen so that rumqttd never confuses
//! two connections.
//!
//! Inside rumqttd a client id names one connection. Two hazards follow:
//!
//! * A second connection with an id in use takes the first one over, and
//!   the first one's late disconnect can then close the second: rumqttd
//!   reuses connection slots, and a disconnect that arrives after the slot
//!   was handed on closes whoever holds it now. (Seen as about 1 % of
//!   concurrent connects failing right after their CONNACK.)
//! * rumqttd registers a last-will handler per client id when a CONNECT
//!   arrives. If that connection fails before its CONNACK, the handler is
//!   left behind, and the next CONNECT with the same id makes rumqttd panic
//!   while it holds the handlers' lock: every later connection on that
//!   listener is refused.
//!
//! So the gateway gives every connection an id that no other live
//! connection has, and reuses an id only after rumqttd has closed the
//! previous connection with it (its disconnect is then queued ahead of the
//! next connect). The client's own id is kept when it is free, otherwise
//! `<id>~<n>` with the smallest free `n`. An id whose connection ended
//! without a CONNACK, or that rumqttd did not close in time, is never used
//! again. Keeping ids stable matters: rumqttd keeps a small record per
//! client id that has ever disconnected, so fresh ids for every connection
//! would grow its memory without bound. Characters rumqttd refuses in an
//! id (`+ $ # /`) are replaced by `_`.

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
    crate::inspect::push_varint(&mut out, body.len());
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

/// Which client ids are held by a connection and which are unsafe to reuse.
#[derive(Debug, Default)]
pub struct ClientIds {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `agency.id` of every connection from its CONNECT until rumqttd closed it.
    in_use: HashSet<String>,
    /// `agency.id` never to be used again.
    tainted: HashSet<String>,
}

/// A connection's hold on a client id at rumqttd.
#[derive(Debug)]
pub struct Claim {
    key: Option<String>,
    /// The id to use instead of the client's, if its own is not free.
    pub renamed: Option<String>,
}

impl ClientIds {
    /// Claims an id for a connection of `agency` whose CONNECT names
    /// `client_id`: the client's own if it is free, else the first free
    /// `<id>~<n>`.
    pub fn claim(&self, agency: &str, client_id: &str) -> Claim {
        // An empty id gets a fresh one from rumqttd itself.
        if client_id.is_empty() {
            return Claim {
                key: None,
                renamed: None,
            };
        }
        let safe: String = client_id
            .chars()
            .map(|c| if "+$#/".contains(c) { '_' } else { c })
            .collect();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let free = |state: &State, id: &str| {
            let key = format!("{agency}.{id}");
            !state.in_use.contains(&key) && !state.tainted.contains(&key)
        };
        // Every candidate but one is taken at most by an entry of the two
        // sets, so this ends within their size plus one.
        let limit = state.in_use.len() + state.tainted.len() + 1;
        let id = std::iter::once(safe.clone())
            .chain((1..=limit).map(|n| format!("{safe}~{n}")))
            .find(|id| free(&state, id))
            .unwrap_or_else(|| format!("{safe}~{}", limit + 1));
        state.in_use.insert(format!("{agency}.{id}"));
        Claim {
            key: Some(format!("{agency}.{id}")),
            renamed: (id != client_id).then_some(id),
        }
    }

    /// Ends a claim. `closed_cleanly`: the connection got its CONNACK and
    /// rumqttd has closed it since, so the id is free again; otherwise it
    /// is never used again.
    pub fn release(&self, claim: Claim, closed_cleanly: bool) {
        let Some(key) = claim.key else { return };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_use.remove(&key);
        if !closed_cleanly {
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
    fn ids_in_use_or_unsafe_are_renamed() {
        let ids = ClientIds::default();
        let first = ids.claim("polisen", "c");
        assert!(first.renamed.is_none());
        // In use: a second connection with the same id gets the first free suffix.
        let second = ids.claim("polisen", "c");
        assert_eq!(second.renamed.as_deref(), Some("c~1"));
        let third = ids.claim("polisen", "c");
        assert_eq!(third.renamed.as_deref(), Some("c~2"));
        // Another agency's id of the same name is independent.
        assert!(ids.claim("skatteverket", "c").renamed.is_none());
        // A suffix freed cleanly is reused; one without a clean end never is.
        ids.release(second, true);
        let fourth = ids.claim("polisen", "c");
        assert_eq!(fourth.renamed.as_deref(), Some("c~1"));
        ids.release(fourth, false);
        ids.release(first, true);
        assert!(ids.claim("polisen", "c").renamed.is_none());
        assert_eq!(ids.claim("polisen", "c").renamed.as_deref(), Some("c~3"));
        // Characters rumqttd refuses are replaced.
        assert_eq!(
            ids.claim("polisen", "a/b+#$").renamed.as_deref(),
            Some("a_b___")
        );
        assert!(ids.claim("polisen", "").renamed.is_none());
        drop(third);
    }
}
