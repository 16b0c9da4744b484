//! [`Bus`]: one process's connection to the bus, over either transport (the embedded hub or
//! NATS), with the parts both share: subject and size checks, request/reply inboxes and
//! scatter-gather.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::oneshot;

use super::config::NatsSettings;
use super::hub::HubLink;
use super::nats::NatsLink;
use super::subject;
use super::transport::{
    Handler, Interest, KvOp, KvResult, Outgoing, PoolSpec, PoolStats, Submission, TaskHandler,
    TaskOutcome, Transport,
};
use super::{
    BusError, BusMessage, Headers, ACK_HEADER, PROBE_ANSWERED, PROBE_HEADER, RECEIPT_HEADER,
    STATUS_HEADER,
};

/// Requests waiting for replies at once.
const MAX_PENDING: usize = 100_000;
/// Scatter-gathers under way at once.
const MAX_GATHERS: usize = 1024;
/// Answers one scatter-gather collects at most; later ones are dropped (and logged).
const MAX_GATHER_ANSWERS: usize = 10_000;
/// On NATS, which does not say how many subscribers a message reached, a gather ends when no
/// further answer has come for this long after the last one.
const GATHER_STALL: Duration = Duration::from_millis(150);
/// How many reply tokens whose durable result arrived a `Bus` remembers for probes; older
/// ones are forgotten (their task then runs again if redelivered, as without the record).
const ANSWERED_MEMORY: usize = 4096;

/// Longest subject, reply subject, queue group, pool name or shared-state key, in bytes (NATS
/// refuses protocol lines over 4 KiB; a key is escaped to twice its length at worst).
pub(crate) const MAX_NAME: usize = 1024;
/// Longest header value, in bytes.
const MAX_HEADER_VALUE: usize = 16 * 1024;
/// All of a message's headers together, in bytes (the hub frames them within 64 KiB with the
/// subjects).
const MAX_HEADERS: usize = 32 * 1024;

/// `timeout` from now; a timeout too long to add (`Duration::MAX`, "no limit") is about 30
/// years, as tokio's own far future.
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// Receives the one answer to a request.
pub(crate) type ReplyReceiver = oneshot::Receiver<Result<BusMessage, BusError>>;

struct Inner {
    link: Rc<dyn Transport>,
    inbox: String,
    inbox_sid: Cell<Option<u32>>,
    next_token: Cell<u64>,
    pending: RefCell<FxHashMap<u64, oneshot::Sender<Result<BusMessage, BusError>>>>,
    /// Pending tokens of submitted tasks the transport submits again after a lost connection:
    /// those keep waiting when the connection drops.
    outlive_loss: RefCell<FxHashSet<u64>>,
    gathers: RefCell<FxHashMap<u64, tokio::sync::mpsc::Sender<BusMessage>>>,
    /// Reply tokens whose durable task result arrived (bounded).
    answered: RefCell<RecentTokens>,
    /// Where reply subjects are put together before they are shared.
    reply_scratch: RefCell<String>,
}

/// The last [`ANSWERED_MEMORY`] tokens inserted.
#[derive(Default)]
struct RecentTokens {
    set: FxHashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

impl RecentTokens {
    fn insert(&mut self, token: u64) {
        if !self.set.insert(token) {
            return;
        }
        self.order.push_back(token);
        if self.order.len() > ANSWERED_MEMORY {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
    }

    fn contains(&self, token: u64) -> bool {
        self.set.contains(&token)
    }
}

/// A connection to the bus. Cheap to clone; every clone is the same connection.
///
/// Publishing never blocks: messages are queued and written in batches. While the bus is
/// unreachable, up to 16 MiB is held and sent once it is back; past that, calls fail with
/// [`BusError::Backpressure`]. Subscriptions survive reconnection.
#[derive(Clone)]
pub struct Bus {
    inner: Rc<Inner>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Bus");
        d.field("transport", &self.inner.link.describe())
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// An active subscription; pass it to [`Bus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subscription(u32);

pub(crate) fn unique_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

impl Bus {
    fn with_link(link: Rc<dyn Transport>) -> Bus {
        let bus = Bus {
            inner: Rc::new(Inner {
                link,
                inbox: format!("_INBOX.{}", unique_token()),
                inbox_sid: Cell::new(None),
                next_token: Cell::new(0),
                pending: RefCell::default(),
                outlive_loss: RefCell::default(),
                gathers: RefCell::default(),
                answered: RefCell::new(RecentTokens::default()),
                reply_scratch: RefCell::default(),
            }),
        };
        let me = Rc::downgrade(&bus.inner);
        bus.inner.link.set_on_lost(Rc::new(move || {
            if let Some(inner) = me.upgrade() {
                let survivors = inner.outlive_loss.borrow();
                let mut pending = inner.pending.borrow_mut();
                let lost: Vec<u64> = pending
                    .keys()
                    .filter(|t| !survivors.contains(t))
                    .copied()
                    .collect();
                for token in lost {
                    if let Some(tx) = pending.remove(&token) {
                        let _ = tx.send(Err(BusError::Disconnected));
                    }
                }
            }
        }));
        bus
    }

