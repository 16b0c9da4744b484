//! What HTTP adds to [`Worker`]: its constructor.

use super::Http;
use crate::error::Result;
use crate::protocol::Dynamic;
use crate::runtime::worker::Worker;

impl Worker<Dynamic> {
    /// An HTTP/1.1 worker on `url` (`http://host:port`): `on_message` receives
    /// [`http::Request`](crate::http::Request)s and `send` takes
    /// [`http::Response`](crate::http::Response)s.
    pub fn http(url: &str) -> Result<Worker<Http>> {
        let parsed = crate::runtime::url::SocketUrl::parse(url)?;
        if !matches!(parsed.protocol.as_str(), "http" | "https") {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::InvalidUrl,
                format!("{url}: Worker::http takes an http:// address"),
            ));
        }
        Ok(Worker::declare(Some(parsed), Http::default()))
    }
}
