//! A connection as callbacks see it: send, close, destroy, pause, addresses and counters.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use bytes::BytesMut;

pub(crate) use crate::protocol::PeerAddr;
use crate::protocol::{BodySource, Dynamic, Farewell, HandOver, Protocol, Rejection, Wire};
use crate::runtime::guard::guarded;
use crate::runtime::stats;

/// Why a connection reported an error to `on_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The protocol refused the input, or a package exceeded `max_package_size`. The
    /// connection is closed.
    Rejected(String),
    /// `send` found the send buffer full (past `max_send_buffer_size`); the message was dropped.
    SendBufferFull,
    /// A callback panicked while handling this connection; the connection is closed.
    Panicked,
    /// An outbound connection could not be established.
    ConnectFailed(String),
    /// A message could not be encoded by the protocol.
    Encode(String),
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Rejected(r) => write!(f, "input rejected: {r}"),
            ConnectionError::SendBufferFull => f.write_str("send buffer full, message dropped"),
            ConnectionError::Panicked => f.write_str("a callback panicked"),
            ConnectionError::ConnectFailed(r) => write!(f, "connect failed: {r}"),
            ConnectionError::Encode(r) => write!(f, "cannot encode message: {r}"),
        }
    }
}

type ConnFn<P> = Box<dyn Fn(&Connection<P>)>;
type MessageFn<P> = Box<dyn Fn(&Connection<P>, <P as Protocol>::Message)>;
type ErrorFn<P> = Box<dyn Fn(&Connection<P>, &ConnectionError)>;
type GoodbyeFn<P> = Box<dyn Fn(&Connection<P>, Farewell)>;

/// The per-connection callbacks of a worker or an outbound connection.
pub(crate) struct Handlers<P: Protocol> {
    pub(crate) on_connect: Option<ConnFn<P>>,
    pub(crate) on_message: Option<MessageFn<P>>,
    pub(crate) on_close: Option<ConnFn<P>>,
    pub(crate) on_error: Option<ErrorFn<P>>,
    pub(crate) on_buffer_full: Option<ConnFn<P>>,
    pub(crate) on_buffer_drain: Option<ConnFn<P>>,
    pub(crate) on_goodbye: Option<GoodbyeFn<P>>,
    pub(crate) on_resume: Option<ConnFn<P>>,
}

