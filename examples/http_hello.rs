//! HTTP: `GET /` answers `Hello World` as text/plain on port 8080; `/file` streams a file (with
//! ranges); `/upload` takes a multipart upload; `/chunked` streams chunks; `/events` streams
//! Server-Sent Events; `/ws` is a WebSocket echo on the same port; `/echo` answers the request's method, query, cookies and body as JSON;
//! `/slow?ms=N` answers after N milliseconds (a request under way during a stop or reload);
//! `/redirect?to=URL` answers 302 to URL, or 400 when URL could not be a header value; `/ip`
//! answers the client's address as the server sees it.
//!
//! Run: `cargo run --example http_hello -- start`, then `curl http://127.0.0.1:8080/`.
//! `HTTP_LISTEN` moves it; `HTTP_FILE` picks the file `/file` serves (default: this source);
//! `HTTP_MAX_BODY` sets `max_package_size` (the largest request); `HTTP_TLS_CERT` and
//! `HTTP_TLS_KEY` (PEM files) serve it over TLS (`HTTP_LISTEN=https://0.0.0.0:8443`).
//! Behind a load balancer: `HTTP_PROXY_PROTOCOL=1` requires the PROXY protocol header on every
//! connection; `HTTP_TRUSTED_PROXIES=127.0.0.1,10.0.0.0/8` believes `X-Forwarded-For` and
//! `Forwarded` from those peers.

use std::time::Duration;

use oxwork::http::{chunk, HttpOutput, Response, SseEvent};
use oxwork::{run_all, Timer, Worker};
use serde_json::json;

fn main() -> oxwork::Result<()> {
    let listen = std::env::var("HTTP_LISTEN").unwrap_or_else(|_| "http://0.0.0.0:8080".into());
    let file = std::env::var("HTTP_FILE")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/http_hello.rs").into());
    let mut w = Worker::http(&listen)?;
    w.name("http_hello").count(2);
    if let Some(n) = std::env::var("HTTP_MAX_BODY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        w.max_package_size(n);
    }
    if let (Ok(cert), Ok(key)) = (
        std::env::var("HTTP_TLS_CERT"),
        std::env::var("HTTP_TLS_KEY"),
    ) {
        w.tls(cert, key);
    }
    if std::env::var("HTTP_PROXY_PROTOCOL").is_ok_and(|v| v == "1") {
        w.proxy_protocol(true);
    }
    if let Ok(list) = std::env::var("HTTP_TRUSTED_PROXIES") {
        let list: Vec<&str> = list.split(',').map(str::trim).collect();
        w.trusted_proxies(&list)?;
    }
    // WebSocket on the same port: upgrades on /ws are served by this route (an echo).
    let mut echo = Worker::websocket_route();
    echo.on_message(|c, msg| {
        c.send(msg);
    });
    w.websocket_path("/ws", &echo);
    w.on_message(move |c, req| match (req.method().as_str(), req.path()) {
        (_, "/") => {
            c.send(Response::text("Hello World"));
        }
        (_, "/ip") => {
            c.send(Response::text(c.remote_ip()));
        }
        (_, "/redirect") => {
            let to = req
                .query_pairs()
                .into_iter()
                .find(|(k, _)| k == "to")
                .map(|(_, v)| v)
                .unwrap_or_default();
            // The target comes from the client: a header refuses CR/LF instead of letting the
            // client write headers of its own.
            c.send(match Response::new(302).try_header("Location", &to) {
                Ok(r) => r,
                Err(e) => Response::text(format!("bad redirect target: {e}\n")).status(400),
            });
        }
        (_, "/slow") => {
            let ms: u64 = req
                .query_pairs()
                .iter()
                .find(|(k, _)| k == "ms")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(1000)
                .min(60_000);
            let c = c.clone();
            Timer::once(Duration::from_millis(ms), move || {
                c.send(Response::text(format!("slept {ms} ms")));
            });
        }
        (_, "/file") => {
            c.send(Response::file(&file));
        }
        ("POST", "/upload") => {
            let files: Vec<_> = req
                .files()
                .iter()
                .map(|f| json!({"field": f.field, "filename": f.filename, "size": f.size, "on_disk": f.temp_path().is_some()}))
                .collect();
            c.send(Response::json(&json!({"fields": req.form_pairs(), "files": files})));
        }
        (_, "/echo") => {
            c.send(Response::json(&json!({
                "method": req.method().as_str(),
                "query": req.query_pairs(),
                "cookies": req.cookies(),
                "body": req.text(),
            })).cookie("visited", "yes"));
        }
        (_, "/chunked") => {
            c.send(Response::chunked().content_type("text/plain"));
            for i in 0..3 {
                c.send(chunk(format!("part {i}\n")));
            }
            c.send(HttpOutput::End);
        }
        (_, "/events") => {
            c.send(Response::event_stream());
            let c = c.clone();
            let mut n = 0;
            let id = std::rc::Rc::new(std::cell::Cell::new(None));
            let timer_id = id.clone();
            id.set(Some(Timer::add(Duration::from_millis(50), true, move || {
                n += 1;
                c.send(SseEvent::data(format!("tick {n}")).event("tick"));
                if n == 3 {
                    c.send(HttpOutput::End);
                    if let Some(t) = timer_id.get() {
                        Timer::del(t);
                    }
                }
            })));
        }
        _ => {
            c.send(Response::new(404).body("Not Found\n"));
        }
    });
    run_all()
}
