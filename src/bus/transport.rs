//! The contract every bus transport provides, and the types it speaks.
//!
//! A transport moves messages between this process and the others: the embedded hub
//! (`hub/`, one machine) or NATS (`nats/`, many). [`Bus`](super::Bus) is its only caller: it
//! checks subjects and sizes once, keeps request inboxes and scatter-gather, and hands the
//! transport only input that both transports accept, so they refuse nothing differently. A
//! third engine is a new folder implementing [`Transport`], not edits across the bus.
//!
//! Every transport:
//! - publishes without blocking, in order, and holds at most [`MAX_OUTBOUND`] bytes while its
//!   server is unreachable, refusing more with [`BusError::Backpressure`];
//! - keeps its subscriptions and pool membership across reconnections by itself;
//! - answers a request that reaches nobody with a `status: 503` message to the reply subject;
//! - runs handlers on this process's thread, each under a panic guard.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};

use super::{BusError, BusMessage, Headers};

/// Bytes a connection holds while the bus is unreachable (or slow) before refusing more.
pub(crate) const MAX_OUTBOUND: usize = 16 * 1024 * 1024;
/// Largest payload (message, shared-state value, task, task result) on either transport.
pub(crate) const MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// A message on its way out, as [`Bus`](super::Bus) checked it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) reply: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) payload: Bytes,
}

/// What a subscription asks for: a subject (wildcards allowed) and, optionally, the queue
/// group that shares its messages.
#[derive(Debug, Clone)]
pub(crate) struct Interest {
    pub(crate) subject: String,
    pub(crate) queue: Option<String>,
}

/// The next id from `counter` (subscription ids, request ids): 1, 2, ...
pub(crate) fn next_id(counter: &std::cell::Cell<u32>) -> u32 {
    let id = counter.get().wrapping_add(1);
    counter.set(id);
    id
}

/// Runs for each message of a subscription.
pub(crate) type Handler = Rc<dyn Fn(BusMessage)>;
/// Runs for each task handed to this process by its pool.
pub(crate) type TaskHandler = Rc<dyn Fn(TaskDelivery)>;

/// How a process joins its pool: the pool's name and the group's pool settings.
#[derive(Debug, Clone)]
pub(crate) struct PoolSpec {
    pub(crate) pool: String,
    /// Tasks this process runs at once.
    pub(crate) concurrency: u32,
    /// Tasks the pool queues before refusing more.
    pub(crate) max_queue: u32,
    /// (NATS) how long a task may go without a sign of life before it is redelivered.
    pub(crate) lease: Duration,
}

/// A task handed to this process.
#[derive(Debug)]
pub(crate) struct TaskDelivery {
    pub(crate) pool: String,
    /// The transport's id of this task, given back with its result.
    pub(crate) task: u64,
    pub(crate) attempt: u8,
    pub(crate) payload: Bytes,
}

/// A task's outcome, as this process reports it.
#[derive(Debug)]
pub(crate) struct TaskOutcome {
    pub(crate) task: u64,
    pub(crate) ok: bool,
    /// The result, or the failure's text.
    pub(crate) payload: Bytes,
}

/// A task on its way to a pool.
#[derive(Debug, Clone)]
pub(crate) struct Submission {
    /// Shared, like `reply`: a submission is kept for a replacement hub and encoded from the
    /// same strings, without copies.
    pub(crate) pool: Rc<str>,
    /// Where the result goes (none: fire and forget).
    pub(crate) reply: Option<Rc<str>>,
    pub(crate) max_retries: u8,
    pub(crate) payload: Bytes,
    /// Until when queuing may be retried while the server is away.
    pub(crate) deadline: tokio::time::Instant,
}

/// Shared-state operations.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KvOp {
    Get {
        key: String,
    },
    Set {
        key: String,
        value: Bytes,
        ttl_ms: u64,
    },
    /// Set `value` if the current value is `expected` (`None`: if the key is absent).
    Cas {
        key: String,
        expected: Option<Bytes>,
        value: Bytes,
        ttl_ms: u64,
    },
    Incr {
        key: String,
        by: i64,
        ttl_ms: u64,
    },
    Delete {
        key: String,
    },
}

impl KvOp {
    /// The key the operation is about.
    pub(crate) fn key(&self) -> &str {
        match self {
            KvOp::Get { key }
            | KvOp::Set { key, .. }
            | KvOp::Cas { key, .. }
            | KvOp::Incr { key, .. }
            | KvOp::Delete { key } => key,
        }
    }

