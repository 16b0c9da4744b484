//! What WebSocket adds to [`Worker`] and [`Connection`]: its constructors, routes on an HTTP
//! worker's port, the handshake hook, plain HTTP on the socket's port, handshake deadline,
//! pings, and the handshake's request.

use std::rc::Rc;

use super::handshake::{check_client_header, is_token};
use super::{DeflateSettings, HandshakeInfo, WebSocket, WsAccept};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Http, Request, Response};
use crate::protocol::Dynamic;
use crate::runtime::connection::Connection;
use crate::runtime::outbound::AsyncConnection;
use crate::runtime::timer::IntoInterval;
use crate::runtime::worker::{Worker, WorkerShared};

impl Worker<Dynamic> {
    /// A WebSocket worker on `url` (`websocket://host:port`): `on_message` receives whole
    /// [`WsMessage`](crate::websocket::WsMessage)s; `send` takes text, bytes or
    /// [`WsOutput`](crate::websocket::WsOutput).
    pub fn websocket(url: &str) -> Result<Worker<WebSocket>> {
        let parsed = crate::runtime::url::SocketUrl::parse(url)?;
        if !matches!(parsed.protocol.as_str(), "websocket" | "ws" | "wss") {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::InvalidUrl,
                format!("{url}: Worker::websocket takes a websocket:// address"),
            ));
        }
        Ok(Worker::declare(Some(parsed), WebSocket::default()))
    }

    /// WebSocket callbacks for paths of an HTTP worker: declare the callbacks on it, then
    /// attach it with [`Worker::websocket_path`]. It has no port and no processes of its own;
    /// its connections live in the HTTP worker's processes.
    pub fn websocket_route() -> Worker<WebSocket> {
        let w = Worker::unregistered(None, WebSocket::default());
        let mut w = w;
        w.config_mut().name = "websocket-route".into();
        w
    }
}

impl Worker<Http> {
    /// Accepts WebSocket upgrades on `path` and serves them with `route`'s callbacks (made
    /// with [`Worker::websocket_route`]), on this worker's own port: HTTP and WebSocket on one
    /// port. Other requests, and upgrades on other paths, stay HTTP.
    pub fn websocket_path(&mut self, path: &str, route: &Worker<WebSocket>) -> &mut Self {
        let upgrader: Rc<dyn crate::protocol::HandOver> = Rc::new(RouteUpgrade {
            route: route.shared(),
        });
        self.protocol()
            .ws_routes
            .borrow_mut()
            .push((path.to_string(), upgrader));
        let route = route.shared();
        self.on_start_internal(move |w| route.start_as_route(w.id()));
        self
    }
}

/// Takes an upgraded HTTP connection into a WebSocket route.
struct RouteUpgrade {
    route: Rc<WorkerShared<WebSocket>>,
}

impl crate::protocol::HandOver for RouteUpgrade {
    fn take_over(
        &self,
        stream: Box<dyn crate::protocol::Stream>,
        unread: bytes::BytesMut,
        peer: crate::runtime::connection::PeerAddr,
        local: Option<std::net::SocketAddr>,
    ) {
        self.route.adopt(stream, unread, peer, local);
    }
}

impl Worker<WebSocket> {
    /// Runs on each opening handshake with the upgrade request (path, query, headers,
    /// cookies, [`Request::websocket_protocols`]); returning `Err(response)` refuses the
    /// connection with that response (Workerman's `onWebSocketConnect`, for authentication).
    /// `Ok(())` accepts it; `Ok(WsAccept::new().protocol("chat").cookie(...))` accepts it with
    /// a subprotocol chosen from the client's list and headers added to the answer.
    pub fn on_websocket_connect<A: Into<WsAccept>>(
        &mut self,
        f: impl Fn(&Request) -> std::result::Result<A, Response> + 'static,
    ) -> &mut Self {
        *self.protocol().hook.borrow_mut() = Some(Rc::new(move |req| f(req).map(Into::into)));
        self
    }

    /// Answers plain HTTP requests that arrive on the WebSocket port (the page that opens the
    /// socket, say); each gets its response and its connection closes. Without it they get 400.
    pub fn on_http_request(&mut self, f: impl Fn(&Request) -> Response + 'static) -> &mut Self {
        *self.protocol().plain_http.borrow_mut() = Some(Rc::new(f));
        self
    }

