//! The same bus patterns against `nats-server` with the async-nats client: request/reply,
//! one-way publish/subscribe, and a queue group of 4 answering requests. Each side is its own
//! process, as in the oxwork measurement.

use std::cell::{Cell, RefCell};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;

use crate::pin;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A nats-server of our own on a free port, and the helper processes around it.
pub struct NatsTree {
    children: Vec<Child>,
    _store: tempfile::TempDir,
    pub url: String,
}

impl Drop for NatsTree {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl NatsTree {
    pub fn start() -> Result<NatsTree, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())?;
        let store = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut server = match pin::server_cpu() {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg("nats-server");
                c
            }
            None => Command::new("nats-server"),
        };
        let server = server
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nats-server (is it installed?): {e}"))?;
        let url = format!("nats://127.0.0.1:{port}");
        let mut tree = NatsTree {
            children: vec![server],
            _store: store,
            url: url.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for role in [
            "__nats-responder",
            "__nats-sink",
            "__nats-queue",
            "__nats-queue",
            "__nats-queue",
            "__nats-queue",
        ] {
            let child = pin::self_command(&[role.to_string(), url.clone()], true)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            tree.children.push(child);
        }
        // The helpers subscribe as they start.
        std::thread::sleep(Duration::from_millis(500));
        Ok(tree)
    }
}

/// `__nats-responder URL`, `__nats-sink URL`, `__nats-queue URL`: the helper processes.
pub fn helper(role: &str, url: &str) {
    runtime().block_on(async move {
        let Ok(client) = async_nats::connect(url).await else { return };
        match role {
            "__nats-responder" => {
                let Ok(mut sub) = client.subscribe("bench.rr").await else { return };
                while let Some(m) = sub.next().await {
                    if let Some(r) = m.reply {
                        let _ = client.publish(r, m.payload).await;
                    }
                }
            }
            "__nats-queue" => {
                let Ok(mut sub) = client.queue_subscribe("bench.q", "workers".into()).await else { return };
                while let Some(m) = sub.next().await {
                    if let Some(r) = m.reply {
                        let _ = client.publish(r, m.payload).await;
                    }
                }
            }
            _ => {
                let Ok(mut ctl) = client.subscribe("bench.ctl").await else { return };
                let Ok(mut count) = client.subscribe("bench.count").await else { return };
                let Ok(mut data) = client.subscribe("bench.oneway").await else { return };
                let mut target = u64::MAX;
                let mut seen = 0u64;
                loop {
                    tokio::select! {
                        Some(m) = ctl.next() => {
                            target = String::from_utf8_lossy(&m.payload).parse().unwrap_or(u64::MAX);
                            seen = 0;
                            let _ = client.publish("bench.ready", "ok".into()).await;
                            let _ = client.flush().await;
                        }
                        Some(m) = count.next() => {
                            if let Some(r) = m.reply {
                                let _ = client.publish(r, seen.to_string().into()).await;
                            }
                        }
                        Some(_) = data.next() => {
                            seen += 1;
                            if seen == target {
                                let _ = client.publish("bench.done", seen.to_string().into()).await;
                                let _ = client.flush().await;
                            }
                        }
                        else => break,
                    }
                }
            }
        }
    });
}

/// Sequential requests to the responder: round-trip latency.
pub fn request_latency(
    url: &str,
    warmup: Duration,
    duration: Duration,
) -> Result<(u64, Histogram<u64>), String> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        crate::bus::round_trips(warmup, duration, || async {
            client
                .request("bench.rr", "0123456789abcdef".into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    })
}

/// `count` 16-byte messages to the sink: messages per second it received, and how many it never
/// got (NATS drops what a slow subscriber cannot take).
pub fn one_way(url: &str, count: u64) -> Result<(f64, u64), String> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let mut done = client
            .subscribe("bench.done")
            .await
            .map_err(|e| e.to_string())?;
        let mut ready = client
            .subscribe("bench.ready")
            .await
            .map_err(|e| e.to_string())?;
        client
            .publish("bench.ctl", count.to_string().into())
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), ready.next())
            .await
            .map_err(|_| "sink not ready")?;
        let payload = bytes::Bytes::from_static(b"0123456789abcdef");
        let start = Instant::now();
        for _ in 0..count {
            client
                .publish("bench.oneway", payload.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        client.flush().await.map_err(|e| e.to_string())?;
        // NATS drops messages a slow subscriber cannot take; then the sink never reaches
        // `count`, and the rate is what it did receive, until it stops growing.
        let mut last = (0u64, Instant::now());
        loop {
            if tokio::time::timeout(Duration::from_millis(50), done.next())
                .await
                .is_ok()
            {
                return Ok((count as f64 / start.elapsed().as_secs_f64(), 0));
            }
            let seen: u64 = client
                .request("bench.count", "".into())
                .await
                .ok()
                .and_then(|m| String::from_utf8_lossy(&m.payload).parse().ok())
                .unwrap_or(0);
            if seen > last.0 {
                last = (seen, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(1) {
                return Ok((
                    last.0 as f64 / (last.1 - start).as_secs_f64(),
                    count - last.0,
                ));
            }
        }
    })
}

/// Two requesters keep `in_flight` requests each going to the queue group of 4.
pub fn queue_throughput(url: &str, in_flight: usize, duration: Duration) -> Result<f64, String> {
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let done = Rc::new(Cell::new(0u64));
        let errors = Rc::new(RefCell::new(0u64));
        let end = Instant::now() + duration;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
            for _ in 0..in_flight {
                let (client, done, errors) = (client.clone(), done.clone(), errors.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    while Instant::now() < end {
                        match client.request("bench.q", "x".into()).await {
                            Ok(_) => done.set(done.get() + 1),
                            Err(_) => *errors.borrow_mut() += 1,
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(done.get() as f64 / start.elapsed().as_secs_f64())
    })
}
