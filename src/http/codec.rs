//! The HTTP/1.1 server protocol: request framing (Content-Length and chunked bodies, pipelining
//! answered in order, `Expect: 100-continue`), limits with the right statuses, and response
//! encoding (keep-alive, HEAD, files with ranges, chunked streams, Server-Sent Events).

use bytes::{BufMut, Bytes, BytesMut};
use std::mem::MaybeUninit;

use http::{Method, StatusCode, Version};

use super::multipart;
use super::request::Request;
use super::response::{parse_range, Body, FileSource, HttpOutput, Response};
use crate::protocol::{Input, Protocol, Rejection, Wire};

/// Limits on a request's head.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Request line and headers together, in bytes (default 16 KiB; over it: 431).
    pub max_head: usize,
    /// The request line alone (default 8 KiB; over it: 414).
    pub max_request_line: usize,
    /// Header count (default 100; over it: 431).
    pub max_headers: usize,
    /// Uploaded files larger than this go to a temporary file (default 256 KiB).
    pub spill_over: usize,
    /// A request head must arrive whole within this from its first byte (default 10 s; then
    /// `408` and the close): a client sending a head byte by byte (slowloris) cannot hold a
    /// connection.
    pub head_timeout: std::time::Duration,
    /// A keep-alive connection with no request under way is closed after this much silence
    /// (default 60 s). A request waiting for its response is not idle.
    pub keep_alive_timeout: std::time::Duration,
    /// A request body must arrive at an average of at least this many bytes per second,
    /// counted from the end of its head, once `body_rate_grace` has passed (default 240, as
    /// ASP.NET Kestrel; 0 turns the check off); then `408` and the close: a client trickling a
    /// body cannot hold a connection.
    pub min_body_rate: u32,
    /// How long a body's rate is not checked at first (default 5 s).
    pub body_rate_grace: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head: 16 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 100,
            spill_over: 256 * 1024,
            head_timeout: std::time::Duration::from_secs(10),
            keep_alive_timeout: std::time::Duration::from_secs(60),
            min_body_rate: 240,
            body_rate_grace: std::time::Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(usize),
    Chunked,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    framing: Framing,
    expect_continue: bool,
}

/// What the parse of a request's head found, kept for its decode (the head is parsed once).
#[derive(Debug, Clone)]
struct ParsedHead {
    method: Method,
    version: Version,
    target: (u32, u32),
    fields: super::request::Fields,
}

#[derive(Debug, Clone, Default)]
struct Meta {
    head_only: bool,
    keep_alive: bool,
    range: Option<String>,
    http10: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Chunked,
    /// HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
    UntilClose,
    /// A HEAD request's stream: nothing is sent.
    Discard,
}

/// WebSocket routes of an HTTP worker: path, and who takes an upgraded connection.
pub(crate) type WsRoutes =
    std::rc::Rc<std::cell::RefCell<Vec<(String, std::rc::Rc<dyn crate::protocol::HandOver>)>>>;

/// HTTP/1.1 server protocol, one value per connection (`Worker::http`).
#[derive(Clone, Default)]
pub struct Http {
    pub(crate) ws_routes: WsRoutes,
    upgrade_to: Option<std::rc::Rc<dyn crate::protocol::HandOver>>,
    limits: HttpLimits,
    head: Option<Head>,
    parsed: Option<ParsedHead>,
    chunk_scan: usize,
    continue_sent: bool,
    current: Option<Meta>,
    stream: Option<Stream>,
    /// The process is retiring: the next response is the last on this connection.
    draining: bool,
    /// Peers whose `Forwarded` / `X-Forwarded-For` are believed (shared by the worker).
    pub(crate) trusted: std::rc::Rc<std::cell::RefCell<super::forwarded::TrustedProxies>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Http {
    /// With limits of your choice.
    pub fn with_limits(limits: HttpLimits) -> Http {
        Http {
            limits,
            ..Http::default()
        }
    }
}

/// Header slots kept on the stack for the usual limit (no allocation per request).
const STACK_HEADERS: usize = 128;

/// Slots are left uninitialised: httparse fills what it uses, and clearing 128 slots (4 KiB)
/// for every request cost more than parsing a small one.
fn header_slots<'s, 'h>(
    stack: &'s mut [MaybeUninit<httparse::Header<'h>>; STACK_HEADERS],
    heap: &'s mut Vec<MaybeUninit<httparse::Header<'h>>>,
    wanted: usize,
) -> &'s mut [MaybeUninit<httparse::Header<'h>>] {
    if wanted <= STACK_HEADERS {
        &mut stack[..wanted]
    } else {
        heap.resize_with(wanted, MaybeUninit::uninit);
        &mut heap[..]
    }
}

