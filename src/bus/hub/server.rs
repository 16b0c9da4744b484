//! The embedded hub: a process the master supervises that routes bus messages between the
//! worker processes of one machine, over a Unix socket in the run directory (mode 0600).
//!
//! Routing follows NATS: literal subjects are looked up in a map, wildcard subscriptions are
//! matched token by token, and the result per subject is cached until subscriptions change.
//! In each queue group one member gets each message (round robin). A request that reaches
//! nobody is answered at once with status 503. Task pools and shared state live here too.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::spawn_local;

use super::wire::{self, Frame, KvOp, KvResult};
use crate::bus::subject;
use crate::bus::transport::{PoolStats, MAX_PAYLOAD};
use crate::bus::{Headers, STATUS_HEADER};
/// Unwritten bytes the hub holds for one client; past it, messages to that client are dropped
/// and counted (a slow consumer must not take the hub's memory).
const MAX_CLIENT_BACKLOG: usize = 64 * 1024 * 1024;
/// Tasks a pool queues at most before `submit` is refused with "pool full" (a pool may set
/// less with `Worker::task_queue_limit`).
pub(crate) const MAX_POOL_QUEUE: usize = 100_000;
/// Subjects whose routing result is cached at most.
const MAX_CACHE: usize = 10_000;

/// Figures for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HubStats {
    /// Connected clients.
    pub clients: u64,
    /// Active subscriptions.
    pub subscriptions: u64,
    /// Messages published.
    pub published: u64,
    /// Messages delivered to subscribers.
    pub delivered: u64,
    /// Messages dropped because a subscriber's backlog was full.
    pub dropped: u64,
    /// Requests answered with "no responders".
    pub no_responders: u64,
    /// Keys in shared state.
    pub keys: u64,
    /// Task pools.
    pub pools: Vec<PoolStats>,
}

struct Client {
    id: u64,
    out: RefCell<BytesMut>,
    wake: Notify,
    closed: Cell<bool>,
    subs: RefCell<HashMap<u32, Rc<SubEntry>>>,
}

impl Client {
    fn send(&self, frame: &Frame, hub: &Hub) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut out = self.out.borrow_mut();
        if out.len() > MAX_CLIENT_BACKLOG {
            hub.stats.borrow_mut().dropped += 1;
            return false;
        }
        wire::encode(frame, &mut out);
        drop(out);
        self.wake.notify_one();
        true
    }
}

struct SubEntry {
    client: Rc<Client>,
    sid: u32,
    pattern: String,
    queue: Option<String>,
}

#[derive(Default)]
struct Router {
    literal: HashMap<String, Vec<Rc<SubEntry>>>,
    wildcard: Vec<Rc<SubEntry>>,
    cache: HashMap<String, Rc<Vec<Rc<SubEntry>>>>,
    round_robin: HashMap<String, usize>,
}

impl Router {
    fn add(&mut self, e: Rc<SubEntry>) {
        self.cache.clear();
        if subject::has_wildcard(&e.pattern) {
            self.wildcard.push(e);
        } else {
            self.literal.entry(e.pattern.clone()).or_default().push(e);
        }
    }

    fn remove(&mut self, e: &Rc<SubEntry>) {
        self.cache.clear();
        if subject::has_wildcard(&e.pattern) {
            self.wildcard.retain(|x| !Rc::ptr_eq(x, e));
        } else if let Some(v) = self.literal.get_mut(&e.pattern) {
            v.retain(|x| !Rc::ptr_eq(x, e));
            if v.is_empty() {
                self.literal.remove(&e.pattern);
            }
        }
    }

    fn lookup(&mut self, subject: &str) -> Rc<Vec<Rc<SubEntry>>> {
        if let Some(hit) = self.cache.get(subject) {
            return hit.clone();
        }
        let mut found: Vec<Rc<SubEntry>> = self.literal.get(subject).cloned().unwrap_or_default();
        found.extend(
            self.wildcard
                .iter()
                .filter(|e| subject::matches(&e.pattern, subject))
                .cloned(),
        );
        let found = Rc::new(found);
        if self.cache.len() >= MAX_CACHE {
            self.cache.clear();
        }
        self.cache.insert(subject.to_string(), found.clone());
        found
    }

