//! Protocols: how a byte stream is cut into messages, and how messages become bytes.
//!
//! A protocol follows Workerman's three steps: [`Protocol::input`] says how long the next packet
//! is (or that more bytes are needed, or that the input is unacceptable), [`Protocol::decode`]
//! turns one packet into a message, [`Protocol::encode`] turns an outgoing message into bytes.
//! Protocols never touch sockets: the connection driver owns all I/O and enforces
//! `max_package_size` for every protocol, so a protocol only reports lengths.
//!
//! One protocol value is created per connection, so a protocol may keep per-connection state
//! (how far it has already scanned, a handshake's progress).

mod dynamic;
mod frame;
mod raw;
mod text;

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};

pub use dynamic::{Dynamic, Message};
pub use frame::Frame;
pub use raw::Raw;
pub use text::Text;

/// What [`Protocol::input`] found at the start of the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The buffer holds no complete packet yet; read more.
    NeedMore,
    /// The next packet is this many bytes long (it may not all have arrived yet).
    Packet(usize),
}

/// Why a protocol refused its input; the connection is closed with this reason, after sending
/// the rejection's reply if it has one (an HTTP `400`, a WebSocket close frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    reason: Cow<'static, str>,
    reply: Option<Bytes>,
}

impl Rejection {
    /// A rejection with the given reason.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            reason: reason.into(),
            reply: None,
        }
    }

    /// A rejection that sends `reply` to the peer before closing.
    pub fn with_reply(reason: impl Into<Cow<'static, str>>, reply: impl Into<Bytes>) -> Self {
        Rejection {
            reason: reason.into(),
            reply: Some(reply.into()),
        }
    }

    /// The reason, as given.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// What is sent to the peer before the connection closes.
    pub fn reply(&self) -> Option<&Bytes> {
        self.reply.as_ref()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A body the connection streams out as the socket takes it (a file, say), so that a large
/// response never sits in memory whole.
pub trait BodySource {
    /// Appends up to `max` more bytes to `dst`; returns true once everything was appended.
    fn fill(&mut self, dst: &mut BytesMut, max: usize) -> std::io::Result<bool>;
}

/// A byte stream a connection can hand to another protocol (boxed, whatever the transport).
pub(crate) trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Stream for T {}

/// Takes over a connection's socket, with the bytes it has read but not consumed (an HTTP
/// connection upgraded to a WebSocket on one of its paths).
pub(crate) trait HandOver {
    fn take_over(
        &self,
        stream: Box<dyn Stream>,
        unread: BytesMut,
        peer: PeerAddr,
        local: Option<std::net::SocketAddr>,
    );
}

/// What a protocol asked of its connection while writing.
pub(crate) struct WireRequests {
    pub(crate) close: bool,
    pub(crate) source: Option<Box<dyn BodySource>>,
    pub(crate) hand_over: Option<std::rc::Rc<dyn HandOver>>,
}

/// Where a protocol writes, and what it may ask of its connection besides bytes.
pub struct Wire<'a> {
    out: &'a mut BytesMut,
    close: bool,
    source: Option<Box<dyn BodySource>>,
    hand_over: Option<std::rc::Rc<dyn HandOver>>,
}

impl fmt::Debug for Wire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("queued", &self.out.len())
            .field("close", &self.close)
            .finish()
    }
}

