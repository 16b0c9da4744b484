//! The one connection loop: read, cut into packages, dispatch, write, close. Every stream
//! transport and every protocol goes through it.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant, Sleep};
use tokio_util::io::poll_read_buf;

use crate::protocol::{next_message, Protocol};
use crate::runtime::connection::{Connection, State};
use crate::runtime::moving::IntoSocket;
use crate::runtime::stats;

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;
/// Size of the process's shared receive buffer.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    /// One receive buffer for every connection of the process. A connection reads into it
    /// whenever it holds no partial package, so an idle connection owns no receive buffer at
    /// all, and only the tail of a package split across reads is copied into a buffer of its own.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

fn take_scratch() -> BytesMut {
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if scratch.capacity() < READ_CHUNK {
        // Reuses the same allocation when no message decoded from it is still alive.
        scratch.reserve(SCRATCH_SIZE);
    }
    scratch
}

fn return_scratch(mut scratch: BytesMut) {
    scratch.clear();
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
}
/// A send buffer this large is given back to the allocator once written, so that idle
/// connections hold no large buffers.
const KEEP_OUT_CAPACITY: usize = 16 * 1024;
/// How long a closing connection waits for its peer's FIN after ours, so that closing with
/// unread input never turns into a reset that could destroy the reply the peer has yet to read.
const LINGER: Duration = Duration::from_secs(1);
/// How long a retiring process waits for a connection to come to rest (a message fully read
/// and answered) before saying its farewell anyway.
const FAREWELL_WAIT: Duration = Duration::from_secs(1);
/// How long a draining connection (HTTP keep-alive in a retiring process) may rest idle before
/// it is closed: long enough that a client busy on it sends its next request first, and gets
/// that request's response with `Connection: close`.
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// A closing connection whose peer takes none of what is left to send for this long is
/// dropped: a client that never reads cannot hold a descriptor and its send buffer forever.
/// Measured from the last byte the peer took, so a slow download still finishes.
const CLOSE_STALL_LIMIT: Duration = Duration::from_secs(10);

enum Event {
    HandshakeDeadline,
    Read,
    Eof,
    Failed(io::Error),
    Idle,
    Drained,
    CloseNow,
    Flushed,
    Wake,
    Farewell,
    DrainedIdle,
    Move,
    Deadline(crate::protocol::Deadline),
}

/// Per-driver options.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DriveOptions {
    /// Close a connection that has sent nothing for this long.
    pub(crate) idle_timeout: Option<Duration>,
}

/// How a connection's driver ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Closed; `on_close` has run.
    Closed,
    /// Left to move to another process ([`moving::depart`](crate::runtime::moving::depart)).
    Moved,
}

/// Runs `conn` over `stream` until it closes; `on_close` has run when this returns.
pub(crate) async fn drive<P, S>(conn: Connection<P>, stream: S, opts: DriveOptions) -> Ended
where
    P: Protocol,
    S: AsyncRead + AsyncWrite + IntoSocket + Unpin + 'static,
{
    drive_from(conn, stream, BytesMut::new(), opts, Start::Fresh).await
}

/// How a connection's driver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// A new connection: the protocol's opening bytes, then `on_connect`.
    Fresh,
    /// Moved here from another process: `on_resume`, nothing sent.
    Resumed,
    /// A move that failed, back where it was: nothing is called or sent.
    Returned,
}

