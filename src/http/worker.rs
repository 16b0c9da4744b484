//! What an HTTP worker adds to [`Worker`]: WebSocket routes on its own port.

use std::rc::Rc;

use super::Http;
use crate::runtime::worker::{Worker, WorkerShared};
use crate::websocket::WebSocket;

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
