// The body of examples/handoff_lab.rs and examples/handoff_lab_v2.rs (which differ only in
// `VERSION`): a text group and a WebSocket group with live connection hand-off, and a pusher
// that sends numbered messages to a group and to uids.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use oxwork::bus;
use oxwork::websocket::WebSocket;
use oxwork::{run_all, Connection, Protocol, Timer, Worker};

/// How many uids the pusher sends to in turn (`u0` .. `u9`).
const UIDS: u64 = 10;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The answer to one client line: `join:UID` or `n:SEQ`.
fn answer<P: Protocol>(c: &Connection<P>, line: &str) -> Option<String> {
    if let Some(uid) = line.strip_prefix("join:") {
        let joined = c.bind_uid(uid).and_then(|_| c.join_group("all"));
        return Some(match joined {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        });
    }
    if let Some(n) = line.strip_prefix("pad:").and_then(|n| n.parse::<usize>().ok()) {
        c.session().insert("pad".into(), "x".repeat(n.min(1 << 20)).into());
        return Some("ok".to_string());
    }
    let seq = line.strip_prefix("n:")?;
    let moves = c.session().get("moves").and_then(|m| m.as_u64()).unwrap_or(0);
    Some(format!(
        "{VERSION}:{seq}:{}:{}:{}:{moves}",
        c.remote_port(),
        c.client_id(),
        std::process::id()
    ))
}

/// Counts, in the connection's session, how many times it moved: the session moves with it.
fn count_move<P: Protocol>(c: &Connection<P>) {
    let mut session = c.session();
    let moves = session.get("moves").and_then(|m| m.as_u64()).unwrap_or(0);
    session.insert("moves".into(), (moves + 1).into());
}

fn main() -> oxwork::Result<()> {
    let mut text = Worker::new(&env("HANDOFF_TEXT_LISTEN", "text://127.0.0.1:7100"))?;
    text.name("text").count(2).gateway(true).hand_off(true);
    text.on_message(|c, line| {
        if let Some(reply) = answer(c, line.as_str().unwrap_or("")) {
            c.send(reply);
        }
    });
    text.on_resume(count_move);

    let mut ws: Worker<WebSocket> =
        Worker::websocket(&env("HANDOFF_WS_LISTEN", "websocket://127.0.0.1:7101"))?;
    ws.name("ws").count(2).gateway(true).hand_off(true);
    if let (Ok(cert), Ok(key)) = (
        std::env::var("HANDOFF_TLS_CERT"),
        std::env::var("HANDOFF_TLS_KEY"),
    ) {
        // TLS session keys cannot move: these connections get the close code 1012 instead.
        ws.tls(cert, key);
    }
    ws.on_message(|c, msg| {
        if let Some(reply) = answer(c, msg.as_str().unwrap_or("")) {
            c.send(reply);
        }
    });
    ws.on_resume(count_move);

    // Not reloadable, so that its numbering runs on across reloads.
    let mut pusher = Worker::without_address();
    pusher.name("pusher").reloadable(false);
    let period: u64 = env("HANDOFF_PUSH_MS", "50").parse().unwrap_or(50);
    pusher.on_worker_start(move |_| {
        let k = Rc::new(Cell::new(0u64));
        Timer::add(Duration::from_millis(period), true, move || {
            let n = k.get() + 1;
            k.set(n);
            let _ = bus::send_to_group("all", format!("g:{n}"), &[]);
            let _ = bus::send_to_uid(&format!("u{}", n % UIDS), format!("u:{n}"));
        });
    });
    run_all()
}