/// A complete error response that closes the connection.
pub(crate) fn error_reply(status: StatusCode) -> Bytes {
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    Bytes::from(format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        body
    ))
}

fn reject(status: StatusCode, why: impl Into<String>) -> Rejection {
    let why = why.into();
    let reply = error_reply(status);
    Rejection::with_reply(format!("HTTP {}: {why}", status.as_u16()), reply)
}

impl Http {
    fn parse_head(&mut self, buf: &[u8]) -> Result<Option<Head>, Rejection> {
        let mut stack = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let headers = header_slots(&mut stack, &mut heap, self.limits.max_headers);
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, headers) {
            Ok(httparse::Status::Partial) => {
                let line_end = memchr::memmem::find(buf, b"\r\n");
                if line_end.is_none() && buf.len() > self.limits.max_request_line {
                    return Err(reject(StatusCode::URI_TOO_LONG, "request line too long"));
                }
                if line_end.is_some_and(|e| e > self.limits.max_request_line) {
                    return Err(reject(StatusCode::URI_TOO_LONG, "request line too long"));
                }
                if buf.len() > self.limits.max_head {
                    return Err(reject(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head too large",
                    ));
                }
                return Ok(None);
            }
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(reject(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many headers",
                ))
            }
            Err(httparse::Error::Version) => {
                return Err(reject(
                    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "only HTTP/1.0 and 1.1",
                ))
            }
            Err(e) => {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    format!("malformed request: {e}"),
                ))
            }
        };
        if req
            .path
            .is_some_and(|p| p.len() > self.limits.max_request_line)
        {
            return Err(reject(StatusCode::URI_TOO_LONG, "request target too long"));
        }
        if len > self.limits.max_head {
            return Err(reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ));
        }
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut expect_continue = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| reject(StatusCode::BAD_REQUEST, "bad Content-Length"))?;
                if length.is_some_and(|l| l != v) {
                    return Err(reject(
                        StatusCode::BAD_REQUEST,
                        "conflicting Content-Length",
                    ));
                }
                length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if v.split(',').next_back().map(str::trim) != Some("chunked") {
                    return Err(reject(
                        StatusCode::NOT_IMPLEMENTED,
                        "unsupported Transfer-Encoding",
                    ));
                }
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("expect") {
                expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        let upgrade = req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"websocket")
        });
        if upgrade {
            let path = req.path.unwrap_or("/");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let route = self
                .ws_routes
                .borrow()
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, h)| h.clone());
            self.upgrade_to = route;
        }
        if chunked && length.is_some() {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "both Content-Length and chunked",
            ));
        }
        let framing = match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(0)) | (false, None) => Framing::None,
            (false, Some(n)) => Framing::Length(n),
        };
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| reject(StatusCode::BAD_REQUEST, "bad method"))?;
        let mut fields = super::request::Fields::default();
        for h in req.headers.iter() {
            fields.push(buf, h.name.as_bytes(), h.value);
        }
        let target = req.path.unwrap_or("/");
        let start = (target.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize) as u32;
        self.parsed = Some(ParsedHead {
            method,
            version: if req.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            target: (start, start + target.len() as u32),
            fields,
        });
        Ok(Some(Head {
            len,
            framing,
            expect_continue,
        }))
    }

    /// Scans a chunked body from `self.chunk_scan`; the whole message's length once complete.
    fn scan_chunks(&mut self, buf: &[u8], head: &Head) -> Result<Option<usize>, Rejection> {
        let mut p = self.chunk_scan.max(head.len);
        loop {
            let Some(eol) = memchr::memmem::find(&buf[p..], b"\r\n") else {
                if buf.len() - p > 1024 {
                    return Err(reject(StatusCode::BAD_REQUEST, "chunk size line too long"));
                }
                return Ok(None);
            };
            let line = &buf[p..p + eol];
            let size_text = line.split(|&b| b == b';').next().unwrap_or(line);
            let size_text = std::str::from_utf8(size_text)
                .map_err(|_| reject(StatusCode::BAD_REQUEST, "malformed chunk size"))?;
            let size = u64::from_str_radix(size_text.trim(), 16)
                .map_err(|_| reject(StatusCode::BAD_REQUEST, "malformed chunk size"))?;
            let data_start = p + eol + 2;
            if size == 0 {
                // Trailers end with an empty line.
                let rest = &buf[data_start..];
                if rest.starts_with(b"\r\n") {
                    return Ok(Some(data_start + 2));
                }
                return match memchr::memmem::find(rest, b"\r\n\r\n") {
                    Some(i) => Ok(Some(data_start + i + 4)),
                    None => Ok(None),
                };
            }
            let size = usize::try_from(size)
                .map_err(|_| reject(StatusCode::PAYLOAD_TOO_LARGE, "chunk too large"))?;
            let Some(next) = data_start.checked_add(size).and_then(|v| v.checked_add(2)) else {
                return Err(reject(StatusCode::PAYLOAD_TOO_LARGE, "chunk too large"));
            };
            if buf.len() < next {
                return Ok(None);
            }
            if &buf[next - 2..next] != b"\r\n" {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "chunk data not followed by CRLF",
                ));
            }
            p = next;
            self.chunk_scan = p;
        }
    }
}

