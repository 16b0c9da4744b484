//! Live connection hand-off on reload: a retiring process gives each open connection, at a
//! message boundary, to the new process of its slot, through the master.
//!
//! Each process has a `SOCK_SEQPACKET` channel to the master (beside its JSON control
//! socket), so that a message can carry the socket itself (`SCM_RIGHTS`). The master relays
//! without keeping anything. The steps (O: the retiring process, N: its successor):
//!
//! 1. O's driver leaves the connection at a boundary; O sends `Move` (state, memberships) with
//!    the socket, and from then on holds what the bus routes to the connection.
//! 2. N serves it under the same id (`on_resume`), joins its uids, groups and client tag,
//!    holds what the bus routes to it, waits until the bus has those memberships (`sync`),
//!    and answers `Adopted`.
//! 3. O waits until it has everything the bus routed to it before N's memberships, leaves the
//!    memberships and sends what it held (`Late`).
//! 4. N delivers what O held, then what it held itself less what O had (by message id).
//!
//! If N is missing or refuses, the socket comes back (`Refused`) and O says the usual
//! farewell, so a failed move never costs the client more than a clean close.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::task::spawn_local;

use super::sys;
use crate::bus::routing::{self, Memberships, Routed};
use crate::runtime::moving::{self, ConnectionState, Departure};
use crate::runtime::registry;
use crate::runtime::worker::AnyWorker;

/// The largest message on a hand-off channel.
pub(crate) const MAX_MESSAGE: usize = 128 * 1024;
/// How long a retiring process waits for its connections to reach a boundary and leave.
const BOUNDARY_WAIT: Duration = Duration::from_secs(2);
/// How long the old process lets its subscription readers catch up before it leaves a moved
/// connection's memberships.
const READERS_CATCH_UP: Duration = Duration::from_millis(20);
/// How long a move may take from the socket's departure to the end of step 3.
const MOVE_LIMIT: Duration = Duration::from_secs(5);

/// What travels on a hand-off channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Handoff {
    /// A connection, with its socket attached. `from` is set by the master.
    Move {
        #[serde(default)]
        from: u32,
        conn: Box<ConnectionState>,
        routing: Memberships,
    },
    /// The connection could not be taken; its socket comes back attached.
    Refused { to: u32, id: u64, why: String },
    /// The successor serves connection `id` and has its memberships.
    Adopted { to: u32, from: u32, id: u64 },
    /// What the old process held for connection `id` (in pieces; `last` on the final one,
    /// which also says which messages the old process delivered).
    Late {
        to: u32,
        id: u64,
        held: Vec<Routed>,
        last: bool,
        #[serde(default)]
        seen: routing::Seen,
    },
}

impl Handoff {
    /// The process a message goes to, when it names one (a `Move` goes to the sender's
    /// successor).
    pub(crate) fn to(&self) -> Option<u32> {
        match self {
            Handoff::Move { .. } => None,
            Handoff::Refused { to, .. }
            | Handoff::Adopted { to, .. }
            | Handoff::Late { to, .. } => Some(*to),
        }
    }
}

/// One end of a hand-off channel, on the event loop.
pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd) -> std::io::Result<Channel> {
        Ok(Channel {
            fd: sys::async_fd(fd)?,
        })
    }

    /// Sends one message with an optional socket attached.
    pub(crate) async fn send(
        &self,
        msg: &Handoff,
        socket: Option<&OwnedFd>,
    ) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(std::io::Error::other(format!(
                "hand-off message of {} bytes is over {MAX_MESSAGE}",
                bytes.len()
            )));
        }
        loop {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| {
                sys::send_with_fd(fd.get_ref().as_fd(), &bytes, socket.map(|s| s.as_fd()))
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message and the socket it carried; `None` once the other end is gone.
    pub(crate) async fn recv(&self) -> Option<(Handoff, Option<OwnedFd>)> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut ready = self.fd.readable().await.ok()?;
            let received =
                match ready.try_io(|fd| sys::recv_with_fd(fd.get_ref().as_fd(), &mut buf)) {
                    Ok(r) => r,
                    Err(_would_block) => continue,
                };
            match received {
                Ok((0, _)) => return None,
                Ok((n, socket)) => match serde_json::from_slice(&buf[..n]) {
                    Ok(msg) => return Some((msg, socket)),
                    Err(e) => tracing::warn!("hand-off: a message that is not one: {e}"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("hand-off channel: {e}");
                    return None;
                }
            }
        }
    }
}

