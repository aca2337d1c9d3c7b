//! Client ids as rumqttd sees them, chosen so that rumqttd never confuses
//! two connections.
//!
//! rumqttd has no tenants here (the gateway reaches it over plain loopback
//! TCP, see `mqtt.rs`), so the gateway scopes ids itself: rumqttd sees
//! `{agency}.{id}`. Agency ids are lowercase letters and digits, so no id of
//! one agency can be another agency's, nor the router link's
//! (`samverkan-router`), and no agency can reach another's session.
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
//! id (`+ $ # /`) are replaced by `_`. An empty id stays empty: rumqttd
//! then makes a random one (`rumqtt-{uuid}`, which no agency's id can be)
//! and tells an MQTT 5 client, as before.

use std::collections::HashSet;
use std::sync::Mutex;

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
    /// The id to use instead of the client's, if its own is not free
    /// (without the agency).
    pub renamed: Option<String>,
}

impl Claim {
    /// The client id rumqttd gets: `{agency}.{id}`, or empty for a client
    /// that sent none (rumqttd then makes one).
    pub fn backend_id(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }
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
    fn ids_in_use_or_unsafe_are_renamed() {
        let ids = ClientIds::default();
        let first = ids.claim("polisen", "c");
        assert!(first.renamed.is_none());
        assert_eq!(first.backend_id(), "polisen.c");
        // In use: a second connection with the same id gets the first free suffix.
        let second = ids.claim("polisen", "c");
        assert_eq!(second.renamed.as_deref(), Some("c~1"));
        let third = ids.claim("polisen", "c");
        assert_eq!(third.renamed.as_deref(), Some("c~2"));
        assert_eq!(third.backend_id(), "polisen.c~2");
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
        let empty = ids.claim("polisen", "");
        assert!(empty.renamed.is_none());
        assert_eq!(empty.backend_id(), "", "rumqttd makes one");
        drop(third);
    }
}
