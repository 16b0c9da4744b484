//! A configurable echo server, the one the integration tests drive, and a tour of a worker's
//! settings. Every setting comes from the environment:
//!
//! | variable | setting | default |
//! |---|---|---|
//! | `ECHO_LISTEN` | listen URL | `text://127.0.0.1:7000` |
//! | `ECHO_COUNT` | processes | 2 |
//! | `ECHO_STOP_TIMEOUT` | seconds a graceful stop/reload waits | 2 |
//! | `ECHO_IDLE_TIMEOUT` | close connections silent this long (s) | none |
//! | `ECHO_MAX_PACKAGE` | max_package_size (bytes) | 10 MiB |
//! | `ECHO_MAX_REQUESTS` | recycle a process after this many messages | none |
//! | `ECHO_REUSE_PORT` | `1` for a socket per process | off |
//! | `ECHO_RELOADABLE` | `0` to keep processes across `reload` | reloadable |
//! | `ECHO_EXIT_AT_START` | exit code each process dies with at start (a crash loop) | none |
//!
//! Messages: `panic` panics in the handler; `slow:MS` answers `done:MS` after MS milliseconds;
//! `pid` answers the process id; `ticks` answers how many times this process's 100 ms timer
//! has fired; `flood:N` answers N messages of 64 KiB at once (to fill the send buffer);
//! `pause:MS` stops reading this connection for MS milliseconds; `block:MS` blocks the whole
//! process for MS milliseconds (what a busy process looks like in `status`); anything else is
//! echoed back.

use std::cell::Cell;
use std::rc::Rc;

use oxwork::{run_all, Timer, Worker};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> oxwork::Result<()> {
    let listen = std::env::var("ECHO_LISTEN").unwrap_or_else(|_| "text://127.0.0.1:7000".into());
    let mut w = Worker::new(&listen)?;
    w.name("echo")
        .count(env("ECHO_COUNT").unwrap_or(2))
        .stop_timeout(env::<f64>("ECHO_STOP_TIMEOUT").unwrap_or(2.0))
        .reuse_port(env::<u8>("ECHO_REUSE_PORT") == Some(1));
    if let Some(t) = env::<f64>("ECHO_IDLE_TIMEOUT") {
        w.idle_timeout(t);
    }
    if let Some(n) = env("ECHO_MAX_PACKAGE") {
        w.max_package_size(n);
    }
    if let Some(n) = env("ECHO_MAX_REQUESTS") {
        w.max_requests(n);
    }
    if env::<u8>("ECHO_RELOADABLE") == Some(0) {
        w.reloadable(false);
    }
    w.on_worker_stop(|w| eprintln!("echo worker {} stopping", w.id()));
    w.on_worker_reload(|w| eprintln!("echo worker {} reloading", w.id()));

    let ticks = Rc::new(Cell::new(0u64));
    let t = ticks.clone();
    let exit_at_start = env::<i32>("ECHO_EXIT_AT_START");
    w.on_worker_start(move |w| {
        if let Some(code) = exit_at_start {
            std::process::exit(code);
        }
        let t = t.clone();
        Timer::add(0.1, true, move || t.set(t.get() + 1));
        eprintln!(
            "echo worker {} started (pid {})",
            w.id(),
            std::process::id()
        );
    });
    w.on_message(move |c, data| match data.as_str() {
        Some("panic") => panic!("asked to panic"),
        Some("pid") => {
            c.send(std::process::id().to_string());
        }
        Some("ticks") => {
            c.send(ticks.get().to_string());
        }
        Some(s) if s.starts_with("slow:") => {
            let ms: u64 = s[5..].parse().unwrap_or(100);
            let c = c.clone();
            Timer::once(std::time::Duration::from_millis(ms), move || {
                c.send(format!("done:{ms}"));
            });
        }
        Some(s) if s.starts_with("flood:") => {
            let n: usize = s[6..].parse().unwrap_or(1);
            let chunk = "x".repeat(64 * 1024);
            let sent = (0..n).filter(|_| c.send(chunk.as_str())).count();
            eprintln!("flood: {sent} of {n} queued");
        }
        Some(s) if s.starts_with("block:") => {
            let ms: u64 = s[6..].parse().unwrap_or(100);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            c.send("unblocked");
        }
        Some(s) if s.starts_with("pause:") => {
            let ms: u64 = s[6..].parse().unwrap_or(100);
            c.pause_recv();
            let c = c.clone();
            Timer::once(std::time::Duration::from_millis(ms), move || {
                c.resume_recv()
            });
        }
        _ => {
            c.send(data);
        }
    });
    w.on_buffer_full(|c| eprintln!("connection {} buffer full", c.id()));
    w.on_buffer_drain(|c| eprintln!("connection {} buffer drained", c.id()));
    w.on_error(|c, e| eprintln!("connection {} error: {e}", c.id()));
    w.on_close(|c| eprintln!("connection {} closed", c.id()));
    run_all()
}
