//! A task pool under load, driven over the bus: the integration tests' pool server, and an
//! example of `on_task_async`, `submit`, and worker messages carrying JSON.
//!
//! `square` is a pool (`POOL_PROCS` processes, default 3; `POOL_CONCURRENCY` tasks each,
//! default 8; `POOL_QUEUE` queued at most, default 100,000; on NATS `POOL_LEASE_MS`, the task
//! lease, default 10,000): a task `n` answers `n*n` after `POOL_TASK_MS` milliseconds
//! (default 0); the task `POOL_POISON` (if set) kills the process that takes it; a task
//! `big:N` answers N bytes (a result too large for the bus, for its test). `submitter`
//! (2 processes) takes a worker message
//! `{"from": A, "count": N, "in_flight": K, "timeout_ms": T}`, submits tasks A..A+N keeping at
//! most K in flight, checks every result, and replies with a JSON summary
//! `{"ok": .., "wrong": .., "errors": {"reason": count}}`; it keeps the summary, and
//! `{"summary_of": A}` asks for it again (`{"running": true}` until the run ends: for a client
//! whose first request went down with the hub). A `square` process answers any worker message
//! with how many tasks it has run (to count the tasks that ran twice).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oxwork::bus::{self, BusError, SubmitOptions, Task};
use oxwork::{run_all, Worker};
use serde::{Deserialize, Serialize};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Deserialize)]
struct Run {
    from: u64,
    count: u64,
    in_flight: usize,
    timeout_ms: u64,
}

/// Tasks this process has run.
static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Finished runs' summaries (JSON), by their first task number.
    static SUMMARIES: RefCell<HashMap<u64, Vec<u8>>> = RefCell::new(HashMap::new());
}

#[derive(Deserialize)]
struct SummaryOf {
    summary_of: u64,
}

#[derive(Serialize, Default)]
struct Summary {
    ok: u64,
    wrong: u64,
    errors: BTreeMap<String, u64>,
}

fn reason(e: &BusError) -> String {
    match e {
        BusError::PoolFull(_) => "pool full".into(),
        BusError::Timeout => "timeout".into(),
        BusError::RetriesExhausted(_) => "retries exhausted".into(),
        other => other.to_string(),
    }
}

fn main() -> oxwork::Result<()> {
    let mut square = Worker::without_address();
    square
        .name("square")
        .count(env("POOL_PROCS", 3))
        .task_concurrency(env("POOL_CONCURRENCY", 8))
        .task_queue_limit(env("POOL_QUEUE", 100_000))
        .task_lease(Duration::from_millis(env("POOL_LEASE_MS", 10_000)));
    let delay = Duration::from_millis(env("POOL_TASK_MS", 0));
    let poison: Option<u64> = std::env::var("POOL_POISON")
        .ok()
        .and_then(|v| v.parse().ok());
    square.on_task_async(move |t: Task| async move {
        // "big:N": a result of N bytes (to see a result too large for the bus refused).
        if let Some(size) = t.text().strip_prefix("big:") {
            let size: usize = size.parse().map_err(|_| "big:<bytes>".to_string())?;
            return Ok::<_, String>("x".repeat(size));
        }
        let n: u64 = t
            .text()
            .parse()
            .map_err(|_| format!("not a number: {}", t.text()))?;
        if poison == Some(n) {
            eprintln!("task {n} is poison: this process dies");
            std::process::exit(3);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        EXECUTIONS.fetch_add(1, Ordering::Relaxed);
        Ok::<_, String>((n * n).to_string())
    });
    square.on_worker_message(|_, msg| {
        let _ = msg.reply(EXECUTIONS.load(Ordering::Relaxed).to_string());
    });

    let mut submitter = Worker::without_address();
    submitter.name("submitter").count(2);
    submitter.on_worker_message(|_, msg| {
        if let Ok(SummaryOf { summary_of }) = msg.json() {
            let kept = SUMMARIES.with(|s| s.borrow().get(&summary_of).cloned());
            let _ = msg.reply(kept.unwrap_or_else(|| br#"{"running":true}"#.to_vec()));
            return;
        }
        let run: Run = match msg.json() {
            Ok(r) => r,
            Err(e) => {
                let _ = msg.reply(format!("bad request: {e}"));
                return;
            }
        };
        oxwork::spawn(async move {
            let summary = Rc::new(RefCell::new(Summary::default()));
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(run.in_flight.max(1)));
            let opts = SubmitOptions {
                timeout: Duration::from_millis(run.timeout_ms),
                ..Default::default()
            };
            let mut tasks = Vec::new();
            for n in run.from..run.from + run.count {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let summary = summary.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let result = bus::submit_with("square", n.to_string(), opts).await;
                    let mut s = summary.borrow_mut();
                    match result {
                        Ok(r) if r == (n * n).to_string().as_bytes() => s.ok += 1,
                        Ok(_) => s.wrong += 1,
                        Err(e) => *s.errors.entry(reason(&e)).or_default() += 1,
                    }
                    drop(permit);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let body = serde_json::to_vec(&*summary.borrow()).unwrap_or_default();
            SUMMARIES.with(|s| s.borrow_mut().insert(run.from, body.clone()));
            if let Err(e) = msg.reply(body) {
                eprintln!("cannot reply: {e}");
            }
        });
    });
    run_all()
}
