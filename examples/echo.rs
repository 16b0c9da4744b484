//! A configurable echo server, the one the integration tests drive, and a tour of a worker's
//! settings. Every setting comes from the environment:
//!
//! | variable | setting | default |
//! |---|---|---|
//! | `ECHO_LISTEN` | listen URL | `text://127.0.0.1:7000` |
//! | `ECHO_COUNT` | processes | 2 |
//! | `ECHO_STOP_TIMEOUT` | seconds a plain stop/reload serves requests under way | 2 |
//! | `ECHO_GRACEFUL_TIMEOUT` | seconds `stop -g`/`reload -g` serve open connections | 3600 |
//! | `ECHO_GOODBYE` | `1`: a retiring process sends `bye:stopping` or `bye:restarting` before it closes a connection | off |
//! | `ECHO_IDLE_TIMEOUT` | close connections silent this long (s) | none |
//! | `ECHO_MAX_PACKAGE` | max_package_size (bytes) | 10 MiB |
//! | `ECHO_MAX_REQUESTS` | recycle a process after this many messages | none |
//! | `ECHO_REUSE_PORT` | `1` for a socket per process | off |
//! | `ECHO_CPU_AFFINITY` | `1` pins process `id` to the `id`-th allowed CPU | off |
//! | `ECHO_RELOADABLE` | `0` to keep processes across `reload` | reloadable |
//! | `ECHO_GATEWAY` | `1` makes connections reachable from every process (client routing) | off |
//! | `ECHO_EXIT_AT_START` | exit code each process dies with at start (a crash loop) | none |
//!
//! Messages: `panic` panics in the handler; `slow:MS` answers `done:MS` after MS milliseconds;
//! `pid` answers the process id; `ticks` answers how many times this process's 100 ms timer
//! has fired; `flood:N` answers N messages of 64 KiB at once (to fill the send buffer);
//! `pause:MS` stops reading this connection for MS milliseconds; `block:MS` blocks the whole
//! process for MS milliseconds (what a busy process looks like in `status`).
//!
//! Client routing (with `ECHO_GATEWAY=1`): `id` answers this connection's client id;
//! `bind:UID`, `join:GROUP`, `leave:GROUP` answer `ok`; `to-uid:UID:TEXT`,
//! `to-group:GROUP:TEXT`, `to-group-but-me:GROUP:TEXT`, `to-client:ID:TEXT`, `broadcast:TEXT`,
//! `close:ID` send or close from this process and answer `sent`; `online:ID`,
//! `uid-online:UID`, `group-count:GROUP`, `group-ids:GROUP`, `count` answer what they ask.
//! Channels: `watch:TOPIC` answers `ok` and then forwards every message published on channels
//! matching TOPIC as `TOPIC: TEXT`; `publish:TOPIC:TEXT` publishes and answers `sent`.
//! Anything else is echoed back.

use std::cell::Cell;
use std::rc::Rc;

