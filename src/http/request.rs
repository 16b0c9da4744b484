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

/// An HTTP/1.1 request: method, path, query, headers, cookies, body, form fields and uploads.
#[derive(Debug)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) form: Vec<(String, String)>,
    pub(crate) files: Vec<UploadedFile>,
}

impl Request {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, without the query string (not percent-decoded).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string (after `?`), empty if none.
    pub fn query_string(&self) -> &str {
        &self.query
    }

    /// The query parameters, decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The first query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// All headers (names are case-insensitive).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The first value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The cookies sent, in order.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
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
        keep_alive(self.version, &self.headers)
    }

    /// The subprotocols a WebSocket client offers (`Sec-WebSocket-Protocol`), in its order of
    /// preference; empty when it offers none.
    pub fn websocket_protocols(&self) -> Vec<String> {
        self.headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
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

pub(crate) fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let conn = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    if version == Version::HTTP_10 {
        conn.iter().any(|t| t == "keep-alive")
    } else {
        !conn.iter().any(|t| t == "close")
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
    Request {
        method: Method::GET,
        path: path.to_string(),
        query: query.to_string(),
        version: Version::HTTP_11,
        headers,
        body: Bytes::new(),
        form: Vec::new(),
        files: Vec::new(),
    }
}