    /// Connects to the hub listening at `path`, reconnecting by itself whenever the connection
    /// drops. Must be called inside a worker process's loop (or any tokio `LocalSet`).
    pub fn connect_hub(path: impl Into<PathBuf>, name: &str) -> Bus {
        Bus::with_link(Rc::new(HubLink::connect(path.into(), name)))
    }

    /// Connects to NATS at `urls` (comma-separated, `nats://host:port`), with authentication
    /// and TLS from the `OXWORK_BUS_*` environment variables. Returns at once; the connection
    /// is made, and remade after any loss, in the background. Must be called inside a tokio
    /// `LocalSet` (as every worker process's loop is).
    pub fn connect_nats(urls: &str, name: &str) -> Result<Bus, BusError> {
        let settings = NatsSettings::from_urls_and_env(urls)?;
        Ok(Bus::connect_nats_with(settings, name))
    }

    /// [`connect_nats`](Self::connect_nats) with settings given explicitly.
    pub fn connect_nats_with(settings: NatsSettings, name: &str) -> Bus {
        Bus::with_link(Rc::new(NatsLink::connect(settings, name)))
    }

    /// Called whenever the hub cannot be reached (the worker asks the master to start it).
    pub(crate) fn set_on_unreachable(&self, f: Rc<dyn Fn()>) {
        self.inner.link.set_on_unreachable(f);
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    /// How long the bus has been unreachable, while it is: on NATS a lost link (a server down,
    /// or a partition, noticed within two ping intervals) counts from the moment it was
    /// noticed. `None` while connected.
    pub fn disconnected_for(&self) -> Option<Duration> {
        if self.is_connected() {
            return None;
        }
        self.inner.link.disconnected_for()
    }

    /// Waits until connected, at most `limit`; returns whether it is.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        self.inner.link.wait_connected(limit).await
    }

    /// The largest payload this bus accepts.
    pub fn max_payload(&self) -> usize {
        self.inner.link.max_payload()
    }

