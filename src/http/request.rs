//! An HTTP request as `on_message` receives it.

use std::borrow::Cow;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, Method, Version};

/// A file from a `multipart/form-data` upload. Small files stay in memory; files over the
/// worker's spill threshold are written to a temporary file that is removed when the request
/// is dropped (after `on_message` returns, unless the handler keeps the request).
#[derive(Debug)]
pub struct UploadedFile {
    /// The form field's name.
    pub field: String,
    /// The file name the client gave, if any.
    pub filename: Option<String>,
    /// The part's `Content-Type`, if given.
    pub content_type: Option<String>,
    /// Size in bytes.
    pub size: usize,
    storage: Storage,
}

#[derive(Debug)]
enum Storage {
    Memory(Bytes),
    Disk(tempfile::TempPath),
}

impl UploadedFile {
    pub(crate) fn new(
        field: String,
        filename: Option<String>,
        content_type: Option<String>,
        data: Bytes,
        spill_over: usize,
    ) -> std::io::Result<UploadedFile> {
        let size = data.len();
        let storage = if size > spill_over {
            let mut f = tempfile::NamedTempFile::new()?;
            std::io::Write::write_all(&mut f, &data)?;
            Storage::Disk(f.into_temp_path())
        } else {
            Storage::Memory(data)
        };
        Ok(UploadedFile {
            field,
            filename,
            content_type,
            size,
            storage,
        })
    }

    /// The temporary file holding a large upload, if it was spilled to disk.
    pub fn temp_path(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Disk(p) => Some(p),
            Storage::Memory(_) => None,
        }
    }

    /// The file's bytes (read from disk for a spilled upload).
    pub fn bytes(&self) -> std::io::Result<Bytes> {
        match &self.storage {
            Storage::Memory(b) => Ok(b.clone()),
            Storage::Disk(p) => std::fs::read(p).map(Bytes::from),
        }
    }
}

/// Where a header's name and value lie in the request's head.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// The headers of a request as parsed: spans of its head, the first 16 without an allocation.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fields {
    first: [Field; 16],
    len: usize,
    more: Vec<Field>,
}

impl Fields {
    /// A header whose name and value are `name` and `value`, slices of `head`.
    pub(crate) fn push(&mut self, head: &[u8], name: &[u8], value: &[u8]) {
        let span = |s: &[u8]| {
            let start = (s.as_ptr() as usize).saturating_sub(head.as_ptr() as usize) as u32;
            (start, start + s.len() as u32)
        };
        let f = Field {
            name: span(name),
            value: span(value),
        };
        match self.first.get_mut(self.len) {
            Some(slot) => *slot = f,
            None => self.more.push(f),
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Field> {
        self.first[..self.len.min(16)].iter().chain(&self.more)
    }

    /// The values of every header `name` (case-insensitive), as bytes of `head`.
    pub(crate) fn values<'h: 'n, 'n>(
        &'h self,
        head: &'h [u8],
        name: &'n str,
    ) -> impl Iterator<Item = &'h [u8]> + 'n {
        self.iter()
            .filter(move |f| {
                head.get(f.name.0 as usize..f.name.1 as usize)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            })
            .filter_map(move |f| head.get(f.value.0 as usize..f.value.1 as usize))
    }
}

/// A header value as text, under `HeaderValue::to_str`'s rule (visible ASCII, spaces, tabs).
fn value_text(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// An HTTP/1.1 request: method, path, query, headers, cookies, body, form fields and uploads.
///
/// The head is kept as it arrived and read in place: `path`, `query_string`, `header` and
/// `cookie` borrow from it, and the `http::HeaderMap` of [`headers`](Self::headers) is built
/// the first time it is asked for, so a handler that never asks pays nothing for it.
#[derive(Debug)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) version: Version,
    /// The request line and headers as received (for a request made here, the target alone).
    head: Bytes,
    /// The path's span in `head`, and the query's (empty when there is none).
    path: (u32, u32),
    query: (u32, u32),
    fields: Fields,
    headers: std::cell::OnceCell<HeaderMap>,
    pub(crate) body: Bytes,
    pub(crate) form: Vec<(String, String)>,
    pub(crate) files: Vec<UploadedFile>,
}

impl Request {
    /// A request read off the wire: `head` as received, the target's span in it, and its
    /// headers' spans.
    pub(crate) fn from_head(
        method: Method,
        version: Version,
        head: Bytes,
        target: (u32, u32),
        fields: Fields,
    ) -> Request {
        let (path, query) = split_target(&head, target);
        Request {
            method,
            version,
            head,
            path,
            query,
            fields,
            headers: std::cell::OnceCell::new(),
            body: Bytes::new(),
            form: Vec::new(),
            files: Vec::new(),
        }
    }

