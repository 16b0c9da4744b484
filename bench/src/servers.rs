//! The servers under test, each started as a separate process (this same binary in a serving
//! role), pinned to the server core: oxwork, a minimal hand-written tokio server (the floor a
//! framework adds cost over), and hyper for HTTP.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pin;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    /// oxwork with this many worker processes, sharing one listening socket.
    Oxwork(u32),
    /// oxwork with this many worker processes, each with its own socket (`reuse_port`).
    OxworkReusePort(u32),
    /// The minimal tokio server.
    Tokio,
    /// The same server on tokio's multi-threaded runtime with this many threads (what a Rust
    /// user would write instead of N processes).
    TokioMt(u32),
    /// hyper's HTTP/1.1 server.
    Hyper,
    /// oxwork's bus tree: a responder, a sink, a pool of 4, and the hub.
    OxworkBus,
}

impl Kind {
    pub fn label(&self) -> String {
        match self {
            Kind::Oxwork(1) => "oxwork".into(),
            Kind::Oxwork(n) => format!("oxwork x{n}"),
            Kind::OxworkReusePort(n) => format!("oxwork x{n} reuse_port"),
            Kind::Tokio => "tokio floor".into(),
            Kind::TokioMt(n) => format!("tokio mt x{n}"),
            Kind::Hyper => "hyper".into(),
            Kind::OxworkBus => "oxwork hub".into(),
        }
    }
}

