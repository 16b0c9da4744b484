//! [`Bus`]: one process's connection to the hub, with reconnection, re-subscription, a bounded
//! outbound buffer, request/reply inboxes, shared-state calls and task-pool membership.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::spawn_local;

use super::hub::MAX_PAYLOAD;
use super::subject;
use super::wire::{self, Frame, KvOp, KvResult};
use super::{BusError, BusMessage, Headers, STATUS_HEADER};
use crate::guard::guarded;

/// Bytes of frames a client holds while the hub is unreachable (or slow) before refusing.
pub(crate) const MAX_OUTBOUND: usize = 16 * 1024 * 1024;
/// Bytes handed to the socket per write call.
const MAX_WRITE: usize = 256 * 1024;
/// Requests waiting for replies at once.
const MAX_PENDING: usize = 100_000;

type Handler = Rc<dyn Fn(BusMessage)>;
/// Receives the one answer to a request.
pub(crate) type ReplyReceiver = oneshot::Receiver<Result<BusMessage, BusError>>;
pub(crate) type TaskHandler = Rc<dyn Fn(TaskDelivery)>;

/// A task the hub handed to this process.
pub(crate) struct TaskDelivery {
    pub(crate) pool: String,
    pub(crate) task: u64,
    pub(crate) attempt: u8,
    pub(crate) payload: Bytes,
}

struct SubState {
    subject: String,
    queue: Option<String>,
    handler: Handler,
}

struct Inner {
    path: PathBuf,
    name: String,
    out: RefCell<BytesMut>,
    /// Bytes at the front of `out` already written on the current connection; a frame cut
    /// short by a lost connection is sent again whole on the next one.
    written: Cell<usize>,
    wake: Notify,
    connected: Cell<bool>,
    ever_connected: Cell<bool>,
    subs: RefCell<BTreeMap<u32, SubState>>,
    next_sid: Cell<u32>,
    inbox: String,
    inbox_sid: Cell<Option<u32>>,
    next_token: Cell<u64>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Result<BusMessage, BusError>>>>,
    gathers: RefCell<HashMap<u64, tokio::sync::mpsc::UnboundedSender<BusMessage>>>,
    next_kv: Cell<u32>,
    kv_pending: RefCell<HashMap<u32, oneshot::Sender<KvResult>>>,
    pools: RefCell<Vec<(String, u32, u32)>>,
    task_handler: RefCell<Option<TaskHandler>>,
    on_unreachable: RefCell<Option<Rc<dyn Fn()>>>,
    connected_notify: Notify,
}

/// A connection to the bus. Cheap to clone; every clone is the same connection.
///
/// Publishing never blocks: frames are queued and written in batches. While the hub is
/// unreachable, up to 16 MiB is held and sent once it is back; past that, calls fail with
/// [`BusError::Backpressure`]. Subscriptions survive reconnection.
#[derive(Clone)]
pub struct Bus {
    inner: Rc<Inner>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("hub", &self.inner.path)
            .field("connected", &self.inner.connected.get())
            .finish()
    }
}

/// An active subscription; pass it to [`Bus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subscription(u32);