impl<'a> Wire<'a> {
    pub(crate) fn new(out: &'a mut BytesMut) -> Wire<'a> {
        Wire {
            out,
            close: false,
            source: None,
            hand_over: None,
        }
    }

    /// The connection's send buffer: append bytes to send.
    pub fn buf(&mut self) -> &mut BytesMut {
        self.out
    }

    /// Close the connection once everything queued (and any streamed body) is written.
    pub fn close_after_write(&mut self) {
        self.close = true;
    }

    /// Stream `source` after the bytes queued so far; later output waits behind it.
    pub fn stream_body(&mut self, source: Box<dyn BodySource>) {
        self.source = Some(source);
    }

    /// Stop reading: the connection (and the bytes not consumed yet) goes to `to`.
    pub(crate) fn hand_over(&mut self, to: std::rc::Rc<dyn HandOver>) {
        self.hand_over = Some(to);
    }

    pub(crate) fn into_requests(self) -> WireRequests {
        WireRequests {
            close: self.close,
            source: self.source,
            hand_over: self.hand_over,
        }
    }
}

impl std::error::Error for Rejection {}

/// The peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PeerAddr {
    /// An IP peer.
    Inet(std::net::SocketAddr),
    /// A Unix-domain peer (usually unnamed).
    Unix(String),
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Inet(a) => write!(f, "{a}"),
            PeerAddr::Unix(p) if p.is_empty() => f.write_str("unix:(unnamed)"),
            PeerAddr::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// Why a process is ending its connections: what a protocol says in its last words
/// ([`Protocol::farewell`]) and what `on_goodbye` is told.
///
/// A WebSocket sends close code 1001 (Going Away) for [`Farewell::Stopping`] and 1012 (Service
/// Restart) for [`Farewell::Restarting`], so a client can tell a deploy from a shutdown and
/// from a crash (1006).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Farewell {
    /// The server is stopping (`stop`, `stop -g`, SIGINT, SIGTERM, SIGQUIT).
    Stopping,
    /// The process is being replaced (`reload`, `reload -g`, `restart`, SIGHUP, recycling):
    /// a client reconnecting now finds a new process.
    Restarting,
}

/// A bound a protocol puts on the state its connection is in ([`Protocol::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deadline {
    /// A message has begun and must be complete within this (an HTTP request head): when it
    /// passes, the connection is refused with [`Protocol::timed_out`].
    Incomplete(std::time::Duration),
    /// Nothing is under way and the peer may stay silent this long (HTTP keep-alive); then
    /// the connection is closed quietly. Every byte received starts the silence again.
    Idle(std::time::Duration),
    /// A message is arriving (an HTTP request body) and must keep an average of at least
    /// `bytes_per_sec` from the state's start, after a first `grace`; when it falls behind,
    /// the connection is refused with [`Protocol::timed_out`].
    MinRate {
        /// The lowest average rate accepted.
        bytes_per_sec: u32,
        /// How long the rate is not checked at first (a client may be slow to start).
        grace: std::time::Duration,
    },
    /// The peer may stay silent this long; then the driver calls [`Protocol::probe`], which
    /// asks it whether it is still there (a WebSocket ping). Every byte received starts the
    /// silence again.
    Probe(std::time::Duration),
}

impl Deadline {
    /// True for the deadlines that every byte received restarts.
    pub(crate) fn restarts_on_input(self) -> bool {
        matches!(self, Deadline::Idle(_) | Deadline::Probe(_))
    }
}