/// A worker process's side.
struct Worker {
    channel: Rc<Channel>,
    group: String,
    /// Connections sent away and not yet settled (step 3 not done), with their state in case
    /// the socket comes back.
    leaving: HashMap<u64, (ConnectionState, Instant)>,
    /// Connections taken in whose old process has not yet sent what it held; the guard keeps
    /// each from moving on before that (a reload right after a reload).
    arriving: HashMap<u64, (Vec<Routed>, Option<crate::runtime::connection::Hold>)>,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Starts this worker process's side of the channel: it can take connections from now on.
/// `hand_off`: its group hands its connections over on reload.
pub(crate) fn init(fd: OwnedFd, group: &str, hand_off: bool) {
    if hand_off {
        routing::track_delivered();
    }
    let channel = match Channel::new(fd) {
        Ok(c) => Rc::new(c),
        Err(e) => {
            tracing::warn!("hand-off channel unusable: {e}");
            return;
        }
    };
    WORKER.with(|w| {
        *w.borrow_mut() = Some(Worker {
            channel: channel.clone(),
            group: group.to_string(),
            leaving: HashMap::new(),
            arriving: HashMap::new(),
        })
    });
    spawn_local(async move {
        while let Some((msg, socket)) = channel.recv().await {
            on_message(msg, socket);
        }
    });
}

fn channel() -> Option<Rc<Channel>> {
    WORKER.with(|w| w.borrow().as_ref().map(|w| w.channel.clone()))
}

/// Moves every connection of `worker` that reaches a boundary in time to the successor, and
/// waits until those moves are settled. Returns how many moved.
pub(crate) async fn move_connections(worker: &Rc<dyn AnyWorker>) -> usize {
    if channel().is_none() {
        return 0;
    }
    moving::set_mover(depart);
    let asked = worker.request_moves();
    if asked == 0 {
        return 0;
    }
    let started = Instant::now();
    while worker.moves_pending() > 0 && started.elapsed() < BOUNDARY_WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = worker.moves_pending();
    worker.cancel_moves();
    if late > 0 {
        tracing::info!("{late} connections did not reach a boundary in time; they stay");
    }
    let left = worker.connection_count();
    let settled = Instant::now();
    while WORKER.with(|w| w.borrow().as_ref().is_some_and(|w| !w.leaving.is_empty()))
        && settled.elapsed() < MOVE_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let moved = asked.saturating_sub(left);
    tracing::info!(
        "handed {moved} connections to the new process in {} ms",
        started.elapsed().as_millis()
    );
    moved
}

/// Step 1: a connection left its driver; send it on.
fn depart(d: Departure) {
    let Departure { mut state, socket } = d;
    let id = state.id;
    state.worker = WORKER.with(|w| {
        w.borrow()
            .as_ref()
            .map(|w| w.group.clone())
            .unwrap_or_default()
    });
    let session_size = serde_json::to_vec(&state.session).map_or(0, |v| v.len());
    let channel = match channel() {
        Some(c) if session_size <= moving::MAX_SESSION => c,
        other => {
            let why = if other.is_none() {
                "no hand-off channel"
            } else {
                "its session is over 64 KiB"
            };
            // Later, once its driver's task has taken the old entry out of the table.
            spawn_local(async move { come_back(state, socket, why) });
            return;
        }
    };
    let routing = routing::begin_move_out(id);
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().as_mut() {
            w.leaving.insert(id, (state.clone(), Instant::now()));
        }
    });
    let msg = Handoff::Move {
        from: std::process::id(),
        conn: Box::new(state),
        routing,
    };
    spawn_local(async move {
        if let Err(e) = channel.send(&msg, Some(&socket)).await {
            let Handoff::Move { conn, .. } = msg else {
                return;
            };
            forget_leaving(id);
            come_back(*conn, socket, &format!("cannot send it: {e}"));
            routing::cancel_move_out(id);
        }
        // Sent: the socket lives on in the message; this copy closes here.
    });
}

fn forget_leaving(id: u64) -> Option<ConnectionState> {
    WORKER.with(|w| {
        w.borrow_mut()
            .as_mut()
            .and_then(|w| w.leaving.remove(&id))
            .map(|(s, _)| s)
    })
}

/// A move failed: the connection is served here again, and (the process retiring) gets the
/// farewell.
fn come_back(state: ConnectionState, socket: OwnedFd, why: &str) {
    let id = state.id;
    tracing::info!("connection {id} stays: {why}");
    let worker = registry::running()
        .into_iter()
        .find(|w| w.config().name == state.worker);
    match worker {
        Some(w) => {
            if let Err((e, _socket)) = w.adopt_moved(state, socket, true) {
                tracing::warn!("connection {id} could not be taken back: {e}");
            }
        }
        None => tracing::warn!("connection {id} has no worker to come back to"),
    }
}

fn on_message(msg: Handoff, socket: Option<OwnedFd>) {
    match msg {
        Handoff::Move {
            from,
            conn,
            routing,
        } => arrive(from, *conn, routing, socket),
        Handoff::Refused { id, why, .. } => {
            let state = forget_leaving(id);
            match (state, socket) {
                (Some(state), Some(socket)) => come_back(state, socket, &why),
                _ => tracing::warn!("connection {id} refused ({why}) and lost"),
            }
            // Back in the table: what was held for it is delivered here after all.
            routing::cancel_move_out(id);
        }
        Handoff::Adopted { from, id, .. } => {
            spawn_local(settle(from, id));
        }
        Handoff::Late {
            id,
            held,
            last,
            seen,
            ..
        } => {
            let all = WORKER.with(|w| {
                let mut w = w.borrow_mut();
                let w = w.as_mut()?;
                let (so_far, _) = w.arriving.get_mut(&id)?;
                so_far.extend(held);
                if last {
                    w.arriving.remove(&id).map(|(all, _)| all)
                } else {
                    None
                }
            });
            if let Some(all) = all {
                routing::finish_move_in(id, all, seen);
            }
        }
    }
}

