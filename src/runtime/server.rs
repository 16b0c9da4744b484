//! Accept loops: one per worker process and listener, handing each connection to the driver.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::spawn_local;

use crate::error::{Error, Result};
use crate::protocol::{next_message, Protocol, Wire};
use crate::runtime::balance::{self, Seat};
use crate::runtime::connection::{ConnSettings, Connection, Handlers, PeerAddr, Sink};
use crate::runtime::driver::{drive, DriveOptions, Ended, Start};
use crate::runtime::listener::Listener;
use crate::runtime::moving::IntoSocket;
use crate::runtime::url::Transport;
use crate::runtime::worker::WorkerConfig;

/// Stops a running accept loop.
#[derive(Debug)]
pub(crate) struct AcceptControl {
    stop: Rc<Notify>,
    drain_queue: Rc<std::cell::Cell<bool>>,
}

impl AcceptControl {
    /// Ends the accept loop; with `drain_queue`, connections already waiting in the socket's
    /// queue are accepted first.
    pub(crate) fn stop(self, drain_queue: bool) {
        self.drain_queue.set(drain_queue);
        self.stop.notify_one();
    }
}

pub(crate) type ConnectionMap<P> = Rc<RefCell<BTreeMap<u64, Connection<P>>>>;

/// Runs with the id of a connection that ended.
type ClosedHook = Rc<dyn Fn(u64)>;

thread_local! {
    /// What the layers above the core run when a connection of this process ends (client
    /// routing drops its memberships), so that the core never names them.
    static CLOSED_HOOKS: RefCell<Vec<ClosedHook>> = const { RefCell::new(Vec::new()) };
}

/// Runs `hook` with the id of every connection of this process that ends from now on.
pub(crate) fn on_connection_closed(hook: impl Fn(u64) + 'static) {
    CLOSED_HOOKS.with(|h| h.borrow_mut().push(Rc::new(hook)));
}

/// A connection's driver returned: it leaves the process's table, and the hooks hear of it,
/// unless it moved to another process (they hear of it once the move is complete).
fn connection_ended<P: Protocol>(connections: &ConnectionMap<P>, id: u64, how: Ended) {
    connections.borrow_mut().remove(&id);
    if how == Ended::Closed {
        run_closed_hooks(id);
    }
}

/// Tells the layers above that connection `id` is gone from this process.
pub(crate) fn run_closed_hooks(id: u64) {
    let hooks = CLOSED_HOOKS.with(|h| h.borrow().clone());
    for hook in hooks {
        hook(id);
    }
}

struct ServeCtx<P: Protocol> {
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Each connection starts with a PROXY protocol header.
    proxy_protocol: bool,
    proto: P,
    handlers: Rc<Handlers<P>>,
    connections: ConnectionMap<P>,
    settings: ConnSettings,
    opts: DriveOptions,
    /// This process's place on its group's board, when the group shares its socket.
    seat: Option<Seat>,
}

impl<P: Protocol> ServeCtx<P> {
    fn ended(&self, id: u64, how: Ended) {
        connection_ended(&self.connections, id, how);
        if let Some(seat) = &self.seat {
            seat.closed();
        }
    }
}

/// Starts serving `listener` on this process's loop.
pub(crate) fn serve<P: Protocol + Clone>(
    listener: Listener,
    _transport: Option<Transport>,
    proto: P,
    handlers: Rc<Handlers<P>>,
    connections: ConnectionMap<P>,
    config: &WorkerConfig,
) -> Result<AcceptControl> {
    let fail = |e| Error::io("cannot use the inherited listening socket", e);
    listener.set_nonblocking().map_err(fail)?;
    let stop = Rc::new(Notify::new());
    let drain_queue = Rc::new(std::cell::Cell::new(false));
    let tls = match &config.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(files.load()?)),
        None => None,
    };
    if config.proxy_protocol && matches!(listener, Listener::Udp(_)) {
        return Err(Error::new(
            crate::error::ErrorKind::Config,
            format!(
                "{}: proxy_protocol is for stream listeners (TCP, Unix)",
                config.listen.as_deref().unwrap_or("")
            ),
        ));
    }
    let ctx = Rc::new(ServeCtx {
        tls,
        proxy_protocol: config.proxy_protocol,
        proto,
        handlers,
        connections,
        settings: ConnSettings {
            max_package_size: config.max_package_size,
            max_send_buffer_size: config.max_send_buffer_size,
        },
        opts: DriveOptions {
            idle_timeout: config.idle_timeout,
        },
        seat: match listener {
            Listener::Udp(_) => None,
            _ => balance::take_seat(),
        },
    });
    match listener {
        Listener::Tcp(l) => {
            let l = crate::os::async_listener(l).map_err(fail)?;
            spawn_local(accept_loop(l, ctx, stop.clone(), drain_queue.clone()));
        }
        Listener::Unix(l) => {
            let l = crate::os::async_listener(l).map_err(fail)?;
            spawn_local(accept_loop(l, ctx, stop.clone(), drain_queue.clone()));
        }
        Listener::Udp(s) => {
            let s = tokio::net::UdpSocket::from_std(s).map_err(fail)?;
            spawn_local(datagram_loop(Rc::new(s), ctx, stop.clone()));
        }
    }
    Ok(AcceptControl { stop, drain_queue })
}

