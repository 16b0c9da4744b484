//! What a WebSocket worker adds to [`Worker`] and [`Connection`]: the handshake hook, plain
//! HTTP on the socket's port, handshake deadline, pings, and the handshake's request.

use std::rc::Rc;

use bytes::Bytes;

use super::{HandshakeInfo, WebSocket, WsOutput};
use crate::http::{Request, Response};
use crate::protocol::Protocol as _;
use crate::runtime::connection::Connection;
use crate::runtime::timer::IntoInterval;
use crate::runtime::worker::Worker;

impl Worker<WebSocket> {
    /// Runs on each opening handshake with the upgrade request (path, query, headers,
    /// cookies); returning `Err(response)` refuses the connection with that response
    /// (Workerman's `onWebSocketConnect`, for authentication).
    pub fn on_websocket_connect(
        &mut self,
        f: impl Fn(&Request) -> std::result::Result<(), Response> + 'static,
    ) -> &mut Self {
        *self.protocol().hook.borrow_mut() = Some(Rc::new(f));
        self
    }

    /// Answers plain HTTP requests that arrive on the WebSocket port (the page that opens the
    /// socket, say); each gets its response and its connection closes. Without it they get 400.
    pub fn on_http_request(&mut self, f: impl Fn(&Request) -> Response + 'static) -> &mut Self {
        *self.protocol().plain_http.borrow_mut() = Some(Rc::new(f));
        self
    }

    /// How long a client has to complete its opening handshake (default 10 s).
    pub fn handshake_timeout(&mut self, t: impl IntoInterval) -> &mut Self {
        self.protocol().handshake_timeout.set(t.into_interval());
        self
    }

    /// Sends a ping to every connection of the process this often, so that live but quiet
    /// clients answer (with a pong) and are not closed by `idle_timeout`.
    pub fn ping_interval(&mut self, every: impl IntoInterval) -> &mut Self {
        let every = every.into_interval();
        self.on_start_internal(move |w| {
            let w = w.clone();
            crate::runtime::timer::Timer::add(every, true, move || {
                for c in w.connections() {
                    if c.with_protocol(|ws| ws.handshake_done()) {
                        c.send(WsOutput::Ping(Bytes::new()));
                    }
                }
            });
        });
        self
    }
}

impl Connection<WebSocket> {
    /// The WebSocket handshake's request (path, query, headers), once the connection is open.
    pub fn handshake(&self) -> Option<HandshakeInfo> {
        self.with_protocol(|ws| ws.handshake().cloned())
    }
}