/// A wire protocol, in Workerman's three steps: [`input`](Protocol::input) says how long the
/// next packet is (or that more bytes are needed, or that the input is unacceptable),
/// [`decode`](Protocol::decode) turns one packet into a message, [`encode`](Protocol::encode)
/// turns an outgoing message into bytes. Protocols never touch sockets: the connection driver
/// owns all I/O and enforces `max_package_size`, so a protocol only reports lengths. One value
/// is made per connection, so it may keep per-connection state.
pub trait Protocol: 'static {
    /// A decoded inbound message, as `on_message` receives it.
    type Message;
    /// What `send` accepts.
    type Output;

    /// Looks at the start of `buf` and tells how long the next packet is. It may write to
    /// `wire` (an HTTP `100 Continue`).
    ///
    /// Called again whenever more bytes arrive while it answers [`Input::NeedMore`].
    fn input(&mut self, buf: &[u8], wire: &mut Wire<'_>) -> Result<Input, Rejection>;

    /// Turns one whole packet (exactly the length `input` gave) into a message, or `None` when
    /// the packet was for the protocol itself (a WebSocket ping, answered through `wire`).
    fn decode(
        &mut self,
        packet: BytesMut,
        wire: &mut Wire<'_>,
    ) -> Result<Option<Self::Message>, Rejection>;

    /// Writes the wire form of `msg`.
    fn encode(&mut self, msg: Self::Output, wire: &mut Wire<'_>) -> Result<(), Rejection>;

    /// Writes what this end sends first, as the connection opens (a WebSocket client's upgrade
    /// request). Nothing, by default.
    fn opening(&mut self, wire: &mut Wire<'_>) {
        let _ = wire;
    }

    /// Called once per connection with the worker's `max_package_size` (a WebSocket limits
    /// whole messages, not only frames, with it).
    fn configure(&mut self, max_package_size: usize) {
        let _ = max_package_size;
    }

    /// How long the peer has to complete an opening handshake, for protocols that have one;
    /// a connection still in its handshake then is closed.
    fn handshake_deadline(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether the opening handshake is complete (always, for protocols without one).
    fn handshake_done(&self) -> bool {
        true
    }

    /// The rejection for input over `max_package_size` (`why` says by how much). The default is
    /// `why` itself; HTTP answers `413`.
    fn oversize(&mut self, why: Rejection) -> Rejection {
        why
    }

    /// The process is retiring and wants this connection to end without losing anything.
    /// A request/response protocol returns `true` and ends the connection itself at its next
    /// boundary (HTTP answers the next request with `Connection: close`); the runtime also
    /// closes such a connection once it has been [at rest](Protocol::at_rest) for a moment.
    /// `false` (the default) means the connection is long-lived: it is served on until the
    /// client leaves or the process says [`farewell`](Protocol::farewell).
    fn drain(&mut self) -> bool {
        false
    }

    /// The client's address when `msg` shows it came through a trusted proxy (HTTP's
    /// `Forwarded` / `X-Forwarded-For` from a peer in `trusted_proxies`); the connection's
    /// `remote_ip()` gives it from then on. `None` (the default): the peer is the client.
    fn forwarded_client(&self, msg: &Self::Message, peer: &PeerAddr) -> Option<std::net::IpAddr> {
        let _ = (msg, peer);
        None
    }

    /// True when nothing is half-received or owed to the peer (no request waiting for its
    /// response, no fragmented message half-read): closing now loses no message. The runtime
    /// also checks that no unread input is buffered.
    fn at_rest(&self) -> bool {
        true
    }

    /// Last words before the process closes the connection (a WebSocket close frame with the
    /// code for `why`). Called once, at rest when possible; the connection closes after what
    /// this writes. Nothing, by default.
    fn farewell(&mut self, why: Farewell, wire: &mut Wire<'_>) {
        let _ = (why, wire);
    }

    /// The bound on the connection's current state, given how many bytes of the next message
    /// are buffered: the driver arms it when the state begins and cuts the connection when it
    /// passes without a change of state. `None` (the default): no bound.
    fn deadline(&self, buffered: usize) -> Option<Deadline> {
        let _ = buffered;
        None
    }

    /// The refusal for a message not completed within its [`Deadline::Incomplete`] or
    /// arriving slower than its [`Deadline::MinRate`] (HTTP answers `408`).
    fn timed_out(&mut self) -> Rejection {
        Rejection::new("message not completed in time")
    }

    /// Asks a silent peer whether it is still there, when a [`Deadline::Probe`] passes (a
    /// WebSocket ping); the protocol's next deadline bounds the wait for the answer. Nothing,
    /// by default.
    fn probe(&mut self, wire: &mut Wire<'_>) {
        let _ = wire;
    }

    /// The protocol's state between messages, for handing the connection to another process
    /// (live hand-off on reload). `None` (the default) means the connection cannot move now
    /// (or ever): it gets the farewell instead. Called only at a message boundary.
    fn export_state(&self) -> Option<Vec<u8>> {
        None
    }

    /// Takes over the state another process's [`export_state`](Protocol::export_state)
    /// wrote, in a value made the usual way (a clone of the worker's protocol). Refusing makes
    /// the connection go back to the old process, which says its farewell.
    fn import_state(&mut self, state: &[u8]) -> Result<(), Rejection> {
        let _ = state;
        Err(Rejection::new("this protocol cannot resume a connection"))
    }

    /// How bytes sent from another process (`bus::send_to_client`, `send_to_uid`, group and
    /// broadcast sends) become a message of this protocol. `None` (the default) means the
    /// protocol's connections cannot be reached that way.
    fn output_from_payload(payload: Payload) -> Option<Self::Output>
    where
        Self: Sized,
    {
        let _ = payload;
        None
    }
}

/// Cuts the next message off the front of `buf`, or says that more bytes are needed.
///
/// This is the one place that applies `max_package_size`, for every protocol: a packet whose
/// announced length is over the limit, or a buffer that reaches the limit without holding a
/// whole packet, is refused.
pub(crate) fn next_message<P: Protocol>(
    proto: &mut P,
    buf: &mut BytesMut,
    max_package_size: usize,
    wire: &mut Wire<'_>,
) -> Result<Option<P::Message>, Rejection> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let packet = match proto.input(buf, wire)? {
            Input::NeedMore if buf.len() >= max_package_size => {
                return Err(proto.oversize(Rejection::new(format!(
                    "package exceeds max_package_size ({} bytes buffered, no complete package, limit {max_package_size})",
                    buf.len()
                ))))
            }
            Input::NeedMore => return Ok(None),
            Input::Packet(0) => {
                return Err(Rejection::new("protocol announced a zero-length package"))
            }
            Input::Packet(n) if n > max_package_size => {
                return Err(proto.oversize(Rejection::new(format!(
                    "package of {n} bytes exceeds max_package_size ({max_package_size})"
                ))))
            }
            Input::Packet(n) if n > buf.len() => return Ok(None),
            Input::Packet(n) => buf.split_to(n),
        };
        if let Some(msg) = proto.decode(packet, wire)? {
            return Ok(Some(msg));
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Feeds `chunks` one read at a time and collects every message, stopping at a rejection.
    pub(crate) fn decode_all<P: Protocol>(
        proto: &mut P,
        chunks: impl IntoIterator<Item = Vec<u8>>,
        max: usize,
    ) -> (Result<Vec<P::Message>, Rejection>, BytesMut) {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut sink = BytesMut::new();
        for chunk in chunks {
            buf.extend_from_slice(&chunk);
            loop {
                match next_message(proto, &mut buf, max, &mut Wire::new(&mut sink)) {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (Err(e), buf),
                }
            }
        }
        (Ok(out), buf)
    }
}

/// Bytes to send, from any of the usual owned or borrowed forms.
///
/// `connection.send("hi")`, `send(format!(..))`, `send(vec)` and `send(bytes)` all work.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Bytes);

impl Payload {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload(b)
    }
}
impl From<BytesMut> for Payload {
    fn from(b: BytesMut) -> Self {
        Payload(b.freeze())
    }
}
impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload(Bytes::from(v))
    }
}
impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload(Bytes::from(s))
    }
}
impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Payload(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<&String> for Payload {
    fn from(s: &String) -> Self {
        Payload(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<&[u8]> for Payload {
    fn from(s: &[u8]) -> Self {
        Payload(Bytes::copy_from_slice(s))
    }
}
impl<const N: usize> From<&[u8; N]> for Payload {
    fn from(s: &[u8; N]) -> Self {
        Payload(Bytes::copy_from_slice(s))
    }
}
impl From<Message> for Payload {
    fn from(m: Message) -> Self {
        match m {
            Message::Text(s) => Payload::from(s),
            Message::Binary(b) => Payload(b),
        }
    }
}
impl From<&Message> for Payload {
    fn from(m: &Message) -> Self {
        Payload(Bytes::copy_from_slice(m.as_bytes()))
    }
}
