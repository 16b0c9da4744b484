//! The tree's status from inside a worker process: the process asks its master over its
//! control socket (`AskStatus`) and the master answers with the report `status --json` prints
//! (`TreeStatus`); and, on NATS, the cluster's nodes as `cluster --json` lists them. What a
//! page's live status panel reads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::control::FromWorker;
use crate::error::{Error, ErrorKind, Result};

/// How long a report may take: the master asks every process, each within its own deadline.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// Questions in flight at once, at most (a page polled by many clients must not pile them up).
const MAX_PENDING: usize = 64;

#[derive(Default)]
struct Asker {
    to_master: Option<mpsc::Sender<FromWorker>>,
    pending: HashMap<u64, oneshot::Sender<serde_json::Value>>,
    next: u64,
}

thread_local! {
    static ASKER: RefCell<Asker> = RefCell::default();
}

/// Called once by a worker process with its way to the master.
pub(crate) fn init(to_master: mpsc::Sender<FromWorker>) {
    ASKER.with(|a| a.borrow_mut().to_master = Some(to_master));
}

/// The master's answer to question `req`.
pub(crate) fn answered(req: u64, report: serde_json::Value) {
    if let Some(tx) = ASKER.with(|a| a.borrow_mut().pending.remove(&req)) {
        let _ = tx.send(report);
    }
}

/// Forgets a question whose asker stopped waiting.
struct Forget(u64);

impl Drop for Forget {
    fn drop(&mut self) {
        ASKER.with(|a| a.borrow_mut().pending.remove(&self.0));
    }
}

/// The tree's status, as `status --json` prints it (`processes` with each one's counters,
/// `hub` with its pools, `bus`, `exits`, ...), asked of the master by the calling worker
/// process. Fails outside a worker process of a running tree, when 64 questions are already
/// waiting, or when no answer comes within 5 s.
pub async fn status() -> Result<serde_json::Value> {
    let (req, rx, to_master) = ASKER.with(|a| {
        let mut a = a.borrow_mut();
        let to_master = a.to_master.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotRunning,
                "the tree's status is asked from a worker process of a running tree",
            )
        })?;
        if a.pending.len() >= MAX_PENDING {
            return Err(Error::new(
                ErrorKind::Control,
                "too many status questions waiting for the master",
            ));
        }
        a.next += 1;
        let req = a.next;
        let (tx, rx) = oneshot::channel();
        a.pending.insert(req, tx);
        Ok((req, rx, to_master))
    })?;
    let _forget = Forget(req);
    if to_master.try_send(FromWorker::AskStatus { req }).is_err() {
        return Err(Error::new(
            ErrorKind::Control,
            "the master's control socket is not taking messages",
        ));
    }
    match tokio::time::timeout(ANSWER_WAIT, rx).await {
        Ok(Ok(report)) => Ok(report),
        _ => Err(Error::new(
            ErrorKind::Control,
            "the master did not answer the status question in time",
        )),
    }
}

/// Every node on the bus, as `cluster --json` prints them (name, host, uptime, worker groups
/// with their process counts, each process's row as that node's `status --json` has it under
/// `processes`; a registered node that does not answer within 5 s is listed with
/// `reachable: false`), asked over this process's bus connection. On NATS only: the hub serves
/// one machine, whose tree [`status`] gives; there the list is empty.
pub async fn cluster() -> Result<serde_json::Value> {
    let bus = crate::bus::bus().map_err(|e| Error::new(ErrorKind::NotRunning, e.to_string()))?;
    if !bus.spans_nodes() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    let nodes = super::cluster::census(&bus).await;
    serde_json::to_value(nodes).map_err(|e| Error::new(ErrorKind::Control, e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn outside_a_worker_process_the_status_is_refused_with_not_running() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt.block_on(super::status()).expect_err("no master");
        assert_eq!(err.kind(), crate::ErrorKind::NotRunning, "{err}");
    }
}
