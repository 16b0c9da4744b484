//! Responses: a builder with status, headers, cookies and a body that is bytes, a file (streamed,
//! with ranges), a chunked stream, or a stream of Server-Sent Events.

use std::fmt::Write as _;
use std::io::{Read, Seek};
use std::path::PathBuf;

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;

use crate::protocol::BodySource;

/// A header (or cookie) refused because writing it would break the response's framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    /// The header's name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "header {:?} refused: {}", self.name, self.reason)
    }
}

impl std::error::Error for HeaderError {}

fn check_header(name: &str, value: &str) -> Result<(), HeaderError> {
    let refuse = |reason| {
        Err(HeaderError {
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return refuse("its name is not an HTTP token");
    }
    // Tab is allowed; every other control character (CR, LF and NUL among them) is not.
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return refuse("its value has CR, LF, NUL or another control character");
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Bytes(Bytes),
    File(PathBuf),
    Chunked,
    EventStream,
}

/// An HTTP response under construction.
///
/// ```
/// use oxwork::http::Response;
/// let r = Response::text("Hello World").header("X-Powered-By", "oxwork").cookie("seen", "1");
/// ```
#[derive(Debug, Clone)]
pub struct Response {
    pub(crate) status: StatusCode,
    /// Names and values; the builder's own (a content type) are borrowed constants, so a
    /// plain response allocates only this list.
    pub(crate) headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    pub(crate) body: Body,
}

impl Response {
    /// An empty response with `status` (a number such as 404).
    pub fn new(status: u16) -> Response {
        Response {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: Vec::new(),
            body: Body::Bytes(Bytes::new()),
        }
    }

    /// `200 OK` with a `text/plain` body.
    pub fn text(body: impl Into<Bytes>) -> Response {
        Response::new(200)
            .known_header("Content-Type", "text/plain; charset=utf-8")
            .body(body)
    }

    /// `200 OK` with a `text/html` body.
    pub fn html(body: impl Into<Bytes>) -> Response {
        Response::new(200)
            .known_header("Content-Type", "text/html; charset=utf-8")
            .body(body)
    }

    /// `200 OK` with `value` as JSON.
    pub fn json<T: serde::Serialize>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(v) => Response::new(200)
                .known_header("Content-Type", "application/json")
                .body(v),
            Err(e) => Response::new(500).body(format!("cannot serialise the response: {e}")),
        }
    }

    /// The file at `path`, streamed from disk, with a `Content-Type` from its extension,
    /// `Accept-Ranges` and `Range` support; `404` if it cannot be opened.
    pub fn file(path: impl Into<PathBuf>) -> Response {
        Response {
            body: Body::File(path.into()),
            ..Response::new(200)
        }
    }

    /// Starts a chunked response: send `Chunk`s with `connection.send(HttpOutput::Chunk(..))`
    /// (or [`chunk`]), then [`HttpOutput::End`].
    pub fn chunked() -> Response {
        Response {
            body: Body::Chunked,
            ..Response::new(200)
        }
    }

    /// Starts a Server-Sent Events stream: send [`SseEvent`]s, end with [`HttpOutput::End`].
    pub fn event_stream() -> Response {
        Response {
            body: Body::EventStream,
            ..Response::new(200)
        }
        .content_type("text/event-stream")
        .header("Cache-Control", "no-cache")
    }

    /// Sets the status.
    pub fn status(mut self, status: u16) -> Response {
        self.status = StatusCode::from_u16(status).unwrap_or(self.status);
        self
    }

    /// Adds a header.
    ///
    /// A name that is not an HTTP token, or a value with CR, LF, NUL or another control
    /// character, is refused: it is never written (that is how a client that gets request
    /// data copied into a header would inject headers or a second response). The refusal is
    /// logged; [`try_header`](Self::try_header) returns it instead.
    pub fn header(self, name: &str, value: &str) -> Response {
        match check_header(name, value) {
            Ok(()) => self.push_header(name, value),
            Err(e) => {
                tracing::error!("{e}; the header is not sent");
                self
            }
        }
    }

    /// [`header`](Self::header), saying when the header is refused.
    pub fn try_header(self, name: &str, value: &str) -> Result<Response, HeaderError> {
        check_header(name, value)?;
        Ok(self.push_header(name, value))
    }

    fn push_header(mut self, name: &str, value: &str) -> Response {
        self.headers
            .push((Cow::Owned(name.to_string()), Cow::Owned(value.to_string())));
        self
    }

    /// A header of the builder's own, known to be valid: neither checked nor copied.
    fn known_header(mut self, name: &'static str, value: &'static str) -> Response {
        debug_assert!(check_header(name, value).is_ok());
        self.headers
            .push((Cow::Borrowed(name), Cow::Borrowed(value)));
        self
    }

    /// Sets `Content-Type`.
    pub fn content_type(self, value: &str) -> Response {
        self.header("Content-Type", value)
    }

    /// Sets a cookie (`Path=/; HttpOnly`). A name that is not a token or a value with
    /// characters a cookie cannot hold (`;`, `,`, spaces, quotes, backslash, controls) is
    /// refused like a bad header: logged, not sent.
    pub fn cookie(self, name: &str, value: &str) -> Response {
        self.cookie_with(name, value, "Path=/; HttpOnly")
    }

    /// Sets a cookie with attributes of your choice (`"Max-Age=60; Secure"`).
    pub fn cookie_with(self, name: &str, value: &str, attributes: &str) -> Response {
        match self.try_cookie_with(name, value, attributes) {
            Ok(r) => r,
            Err((r, e)) => {
                tracing::error!("{e}; the cookie is not sent");
                *r
            }
        }
    }

    /// [`cookie_with`](Self::cookie_with), saying when the cookie is refused (the response
    /// comes back unchanged with the error).
    #[allow(clippy::result_large_err)]
    pub fn try_cookie_with(
        self,
        name: &str,
        value: &str,
        attributes: &str,
    ) -> Result<Response, (Box<Response>, HeaderError)> {
        let cookie_octet =
            |b: u8| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
        let refuse = |reason: &'static str| HeaderError {
            name: format!("cookie {name:?}"),
            reason,
        };
        let checked = if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            Err(refuse("its name is not an HTTP token"))
        } else if !value.bytes().all(cookie_octet) {
            Err(refuse("its value has a character a cookie cannot hold"))
        } else {
            check_header("Set-Cookie", attributes)
        };
        match checked {
            Ok(()) => Ok(self.push_header("Set-Cookie", &format!("{name}={value}; {attributes}"))),
            Err(e) => Err((Box::new(self), e)),
        }
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = Body::Bytes(body.into());
        self
    }

    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    /// `event:` (the type), if any.
    pub event: Option<String>,
    /// `data:` lines.
    pub data: String,
    /// `id:`, if any.
    pub id: Option<String>,
    /// `retry:` in milliseconds, if any.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// An event carrying `data`.
    pub fn data(data: impl Into<String>) -> SseEvent {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }

    /// Sets the event type.
    pub fn event(mut self, name: &str) -> SseEvent {
        self.event = Some(name.to_string());
        self
    }

    /// Sets the id.
    pub fn id(mut self, id: &str) -> SseEvent {
        self.id = Some(id.to_string());
        self
    }

    pub(crate) fn to_bytes(&self) -> Bytes {
        let mut s = String::new();
        if let Some(e) = &self.event {
            let _ = writeln!(s, "event: {e}");
        }
        if let Some(id) = &self.id {
            let _ = writeln!(s, "id: {id}");
        }
        if let Some(r) = self.retry {
            let _ = writeln!(s, "retry: {r}");
        }
        for line in self.data.split('\n') {
            let _ = writeln!(s, "data: {line}");
        }
        s.push('\n');
        Bytes::from(s)
    }
}

