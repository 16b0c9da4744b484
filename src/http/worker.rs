//! What HTTP adds to [`Worker`]: its constructor, and the proxies it trusts.

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

impl Worker<Http> {
    /// Believes `Forwarded` (RFC 7239) and `X-Forwarded-For` from these peers (addresses or
    /// networks: `["127.0.0.1", "10.0.0.0/8"]`): for a request one of them forwarded, the
    /// client is the rightmost address of the chain that is not itself a trusted proxy, and
    /// the connection's [`remote_ip`](crate::Connection::remote_ip) gives it (in
    /// `connections` too, as `CLIENT via PROXY`). From any other peer the headers are
    /// ignored, so a client cannot name itself. An entry that is not an address or network is
    /// an error.
    pub fn trusted_proxies(&mut self, list: &[&str]) -> Result<&mut Self> {
        let parsed = super::forwarded::TrustedProxies::parse(list)
            .map_err(|e| crate::error::Error::new(crate::error::ErrorKind::Config, e))?;
        *self.protocol().trusted.borrow_mut() = parsed;
        Ok(self)
    }
}
