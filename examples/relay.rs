//! Outbound connections: a text server that forwards every line to an upstream text server
//! over one `AsyncConnection` per process, and relays the answers back in order. It reconnects
//! by itself when the upstream goes away.
//!
//! Run the seed server, then this: `cargo run --example seed_tcp -- start` and
//! `RELAY_LISTEN=text://127.0.0.1:8889 cargo run --example relay -- start --run-dir /tmp/relay`.
//! `RELAY_UPSTREAM` (default `text://127.0.0.1:8888`) names the upstream; `RELAY_TLS_NAME`
//! speaks TLS to it, checking its certificate for that name (against `RELAY_TLS_ROOT`, a PEM
//! file, when given; the public roots otherwise).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use oxwork::{run_all, AsyncConnection, Connection, Worker};

fn main() -> oxwork::Result<()> {
    let listen = std::env::var("RELAY_LISTEN").unwrap_or_else(|_| "text://127.0.0.1:8889".into());
    let upstream_url =
        std::env::var("RELAY_UPSTREAM").unwrap_or_else(|_| "text://127.0.0.1:8888".into());
    let mut w = Worker::new(&listen)?;
    w.name("relay").count(2);

    let upstream: Rc<RefCell<Option<AsyncConnection>>> = Rc::default();
    let waiting: Rc<RefCell<VecDeque<Connection>>> = Rc::default();

    let (up, wait) = (upstream.clone(), waiting.clone());
    w.on_worker_start(move |_| {
        let conn = match AsyncConnection::new(&upstream_url) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bad upstream: {e}");
                return;
            }
        };
        if let Ok(name) = std::env::var("RELAY_TLS_NAME") {
            let secured = conn
                .tls(&name)
                .and_then(|()| match std::env::var("RELAY_TLS_ROOT") {
                    Ok(root) => conn.tls_root_pem(root),
                    Err(_) => Ok(()),
                });
            if let Err(e) = secured {
                eprintln!("bad TLS settings: {e}");
                return;
            }
        }
        let answered = wait.clone();
        conn.on_message(move |_, answer| {
            if let Some(client) = answered.borrow_mut().pop_front() {
                client.send(answer);
            }
        });
        let again = conn.clone();
        let stranded = wait.clone();
        conn.on_close(move |_| {
            // Clients still waiting will get no answer from this upstream connection.
            for client in stranded.borrow_mut().drain(..) {
                client.send("upstream closed");
            }
            again.reconnect(1);
        });
        conn.connect();
        *up.borrow_mut() = Some(conn);
    });
    w.on_message(move |client, line| {
        let sent = upstream
            .borrow()
            .as_ref()
            .is_some_and(|up| up.send(line.as_bytes()));
        if sent {
            waiting.borrow_mut().push_back(client.clone());
        } else {
            client.send("upstream unavailable");
        }
    });
    run_all()
}