impl<P: Protocol> Default for Handlers<P> {
    fn default() -> Self {
        Handlers {
            on_connect: None,
            on_message: None,
            on_close: None,
            on_error: None,
            on_buffer_full: None,
            on_buffer_drain: None,
            on_goodbye: None,
            on_resume: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Reading and writing.
    Open,
    /// No more reading; flush what is queued, then close.
    Closing,
    /// Drop everything now.
    Destroyed,
    /// Gone; `on_close` has run.
    Closed,
}

/// How a connection's bytes leave: through its stream driver, or as one UDP datagram.
pub(crate) enum Sink {
    Stream,
    Datagram {
        socket: Rc<tokio::net::UdpSocket>,
        peer: SocketAddr,
    },
}

/// Output waiting behind a streamed body, in order.
pub(crate) enum Pending {
    Bytes(BytesMut),
    Source(Box<dyn BodySource>),
}

pub(crate) struct ConnInner<P: Protocol> {
    pub(crate) id: u64,
    pub(crate) peer: PeerAddr,
    /// The client behind a trusted proxy, as the last message said (HTTP's `Forwarded`).
    pub(crate) forwarded: Cell<Option<std::net::IpAddr>>,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) proto: RefCell<P>,
    pub(crate) out: RefCell<BytesMut>,
    /// Streamed bodies and what was sent after them; the driver moves it into `out` in order.
    pub(crate) pending: RefCell<std::collections::VecDeque<Pending>>,
    /// Set when the protocol hands the socket to another (an upgrade).
    pub(crate) hand_over: RefCell<Option<Rc<dyn HandOver>>>,
    pub(crate) state: Cell<State>,
    pub(crate) paused: Cell<bool>,
    pub(crate) buffer_full: Cell<bool>,
    pub(crate) max_send_buffer_size: Cell<usize>,
    pub(crate) max_package_size: usize,
    pub(crate) bytes_in: Cell<u64>,
    pub(crate) bytes_out: Cell<u64>,
    pub(crate) created: Instant,
    pub(crate) handlers: Rc<Handlers<P>>,
    pub(crate) sink: Sink,
    /// The driver task, to be woken when something other than the driver changes this
    /// connection (a send from a timer, a close from another connection).
    pub(crate) waker: RefCell<Option<Waker>>,
    /// True while the driver itself runs callbacks: it flushes afterwards, so no wake is needed.
    pub(crate) in_dispatch: Cell<bool>,
    /// Set when the process retires: why, and whether the protocol ends the connection itself.
    pub(crate) retiring: Cell<Option<Farewell>>,
    pub(crate) drains: Cell<bool>,
    /// The process's last words are due: the driver says them at the next rest, then closes.
    pub(crate) farewell_due: Cell<bool>,
    /// Hand the connection to the successor process at its next message boundary.
    pub(crate) move_requested: Cell<bool>,
    /// Live [`Hold`] guards: work under way for this connection that keeps it from moving.
    pub(crate) holds: Cell<usize>,
    pub(crate) session: RefCell<serde_json::Map<String, serde_json::Value>>,
    /// How old the connection was when it moved to this process.
    pub(crate) moved_age: Cell<std::time::Duration>,
}

/// Work under way for a connection ([`Connection::hold`]); dropping it lets the connection
/// move again.
pub struct Hold {
    conn: std::rc::Weak<dyn HoldTarget>,
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hold")
    }
}

trait HoldTarget {
    fn release(&self);
}

impl<P: Protocol> HoldTarget for ConnInner<P> {
    fn release(&self) {
        self.holds.set(self.holds.get().saturating_sub(1));
        if self.holds.get() == 0 && self.move_requested.get() {
            if let Some(w) = self.waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(c) = self.conn.upgrade() {
            c.release();
        }
    }
}

/// One client connection (Workerman's `TcpConnection`), cheap to clone.
///
/// Every method is non-blocking: `send` queues bytes that the connection's driver writes when
/// the socket has room. A `Connection` may be kept (in a map, a timer) and used from any callback
/// of the same process; once closed, `send` returns `false`.
pub struct Connection<P: Protocol = Dynamic> {
    pub(crate) inner: Rc<ConnInner<P>>,
}

impl<P: Protocol> Clone for Connection<P> {
    fn clone(&self) -> Self {
        Connection {
            inner: self.inner.clone(),
        }
    }
}

impl<P: Protocol> fmt::Debug for Connection<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("state", &self.inner.state.get())
            .finish()
    }
}

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
    /// Set once the process retires, so that a connection that starts afterwards (the last of
    /// an accept queue, an HTTP upgrade) retires too.
    static RETIRING: Cell<Option<(Farewell, bool)>> = const { Cell::new(None) };
}

/// Makes this process's connection ids start above `base` (each process of a slot gets its own
/// range, so that a connection keeps its id when it moves to the next process).
pub(crate) fn set_id_base(base: u64) {
    NEXT_ID.with(|n| n.set(base + 1));
}

