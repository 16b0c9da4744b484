//! Scenario i: oxwork trees as nodes of one cluster on a nats-server the harness starts. The
//! load side is a bus connection of its own, as a process on another node would hold: asks to
//! a responder on node `b` (against raw async-nats request/reply on the same server), and
//! durable task throughput with the pool's 4 processes on one node, then split 2 + 2 over two.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::bus::Via;
use crate::pin;

/// One node: `__serve-oxwork-bus start --group ...` with its own run directory.
struct Node {
    child: Child,
    run_dir: tempfile::TempDir,
}

impl Node {
    fn start(
        url: &str,
        node: &str,
        groups: &[&str],
        pool_procs: u32,
        procs: usize,
    ) -> Result<Node, String> {
        let run_dir = crate::private_tempdir().map_err(|e| e.to_string())?;
        let mut args = vec!["__serve-oxwork-bus".to_string(), "start".to_string()];
        for g in groups {
            args.extend(["--group".to_string(), g.to_string()]);
        }
        let child = pin::self_command(&args, true)
            .env("OXWORK_RUN_DIR", run_dir.path())
            .env("OXWORK_LOG", "warn")
            .env("OXWORK_BUS", url)
            .env("OXWORK_NODE", node)
            .env("BENCH_POOL_PROCS", pool_procs.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start node {node}: {e}"))?;
        let mut n = Node { child, run_dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while n.ready_processes() != procs {
            if Instant::now() > deadline {
                return Err(format!("node {node} did not become ready"));
            }
            if let Ok(Some(st)) = n.child.try_wait() {
                return Err(format!("node {node} exited at start: {st}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    fn command(&self, cmd: &str) -> Option<std::process::Output> {
        pin::self_command(&["__serve-oxwork-bus".to_string(), cmd.to_string()], false)
            .arg("--json")
            .env("OXWORK_RUN_DIR", self.run_dir.path())
            .output()
            .ok()
    }

    fn ready_processes(&self) -> usize {
        self.command("status")
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["processes"].as_array().map(|a| a.len()))
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = pin::self_command(
            &["__serve-oxwork-bus".to_string(), "stop".to_string()],
            false,
        )
        .env("OXWORK_RUN_DIR", self.run_dir.path())
        .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the scenario measured.
pub struct Figures {
    pub asks: u64,
    pub ask_hist: hdrhistogram::Histogram<u64>,
    pub raw_requests: u64,
    pub raw_hist: hdrhistogram::Histogram<u64>,
    pub tasks_one_node: f64,
    pub tasks_two_nodes: f64,
    pub task_errors: u64,
    /// The same durable-task load through JetStream with async-nats alone.
    pub jetstream_tasks: f64,
}

pub fn measure(warmup: Duration, duration: Duration) -> Result<Figures, String> {
    let nats = crate::nats::NatsTree::start()?;
    let via = Via::Nats(nats.url.clone());
    let (raw_requests, raw_hist) = crate::nats::request_latency(&nats.url, warmup, duration)?;
    let jetstream_tasks = crate::nats::jetstream_tasks(&nats.url, 128, duration)?;
    let (asks, ask_hist, tasks_one_node, errors_one) = {
        let _b = Node::start(&nats.url, "b", &["responder", "pool"], 4, 5)?;
        let (asks, hist) = crate::bus::ask_latency(&via, "b", warmup, duration)?;
        let (rate, errors) = crate::bus::pool_throughput(&via, 128, duration)?;
        (asks, hist, rate, errors.values().sum::<u64>())
    };
    let (tasks_two_nodes, errors_two) = {
        let _b = Node::start(&nats.url, "b", &["pool"], 2, 2)?;
        let _c = Node::start(&nats.url, "c", &["pool"], 2, 2)?;
        let (rate, errors) = crate::bus::pool_throughput(&via, 128, duration)?;
        (rate, errors.values().sum::<u64>())
    };
    Ok(Figures {
        asks,
        ask_hist,
        raw_requests,
        raw_hist,
        tasks_one_node,
        tasks_two_nodes,
        task_errors: errors_one + errors_two,
        jetstream_tasks,
    })
}
