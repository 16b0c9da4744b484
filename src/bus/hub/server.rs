//! The embedded hub: a process the master supervises that routes bus messages between the
//! worker processes of one machine, over a Unix socket in the run directory (mode 0600).
//!
//! This file is the socket server and the glue: each connected process is a [`Peer`]; frames
//! go to the [`Router`] (publish/subscribe, NATS's rules), the [`Pools`] (task pools) or the
//! [`Store`] (shared state). A request that reaches nobody is answered at once with status
//! 503.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::spawn_local;

use super::peer::{NotSent, Peer};
use super::pools::{Notice, Pools, Refused};
use super::router::{Router, SubEntry};
use super::state::Store;
use super::wire::{self, Frame, Inbound};
use crate::bus::subject;
use crate::bus::transport::{PoolStats, MAX_PAYLOAD};
use crate::bus::{Headers, STATUS_HEADER};

/// Figures for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct HubStats {
    /// Connected processes (the field keeps its name in `status --json`).
    pub(crate) clients: u64,
    /// Active subscriptions.
    pub(crate) subscriptions: u64,
    /// Messages published.
    pub(crate) published: u64,
    /// Messages delivered to subscribers.
    pub(crate) delivered: u64,
    /// Messages dropped because a subscriber's backlog was full.
    pub(crate) dropped: u64,
    /// Requests answered with "no responders".
    pub(crate) no_responders: u64,
    /// Keys in shared state.
    pub(crate) keys: u64,
    /// Task pools.
    pub(crate) pools: Vec<PoolStats>,
}

#[derive(Default)]
struct Hub {
    router: RefCell<Router>,
    recipients: RefCell<Vec<Rc<SubEntry>>>,
    peers: RefCell<FxHashMap<u64, Rc<Peer>>>,
    pools: RefCell<Pools>,
    store: RefCell<Store>,
    stats: RefCell<HubStats>,
    next_peer: Cell<u64>,
}

thread_local! {
    /// A task result's headers, `ok` and `failed`, made once (one per result was an allocation).
    static TASK_STATUS: [Headers; 2] = [
        Headers::new().with(STATUS_HEADER, "ok"),
        Headers::new().with(STATUS_HEADER, "failed"),
    ];
}

fn status_msg(status: &str, detail: &str) -> (Headers, Bytes) {
    (
        Headers::new().with(STATUS_HEADER, status),
        Bytes::copy_from_slice(detail.as_bytes()),
    )
}

impl Hub {
    /// Queues `frame` for `peer`, counting what a slow or broken peer could not take.
    fn send(&self, peer: &Peer, frame: &Frame) -> bool {
        self.sent(peer, peer.send(frame))
    }

    /// Counts what `peer` could not take of a send.
    fn sent(&self, peer: &Peer, outcome: Result<(), NotSent>) -> bool {
        match outcome {
            Ok(()) => true,
            Err(NotSent::Closed) => false,
            Err(why) => {
                if why == NotSent::Unencodable {
                    tracing::warn!(
                        "a frame for peer {} does not fit the wire; dropped",
                        peer.id
                    );
                }
                self.stats.borrow_mut().dropped += 1;
                false
            }
        }
    }

