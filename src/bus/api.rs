//! The bus as callbacks use it: worker addressing, channels and task pools. Every function
//! works from any callback of a worker process; the connection is made on first use.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::local::{self, bus};
use super::transport::Submission;
use super::{subject, BusError, BusMessage, Headers, Subscription, STATUS_HEADER};

/// Header naming the sending process (`node/group/id`).
pub(crate) const FROM_HEADER: &str = "from";

/// Default deadline of [`submit`].
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of times a task is given to another process after its process died.
pub const DEFAULT_TASK_RETRIES: u8 = 3;

/// A worker process's address: node, worker group and id within the group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerAddr {
    /// The node (machine) name.
    pub node: String,
    /// The worker group's name.
    pub group: String,
    /// The process's id within the group, `0..count`.
    pub id: u32,
}

impl WorkerAddr {
    /// Process `id` of `group` on node `node` (another machine's, with the NATS bus).
    pub fn new(node: &str, group: &str, id: u32) -> WorkerAddr {
        WorkerAddr {
            node: node.to_string(),
            group: group.to_string(),
            id,
        }
    }

    /// Process `id` of `group` on this node.
    pub fn local(group: &str, id: u32) -> WorkerAddr {
        let node = local::identity()
            .map(|i| i.node)
            .unwrap_or_else(|| "local".into());
        WorkerAddr {
            node,
            group: group.to_string(),
            id,
        }
    }

    fn subject(&self) -> String {
        format!(
            "ox.w.{}.{}.{}",
            subject::token(&self.node),
            subject::token(&self.group),
            self.id
        )
    }

    fn parse(text: &str) -> Option<WorkerAddr> {
        let mut parts = text.rsplitn(3, '/');
        let id = parts.next()?.parse().ok()?;
        let group = parts.next()?.to_string();
        let node = parts.next()?.to_string();
        Some(WorkerAddr { node, group, id })
    }
}

impl fmt::Display for WorkerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.node, self.group, self.id)
    }
}

/// The subject a worker process receives its messages on.
pub(crate) fn worker_subject(node: &str, group: &str, id: u32) -> String {
    WorkerAddr {
        node: node.into(),
        group: group.into(),
        id,
    }
    .subject()
}

/// The subject every process of a group receives broadcasts on.
pub(crate) fn group_subject(group: &str) -> String {
    format!("ox.wg.{}", subject::token(group))
}

fn sender_headers() -> Headers {
    match local::identity() {
        Some(i) => Headers::new().with(FROM_HEADER, &format!("{}/{}/{}", i.node, i.group, i.id)),
        None => Headers::new(),
    }
}

/// A message to this worker process, as `on_worker_message` receives it.
#[derive(Debug, Clone)]
pub struct WorkerMessage {
    msg: BusMessage,
}

impl WorkerMessage {
    pub(crate) fn new(msg: BusMessage) -> WorkerMessage {
        WorkerMessage { msg }
    }

    /// Who sent it, when it came from another worker process.
    pub fn from(&self) -> Option<WorkerAddr> {
        self.msg
            .headers
            .get(FROM_HEADER)
            .and_then(WorkerAddr::parse)
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.msg.payload
    }

    /// The payload as text (lossy).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        self.msg.text()
    }

    /// The payload decoded from JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, BusError> {
        self.msg.json()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.msg.headers
    }

    /// True when the sender waits for a reply ([`ask_worker`]).
    pub fn wants_reply(&self) -> bool {
        self.msg.reply.is_some()
    }

    /// Answers an [`ask_worker`]; does nothing for a plain message.
    pub fn reply(&self, payload: impl Into<Bytes>) -> Result<(), BusError> {
        match &self.msg.reply {
            Some(r) => bus()?.publish_with(r, sender_headers(), payload, None),
            None => Ok(()),
        }
    }
}

/// Serialises `value` as JSON, the payload format other languages read.
pub fn to_json<T: Serialize>(value: &T) -> Result<Bytes, BusError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| BusError::Decode(e.to_string()))
}

/// Sends `payload` to process `id` of worker group `group` on this node (the seed's
/// `getWorkerById($id)->send(...)`); it arrives in that process's `on_worker_message`.
pub fn send_to_worker(group: &str, id: u32, payload: impl Into<Bytes>) -> Result<(), BusError> {
    send_to(&WorkerAddr::local(group, id), payload)
}

/// Sends `payload` to the worker process at `addr` (any node).
pub fn send_to(addr: &WorkerAddr, payload: impl Into<Bytes>) -> Result<(), BusError> {
    bus()?.publish_with(&addr.subject(), sender_headers(), payload, None)
}

/// Sends `payload` to process `id` of `group` on this node and waits for its reply.
pub async fn ask_worker(
    group: &str,
    id: u32,
    payload: impl Into<Bytes>,
    timeout: Duration,
) -> Result<BusMessage, BusError> {
    ask(&WorkerAddr::local(group, id), payload, timeout).await
}

/// Sends `payload` to the process at `addr` and waits for its reply.
pub async fn ask(
    addr: &WorkerAddr,
    payload: impl Into<Bytes>,
    timeout: Duration,
) -> Result<BusMessage, BusError> {
    bus()?
        .request(&addr.subject(), sender_headers(), payload, timeout)
        .await
}