fn next_id() -> u64 {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// Marks this process as retiring for `why`; with `farewell_due`, connections that start from
/// now on say their farewell as soon as they are at rest.
pub(crate) fn set_process_retiring(why: Farewell, farewell_due: bool) {
    RETIRING.with(|r| r.set(Some((why, farewell_due))));
}

pub(crate) struct ConnSettings {
    pub(crate) max_package_size: usize,
    pub(crate) max_send_buffer_size: usize,
}

impl<P: Protocol> Connection<P> {
    pub(crate) fn new(
        proto: P,
        peer: PeerAddr,
        local: Option<SocketAddr>,
        handlers: Rc<Handlers<P>>,
        settings: &ConnSettings,
        sink: Sink,
    ) -> Self {
        Self::with_id(next_id(), proto, peer, local, handlers, settings, sink)
    }

    /// [`new`](Self::new) with a given id (a connection that moved here keeps its own).
    pub(crate) fn with_id(
        id: u64,
        mut proto: P,
        peer: PeerAddr,
        local: Option<SocketAddr>,
        handlers: Rc<Handlers<P>>,
        settings: &ConnSettings,
        sink: Sink,
    ) -> Self {
        proto.configure(settings.max_package_size);
        Connection {
            inner: Rc::new(ConnInner {
                id,
                peer,
                forwarded: Cell::new(None),
                local,
                proto: RefCell::new(proto),
                out: RefCell::new(BytesMut::new()),
                pending: RefCell::new(std::collections::VecDeque::new()),
                hand_over: RefCell::new(None),
                state: Cell::new(State::Open),
                paused: Cell::new(false),
                buffer_full: Cell::new(false),
                max_send_buffer_size: Cell::new(settings.max_send_buffer_size),
                max_package_size: settings.max_package_size,
                bytes_in: Cell::new(0),
                bytes_out: Cell::new(0),
                created: Instant::now(),
                handlers,
                sink,
                waker: RefCell::new(None),
                in_dispatch: Cell::new(false),
                retiring: Cell::new(None),
                drains: Cell::new(false),
                farewell_due: Cell::new(false),
                move_requested: Cell::new(false),
                holds: Cell::new(0),
                session: RefCell::new(serde_json::Map::new()),
                moved_age: Cell::new(std::time::Duration::ZERO),
            }),
        }
    }

    /// An accepted connection that starts after its process began to retire retires at once.
    pub(crate) fn follow_process_retirement(&self) {
        if let Some((why, due)) = RETIRING.with(|r| r.get()) {
            self.retire(why);
            if due {
                self.bid_farewell();
            }
        }
    }

    /// This connection's id, unique within its process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The peer's address: the client's, or with the PROXY protocol the address its header
    /// names. Behind an HTTP proxy trusted for `X-Forwarded-For` this stays the proxy's;
    /// [`remote_ip`](Self::remote_ip) gives the client's.
    pub fn remote_addr(&self) -> &PeerAddr {
        &self.inner.peer
    }

    /// The client's IP address as text (empty for Unix-domain peers): the peer's, or the one a
    /// trusted proxy's `Forwarded` / `X-Forwarded-For` header names
    /// ([`Worker::trusted_proxies`](crate::Worker::trusted_proxies)).
    pub fn remote_ip(&self) -> String {
        if let Some(ip) = self.inner.forwarded.get() {
            return ip.to_string();
        }
        match &self.inner.peer {
            PeerAddr::Inet(a) => a.ip().to_string(),
            PeerAddr::Unix(_) => String::new(),
        }
    }

    /// The peer as `connections` lists it: the client behind a trusted proxy, with the proxy.
    pub(crate) fn peer_label(&self) -> String {
        match self.inner.forwarded.get() {
            Some(ip) => format!("{ip} via {}", self.inner.peer),
            None => self.inner.peer.to_string(),
        }
    }

    /// The peer's port (0 for Unix-domain peers).
    pub fn remote_port(&self) -> u16 {
        match &self.inner.peer {
            PeerAddr::Inet(a) => a.port(),
            PeerAddr::Unix(_) => 0,
        }
    }

    /// The local address of the socket, for IP connections.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local
    }

    /// Bytes received so far.
    pub fn bytes_read(&self) -> u64 {
        self.inner.bytes_in.get()
    }

    /// Bytes written to the socket so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.bytes_out.get()
    }

    /// Bytes queued and not yet written.
    pub fn send_buffer_len(&self) -> usize {
        self.inner.out.borrow().len()
    }

    /// True until the connection starts closing.
    pub fn is_open(&self) -> bool {
        self.inner.state.get() == State::Open
    }

    /// Changes this connection's send-buffer bound (the worker's `max_send_buffer_size`).
    pub fn set_max_send_buffer_size(&self, bytes: usize) {
        self.inner.max_send_buffer_size.set(bytes);
    }

    /// Queues a message. Returns `false` when it was not queued: the connection is closing or
    /// closed, or its send buffer is already past `max_send_buffer_size` (then the message is
    /// dropped, `on_error` gets [`ConnectionError::SendBufferFull`] and the process's failed-send
    /// count grows). The send that fills the buffer past the bound calls `on_buffer_full`;
    /// `on_buffer_drain` follows once everything is written.
    pub fn send(&self, msg: impl Into<P::Output>) -> bool {
        let inner = &self.inner;
        if inner.state.get() != State::Open {
            return false;
        }
        if let Sink::Datagram { socket, peer } = &inner.sink {
            let mut buf = BytesMut::new();
            let encoded = inner
                .proto
                .borrow_mut()
                .encode(msg.into(), &mut Wire::new(&mut buf));
            if let Err(e) = encoded {
                self.report(&ConnectionError::Encode(e.to_string()));
                return false;
            }
            return match socket.try_send_to(&buf, *peer) {
                Ok(n) => {
                    inner.bytes_out.set(inner.bytes_out.get() + n as u64);
                    crate::runtime::stats::add_bytes(false, n);
                    true
                }
                Err(e) => {
                    tracing::debug!("udp send to {peer} failed: {e}");
                    stats::with(|c| stats::bump(&c.failed_sends));
                    false
                }
            };
        }
        if self.queued_len() >= inner.max_send_buffer_size.get() {
            stats::with(|c| stats::bump(&c.failed_sends));
            self.report(&ConnectionError::SendBufferFull);
            return false;
        }
        let msg = msg.into();
        let encoded = self.with_wire(|wire| inner.proto.borrow_mut().encode(msg, wire));
        if let Err(e) = encoded {
            self.report(&ConnectionError::Encode(e.to_string()));
            return false;
        }
        if !inner.buffer_full.get() && self.queued_len() >= inner.max_send_buffer_size.get() {
            inner.buffer_full.set(true);
            self.call("on_buffer_full", inner.handlers.on_buffer_full.as_ref());
        }
        self.wake();
        true
    }

    /// Closes after everything queued has been written (Workerman's `close`).
    pub fn close(&self) {
        if self.inner.state.get() == State::Open {
            self.inner.state.set(State::Closing);
            self.wake();
        }
    }

    /// Sends one last message, then closes.
    pub fn close_with(&self, msg: impl Into<P::Output>) {
        self.send(msg);
        self.close();
    }

    /// Closes now, dropping anything not yet written.
    pub fn destroy(&self) {
        if matches!(self.inner.state.get(), State::Open | State::Closing) {
            self.inner.state.set(State::Destroyed);
            self.inner.out.borrow_mut().clear();
            self.inner.pending.borrow_mut().clear();
            self.wake();
        }
    }

    /// Stops reading from this connection; data the peer sends waits in the kernel, which slows
    /// the peer down (back-pressure).
    pub fn pause_recv(&self) {
        self.inner.paused.set(true);
    }

    /// Resumes reading after [`pause_recv`](Self::pause_recv).
    pub fn resume_recv(&self) {
        if self.inner.paused.replace(false) {
            self.wake();
        }
    }

    /// Data kept on the connection for its whole life (GatewayWorker's `$_SESSION`): it moves
    /// with the connection when a reload hands it to the new process (at most 64 KiB as
    /// JSON; a larger session keeps the connection from moving).
    pub fn session(&self) -> std::cell::RefMut<'_, serde_json::Map<String, serde_json::Value>> {
        self.inner.session.borrow_mut()
    }

    /// Marks work under way for this connection (a reply that an async task will send):
    /// while a guard lives the connection is not handed to another process, so the reply
    /// cannot be lost. Drop the guard when the reply has been sent.
    pub fn hold(&self) -> Hold {
        self.inner.holds.set(self.inner.holds.get() + 1);
        Hold {
            conn: Rc::downgrade(&self.inner) as std::rc::Weak<dyn HoldTarget>,
        }
    }

    /// Takes the counters and session of a connection that moved here.
    pub(crate) fn restore(&self, state: &crate::runtime::moving::ConnectionState) {
        let inner = &self.inner;
        inner.bytes_in.set(state.bytes_in);
        inner.bytes_out.set(state.bytes_out);
        inner.max_send_buffer_size.set(state.max_send_buffer_size);
        *inner.session.borrow_mut() = state.session.clone();
        // `created` is fixed at construction; the age is carried by `moved_age`.
        inner.moved_age.set(state.age());
    }

    /// Asks the driver to hand this connection to the successor at its next boundary.
    pub(crate) fn request_move(&self) {
        if !self.inner.move_requested.replace(true) {
            self.wake();
        }
    }

    /// The connection could not move in time: it stays, and gets the farewell instead.
    pub(crate) fn cancel_move(&self) {
        self.inner.move_requested.set(false);
    }

    /// Why the process is ending this connection, once it is: set when the process starts to
    /// retire (reload, stop), before `on_goodbye` and `on_close`.
    pub fn retiring(&self) -> Option<Farewell> {
        self.inner.retiring.get()
    }

    /// The process retires: the protocol is told (HTTP then ends the connection after its next
    /// response); a long-lived connection goes on until [`bid_farewell`](Self::bid_farewell).
    pub(crate) fn retire(&self, why: Farewell) {
        let inner = &self.inner;
        if inner.retiring.get().is_some() || !matches!(inner.sink, Sink::Stream) {
            return;
        }
        inner.retiring.set(Some(why));
        inner.drains.set(inner.proto.borrow_mut().drain());
        self.wake();
    }

    /// The process is about to exit: at its next rest the connection hears `on_goodbye` and
    /// the protocol's last words, then closes.
    pub(crate) fn bid_farewell(&self) {
        if self.inner.retiring.get().is_none() {
            self.retire(Farewell::Stopping);
        }
        if !self.inner.farewell_due.replace(true) {
            self.wake();
        }
    }

    /// Says goodbye now: `on_goodbye`, the protocol's farewell, then the close.
    pub(crate) fn say_farewell(&self) {
        let why = self.inner.retiring.get().unwrap_or(Farewell::Stopping);
        if let Some(f) = &self.inner.handlers.on_goodbye {
            if guarded("on_goodbye", || f(self, why)).is_none() {
                self.after_panic();
                return;
            }
        }
        if self.inner.state.get() == State::Open {
            self.with_wire(|wire| self.inner.proto.borrow_mut().farewell(why, wire));
        }
        self.close();
    }

    /// Asks a silent peer whether it is still there (the protocol's [`Protocol::probe`]: a
    /// WebSocket ping).
    pub(crate) fn probe(&self) {
        if self.inner.state.get() == State::Open {
            self.with_wire(|wire| self.inner.proto.borrow_mut().probe(wire));
        }
    }

    /// How long ago the connection was established.
    pub fn age(&self) -> std::time::Duration {
        self.inner.created.elapsed() + self.inner.moved_age.get()
    }

    pub(crate) fn wake(&self) {
        if self.inner.in_dispatch.get() {
            return;
        }
        if let Some(w) = self.inner.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Runs a connection callback under the panic guard; a panic closes this connection.
    pub(crate) fn call(&self, what: &str, f: Option<&ConnFn<P>>) {
        if let Some(f) = f {
            if guarded(what, || f(self)).is_none() {
                self.after_panic();
            }
        }
    }

    pub(crate) fn report(&self, err: &ConnectionError) {
        if let Some(f) = &self.inner.handlers.on_error {
            if guarded("on_error", || f(self, err)).is_none() {
                self.after_panic();
            }
        }
    }

    pub(crate) fn deliver(&self, msg: P::Message) {
        let client = self
            .inner
            .proto
            .borrow()
            .forwarded_client(&msg, &self.inner.peer);
        if client.is_some() {
            self.inner.forwarded.set(client);
        }
        if let Some(f) = &self.inner.handlers.on_message {
            if guarded("on_message", || f(self, msg)).is_none() {
                self.after_panic();
            }
        }
    }

    fn after_panic(&self) {
        tracing::warn!(
            "closing connection {} from {} after a panic in its handler",
            self.inner.id,
            self.inner.peer
        );
        self.destroy();
        if let Some(f) = &self.inner.handlers.on_error {
            // A second panic here is only logged; the connection is already going.
            let _ = guarded("on_error", || f(self, &ConnectionError::Panicked));
        }
    }

    /// Acts on what `next_message` found: delivers a message, or closes on a rejection.
    /// Returns whether to look for another.
    pub(crate) fn handle_next(&self, next: Result<Option<P::Message>, Rejection>) -> bool {
        match next {
            Ok(Some(msg)) => {
                stats::with(|c| stats::bump(&c.messages));
                self.deliver(msg);
                true
            }
            Ok(None) => false,
            Err(why) => {
                self.reject(&why);
                false
            }
        }
    }

    pub(crate) fn reject(&self, why: &Rejection) {
        stats::with(|c| stats::bump(&c.rejected));
        tracing::warn!(
            "closing connection {} from {}: {}",
            self.inner.id,
            self.inner.peer,
            why
        );
        self.report(&ConnectionError::Rejected(why.to_string()));
        match why.reply() {
            Some(reply) if self.inner.state.get() == State::Open => {
                self.with_wire(|wire| wire.buf().extend_from_slice(reply));
                self.close();
            }
            _ => self.destroy(),
        }
    }

    /// Bytes waiting to be written: the send buffer plus output queued behind a streamed body.
    pub(crate) fn queued_len(&self) -> usize {
        let inner = &self.inner;
        let behind: usize = inner
            .pending
            .borrow()
            .iter()
            .map(|p| match p {
                Pending::Bytes(b) => b.len(),
                Pending::Source(_) => 0,
            })
            .sum();
        inner.out.borrow().len() + behind
    }

    /// Runs `f` with a [`Wire`] onto this connection's output, keeping order behind a body
    /// being streamed, and carries out what the protocol asked (close, stream a body).
    pub(crate) fn with_wire<R>(&self, f: impl FnOnce(&mut Wire<'_>) -> R) -> R {
        let inner = &self.inner;
        let behind = !inner.pending.borrow().is_empty();
        let (result, req) = if behind {
            let mut tmp = BytesMut::new();
            let mut wire = Wire::new(&mut tmp);
            let r = f(&mut wire);
            let req = wire.into_requests();
            if !tmp.is_empty() {
                inner.pending.borrow_mut().push_back(Pending::Bytes(tmp));
            }
            (r, req)
        } else {
            let mut out = inner.out.borrow_mut();
            let mut wire = Wire::new(&mut out);
            let r = f(&mut wire);
            (r, wire.into_requests())
        };
        let (close, source) = (req.close, req.source);
        if let Some(h) = req.hand_over {
            *inner.hand_over.borrow_mut() = Some(h);
        }
        if let Some(source) = source {
            inner
                .pending
                .borrow_mut()
                .push_back(Pending::Source(source));
        }
        if close {
            self.close();
        }
        result
    }
}