/// What an HTTP connection's `send` takes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HttpOutput {
    /// A response (its body may start a stream).
    Response(Response),
    /// A piece of a chunked response.
    Chunk(Bytes),
    /// A Server-Sent Event.
    Event(SseEvent),
    /// Ends a chunked response or event stream.
    End,
}

impl From<Response> for HttpOutput {
    fn from(r: Response) -> Self {
        HttpOutput::Response(r)
    }
}

impl From<SseEvent> for HttpOutput {
    fn from(e: SseEvent) -> Self {
        HttpOutput::Event(e)
    }
}

impl From<&str> for HttpOutput {
    fn from(s: &str) -> Self {
        HttpOutput::Response(Response::text(Bytes::copy_from_slice(s.as_bytes())))
    }
}

impl From<String> for HttpOutput {
    fn from(s: String) -> Self {
        HttpOutput::Response(Response::text(s))
    }
}

/// A chunk of a chunked response.
pub fn chunk(data: impl Into<Bytes>) -> HttpOutput {
    HttpOutput::Chunk(data.into())
}

/// Streams `len` bytes of a file from its current position.
pub(crate) struct FileSource {
    pub(crate) file: std::fs::File,
    pub(crate) remaining: u64,
}

impl FileSource {
    pub(crate) fn open(
        path: &std::path::Path,
        start: u64,
        len: u64,
    ) -> std::io::Result<FileSource> {
        let mut file = std::fs::File::open(path)?;
        file.seek(std::io::SeekFrom::Start(start))?;
        Ok(FileSource {
            file,
            remaining: len,
        })
    }
}

