//! The seed article's first listing: a TCP server of 4 processes on port 8888 that greets
//! every message.
//!
//! It listens with the `text` protocol rather than raw `tcp`: TCP is a byte stream with no
//! message boundaries, so one client send may arrive split or merged with the next; `text`
//! makes each line one message, which is what "Received message: DATA" means.
//!
//! Run: `cargo run --example seed_tcp -- start`, then `nc 127.0.0.1 8888` and type lines.
//! `SEED_TCP_LISTEN=text://127.0.0.1:9999` listens elsewhere.

use oxwork::{run_all, Worker};

fn main() -> oxwork::Result<()> {
    let listen =
        std::env::var("SEED_TCP_LISTEN").unwrap_or_else(|_| "text://0.0.0.0:8888".to_string());
    let mut worker = Worker::new(&listen)?;
    // reuse_port gives each process its own socket and lets the kernel spread connections
    // evenly; with one shared socket, whichever process wakes first takes the whole queue
    // (Workerman's `$worker->reusePort = true`).
    worker.name("seed_tcp").count(4).reuse_port(true);
    worker.on_worker_start(|w| println!("Worker {} started", w.id()));
    worker.on_connect(|c| println!("New connection from {}:{}", c.remote_ip(), c.remote_port()));
    worker.on_message(|c, data| {
        println!("Received message: {data}");
        c.send(format!("Hello, {data}!"));
    });
    run_all()
}