/// [`drive`] starting with bytes already read from the socket (a taken-over connection).
pub(crate) async fn drive_from<P, S>(
    conn: Connection<P>,
    mut stream: S,
    initial: BytesMut,
    opts: DriveOptions,
    start: Start,
) -> Ended
where
    P: Protocol,
    S: AsyncRead + AsyncWrite + IntoSocket + Unpin + 'static,
{
    let inner = conn.inner.clone();
    stats::with(|c| {
        stats::bump(&c.connections);
        stats::bump(&c.total_connections);
    });
    match start {
        Start::Fresh => {
            conn.with_wire(|wire| inner.proto.borrow_mut().opening(wire));
            conn.call("on_connect", inner.handlers.on_connect.as_ref());
        }
        Start::Resumed => conn.call("on_resume", inner.handlers.on_resume.as_ref()),
        Start::Returned => {}
    }

    let mut rbuf = initial;
    // True while `rbuf` holds the process's shared buffer rather than this connection's own.
    let mut rbuf_is_scratch = false;
    let mut idle: Option<Pin<Box<Sleep>>> = opts.idle_timeout.map(|d| Box::pin(sleep(d)));
    let mut handshake: Option<Pin<Box<Sleep>>> = inner
        .proto
        .borrow()
        .handshake_deadline()
        .map(|d| Box::pin(sleep(d)));
    // Bytes handed over with the socket are dispatched at once.
    let mut woken = !rbuf.is_empty();
    let mut farewell_wait: Option<Pin<Box<Sleep>>> = None;
    // The protocol's bound on the current state, and its timer.
    let mut deadline: Option<ArmedDeadline> = None;
    // One timer for every state's deadline, made at the first and moved lazily (see
    // `ArmedDeadline::poll`): an HTTP keep-alive connection changes state twice per request.
    let mut deadline_timer: Option<Pin<Box<Sleep>>> = None;
    let mut moving = false;
    let mut drain_idle: Option<Pin<Box<Sleep>>> = None;
    // While closing with output left: bytes written so far, and when the peer stalls out.
    let mut close_stall: Option<(u64, Pin<Box<Sleep>>)> = None;

    loop {
        let event = poll_fn(|cx| {
            // Write first: replies queued by the last dispatch go out before we read again.
            loop {
                if let Err(e) = refill(&inner) {
                    return Poll::Ready(Event::Failed(e));
                }
                let mut out = inner.out.borrow_mut();
                if out.is_empty() {
                    break;
                }
                match Pin::new(&mut stream).poll_write(cx, &out) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Event::Failed(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        out.advance(n);
                        inner.bytes_out.set(inner.bytes_out.get() + n as u64);
                        crate::runtime::stats::add_bytes(false, n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
                    Poll::Pending => break,
                }
            }
            let flushed = inner.out.borrow().is_empty() && inner.pending.borrow().is_empty();
            match inner.state.get() {
                State::Destroyed | State::Closed => return Poll::Ready(Event::CloseNow),
                State::Closing if flushed => return Poll::Ready(Event::Flushed),
                State::Closing => {
                    let written = inner.bytes_out.get();
                    if close_stall.as_ref().is_none_or(|(at, _)| *at != written) {
                        close_stall = Some((written, Box::pin(sleep(CLOSE_STALL_LIMIT))));
                    }
                    if let Some((_, timer)) = close_stall.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::Failed(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "closing, and the peer took nothing for 10 s: dropped",
                            )));
                        }
                    }
                }
                _ => {}
            }
            if flushed && inner.buffer_full.get() {
                return Poll::Ready(Event::Drained);
            }
            if std::mem::take(&mut woken) && !inner.paused.get() && !rbuf.is_empty() {
                // Resumed with complete packages still buffered.
                return Poll::Ready(Event::Wake);
            }
            if !S::MOVABLE && inner.move_requested.get() {
                // TLS state and upgraded routes stay: say so at once rather than time out.
                inner.move_requested.set(false);
            }
            if S::MOVABLE
                && inner.move_requested.get()
                && flushed
                && inner.state.get() == State::Open
                && !inner.paused.get()
                && inner.holds.get() == 0
                && inner.hand_over.borrow().is_none()
                && inner.proto.borrow().export_state().is_some()
            {
                // A message boundary: every complete message was handled and answered, and
                // what is left in `rbuf` is the start of the next one.
                return Poll::Ready(Event::Move);
            }
            // Past its send bound the connection is not read: a peer that does not read its
            // answers stops being served instead of having them dropped (back-pressure).
            let over_bound = conn.queued_len() >= inner.max_send_buffer_size.get();
            if inner.state.get() == State::Open && !inner.paused.get() && !over_bound {
                let read = if rbuf.is_empty() {
                    let mut scratch = take_scratch();
                    let r = poll_read_buf(Pin::new(&mut stream), cx, &mut scratch);
                    if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                        rbuf = scratch;
                        rbuf_is_scratch = true;
                    } else {
                        return_scratch(scratch);
                    }
                    r
                } else {
                    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                        rbuf.reserve(READ_CHUNK);
                    }
                    poll_read_buf(Pin::new(&mut stream), cx, &mut rbuf)
                };
                match read {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Event::Eof),
                    Poll::Ready(Ok(n)) => {
                        inner.bytes_in.set(inner.bytes_in.get() + n as u64);
                        crate::runtime::stats::add_bytes(true, n);
                        return Poll::Ready(Event::Read);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
                    Poll::Pending => {}
                }
            }
            if inner.state.get() == State::Open && inner.retiring.get().is_some() {
                // Here the read found nothing more: no input is waiting in the kernel either.
                let at_rest = rbuf.is_empty()
                    && flushed
                    && !inner.paused.get()
                    && inner.hand_over.borrow().is_none()
                    && inner.proto.borrow().at_rest();
                if inner.farewell_due.get() {
                    if at_rest {
                        return Poll::Ready(Event::Farewell);
                    }
                    let wait = farewell_wait.get_or_insert_with(|| Box::pin(sleep(FAREWELL_WAIT)));
                    if wait.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Farewell);
                    }
                } else if inner.drains.get() && at_rest {
                    let rest = drain_idle.get_or_insert_with(|| Box::pin(sleep(DRAIN_IDLE)));
                    if rest.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::DrainedIdle);
                    }
                } else {
                    drain_idle = None;
                }
            }
            let wanted = if inner.state.get() == State::Open {
                inner.proto.borrow().deadline(rbuf.len())
            } else {
                None
            };
            if wanted != deadline.as_ref().map(|a| a.kind) {
                deadline = wanted.map(|d| ArmedDeadline::new(d, rbuf.len()));
            }
            if let Some(armed) = deadline.as_mut() {
                let timer = deadline_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(armed.since)));
                if armed.poll(rbuf.len(), timer, cx) {
                    return Poll::Ready(Event::Deadline(armed.kind));
                }
            }
            if let Some(idle) = idle.as_mut() {
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Idle);
                }
            }
            if let Some(deadline) = handshake.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::HandshakeDeadline);
                }
            }
            let mut slot = inner.waker.borrow_mut();
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
            woken = true;
            Poll::Pending
        })
        .await;

        match event {
            Event::Read | Event::Wake => {
                if let (Some(idle), Some(d)) = (idle.as_mut(), opts.idle_timeout) {
                    idle.as_mut().reset(Instant::now() + d);
                }
                if deadline
                    .as_ref()
                    .is_some_and(|a| a.kind.restarts_on_input())
                {
                    // Armed again from now by the next poll.
                    deadline = None;
                }
                dispatch(&conn, &mut rbuf);
                crate::runtime::cpu_share::worked();
                if std::mem::take(&mut rbuf_is_scratch) {
                    let scratch = std::mem::take(&mut rbuf);
                    if !scratch.is_empty() {
                        rbuf = BytesMut::with_capacity(scratch.len().max(READ_CHUNK / 4));
                        rbuf.extend_from_slice(&scratch);
                    }
                    return_scratch(scratch);
                } else if rbuf.is_empty() && rbuf.capacity() > 0 {
                    // Idle connections keep no receive buffer of their own.
                    rbuf = BytesMut::new();
                }
                if inner.hand_over.borrow().is_some() {
                    break;
                }
                if handshake.is_some() && inner.proto.borrow().handshake_done() {
                    // The deadline's timer entry is not kept for the connection's whole life.
                    handshake = None;
                }
                let mut out = inner.out.borrow_mut();
                if out.is_empty() && out.capacity() > KEEP_OUT_CAPACITY {
                    *out = BytesMut::new();
                }
            }
            Event::Eof => {
                // The peer is done sending; what we still owe it is written before we close.
                conn.close();
            }
            Event::Failed(e) => {
                tracing::debug!("connection {} from {}: {e}", inner.id, inner.peer);
                inner.state.set(State::Destroyed);
                break;
            }
            Event::Idle => {
                tracing::info!(
                    "closing connection {} from {}: silent for {:?}",
                    inner.id,
                    inner.peer,
                    opts.idle_timeout.unwrap_or_default()
                );
                conn.close();
                idle = None;
            }
            Event::HandshakeDeadline => {
                handshake = None;
                if !inner.proto.borrow().handshake_done() {
                    conn.reject(&crate::protocol::Rejection::new(
                        "opening handshake not completed in time",
                    ));
                }
            }
            Event::Drained => {
                inner.buffer_full.set(false);
                conn.call("on_buffer_drain", inner.handlers.on_buffer_drain.as_ref());
                // Messages left waiting while the buffer was full are handled now.
                dispatch(&conn, &mut rbuf);
            }
            Event::Farewell => {
                farewell_wait = None;
                conn.say_farewell();
            }
            Event::DrainedIdle => {
                drain_idle = None;
                conn.close();
            }
            Event::Deadline(d) => {
                deadline = None;
                match d {
                    crate::protocol::Deadline::Idle(after) => {
                        tracing::debug!(
                            "closing connection {} from {}: idle for {after:?}",
                            inner.id,
                            inner.peer
                        );
                        conn.close();
                    }
                    crate::protocol::Deadline::Probe(_) => conn.probe(),
                    _ => {
                        let why = inner.proto.borrow_mut().timed_out();
                        conn.reject(&why);
                    }
                }
            }
            Event::Move => {
                moving = true;
                break;
            }
            Event::CloseNow => break,
            Event::Flushed => {
                linger(&mut stream).await;
                break;
            }
        }
    }

    inner.state.set(State::Closed);
    inner.waker.borrow_mut().take();
    stats::with(|c| stats::drop_one(&c.connections));
    if moving {
        return depart(&conn, stream, rbuf);
    }
    let hand_over = inner.hand_over.borrow_mut().take();
    if let Some(to) = hand_over {
        // The socket lives on under another protocol; what is queued goes first.
        let queued = std::mem::take(&mut *inner.out.borrow_mut());
        if !queued.is_empty() {
            use tokio::io::AsyncWriteExt;
            if stream.write_all(&queued).await.is_err() {
                return Ended::Closed;
            }
        }
        to.take_over(Box::new(stream), rbuf, inner.peer.clone(), inner.local);
        return Ended::Closed;
    }
    inner.out.borrow_mut().clear();
    drop(stream);
    conn.call("on_close", inner.handlers.on_close.as_ref());
    Ended::Closed
}

