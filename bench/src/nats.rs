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

/// `__nats-responder URL`, `__nats-sink URL`, `__nats-queue URL`, `__js-worker URL`: the helper
/// processes.
pub fn helper(role: &str, url: &str) {
    runtime().block_on(async move {
        let Ok(client) = async_nats::connect(url).await else { return };
        match role {
            "__js-worker" => js_worker(client).await,
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

/// The raw JetStream work queue's stream, subject and reply header.
const REF_STREAM: &str = "REF_TASKS";
const REF_SUBJECT: &str = "ref.task";
const REF_REPLY: &str = "ref-reply";
/// Tasks a reference worker takes per pull (the oxwork pool's per-process concurrency).
const REF_BATCH: usize = 64;

/// A reference pool process: pulls tasks from the work queue as a plain async-nats user would
/// (a continuous pull stream), answers each to the reply subject in its header, acknowledges.
async fn js_worker(client: async_nats::Client) {
    use async_nats::jetstream::{self, consumer::pull};
    let js = jetstream::new(client.clone());
    let Ok(stream) = js.get_stream(REF_STREAM).await else {
        return;
    };
    let Ok(consumer) = stream.get_consumer::<pull::Config>("workers").await else {
        return;
    };
    let Ok(mut messages) = consumer
        .stream()
        .max_messages_per_batch(REF_BATCH)
        .messages()
        .await
    else {
        return;
    };
    while let Some(Ok(m)) = messages.next().await {
        let reply = m
            .headers
            .as_ref()
            .and_then(|h| h.get(REF_REPLY))
            .map(|v| v.to_string());
        if let Some(r) = reply {
            let _ = client.publish(r, m.payload.clone()).await;
        }
        let _ = m.ack().await;
    }
}

/// Durable tasks through JetStream with async-nats alone, shaped as the oxwork durable pool
/// measurement: a work-queue stream, 4 worker processes pulling and acknowledging, and 2
/// submitting connections keeping `in_flight` tasks each (publish, wait for JetStream's
/// acknowledgement, wait for the worker's reply). Tasks per second, end to end.
pub fn jetstream_tasks(url: &str, in_flight: usize, duration: Duration) -> Result<f64, String> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    let mut workers: Vec<Child> = Vec::new();
    let rate = local.block_on(&rt, async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let _ = js.delete_stream(REF_STREAM).await;
        let made = js
            .create_stream(stream::Config {
                name: REF_STREAM.into(),
                subjects: vec![REF_SUBJECT.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("reference stream: {e}"))?;
        made.create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("reference consumer: {e}"))?;
        for _ in 0..4 {
            let child = pin::self_command(&["__js-worker".to_string(), url.to_string()], true)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            workers.push(child);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = Rc::new(Cell::new(0u64));
        let start = Instant::now();
        let end = start + duration;
        let mut tasks = Vec::new();
        let mut readers = Vec::new();
        for c in 0..2 {
            let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
            let js = jetstream::new(client.clone());
            let waiting: Rc<
                RefCell<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
            > = Rc::default();
            let mut replies = client
                .subscribe(format!("ref.reply.{c}.*"))
                .await
                .map_err(|e| e.to_string())?;
            let w = waiting.clone();
            readers.push(tokio::task::spawn_local(async move {
                while let Some(m) = replies.next().await {
                    let n = m
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|t| t.parse::<u64>().ok());
                    if let Some(tx) = n.and_then(|n| w.borrow_mut().remove(&n)) {
                        let _ = tx.send(());
                    }
                }
            }));
            let next = Rc::new(Cell::new(0u64));
            for _ in 0..in_flight {
                let (js, done, waiting, next) =
                    (js.clone(), done.clone(), waiting.clone(), next.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    while Instant::now() < end {
                        let n = next.get() + 1;
                        next.set(n);
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        waiting.borrow_mut().insert(n, tx);
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(REF_REPLY, format!("ref.reply.{c}.{n}").as_str());
                        let queued = match js
                            .publish_with_headers(REF_SUBJECT, headers, "x".into())
                            .await
                        {
                            Ok(ack) => ack.await.is_ok(),
                            Err(_) => false,
                        };
                        let answered = queued
                            && tokio::time::timeout(Duration::from_secs(10), rx)
                                .await
                                .is_ok();
                        if answered {
                            done.set(done.get() + 1);
                        } else {
                            waiting.borrow_mut().remove(&n);
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let rate = done.get() as f64 / start.elapsed().as_secs_f64();
        for r in readers {
            r.abort();
        }
        let _ = js.delete_stream(REF_STREAM).await;
        Ok::<f64, String>(rate)
    });
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    rate
}