trait Acceptor: std::os::fd::AsFd + std::os::fd::AsRawFd {
    type Stream: AsyncRead + AsyncWrite + IntoSocket + Unpin + 'static;
    /// Accepts with a system call now; `WouldBlock` when the queue is empty.
    fn accept_now(&self) -> io::Result<Accepted<Self::Stream>>;
}

struct Accepted<S> {
    stream: S,
    peer: PeerAddr,
    local: Option<SocketAddr>,
}

impl Acceptor for std::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    fn accept_now(&self) -> io::Result<Accepted<Self::Stream>> {
        let (socket, addr) = socket2::SockRef::from(self).accept()?;
        socket.set_nonblocking(true)?;
        // Replies are written whole, once per batch; Nagle would only add latency.
        let _ = socket.set_tcp_nodelay(true);
        let peer = addr
            .as_socket()
            .ok_or_else(|| io::Error::other("a TCP peer without an IP address"))?;
        let stream = tokio::net::TcpStream::from_std(socket.into())?;
        let local = stream.local_addr().ok();
        Ok(Accepted {
            stream,
            peer: PeerAddr::Inet(peer),
            local,
        })
    }
}

impl Acceptor for std::os::unix::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    fn accept_now(&self) -> io::Result<Accepted<Self::Stream>> {
        let (socket, addr) = socket2::SockRef::from(self).accept()?;
        socket.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(socket.into())?;
        Ok(Accepted {
            stream,
            peer: PeerAddr::Unix(
                addr.as_pathname()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            local: None,
        })
    }
}

