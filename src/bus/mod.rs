//! Communication between processes: one bus with NATS's semantics (subjects, wildcards, queue
//! groups, request/reply with deadlines, headers), served on one machine by the embedded hub
//! process the master supervises, or across machines by NATS.
//!
//! Layers, bottom up: `subject` (rules and matching); `transport` (the contract a backend
//! provides) with its two backends, `hub/` (the embedded hub: framing, server, link) and `nats/`
//! (NATS and JetStream); `handle` ([`Bus`], the one door to a transport: size and subject
//! checks, request inboxes, scatter-gather); then the features built on `Bus`, reached through
//! the free functions of this module from any callback of a worker process: worker addressing
//! and channels and task submission (`api`), client routing (`routing`), shared state
//! (`state`), and the process's own connection (`local`). The subject layout and payload format
//! are documented in `docs/wire.md`.

mod api;
pub(crate) mod config;
mod group;
pub(crate) mod handle;
pub(crate) mod hub;
pub(crate) mod local;
mod nats;
pub(crate) mod pool_member;
pub(crate) mod routing;
pub mod state;
pub(crate) mod subject;
pub(crate) mod transport;

use std::fmt;

use bytes::Bytes;

/// The old path of [`crate::spawn`].
#[allow(deprecated)]
pub use api::spawn;
pub use api::{
    ask, ask_worker, broadcast_to_group, publish, send_to, send_to_worker, submit, submit_detached,
    submit_with, subscribe, subscribe_queue, to_json, unsubscribe, SubmitOptions, Task, WorkerAddr,
    WorkerMessage, DEFAULT_TASK_RETRIES, DEFAULT_TASK_TIMEOUT,
};
pub(crate) use api::{group_subject, worker_subject};
pub(crate) use config::BUS_ENV;
pub use config::{set_default_bus, NatsSettings};
pub use handle::{Bus, Subscription};
pub(crate) use hub::HubStats;
pub use local::bus;
pub use routing::{
    broadcast, client_count, close_client, group_client_ids, group_count, is_online,
    send_to_client, send_to_group, send_to_uid, uid_client_ids, uid_is_online, ClientId,
};
pub(crate) use transport::PoolStats;

/// `text` as one subject token (for names that go into subjects and file names).
pub(crate) fn subject_token(text: &str) -> String {
    subject::token(text)
}

/// Header asking the hub to tell the publisher how many subscribers got the message, so that it
/// can wait for exactly that many answers (scatter-gather).
pub(crate) const GATHER_HEADER: &str = "gather";

/// Header name carrying a reply's status (`503` no responders; task outcomes).
pub(crate) const STATUS_HEADER: &str = "status";

/// Header marking a task result that wants a receipt (durable tasks on NATS).
pub(crate) const RECEIPT_HEADER: &str = "ox-receipt";
/// Header of a durable task's result: the JetStream acknowledgement subject of the task, which
/// its submitter publishes to (an empty message: `+ACK`) once the result is in its hands.
pub(crate) const ACK_HEADER: &str = "ox-ack";
/// Header of a question to a submitter's reply subject (durable tasks on NATS): "has the result
/// of this task reached you?" It is asked before a redelivered task runs again, and only of
/// submitters whose task carries [`ANSWERS_PROBE_HEADER`].
pub(crate) const PROBE_HEADER: &str = "ox-probe";
/// Header of a task message: its submitter answers [`PROBE_HEADER`] questions.
pub(crate) const ANSWERS_PROBE_HEADER: &str = "ox-answers-probe";
/// The probe's answer when the result has arrived.
pub(crate) const PROBE_ANSWERED: &str = "answered";

/// Message headers: ordered `(name, value)` pairs, names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds a header (names may repeat).
    pub fn push(&mut self, name: String, value: String) {
        self.0.push((name, value));
    }

    /// Adds a header, builder style.
    pub fn with(mut self, name: &str, value: &str) -> Headers {
        self.push(name.to_string(), value.to_string());
        self
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All pairs in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A message received from the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// The subject it was published to.
    pub subject: String,
    /// Where to send a reply, if the sender asked for one.
    pub reply: Option<String>,
    /// Its headers.
    pub headers: Headers,
    /// Its payload.
    pub payload: Bytes,
}

impl BusMessage {
    /// The payload as text (lossy for non-UTF-8 bytes).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    /// The payload decoded from JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, BusError> {
        serde_json::from_slice(&self.payload).map_err(|e| BusError::Decode(e.to_string()))
    }
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusError {
    /// The subject breaks the rules (empty token, wildcard where not allowed, ...).
    InvalidSubject(String),
    /// The payload is larger than the bus accepts.
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A name, key or header is longer than the bus carries.
    TooLong {
        /// What it is (`"subject"`, `"shared-state key"`, `"header value"`, ...).
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A header's name or value cannot travel on the bus (a name with a space or colon, a
    /// value with a line break).
    InvalidHeader(String),
    /// Nobody is subscribed to the subject of a request.
    NoResponders(String),
    /// No reply within the deadline.
    Timeout,
    /// The bus connection is down and its outbound buffer is full; nothing was queued.
    Backpressure,
    /// The connection to the hub was lost while waiting for an answer.
    Disconnected,
    /// This process has no bus (it is not a worker process).
    NotAvailable,
    /// A task pool refused the task: its queue is full.
    PoolFull(String),
    /// The task's handler reported a failure.
    TaskFailed(String),
    /// The task was retried as often as allowed, each time its process died.
    RetriesExhausted(String),
    /// A shared-state operation failed.
    State(String),
    /// A payload could not be (de)serialised.
    Decode(String),
    /// The bus is configured wrongly (an address, credentials, a certificate file).
    Config(String),
    /// The bus's servers could not take the operation before its deadline, though connected
    /// (on NATS: JetStream electing a leader, or the servers holding a stream down).
    Unavailable(String),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::InvalidSubject(s) => write!(f, "invalid subject {s}"),
            BusError::PayloadTooLarge { size, limit } => {
                write!(
                    f,
                    "payload of {size} bytes exceeds the bus limit of {limit}"
                )
            }
            BusError::TooLong { what, size, limit } => {
                write!(f, "{what} of {size} bytes exceeds the bus limit of {limit}")
            }
            BusError::InvalidHeader(m) => write!(f, "invalid header: {m}"),
            BusError::NoResponders(s) => write!(f, "no responders on {s}"),
            BusError::Timeout => f.write_str("no reply before the deadline"),
            BusError::Backpressure => {
                f.write_str("bus unavailable and its outbound buffer is full; message refused")
            }
            BusError::Disconnected => f.write_str("connection to the bus lost"),
            BusError::NotAvailable => f.write_str("no bus in this process"),
            BusError::Unavailable(why) => write!(f, "bus unavailable: {why}"),
            BusError::PoolFull(p) => write!(f, "task pool {p} is full"),
            BusError::TaskFailed(m) => write!(f, "task failed: {m}"),
            BusError::RetriesExhausted(m) => write!(f, "task retries exhausted: {m}"),
            BusError::State(m) => write!(f, "shared state: {m}"),
            BusError::Decode(m) => write!(f, "cannot decode payload: {m}"),
            BusError::Config(m) => write!(f, "bus configuration: {m}"),
        }
    }
}

impl std::error::Error for BusError {}