    /// Everyone who gets a message on `subject`: every plain subscriber, one per queue group.
    fn recipients(&mut self, subject: &str) -> Vec<Rc<SubEntry>> {
        let all = self.lookup(subject);
        let mut out = Vec::with_capacity(all.len());
        let mut groups: Vec<(&str, Vec<&Rc<SubEntry>>)> = Vec::new();
        for e in all.iter().filter(|e| !e.client.closed.get()) {
            match &e.queue {
                None => out.push(e.clone()),
                Some(q) => match groups.iter_mut().find(|(name, _)| *name == q.as_str()) {
                    Some((_, members)) => members.push(e),
                    None => groups.push((q.as_str(), vec![e])),
                },
            }
        }
        for (name, members) in groups {
            let key = format!("{name}\u{0}{subject}");
            let turn = self.round_robin.entry(key).or_insert(0);
            out.push(members[*turn % members.len()].clone());
            *turn = turn.wrapping_add(1);
        }
        out
    }
}

struct QueuedTask {
    id: u64,
    reply: Option<String>,
    payload: Bytes,
    attempts: u8,
    max_retries: u8,
}

struct Consumer {
    client: Rc<Client>,
    concurrency: u32,
    running: u32,
}

struct Pool {
    /// Tasks queued at most; the pool's processes set it when they join.
    max_queue: usize,
    queue: VecDeque<QueuedTask>,
    consumers: Vec<Consumer>,
    running: HashMap<u64, (u64, QueuedTask)>,
    done: u64,
    failed: u64,
    retried: u64,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            max_queue: MAX_POOL_QUEUE,
            queue: VecDeque::new(),
            consumers: Vec::new(),
            running: HashMap::new(),
            done: 0,
            failed: 0,
            retried: 0,
        }
    }
}

struct Entry {
    value: Bytes,
    expires: Option<Instant>,
}

#[derive(Default)]
struct Hub {
    router: RefCell<Router>,
    clients: RefCell<HashMap<u64, Rc<Client>>>,
    pools: RefCell<HashMap<String, Pool>>,
    kv: RefCell<HashMap<String, Entry>>,
    stats: RefCell<HubStats>,
    next_client: Cell<u64>,
    next_task: Cell<u64>,
}

fn status_msg(status: &str, detail: &str) -> (Headers, Bytes) {
    (
        Headers::new().with(STATUS_HEADER, status),
        Bytes::copy_from_slice(detail.as_bytes()),
    )
}

impl Hub {
    /// Delivers to every recipient of `subject`; returns how many got it.
    fn publish(
        &self,
        subject: &str,
        reply: &Option<String>,
        headers: &Headers,
        payload: &Bytes,
    ) -> usize {
        let recipients = self.router.borrow_mut().recipients(subject);
        let mut n = 0;
        for e in &recipients {
            let frame = Frame::Msg {
                sid: e.sid,
                subject: subject.to_string(),
                reply: reply.clone(),
                headers: headers.clone(),
                payload: payload.clone(),
            };
            if e.client.send(&frame, self) {
                n += 1;
            }
        }
        let mut st = self.stats.borrow_mut();
        st.published += 1;
        st.delivered += n as u64;
        n
    }

    fn reply_status(&self, reply: &str, status: &str, detail: &str) {
        let (h, p) = status_msg(status, detail);
        self.publish(reply, &None, &h, &p);
    }