/// Waits for connections and takes them: a bounded batch per wake, and in a group sharing
/// its socket only while this process holds no more than its share (`balance`).
async fn accept_loop<A: Acceptor, P: Protocol + Clone>(
    acceptor: AsyncFd<A>,
    ctx: Rc<ServeCtx<P>>,
    stop: Rc<Notify>,
    drain_queue: Rc<std::cell::Cell<bool>>,
) {
    let mut failures = Throttle::new(ACCEPT_WARNING_EVERY);
    let holding_back = || ctx.seat.as_ref().and_then(Seat::holding_back);
    // Set after leaving a queued connection to a sibling once: then one is taken here.
    let mut waited_for: Option<balance::Waiting> = None;
    loop {
        let mut ready = tokio::select! {
            biased;
            _ = stop.notified() => break,
            ready = acceptor.readable() => match ready {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::warn!("cannot wait for connections: {e}");
                    break;
                }
            },
        };
        if waited_for.is_none() {
            if let Some(sibling) = holding_back() {
                drop(ready);
                tokio::select! {
                    biased;
                    _ = stop.notified() => break,
                    _ = tokio::time::sleep(balance::BALANCE_WAIT) => {}
                }
                waited_for = Some(sibling);
                continue;
            }
        }
        let mut taken = 0;
        let mut failed = false;
        while taken < balance::ACCEPT_BATCH {
            match ready.try_io(|l| l.get_ref().accept_now()) {
                // The queue is empty (and the readiness cleared).
                Err(_would_block) => break,
                Ok(Ok(a)) => {
                    accept_connection(&ctx, a);
                    taken += 1;
                    if let (Some(w), Some(seat)) = (waited_for.take(), &ctx.seat) {
                        seat.waited_in_vain(w);
                    }
                    if holding_back().is_some() {
                        break;
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // A client that gave up while queued; the next may be fine.
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Ok(Err(e)) => {
                    if let Some(n) = failures.note(std::time::Instant::now()) {
                        tracing::warn!(
                            "accept failed {n} time{} since the last report: {e}",
                            if n == 1 { "" } else { "s" }
                        );
                    }
                    failed = true;
                    break;
                }
            }
        }
        waited_for = None;
        drop(ready);
        if failed {
            // Out of descriptors or memory: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else if taken == balance::ACCEPT_BATCH {
            tokio::task::yield_now().await;
        }
    }
    if let Some(seat) = &ctx.seat {
        seat.leave();
    }
    let acceptor = acceptor.into_inner();
    if drain_queue.get() {
        // Stopping: the master has closed its copy, so when the last process closes this
        // socket the kernel resets whatever is still queued. First the socket is made deaf: a
        // filter that drops every packet, so that no handshake is completed from now on (a
        // client's SYN goes unanswered and is retried a second later, by when the socket is
        // closed and the retry refused, or a new master listens). The queue is also shrunk
        // to nothing (`listen(0)`; all a Unix socket gets, since filters do not see its
        // connects), which alone is not enough: the kernel still completes one handshake into
        // it, and that connection is reset if it arrives after the last emptying. Then the
        // connections the kernel had already completed are taken and served (they retire at
        // once).
        let sock = socket2::SockRef::from(&acceptor);
        if let Err(e) = sock.attach_filter(&DROP_EVERY_PACKET) {
            tracing::debug!("cannot make the stopping listener deaf: {e}");
        }
        if let Err(e) = sock.listen(0) {
            tracing::debug!("cannot shrink the listen queue: {e}");
        }
        let mut taken = 0;
        loop {
            match acceptor.accept_now() {
                Ok(a) => {
                    accept_connection(&ctx, a);
                    taken += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("accept failed while emptying the queue: {e}");
                    break;
                }
            }
        }
        if taken > 0 {
            tracing::info!("served {taken} connections still queued on the stopping listener");
        }
    }
    // On reload the socket stays open in the master (and in any sibling or successor), so
    // connections still queued on it are accepted by them, never reset.
}

/// A classic BPF program of one instruction, `ret #0`: every packet dropped.
const DROP_EVERY_PACKET: [socket2::SockFilter; 1] = [socket2::SockFilter::new(0x06, 0, 0, 0)];

/// How long a connection has to send its PROXY protocol header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the PROXY protocol header off the start of `stream`, reading exactly its bytes (so
/// nothing after it is taken, on any kind of stream): what it says, or why the connection is
/// refused. Version 2 takes three reads (its fixed part, then its stated length); version 1 is
/// read a byte at a time after its first eight, since only its CRLF says where it ends.
async fn take_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::result::Result<crate::runtime::proxy_protocol::Relayed, String> {
    use crate::runtime::proxy_protocol::{parse, Parsed, V2_MAX};
    use tokio::io::AsyncReadExt;
    // Both versions' shortest header is longer than this ("PROXY UNKNOWN\r\n" is 15 bytes).
    const FIRST: usize = 8;
    let mut buf = vec![0u8; V2_MAX];
    let mut have = FIRST;
    let read = |e: std::io::Error| format!("closed before its PROXY header ended ({e})");
    stream.read_exact(&mut buf[..have]).await.map_err(read)?;
    loop {
        match parse(&buf[..have]) {
            Parsed::Header { relayed, .. } => return Ok(relayed),
            Parsed::Invalid(why) => return Err(why),
            Parsed::NeedMore => {
                // Version 2 says its length in its first 16 bytes; version 1 ends at CRLF.
                let want = if buf.starts_with(b"\r\n") && have >= 16 {
                    16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]))
                } else if buf.starts_with(b"\r\n") {
                    16
                } else {
                    have + 1
                };
                if want > V2_MAX || want <= have {
                    return Err("PROXY header too long".into());
                }
                stream
                    .read_exact(&mut buf[have..want])
                    .await
                    .map_err(read)?;
                have = want;
            }
        }
    }
}

