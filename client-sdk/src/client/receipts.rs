//! Matching the broker's receipts to the publishes waiting for them.
//!
//! Any client of the agency's tenant can publish on its receipts topic, so
//! a receipt completes a publish only when the broker's signature verifies
//! (checked before [`ReceiptBook::complete`] is called) **and** it is about
//! exactly the alert that is waiting: same publisher, same alert id and same
//! envelope hash. Anything else is reported and otherwise ignored.

use std::collections::HashMap;

use thiserror::Error;
use tokio::sync::oneshot;

use crate::messages::Receipt;

/// Why a verified receipt did not complete any waiting publish.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ReceiptMismatch {
    /// The receipt is about another agency's alert.
    #[error("receipt for publisher `{0}`")]
    WrongPublisher(String),
    /// The receipt has no alert id (the broker could not read the envelope).
    #[error("receipt without alert id")]
    NoAlertId,
    /// No publish is waiting for this alert (a late duplicate, or not ours).
    #[error("no publish is waiting for this alert")]
    NotPending,
    /// A publish waits for this alert id, but for another envelope.
    #[error("receipt envelope hash does not match the envelope sent")]
    HashMismatch,
}

struct Waiter {
    token: u64,
    envelope_hash: String,
    tx: oneshot::Sender<Receipt>,
}

/// The publishes waiting for a receipt, by alert id.
#[derive(Default)]
pub(crate) struct ReceiptBook {
    next_token: u64,
    waiting: HashMap<String, Vec<Waiter>>,
}

impl ReceiptBook {
    /// Registers a publish of the envelope with `envelope_hash` under
    /// `alert_id`; returns the token to [`Self::forget`] it with and the
    /// receiver that gets the matching receipt.
    pub(crate) fn register(
        &mut self,
        alert_id: &str,
        envelope_hash: &str,
    ) -> (u64, oneshot::Receiver<Receipt>) {
        self.next_token += 1;
        let token = self.next_token;
        let (tx, rx) = oneshot::channel();
        self.waiting
            .entry(alert_id.to_string())
            .or_default()
            .push(Waiter {
                token,
                envelope_hash: envelope_hash.to_string(),
                tx,
            });
        (token, rx)
    }

    /// Removes a registration (the publish finished or was abandoned).
    pub(crate) fn forget(&mut self, alert_id: &str, token: u64) {
        if let Some(waiters) = self.waiting.get_mut(alert_id) {
            waiters.retain(|w| w.token != token);
            if waiters.is_empty() {
                self.waiting.remove(alert_id);
            }
        }
    }

    /// Hands a verified receipt to every publish of `me` waiting for exactly
    /// this alert and envelope; returns the alert id on success.
    pub(crate) fn complete(
        &mut self,
        me: &str,
        receipt: &Receipt,
    ) -> Result<String, ReceiptMismatch> {
        if receipt.publisher != me {
            return Err(ReceiptMismatch::WrongPublisher(receipt.publisher.clone()));
        }
        let alert_id = receipt
            .alert_id
            .as_deref()
            .ok_or(ReceiptMismatch::NoAlertId)?;
        let waiters = self
            .waiting
            .get_mut(alert_id)
            .ok_or(ReceiptMismatch::NotPending)?;
        let hash = receipt.envelope_hash.as_deref();
        let (matching, others): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(waiters)
            .into_iter()
            .partition(|w| Some(w.envelope_hash.as_str()) == hash);
        *waiters = others;
        if waiters.is_empty() {
            self.waiting.remove(alert_id);
        }
        if matching.is_empty() {
            return Err(ReceiptMismatch::HashMismatch);
        }
        for w in matching {
            // The publish may have given up in the meantime; nothing to do then.
            let _ = w.tx.send(receipt.clone());
        }
        Ok(alert_id.to_string())
    }

    /// Number of publishes waiting (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ReceiptStatus;

    fn receipt(publisher: &str, alert_id: Option<&str>, hash: Option<&str>) -> Receipt {
        Receipt {
            alert_id: alert_id.map(str::to_string),
            publisher: publisher.into(),
            envelope_hash: hash.map(str::to_string),
            status: ReceiptStatus::Accepted,
            rejection: None,
            shares: vec![],
            denials: vec![],
            audit_index: None,
            policy_version: "v".into(),
            received_at_ms: 1,
            signed_at_ms: 2,
        }
    }

    #[test]
    fn only_the_exact_alert_and_envelope_complete_a_publish() {
        let mut book = ReceiptBook::default();
        let (_, mut rx) = book.register("a1", "h1");
        assert_eq!(
            book.complete("polisen", &receipt("linkoping", Some("a1"), Some("h1"))),
            Err(ReceiptMismatch::WrongPublisher("linkoping".into()))
        );
        assert_eq!(
            book.complete("polisen", &receipt("polisen", None, Some("h1"))),
            Err(ReceiptMismatch::NoAlertId)
        );
        assert_eq!(
            book.complete("polisen", &receipt("polisen", Some("a2"), Some("h1"))),
            Err(ReceiptMismatch::NotPending)
        );
        assert_eq!(
            book.complete("polisen", &receipt("polisen", Some("a1"), Some("h2"))),
            Err(ReceiptMismatch::HashMismatch)
        );
        assert_eq!(
            book.complete("polisen", &receipt("polisen", Some("a1"), None)),
            Err(ReceiptMismatch::HashMismatch)
        );
        // Nothing above completed or removed the publish.
        assert!(rx.try_recv().is_err());
        assert_eq!(book.len(), 1);
        assert_eq!(
            book.complete("polisen", &receipt("polisen", Some("a1"), Some("h1"))),
            Ok("a1".into())
        );
        assert_eq!(rx.try_recv().unwrap().alert_id.as_deref(), Some("a1"));
        assert_eq!(book.len(), 0);
        // A late duplicate finds nobody waiting.
        assert_eq!(
            book.complete("polisen", &receipt("polisen", Some("a1"), Some("h1"))),
            Err(ReceiptMismatch::NotPending)
        );
    }

    #[test]
    fn forgetting_removes_only_the_own_registration() {
        let mut book = ReceiptBook::default();
        let (t1, _rx1) = book.register("a1", "h1");
        let (_t2, mut rx2) = book.register("a1", "h1");
        book.forget("a1", t1);
        assert_eq!(book.len(), 1);
        book.complete("polisen", &receipt("polisen", Some("a1"), Some("h1")))
            .unwrap();
        assert!(rx2.try_recv().is_ok());
        book.forget("a1", t1);
        assert_eq!(book.len(), 0);
    }
}
