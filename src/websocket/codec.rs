//! The WebSocket server protocol: handshake, then frames.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use sha1::{Digest, Sha1};

use super::deflate::{self, Codec as DeflateCodec, DeflateSettings, InflateError};
use super::handshake::{header_list, ClientRequest, WsAccept};
use crate::http::{Request, Response};
use crate::protocol::{Farewell, Input, Payload, Protocol, Rejection, Wire};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How long a client has to complete its opening handshake.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An open connection silent this long gets a ping (below the 60 s idle limit of common
/// proxies and load balancers, so a quiet connection is also kept alive through them).
pub(crate) const DEFAULT_PING_AFTER: Duration = Duration::from_secs(30);
/// How long a pinged connection may stay silent before it is closed as gone.
pub(crate) const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// How a silent open connection is checked: a ping after `ping_after` of silence (`None`: never),
/// then closed after `pong_timeout` more without a byte from the peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    pub(crate) ping_after: Option<Duration>,
    pub(crate) pong_timeout: Duration,
}
const MAX_HANDSHAKE: usize = 16 * 1024;

/// A whole WebSocket message from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl WsMessage {
    /// The message's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            WsMessage::Text(s) => s.as_bytes(),
            WsMessage::Binary(b) => b,
        }
    }

    /// The text, for a text message.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            WsMessage::Text(s) => Some(s),
            WsMessage::Binary(_) => None,
        }
    }
}

impl std::fmt::Display for WsMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// What a WebSocket connection's `send` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsOutput {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping (the peer answers with a pong).
    Ping(Bytes),
    /// Closes with a status code and reason; the connection ends after it is written.
    Close(u16, String),
}

impl From<&str> for WsOutput {
    fn from(s: &str) -> Self {
        WsOutput::Text(s.to_string())
    }
}
impl From<String> for WsOutput {
    fn from(s: String) -> Self {
        WsOutput::Text(s)
    }
}
impl From<Bytes> for WsOutput {
    fn from(b: Bytes) -> Self {
        WsOutput::Binary(b)
    }
}
impl From<Vec<u8>> for WsOutput {
    fn from(b: Vec<u8>) -> Self {
        WsOutput::Binary(Bytes::from(b))
    }
}
impl From<WsMessage> for WsOutput {
    fn from(m: WsMessage) -> Self {
        match m {
            WsMessage::Text(s) => WsOutput::Text(s),
            WsMessage::Binary(b) => WsOutput::Binary(b),
        }
    }
}

/// What the opening handshake asked for, kept for the connection's life.
#[derive(Debug, Clone, Default)]
pub struct HandshakeInfo {
    /// The request path.
    pub path: String,
    /// The query string.
    pub query: String,
    /// Request headers as `(name, value)` pairs (on an outbound connection: the server's
    /// answer's headers).
    pub headers: Vec<(String, String)>,
    /// The subprotocol agreed (`Sec-WebSocket-Protocol`), if any.
    pub protocol: Option<String>,
}

pub(crate) type HandshakeHook = Rc<dyn Fn(&Request) -> Result<WsAccept, Response>>;
pub(crate) type PlainHttpHook = Rc<dyn Fn(&Request) -> Response>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Open,
    Closing,
}

/// The WebSocket server protocol, one value per connection.
#[derive(Clone)]
pub struct WebSocket {
    phase: Phase,
    /// The message being assembled from fragments: its kind and bytes so far.
    fragments: Option<(u8, BytesMut)>,
    /// The message being assembled came compressed (RSV1 on its first frame).
    fragments_compressed: bool,
    /// permessage-deflate as the worker offers it (`None`: declined). Shared by the worker's
    /// connections.
    pub(crate) deflate_settings: Rc<std::cell::Cell<Option<DeflateSettings>>>,
    /// permessage-deflate as this connection's handshake agreed it.
    deflate: DeflateCodec,
    max_message: usize,
    pub(crate) hook: Rc<RefCell<Option<HandshakeHook>>>,
    /// Answers plain HTTP requests on the WebSocket port (a page that opens the socket).
    pub(crate) plain_http: Rc<RefCell<Option<PlainHttpHook>>>,
    pub(crate) handshake_timeout: Rc<std::cell::Cell<Duration>>,
    pub(crate) keepalive: Rc<std::cell::Cell<Keepalive>>,
    /// A ping went out for silence and no frame has come since.
    awaiting_pong: bool,
    info: Option<HandshakeInfo>,
    /// Set when this end is the client (an outbound connection).
    client: Option<ClientSide>,
}

/// The client end's handshake and masking state.
#[derive(Debug, Clone)]
struct ClientSide {
    host: String,
    path: String,
    key: String,
    rng: u64,
    /// Headers and subprotocols to send, shared by every reconnection.
    request: Rc<RefCell<ClientRequest>>,
}