/// Serves an accepted connection: at once, or after its PROXY header.
fn accept_connection<S, P>(ctx: &Rc<ServeCtx<P>>, mut a: Accepted<S>)
where
    S: AsyncRead + AsyncWrite + IntoSocket + Unpin + 'static,
    P: Protocol + Clone,
{
    if !ctx.proxy_protocol {
        return spawn_connection(ctx, a);
    }
    let ctx = ctx.clone();
    spawn_local(async move {
        let header =
            tokio::time::timeout(PROXY_HEADER_TIMEOUT, take_proxy_header(&mut a.stream)).await;
        match header {
            Ok(Ok(crate::runtime::proxy_protocol::Relayed::Client { source, .. })) => {
                a.peer = PeerAddr::Inet(source);
                spawn_connection(&ctx, a);
            }
            Ok(Ok(crate::runtime::proxy_protocol::Relayed::Local)) => spawn_connection(&ctx, a),
            Ok(Err(why)) => tracing::info!("connection from {} refused: {why}", a.peer),
            Err(_) => tracing::info!(
                "connection from {} refused: no PROXY header within {PROXY_HEADER_TIMEOUT:?}",
                a.peer
            ),
        }
    });
}

fn spawn_connection<S, P>(ctx: &Rc<ServeCtx<P>>, a: Accepted<S>)
where
    S: AsyncRead + AsyncWrite + IntoSocket + Unpin + 'static,
    P: Protocol + Clone,
{
    let conn = Connection::new(
        ctx.proto.clone(),
        a.peer,
        a.local,
        ctx.handlers.clone(),
        &ctx.settings,
        Sink::Stream,
    );
    conn.follow_process_retirement();
    let id = conn.id();
    ctx.connections.borrow_mut().insert(id, conn.clone());
    if let Some(seat) = &ctx.seat {
        seat.opened();
    }
    let serve = ctx.clone();
    let opts = ctx.opts;
    // Two separate tasks: a task is as large as its future, and a TLS handshake's state is large,
    // so plain connections must not carry room for it (2.5 KB against 8 KB per idle connection).
    match ctx.tls.clone() {
        None => {
            spawn_local(async move {
                let how = drive(conn, a.stream, opts).await;
                serve.ended(id, how);
            });
        }
        Some(acceptor) => {
            spawn_local(async move {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(a.stream)).await;
                let mut how = Ended::Closed;
                match handshake {
                    Ok(Ok(stream)) => how = Box::pin(drive(conn, stream, opts)).await,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake with {} failed: {e}", conn.remote_addr())
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake with {} timed out", conn.remote_addr())
                    }
                }
                serve.ended(id, how);
            });
        }
    }
}

/// Counts repeated failures and says when to report them: the first at once, then at most
/// one report per period, with how many there were (so that descriptors exhausted for minutes
/// give a few lines, not ten a second).
#[derive(Debug)]
struct Throttle {
    every: Duration,
    unreported: u64,
    last: Option<std::time::Instant>,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            unreported: 0,
            last: None,
        }
    }

    /// One more failure at `now`: `Some(count)` when it is time to report.
    fn note(&mut self, now: std::time::Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// The least time between two "accept failed" lines of one accept loop.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// How long a client has to complete a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

async fn datagram_loop<P: Protocol + Clone>(
    socket: Rc<tokio::net::UdpSocket>,
    ctx: Rc<ServeCtx<P>>,
    stop: Rc<Notify>,
) {
    let local = socket.local_addr().ok();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            biased;
            _ = stop.notified() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("udp receive failed: {e}");
                continue;
            }
        };
        let conn = Connection::new(
            ctx.proto.clone(),
            PeerAddr::Inet(peer),
            local,
            ctx.handlers.clone(),
            &ctx.settings,
            Sink::Datagram {
                socket: socket.clone(),
                peer,
            },
        );
        conn.inner.bytes_in.set(n as u64);
        let mut datagram = BytesMut::from(&buf[..n]);
        loop {
            let next = {
                let mut proto = conn.inner.proto.borrow_mut();
                let mut sink = BytesMut::new();
                next_message(
                    &mut *proto,
                    &mut datagram,
                    ctx.settings.max_package_size,
                    &mut Wire::new(&mut sink),
                )
            };
            if !conn.handle_next(next) {
                break;
            }
        }
    }
}