    fn handle(&self, client: &Rc<Client>, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Hello { .. } | Frame::Pong => {}
            Frame::Ping => {
                client.send(&Frame::Pong, self);
            }
            Frame::Sub {
                sid,
                subject: pattern,
                queue,
            } => {
                subject::check_subscribe(&pattern).map_err(|e| e.to_string())?;
                let entry = Rc::new(SubEntry {
                    client: client.clone(),
                    sid,
                    pattern,
                    queue,
                });
                if let Some(old) = client.subs.borrow_mut().insert(sid, entry.clone()) {
                    self.router.borrow_mut().remove(&old);
                }
                self.router.borrow_mut().add(entry);
            }
            Frame::Unsub { sid } => {
                if let Some(old) = client.subs.borrow_mut().remove(&sid) {
                    self.router.borrow_mut().remove(&old);
                }
            }
            Frame::Pub {
                subject: subj,
                reply,
                headers,
                payload,
            } => {
                subject::check_publish(&subj).map_err(|e| e.to_string())?;
                if payload.len() > MAX_PAYLOAD {
                    return Err(format!(
                        "payload of {} bytes over the limit of {MAX_PAYLOAD}",
                        payload.len()
                    ));
                }
                let gather = headers.get(crate::bus::GATHER_HEADER).is_some();
                let n = self.publish(&subj, &reply, &headers, &payload);
                if let Some(reply) = reply {
                    if n == 0 {
                        self.stats.borrow_mut().no_responders += 1;
                        self.reply_status(&reply, "503", &subj);
                    } else if gather {
                        // Tells the asker how many answers to wait for.
                        self.reply_status(&reply, "gather", &n.to_string());
                    }
                }
            }
            Frame::Kv { req, op } => {
                let result = self.kv(op);
                client.send(&Frame::KvReply { req, result }, self);
            }
            Frame::PoolJoin {
                pool,
                concurrency,
                max_queue,
            } => {
                let mut pools = self.pools.borrow_mut();
                let p = pools.entry(pool.clone()).or_default();
                p.max_queue = (max_queue as usize).clamp(1, MAX_POOL_QUEUE);
                p.consumers.push(Consumer {
                    client: client.clone(),
                    concurrency: concurrency.max(1),
                    running: 0,
                });
                drop(pools);
                self.dispatch(&pool);
            }
            Frame::Submit {
                pool,
                reply,
                max_retries,
                payload,
            } => {
                let full = {
                    let mut pools = self.pools.borrow_mut();
                    let p = pools.entry(pool.clone()).or_default();
                    if p.queue.len() >= p.max_queue {
                        p.failed += 1;
                        true
                    } else {
                        let id = self.next_task.get() + 1;
                        self.next_task.set(id);
                        p.queue.push_back(QueuedTask {
                            id,
                            reply: reply.clone(),
                            payload,
                            attempts: 0,
                            max_retries,
                        });
                        false
                    }
                };
                if full {
                    if let Some(r) = reply {
                        self.reply_status(&r, "full", &pool);
                    }
                } else {
                    self.dispatch(&pool);
                }
            }
            Frame::TaskDone { task, ok, payload } => self.task_done(client, task, ok, payload),
            Frame::Msg { .. } | Frame::Err { .. } | Frame::KvReply { .. } | Frame::Task { .. } => {
                return Err("frame only the hub sends".into());
            }
        }
        Ok(())
    }

    fn dispatch(&self, pool_name: &str) {
        let mut pools = self.pools.borrow_mut();
        let Some(pool) = pools.get_mut(pool_name) else {
            return;
        };
        pool.consumers.retain(|c| !c.client.closed.get());
        while !pool.queue.is_empty() {
            // The least busy process with room, relative to its concurrency.
            let Some(best_idx) = pool
                .consumers
                .iter()
                .enumerate()
                .filter(|(_, c)| c.running < c.concurrency)
                .min_by(|(_, a), (_, b)| {
                    (u64::from(a.running) * u64::from(b.concurrency))
                        .cmp(&(u64::from(b.running) * u64::from(a.concurrency)))
                })
                .map(|(i, _)| i)
            else {
                break;
            };
            // Ties go round robin: the chosen process moves to the back of the line.
            let chosen = pool.consumers.remove(best_idx);
            pool.consumers.push(chosen);
            let Some(best) = pool.consumers.last_mut() else {
                break;
            };
            let Some(mut task) = pool.queue.pop_front() else {
                break;
            };
            task.attempts += 1;
            let frame = Frame::Task {
                pool: pool_name.to_string(),
                task: task.id,
                attempt: task.attempts,
                payload: task.payload.clone(),
            };
            best.running += 1;
            let client = best.client.clone();
            pool.running.insert(task.id, (client.id, task));
            client.send(&frame, self);
        }
    }

    fn task_done(&self, client: &Rc<Client>, task: u64, ok: bool, payload: Bytes) {
        let (pool_name, reply) = {
            let mut pools = self.pools.borrow_mut();
            let Some((name, pool)) = pools.iter_mut().find(|(_, p)| {
                p.running
                    .get(&task)
                    .is_some_and(|(owner, _)| *owner == client.id)
            }) else {
                return; // A late answer for a task already given to another process.
            };
            let Some((_, t)) = pool.running.remove(&task) else {
                return;
            };
            if let Some(c) = pool.consumers.iter_mut().find(|c| c.client.id == client.id) {
                c.running = c.running.saturating_sub(1);
            }
            if ok {
                pool.done += 1;
            } else {
                pool.failed += 1;
            }
            (name.clone(), t.reply)
        };
        if let Some(r) = reply {
            let headers = Headers::new().with(STATUS_HEADER, if ok { "ok" } else { "failed" });
            self.publish(&r, &None, &headers, &payload);
        }
        self.dispatch(&pool_name);
    }

    /// A client went away: its subscriptions end; its running tasks go back to the queue.
    fn forget(&self, client: &Rc<Client>) {
        client.closed.set(true);
        for (_, e) in client.subs.borrow_mut().drain() {
            self.router.borrow_mut().remove(&e);
        }
        self.clients.borrow_mut().remove(&client.id);
        let mut exhausted = Vec::new();
        let names: Vec<String> = {
            let mut pools = self.pools.borrow_mut();
            for pool in pools.values_mut() {
                pool.consumers.retain(|c| c.client.id != client.id);
                let orphaned: Vec<u64> = pool
                    .running
                    .iter()
                    .filter(|(_, (owner, _))| *owner == client.id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in orphaned {
                    if let Some((_, t)) = pool.running.remove(&id) {
                        if t.attempts > t.max_retries {
                            pool.failed += 1;
                            exhausted.push(t);
                        } else {
                            pool.retried += 1;
                            pool.queue.push_front(t);
                        }
                    }
                }
            }
            pools.keys().cloned().collect()
        };
        for t in exhausted {
            if let Some(r) = t.reply {
                self.reply_status(&r, "retries-exhausted", &format!("{} attempts", t.attempts));
            }
        }
        for name in names {
            self.dispatch(&name);
        }
    }

    fn kv(&self, op: KvOp) -> KvResult {
        let now = Instant::now();
        let expiry = |ttl_ms: u64| (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms));
        let mut kv = self.kv.borrow_mut();
        let live = |kv: &HashMap<String, Entry>, key: &str| -> Option<Bytes> {
            kv.get(key)
                .filter(|e| e.expires.is_none_or(|t| t > now))
                .map(|e| e.value.clone())
        };
        match op {
            KvOp::Get { key } => KvResult::Value(live(&kv, &key)),
            KvOp::Set { key, value, ttl_ms } => {
                kv.insert(
                    key,
                    Entry {
                        value,
                        expires: expiry(ttl_ms),
                    },
                );
                KvResult::Done(true)
            }
            KvOp::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => {
                if live(&kv, &key) == expected {
                    kv.insert(
                        key,
                        Entry {
                            value,
                            expires: expiry(ttl_ms),
                        },
                    );
                    KvResult::Done(true)
                } else {
                    KvResult::Done(false)
                }
            }
            KvOp::Incr { key, by, ttl_ms } => {
                let current = match live(&kv, &key) {
                    None => 0,
                    Some(v) => match std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return KvResult::Error(format!("{key} does not hold an integer")),
                    },
                };
                let Some(next) = current.checked_add(by) else {
                    return KvResult::Error(format!("{key} would overflow"));
                };
                let expires = match kv.get(&key) {
                    Some(e) if ttl_ms == 0 && e.expires.is_none_or(|t| t > now) => e.expires,
                    _ => expiry(ttl_ms),
                };
                kv.insert(
                    key,
                    Entry {
                        value: Bytes::from(next.to_string()),
                        expires,
                    },
                );
                KvResult::Number(next)
            }
            KvOp::Delete { key } => KvResult::Done(kv.remove(&key).is_some()),
        }
    }

    fn sweep_expired(&self) {
        let now = Instant::now();
        self.kv
            .borrow_mut()
            .retain(|_, e| e.expires.is_none_or(|t| t > now));
    }

    pub(crate) fn snapshot(&self) -> HubStats {
        let mut s = self.stats.borrow().clone();
        s.clients = self.clients.borrow().len() as u64;
        let router = self.router.borrow();
        s.subscriptions =
            (router.literal.values().map(Vec::len).sum::<usize>() + router.wildcard.len()) as u64;
        s.keys = self.kv.borrow().len() as u64;
        let mut pools: Vec<PoolStats> = self
            .pools
            .borrow()
            .iter()
            .map(|(name, p)| PoolStats {
                name: name.clone(),
                consumers: p.consumers.len() as u64,
                queued: p.queue.len() as u64,
                running: p.running.len() as u64,
                done: p.done,
                failed: p.failed,
                retried: p.retried,
                dead: 0,
            })
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        s.pools = pools;
        s
    }
}

