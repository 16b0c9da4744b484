//! Outbound WebSocket connections: a text server whose every process holds one WebSocket
//! connection to a chat server (`ws_chat`). Lines from text clients go up the socket; every
//! message coming down goes to the process's text clients. It reconnects by itself.
//!
//! Run `ws_chat`, then `WS_BRIDGE_UPSTREAM=ws://127.0.0.1:8081/ws cargo run --example ws_bridge
//! -- start --run-dir /tmp/bridge` and talk to 127.0.0.1:8890 with `nc`.
//! `WS_BRIDGE_LISTEN` moves the text listener; `WS_BRIDGE_ROOT` names a PEM file of trusted
//! certificates for a `wss://` upstream. The bridge offers the subprotocol `chat` and
//! permessage-deflate and sends an `Origin` header; the line `/subprotocol` asks which
//! subprotocol the upstream chose, `/extensions` which extensions it answered with.

use std::cell::RefCell;
use std::rc::Rc;

use oxwork::{run_all, AsyncConnection, Worker};

fn main() -> oxwork::Result<()> {
    let listen =
        std::env::var("WS_BRIDGE_LISTEN").unwrap_or_else(|_| "text://127.0.0.1:8890".into());
    let upstream_url =
        std::env::var("WS_BRIDGE_UPSTREAM").unwrap_or_else(|_| "ws://127.0.0.1:8081/ws".into());
    let mut w = Worker::new(&listen)?;
    w.name("ws_bridge");

    let upstream: Rc<RefCell<Option<AsyncConnection<oxwork::websocket::WebSocket>>>> =
        Rc::default();
    let up = upstream.clone();
    w.on_worker_start(move |w| {
        let conn = match AsyncConnection::websocket(&upstream_url) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bad upstream: {e}");
                return;
            }
        };
        // What a browser would send, and the protocol the chat speaks.
        let offered = conn
            .header("Origin", "http://ws-bridge.local")
            .and_then(|()| conn.subprotocols(&["chat"]));
        if let Err(e) = offered {
            eprintln!("bad handshake settings: {e}");
        }
        conn.deflate(oxwork::websocket::DeflateSettings::default());
        if let Ok(root) = std::env::var("WS_BRIDGE_ROOT") {
            if let Err(e) = conn.tls_root_pem(root) {
                eprintln!("bad root certificates: {e}");
            }
        }
        let clients = w.clone();
        conn.on_message(move |_, msg| {
            for c in clients.connections() {
                c.send(msg.to_string());
            }
        });
        let again = conn.clone();
        conn.on_close(move |_| again.reconnect(0.5));
        conn.on_error(|_, e| eprintln!("upstream: {e}"));
        conn.connect();
        *up.borrow_mut() = Some(conn);
    });
    w.on_message(move |c, line| {
        if line.as_str().map(str::trim) == Some("/subprotocol") {
            let chosen = upstream
                .borrow()
                .as_ref()
                .and_then(|u| u.connection())
                .and_then(|up| up.subprotocol());
            c.send(format!(
                "subprotocol: {}",
                chosen.as_deref().unwrap_or("none")
            ));
            return;
        }
        if line.as_str().map(str::trim) == Some("/extensions") {
            let answered = upstream
                .borrow()
                .as_ref()
                .and_then(|u| u.connection())
                .and_then(|up| up.handshake())
                .and_then(|h| {
                    h.headers
                        .into_iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
                })
                .map(|(_, v)| v);
            c.send(format!(
                "extensions: {}",
                answered.as_deref().unwrap_or("none")
            ));
            return;
        }
        let sent = upstream
            .borrow()
            .as_ref()
            .is_some_and(|u| u.send(line.to_string()));
        if !sent {
            c.send("upstream unavailable");
        }
    });
    run_all()
}