/// Gives the connection, cut at a message boundary, to whoever carries it to another process.
fn depart<P: Protocol, S: IntoSocket>(conn: &Connection<P>, stream: S, unread: BytesMut) -> Ended {
    use crate::runtime::moving::{ConnectionState, Departure};
    let inner = &conn.inner;
    let Some((socket, unix)) = stream.into_socket() else {
        tracing::warn!(
            "connection {} could not leave its socket; it is lost",
            inner.id
        );
        conn.call("on_close", inner.handlers.on_close.as_ref());
        return Ended::Closed;
    };
    let protocol = inner.proto.borrow().export_state().unwrap_or_default();
    let state = ConnectionState {
        id: inner.id,
        worker: String::new(),
        unix,
        peer: inner.peer.clone(),
        local: inner.local,
        age_ms: conn.age().as_millis() as u64,
        bytes_in: inner.bytes_in.get(),
        bytes_out: inner.bytes_out.get(),
        max_send_buffer_size: inner.max_send_buffer_size.get(),
        unread: ConnectionState::encode_bytes(&unread),
        protocol: ConnectionState::encode_bytes(&protocol),
        session: std::mem::take(&mut *inner.session.borrow_mut()),
        departed_unix_us: crate::runtime::moving::unix_us(),
    };
    crate::runtime::moving::depart(Departure { state, socket });
    Ended::Moved
}