/// Sends `payload` to every process of worker group `group`, on every node.
pub fn broadcast_to_group(group: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
    bus()?.publish_with(&group_subject(group), sender_headers(), payload, None)
}

fn channel_subject(topic: &str) -> String {
    format!("ox.ch.{topic}")
}

/// Publishes `payload` on channel `topic` (dot-separated tokens).
pub fn publish(topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
    bus()?.publish_with(&channel_subject(topic), sender_headers(), payload, None)
}

/// Calls `handler` for every message on channels matching `topic` (`*` one token, `>` the
/// rest). The message's `subject` is `ox.ch.` followed by the topic it was published on.
pub fn subscribe(
    topic: &str,
    handler: impl Fn(BusMessage) + 'static,
) -> Result<Subscription, BusError> {
    bus()?.subscribe(&channel_subject(topic), None, handler)
}

/// Like [`subscribe`], but within `queue` group each message reaches one subscriber only.
pub fn subscribe_queue(
    topic: &str,
    queue: &str,
    handler: impl Fn(BusMessage) + 'static,
) -> Result<Subscription, BusError> {
    bus()?.subscribe(&channel_subject(topic), Some(queue), handler)
}

/// Ends a subscription.
pub fn unsubscribe(sub: Subscription) -> Result<(), BusError> {
    bus()?.unsubscribe(sub)
}

/// How a task is submitted.
#[derive(Debug, Clone, Copy)]
pub struct SubmitOptions {
    /// How long to wait for the result.
    pub timeout: Duration,
    /// How many times the task may be given to another process after its process died.
    pub max_retries: u8,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            timeout: DEFAULT_TASK_TIMEOUT,
            max_retries: DEFAULT_TASK_RETRIES,
        }
    }
}

/// Submits a task to pool `pool` (a worker group with `on_task`) and waits for its result.
pub async fn submit(pool: &str, payload: impl Into<Bytes>) -> Result<Bytes, BusError> {
    submit_with(pool, payload, SubmitOptions::default()).await
}

/// [`submit`] with a deadline and retry limit of your choice.
pub async fn submit_with(
    pool: &str,
    payload: impl Into<Bytes>,
    opts: SubmitOptions,
) -> Result<Bytes, BusError> {
    bus()?.submit(pool, payload, opts).await
}

impl super::Bus {
    /// Submits a task to `pool` over this connection and waits for its result.
    pub async fn submit(
        &self,
        pool: &str,
        payload: impl Into<Bytes>,
        opts: SubmitOptions,
    ) -> Result<Bytes, BusError> {
        let deadline = super::handle::deadline_after(opts.timeout);
        let (reply, token, rx) = self.task_reply_slot()?;
        let queued = self.queue_task(Submission {
            pool: pool.into(),
            reply: Some(reply),
            max_retries: opts.max_retries,
            payload: payload.into(),
            deadline,
        });
        let queued = match queued {
            Ok(queuing) => queuing.await,
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            self.forget_pending(token);
            return Err(e);
        }
        let answer = self.await_reply(token, rx, deadline).await?;
        match answer.headers.get(STATUS_HEADER) {
            Some("ok") => Ok(answer.payload),
            Some("failed") => Err(BusError::TaskFailed(answer.text().into_owned())),
            Some("full") => Err(BusError::PoolFull(pool.to_string())),
            Some("no-consumer") => Err(BusError::NoResponders(pool.to_string())),
            Some("retries-exhausted") => {
                Err(BusError::RetriesExhausted(answer.text().into_owned()))
            }
            other => Err(BusError::TaskFailed(format!(
                "unexpected task status {other:?}"
            ))),
        }
    }

    /// Submits a task to `pool` without waiting for (or receiving) its result. On NATS the
    /// task is queued in the background; a failure to queue it is logged.
    pub fn submit_detached(&self, pool: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        let queuing = self.queue_task(Submission {
            pool: pool.into(),
            reply: self.detached_reply()?,
            max_retries: DEFAULT_TASK_RETRIES,
            payload: payload.into(),
            deadline: tokio::time::Instant::now() + DEFAULT_TASK_TIMEOUT,
        })?;
        let pool = pool.to_string();
        tokio::task::spawn_local(async move {
            if let Err(e) = queuing.await {
                tracing::error!("a task for pool {pool} was not queued: {e}");
            }
        });
        Ok(())
    }
}

/// Submits a task without waiting for (or receiving) its result.
pub fn submit_detached(pool: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
    bus()?.submit_detached(pool, payload)
}

/// A task as `on_task` receives it.
#[derive(Debug, Clone)]
pub struct Task {
    /// The pool's name.
    pub pool: String,
    /// 1 for the first attempt, more when a previous process died while handling it.
    pub attempt: u8,
    /// The payload.
    pub payload: Bytes,
}

impl Task {
    /// The payload as text (lossy).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    /// The payload decoded from JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, BusError> {
        serde_json::from_slice(&self.payload).map_err(|e| BusError::Decode(e.to_string()))
    }
}

/// Runs a future on this process's loop: now [`oxwork::spawn`](crate::spawn).
#[deprecated(since = "0.1.0", note = "use oxwork::spawn")]
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
    crate::spawn(fut);
}