/// Step 2, in the successor.
fn arrive(from: u32, state: ConnectionState, memberships: Memberships, socket: Option<OwnedFd>) {
    let id = state.id;
    let Some(channel) = channel() else { return };
    let Some(socket) = socket else {
        tracing::warn!("connection {id} arrived without its socket");
        return;
    };
    let refuse = |why: String, socket: OwnedFd| {
        let channel = channel.clone();
        spawn_local(async move {
            let msg = Handoff::Refused { to: from, id, why };
            if let Err(e) = channel.send(&msg, Some(&socket)).await {
                tracing::warn!("connection {id} could not be sent back: {e}");
            }
        });
    };
    let worker = registry::running()
        .into_iter()
        .find(|w| w.config().name == state.worker);
    let Some(worker) = worker else {
        refuse(format!("no worker {:?} here", state.worker), socket);
        return;
    };
    let needs_bus =
        memberships.tag.is_some() || !memberships.uids.is_empty() || !memberships.groups.is_empty();
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().as_mut() {
            w.arriving.insert(id, (Vec::new(), None));
        }
    });
    if needs_bus {
        if let Err(e) = routing::begin_move_in(id, &memberships) {
            tracing::warn!("connection {id} arrived, but its memberships could not be taken: {e}");
        }
    }
    if let Err((why, socket)) = worker.adopt_moved(state, socket, false) {
        WORKER.with(|w| w.borrow_mut().as_mut().map(|w| w.arriving.remove(&id)));
        routing::finish_move_in(id, Vec::new(), routing::Seen::new());
        refuse(why, socket);
        return;
    }
    let hold = worker.hold_connection(id);
    WORKER.with(|w| {
        if let Some((_, slot)) = w
            .borrow_mut()
            .as_mut()
            .and_then(|w| w.arriving.get_mut(&id))
        {
            *slot = hold;
        }
    });
    spawn_local(async move {
        if needs_bus {
            if let Err(e) = routing::sync().await {
                tracing::warn!("connection {id}: the bus did not confirm its memberships: {e}");
            }
        }
        let msg = Handoff::Adopted {
            to: from,
            from: std::process::id(),
            id,
        };
        if let Err(e) = channel.send(&msg, None).await {
            tracing::warn!("connection {id}: cannot tell the old process: {e}");
        }
        // Should the old process never answer, what arrived here is delivered anyway.
        tokio::time::sleep(MOVE_LIMIT).await;
        let stuck = WORKER.with(|w| w.borrow_mut().as_mut().and_then(|w| w.arriving.remove(&id)));
        if let Some((partial, _hold)) = stuck {
            tracing::warn!("connection {id}: the old process did not pass on what it held");
            routing::finish_move_in(id, partial, routing::Seen::new());
        }
    });
}

/// Step 3, in the old process.
async fn settle(to: u32, id: u64) {
    let Some(channel) = channel() else { return };
    // Still counted as leaving until what was held has been sent: the process must not exit
    // before.
    let leaving = WORKER.with(|w| {
        w.borrow()
            .as_ref()
            .is_some_and(|w| w.leaving.contains_key(&id))
    });
    if leaving && routing::is_active() {
        // Everything the bus routed here before the successor's memberships is in by now.
        if let Err(e) = routing::sync().await {
            tracing::debug!("connection {id}: bus sync before the hand-over: {e}");
        }
        // On NATS each subscription has its own reader task: the answer above can overtake
        // messages that arrived before it on other subscriptions. They are in those readers'
        // queues already; a moment lets them be handled before the memberships go.
        tokio::time::sleep(READERS_CATCH_UP).await;
    }
    let (held, mut seen) = routing::finish_move_out(id);
    let mut pieces: Vec<Vec<Routed>> = Vec::new();
    let mut size = 0;
    for m in held {
        let len = m.payload.len() + m.mid.as_ref().map_or(0, String::len) + 32;
        if pieces.is_empty() || size + len > MAX_MESSAGE / 2 {
            pieces.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(p) = pieces.last_mut() {
            p.push(m);
        }
    }
    if pieces.is_empty() {
        pieces.push(Vec::new());
    }
    let count = pieces.len();
    for (i, held) in pieces.into_iter().enumerate() {
        let last = i + 1 == count;
        let msg = Handoff::Late {
            to,
            id,
            held,
            last,
            seen: if last {
                std::mem::take(&mut seen)
            } else {
                routing::Seen::new()
            },
        };
        if let Err(e) = channel.send(&msg, None).await {
            tracing::warn!("connection {id}: cannot pass on what was held for it: {e}");
            break;
        }
    }
    forget_leaving(id);
}