/// Below this many queued bytes, output waiting behind a streamed body moves into the buffer.
const REFILL_BELOW: usize = 64 * 1024;

/// Moves pending output (bytes, and chunks of streamed bodies) into the send buffer, in order,
/// while the buffer is short.
fn refill<P: Protocol>(inner: &crate::runtime::connection::ConnInner<P>) -> io::Result<()> {
    use crate::runtime::connection::Pending;
    let mut pending = inner.pending.borrow_mut();
    let mut out = inner.out.borrow_mut();
    while out.len() < REFILL_BELOW {
        let Some(front) = pending.front_mut() else {
            break;
        };
        match front {
            Pending::Bytes(b) => {
                out.extend_from_slice(b);
                pending.pop_front();
            }
            Pending::Source(src) => {
                let room = REFILL_BELOW - out.len();
                if src.fill(&mut out, room.max(16 * 1024))? {
                    pending.pop_front();
                }
            }
        }
    }
    Ok(())
}

/// Cuts and delivers every complete package in `rbuf`, stopping early if a handler closes or
/// pauses the connection.
fn dispatch<P: Protocol>(conn: &Connection<P>, rbuf: &mut BytesMut) {
    let inner = &conn.inner;
    inner.in_dispatch.set(true);
    // A full send buffer stops the loop too: the rest waits until the buffer has drained, so
    // no answer is refused for want of room.
    while inner.state.get() == State::Open
        && !inner.paused.get()
        && conn.queued_len() < inner.max_send_buffer_size.get()
    {
        let next = conn.with_wire(|wire| {
            let mut proto = inner.proto.borrow_mut();
            next_message(&mut *proto, rbuf, inner.max_package_size, wire)
        });
        if !conn.handle_next(next) {
            break;
        }
    }
    inner.in_dispatch.set(false);
}