    /// Delivers to every recipient of `subject`; returns how many got it.
    fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &Headers,
        payload: &Bytes,
    ) -> usize {
        // One list reused for every publish (a new one each time was an allocation).
        let mut recipients = self.recipients.take();
        self.router
            .borrow_mut()
            .recipients(subject, &mut recipients);
        let mut n = 0;
        for e in recipients.drain(..) {
            let msg = wire::MsgRef {
                sid: e.sid,
                subject,
                reply,
                headers,
                payload,
            };
            if self.sent(&e.peer, e.peer.send_msg(&msg)) {
                n += 1;
            }
        }
        self.recipients.replace(recipients);
        let mut st = self.stats.borrow_mut();
        st.published += 1;
        st.delivered += n as u64;
        n
    }

    fn reply_status(&self, reply: &str, status: &str, detail: &str) {
        let (h, p) = status_msg(status, detail);
        self.publish(reply, None, &h, &p);
    }

    fn tell(&self, notices: Vec<Notice>) {
        for n in notices {
            self.reply_status(&n.reply, n.status, &n.detail);
        }
    }

    fn handle(&self, peer: &Rc<Peer>, frame: Inbound<'_>) -> Result<(), String> {
        match frame {
            Inbound::Pub {
                subject: subj,
                reply,
                headers,
                payload,
            } => {
                subject::check_publish(subj).map_err(|e| e.to_string())?;
                if payload.len() > MAX_PAYLOAD {
                    return Err(format!(
                        "payload of {} bytes over the limit of {MAX_PAYLOAD}",
                        payload.len()
                    ));
                }
                let gather = headers.get(crate::bus::GATHER_HEADER).is_some();
                let n = self.publish(subj, reply, &headers, &payload);
                if let Some(reply) = reply {
                    if n == 0 {
                        self.stats.borrow_mut().no_responders += 1;
                        self.reply_status(reply, "503", subj);
                    } else if gather {
                        // Tells the asker how many answers to wait for.
                        self.reply_status(reply, "gather", &n.to_string());
                    }
                }
            }
            Inbound::Submit {
                pool,
                reply,
                max_retries,
                payload,
            } => {
                subject::check_publish(pool).map_err(|e| e.to_string())?;
                if payload.len() > MAX_PAYLOAD {
                    return Err(format!(
                        "task of {} bytes over the limit of {MAX_PAYLOAD}",
                        payload.len()
                    ));
                }
                let queued = self.pools.borrow_mut().submit(
                    pool,
                    reply.map(str::to_owned),
                    max_retries,
                    payload,
                    Instant::now(),
                );
                match queued {
                    Ok(()) => self.dispatch(pool),
                    Err(Refused::Full) => {
                        if let Some(r) = reply {
                            self.reply_status(r, "full", pool);
                        }
                    }
                }
            }
            Inbound::TaskDone {
                task, ok, payload, ..
            } => {
                let finished = self.pools.borrow_mut().done(peer.id, task, ok);
                if let Some((pool, reply)) = finished {
                    if let Some(r) = reply {
                        TASK_STATUS.with(|status| {
                            self.publish(&r, None, &status[usize::from(!ok)], &payload)
                        });
                    }
                    self.dispatch(&pool);
                }
            }
            Inbound::Other(frame) => self.handle_other(peer, frame)?,
        }
        Ok(())
    }

    /// The frames the hub reads less often, owned.
    fn handle_other(&self, peer: &Rc<Peer>, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Hello { .. } | Frame::Pong => {}
            Frame::Ping => {
                self.send(peer, &Frame::Pong);
            }
            Frame::Sub {
                sid,
                subject: pattern,
                queue,
            } => {
                subject::check_subscribe(&pattern).map_err(|e| e.to_string())?;
                let entry = Rc::new(SubEntry {
                    peer: peer.clone(),
                    sid,
                    pattern,
                    queue,
                });
                if let Some(old) = peer.subs.borrow_mut().insert(sid, entry.clone()) {
                    self.router.borrow_mut().remove(&old);
                }
                self.router.borrow_mut().add(entry);
            }
            Frame::Unsub { sid } => {
                if let Some(old) = peer.subs.borrow_mut().remove(&sid) {
                    self.router.borrow_mut().remove(&old);
                }
            }
            Frame::Kv { req, op } => {
                let result = self.store.borrow_mut().apply(op, Instant::now());
                self.send(peer, &Frame::KvReply { req, result });
            }
            Frame::PoolJoin {
                pool,
                concurrency,
                max_queue,
            } => {
                subject::check_publish(&pool).map_err(|e| e.to_string())?;
                self.pools
                    .borrow_mut()
                    .join(&pool, peer.clone(), concurrency, max_queue);
                self.dispatch(&pool);
            }
            // wire::parse_inbound reads these three borrowed: they never arrive owned.
            Frame::Pub { .. } | Frame::Submit { .. } | Frame::TaskDone { .. } => {
                return Err("a frame the hub reads borrowed arrived owned".into());
            }
            Frame::Msg { .. } | Frame::Err { .. } | Frame::KvReply { .. } | Frame::Task { .. } => {
                return Err("frame only the hub sends".into());
            }
        }
        Ok(())
    }

    /// Sends `pool`'s queued tasks to its members; one that cannot be sent goes back to the
    /// queue (it is never left "running" on a process that did not get it).
    fn dispatch(&self, pool: &str) {
        self.pools
            .borrow_mut()
            .assign(pool, |peer, task| self.sent(peer, peer.send_task(task)));
    }

    /// A peer went away: its subscriptions end; its running tasks go back to the queue.
    fn forget(&self, peer: &Rc<Peer>) {
        peer.closed.set(true);
        for (_, e) in peer.subs.borrow_mut().drain() {
            self.router.borrow_mut().remove(&e);
        }
        self.peers.borrow_mut().remove(&peer.id);
        let (notices, pools) = self.pools.borrow_mut().forget(peer.id);
        self.tell(notices);
        for name in pools {
            self.dispatch(&name);
        }
    }

    /// Once a second: expired keys go, and tasks waiting for a pool nobody serves are answered.
    fn housekeeping(&self) {
        let now = Instant::now();
        self.store.borrow_mut().sweep(now);
        let notices = self.pools.borrow_mut().expire_orphans(now);
        self.tell(notices);
    }

    pub(crate) fn snapshot(&self) -> HubStats {
        let mut s = self.stats.borrow().clone();
        s.clients = self.peers.borrow().len() as u64;
        s.subscriptions = self.router.borrow().len() as u64;
        s.keys = self.store.borrow().len() as u64;
        s.pools = self.pools.borrow().stats();
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

/// The name of an abstract socket (`@name`), or `None` for a path.
pub(crate) fn abstract_name(path: &Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().strip_prefix(b"@")
}

/// Binds the hub's socket (owner-only) and serves it on the current local runtime. A path
/// `@name` listens in the abstract namespace, which has no file permissions, so there only
/// processes of a user in `uids` are let in (by the credentials the kernel gives for the peer).
pub(crate) fn start(path: &Path, uids: Vec<u32>) -> std::io::Result<HubHandle> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::fs::PermissionsExt;
    let (listener, allowed) = match abstract_name(path) {
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
            std_listener.set_nonblocking(true)?;
            (UnixListener::from_std(std_listener)?, Some(uids))
        }
        None => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            (listener, None)
        }
    };
    let hub = Rc::new(Hub::default());
    let h = hub.clone();
    spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Some(allowed) = &allowed {
                        let uid = stream.peer_cred().map(|c| c.uid()).ok();
                        if !uid.is_some_and(|u| allowed.contains(&u)) {
                            tracing::warn!("hub: refused a process of uid {uid:?}");
                            continue;
                        }
                    }
                    let id = h.next_peer.get() + 1;
                    h.next_peer.set(id);
                    spawn_local(serve_peer(h.clone(), stream, id));
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
            h.housekeeping();
        }
    });
    Ok(HubHandle(hub))
}