impl ClientSide {
    fn mask(&mut self) -> [u8; 4] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_be_bytes()
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("phase", &self.phase)
            .finish()
    }
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            phase: Phase::Handshake,
            fragments: None,
            fragments_compressed: false,
            deflate_settings: Rc::default(),
            deflate: DeflateCodec::default(),
            max_message: usize::MAX,
            hook: Rc::default(),
            plain_http: Rc::default(),
            handshake_timeout: Rc::new(std::cell::Cell::new(DEFAULT_HANDSHAKE_TIMEOUT)),
            keepalive: Rc::new(std::cell::Cell::new(Keepalive {
                ping_after: Some(DEFAULT_PING_AFTER),
                pong_timeout: DEFAULT_PONG_TIMEOUT,
            })),
            awaiting_pong: false,
            info: None,
            client: None,
        }
    }
}

impl WebSocket {
    /// The client end of a connection to `host` (as the `Host` header says it) and `path`.
    pub(crate) fn client(host: &str, path: &str) -> WebSocket {
        let mut seed = random_seed();
        let mut key = [0u8; 16];
        for chunk in key.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_be_bytes()[..chunk.len()]);
        }
        WebSocket {
            client: Some(ClientSide {
                host: host.to_string(),
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.to_string()
                },
                key: base64::engine::general_purpose::STANDARD.encode(key),
                rng: seed,
                request: Rc::default(),
            }),
            ..WebSocket::default()
        }
    }

    /// What an outbound connection adds to its handshake (`None` on the server side).
    pub(crate) fn client_request(&self) -> Option<&Rc<RefCell<ClientRequest>>> {
        self.client.as_ref().map(|c| &c.request)
    }

    fn out_mask(&mut self) -> Option<[u8; 4]> {
        self.client.as_mut().map(ClientSide::mask)
    }

    fn client_handshake_decode(&mut self, packet: &[u8]) -> Result<(), Rejection> {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        if !matches!(resp.parse(packet), Ok(httparse::Status::Complete(_))) {
            return Err(Rejection::new("malformed websocket handshake response"));
        }
        if resp.code != Some(101) {
            return Err(Rejection::new(format!(
                "websocket handshake refused with status {}",
                resp.code.unwrap_or(0)
            )));
        }
        let expected = self
            .client
            .as_ref()
            .map(|c| accept_key(&c.key))
            .unwrap_or_default();
        let accept = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string());
        if accept.as_deref() != Some(expected.as_str()) {
            return Err(Rejection::new(
                "websocket handshake: wrong Sec-WebSocket-Accept",
            ));
        }
        let headers = || resp.headers.iter().map(|h| (h.name, h.value));
        let chosen = header_list(headers(), "sec-websocket-protocol");
        let offered = self
            .client
            .as_ref()
            .map(|c| c.request.borrow().protocols.clone())
            .unwrap_or_default();
        let protocol = match chosen.as_slice() {
            [] => None,
            [one] if offered.contains(one) => Some(one.clone()),
            _ => {
                return Err(Rejection::new(format!(
                    "websocket handshake: the server chose subprotocol {:?}, not one offered",
                    chosen.join(", ")
                )))
            }
        };
        let extensions = header_list(headers(), "sec-websocket-extensions");
        let offered_deflate = self
            .client
            .as_ref()
            .and_then(|c| c.request.borrow().deflate);
        match offered_deflate {
            Some(settings) => {
                if let Some(agreed) = deflate::read_answer(&extensions, &settings)
                    .map_err(|e| Rejection::new(format!("websocket handshake: {e}")))?
                {
                    self.deflate = DeflateCodec::new(agreed);
                }
            }
            None if !extensions.is_empty() => {
                return Err(Rejection::new(format!(
                "websocket handshake: the server answered extensions not offered: {extensions:?}"
            )))
            }
            None => {}
        }
        self.info = Some(HandshakeInfo {
            path: self
                .client
                .as_ref()
                .map(|c| c.path.clone())
                .unwrap_or_default(),
            query: String::new(),
            headers: headers()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            protocol,
        });
        self.phase = Phase::Open;
        Ok(())
    }

    /// The handshake's request, once open.
    pub fn handshake(&self) -> Option<&HandshakeInfo> {
        self.info.as_ref()
    }
}

fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut f = BytesMut::new();
    let mut payload = BytesMut::new();
    payload.put_u16(code);
    payload.put_slice(&reason.as_bytes()[..reason.len().min(123)]);
    write_frame(&mut f, 0x8, &payload, None);
    f.freeze()
}

/// The path, query and headers of a parsed upgrade request.
fn handshake_info(req: &httparse::Request<'_, '_>) -> HandshakeInfo {
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    HandshakeInfo {
        path: path.to_string(),
        query: query.to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        protocol: None,
    }
}

/// A protocol error: close with `code`, then end the connection.
fn fail(code: u16, why: &str) -> Rejection {
    Rejection::with_reply(format!("websocket {code}: {why}"), close_frame(code, why))
}

fn http_refusal(status: StatusCode, why: &str) -> Rejection {
    Rejection::with_reply(
        format!("websocket handshake refused: {why}"),
        crate::http::error_reply(status),
    )
}