fn dechunk(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len());
    let mut p = 0;
    while let Some(eol) = memchr::memmem::find(&body[p..], b"\r\n") {
        let line = &body[p..p + eol];
        let size_text = line.split(|&b| b == b';').next().unwrap_or(line);
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = p + eol + 2;
        out.extend_from_slice(&body[start..start + size]);
        p = start + size + 2;
    }
    out.freeze()
}

impl Protocol for Http {
    type Message = Request;
    type Output = HttpOutput;

    fn forwarded_client(
        &self,
        req: &Request,
        peer: &crate::protocol::PeerAddr,
    ) -> Option<std::net::IpAddr> {
        let crate::protocol::PeerAddr::Inet(peer) = peer else {
            return None;
        };
        let trusted = self.trusted.borrow();
        if trusted.is_empty() {
            // Not a reason to build the request's header map.
            return None;
        }
        super::forwarded::client(req.headers(), peer.ip(), &trusted)
    }

    fn input(&mut self, buf: &[u8], wire: &mut Wire<'_>) -> Result<Input, Rejection> {
        if self.current.is_some() {
            // Pipelined requests wait until the one before has its response, so that
            // responses leave in request order whatever the handlers do.
            return Ok(Input::NeedMore);
        }
        let head = match self.head {
            Some(h) => h,
            None => match self.parse_head(buf)? {
                Some(h) => {
                    if let Some(to) = self.upgrade_to.take() {
                        // The whole connection, this request included, goes to the route.
                        wire.hand_over(to);
                        return Ok(Input::NeedMore);
                    }
                    self.head = Some(h);
                    h
                }
                None => return Ok(Input::NeedMore),
            },
        };
        let complete = match head.framing {
            Framing::None => return Ok(Input::Packet(head.len)),
            Framing::Length(n) => {
                let total = head
                    .len
                    .checked_add(n)
                    .ok_or_else(|| reject(StatusCode::PAYLOAD_TOO_LARGE, "body too large"))?;
                if buf.len() >= total {
                    return Ok(Input::Packet(total));
                }
                Some(total)
            }
            Framing::Chunked => match self.scan_chunks(buf, &head)? {
                Some(total) => return Ok(Input::Packet(total)),
                None => None,
            },
        };
        if head.expect_continue && !self.continue_sent {
            self.continue_sent = true;
            wire.buf()
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        Ok(match complete {
            Some(total) => Input::Packet(total),
            None => Input::NeedMore,
        })
    }

    fn decode(
        &mut self,
        packet: BytesMut,
        _wire: &mut Wire<'_>,
    ) -> Result<Option<Request>, Rejection> {
        let head = self
            .head
            .take()
            .ok_or_else(|| reject(StatusCode::BAD_REQUEST, "no request head"))?;
        self.chunk_scan = 0;
        self.continue_sent = false;
        let parsed = self
            .parsed
            .take()
            .ok_or_else(|| reject(StatusCode::BAD_REQUEST, "no request head"))?;
        let packet = packet.freeze();
        let mut request = Request::from_head(
            parsed.method,
            parsed.version,
            packet.slice(..head.len),
            parsed.target,
            parsed.fields,
        );
        request.body = match head.framing {
            Framing::None => Bytes::new(),
            Framing::Length(_) => packet.slice(head.len..),
            Framing::Chunked => dechunk(&packet[head.len..]),
        };
        enum FormKind {
            UrlEncoded,
            Multipart(String),
        }
        let form_kind = request.header("content-type").and_then(|ct| {
            if ct
                .get(..33)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
            {
                Some(FormKind::UrlEncoded)
            } else {
                multipart::boundary(ct).map(FormKind::Multipart)
            }
        });
        match form_kind {
            Some(FormKind::UrlEncoded) => {
                request.form = form_urlencoded::parse(&request.body).into_owned().collect();
            }
            Some(FormKind::Multipart(boundary)) => {
                let (f, uploads) =
                    multipart::parse(&request.body, &boundary, self.limits.spill_over)
                        .map_err(|e| reject(StatusCode::BAD_REQUEST, e))?;
                request.form = f;
                request.files = uploads;
            }
            None => {}
        }
        self.current = Some(Meta {
            head_only: request.method == Method::HEAD,
            keep_alive: request.keep_alive(),
            range: request.header("range").map(str::to_string),
            http10: request.version == Version::HTTP_10,
        });
        Ok(Some(request))
    }

    fn encode(&mut self, msg: HttpOutput, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        match msg {
            HttpOutput::Response(r) => self.write_response(r, wire),
            HttpOutput::Chunk(data) => self.write_stream(&data, wire),
            HttpOutput::Event(e) => self.write_stream(&e.to_bytes(), wire),
            HttpOutput::End => {
                let stream = self.stream.take();
                match stream {
                    Some(Stream::Chunked) => wire.buf().extend_from_slice(b"0\r\n\r\n"),
                    Some(_) => {}
                    None => {
                        return Err(Rejection::new(
                            "End without a chunked response or event stream",
                        ))
                    }
                }
                self.finish(wire, stream == Some(Stream::UntilClose));
                Ok(())
            }
        }
    }

    fn oversize(&mut self, why: Rejection) -> Rejection {
        reject(StatusCode::PAYLOAD_TOO_LARGE, why.reason().to_string())
    }

    fn drain(&mut self) -> bool {
        self.draining = true;
        true
    }

    fn deadline(&self, buffered: usize) -> Option<crate::protocol::Deadline> {
        use crate::protocol::Deadline;
        if self.current.is_some() || self.stream.is_some() {
            // Answering: the client may well be silent.
            return None;
        }
        match (self.head, buffered) {
            (None, 0) => Some(Deadline::Idle(self.limits.keep_alive_timeout)),
            (None, _) => Some(Deadline::Incomplete(self.limits.head_timeout)),
            // A body on its way: it must keep a minimum rate.
            (Some(_), _) if self.limits.min_body_rate > 0 => Some(Deadline::MinRate {
                bytes_per_sec: self.limits.min_body_rate,
                grace: self.limits.body_rate_grace,
            }),
            (Some(_), _) => None,
        }
    }

    fn timed_out(&mut self) -> Rejection {
        let why = if self.head.is_some() {
            "request body arriving slower than the minimum rate"
        } else {
            "request head not completed in time"
        };
        reject(StatusCode::REQUEST_TIMEOUT, why)
    }

    fn export_state(&self) -> Option<Vec<u8>> {
        // Between requests only: nothing half-read, nothing owed, no upgrade under way.
        let between = self.head.is_none()
            && self.current.is_none()
            && self.stream.is_none()
            && self.upgrade_to.is_none();
        between.then(Vec::new)
    }

    fn import_state(&mut self, _state: &[u8]) -> Result<(), Rejection> {
        Ok(())
    }

    fn at_rest(&self) -> bool {
        // A request being read, or one whose handler has not answered yet, is owed a response;
        // an open stream (chunked, SSE) is long-lived: the farewell ends it with its last chunk.
        self.head.is_none() && self.current.is_none()
    }

    fn farewell(&mut self, _why: crate::protocol::Farewell, wire: &mut Wire<'_>) {
        if let Some(stream) = self.stream.take() {
            if stream == Stream::Chunked {
                wire.buf().extend_from_slice(b"0\r\n\r\n");
            }
            self.current = None;
        }
        wire.close_after_write();
    }
}

/// Encodes `r` as a complete response outside any request (a refused WebSocket handshake),
/// closing the connection after it.
pub(crate) fn encode_standalone(r: Response, dst: &mut BytesMut) {
    let mut http = Http {
        current: Some(Meta {
            keep_alive: false,
            ..Meta::default()
        }),
        ..Http::default()
    };
    let mut wire = Wire::new(dst);
    let _ = http.write_response(r, &mut wire);
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// Runs `f` with the `Date` header value, formatted once per second.
fn with_http_date(f: impl FnOnce(&str)) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(&d.1);
    })
}