pub struct Running {
    pub kind: Kind,
    pub port: u16,
    child: Child,
    run_dir: Option<tempfile::TempDir>,
    /// The arguments that select this server's role, before an oxwork command.
    role_args: Vec<String>,
    pub pids: Vec<u32>,
    pub started_in: Duration,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Running {
    /// Starts a server: pinned to the server core, or free to use every core.
    pub fn start(kind: Kind, proto: &str, pinned: bool) -> Result<Running, String> {
        let port = free_port();
        let started = Instant::now();
        let role_args: Vec<String> = match kind {
            Kind::Oxwork(count) => vec![
                "__serve-oxwork".into(),
                proto.into(),
                count.to_string(),
                port.to_string(),
            ],
            Kind::OxworkReusePort(count) => vec![
                "__serve-oxwork".into(),
                format!("{proto}:reuse_port"),
                count.to_string(),
                port.to_string(),
            ],
            Kind::OxworkBus => vec!["__serve-oxwork-bus".into()],
            Kind::Tokio => vec!["__serve-tokio".into(), proto.into(), port.to_string()],
            Kind::TokioMt(threads) => vec![
                "__serve-tokio".into(),
                proto.into(),
                port.to_string(),
                threads.to_string(),
            ],
            Kind::Hyper => vec!["__serve-hyper".into(), port.to_string()],
        };
        let oxwork = matches!(
            kind,
            Kind::Oxwork(_) | Kind::OxworkReusePort(_) | Kind::OxworkBus
        );
        let run_dir = if oxwork {
            Some(crate::private_tempdir().map_err(|e| e.to_string())?)
        } else {
            None
        };
        let mut args = role_args.clone();
        if oxwork {
            args.push("start".into());
        }
        let mut cmd = if pinned {
            pin::self_command(&args, true)
        } else {
            pin::self_command_on_all_cores(&args)
        };
        cmd.env(crate::allocations::DIR_ENV, crate::allocations::dir());
        if let Some(d) = &run_dir {
            cmd.env("OXWORK_RUN_DIR", d.path())
                .env("OXWORK_LOG", "warn")
                .env("OXWORK_NODE", "bench");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {kind:?}: {e}"))?;
        let mut running = Running {
            kind,
            port,
            child,
            run_dir,
            role_args,
            pids: Vec::new(),
            started_in: Duration::ZERO,
        };
        running.wait_ready()?;
        running.started_in = started.elapsed();
        Ok(running)
    }

    /// Runs an oxwork command (`status --json`, `reload`, `stop`) against this server.
    pub fn oxwork_command(&self, cmd: &[&str]) -> Result<std::process::Output, String> {
        let Some(dir) = &self.run_dir else {
            return Err("not an oxwork server".into());
        };
        let mut args = self.role_args.clone();
        args.extend(cmd.iter().map(|s| s.to_string()));
        pin::self_command(&args, false)
            .env("OXWORK_RUN_DIR", dir.path())
            .env("OXWORK_NODE", "bench")
            .output()
            .map_err(|e| e.to_string())
    }

    /// The worker processes' pids (oxwork), or the server's own pid.
    pub fn worker_pids(&self) -> Vec<u32> {
        if self.run_dir.is_none() {
            return vec![self.child.id()];
        }
        self.oxwork_command(&["status", "--json"])
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| {
                v["processes"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|p| p["pid"].as_u64().map(|x| x as u32))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Connections each worker process serves now (oxwork), in the order of `pids`.
    pub fn connections_per_process(&self) -> Vec<u64> {
        let status = self
            .oxwork_command(&["status", "--json"])
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
        let Some(processes) = status.as_ref().and_then(|v| v["processes"].as_array()) else {
            return Vec::new();
        };
        self.pids
            .iter()
            .map(|pid| {
                processes
                    .iter()
                    .find(|p| p["pid"].as_u64() == Some(u64::from(*pid)))
                    .and_then(|p| p["stats"]["connections"].as_u64())
                    .unwrap_or(0)
            })
            .collect()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{:?} exited at start: {status}", self.kind));
            }
            let ready = match self.kind {
                Kind::Oxwork(n) | Kind::OxworkReusePort(n) => {
                    let pids = self.worker_pids();
                    (pids.len() == n as usize).then_some(pids)
                }
                // responder, sink, 4 pool processes and the hub
                Kind::OxworkBus => {
                    let pids = self.worker_pids();
                    (pids.len() == 7).then_some(pids)
                }
                _ => std::net::TcpStream::connect(("127.0.0.1", self.port))
                    .ok()
                    .map(|_| vec![self.child.id()]),
            };
            if let Some(pids) = ready {
                self.pids = pids;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{:?} did not become ready", self.kind))
    }

    /// The hub's socket of an oxwork tree.
    pub fn hub_path(&self) -> Option<std::path::PathBuf> {
        self.run_dir.as_ref().map(|d| d.path().join("hub.sock"))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.run_dir.is_some() {
            let _ = self.oxwork_command(&["stop"]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `__serve-oxwork PROTO COUNT PORT CMD...`: the oxwork server under test.
pub fn serve_oxwork(args: &[String]) -> oxwork::Result<()> {
    let (count, port) = (args[1].parse().unwrap_or(1), &args[2]);
    let (proto, reuse_port) = match args[0].split_once(':') {
        Some((proto, _)) => (proto, true),
        None => (args[0].as_str(), false),
    };
    // Every process of the tree runs this (main is re-run in each): each publishes its own.
    crate::allocations::publish_from_this_process();
    // `OXBENCH_CPU_AFFINITY=1 oxbench ...`: oxwork's processes pinned one per core.
    let affinity = std::env::var("OXBENCH_CPU_AFFINITY").as_deref() == Ok("1");
    match proto {
        "http" => {
            let mut w = oxwork::Worker::http(&format!("http://127.0.0.1:{port}"))?;
            w.name("bench")
                .count(count)
                .reuse_port(reuse_port)
                .cpu_affinity(affinity);
            w.on_message(|c, _req| {
                c.send(oxwork::http::Response::text("Hello World"));
            });
        }
        "websocket" => {
            let mut w = oxwork::Worker::websocket(&format!("websocket://127.0.0.1:{port}"))?;
            // Taken only by a client that offers it (the websocket-deflate scenario).
            w.name("bench")
                .count(count)
                .reuse_port(reuse_port)
                .cpu_affinity(affinity)
                .deflate(oxwork::websocket::DeflateSettings::default());
            w.on_message(|c, msg| {
                c.send(msg);
            });
        }
        _ => {
            let mut w = oxwork::Worker::new(&format!("{proto}://127.0.0.1:{port}"))?;
            w.name("bench")
                .count(count)
                .reuse_port(reuse_port)
                .cpu_affinity(affinity);
            w.on_message(|c, data| {
                c.send(data);
            });
        }
    }
    oxwork::run_all_from(args[3..].iter().cloned())
}

/// The floor's WebSocket: answers the handshake, then echoes masked client frames unmasked.
/// Returns bytes consumed; flips `open` once the handshake is done.
fn websocket_floor(buf: &[u8], out: &mut Vec<u8>, open: &mut bool) -> usize {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut used = 0;
    if !*open {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return 0;
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let key = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let mut h = sha1::Sha1::new();
        h.update(key.as_bytes());
        h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
        out.extend_from_slice(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes());
        *open = true;
        used = end + 4;
    }
    loop {
        let rest = &buf[used..];
        if rest.len() < 2 {
            return used;
        }
        let len7 = (rest[1] & 0x7F) as usize;
        let (ext, len) = match len7 {
            126 if rest.len() >= 4 => (2, u16::from_be_bytes([rest[2], rest[3]]) as usize),
            126 => return used,
            127 => return used,
            n => (0, n),
        };
        let total = 2 + ext + 4 + len;
        if rest.len() < total {
            return used;
        }
        let mask = &rest[2 + ext..2 + ext + 4];
        out.push(rest[0]);
        if len < 126 {
            out.push(len as u8);
        } else {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out.extend(
            rest[2 + ext + 4..total]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3]),
        );
        used += total;
    }
}

/// `__serve-tokio PROTO PORT [THREADS]`: the floor. One thread, one task per connection, one
/// read and one write per batch of requests, no framework; with THREADS, the same on tokio's
/// multi-threaded runtime (the reference for N oxwork processes).
pub fn serve_tokio(args: &[String]) {
    let proto = args[0].clone();
    let port: u16 = args[1].parse().unwrap_or(0);
    let threads: Option<usize> = args.get(2).and_then(|t| t.parse().ok());
    crate::allocations::publish_from_this_process();
    let serve = async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let conn = floor_connection(s, proto.clone());
            if threads.is_some() {
                tokio::spawn(conn);
            } else {
                tokio::task::spawn_local(conn);
            }
        }
    };
    match threads {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(serve),
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            tokio::task::LocalSet::new().block_on(&rt, serve)
        }
    }
}

async fn floor_connection(mut s: tokio::net::TcpStream, proto: String) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut ws_open = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let used = match proto.as_str() {
            "text" => echo_lines(&buf, &mut out),
            "frame" => echo_frames(&buf, &mut out),
            "websocket" => websocket_floor(&buf, &mut out, &mut ws_open),
            _ => answer_http(&buf, &mut out),
        };
        buf.drain(..used);
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn echo_lines(buf: &[u8], out: &mut Vec<u8>) -> usize {
    let mut used = 0;
    while let Some(i) = buf[used..].iter().position(|&b| b == b'\n') {
        out.extend_from_slice(&buf[used..used + i + 1]);
        used += i + 1;
    }
    used
}

fn echo_frames(buf: &[u8], out: &mut Vec<u8>) -> usize {
    let mut used = 0;
    while buf.len() - used >= 4 {
        let len =
            u32::from_be_bytes([buf[used], buf[used + 1], buf[used + 2], buf[used + 3]]) as usize;
        if len < 4 || buf.len() - used < len {
            break;
        }
        out.extend_from_slice(&buf[used..used + len]);
        used += len;
    }
    used
}

const HELLO: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nHello World";

fn answer_http(buf: &[u8], out: &mut Vec<u8>) -> usize {
    let mut used = 0;
    while let Some(i) = buf[used..].windows(4).position(|w| w == b"\r\n\r\n") {
        out.extend_from_slice(HELLO);
        used += i + 4;
    }
    used
}

/// `__serve-hyper PORT`: hyper's HTTP/1.1 server on one thread, keep-alive and pipelining.
pub fn serve_hyper(args: &[String]) {
    use http_body_util::Full;
    crate::allocations::publish_from_this_process();
    use hyper::body::Bytes;
    let port: u16 = args[0].parse().unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let served = Rc::new(RefCell::new(0u64));
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let served = served.clone();
            tokio::task::spawn_local(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    *served.borrow_mut() += 1;
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("Content-Type", "text/plain")
                                .body(Full::new(Bytes::from_static(b"Hello World")))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .pipeline_flush(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}