    /// The values it carries (to check their sizes).
    pub(crate) fn values(&self) -> impl Iterator<Item = &Bytes> {
        let (a, b) = match self {
            KvOp::Set { value, .. } => (Some(value), None),
            KvOp::Cas {
                expected, value, ..
            } => (Some(value), expected.as_ref()),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// A shared-state operation's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KvResult {
    Value(Option<Bytes>),
    Done(bool),
    Number(i64),
    Error(String),
}

/// One task pool's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PoolStats {
    /// The pool (worker group) name.
    pub(crate) name: String,
    /// Processes taking tasks.
    pub(crate) consumers: u64,
    /// Waiting for a process.
    pub(crate) queued: u64,
    /// Being handled now.
    pub(crate) running: u64,
    /// Completed successfully.
    pub(crate) done: u64,
    /// Completed with an error, refused as full, or out of retries.
    pub(crate) failed: u64,
    /// Given to another process after theirs died.
    pub(crate) retried: u64,
    /// Out of retries and kept for an operator (NATS: in the `OX_DEAD` stream).
    #[serde(default)]
    pub(crate) dead: u64,
}

/// What a transport can do beyond the contract's common part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// A gather learns how many subscribers were reached (the hub); otherwise it ends when
    /// answers stall.
    pub(crate) counted_gather: bool,
    /// Shared state can be listed by key prefix (NATS).
    pub(crate) lists_state: bool,
    /// Submitted tasks outlive a lost connection: the transport submits them again to the
    /// server it reconnects to (the hub, whose queues die with it), so a submitter keeps
    /// waiting rather than failing with `Disconnected`, and fire-and-forget submissions need a
    /// reply subject for the transport to learn they are done.
    pub(crate) resubmits_tasks: bool,
    /// Trees of other machines share it and their masters register on it (NATS), so it has
    /// a cluster to list; the hub serves one tree.
    pub(crate) spans_nodes: bool,
}

/// The contract of a bus transport (see the module's documentation for what every transport
/// guarantees). Futures run on this process's loop; none needs to be `Send`.
pub(crate) trait Transport {
    /// Where it connects, for logs and `status` (passwords hidden).
    fn describe(&self) -> String;

    /// What it can do beyond the common part.
    fn capabilities(&self) -> Capabilities;

    /// True while connected.
    fn is_connected(&self) -> bool;

    /// Waits until connected, at most `limit`; returns whether it is.
    fn wait_connected(&self, limit: Duration) -> LocalBoxFuture<'_, bool>;

    /// The largest payload it carries now (at most [`MAX_PAYLOAD`]).
    fn max_payload(&self) -> usize;

    /// Queues a message. Input was checked by [`Bus`](super::Bus).
    fn publish(&self, message: Outgoing) -> Result<(), BusError>;

    /// Starts delivering the messages `interest` names to `handler`; returns the
    /// subscription's id.
    fn subscribe(&self, interest: Interest, handler: Handler) -> Result<u32, BusError>;

    /// Ends a subscription (unknown ids are ignored).
    fn unsubscribe(&self, sid: u32) -> Result<(), BusError>;

    /// Runs one shared-state operation, at most `timeout`.
    fn state(&self, op: KvOp, timeout: Duration) -> LocalBoxFuture<'_, Result<KvResult, BusError>>;

    /// Every live shared-state entry whose key starts with `prefix` (only where
    /// [`Capabilities::lists_state`]; otherwise [`BusError::NotAvailable`]).
    fn state_entries(
        &self,
        prefix: &str,
        timeout: Duration,
    ) -> LocalBoxFuture<'_, Result<Vec<(String, Bytes)>, BusError>>;

    /// Makes this process a member of `spec.pool`, taking tasks through `handler`.
    fn join_pool(&self, spec: PoolSpec, handler: TaskHandler) -> Result<(), BusError>;

    /// Reports a task's outcome (its size was checked, an oversized result already turned into
    /// a failure).
    fn task_done(&self, outcome: TaskOutcome) -> Result<(), BusError>;

    /// Queues a task on its pool. The future owns what it needs, so it can run detached.
    fn submit(&self, task: Submission) -> LocalBoxFuture<'static, Result<(), BusError>>;

    /// Figures of the named pools where the transport keeps them apart from the processes
    /// (NATS's streams); empty otherwise (the hub reports its own).
    fn pool_stats(&self, pools: Vec<String>) -> LocalBoxFuture<'_, Vec<PoolStats>>;

    /// Before the process exits: running tasks get up to `limit`, the rest go back to their
    /// queue, and what is queued to send is sent.
    fn wind_down(&self, limit: Duration) -> LocalBoxFuture<'_, ()>;

    /// `f` runs when an established connection is lost, so that requests in flight fail at
    /// once instead of at their deadline. Transports whose requests cannot outlive a lost
    /// connection keep it; others may ignore it.
    fn set_on_lost(&self, f: Rc<dyn Fn()>);

    /// `f` runs whenever the server cannot be reached (the hub: the worker asks the master to
    /// start it). Transports whose server is not ours ignore it.
    fn set_on_unreachable(&self, f: Rc<dyn Fn()>);

    /// How long the connection has been down, when it is (`None` while connected, and where
    /// the transport does not know).
    fn disconnected_for(&self) -> Option<Duration> {
        None
    }
}