    fn span(&self, (start, end): (u32, u32)) -> &str {
        self.head
            .get(start as usize..end as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The values of header `name`, as bytes.
    pub(crate) fn header_values<'a: 'n, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + 'n {
        let (map, fields) = match self.headers.get() {
            Some(map) => (Some(map.get_all(name).into_iter()), None),
            None => (None, Some(self.fields.values(&self.head, name))),
        };
        map.into_iter()
            .flatten()
            .map(|v| v.as_bytes())
            .chain(fields.into_iter().flatten())
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, without the query string (not percent-decoded).
    pub fn path(&self) -> &str {
        self.span(self.path)
    }

    /// The raw query string (after `?`), empty if none.
    pub fn query_string(&self) -> &str {
        self.span(self.query)
    }

    /// The query parameters, decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query_string().as_bytes())
            .into_owned()
            .collect()
    }

    /// The first query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query_string().as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// All headers (names are case-insensitive), as an `http::HeaderMap` built on first use.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.get_or_init(|| {
            let mut map = HeaderMap::with_capacity(self.fields.len);
            for f in self.fields.iter() {
                let name = self.head.get(f.name.0 as usize..f.name.1 as usize);
                let value = self.head.slice(f.value.0 as usize..f.value.1 as usize);
                // The parser let only tokens and valid values through, so none is skipped.
                if let (Some(Ok(name)), Ok(value)) = (
                    name.map(http::HeaderName::from_bytes),
                    http::HeaderValue::from_maybe_shared(value),
                ) {
                    map.append(name, value);
                }
            }
            map
        })
    }

    /// Whether the header map was built (tests: a handler that never asks pays nothing).
    #[cfg(test)]
    pub(crate) fn header_map_built(&self) -> bool {
        self.headers.get().is_some()
    }

    /// The first value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next().and_then(value_text)
    }

    /// The cookies sent, in order.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.header_values("cookie")
            .filter_map(value_text)
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            })
            .collect()
    }

    /// The cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The raw body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body as text (lossy).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body decoded from JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// Form fields from an `application/x-www-form-urlencoded` or `multipart/form-data` body.
    pub fn form_pairs(&self) -> &[(String, String)] {
        &self.form
    }

    /// The form field `name`.
    pub fn form(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Files uploaded with `multipart/form-data`.
    pub fn files(&self) -> &[UploadedFile] {
        &self.files
    }

    /// The uploaded file of field `name`.
    pub fn file(&self, name: &str) -> Option<&UploadedFile> {
        self.files.iter().find(|f| f.field == name)
    }

    /// Whether the connection stays open after this request's response.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, self.header_values("connection"))
    }

    /// The subprotocols a WebSocket client offers (`Sec-WebSocket-Protocol`), in its order of
    /// preference; empty when it offers none.
    pub fn websocket_protocols(&self) -> Vec<String> {
        self.header_values("sec-websocket-protocol")
            .filter_map(value_text)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Whether this is a WebSocket upgrade request.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    }
}

/// Whether a connection stays open after a request of `version` with these `Connection`
/// header values.
pub(crate) fn keep_alive<'a>(version: Version, connection: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut tokens = connection
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii());
    if version == Version::HTTP_10 {
        tokens.any(|t| t.eq_ignore_ascii_case(b"keep-alive"))
    } else {
        !tokens.any(|t| t.eq_ignore_ascii_case(b"close"))
    }
}

/// The path's and the query's spans in `head`, given the request target's.
fn split_target(head: &[u8], (start, end): (u32, u32)) -> ((u32, u32), (u32, u32)) {
    let target = head.get(start as usize..end as usize).unwrap_or(&[]);
    match target.iter().position(|&b| b == b'?') {
        Some(q) => {
            let q = start + q as u32;
            ((start, q), (q + 1, end))
        }
        None => ((start, end), (end, end)),
    }
}

/// A GET request made of a path, query and header pairs (a WebSocket upgrade, for its
/// handshake hook); headers HTTP cannot carry are left out.
pub(crate) fn get_request(path: &str, query: &str, pairs: &[(String, String)]) -> Request {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let end = target.len() as u32;
    let request = Request::from_head(
        Method::GET,
        Version::HTTP_11,
        Bytes::from(target),
        (0, end),
        Fields::default(),
    );
    let _ = request.headers.set(headers);
    request
}
