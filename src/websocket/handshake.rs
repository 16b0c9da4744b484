//! What the two ends add to the opening handshake: the server's answer (a subprotocol chosen
//! from the client's list, headers, cookies) and the client's request (headers, subprotocols
//! offered).

use crate::http::Response;
use std::borrow::Cow;

/// How a WebSocket handshake is accepted: what `on_websocket_connect` returns to let the
/// client in. `Ok(())` accepts with nothing added; `Ok(WsAccept::new().protocol("chat"))`
/// answers with the subprotocol `chat`, which must be one the client offered
/// ([`Request::websocket_protocols`](crate::http::Request::websocket_protocols)).
///
/// Headers and cookies are checked as [`Response::header`] checks them: one that cannot be
/// sent is logged and left out. The handshake's own headers (`Upgrade`, `Connection`,
/// `Sec-WebSocket-*`) are the codec's; setting them here is refused the same way.
#[derive(Debug, Default)]
pub struct WsAccept {
    pub(crate) protocol: Option<String>,
    extra: Option<Response>,
}

impl From<()> for WsAccept {
    fn from(_: ()) -> WsAccept {
        WsAccept::default()
    }
}

/// Headers only the codec writes.
fn reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "upgrade" | "connection" | "content-length")
        || name.starts_with("sec-websocket-")
}

impl WsAccept {
    /// Accepts with nothing added.
    pub fn new() -> WsAccept {
        WsAccept::default()
    }

    /// Answers with this subprotocol (`Sec-WebSocket-Protocol`); it must be one the client
    /// offered, or the answer leaves it out (and says so in the log): a client that is
    /// answered with a subprotocol it did not offer must fail the connection (RFC 6455 4.1).
    pub fn protocol(mut self, name: &str) -> WsAccept {
        self.protocol = Some(name.to_string());
        self
    }

    fn with(mut self, add: impl FnOnce(Response) -> Response) -> WsAccept {
        self.extra = Some(add(self.extra.take().unwrap_or_else(|| Response::new(101))));
        self
    }

    /// Adds a header to the `101 Switching Protocols` answer.
    pub fn header(self, name: &str, value: &str) -> WsAccept {
        if reserved(name) {
            tracing::error!("the WebSocket handshake writes {name} itself; the header is not sent");
            return self;
        }
        self.with(|r| r.header(name, value))
    }

    /// Sets a cookie (`Path=/; HttpOnly`), as [`Response::cookie`] does.
    pub fn cookie(self, name: &str, value: &str) -> WsAccept {
        self.with(|r| r.cookie(name, value))
    }

    /// Sets a cookie with attributes of your choice, as [`Response::cookie_with`] does.
    pub fn cookie_with(self, name: &str, value: &str, attributes: &str) -> WsAccept {
        self.with(|r| r.cookie_with(name, value, attributes))
    }

    /// The headers added, in order.
    pub(crate) fn headers(&self) -> &[(Cow<'static, str>, Cow<'static, str>)] {
        self.extra.as_ref().map_or(&[], |r| &r.headers[..])
    }
}

/// The values of every `name` header as one comma-separated list, trimmed, empties dropped.
pub(crate) fn header_list<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    name: &str,
) -> Vec<String> {
    headers
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// What an outbound connection adds to its handshake request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientRequest {
    pub(crate) protocols: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
    /// permessage-deflate offered with these settings.
    pub(crate) deflate: Option<super::DeflateSettings>,
}

/// Whether `name` is a token (RFC 7230), as a subprotocol name must be.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// Checks a header an outbound handshake may carry.
pub(crate) fn check_client_header(name: &str, value: &str) -> Result<(), String> {
    if reserved(name) || name.eq_ignore_ascii_case("host") {
        return Err(format!("the WebSocket handshake writes {name} itself"));
    }
    if !is_token(name) {
        return Err(format!("header name {name:?} is not an HTTP token"));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("header {name}: its value has a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_list_is_every_header_split_on_commas() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("Sec-WebSocket-Protocol", b"graphql-ws, chat"),
            ("Host", b"x"),
            ("sec-websocket-protocol", b" mqtt ,,"),
        ];
        assert_eq!(
            header_list(headers, "sec-websocket-protocol"),
            ["graphql-ws", "chat", "mqtt"]
        );
    }

    #[test]
    fn the_handshake_headers_cannot_be_overridden_and_bad_ones_are_left_out() {
        let accept = WsAccept::new()
            .header("Sec-WebSocket-Accept", "forged")
            .header("Upgrade", "h2c")
            .header("X-Served-By", "oxwork")
            .header("X-Bad", "a\r\nInjected: yes")
            .cookie("session", "abc");
        let names: Vec<&str> = accept.headers().iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, ["X-Served-By", "Set-Cookie"]);
        assert!(check_client_header("Sec-WebSocket-Key", "x").is_err());
        assert!(check_client_header("Authorization", "Bearer t").is_ok());
        assert!(check_client_header("Origin", "http://a\r\n").is_err());
    }
}
