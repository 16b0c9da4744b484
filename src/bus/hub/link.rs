//! The hub transport of the bus: one Unix-socket connection to the hub, with reconnection
//! (backing off while the hub refuses or drops it), re-subscription, a bounded outbound buffer,
//! shared-state calls and task-pool membership.
//!
//! The hub keeps its task queues in memory, so its death would lose them; this side makes up
//! for it. Every task submitted here is kept until a message arrives on its reply subject and
//! is submitted again to the hub that replaces a lost one; a task of a lost hub that this
//! process runs (or whose result it had not yet written) has its result published straight to
//! the submitter's reply subject, since the new hub's task ids name other tasks.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustc_hash::FxHashMap;
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
/// Submitted tasks kept for a replacement hub, at most (past it, `submit` is refused with
/// `Backpressure`).
const MAX_KEPT_TASKS: usize = 100_000;
/// Payload bytes of kept submitted tasks, at most.
const MAX_KEPT_BYTES: usize = 64 * 1024 * 1024;

/// Tasks this process submitted whose result has not arrived, in submission order, so that a
/// replacement hub gets them again.
#[derive(Default)]
struct KeptSubmissions {
    by_seq: BTreeMap<u64, Submission>,
    by_reply: FxHashMap<Rc<str>, u64>,
    bytes: usize,
    next_seq: u64,
}

impl KeptSubmissions {
    /// Keeps `task` (which has a reply subject), or refuses when the bounds are reached even
    /// after forgetting the tasks whose submitters stopped waiting.
    fn keep(&mut self, task: &Submission, reply: &Rc<str>) -> Result<(), BusError> {
        if self.by_seq.len() >= MAX_KEPT_TASKS || self.bytes + task.payload.len() > MAX_KEPT_BYTES {
            self.forget_expired(tokio::time::Instant::now());
            if self.by_seq.len() >= MAX_KEPT_TASKS
                || self.bytes + task.payload.len() > MAX_KEPT_BYTES
            {
                return Err(BusError::Backpressure);
            }
        }
        self.next_seq += 1;
        // Every reply subject is fresh (`Bus` makes one per submission), so none is replaced.
        self.by_reply.insert(reply.clone(), self.next_seq);
        self.bytes += task.payload.len();
        self.by_seq.insert(self.next_seq, task.clone());
        Ok(())
    }

    /// The task answered on `reply`, forgotten.
    fn answered(&mut self, reply: &str) {
        if let Some(seq) = self.by_reply.remove(reply) {
            if let Some(t) = self.by_seq.remove(&seq) {
                self.bytes -= t.payload.len();
            }
        }
    }

    fn forget_expired(&mut self, now: tokio::time::Instant) {
        let expired: Vec<u64> = self
            .by_seq
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(t) = self.by_seq.remove(&seq) {
                self.bytes -= t.payload.len();
                if let Some(r) = &t.reply {
                    if self.by_reply.get(r) == Some(&seq) {
                        self.by_reply.remove(r);
                    }
                }
            }
        }
    }
}

