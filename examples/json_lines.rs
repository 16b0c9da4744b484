//! A protocol of your own, in Workerman's three steps: JSON documents, one per line, decoded
//! into `serde_json::Value` before `on_message` sees them (Workerman's classic `JsonNL`).
//!
//! Two workers: `json` serves the protocol; `ticker`, a worker with no address, runs code only:
//! it connects to `json` with an outbound connection of the same protocol and sends a document
//! every half second, printing each answer.
//!
//! Run: `cargo run --example json_lines -- start`. `JSON_LISTEN` moves the server.

use oxwork::bytes::{BufMut, BytesMut};
use oxwork::{run_all, AsyncConnection, Input, Protocol, Rejection, Timer, Wire, Worker};
use serde_json::{json, Value};

/// JSON documents separated by `\n`.
#[derive(Clone, Default)]
struct JsonLines;

impl Protocol for JsonLines {
    type Message = Value;
    type Output = Value;

    fn input(&mut self, buf: &[u8], _wire: &mut Wire<'_>) -> Result<Input, Rejection> {
        Ok(match buf.iter().position(|&b| b == b'\n') {
            Some(i) => Input::Packet(i + 1),
            None => Input::NeedMore,
        })
    }

    fn decode(
        &mut self,
        packet: BytesMut,
        _wire: &mut Wire<'_>,
    ) -> Result<Option<Value>, Rejection> {
        serde_json::from_slice(&packet)
            .map(Some)
            .map_err(|e| Rejection::new(format!("bad JSON: {e}")))
    }

    fn encode(&mut self, msg: Value, wire: &mut Wire<'_>) -> Result<(), Rejection> {
        let dst = wire.buf();
        serde_json::to_writer(dst.writer(), &msg).map_err(|e| Rejection::new(e.to_string()))?;
        dst.put_u8(b'\n');
        Ok(())
    }
}

fn main() -> oxwork::Result<()> {
    let listen = std::env::var("JSON_LISTEN").unwrap_or_else(|_| "tcp://127.0.0.1:8890".into());
    let mut server = Worker::with_protocol(&listen, JsonLines)?;
    server.name("json").count(2);
    server.on_message(|c, doc| {
        c.send(json!({ "echo": doc, "served_by": std::process::id() }));
    });
    server.on_error(|c, e| eprintln!("json connection {}: {e}", c.id()));

    let mut ticker = Worker::without_address();
    ticker.name("ticker");
    let target = listen.clone();
    ticker.on_worker_start(move |_| {
        let Ok(conn) = AsyncConnection::with_protocol(&target, JsonLines) else {
            eprintln!("bad address {target}");
            return;
        };
        conn.on_message(|_, answer| println!("ticker got {answer}"));
        let again = conn.clone();
        conn.on_close(move |_| again.reconnect(0.5));
        conn.connect();
        let mut n = 0;
        Timer::add(0.5, true, move || {
            n += 1;
            conn.send(json!({ "tick": n }));
        });
    });
    run_all()
}