fn unique_token() -> String {
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
    /// Connects to the hub listening at `path`, reconnecting by itself whenever the connection
    /// drops. Must be called inside a worker process's loop (or any tokio `LocalSet`).
    pub fn connect_hub(path: impl Into<PathBuf>, name: &str) -> Bus {
        let bus = Bus {
            inner: Rc::new(Inner {
                path: path.into(),
                name: name.to_string(),
                out: RefCell::new(BytesMut::new()),
                written: Cell::new(0),
                wake: Notify::new(),
                connected: Cell::new(false),
                ever_connected: Cell::new(false),
                subs: RefCell::new(BTreeMap::new()),
                next_sid: Cell::new(0),
                inbox: format!("_INBOX.{}", unique_token()),
                inbox_sid: Cell::new(None),
                next_token: Cell::new(0),
                pending: RefCell::new(HashMap::new()),
                gathers: RefCell::new(HashMap::new()),
                next_kv: Cell::new(0),
                kv_pending: RefCell::new(HashMap::new()),
                pools: RefCell::new(Vec::new()),
                task_handler: RefCell::new(None),
                on_unreachable: RefCell::new(None),
                connected_notify: Notify::new(),
            }),
        };
        let b = bus.clone();
        spawn_local(async move { b.connection_loop().await });
        bus
    }

    /// Called whenever the hub cannot be reached (the worker asks the master to start it).
    pub(crate) fn set_on_unreachable(&self, f: Rc<dyn Fn()>) {
        *self.inner.on_unreachable.borrow_mut() = Some(f);
    }

    /// True while connected to the hub.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.get()
    }

    /// Waits until connected, at most `limit`; returns whether it is.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        if self.is_connected() {
            return true;
        }
        let _ = tokio::time::timeout(limit, async {
            while !self.is_connected() {
                self.inner.connected_notify.notified().await;
            }
        })
        .await;
        self.is_connected()
    }

    fn queue(&self, frame: &Frame) -> Result<(), BusError> {
        let mut out = self.inner.out.borrow_mut();
        if out.len() >= MAX_OUTBOUND {
            return Err(BusError::Backpressure);
        }
        wire::encode(frame, &mut out);
        drop(out);
        self.inner.wake.notify_one();
        Ok(())
    }

    fn check_payload(payload: &[u8]) -> Result<(), BusError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(BusError::PayloadTooLarge {
                size: payload.len(),
                limit: MAX_PAYLOAD,
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
        subject::check_publish(subject)?;
        let payload = payload.into();
        Self::check_payload(&payload)?;
        self.queue(&Frame::Pub {
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
        subject::check_subscribe(subject)?;
        let sid = self.inner.next_sid.get() + 1;
        self.inner.next_sid.set(sid);
        self.inner.subs.borrow_mut().insert(
            sid,
            SubState {
                subject: subject.to_string(),
                queue: queue.map(str::to_string),
                handler: Rc::new(handler),
            },
        );
        self.queue(&Frame::Sub {
            sid,
            subject: subject.to_string(),
            queue: queue.map(str::to_string),
        })?;
        Ok(Subscription(sid))
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, sub: Subscription) -> Result<(), BusError> {
        if self.inner.subs.borrow_mut().remove(&sub.0).is_some() {
            self.queue(&Frame::Unsub { sid: sub.0 })?;
        }
        Ok(())
    }

    fn ensure_inbox(&self) -> Result<(), BusError> {
        if self.inner.inbox_sid.get().is_none() {
            let me = Rc::downgrade(&self.inner);
            let sid = self.subscribe(&format!("{}.*", self.inner.inbox), None, move |msg| {
                let Some(inner) = me.upgrade() else { return };
                let token = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(tx) = token.and_then(|t| inner.gathers.borrow().get(&t).cloned()) {
                    let _ = tx.send(msg);
                    return;
                }
                if let Some(tx) = token.and_then(|t| inner.pending.borrow_mut().remove(&t)) {
                    let result = if msg.headers.get(STATUS_HEADER) == Some("503") {
                        Err(BusError::NoResponders(msg.text().into_owned()))
                    } else {
                        Ok(msg)
                    };
                    let _ = tx.send(result);
                }
            })?;
            self.inner.inbox_sid.set(Some(sid.0));
        }
        Ok(())
    }

    /// A fresh reply subject and the receiver of its one answer.
    pub(crate) fn reply_slot(&self) -> Result<(String, u64, ReplyReceiver), BusError> {
        self.ensure_inbox()?;
        if self.inner.pending.borrow().len() >= MAX_PENDING {
            return Err(BusError::Backpressure);
        }
        let token = self.inner.next_token.get() + 1;
        self.inner.next_token.set(token);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.borrow_mut().insert(token, tx);
        Ok((format!("{}.{token}", self.inner.inbox), token, rx))
    }

    pub(crate) async fn await_reply(
        &self,
        token: u64,
        rx: ReplyReceiver,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BusError::Disconnected),
            Err(_) => {
                self.inner.pending.borrow_mut().remove(&token);
                Err(BusError::Timeout)
            }
        }
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
        subject::check_publish(subject)?;
        Self::check_payload(&payload)?;
        let (reply, token, rx) = self.reply_slot()?;
        if let Err(e) = self.publish_with(subject, headers, payload, Some(&reply)) {
            self.inner.pending.borrow_mut().remove(&token);
            return Err(e);
        }
        self.await_reply(token, rx, timeout).await
    }

    /// Sends a request to every subscriber of `subject` and collects their answers: as many as
    /// the hub reports it reached, or what arrived by `timeout`. Nobody subscribed: no answers.
    pub async fn gather(
        &self,
        subject: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Vec<BusMessage>, BusError> {
        self.ensure_inbox()?;
        let token = self.inner.next_token.get() + 1;
        self.inner.next_token.set(token);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner.gathers.borrow_mut().insert(token, tx);
        let reply = format!("{}.{token}", self.inner.inbox);
        let headers = headers.with(super::GATHER_HEADER, "1");
        if let Err(e) = self.publish_with(subject, headers, payload, Some(&reply)) {
            self.inner.gathers.borrow_mut().remove(&token);
            return Err(e);
        }
        let mut expected: Option<usize> = None;
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if expected.is_some_and(|n| answers.len() >= n) {
                break;
            }
            let Ok(Some(msg)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
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

    pub(crate) async fn kv(&self, op: KvOp, timeout: Duration) -> Result<KvResult, BusError> {
        let req = self.inner.next_kv.get().wrapping_add(1);
        self.inner.next_kv.set(req);
        let (tx, rx) = oneshot::channel();
        self.inner.kv_pending.borrow_mut().insert(req, tx);
        if let Err(e) = self.queue(&Frame::Kv { req, op }) {
            self.inner.kv_pending.borrow_mut().remove(&req);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(KvResult::Error(e))) => Err(BusError::State(e)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(BusError::Disconnected),
            Err(_) => {
                self.inner.kv_pending.borrow_mut().remove(&req);
                Err(BusError::Timeout)
            }
        }
    }

    /// Joins `pool` as a consumer taking up to `concurrency` tasks at once.
    pub(crate) fn join_pool(
        &self,
        pool: &str,
        concurrency: u32,
        max_queue: u32,
        handler: TaskHandler,
    ) -> Result<(), BusError> {
        *self.inner.task_handler.borrow_mut() = Some(handler);
        self.inner
            .pools
            .borrow_mut()
            .push((pool.to_string(), concurrency, max_queue));
        self.queue(&Frame::PoolJoin {
            pool: pool.to_string(),
            concurrency,
            max_queue,
        })
    }

    pub(crate) fn task_done(&self, task: u64, ok: bool, payload: Bytes) -> Result<(), BusError> {
        self.queue(&Frame::TaskDone { task, ok, payload })
    }

    pub(crate) fn submit_frame(
        &self,
        pool: &str,
        reply: Option<String>,
        max_retries: u8,
        payload: Bytes,
    ) -> Result<(), BusError> {
        Self::check_payload(&payload)?;
        self.queue(&Frame::Submit {
            pool: pool.to_string(),
            reply,
            max_retries,
            payload,
        })
    }

    pub(crate) fn forget_pending(&self, token: u64) {
        self.inner.pending.borrow_mut().remove(&token);
    }

    async fn connection_loop(self) {
        let mut backoff = Duration::from_millis(20);
        loop {
            match UnixStream::connect(&self.inner.path).await {
                Ok(stream) => {
                    backoff = Duration::from_millis(20);
                    self.on_connected();
                    let why = self.run(stream).await;
                    self.on_disconnected(&why);
                }
                Err(_) => {
                    let hook = self.inner.on_unreachable.borrow().clone();
                    if let Some(h) = hook {
                        h();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn on_connected(&self) {
        // Hello and every live subscription and pool membership go first, ahead of whatever
        // was queued while disconnected.
        let mut prelude = BytesMut::new();
        wire::encode(
            &Frame::Hello {
                name: self.inner.name.clone(),
            },
            &mut prelude,
        );
        for (sid, s) in self.inner.subs.borrow().iter() {
            wire::encode(
                &Frame::Sub {
                    sid: *sid,
                    subject: s.subject.clone(),
                    queue: s.queue.clone(),
                },
                &mut prelude,
            );
        }
        for (pool, concurrency, max_queue) in self.inner.pools.borrow().iter() {
            wire::encode(
                &Frame::PoolJoin {
                    pool: pool.clone(),
                    concurrency: *concurrency,
                    max_queue: *max_queue,
                },
                &mut prelude,
            );
        }
        let mut out = self.inner.out.borrow_mut();
        // Membership frames queued meanwhile are in the prelude already, from state; anything
        // else queued stays, in order, after it.
        strip_membership_frames(&mut out);
        prelude.extend_from_slice(&out);
        *out = prelude;
        self.inner.written.set(0);
        self.inner.connected.set(true);
        self.inner.ever_connected.set(true);
        self.inner.connected_notify.notify_waiters();
        tracing::debug!("bus connected to {}", self.inner.path.display());
    }

    fn on_disconnected(&self, why: &str) {
        self.inner.connected.set(false);
        self.inner.written.set(0);
        tracing::warn!("bus connection lost ({why}); reconnecting");
        // Answers to requests in flight went down with the connection.
        for (_, tx) in self.inner.pending.borrow_mut().drain() {
            let _ = tx.send(Err(BusError::Disconnected));
        }
        self.inner.kv_pending.borrow_mut().clear();
    }

    async fn run(&self, stream: UnixStream) -> String {
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let max_frame = MAX_PAYLOAD + wire::FRAME_OVERHEAD;
        loop {
            let pending_write = {
                let out = self.inner.out.borrow();
                out.len() > self.inner.written.get()
            };
            if pending_write {
                let chunk = {
                    let out = self.inner.out.borrow();
                    let from = self.inner.written.get();
                    Bytes::copy_from_slice(&out[from..out.len().min(from + MAX_WRITE)])
                };
                tokio::select! {
                    biased;
                    r = wr.write(&chunk) => match r {
                        Ok(0) => return "hub closed".into(),
                        Ok(n) => self.advance_written(n),
                        Err(e) => return e.to_string(),
                    },
                    r = rd.read_buf(&mut buf) => match r {
                        Ok(0) => return "hub closed the connection".into(),
                        Ok(_) => if let Err(e) = self.handle_input(&mut buf, max_frame) { return e },
                        Err(e) => return e.to_string(),
                    },
                }
            } else {
                if buf.capacity() - buf.len() < 8 * 1024 {
                    buf.reserve(64 * 1024);
                }
                tokio::select! {
                    r = rd.read_buf(&mut buf) => match r {
                        Ok(0) => return "hub closed the connection".into(),
                        Ok(_) => if let Err(e) = self.handle_input(&mut buf, max_frame) { return e },
                        Err(e) => return e.to_string(),
                    },
                    _ = self.inner.wake.notified() => {}
                }
            }
        }
    }

    /// Drops whole frames from the front of `out` once written.
    fn advance_written(&self, n: usize) {
        let mut written = self.inner.written.get() + n;
        let mut out = self.inner.out.borrow_mut();
        while out.len() >= 4 {
            let flen = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize + 4;
            if written < flen {
                break;
            }
            out.advance(flen);
            written -= flen;
        }
        if out.is_empty() && out.capacity() > 1024 * 1024 {
            *out = BytesMut::new();
        }
        self.inner.written.set(written);
    }

    fn handle_input(&self, buf: &mut BytesMut, max_frame: usize) -> Result<(), String> {
        loop {
            let frame = match wire::decode(buf, max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad frame from the hub: {e}")),
            };
            match frame {
                Frame::Msg {
                    sid,
                    subject,
                    reply,
                    headers,
                    payload,
                } => {
                    let handler = self
                        .inner
                        .subs
                        .borrow()
                        .get(&sid)
                        .map(|s| s.handler.clone());
                    if let Some(h) = handler {
                        let msg = BusMessage {
                            subject,
                            reply,
                            headers,
                            payload,
                        };
                        let _ = guarded("bus subscription handler", || h(msg));
                    }
                }
                Frame::KvReply { req, result } => {
                    if let Some(tx) = self.inner.kv_pending.borrow_mut().remove(&req) {
                        let _ = tx.send(result);
                    }
                }
                Frame::Task {
                    pool,
                    task,
                    attempt,
                    payload,
                } => {
                    let handler = self.inner.task_handler.borrow().clone();
                    if let Some(h) = handler {
                        h(TaskDelivery {
                            pool,
                            task,
                            attempt,
                            payload,
                        });
                    }
                }
                Frame::Ping => {
                    let _ = self.queue(&Frame::Pong);
                }
                Frame::Err { message } => tracing::warn!("hub says: {message}"),
                _ => {}
            }
        }
    }
}

/// Removes Hello, Sub, Unsub and PoolJoin frames: on (re)connection they are sent from the
/// client's state instead, exactly once.
fn strip_membership_frames(out: &mut BytesMut) {
    let mut kept = BytesMut::with_capacity(out.len());
    while let Ok(Some(frame)) = wire::decode(out, usize::MAX) {
        if !matches!(
            frame,
            Frame::Sub { .. } | Frame::Unsub { .. } | Frame::PoolJoin { .. } | Frame::Hello { .. }
        ) {
            wire::encode(&frame, &mut kept);
        }
    }
    *out = kept;
}