/// Writes one whole frame; clients mask theirs (RFC 6455 5.3), servers never do.
/// `opcode` may carry RSV1 (0x40) for a compressed message.
fn write_frame(dst: &mut BytesMut, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    dst.reserve(payload.len() + 14);
    dst.put_u8(0x80 | opcode);
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => dst.put_u8(bit | n as u8),
        n if n <= u16::MAX as usize => {
            dst.put_u8(bit | 126);
            dst.put_u16(n as u16);
        }
        n => {
            dst.put_u8(bit | 127);
            dst.put_u64(n as u64);
        }
    }
    match mask {
        None => dst.put_slice(payload),
        Some(m) => {
            dst.put_slice(&m);
            dst.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3]));
        }
    }
}

/// The `Sec-WebSocket-Accept` for a client's key.
pub(crate) fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

impl WebSocket {
    fn handshake_decode(&mut self, packet: &[u8], wire: &mut Wire<'_>) -> Result<(), Rejection> {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut raw);
        match req.parse(packet) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(http_refusal(StatusCode::BAD_REQUEST, "malformed handshake")),
        }
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let upgrade_ok = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        let plain = self.plain_http.borrow().clone();
        if let (false, Some(plain)) = (upgrade_ok, plain) {
            let info = handshake_info(&req);
            let mut request = crate::http::get_request(&info.path, &info.query, &info.headers);
            if let Some(m) = req
                .method
                .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
            {
                request.method = m;
            }
            let response = crate::runtime::guard::guarded("on_http_request", || plain(&request))
                .unwrap_or_else(|| Response::new(500).body("Internal Server Error\n"));
            crate::http::encode_standalone(response, wire.buf());
            self.phase = Phase::Closing;
            wire.close_after_write();
            return Ok(());
        }
        if req.method != Some("GET") {
            return Err(http_refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "the handshake must be a GET",
            ));
        }
        let connection_ok = header("connection").is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        if !upgrade_ok || !connection_ok {
            return Err(http_refusal(
                StatusCode::BAD_REQUEST,
                "not a websocket upgrade",
            ));
        }
        if header("sec-websocket-version").as_deref().map(str::trim) != Some("13") {
            return Err(Rejection::with_reply(
                "websocket handshake refused: version",
                Bytes::from_static(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            ));
        }
        let Some(key) = header("sec-websocket-key").filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .map(|d| d.len() == 16)
                .unwrap_or(false)
        }) else {
            return Err(http_refusal(
                StatusCode::BAD_REQUEST,
                "bad Sec-WebSocket-Key",
            ));
        };
        let mut info = handshake_info(&req);
        let hook = self.hook.borrow().clone();
        let mut accepted = WsAccept::new();
        if let Some(hook) = hook {
            let request = crate::http::get_request(&info.path, &info.query, &info.headers);
            match crate::runtime::guard::guarded("on_websocket_connect", || hook(&request)) {
                Some(Err(refusal)) => {
                    let mut out = BytesMut::new();
                    crate::http::encode_standalone(refusal, &mut out);
                    return Err(Rejection::with_reply(
                        "websocket handshake refused by the application",
                        out.freeze(),
                    ));
                }
                Some(Ok(a)) => accepted = a,
                // A panicking hook accepts nothing in particular; the panic is logged.
                None => {}
            }
        }
        if let Some(chosen) = accepted.protocol.take() {
            let offered = header_list(
                req.headers.iter().map(|h| (h.name, h.value)),
                "sec-websocket-protocol",
            );
            if offered.contains(&chosen) {
                info.protocol = Some(chosen);
            } else {
                tracing::error!(
                    "on_websocket_connect chose subprotocol {chosen:?}, which the client did not \
                     offer ({offered:?}); the answer names none"
                );
            }
        }
        let mut extension_answer = None;
        if let Some(settings) = self.deflate_settings.get() {
            let offers = header_list(
                req.headers.iter().map(|h| (h.name, h.value)),
                "sec-websocket-extensions",
            );
            if let Some((agreed, answer)) = deflate::answer_offers(&offers, &settings) {
                self.deflate = DeflateCodec::new(agreed);
                extension_answer = Some(answer);
            }
        }
        let out = wire.buf();
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.extend_from_slice(accept_key(&key).as_bytes());
        if let Some(answer) = extension_answer {
            out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
            out.extend_from_slice(answer.as_bytes());
        }
        if let Some(p) = &info.protocol {
            out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
            out.extend_from_slice(p.as_bytes());
        }
        for (name, value) in accepted.headers() {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        self.info = Some(info);
        self.phase = Phase::Open;
        Ok(())
    }

    fn frame(
        &mut self,
        mut packet: BytesMut,
        wire: &mut Wire<'_>,
    ) -> Result<Option<WsMessage>, Rejection> {
        let b0 = packet[0];
        let b1 = packet[1];
        let opcode = b0 & 0x0F;
        let fin = b0 & 0x80 != 0;
        let compressed = b0 & 0x40 != 0;
        let len7 = (b1 & 0x7F) as usize;
        let header = 2 + match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if b1 & 0x80 != 0 {
            let mask = [
                packet[header],
                packet[header + 1],
                packet[header + 2],
                packet[header + 3],
            ];
            packet.advance(header + 4);
            for (i, byte) in packet.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
        } else {
            packet.advance(header);
        }
        match opcode {
            0x1 | 0x2 => {
                if self.fragments.is_some() {
                    return Err(fail(1002, "new message inside a fragmented one"));
                }
                if fin {
                    return self.whole(opcode, compressed, packet).map(Some);
                }
                self.fragments = Some((opcode, packet));
                self.fragments_compressed = compressed;
                Ok(None)
            }
            0x0 => {
                let Some((kind, mut so_far)) = self.fragments.take() else {
                    return Err(fail(1002, "continuation without a message"));
                };
                if so_far.len() + packet.len() > self.max_message {
                    return Err(fail(1009, "message too big"));
                }
                so_far.extend_from_slice(&packet);
                if fin {
                    let compressed = std::mem::take(&mut self.fragments_compressed);
                    return self.whole(kind, compressed, so_far).map(Some);
                }
                self.fragments = Some((kind, so_far));
                Ok(None)
            }
            0x8 => {
                let code = match packet.len() {
                    0 => 1000,
                    1 => return Err(fail(1002, "close frame with a 1-byte body")),
                    _ => {
                        let code = u16::from_be_bytes([packet[0], packet[1]]);
                        if std::str::from_utf8(&packet[2..]).is_err() {
                            return Err(fail(1007, "close reason is not UTF-8"));
                        }
                        if !valid_close_code(code) {
                            return Err(fail(1002, "invalid close code"));
                        }
                        code
                    }
                };
                if self.phase == Phase::Open {
                    let mut payload = BytesMut::new();
                    payload.put_u16(code);
                    let mask = self.out_mask();
                    write_frame(wire.buf(), 0x8, &payload, mask);
                }
                self.phase = Phase::Closing;
                wire.close_after_write();
                Ok(None)
            }
            0x9 => {
                let mask = self.out_mask();
                write_frame(wire.buf(), 0xA, &packet, mask);
                Ok(None)
            }
            0xA => Ok(None),
            _ => Err(fail(1002, "unknown opcode")),
        }
    }
}