/// A task this process was given and has not finished.
struct RunningTask {
    /// The connection (one per hub life) it came on.
    generation: u64,
    /// The hub's id of it, meaningful on that connection only.
    hub_task: u64,
    reply: Option<String>,
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
    subs: RefCell<BTreeMap<u32, SubState>>,
    next_sid: Cell<u32>,
    next_kv: Cell<u32>,
    kv_pending: RefCell<HashMap<u32, oneshot::Sender<KvResult>>>,
    pools: RefCell<Vec<(String, u32, u32)>>,
    task_handler: RefCell<Option<TaskHandler>>,
    on_unreachable: RefCell<Option<Rc<dyn Fn()>>>,
    on_lost: RefCell<Option<Rc<dyn Fn()>>>,
    connected_notify: Notify,
    /// Counts connections; a task belongs to the one it arrived on.
    generation: Cell<u64>,
    /// Tasks running here, by the id handed to the pool member (ours, unique across hubs).
    running: RefCell<FxHashMap<u64, RunningTask>>,
    next_task: Cell<u64>,
    kept: RefCell<KeptSubmissions>,
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
                generation: Cell::new(0),
                running: RefCell::default(),
                next_task: Cell::new(0),
                kept: RefCell::new(KeptSubmissions::default()),
            }),
        };
        let l = link.clone();
        spawn_local(async move { l.connection_loop().await });
        link
    }

    fn queue(&self, frame: &Frame) -> Result<(), BusError> {
        self.queue_encoded(|out| wire::encode(frame, out))
    }

    fn queue_encoded(
        &self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), wire::TooLongForFrame>,
    ) -> Result<(), BusError> {
        let mut out = self.inner.out.borrow_mut();
        if out.len() >= MAX_OUTBOUND {
            return Err(BusError::Backpressure);
        }
        encode(&mut out).map_err(|e| BusError::TooLong {
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
            match connect(&self.inner.path).await {
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
        // Membership frames queued meanwhile are in the prelude already, from state; results
        // for a lost hub become direct messages; anything else queued stays, in order, after
        // them, and then every task still awaiting its result is submitted (again).
        rebuild_for_new_hub(&mut out);
        prelude.extend_from_slice(&out);
        let mut kept = self.inner.kept.borrow_mut();
        kept.forget_expired(tokio::time::Instant::now());
        let resubmitted = kept.by_seq.len();
        for task in kept.by_seq.values() {
            if let Err(e) = wire::encode_submit(&submit_ref(task), &mut prelude) {
                tracing::error!("cannot submit a task for pool {} again ({e:?})", task.pool);
            }
        }
        drop(kept);
        *out = prelude;
        self.inner.written.set(0);
        self.inner.generation.set(self.inner.generation.get() + 1);
        if resubmitted > 0 && self.inner.generation.get() > 1 {
            tracing::info!("{resubmitted} tasks submitted again to the new hub");
        }
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
                    {
                        let mut kept = self.inner.kept.borrow_mut();
                        if !kept.by_reply.is_empty() {
                            kept.answered(&subject);
                        }
                    }
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
                    reply,
                    payload,
                } => {
                    let handler = self.inner.task_handler.borrow().clone();
                    if let Some(h) = handler {
                        let local = self.inner.next_task.get() + 1;
                        self.inner.next_task.set(local);
                        self.inner.running.borrow_mut().insert(
                            local,
                            RunningTask {
                                generation: self.inner.generation.get(),
                                hub_task: task,
                                reply,
                            },
                        );
                        h(TaskDelivery {
                            pool,
                            task: local,
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
            resubmits_tasks: true,
            spans_nodes: false,
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
        let Some(run) = self.inner.running.borrow_mut().remove(&outcome.task) else {
            return Ok(());
        };
        let same_hub = self.inner.connected.get() && run.generation == self.inner.generation.get();
        if same_hub {
            self.queue(&Frame::TaskDone {
                task: run.hub_task,
                ok: outcome.ok,
                reply: run.reply,
                payload: outcome.payload,
            })
        } else if let Some(reply) = run.reply {
            self.queue(&direct_result(reply, outcome.ok, outcome.payload))
        } else {
            Ok(())
        }
    }

    fn submit(&self, task: Submission) -> LocalBoxFuture<'static, Result<(), BusError>> {
        let encode = |out: &mut BytesMut| wire::encode_submit(&submit_ref(&task), out);
        let queued = match &task.reply {
            Some(reply) => {
                // Its own statement: the kept list is borrowed again if queuing fails.
                let kept = self.inner.kept.borrow_mut().keep(&task, reply);
                kept.and_then(|()| {
                    self.queue_encoded(encode).inspect_err(|_| {
                        self.inner.kept.borrow_mut().answered(reply);
                    })
                })
            }
            None => self.queue_encoded(encode),
        };
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

fn submit_ref(task: &Submission) -> wire::SubmitRef<'_> {
    wire::SubmitRef {
        pool: &task.pool,
        reply: task.reply.as_deref(),
        max_retries: task.max_retries,
        payload: &task.payload,
    }
}

/// A task's result sent to its submitter without the hub's bookkeeping, as the hub sends it.
fn direct_result(reply: String, ok: bool, payload: Bytes) -> Frame {
    Frame::Pub {
        subject: reply,
        reply: None,
        headers: crate::bus::Headers::new()
            .with(crate::bus::STATUS_HEADER, if ok { "ok" } else { "failed" }),
        payload,
    }
}

/// Readies what was queued for a new connection: Hello, Sub, Unsub and PoolJoin frames go
/// (they are sent from the client's state instead, exactly once), so do submissions with a
/// reply subject (sent again from the kept ones), and a `TaskDone` for the previous connection
/// becomes its result sent straight to the submitter.
fn rebuild_for_new_hub(out: &mut BytesMut) {
    let mut rebuilt = BytesMut::with_capacity(out.len());
    while let Ok(Some(frame)) = wire::decode(out, usize::MAX) {
        let frame = match frame {
            Frame::Sub { .. }
            | Frame::Unsub { .. }
            | Frame::PoolJoin { .. }
            | Frame::Hello { .. } => continue,
            Frame::Submit { reply: Some(_), .. } => continue,
            Frame::TaskDone {
                ok,
                reply: Some(reply),
                payload,
                ..
            } => direct_result(reply, ok, payload),
            Frame::TaskDone { reply: None, .. } => continue,
            other => other,
        };
        // Decoded from our own buffer, so it encodes again.
        let _ = wire::encode(&frame, &mut rebuilt);
    }
    *out = rebuilt;
}

/// Connects to the hub at `path`, or at an abstract address `@name`.
async fn connect(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    match super::server::abstract_name(path) {
        // A Unix-domain connect does not wait for the peer: done at once, or refused.
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            stream.set_nonblocking(true)?;
            UnixStream::from_std(stream)
        }
        None => UnixStream::connect(path).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(reply: &str, payload: Bytes, deadline: tokio::time::Instant) -> Submission {
        Submission {
            pool: "p".into(),
            reply: Some(reply.into()),
            max_retries: 3,
            payload,
            deadline,
        }
    }

    fn frames(mut buf: BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Ok(Some(f)) = wire::decode(&mut buf, usize::MAX) {
            out.push(f);
        }
        out
    }

    #[test]
    fn a_result_for_a_lost_hub_becomes_a_direct_message_and_membership_and_submissions_go() {
        let mut out = BytesMut::new();
        for f in [
            Frame::Sub {
                sid: 1,
                subject: "a".into(),
                queue: None,
            },
            Frame::Submit {
                pool: "p".into(),
                reply: Some("_INBOX.x.1".into()),
                max_retries: 3,
                payload: Bytes::from_static(b"t"),
            },
            Frame::TaskDone {
                task: 7,
                ok: true,
                reply: Some("_INBOX.y.3".into()),
                payload: Bytes::from_static(b"49"),
            },
            Frame::TaskDone {
                task: 8,
                ok: true,
                reply: None,
                payload: Bytes::new(),
            },
            Frame::Pub {
                subject: "b".into(),
                reply: None,
                headers: Default::default(),
                payload: Bytes::from_static(b"m"),
            },
        ] {
            wire::encode(&f, &mut out).expect("encode");
        }
        rebuild_for_new_hub(&mut out);
        let got = frames(out);
        assert_eq!(got.len(), 2, "{got:?}");
        match &got[0] {
            Frame::Pub {
                subject,
                headers,
                payload,
                ..
            } => {
                assert_eq!(subject, "_INBOX.y.3");
                assert_eq!(headers.get(crate::bus::STATUS_HEADER), Some("ok"));
                assert_eq!(&payload[..], b"49");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&got[1], Frame::Pub { subject, .. } if subject == "b"));
    }

    #[tokio::test]
    async fn a_submission_refused_for_a_full_outbox_is_not_kept() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // No hub: everything stays in the outbox until it is full.
                let link = HubLink::connect(PathBuf::from("/nonexistent/oxwork-hub.sock"), "t");
                let later = tokio::time::Instant::now() + Duration::from_secs(60);
                let big = Bytes::from(vec![0u8; 1024 * 1024]);
                let mut refused = None;
                for i in 0..64 {
                    let reply = format!("r{i}");
                    if let Err(e) = link.submit(submission(&reply, big.clone(), later)).await {
                        refused = Some((reply, e));
                        break;
                    }
                }
                let (reply, e) = refused.expect("the outbox fills");
                assert!(matches!(e, BusError::Backpressure), "{e}");
                let kept = link.inner.kept.borrow();
                assert!(!kept.by_reply.contains_key(reply.as_str()));
                assert!(kept.by_reply.contains_key("r0"));
            })
            .await;
    }

    #[tokio::test]
    async fn kept_submissions_are_bounded_and_forget_answered_and_expired_ones() {
        let now = tokio::time::Instant::now();
        let later = now + Duration::from_secs(60);
        let mut kept = KeptSubmissions::default();
        let big = Bytes::from(vec![0u8; 40 * 1024 * 1024]);
        kept.keep(&submission("r1", big.clone(), later), &"r1".into())
            .expect("first");
        assert!(matches!(
            kept.keep(&submission("r2", big.clone(), later), &"r2".into()),
            Err(BusError::Backpressure)
        ));
        kept.answered("r1");
        assert_eq!((kept.by_seq.len(), kept.bytes), (0, 0));
        kept.keep(&submission("r3", big.clone(), now), &"r3".into())
            .expect("after the answer");
        // r3's deadline has passed: it is forgotten to make room.
        kept.keep(&submission("r4", big, later), &"r4".into())
            .expect("room made by forgetting an expired task");
        assert_eq!(kept.by_seq.len(), 1);
        assert!(kept.by_reply.contains_key("r4") && !kept.by_reply.contains_key("r3"));
    }
}