impl Http {
    fn finish(&mut self, wire: &mut Wire<'_>, force_close: bool) {
        let keep = self.current.take().map(|m| m.keep_alive).unwrap_or(true);
        if !keep || force_close || self.draining {
            wire.close_after_write();
        }
    }

    fn write_stream(&mut self, data: &[u8], wire: &mut Wire<'_>) -> Result<(), Rejection> {
        match self.stream {
            Some(Stream::Chunked) if !data.is_empty() => {
                let out = wire.buf();
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Some(Stream::UntilClose) => wire.buf().extend_from_slice(data),
            Some(_) => {}
            None => {
                return Err(Rejection::new(
                    "chunk without a chunked response or event stream",
                ))
            }
        }
        Ok(())
    }

    fn write_response(&mut self, mut r: Response, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        if self.stream.is_some() {
            return Err(Rejection::new(
                "a new response while a stream is still open",
            ));
        }
        let meta = self.current.clone().unwrap_or(Meta {
            keep_alive: true,
            ..Meta::default()
        });
        let mut body: Option<Bytes> = None;
        let mut source: Option<FileSource> = None;
        let mut length: Option<u64> = None;
        let mut streaming = None;
        match std::mem::replace(&mut r.body, Body::Bytes(Bytes::new())) {
            Body::Bytes(b) => {
                length = Some(b.len() as u64);
                body = Some(b);
            }
            Body::File(path) => match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    let len = m.len();
                    if !r.has_header("content-type") {
                        let mime = mime_guess::from_path(&path).first_or_octet_stream();
                        r = r.content_type(mime.as_ref());
                    }
                    r = r.header("Accept-Ranges", "bytes");
                    let (start, end) = match parse_range(meta.range.as_deref(), len) {
                        Ok(None) => (0, len.saturating_sub(1)),
                        Ok(Some((s, e))) => {
                            r.status = StatusCode::PARTIAL_CONTENT;
                            r = r.header("Content-Range", &format!("bytes {s}-{e}/{len}"));
                            (s, e)
                        }
                        Err(()) => {
                            r.status = StatusCode::RANGE_NOT_SATISFIABLE;
                            r = r.header("Content-Range", &format!("bytes */{len}"));
                            (1, 0)
                        }
                    };
                    let n = if end >= start && len > 0 {
                        end - start + 1
                    } else {
                        0
                    };
                    length = Some(n);
                    if n > 0 && !meta.head_only {
                        source = Some(FileSource::open(&path, start, n).map_err(|e| {
                            Rejection::new(format!("cannot read {}: {e}", path.display()))
                        })?);
                    }
                }
                _ => {
                    r = Response::text("404 Not Found\n").status(404);
                    let b = Bytes::from_static(b"404 Not Found\n");
                    length = Some(b.len() as u64);
                    body = Some(b);
                }
            },
            Body::Chunked | Body::EventStream => {
                streaming = Some(if meta.head_only {
                    Stream::Discard
                } else if meta.http10 {
                    Stream::UntilClose
                } else {
                    Stream::Chunked
                });
            }
        }
        let status = r.status;
        let no_body = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let close_after =
            !meta.keep_alive || self.draining || streaming == Some(Stream::UntilClose);
        let out = wire.buf();
        out.reserve(256 + body.as_ref().map_or(0, |b| b.len()));
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut put = |k: &str, v: &str| {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        for (k, v) in &r.headers {
            if !k.eq_ignore_ascii_case("content-length")
                && !k.eq_ignore_ascii_case("transfer-encoding")
            {
                put(k, v);
            }
        }
        if !r.has_header("server") {
            put("Server", "oxwork");
        }
        with_http_date(|date| put("Date", date));
        match (streaming, no_body) {
            (Some(Stream::Chunked), _) => put("Transfer-Encoding", "chunked"),
            (Some(_), _) => {}
            (None, true) => {}
            (None, false) => put(
                "Content-Length",
                itoa::Buffer::new().format(length.unwrap_or(0)),
            ),
        }
        if close_after {
            put("Connection", "close");
        } else if meta.http10 {
            put("Connection", "keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        if !meta.head_only && !no_body {
            if let Some(b) = body {
                out.extend_from_slice(&b);
            }
            if let Some(src) = source {
                wire.stream_body(Box::new(src));
            }
        }
        match streaming {
            Some(s) => self.stream = Some(s),
            None => self.finish(wire, false),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::decode_all;

    fn parse_all(input: &[u8]) -> (Result<Vec<Request>, Rejection>, BytesMut) {
        let mut p = Http::default();
        // Each request's response is "sent" at once, so pipelined ones follow.
        let mut all = Vec::new();
        let mut buf = BytesMut::from(input);
        let mut sink = BytesMut::new();
        loop {
            let r =
                crate::protocol::next_message(&mut p, &mut buf, 1 << 20, &mut Wire::new(&mut sink));
            match r {
                Ok(Some(req)) => {
                    all.push(req);
                    p.encode(Response::text("ok").into(), &mut Wire::new(&mut sink))
                        .expect("encode");
                }
                Ok(None) => return (Ok(all), sink),
                Err(e) => return (Err(e), sink),
            }
        }
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let (reqs, out) = parse_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?x=1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n");
        let reqs = reqs.expect("valid");
        assert_eq!(
            reqs.iter()
                .map(|r| r.path().to_string())
                .collect::<Vec<_>>(),
            ["/a", "/b", "/c"]
        );
        assert_eq!(reqs[1].query("x").as_deref(), Some("1"));
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3);
        assert!(
            text.ends_with("Content-Length: 2\r\n\r\n"),
            "HEAD got a body: {text}"
        );
    }

    #[test]
    fn chunked_body_split_into_single_bytes() {
        let raw = b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        let mut p = Http::default();
        let (msgs, _) = decode_all(&mut p, raw.iter().map(|b| vec![*b]), 1 << 20);
        let msgs = msgs.expect("valid");
        assert_eq!(&msgs[0].body()[..], b"hello world");
    }

    #[test]
    fn malformed_chunk_size_is_a_400() {
        let (r, _) = parse_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        let e = r.expect_err("bad chunk");
        assert!(String::from_utf8_lossy(e.reply().expect("reply")).starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn limits_give_their_statuses() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
        let (r, _) = parse_all(long_line.as_bytes());
        assert!(
            String::from_utf8_lossy(r.expect_err("414").reply().expect("reply"))
                .starts_with("HTTP/1.1 414")
        );
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        let (r, _) = parse_all(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert!(
            String::from_utf8_lossy(r.expect_err("431").reply().expect("reply"))
                .starts_with("HTTP/1.1 431")
        );
        let (r, _) = parse_all(b"GET / HTTP/2.0\r\n\r\n");
        assert!(
            String::from_utf8_lossy(r.expect_err("505").reply().expect("reply"))
                .starts_with("HTTP/1.1 505")
        );
        let (r, _) = parse_all(b"\x16\x03\x01garbage\r\n\r\n");
        assert!(
            String::from_utf8_lossy(r.expect_err("400").reply().expect("reply"))
                .starts_with("HTTP/1.1 400")
        );
    }

    #[test]
    fn oversized_bodies_are_a_413_with_or_without_length() {
        let mut p = Http::default();
        let mut sink = BytesMut::new();
        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"[..]);
        let e = crate::protocol::next_message(&mut p, &mut buf, 1000, &mut Wire::new(&mut sink))
            .expect_err("413");
        assert!(String::from_utf8_lossy(e.reply().expect("reply")).starts_with("HTTP/1.1 413"));
        let mut p = Http::default();
        let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..50 {
            chunked.extend_from_slice(b"40\r\n");
            chunked.extend(std::iter::repeat_n(b'x', 64));
            chunked.extend_from_slice(b"\r\n");
        }
        let mut buf = BytesMut::from(&chunked[..]);
        let e = crate::protocol::next_message(&mut p, &mut buf, 1000, &mut Wire::new(&mut sink))
            .expect_err("413");
        assert!(String::from_utf8_lossy(e.reply().expect("reply")).starts_with("HTTP/1.1 413"));
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let mut p = Http::default();
        let mut sink = BytesMut::new();
        let mut buf = BytesMut::from(
            &b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"[..],
        );
        assert!(crate::protocol::next_message(
            &mut p,
            &mut buf,
            1 << 20,
            &mut Wire::new(&mut sink)
        )
        .expect("ok")
        .is_none());
        assert_eq!(&sink[..], b"HTTP/1.1 100 Continue\r\n\r\n");
        buf.extend_from_slice(b"abc");
        let req =
            crate::protocol::next_message(&mut p, &mut buf, 1 << 20, &mut Wire::new(&mut sink))
                .expect("ok")
                .expect("request");
        assert_eq!(&req.body()[..], b"abc");
    }

    #[test]
    fn connection_close_and_http10_close_after_the_response() {
        let (_, out) = parse_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(String::from_utf8_lossy(&out).contains("Connection: close"));
        let (_, out) = parse_all(b"GET / HTTP/1.0\r\n\r\n");
        assert!(String::from_utf8_lossy(&out).contains("Connection: close"));
    }

    #[test]
    fn a_draining_connection_answers_its_next_request_with_connection_close() {
        let mut p = Http::default();
        assert!(p.drain(), "HTTP ends its own connections at a boundary");
        let mut sink = BytesMut::new();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        let req =
            crate::protocol::next_message(&mut p, &mut buf, 1 << 20, &mut Wire::new(&mut sink))
                .expect("ok")
                .expect("request");
        assert_eq!(req.path(), "/");
        assert!(!p.at_rest(), "a request waiting for its response is owed");
        let mut out = BytesMut::new();
        let mut wire = Wire::new(&mut out);
        p.encode(HttpOutput::Response(Response::text("hi")), &mut wire)
            .expect("encode");
        assert!(wire.into_requests().close);
        assert!(String::from_utf8_lossy(&out).contains("Connection: close"));
        assert!(p.at_rest());
    }

    #[test]
    fn a_head_in_progress_has_the_head_timeout_and_an_idle_connection_the_keep_alive_one() {
        use crate::protocol::Deadline;
        let mut p = Http::default();
        let limits = HttpLimits::default();
        assert_eq!(
            p.deadline(0),
            Some(Deadline::Idle(limits.keep_alive_timeout))
        );
        assert_eq!(
            p.deadline(3),
            Some(Deadline::Incomplete(limits.head_timeout))
        );
        let mut sink = BytesMut::new();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        let _ = crate::protocol::next_message(&mut p, &mut buf, 1 << 20, &mut Wire::new(&mut sink));
        assert_eq!(
            p.deadline(0),
            None,
            "a request waiting for its response is not idle"
        );
        assert!(p.timed_out().to_string().contains("408"));
    }

    #[test]
    fn the_farewell_ends_an_open_chunked_stream() {
        let mut p = Http::default();
        let mut sink = BytesMut::new();
        let mut buf = BytesMut::from(&b"GET /events HTTP/1.1\r\n\r\n"[..]);
        let _ = crate::protocol::next_message(&mut p, &mut buf, 1 << 20, &mut Wire::new(&mut sink));
        let mut out = BytesMut::new();
        p.encode(
            HttpOutput::Response(Response::chunked()),
            &mut Wire::new(&mut out),
        )
        .expect("encode");
        assert!(!p.at_rest(), "an open stream is never closed as idle");
        let mut out = BytesMut::new();
        let mut wire = Wire::new(&mut out);
        p.farewell(crate::protocol::Farewell::Restarting, &mut wire);
        assert!(wire.into_requests().close);
        assert_eq!(&out[..], b"0\r\n\r\n");
    }

    #[test]
    fn form_fields_and_cookies() {
        let (r, _) = parse_all(b"POST /f HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: a=1; b=\"two\"\r\nContent-Length: 14\r\n\r\nname=x+y&n=%41");
        let r = r.expect("valid");
        assert_eq!(r[0].form("name"), Some("x y"));
        assert_eq!(r[0].form("n"), Some("A"));
        assert_eq!(r[0].cookie("b").as_deref(), Some("two"));
    }

    #[test]
    fn the_head_is_read_in_place_and_the_header_map_built_only_when_asked_for() {
        let mut raw =
            b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n".to_vec();
        for i in 0..20 {
            raw.extend_from_slice(format!("X-N{i}: v{i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"Cookie: a=1\r\nCookie: b=2\r\nX-Bin: caf\xc3\xa9\r\n\r\n");
        let (r, _) = parse_all(&raw);
        let r = r.expect("valid");
        let req = &r[0];
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.query_string(), "x=1&y=%20");
        assert_eq!(req.query("y").as_deref(), Some(" "));
        assert_eq!(req.header("host"), Some("h"));
        // Past the sixteen kept inline.
        assert_eq!(req.header("x-n19"), Some("v19"));
        assert_eq!(req.cookie("b").as_deref(), Some("2"));
        // Not text under HeaderValue::to_str's rule, as before.
        assert_eq!(req.header("x-bin"), None);
        assert!(req.keep_alive());
        assert!(!req.header_map_built(), "nothing asked for the map yet");
        let map = req.headers();
        assert_eq!(map.len(), 25);
        assert_eq!(map.get_all("cookie").iter().count(), 2);
        assert_eq!(map["x-bin"].as_bytes(), "café".as_bytes());
        // Once built, the answers come from the map, and agree.
        assert_eq!(req.header("x-n3"), Some("v3"));
        assert_eq!(req.cookies().len(), 2);
    }

    #[test]
    fn a_request_without_a_query_has_an_empty_one() {
        let (r, _) = parse_all(b"GET /plain HTTP/1.0\r\n\r\n");
        let req = &r.expect("valid")[0];
        assert_eq!(req.path(), "/plain");
        assert_eq!(req.query_string(), "");
        assert!(!req.keep_alive(), "HTTP/1.0 without keep-alive");
    }
}
