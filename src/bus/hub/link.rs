//! The hub transport of the bus: one Unix-socket connection to the hub, with reconnection
//! (backing off while the hub refuses or drops it), re-subscription, a bounded outbound buffer,
//! shared-state calls and task-pool membership.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::spawn_local;

use futures_util::future::LocalBoxFuture;

use super::wire::{self, Frame};
use crate::bus::transport::{
    next_id, Capabilities, Handler, Interest, KvOp, KvResult, Outgoing, PoolSpec, PoolStats,
    Submission, TaskDelivery, TaskHandler, TaskOutcome, Transport, MAX_OUTBOUND, MAX_PAYLOAD,
};
use crate::bus::{BusError, BusMessage};
use crate::runtime::guard::guarded;

/// Bytes handed to the socket per write call.
const MAX_WRITE: usize = 256 * 1024;

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
    subs: RefCell<BTreeMap<u32, SubState>>,
    next_sid: Cell<u32>,
    next_kv: Cell<u32>,
    kv_pending: RefCell<HashMap<u32, oneshot::Sender<KvResult>>>,
    pools: RefCell<Vec<(String, u32, u32)>>,
    task_handler: RefCell<Option<TaskHandler>>,
    on_unreachable: RefCell<Option<Rc<dyn Fn()>>>,
    on_lost: RefCell<Option<Rc<dyn Fn()>>>,
    connected_notify: Notify,
}

/// A connection to the hub. Cheap to clone; every clone is the same connection.
#[derive(Clone)]
pub(crate) struct HubLink {
    inner: Rc<Inner>,
}

impl HubLink {
    /// Connects to the hub at `path`, reconnecting by itself whenever the connection drops.
    pub(crate) fn connect(path: PathBuf, name: &str) -> HubLink {
        let link = HubLink {
            inner: Rc::new(Inner {
                path,
                name: label(name),
                out: RefCell::new(BytesMut::new()),
                written: Cell::new(0),
                wake: Notify::new(),
                connected: Cell::new(false),
                subs: RefCell::new(BTreeMap::new()),
                next_sid: Cell::new(0),
                next_kv: Cell::new(0),
                kv_pending: RefCell::new(HashMap::new()),
                pools: RefCell::new(Vec::new()),
                task_handler: RefCell::new(None),
                on_unreachable: RefCell::new(None),
                on_lost: RefCell::new(None),
                connected_notify: Notify::new(),
            }),
        };
        let l = link.clone();
        spawn_local(async move { l.connection_loop().await });
        link
    }

    fn queue(&self, frame: &Frame) -> Result<(), BusError> {
        let mut out = self.inner.out.borrow_mut();
        if out.len() >= MAX_OUTBOUND {
            return Err(BusError::Backpressure);
        }
        wire::encode(frame, &mut out).map_err(|e| BusError::TooLong {
            what: "hub frame field",
            size: e.size,
            limit: e.limit,
        })?;
        drop(out);
        self.inner.wake.notify_one();
        Ok(())
    }