async fn serve_peer(hub: Rc<Hub>, stream: UnixStream, id: u64) {
    let peer = Rc::new(Peer::new(id));
    hub.peers.borrow_mut().insert(id, peer.clone());
    let (mut rd, mut wr) = stream.into_split();
    let writer_peer = peer.clone();
    let writer = spawn_local(async move {
        loop {
            match writer_peer.take_output() {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None if writer_peer.closed.get() => return,
                None => writer_peer.wake.notified().await,
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
            let parsed = match wire::cut_frame(&mut buf, max_frame) {
                Ok(Some(frame)) => {
                    wire::parse_inbound(&frame).map(|inbound| hub.handle(&peer, inbound).err())
                }
                Ok(None) => break,
                Err(e) => Err(e),
            };
            match parsed {
                Ok(None) => {}
                Ok(Some(why)) => {
                    tracing::warn!("hub peer {id}: {why}; disconnecting it");
                    hub.send(&peer, &Frame::Err { message: why });
                    break 'read;
                }
                Err(e) => {
                    tracing::warn!("hub peer {id} sent a bad frame ({e}); disconnecting it");
                    let message = e.to_string();
                    hub.send(&peer, &Frame::Err { message });
                    break 'read;
                }
            }
        }
    }
    hub.forget(&peer);
    peer.wake.notify_one();
    // Let the writer flush a final error frame, briefly.
    let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
}
