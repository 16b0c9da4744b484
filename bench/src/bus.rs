//! Scenario f: the bus between processes. The tree under test runs a responder (worker
//! messages), a sink (a channel subscriber that counts) and a task pool of 4; the load side is a
//! bus connection of its own, as another process would hold.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use oxwork::bus::{self, Bus, BusError, Headers, Task};

/// `__serve-oxwork-bus CMD...`: the tree under test.
pub fn serve(args: &[String]) -> oxwork::Result<()> {
    let mut responder = oxwork::Worker::without_address();
    responder.name("responder");
    responder.on_worker_message(|_, msg| {
        let _ = msg.reply(msg.payload().clone());
    });

    let mut sink = oxwork::Worker::without_address();
    sink.name("sink");
    sink.on_worker_start(|_| {
        let target = Rc::new(Cell::new(u64::MAX));
        let seen = Rc::new(Cell::new(0u64));
        let (t, s) = (target.clone(), seen.clone());
        let ctl = bus::subscribe("bench.ctl", move |m| {
            t.set(m.text().parse().unwrap_or(u64::MAX));
            s.set(0);
            let _ = bus::publish("bench.ready", "ok");
        });
        let oneway = bus::subscribe("bench.oneway", move |_| {
            seen.set(seen.get() + 1);
            if seen.get() == target.get() {
                let _ = bus::publish("bench.done", seen.get().to_string());
            }
        });
        if let Err(e) = ctl.and(oneway) {
            eprintln!("sink cannot subscribe: {e}");
        }
    });

    let procs = std::env::var("BENCH_POOL_PROCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut pool = oxwork::Worker::without_address();
    pool.name("pool").count(procs).task_concurrency(64);
    pool.on_task(|t: Task| Ok::<_, String>(t.payload));
    oxwork::run_all_from(args.iter().cloned())
}

fn runtime() -> tokio::runtime::LocalRuntime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(Default::default())
        .expect("runtime")
}

/// How the load side reaches the bus under test: the hub's socket, or NATS.
#[derive(Clone)]
pub enum Via {
    Hub(std::path::PathBuf),
    Nats(String),
}

async fn connected(via: &Via) -> Result<Bus, String> {
    let b = match via {
        Via::Hub(path) => Bus::connect_hub(path, "oxbench"),
        Via::Nats(url) => Bus::connect_nats(url, "oxbench").map_err(|e| e.to_string())?,
    };
    if b.wait_connected(Duration::from_secs(5)).await {
        Ok(b)
    } else {
        Err("cannot reach the bus".into())
    }
}

/// Runs `once` one round trip after another for `warmup + duration`; returns how many ran after
/// the warm-up and their latencies.
pub async fn round_trips<F, Fut>(
    warmup: Duration,
    duration: Duration,
    mut once: F,
) -> Result<(u64, Histogram<u64>), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < warmup + duration {
        let t0 = Instant::now();
        once().await?;
        if start.elapsed() > warmup {
            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
            n += 1;
        }
    }
    Ok((n, h))
}

/// Sequential asks of the responder on `node` for `duration`: round-trip latency.
pub fn ask_latency(
    via: &Via,
    node: &str,
    warmup: Duration,
    duration: Duration,
) -> Result<(u64, Histogram<u64>), String> {
    runtime().block_on(async {
        let b = connected(via).await?;
        let subject = &format!("ox.w.{node}.responder.0");
        round_trips(warmup, duration, || async {
            b.request(
                subject,
                Headers::new(),
                &b"0123456789abcdef"[..],
                Duration::from_secs(5),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
        .await
    })
}

/// Publishes `count` 16-byte messages as fast as the bus takes them; the sink reports when it
/// has seen them all. Returns messages per second.
pub fn one_way(via: &Via, count: u64) -> Result<f64, String> {
    runtime().block_on(async {
        let b = connected(via).await?;
        let done = Rc::new(RefCell::new(None::<Instant>));
        let ready = Rc::new(Cell::new(false));
        let d = done.clone();
        b.subscribe("ox.ch.bench.done", None, move |_| {
            *d.borrow_mut() = Some(Instant::now())
        })
        .map_err(|e| e.to_string())?;
        let r = ready.clone();
        b.subscribe("ox.ch.bench.ready", None, move |_| r.set(true))
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.publish("ox.ch.bench.ctl", count.to_string())
            .map_err(|e| e.to_string())?;
        let wait_until = Instant::now() + Duration::from_secs(5);
        while !ready.get() && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let payload = bytes::Bytes::from_static(b"0123456789abcdef");
        let start = Instant::now();
        let mut sent = 0;
        while sent < count {
            match b.publish("ox.ch.bench.oneway", payload.clone()) {
                Ok(()) => sent += 1,
                Err(BusError::Backpressure) => tokio::task::yield_now().await,
                Err(e) => return Err(e.to_string()),
            }
            if sent % 4096 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(t) = *done.borrow() {
                return Ok(count as f64 / (t - start).as_secs_f64());
            }
            if Instant::now() > deadline {
                return Err("the sink never saw every message".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

/// Two submitters keep `in_flight` trivial tasks each in flight for `duration`: tasks per
/// second through the pool of 4.
pub fn pool_throughput(
    via: &Via,
    in_flight: usize,
    duration: Duration,
) -> Result<(f64, BTreeMap<String, u64>), String> {
    runtime().block_on(async {
        let done = Rc::new(Cell::new(0u64));
        let errors: Rc<RefCell<BTreeMap<String, u64>>> = Rc::default();
        let start = Instant::now();
        let end = start + duration;
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let b = connected(via).await?;
            for _ in 0..in_flight {
                let (b, done, errors) = (b.clone(), done.clone(), errors.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    while Instant::now() < end {
                        let opts = bus::SubmitOptions {
                            timeout: Duration::from_secs(10),
                            ..Default::default()
                        };
                        match b.submit("pool", &b"x"[..], opts).await {
                            Ok(_) => done.set(done.get() + 1),
                            Err(e) => *errors.borrow_mut().entry(e.to_string()).or_default() += 1,
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let rate = done.get() as f64 / start.elapsed().as_secs_f64();
        let errors = errors.borrow().clone();
        Ok((rate, errors))
    })
}