/// Half-closes, then reads and discards until the peer closes too (bounded by [`LINGER`]).
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The protocol's deadline for the connection's current state, armed when the state began.
struct ArmedDeadline {
    kind: crate::protocol::Deadline,
    since: Instant,
    /// Bytes buffered when the state began (a rate counts what arrived after).
    start_len: usize,
}

impl ArmedDeadline {
    fn new(kind: crate::protocol::Deadline, buffered: usize) -> ArmedDeadline {
        ArmedDeadline {
            kind,
            since: Instant::now(),
            start_len: buffered,
        }
    }

    /// When the deadline passes, given what is buffered now.
    fn due(&self, buffered: usize) -> Instant {
        use crate::protocol::Deadline;
        match self.kind {
            Deadline::Incomplete(d) | Deadline::Idle(d) | Deadline::Probe(d) => self.since + d,
            Deadline::MinRate {
                bytes_per_sec,
                grace,
            } => {
                // The moment by which what arrived is exactly the lowest rate's worth.
                let arrived = buffered.saturating_sub(self.start_len) as f64;
                let earned =
                    std::time::Duration::from_secs_f64(arrived / f64::from(bytes_per_sec.max(1)));
                self.since + grace.max(earned)
            }
        }
    }

    /// True once passed; otherwise `timer` wakes the task by then. The timer is moved only
    /// earlier: one armed for a later moment is left, and when it fires before the deadline
    /// it is set again. Moving a timer costs the timer wheel a removal and an insertion, and
    /// a deadline that moves later with every request (keep-alive, a body's rate) would pay
    /// that each time.
    fn poll(
        &self,
        buffered: usize,
        timer: &mut Pin<Box<Sleep>>,
        cx: &mut std::task::Context<'_>,
    ) -> bool {
        let due = self.due(buffered);
        if timer.deadline() > due {
            timer.as_mut().reset(due);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if timer.deadline() >= due {
                return true;
            }
            timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Deadline;

    #[tokio::test]
    async fn a_minimum_rate_is_due_after_the_grace_or_when_what_arrived_runs_out() {
        let rate = Deadline::MinRate {
            bytes_per_sec: 100,
            grace: Duration::from_secs(5),
        };
        let armed = ArmedDeadline::new(rate, 40);
        // 40 bytes were there before the state began: they do not count.
        assert_eq!(armed.due(40), armed.since + Duration::from_secs(5));
        assert_eq!(armed.due(240), armed.since + Duration::from_secs(5));
        // 1,000 bytes at 100 B/s carry the connection 10 s from the start.
        assert_eq!(armed.due(1040), armed.since + Duration::from_secs(10));
    }

    #[tokio::test]
    async fn silence_deadlines_restart_on_input_and_the_others_do_not() {
        let d = Duration::from_secs(1);
        assert!(Deadline::Idle(d).restarts_on_input());
        assert!(Deadline::Probe(d).restarts_on_input());
        assert!(!Deadline::Incomplete(d).restarts_on_input());
        let armed = ArmedDeadline::new(Deadline::Incomplete(d), 0);
        assert_eq!(armed.due(5000), armed.since + d);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_for_an_earlier_state_waits_on_to_the_later_deadline() {
        let timer = &mut Box::pin(tokio::time::sleep(Duration::from_secs(1)));
        let later = ArmedDeadline::new(Deadline::Idle(Duration::from_secs(5)), 0);
        let waker = futures_noop_waker();
        let cx = &mut std::task::Context::from_waker(&waker);
        assert!(!later.poll(0, timer, cx));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            !later.poll(0, timer, cx),
            "the old timer fired, the deadline is later"
        );
        assert_eq!(timer.deadline(), later.due(0));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(later.poll(0, timer, cx));
        // A deadline earlier than the armed timer moves it.
        let earlier = ArmedDeadline::new(Deadline::Incomplete(Duration::from_millis(10)), 0);
        let timer = &mut Box::pin(tokio::time::sleep(Duration::from_secs(60)));
        assert!(!earlier.poll(0, timer, cx));
        assert_eq!(timer.deadline(), earlier.due(0));
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