impl WebSocket {
    /// A whole message's payload as the application gets it: inflated if it came compressed
    /// (never past `max_message`: 1009), text checked to be UTF-8.
    fn whole(
        &mut self,
        kind: u8,
        compressed: bool,
        payload: BytesMut,
    ) -> Result<WsMessage, Rejection> {
        if !compressed {
            return message(kind, payload);
        }
        match self.deflate.inflate(&payload, self.max_message) {
            Ok(plain) => message(kind, BytesMut::from(&plain[..])),
            Err(InflateError::TooBig) => Err(fail(1009, "message too big once inflated")),
            Err(InflateError::Corrupt(why)) => {
                tracing::debug!("compressed message is not deflate data: {why}");
                Err(fail(1007, "compressed message is not deflate data"))
            }
        }
    }

    /// Writes a data message, compressed when agreed and worth it.
    fn write_data(&mut self, dst: &mut BytesMut, opcode: u8, payload: &[u8]) {
        let mask = self.out_mask();
        match self.deflate.compress(payload) {
            Some(small) => write_frame(dst, 0x40 | opcode, &small, mask),
            None => write_frame(dst, opcode, payload, mask),
        }
    }
}

fn valid_close_code(code: u16) -> bool {
    // 1012-1014 are registered with IANA (service restart, try again later, bad gateway).
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn message(kind: u8, payload: BytesMut) -> Result<WsMessage, Rejection> {
    if kind == 0x1 {
        String::from_utf8(payload.to_vec())
            .map(WsMessage::Text)
            .map_err(|_| fail(1007, "text message is not valid UTF-8"))
    } else {
        Ok(WsMessage::Binary(payload.freeze()))
    }
}

impl Protocol for WebSocket {
    type Message = WsMessage;
    type Output = WsOutput;

    fn input(&mut self, buf: &[u8], _wire: &mut Wire<'_>) -> Result<Input, Rejection> {
        match self.phase {
            Phase::Handshake => match memchr::memmem::find(buf, b"\r\n\r\n") {
                Some(i) => Ok(Input::Packet(i + 4)),
                None if buf.len() > MAX_HANDSHAKE => Err(http_refusal(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "handshake too large",
                )),
                None => Ok(Input::NeedMore),
            },
            Phase::Closing => Ok(Input::NeedMore),
            Phase::Open => {
                if buf.len() < 2 {
                    return Ok(Input::NeedMore);
                }
                let (b0, b1) = (buf[0], buf[1]);
                // RSV1 marks a compressed message, on its first frame only (RFC 7692 6).
                let first_data_frame = matches!(b0 & 0x0F, 0x1 | 0x2);
                let rsv1_allowed = self.deflate.agreed.is_some() && first_data_frame;
                if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !rsv1_allowed) {
                    return Err(fail(1002, "reserved bits set that no extension allows"));
                }
                let masked = b1 & 0x80 != 0;
                if self.client.is_none() && !masked {
                    return Err(fail(1002, "client frames must be masked"));
                }
                if self.client.is_some() && masked {
                    return Err(Rejection::new("websocket: the server sent a masked frame"));
                }
                let opcode = b0 & 0x0F;
                let len7 = (b1 & 0x7F) as u64;
                if opcode >= 0x8 && (len7 > 125 || b0 & 0x80 == 0) {
                    return Err(fail(
                        1002,
                        "control frames must be whole and at most 125 bytes",
                    ));
                }
                let (ext, len) = match len7 {
                    126 if buf.len() < 4 => return Ok(Input::NeedMore),
                    126 => (2, u64::from(u16::from_be_bytes([buf[2], buf[3]]))),
                    127 if buf.len() < 10 => return Ok(Input::NeedMore),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&buf[2..10]);
                        (8, u64::from_be_bytes(b))
                    }
                    n => (0, n),
                };
                let so_far = self.fragments.as_ref().map_or(0, |(_, b)| b.len() as u64);
                if so_far + len > self.max_message as u64 {
                    return Err(fail(1009, "message too big"));
                }
                let total = 2 + ext + if masked { 4 } else { 0 } + len;
                Ok(Input::Packet(
                    usize::try_from(total).map_err(|_| fail(1009, "message too big"))?,
                ))
            }
        }
    }

    fn decode(
        &mut self,
        packet: BytesMut,
        wire: &mut Wire<'_>,
    ) -> Result<Option<WsMessage>, Rejection> {
        match self.phase {
            Phase::Handshake if self.client.is_some() => {
                self.client_handshake_decode(&packet)?;
                Ok(None)
            }
            Phase::Handshake => {
                self.handshake_decode(&packet, wire)?;
                Ok(None)
            }
            Phase::Open => {
                self.awaiting_pong = false;
                self.frame(packet, wire)
            }
            Phase::Closing => Ok(None),
        }
    }

    fn encode(&mut self, msg: WsOutput, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        // A client may queue messages behind its upgrade request; a server speaks once open.
        let ready =
            self.phase == Phase::Open || (self.client.is_some() && self.phase == Phase::Handshake);
        if !ready {
            return Err(Rejection::new("the websocket is not open"));
        }
        // Frames queued behind a client's upgrade request go before the server's answer, so
        // before any compression is agreed: they go plain.
        match msg {
            WsOutput::Text(s) => self.write_data(wire.buf(), 0x1, s.as_bytes()),
            WsOutput::Binary(b) => self.write_data(wire.buf(), 0x2, &b),
            WsOutput::Ping(b) => {
                let mask = self.out_mask();
                write_frame(wire.buf(), 0x9, &b[..b.len().min(125)], mask)
            }
            WsOutput::Close(code, reason) => {
                let mut payload = BytesMut::new();
                payload.put_u16(code);
                payload.put_slice(&reason.as_bytes()[..reason.len().min(123)]);
                let mask = self.out_mask();
                write_frame(wire.buf(), 0x8, &payload, mask);
                self.phase = Phase::Closing;
                wire.close_after_write();
            }
        }
        Ok(())
    }

    fn oversize(&mut self, _why: Rejection) -> Rejection {
        if self.phase == Phase::Handshake {
            http_refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "handshake too large",
            )
        } else {
            fail(1009, "message too big")
        }
    }

    fn output_from_payload(payload: Payload) -> Option<WsOutput> {
        Some(match String::from_utf8(payload.0.to_vec()) {
            Ok(s) => WsOutput::Text(s),
            Err(_) => WsOutput::Binary(payload.0),
        })
    }

    fn configure(&mut self, max_package_size: usize) {
        self.max_message = max_package_size;
    }

    fn opening(&mut self, wire: &mut Wire<'_>) {
        if let Some(c) = &self.client {
            let mut request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
                c.path, c.host, c.key
            );
            let extra = c.request.borrow();
            if !extra.protocols.is_empty() {
                request.push_str(&format!(
                    "Sec-WebSocket-Protocol: {}\r\n",
                    extra.protocols.join(", ")
                ));
            }
            if let Some(settings) = &extra.deflate {
                request.push_str(&format!(
                    "Sec-WebSocket-Extensions: {}\r\n",
                    deflate::client_offer(settings)
                ));
            }
            for (name, value) in &extra.headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            wire.buf().extend_from_slice(request.as_bytes());
        }
    }

    fn handshake_deadline(&self) -> Option<Duration> {
        Some(self.handshake_timeout.get())
    }

    fn handshake_done(&self) -> bool {
        self.phase != Phase::Handshake
    }

    fn at_rest(&self) -> bool {
        self.fragments.is_none()
    }

    fn deadline(&self, _buffered: usize) -> Option<crate::protocol::Deadline> {
        use crate::protocol::Deadline;
        if self.phase != Phase::Open {
            // The handshake has its own deadline; a closing connection the driver's flush bound.
            return None;
        }
        let keepalive = self.keepalive.get();
        if self.awaiting_pong {
            return Some(Deadline::Idle(keepalive.pong_timeout));
        }
        keepalive.ping_after.map(Deadline::Probe)
    }

    fn probe(&mut self, wire: &mut Wire<'_>) {
        if self.phase == Phase::Open {
            let mask = self.out_mask();
            write_frame(wire.buf(), 0x9, b"", mask);
            self.awaiting_pong = true;
        }
    }

    fn export_state(&self) -> Option<Vec<u8>> {
        // Open, between messages, on the server side: all that is left is the handshake's
        // request, which the application may still read.
        if self.phase != Phase::Open || self.fragments.is_some() || self.client.is_some() {
            return None;
        }
        // A compression context cannot be carried over; agreed terms without one can.
        let agreed = self.deflate.agreed;
        if agreed.is_some_and(|a| a.own_takeover || a.peer_takeover) {
            return None;
        }
        let info = self.info.clone().unwrap_or_default();
        serde_json::to_vec(&(info.path, info.query, info.headers, info.protocol, agreed)).ok()
    }

    fn import_state(&mut self, state: &[u8]) -> Result<(), Rejection> {
        type Headers = Vec<(String, String)>;
        type Agreed = Option<deflate::Agreed>;
        // Processes of earlier versions send three fields (before subprotocols) or four
        // (before compression).
        let (path, query, headers, protocol, agreed) =
            serde_json::from_slice::<(String, String, Headers, Option<String>, Agreed)>(state)
                .or_else(|_| {
                    serde_json::from_slice::<(String, String, Headers, Option<String>)>(state)
                        .map(|(p, q, h, pr)| (p, q, h, pr, None))
                })
                .or_else(|_| {
                    serde_json::from_slice::<(String, String, Headers)>(state)
                        .map(|(p, q, h)| (p, q, h, None, None))
                })
                .map_err(|e| Rejection::new(format!("bad websocket state: {e}")))?;
        if let Some(agreed) = agreed {
            self.deflate = DeflateCodec::new(agreed);
        }
        self.info = Some(HandshakeInfo {
            path,
            query,
            headers,
            protocol,
        });
        self.phase = Phase::Open;
        Ok(())
    }

    fn farewell(&mut self, why: Farewell, wire: &mut Wire<'_>) {
        if self.phase == Phase::Open {
            let (code, reason) = farewell_code(why);
            let mut payload = BytesMut::new();
            payload.put_u16(code);
            payload.put_slice(reason.as_bytes());
            let mask = self.out_mask();
            write_frame(wire.buf(), 0x8, &payload, mask);
            self.phase = Phase::Closing;
        }
        wire.close_after_write();
    }
}