use oxwork::bus::{self, ClientId};
use oxwork::{run_all, Connection, Farewell, Timer, Worker};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Client-routing commands; false if `cmd` is not one.
fn routing(c: &Connection, cmd: &str) -> bool {
    let (verb, rest) = cmd.split_once(':').unwrap_or((cmd, ""));
    let reply = |r: Result<String, bus::BusError>| match r {
        Ok(s) => c.send(s),
        Err(e) => c.send(format!("error: {e}")),
    };
    let split = |s: &str| -> (String, String) {
        let (a, b) = s.split_once(':').unwrap_or((s, ""));
        (a.to_string(), b.to_string())
    };
    match verb {
        "id" => reply(Ok(c.client_id().to_string())),
        "bind" => reply(c.bind_uid(rest).map(|_| "ok".into())),
        "join" => reply(c.join_group(rest).map(|_| "ok".into())),
        "leave" => {
            c.leave_group(rest);
            reply(Ok("ok".into()))
        }
        "to-uid" => {
            let (uid, text) = split(rest);
            reply(bus::send_to_uid(&uid, text).map(|_| "sent".into()))
        }
        "to-group" => {
            let (g, text) = split(rest);
            reply(bus::send_to_group(&g, text, &[]).map(|_| "sent".into()))
        }
        "to-group-but-me" => {
            let (g, text) = split(rest);
            reply(bus::send_to_group(&g, text, &[c.client_id()]).map(|_| "sent".into()))
        }
        "to-client" => {
            let (id, text) = split(rest);
            let sent = id
                .parse::<ClientId>()
                .and_then(|id| bus::send_to_client(&id, text));
            reply(sent.map(|_| "sent".into()))
        }
        "close" => {
            let closed = rest
                .parse::<ClientId>()
                .and_then(|id| bus::close_client(&id));
            reply(closed.map(|_| "sent".into()))
        }
        "broadcast" => reply(bus::broadcast(rest.to_string(), &[]).map(|_| "sent".into())),
        "watch" => {
            let conn = c.clone();
            let watched = bus::subscribe(rest, move |m| {
                let topic = m.subject.strip_prefix("ox.ch.").unwrap_or(&m.subject);
                conn.send(format!("{topic}: {}", m.text()));
            });
            reply(watched.map(|_| "ok".into()))
        }
        "publish" => {
            let (topic, text) = split(rest);
            reply(bus::publish(&topic, text).map(|_| "sent".into()))
        }
        "online" | "uid-online" | "group-count" | "group-ids" | "count" => {
            let (c, verb, arg) = (c.clone(), verb.to_string(), rest.to_string());
            oxwork::spawn(async move {
                let answer = match verb.as_str() {
                    "online" => match arg.parse::<ClientId>() {
                        Ok(id) => bus::is_online(&id).await.map(|b| b.to_string()),
                        Err(e) => Err(e),
                    },
                    "uid-online" => bus::uid_is_online(&arg).await.map(|b| b.to_string()),
                    "group-count" => bus::group_count(&arg).await.map(|n| n.to_string()),
                    "group-ids" => bus::group_client_ids(&arg).await.map(|ids| {
                        ids.iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    }),
                    _ => bus::client_count().await.map(|n| n.to_string()),
                };
                match answer {
                    Ok(s) => c.send(s),
                    Err(e) => c.send(format!("error: {e}")),
                };
            });
            true
        }
        _ => return false,
    };
    true
}

fn main() -> oxwork::Result<()> {
    let listen = std::env::var("ECHO_LISTEN").unwrap_or_else(|_| "text://127.0.0.1:7000".into());
    let mut w = Worker::new(&listen)?;
    w.name("echo")
        .count(env("ECHO_COUNT").unwrap_or(2))
        .stop_timeout(env::<f64>("ECHO_STOP_TIMEOUT").unwrap_or(2.0))
        .graceful_timeout(env::<f64>("ECHO_GRACEFUL_TIMEOUT").unwrap_or(3600.0))
        .reuse_port(env::<u8>("ECHO_REUSE_PORT") == Some(1))
        .cpu_affinity(env::<u8>("ECHO_CPU_AFFINITY") == Some(1));
    // Behind a load balancer that sends the PROXY protocol header.
    if env::<u8>("ECHO_PROXY_PROTOCOL") == Some(1) {
        w.proxy_protocol(true);
    }
    // Started as root: the processes drop to this user (and group) once the port is bound.
    if let Ok(user) = std::env::var("ECHO_USER") {
        w.user(&user);
    }
    if let Ok(group) = std::env::var("ECHO_GROUP") {
        w.group(&group);
    }
    if let (Ok(cert), Ok(key)) = (
        std::env::var("ECHO_TLS_CERT"),
        std::env::var("ECHO_TLS_KEY"),
    ) {
        w.tls(cert, key);
    }
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
    if env::<u8>("ECHO_GATEWAY") == Some(1) {
        w.gateway(true);
    }
    if env::<u8>("ECHO_GOODBYE") == Some(1) {
        w.on_goodbye(|c, why| {
            c.send(match why {
                Farewell::Restarting => "bye:restarting",
                _ => "bye:stopping",
            });
        });
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
        Some(cmd) if routing(c, cmd) => {}
        Some("panic") => panic!("asked to panic"),
        Some("pid") => {
            c.send(std::process::id().to_string());
        }
        Some("ip") => {
            c.send(c.remote_ip());
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