    pub(crate) fn check_payload(&self, payload: &[u8]) -> Result<(), BusError> {
        let limit = self.max_payload();
        if payload.len() > limit {
            return Err(BusError::PayloadTooLarge {
                size: payload.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Publishes `payload` to `subject`.
    pub fn publish(&self, subject: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        self.publish_with(subject, Headers::new(), payload, None)
    }

    /// Publishes with headers and, optionally, a subject to reply to.
    pub fn publish_with(
        &self,
        subject: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
        reply: Option<&str>,
    ) -> Result<(), BusError> {
        check_subject(subject)?;
        if let Some(r) = reply {
            check_subject(r)?;
        }
        check_headers(&headers)?;
        let payload = payload.into();
        self.check_payload(&payload)?;
        self.inner.link.publish(Outgoing {
            subject: subject.to_string(),
            reply: reply.map(str::to_string),
            headers,
            payload,
        })
    }

    /// Subscribes `handler` to `subject` (wildcards allowed). With a `queue` group, each
    /// message goes to one member of the group only.
    pub fn subscribe(
        &self,
        subject: &str,
        queue: Option<&str>,
        handler: impl Fn(BusMessage) + 'static,
    ) -> Result<Subscription, BusError> {
        check_length("subject", subject, MAX_NAME)?;
        subject::check_subscribe(subject)?;
        if let Some(q) = queue {
            check_subject(q)?;
        }
        let handler: Handler = Rc::new(handler);
        let interest = Interest {
            subject: subject.to_string(),
            queue: queue.map(str::to_string),
        };
        let sid = self.inner.link.subscribe(interest, handler)?;
        Ok(Subscription(sid))
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, sub: Subscription) -> Result<(), BusError> {
        self.inner.link.unsubscribe(sub.0)
    }

    fn ensure_inbox(&self) -> Result<(), BusError> {
        if self.inner.inbox_sid.get().is_none() {
            let me = Rc::downgrade(&self.inner);
            let sid = self.subscribe(&format!("{}.*", self.inner.inbox), None, move |msg| {
                let Some(inner) = me.upgrade() else { return };
                Bus { inner }.on_inbox(msg);
            })?;
            self.inner.inbox_sid.set(Some(sid.0));
        }
        Ok(())
    }

    fn on_inbox(&self, msg: BusMessage) {
        let token = msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        if msg.headers.get(PROBE_HEADER).is_some() {
            // A pool process about to run a redelivered task asks whether its result is here.
            if let (Some(r), Some(t)) = (&msg.reply, token) {
                let known = self.inner.answered.borrow().contains(t);
                let answer = if known { PROBE_ANSWERED } else { "waiting" };
                let _ = self.publish_with(r, Headers::new(), answer, None);
            }
            return;
        }
        if msg.headers.get(RECEIPT_HEADER).is_some() {
            // A durable task's result: confirm it whether or not it is still awaited (it may be
            // a second delivery), so the task can be acknowledged and not run again, and
            // remember it, so that a redelivery caused by a lost acknowledgement is not run.
            if let Some(t) = token {
                self.inner.answered.borrow_mut().insert(t);
            }
            if let Some(ack) = msg.headers.get(ACK_HEADER) {
                if let Err(e) = self.publish_with(ack, Headers::new(), Bytes::new(), None) {
                    tracing::debug!("a task's acknowledgement not sent ({e}); it will be asked");
                }
            } else if let Some(r) = &msg.reply {
                // A result from an older pool process, which acknowledges on this receipt.
                let _ = self.publish_with(r, Headers::new(), Bytes::new(), None);
            }
        }
        if let Some(tx) = token.and_then(|t| self.inner.gathers.borrow().get(&t).cloned()) {
            if tx.try_send(msg).is_err() {
                tracing::warn!(
                    "a scatter-gather's answers passed {MAX_GATHER_ANSWERS} (or it ended); the \
                     rest are dropped"
                );
            }
            return;
        }
        if let Some(t) = token {
            self.inner.outlive_loss.borrow_mut().remove(&t);
        }
        if let Some(tx) = token.and_then(|t| self.inner.pending.borrow_mut().remove(&t)) {
            let result = if msg.headers.get(STATUS_HEADER) == Some("503") {
                Err(BusError::NoResponders(msg.text().into_owned()))
            } else {
                Ok(msg)
            };
            let _ = tx.send(result);
        }
    }

    /// `inbox.MARKtoken`, made with one allocation (one of these is made per request and task).
    fn reply_subject(&self, mark: &str, token: u64) -> Rc<str> {
        let mut scratch = self.inner.reply_scratch.borrow_mut();
        scratch.clear();
        scratch.push_str(&self.inner.inbox);
        scratch.push('.');
        scratch.push_str(mark);
        scratch.push_str(itoa::Buffer::new().format(token));
        Rc::from(scratch.as_str())
    }

    /// A fresh reply subject and the receiver of its one answer.
    /// Whether other machines' trees share this bus (NATS), so that a cluster can be listed.
    pub(crate) fn spans_nodes(&self) -> bool {
        self.inner.link.capabilities().spans_nodes
    }

    pub(crate) fn reply_slot(&self) -> Result<(Rc<str>, u64, ReplyReceiver), BusError> {
        self.ensure_inbox()?;
        if self.inner.pending.borrow().len() >= MAX_PENDING {
            return Err(BusError::Backpressure);
        }
        let token = self.inner.next_token.get() + 1;
        self.inner.next_token.set(token);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.borrow_mut().insert(token, tx);
        Ok((self.reply_subject("", token), token, rx))
    }

    /// A reply slot for a submitted task: on a transport that submits tasks again after a lost
    /// connection (the hub), it keeps waiting through the loss.
    pub(crate) fn task_reply_slot(&self) -> Result<(Rc<str>, u64, ReplyReceiver), BusError> {
        let slot = self.reply_slot()?;
        if self.inner.link.capabilities().resubmits_tasks {
            self.inner.outlive_loss.borrow_mut().insert(slot.1);
        }
        Ok(slot)
    }

    /// The reply subject of a fire-and-forget task, where the transport needs one to learn
    /// that it is done (see `Capabilities::resubmits_tasks`); its answer is dropped.
    pub(crate) fn detached_reply(&self) -> Result<Option<Rc<str>>, BusError> {
        if !self.inner.link.capabilities().resubmits_tasks {
            return Ok(None);
        }
        self.ensure_inbox()?;
        let token = self.inner.next_token.get() + 1;
        self.inner.next_token.set(token);
        // Not a number, so the inbox never takes it for an awaited answer.
        Ok(Some(self.reply_subject("d", token)))
    }

    pub(crate) async fn await_reply(
        &self,
        token: u64,
        rx: ReplyReceiver,
        deadline: tokio::time::Instant,
    ) -> Result<BusMessage, BusError> {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BusError::Disconnected),
            Err(_) => {
                self.forget_pending(token);
                Err(BusError::Timeout)
            }
        }
    }

    pub(crate) fn forget_pending(&self, token: u64) {
        self.inner.pending.borrow_mut().remove(&token);
        self.inner.outlive_loss.borrow_mut().remove(&token);
    }

    /// Sends a request and waits for its first reply, at most `timeout`.
    pub async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        let payload = payload.into();
        check_subject(subject)?;
        self.check_payload(&payload)?;
        let (reply, token, rx) = self.reply_slot()?;
        if let Err(e) = self.publish_with(subject, headers, payload, Some(&reply)) {
            self.forget_pending(token);
            return Err(e);
        }
        self.await_reply(token, rx, deadline_after(timeout)).await
    }

    /// Sends a request to every subscriber of `subject` and collects their answers: on the hub,
    /// as many as it reports it reached; on NATS, until no more arrive for a moment; in any
    /// case what arrived by `timeout`. Nobody subscribed: no answers, at once.
    pub async fn gather(
        &self,
        subject: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Vec<BusMessage>, BusError> {
        self.ensure_inbox()?;
        if self.inner.gathers.borrow().len() >= MAX_GATHERS {
            return Err(BusError::Backpressure);
        }
        let token = self.inner.next_token.get() + 1;
        self.inner.next_token.set(token);
        let (tx, mut rx) = tokio::sync::mpsc::channel(MAX_GATHER_ANSWERS);
        self.inner.gathers.borrow_mut().insert(token, tx);
        let reply = format!("{}.{token}", self.inner.inbox);
        let headers = headers.with(super::GATHER_HEADER, "1");
        if let Err(e) = self.publish_with(subject, headers, payload, Some(&reply)) {
            self.inner.gathers.borrow_mut().remove(&token);
            return Err(e);
        }
        let counted = self.inner.link.capabilities().counted_gather;
        let mut expected: Option<usize> = None;
        let mut answers = Vec::new();
        let deadline = deadline_after(timeout);
        loop {
            if expected.is_some_and(|n| answers.len() >= n) {
                break;
            }
            let until = if !counted && !answers.is_empty() {
                deadline.min(tokio::time::Instant::now() + GATHER_STALL)
            } else {
                deadline
            };
            let Ok(Some(msg)) = tokio::time::timeout_at(until, rx.recv()).await else {
                break;
            };
            match msg.headers.get(STATUS_HEADER) {
                Some("503") => {
                    expected = Some(0);
                }
                Some("gather") => expected = msg.text().parse().ok(),
                _ => answers.push(msg),
            }
        }
        self.inner.gathers.borrow_mut().remove(&token);
        Ok(answers)
    }

    /// Runs one shared-state operation, its key and values checked first.
    pub(crate) async fn kv(&self, op: KvOp, timeout: Duration) -> Result<KvResult, BusError> {
        check_length("shared-state key", op.key(), MAX_NAME)?;
        for value in op.values() {
            self.check_payload(value)?;
        }
        self.inner.link.state(op, timeout).await
    }

    /// Every live shared-state entry whose key starts with `prefix` (ending with `.`), at
    /// most `timeout`, where the transport can list them (NATS); otherwise `NotAvailable`.
    pub(crate) async fn kv_entries(
        &self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Vec<(String, Bytes)>, BusError> {
        check_length("shared-state key", prefix, MAX_NAME)?;
        self.inner.link.state_entries(prefix, timeout).await
    }

    /// Joins a pool as a consumer taking up to `spec.concurrency` tasks at once.
    pub(crate) fn join_pool(&self, spec: PoolSpec, handler: TaskHandler) -> Result<(), BusError> {
        check_subject(&spec.pool)?;
        self.inner.link.join_pool(spec, handler)
    }

    /// Reports a task's outcome. A result too large for the bus becomes a failure that says
    /// so, which the submitter can read.
    pub(crate) fn task_done(&self, task: u64, ok: bool, payload: Bytes) -> Result<(), BusError> {
        let outcome = match self.check_payload(&payload) {
            Ok(()) => TaskOutcome { task, ok, payload },
            Err(e) => TaskOutcome {
                task,
                ok: false,
                payload: Bytes::from(format!("the task's result is too large: {e}")),
            },
        };
        self.inner.link.task_done(outcome)
    }

    /// Queues a task on its pool, checked first. The future owns what it needs, so it may run
    /// detached.
    pub(crate) fn queue_task(
        &self,
        task: Submission,
    ) -> Result<LocalBoxFuture<'static, Result<(), BusError>>, BusError> {
        check_subject(&task.pool)?;
        if let Some(r) = &task.reply {
            check_subject(r)?;
        }
        self.check_payload(&task.payload)?;
        Ok(self.inner.link.submit(task))
    }

    /// Figures of the named pools where the transport keeps them (NATS); empty on the hub,
    /// whose own report has them.
    pub(crate) async fn pool_stats(&self, pools: Vec<String>) -> Vec<PoolStats> {
        self.inner.link.pool_stats(pools).await
    }

    /// Before the process exits: running tasks get up to `limit`, the rest go back to their
    /// queue, and what is queued to send is sent.
    pub(crate) async fn wind_down(&self, limit: Duration) {
        self.inner.link.wind_down(limit).await
    }
}

/// A subject (or queue group, pool name, reply subject) the bus can carry: NATS's rules, and at
/// most [`MAX_NAME`] bytes.
fn check_subject(subject: &str) -> Result<(), BusError> {
    check_length("subject", subject, MAX_NAME)?;
    subject::check_publish(subject)
}

fn check_length(what: &'static str, text: &str, limit: usize) -> Result<(), BusError> {
    if text.len() > limit {
        return Err(BusError::TooLong {
            what,
            size: text.len(),
            limit,
        });
    }
    Ok(())
}

/// Headers both transports carry unchanged: names of visible ASCII without `:`, values without
/// line breaks, within the size limits.
pub(crate) fn check_headers(headers: &Headers) -> Result<(), BusError> {
    let mut total = 0;
    for (name, value) in headers.pairs() {
        check_length("header name", name, MAX_NAME)?;
        check_length("header value", value, MAX_HEADER_VALUE)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(BusError::InvalidHeader(format!(
                "name {name:?} (visible ASCII without ':' only)"
            )));
        }
        if value.contains(['\r', '\n']) {
            return Err(BusError::InvalidHeader(format!(
                "the value of {name} has a line break"
            )));
        }
        total += name.len() + value.len() + 4;
    }
    if total > MAX_HEADERS {
        return Err(BusError::TooLong {
            what: "headers",
            size: total,
            limit: MAX_HEADERS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timeout_too_long_to_add_means_a_far_deadline_not_a_panic() {
        let now = tokio::time::Instant::now();
        let far = deadline_after(Duration::MAX);
        assert!(far > now + Duration::from_secs(86_400 * 365));
        let soon = deadline_after(Duration::from_secs(1));
        assert!(soon > now && soon <= tokio::time::Instant::now() + Duration::from_secs(1));
    }
}