impl BodySource for FileSource {
    fn fill(&mut self, dst: &mut BytesMut, max: usize) -> std::io::Result<bool> {
        let want = (self.remaining.min(max as u64)) as usize;
        if want == 0 {
            return Ok(true);
        }
        dst.reserve(want);
        let start = dst.len();
        dst.put_bytes(0, want);
        let n = self.file.read(&mut dst[start..start + want])?;
        dst.truncate(start + n);
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        self.remaining -= n as u64;
        Ok(self.remaining == 0)
    }
}

/// A single `Range: bytes=..` header against a file of `len` bytes: `Ok(None)` for the whole
/// file, `Ok(Some((start, end_inclusive)))`, or `Err(())` for an unsatisfiable range (416).
pub(crate) fn parse_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answer with the whole file, as a server may.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", "") => return Err(()),
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.saturating_sub(1)),
        (s, e) => (
            s.parse().map_err(|_| ())?,
            e.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1)),
        ),
    };
    if len == 0 || start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_with_cr_lf_or_nul_is_refused_and_never_written() {
        for value in ["a\r\nSet-Cookie: evil=1", "a\nb", "a\0b"] {
            let r = Response::text("x").try_header("Location", value);
            assert!(r.is_err(), "{value:?} accepted");
            let r = Response::text("x").header("Location", value);
            assert!(!r.has_header("location"), "{value:?} kept");
        }
        assert!(Response::text("x").try_header("Bad Name", "v").is_err());
        assert!(Response::text("x")
            .try_header("X-Ok", "tab\tis fine")
            .is_ok());
    }

    #[test]
    fn a_cookie_that_would_inject_attributes_is_refused() {
        let r = Response::text("x").cookie("id", "1; Domain=evil.example");
        assert!(!r.has_header("set-cookie"));
        let r = Response::text("x").cookie("id", "abc123");
        assert!(r.has_header("set-cookie"));
        assert!(Response::text("x")
            .try_cookie_with("a b", "1", "Path=/")
            .is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=x-y"), 100), Err(()));
    }

    #[test]
    fn sse_event_format() {
        let e = SseEvent::data("a\nb").event("tick").id("7");
        assert_eq!(
            &e.to_bytes()[..],
            b"event: tick\nid: 7\ndata: a\ndata: b\n\n"
        );
    }
}