/// The close code and reason a retiring process sends: 1001 Going Away when the server stops,
/// 1012 Service Restart when the process is replaced (RFC 6455 7.4.1 and IANA's registry), so a
/// client reconnects at once after a deploy and can tell both from a crash (1006).
pub(crate) fn farewell_code(why: Farewell) -> (u16, &'static str) {
    match why {
        Farewell::Restarting => (1012, "server restarting"),
        _ => (1001, "server stopping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::decode_all;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    fn open() -> WebSocket {
        let mut ws = WebSocket {
            phase: Phase::Open,
            ..WebSocket::default()
        };
        ws.configure(1024);
        ws
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    /// Feeds a whole handshake; whether it was taken, and what the codec wrote back.
    fn answer(ws: &mut WebSocket, head: &str) -> (bool, String) {
        let mut buf = BytesMut::from(head.as_bytes());
        let mut sink = BytesMut::new();
        let taken = crate::protocol::next_message(ws, &mut buf, 1 << 20, &mut Wire::new(&mut sink));
        (taken.is_ok(), String::from_utf8_lossy(&sink).into_owned())
    }

    fn hooked(hook: impl Fn(&Request) -> Result<WsAccept, Response> + 'static) -> WebSocket {
        let ws = WebSocket::default();
        *ws.hook.borrow_mut() = Some(Rc::new(hook));
        ws
    }

    #[test]
    fn the_hook_chooses_an_offered_subprotocol_and_adds_headers_and_cookies() {
        let mut ws = hooked(|req| {
            assert_eq!(req.websocket_protocols(), ["graphql-ws", "chat"]);
            Ok(WsAccept::new()
                .protocol("chat")
                .header("X-Served-By", "oxwork")
                .cookie("sid", "42"))
        });
        let (ok, out) = answer(
            &mut ws,
            &format!("{UPGRADE}Sec-WebSocket-Protocol: graphql-ws, chat\r\n\r\n"),
        );
        assert!(ok, "{out}");
        assert!(out.starts_with("HTTP/1.1 101 "), "{out}");
        assert!(
            out.contains("\r\nSec-WebSocket-Protocol: chat\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\nX-Served-By: oxwork\r\n"), "{out}");
        assert!(
            out.contains("\r\nSet-Cookie: sid=42; Path=/; HttpOnly\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\n"), "{out}");
        assert_eq!(
            ws.handshake().and_then(|h| h.protocol.clone()).as_deref(),
            Some("chat")
        );
    }

    #[test]
    fn a_subprotocol_the_client_did_not_offer_is_left_out_of_the_answer() {
        let mut ws = hooked(|_| Ok(WsAccept::new().protocol("mqtt")));
        let (ok, out) = answer(
            &mut ws,
            &format!("{UPGRADE}Sec-WebSocket-Protocol: chat\r\n\r\n"),
        );
        assert!(ok, "{out}");
        assert!(!out.contains("Sec-WebSocket-Protocol"), "{out}");
        assert_eq!(ws.handshake().and_then(|h| h.protocol.clone()), None);
    }

    #[test]
    fn a_client_offers_its_subprotocols_and_refuses_an_answer_it_did_not_offer() {
        let server_answer = |ws: &WebSocket, protocol: &str| {
            let key = ws
                .client
                .as_ref()
                .map(|c| c.key.clone())
                .unwrap_or_default();
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
                accept_key(&key)
            )
        };
        let client = || {
            let mut ws = WebSocket::client("x", "/ws");
            let request = ws.client_request().expect("a client").clone();
            request.borrow_mut().protocols = vec!["chat".into(), "superchat".into()];
            request
                .borrow_mut()
                .headers
                .push(("Authorization".into(), "Bearer t".into()));
            let mut sink = BytesMut::new();
            ws.opening(&mut Wire::new(&mut sink));
            let sent = String::from_utf8_lossy(&sink).into_owned();
            assert!(
                sent.contains("\r\nSec-WebSocket-Protocol: chat, superchat\r\n"),
                "{sent}"
            );
            assert!(sent.contains("\r\nAuthorization: Bearer t\r\n"), "{sent}");
            ws
        };
        let mut ws = client();
        let head = server_answer(&ws, "Sec-WebSocket-Protocol: superchat\r\n");
        let (ok, _) = answer(&mut ws, &head);
        assert!(ok);
        assert_eq!(
            ws.handshake().and_then(|h| h.protocol.clone()).as_deref(),
            Some("superchat")
        );
        let mut ws = client();
        let head = server_answer(&ws, "Sec-WebSocket-Protocol: mqtt\r\n");
        assert!(!answer(&mut ws, &head).0);
    }

    /// A server with permessage-deflate on, past a handshake offering it.
    fn deflating_server(settings: DeflateSettings, offer: &str) -> (WebSocket, String) {
        let mut ws = WebSocket::default();
        ws.deflate_settings.set(Some(settings));
        ws.configure(64 * 1024);
        let (ok, out) = answer(
            &mut ws,
            &format!("{UPGRADE}Sec-WebSocket-Extensions: {offer}\r\n\r\n"),
        );
        assert!(ok, "{out}");
        (ws, out)
    }

    /// A client's compressed frame (RSV1) carrying `message`, compressed by a peer codec.
    fn compressed_client_frame(message: &[u8]) -> Vec<u8> {
        let (agreed, _) = deflate::answer_offers(
            &["permessage-deflate".to_string()],
            &DeflateSettings {
                threshold: 0,
                ..DeflateSettings::default()
            },
        )
        .expect("agreed");
        let wire = DeflateCodec::new(agreed)
            .compress(message)
            .expect("compressible");
        let mask = [9u8, 8, 7, 6];
        let mut frame = vec![0x80 | 0x40 | 0x1];
        match wire.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(wire.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        frame
    }

    #[test]
    fn deflate_is_answered_when_offered_and_messages_go_both_ways_compressed() {
        let (mut ws, out) = deflating_server(
            DeflateSettings::default(),
            "permessage-deflate; client_max_window_bits",
        );
        assert!(
            out.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
            "{out}"
        );
        let text = "{\"event\":\"price\",\"symbol\":\"OXW\",\"bid\":101.5,\"ask\":101.7}".repeat(4);
        let (msgs, _) = decode_all(
            &mut ws,
            [compressed_client_frame(text.as_bytes())],
            64 * 1024,
        );
        assert_eq!(msgs.expect("inflated"), vec![WsMessage::Text(text.clone())]);
        let mut sink = BytesMut::new();
        ws.encode(WsOutput::Text(text.clone()), &mut Wire::new(&mut sink))
            .expect("encoded");
        assert_eq!(sink[0], 0x80 | 0x40 | 0x1, "RSV1 on a compressed message");
        assert!(sink.len() < text.len() / 2, "{} bytes", sink.len());
        // Short messages go as they are.
        let mut sink = BytesMut::new();
        ws.encode(WsOutput::Text("hi".into()), &mut Wire::new(&mut sink))
            .expect("encoded");
        assert_eq!(&sink[..], b"\x81\x02hi");
    }

    #[test]
    fn without_deflate_agreed_rsv1_is_a_protocol_error_and_no_extension_is_answered() {
        let mut ws = WebSocket::default();
        let (ok, out) = answer(
            &mut ws,
            &format!("{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
        );
        assert!(ok && !out.contains("Extensions"), "{out}");
        ws.configure(1024);
        let (msgs, _) = decode_all(&mut ws, [compressed_client_frame(&[b'a'; 300])], 1024);
        assert_eq!(
            &msgs.expect_err("rsv1").reply().expect("close")[2..4],
            &1002u16.to_be_bytes()
        );
    }

    #[test]
    fn a_small_frame_that_inflates_past_the_limit_closes_with_1009() {
        let (mut ws, _) = deflating_server(DeflateSettings::default(), "permessage-deflate");
        // 1 MiB of one letter: about 10 KiB on the wire (level 1), 16 times the 64 KiB limit
        // once inflated.
        let bomb = compressed_client_frame(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        let (msgs, _) = decode_all(&mut ws, [bomb], 64 * 1024);
        assert_eq!(
            &msgs.expect_err("bomb").reply().expect("close")[2..4],
            &1009u16.to_be_bytes()
        );
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn fragments_join_into_one_message_split_into_single_bytes() {
        let mut bytes = client_frame(0x1, false, b"hel");
        bytes.extend(client_frame(0x9, true, b"ping in between"));
        bytes.extend(client_frame(0x0, true, b"lo"));
        let mut ws = open();
        let (msgs, _) = decode_all(&mut ws, bytes.iter().map(|b| vec![*b]), 1024);
        assert_eq!(msgs.expect("valid"), vec![WsMessage::Text("hello".into())]);
    }

    #[test]
    fn unmasked_frames_are_refused_with_1002() {
        let mut ws = open();
        let (msgs, _) = decode_all(&mut ws, [vec![0x81, 0x02, b'h', b'i']], 1024);
        let e = msgs.expect_err("unmasked");
        assert_eq!(
            &e.reply().expect("close frame")[2..4],
            &1002u16.to_be_bytes()
        );
    }

    #[test]
    fn invalid_utf8_text_is_refused_with_1007() {
        let mut ws = open();
        let (msgs, _) = decode_all(&mut ws, [client_frame(0x1, true, b"\xff\xfe")], 1024);
        assert_eq!(
            &msgs.expect_err("utf8").reply().expect("close")[2..4],
            &1007u16.to_be_bytes()
        );
    }

    #[test]
    fn big_control_frames_and_oversized_fragmented_messages_are_refused() {
        let mut ws = open();
        let mut ping = vec![0x89, 0x80 | 126, 0, 200, 0, 0, 0, 0];
        ping.extend(vec![0u8; 200]);
        let (msgs, _) = decode_all(&mut ws, [ping], 4096);
        assert_eq!(
            &msgs.expect_err("big ping").reply().expect("close")[2..4],
            &1002u16.to_be_bytes()
        );
        let mut ws = open();
        let mut frames = Vec::new();
        for _ in 0..20 {
            frames.extend(client_frame(
                if frames.is_empty() { 0x2 } else { 0x0 },
                false,
                &[0u8; 100],
            ));
        }
        let (msgs, _) = decode_all(&mut ws, [frames], 1 << 20);
        assert_eq!(
            &msgs.expect_err("too big").reply().expect("close")[2..4],
            &1009u16.to_be_bytes()
        );
    }

    #[test]
    fn the_farewell_is_a_close_frame_with_1012_for_a_restart_and_1001_for_a_stop() {
        for (why, code) in [(Farewell::Restarting, 1012u16), (Farewell::Stopping, 1001)] {
            let mut ws = open();
            let mut out = BytesMut::new();
            let mut wire = Wire::new(&mut out);
            ws.farewell(why, &mut wire);
            assert!(wire.into_requests().close);
            assert_eq!(out[0], 0x88);
            assert_eq!(u16::from_be_bytes([out[2], out[3]]), code);
        }
    }

    #[test]
    fn a_client_echoing_1012_is_not_a_protocol_error() {
        let mut ws = open();
        let mut out = BytesMut::new();
        let mut buf = BytesMut::from(&client_frame(0x8, true, &1012u16.to_be_bytes())[..]);
        let r = crate::protocol::next_message(&mut ws, &mut buf, 1024, &mut Wire::new(&mut out));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn close_is_answered_and_ping_gets_a_pong() {
        let mut ws = open();
        let mut out = BytesMut::new();
        let mut buf = BytesMut::from(&client_frame(0x9, true, b"p")[..]);
        let r = crate::protocol::next_message(&mut ws, &mut buf, 1024, &mut Wire::new(&mut out));
        assert!(matches!(r, Ok(None)));
        assert_eq!(&out[..], &[0x8A, 0x01, b'p']);
        let mut out = BytesMut::new();
        let mut buf = BytesMut::from(&client_frame(0x8, true, &1000u16.to_be_bytes())[..]);
        let mut wire = Wire::new(&mut out);
        let _ = crate::protocol::next_message(&mut ws, &mut buf, 1024, &mut wire);
        assert!(wire.into_requests().close);
        assert_eq!(&out[..4], &[0x88, 0x02, 0x03, 0xE8]);
    }
}