    /// Accepts permessage-deflate (RFC 7692) when a client offers it (browsers, Python
    /// `websockets`, Node's `ws` all do): messages of at least `settings.threshold` bytes go
    /// compressed, compressed ones from the client are inflated, never past
    /// `max_package_size` (1009 closes a connection whose message would). Off by default.
    pub fn deflate(&mut self, settings: DeflateSettings) -> &mut Self {
        self.protocol().deflate_settings.set(Some(settings));
        self
    }

    /// How long a client has to complete its opening handshake (default 10 s).
    pub fn handshake_timeout(&mut self, t: impl IntoInterval) -> &mut Self {
        self.protocol().handshake_timeout.set(t.into_interval());
        self
    }

    /// Pings a connection that has been silent this long (default 30 s; zero: never), so that
    /// a peer that has gone without a word (a pulled cable, a sleeping laptop) is found out and
    /// a quiet connection stays open through proxies that close idle ones. Any frame from the
    /// peer counts as an answer.
    pub fn ping_interval(&mut self, every: impl IntoInterval) -> &mut Self {
        let every = every.into_interval();
        let cell = &self.protocol().keepalive;
        let mut keepalive = cell.get();
        keepalive.ping_after = (!every.is_zero()).then_some(every);
        cell.set(keepalive);
        self
    }

    /// How long a pinged connection may stay silent before it is closed as gone (default
    /// 10 s). Every byte from the peer restarts the wait.
    pub fn pong_timeout(&mut self, t: impl IntoInterval) -> &mut Self {
        let cell = &self.protocol().keepalive;
        let mut keepalive = cell.get();
        keepalive.pong_timeout = t.into_interval();
        cell.set(keepalive);
        self
    }
}

impl Connection<WebSocket> {
    /// The WebSocket handshake's request (path, query, headers), once the connection is open;
    /// on an outbound connection, the server's answer.
    pub fn handshake(&self) -> Option<HandshakeInfo> {
        self.with_protocol(|ws| ws.handshake().cloned())
    }

    /// The subprotocol the handshake agreed on, if any.
    pub fn subprotocol(&self) -> Option<String> {
        self.with_protocol(|ws| ws.handshake().and_then(|h| h.protocol.clone()))
    }
}

impl AsyncConnection<WebSocket> {
    /// Sends this header with every handshake of this connection (an `Authorization`, an
    /// `Origin`, a cookie). The handshake's own headers (`Host`, `Upgrade`, `Connection`,
    /// `Sec-WebSocket-*`) and values with control characters are refused.
    pub fn header(&self, name: &str, value: &str) -> Result<()> {
        check_client_header(name, value).map_err(|e| Error::new(ErrorKind::Config, e))?;
        if let Some(request) = self.protocol_template().client_request() {
            request
                .borrow_mut()
                .headers
                .push((name.to_string(), value.to_string()));
        }
        Ok(())
    }

    /// Offers permessage-deflate (RFC 7692) with these settings; the server's answer decides
    /// (a server that declines gets plain messages).
    pub fn deflate(&self, settings: DeflateSettings) {
        if let Some(request) = self.protocol_template().client_request() {
            request.borrow_mut().deflate = Some(settings);
        }
    }

    /// Offers these subprotocols, in order of preference (`Sec-WebSocket-Protocol`); the
    /// server's choice is [`Connection::subprotocol`]. A server that answers with one not
    /// offered fails the handshake.
    pub fn subprotocols(&self, names: &[&str]) -> Result<()> {
        if let Some(bad) = names.iter().find(|n| !is_token(n)) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("subprotocol {bad:?} is not an HTTP token"),
            ));
        }
        if let Some(request) = self.protocol_template().client_request() {
            request.borrow_mut().protocols = names.iter().map(|n| n.to_string()).collect();
        }
        Ok(())
    }

    /// A WebSocket connection to `url` (`ws://host:port/path` or `wss://...`), with the same
    /// callbacks as any connection; `send` takes text, bytes or `WsOutput`. Server certificates
    /// are checked against the usual public roots (`tls_root_pem` replaces them).
    pub fn websocket(url: &str) -> Result<AsyncConnection<WebSocket>> {
        let bad =
            |why: &str| Error::new(ErrorKind::InvalidUrl, format!("invalid URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected ws:// or wss://"))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            _ => return Err(bad("expected ws:// or wss://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = if secure { 443 } else { 80 };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        };
        let target = crate::runtime::url::SocketUrl::parse(&format!("tcp://{with_port}"))?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_matches(['[', ']']);
        let conn = AsyncConnection::with_protocol_url(target, WebSocket::client(authority, path))?;
        if secure {
            conn.tls_with_public_roots(host)?;
        }
        Ok(conn)
    }
}
