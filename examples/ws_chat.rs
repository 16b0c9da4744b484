//! A WebSocket chat on port 8081: `GET /` serves a browser chat page, `/ws` is the WebSocket
//! endpoint, and every text message a client sends reaches every connected client, whichever of
//! the 4 processes holds it (through the bus's `broadcast`).
//!
//! Run: `cargo run --example ws_chat -- start`, open http://127.0.0.1:8081/ in two browsers.
//! `WS_CHAT_LISTEN` moves it; `WS_CHAT_MAX_MESSAGE` sets the largest message (bytes) and
//! `WS_CHAT_HANDSHAKE_TIMEOUT` the handshake deadline (seconds); `WS_CHAT_TLS_CERT` and
//! `WS_CHAT_TLS_KEY` (PEM files) serve it over TLS (`wss://`, the page at `https://`).

use oxwork::bus;
use oxwork::http::Response;
use oxwork::websocket::{DeflateSettings, WsAccept};
use oxwork::{run_all, Worker};

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>oxwork chat</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#log{height:20em;overflow:auto;border:1px solid #ccc;padding:.5em}</style>
<h1>oxwork chat</h1>
<div id="log"></div>
<form id="f"><input id="m" autocomplete="off" size="50" autofocus> <button>Send</button></form>
<script>
const log = document.getElementById('log');
const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`, ['chat']);
ws.onmessage = e => { const p = document.createElement('div'); p.textContent = e.data; log.append(p); log.scrollTop = 1e9; };
document.getElementById('f').onsubmit = e => { e.preventDefault(); const m = document.getElementById('m'); ws.send(m.value); m.value = ''; };
</script>
"#;

fn main() -> oxwork::Result<()> {
    let listen =
        std::env::var("WS_CHAT_LISTEN").unwrap_or_else(|_| "websocket://0.0.0.0:8081".into());
    let mut chat = Worker::websocket(&listen)?;
    chat.name("ws_chat").count(4).gateway(true).reuse_port(true);
    // Browsers and most client libraries offer permessage-deflate: chat text shrinks several
    // times on the wire.
    chat.deflate(DeflateSettings::default());
    if let Some(n) = std::env::var("WS_CHAT_MAX_MESSAGE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        chat.max_package_size(n);
    }
    if let Some(s) = std::env::var("WS_CHAT_HANDSHAKE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        chat.handshake_timeout(s);
    }
    // A silent connection is pinged after WS_CHAT_PING seconds (default 30) and closed when
    // WS_CHAT_PONG_TIMEOUT more (default 10) pass without a byte from it.
    if let Some(s) = std::env::var("WS_CHAT_PING")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        chat.ping_interval(s);
    }
    if let Some(s) = std::env::var("WS_CHAT_PONG_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        chat.pong_timeout(s);
    }
    if let (Ok(cert), Ok(key)) = (
        std::env::var("WS_CHAT_TLS_CERT"),
        std::env::var("WS_CHAT_TLS_KEY"),
    ) {
        chat.tls(cert, key);
    }
    chat.on_http_request(|req| match req.path() {
        "/" => Response::html(PAGE),
        _ => Response::new(404).body("Not Found\n"),
    });
    chat.on_websocket_connect(|req| {
        if req.path() != "/ws" {
            return Err(Response::new(404).body("the chat socket is at /ws\n"));
        }
        // A client that names its protocol (`new WebSocket(url, ["chat"])`) is answered with
        // it; one that offers only others is still let in, and decides for itself.
        let offers_chat = req.websocket_protocols().iter().any(|p| p == "chat");
        Ok(if offers_chat {
            WsAccept::new().protocol("chat")
        } else {
            WsAccept::new()
        })
    });
    chat.on_message(|c, msg| {
        if let Some(text) = msg.as_str() {
            let line = format!("{}: {text}", c.client_id());
            if let Err(e) = bus::broadcast(line, &[]) {
                c.send(format!("not delivered: {e}"));
            }
        }
    });
    run_all()
}
