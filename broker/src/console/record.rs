//! Every search, entry or case view, subject lookup, evidence download and
//! export on the console is itself an `auditor_access` entry of the audit
//! log, appended by the pipeline before the answer is sent: if it cannot be
//! recorded, nothing is shown. A subject appears only as its keyed hash, so
//! "who looked up this person" is a subject search like any other.

use std::time::Duration;

use tokio::sync::oneshot;

use super::auth::Viewer;
use super::{ConsoleError, ConsoleState};
use crate::pipeline::{AccessRecord, Command};

/// What an auditor did: the entry's `reason_code`.
pub use samverkan_sdk::codes::AccessAction as Action;

/// Appends the access entry and waits until it is committed; returns its index.
pub async fn record(
    state: &ConsoleState,
    viewer: &Viewer,
    action: Action,
    what: &str,
    alert_id: Option<String>,
    subject_hash: Option<String>,
) -> Result<u64, ConsoleError> {
    let unavailable = |why: &str| {
        ConsoleError::Unavailable(format!(
            "this access could not be recorded in the audit log ({why}), so nothing is shown; try again"
        ))
    };
    let (done, answer) = oneshot::channel();
    let access = AccessRecord {
        organization: viewer.organization.clone(),
        action,
        reason: format!("{}: {}", viewer.who(), what),
        alert_id,
        subject_hash,
    };
    state
        .commands
        .send(Command::RecordAccess { access, done })
        .await
        .map_err(|_| unavailable("the pipeline has stopped"))?;
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Ok(index))) => Ok(index),
        Ok(Ok(Err(e))) => Err(unavailable(&e.to_string())),
        Ok(Err(_)) => Err(unavailable("the pipeline has stopped")),
        Err(_) => Err(unavailable("no answer within 10 s")),
    }
}