/// The running hub, shared with the hub process's control loop (for `status`).
#[derive(Clone)]
pub(crate) struct HubHandle(Rc<Hub>);

impl HubHandle {
    pub(crate) fn stats(&self) -> HubStats {
        self.0.snapshot()
    }
}

/// Binds the hub's socket (owner-only) and serves it on the current local runtime.
pub(crate) fn start(path: &Path) -> std::io::Result<HubHandle> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let hub = Rc::new(Hub::default());
    let h = hub.clone();
    spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let id = h.next_client.get() + 1;
                    h.next_client.set(id);
                    spawn_local(serve_client(h.clone(), stream, id));
                }
                Err(e) => {
                    tracing::warn!("hub accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let h = hub.clone();
    spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            h.sweep_expired();
        }
    });
    Ok(HubHandle(hub))
}

async fn serve_client(hub: Rc<Hub>, stream: UnixStream, id: u64) {
    let client = Rc::new(Client {
        id,
        out: RefCell::new(BytesMut::new()),
        wake: Notify::new(),
        closed: Cell::new(false),
        subs: RefCell::new(HashMap::new()),
    });
    hub.clients.borrow_mut().insert(id, client.clone());
    let (mut rd, mut wr) = stream.into_split();
    let writer_client = client.clone();
    let writer = spawn_local(async move {
        loop {
            let chunk = {
                let mut out = writer_client.out.borrow_mut();
                if out.is_empty() {
                    None
                } else {
                    Some(out.split().freeze())
                }
            };
            match chunk {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None if writer_client.closed.get() => return,
                None => writer_client.wake.notified().await,
            }
        }
    });
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let max_frame = MAX_PAYLOAD + wire::FRAME_OVERHEAD;
    'read: loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match wire::decode(&mut buf, max_frame) {
                Ok(Some(frame)) => {
                    if let Err(why) = hub.handle(&client, frame) {
                        tracing::warn!("hub client {id}: {why}; disconnecting it");
                        client.send(&Frame::Err { message: why }, &hub);
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("hub client {id} sent a bad frame ({e}); disconnecting it");
                    client.send(
                        &Frame::Err {
                            message: e.to_string(),
                        },
                        &hub,
                    );
                    break 'read;
                }
            }
        }
    }
    hub.forget(&client);
    client.wake.notify_one();
    // Let the writer flush a final error frame, briefly.
    let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
}