    async fn connection_loop(self) {
        let mut backoff = Duration::from_millis(20);
        loop {
            match UnixStream::connect(&self.inner.path).await {
                Ok(stream) => {
                    let since = tokio::time::Instant::now();
                    self.on_connected();
                    let why = self.run(stream).await;
                    self.on_disconnected(&why);
                    // A connection the hub drops at once (it refused what we sent) is retried
                    // with growing pauses, not in a hot loop; one that lived is retried soon.
                    if since.elapsed() >= Duration::from_secs(1) {
                        backoff = Duration::from_millis(20);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
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
        // Each of these was encodable when first queued (Bus checked its names).
        let mut prelude = BytesMut::new();
        let mut frames = vec![Frame::Hello {
            name: self.inner.name.clone(),
        }];
        frames.extend(self.inner.subs.borrow().iter().map(|(sid, s)| Frame::Sub {
            sid: *sid,
            subject: s.subject.clone(),
            queue: s.queue.clone(),
        }));
        frames.extend(
            self.inner
                .pools
                .borrow()
                .iter()
                .map(|(pool, concurrency, max_queue)| Frame::PoolJoin {
                    pool: pool.clone(),
                    concurrency: *concurrency,
                    max_queue: *max_queue,
                }),
        );
        for frame in &frames {
            if let Err(e) = wire::encode(frame, &mut prelude) {
                tracing::error!("cannot send {frame:?} again ({e:?}); left out");
            }
        }
        let mut out = self.inner.out.borrow_mut();
        // Membership frames queued meanwhile are in the prelude already, from state; anything
        // else queued stays, in order, after it.
        strip_membership_frames(&mut out);
        prelude.extend_from_slice(&out);
        *out = prelude;
        self.inner.written.set(0);
        self.inner.connected.set(true);
        self.inner.connected_notify.notify_waiters();
        tracing::debug!("bus connected to {}", self.inner.path.display());
    }

    fn on_disconnected(&self, why: &str) {
        self.inner.connected.set(false);
        self.inner.written.set(0);
        tracing::warn!("bus connection lost ({why}); reconnecting");
        // Answers to requests in flight went down with the connection.
        let hook = self.inner.on_lost.borrow().clone();
        if let Some(h) = hook {
            h();
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

impl Transport for HubLink {
    fn describe(&self) -> String {
        format!("hub at {}", self.inner.path.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            counted_gather: true,
            lists_state: false,
        }
    }

    fn is_connected(&self) -> bool {
        self.inner.connected.get()
    }

    fn wait_connected(&self, limit: Duration) -> LocalBoxFuture<'_, bool> {
        Box::pin(async move {
            let _ = tokio::time::timeout(limit, async {
                loop {
                    let notified = self.inner.connected_notify.notified();
                    if self.is_connected() {
                        return;
                    }
                    notified.await;
                }
            })
            .await;
            self.is_connected()
        })
    }

    fn max_payload(&self) -> usize {
        MAX_PAYLOAD
    }

    fn publish(&self, m: Outgoing) -> Result<(), BusError> {
        self.queue(&Frame::Pub {
            subject: m.subject,
            reply: m.reply,
            headers: m.headers,
            payload: m.payload,
        })
    }

    fn subscribe(&self, interest: Interest, handler: Handler) -> Result<u32, BusError> {
        let sid = next_id(&self.inner.next_sid);
        let frame = Frame::Sub {
            sid,
            subject: interest.subject.clone(),
            queue: interest.queue.clone(),
        };
        self.inner.subs.borrow_mut().insert(
            sid,
            SubState {
                subject: interest.subject,
                queue: interest.queue,
                handler,
            },
        );
        self.queue(&frame)?;
        Ok(sid)
    }

    fn unsubscribe(&self, sid: u32) -> Result<(), BusError> {
        if self.inner.subs.borrow_mut().remove(&sid).is_some() {
            self.queue(&Frame::Unsub { sid })?;
        }
        Ok(())
    }

    fn state(&self, op: KvOp, timeout: Duration) -> LocalBoxFuture<'_, Result<KvResult, BusError>> {
        Box::pin(async move {
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
        })
    }

    fn state_entries(
        &self,
        _prefix: &str,
        _timeout: Duration,
    ) -> LocalBoxFuture<'_, Result<Vec<(String, Bytes)>, BusError>> {
        Box::pin(std::future::ready(Err(BusError::NotAvailable)))
    }

    fn join_pool(&self, spec: PoolSpec, handler: TaskHandler) -> Result<(), BusError> {
        *self.inner.task_handler.borrow_mut() = Some(handler);
        self.inner
            .pools
            .borrow_mut()
            .push((spec.pool.clone(), spec.concurrency, spec.max_queue));
        self.queue(&Frame::PoolJoin {
            pool: spec.pool,
            concurrency: spec.concurrency,
            max_queue: spec.max_queue,
        })
    }

    fn task_done(&self, outcome: TaskOutcome) -> Result<(), BusError> {
        self.queue(&Frame::TaskDone {
            task: outcome.task,
            ok: outcome.ok,
            payload: outcome.payload,
        })
    }

    fn submit(&self, task: Submission) -> LocalBoxFuture<'static, Result<(), BusError>> {
        let queued = self.queue(&Frame::Submit {
            pool: task.pool,
            reply: task.reply,
            max_retries: task.max_retries,
            payload: task.payload,
        });
        Box::pin(std::future::ready(queued))
    }

    fn pool_stats(&self, _pools: Vec<String>) -> LocalBoxFuture<'_, Vec<PoolStats>> {
        Box::pin(std::future::ready(Vec::new()))
    }

    fn wind_down(&self, _limit: Duration) -> LocalBoxFuture<'_, ()> {
        // The hub hands a departed process's tasks to another itself.
        Box::pin(std::future::ready(()))
    }

    fn set_on_lost(&self, f: Rc<dyn Fn()>) {
        *self.inner.on_lost.borrow_mut() = Some(f);
    }

    fn set_on_unreachable(&self, f: Rc<dyn Fn()>) {
        *self.inner.on_unreachable.borrow_mut() = Some(f);
    }
}

/// A connection's name is a label for the hub's logs: at most 256 bytes of it are kept.
fn label(name: &str) -> String {
    let mut end = name.len().min(256);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
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
            // Decoded from our own buffer, so it encodes again.
            let _ = wire::encode(&frame, &mut kept);
        }
    }
    *out = kept;
}