/// Serves a socket another connection handed over (an HTTP connection upgraded to one of its
/// WebSocket routes), starting with the bytes it had read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adopt<P: Protocol + Clone>(
    proto: P,
    handlers: Rc<Handlers<P>>,
    connections: ConnectionMap<P>,
    config: &WorkerConfig,
    stream: Box<dyn crate::protocol::Stream>,
    unread: BytesMut,
    peer: PeerAddr,
    local: Option<SocketAddr>,
) {
    let settings = ConnSettings {
        max_package_size: config.max_package_size,
        max_send_buffer_size: config.max_send_buffer_size,
    };
    let conn = Connection::new(proto, peer, local, handlers, &settings, Sink::Stream);
    conn.follow_process_retirement();
    let id = conn.id();
    connections.borrow_mut().insert(id, conn.clone());
    let opts = DriveOptions {
        idle_timeout: config.idle_timeout,
    };
    spawn_local(async move {
        let how =
            crate::runtime::driver::drive_from(conn, stream, unread, opts, Start::Fresh).await;
        connection_ended(&connections, id, how);
    });
}

/// Serves a connection that moved here from another process of this slot (hand-off on
/// reload): same id, same socket, the bytes it had read, its protocol state and session. Its
/// driver calls `on_resume`, not `on_connect`.
pub(crate) fn adopt_moved<P: Protocol + Clone>(
    mut proto: P,
    handlers: Rc<Handlers<P>>,
    connections: ConnectionMap<P>,
    config: &WorkerConfig,
    state: crate::runtime::moving::ConnectionState,
    socket: std::os::fd::OwnedFd,
    start: Start,
) -> std::result::Result<(), (String, std::os::fd::OwnedFd)> {
    use crate::runtime::moving::ConnectionState;
    if connections.borrow().contains_key(&state.id) {
        return Err((
            format!("connection id {} is already in use here", state.id),
            socket,
        ));
    }
    let checked = ConnectionState::decode_bytes(&state.protocol).and_then(|protocol| {
        proto.import_state(&protocol).map_err(|e| e.to_string())?;
        ConnectionState::decode_bytes(&state.unread)
    });
    let unread = match checked {
        Ok(bytes) => BytesMut::from(&bytes[..]),
        Err(why) => return Err((why, socket)),
    };
    let settings = ConnSettings {
        max_package_size: config.max_package_size,
        max_send_buffer_size: config.max_send_buffer_size,
    };
    let conn = Connection::with_id(
        state.id,
        proto,
        state.peer.clone(),
        state.local,
        handlers,
        &settings,
        Sink::Stream,
    );
    conn.restore(&state);
    if start == Start::Resumed {
        let took = crate::runtime::moving::unix_us().saturating_sub(state.departed_unix_us);
        crate::runtime::stats::moved_in(std::time::Duration::from_micros(took));
    }
    // Coming back to a process that retires (the move failed): it retires at once.
    conn.follow_process_retirement();
    let opts = DriveOptions {
        idle_timeout: config.idle_timeout,
    };
    let id = state.id;
    // The socket came non-blocking from its old process. Registering it with the event loop
    // fails only without a loop, which a refusal could not mend either.
    let fail = |e: io::Error| {
        tracing::error!("cannot serve moved connection {id}: {e}");
    };
    if state.unix {
        let std_stream = std::os::unix::net::UnixStream::from(socket);
        if let Ok(stream) = tokio::net::UnixStream::from_std(std_stream).map_err(fail) {
            spawn_local(serve_moved(conn, stream, unread, opts, start, connections));
        }
    } else {
        let std_stream = std::net::TcpStream::from(socket);
        if let Ok(stream) = tokio::net::TcpStream::from_std(std_stream).map_err(fail) {
            spawn_local(serve_moved(conn, stream, unread, opts, start, connections));
        }
    }
    Ok(())
}

/// Drives a connection that moved here (or came back) until it ends.
async fn serve_moved<P, S>(
    conn: Connection<P>,
    stream: S,
    unread: BytesMut,
    opts: DriveOptions,
    start: Start,
    connections: ConnectionMap<P>,
) where
    P: Protocol,
    S: AsyncRead + AsyncWrite + IntoSocket + Unpin + 'static,
{
    let id = conn.id();
    connections.borrow_mut().insert(id, conn.clone());
    let how = crate::runtime::driver::drive_from(conn, stream, unread, opts, start).await;
    connection_ended(&connections, id, how);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_accept_failures_are_reported_once_per_period_with_a_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let start = std::time::Instant::now();
        assert_eq!(t.note(start), Some(1));
        // 130 failures 100 ms apart: 13 s.
        let reports: Vec<u64> = (1..=130)
            .filter_map(|i| t.note(start + Duration::from_millis(100 * i)))
            .collect();
        assert_eq!(reports, vec![100]);
    }
}
