//! The scenarios, each run against oxwork and its references in the same run, alternating.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, Proto, Spec};
use crate::procstat;
use crate::servers::{Kind, Running};

/// One measurement of one server in one scenario (or the median of several).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Row {
    pub scenario: String,
    pub server: String,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub errors: f64,
    pub user_us_per_req: f64,
    pub sys_us_per_req: f64,
    /// Every system call of the server processes per request (perf), or -1 when perf is
    /// unavailable.
    pub syscalls_per_req: f64,
    pub peak_rss_mb: f64,
    /// Scenario-specific figures (idle memory, reload times, ...).
    pub extra: BTreeMap<String, f64>,
}

pub enum Plan {
    Throughput {
        proto: Proto,
        connections: usize,
        depth: usize,
        size: usize,
        servers: Vec<Kind>,
        /// The servers on the server core alone (the load on the other), or on every core.
        pinned: bool,
    },
    Idle {
        connections: usize,
        servers: Vec<Kind>,
    },
    Reload,
    Bus,
    NatsNodes,
    Photos,
}

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub plan: Plan,
}

pub fn all() -> Vec<Scenario> {
    use Kind::*;
    vec![
        Scenario {
            name: "text-echo",
            what: "a. text echo, 50 connections, one 64-byte message in flight each",
            plan: Plan::Throughput { proto: Proto::Text, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(1), Tokio], pinned: true },
        },
        Scenario {
            name: "frame-echo",
            what: "frame echo, 50 connections, one 64-byte message in flight each",
            plan: Plan::Throughput { proto: Proto::Frame, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(1), Tokio], pinned: true },
        },
        Scenario {
            name: "text-pipelined",
            what: "text echo, 50 connections, 16 messages per write",
            plan: Plan::Throughput { proto: Proto::Text, connections: 50, depth: 16, size: 64, servers: vec![Oxwork(1), Tokio], pinned: true },
        },
        Scenario {
            name: "http-hello",
            what: "b. HTTP hello world, 100 keep-alive connections (and wrk, when installed)",
            plan: Plan::Throughput { proto: Proto::Http, connections: 100, depth: 1, size: 0, servers: vec![Oxwork(1), Tokio, Hyper], pinned: true },
        },
        Scenario {
            name: "http-pipelined",
            what: "c. HTTP hello world pipelined, depth 16",
            plan: Plan::Throughput { proto: Proto::Http, connections: 100, depth: 16, size: 0, servers: vec![Oxwork(1), Tokio, Hyper], pinned: true },
        },
        Scenario {
            name: "websocket-echo",
            what: "d. websocket echo, 50 connections",
            plan: Plan::Throughput { proto: Proto::WebSocket, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(1), Tokio], pinned: true },
        },
        Scenario {
            name: "websocket-json",
            what: "websocket echo of a 512-byte JSON chat message, 50 connections (the plain row for deflate)",
            plan: Plan::Throughput { proto: Proto::WebSocketJson, connections: 50, depth: 1, size: 512, servers: vec![Oxwork(1), Tokio], pinned: true },
        },
        Scenario {
            name: "websocket-deflate",
            what: "the same with permessage-deflate (level 1, no context takeover): bytes on the wire per message and user CPU against websocket-json",
            plan: Plan::Throughput { proto: Proto::WebSocketDeflate, connections: 50, depth: 1, size: 512, servers: vec![Oxwork(1)], pinned: true },
        },
        Scenario {
            name: "text-echo-2p",
            what: "text echo, 50 connections opened in a burst, on 2 processes against tokio's multi-threaded runtime with 2 threads; servers on both cores (the load shares one): latency tails, CPU, and the spread of connections and CPU over the processes",
            plan: Plan::Throughput { proto: Proto::Text, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(2), TokioMt(2)], pinned: false },
        },
        Scenario {
            name: "text-echo-2p-one-core",
            what: "the same with the servers pinned to one core (2 processes, or 2 threads, sharing it)",
            plan: Plan::Throughput { proto: Proto::Text, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(2), TokioMt(2)], pinned: true },
        },
        Scenario {
            name: "websocket-echo-2p",
            what: "websocket echo, 50 connections, 2 processes against 2 runtime threads, both cores",
            plan: Plan::Throughput { proto: Proto::WebSocket, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(2), TokioMt(2)], pinned: false },
        },
        Scenario {
            name: "websocket-echo-2p-one-core",
            what: "the same pinned to one core",
            plan: Plan::Throughput { proto: Proto::WebSocket, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(2), TokioMt(2)], pinned: true },
        },
        Scenario {
            name: "http-hello-2p",
            what: "HTTP hello, 100 keep-alive connections, 2 processes against 2 runtime threads, both cores",
            plan: Plan::Throughput { proto: Proto::Http, connections: 100, depth: 1, size: 0, servers: vec![Oxwork(2), TokioMt(2)], pinned: false },
        },
        Scenario {
            name: "spread",
            what: "how 50 connections opened in a burst, then echoing, spread over 2 and 4 processes sharing one socket, and with reuse_port (a socket each): the least and largest share of connections and of CPU per process",
            plan: Plan::Throughput { proto: Proto::Text, connections: 50, depth: 1, size: 64, servers: vec![Oxwork(2), OxworkReusePort(2), Oxwork(4), OxworkReusePort(4)], pinned: false },
        },
        Scenario {
            name: "idle-10k",
            what: "e. 10,000 idle websocket connections held: memory per connection and time to accept them",
            plan: Plan::Idle { connections: 10_000, servers: vec![Oxwork(1), Tokio] },
        },
        Scenario {
            name: "bus",
            what: "f. bus: ask round trip (against a raw TCP ping-pong), one-way 16-byte messages, task pool of 4 with 2 submitters; the same patterns through nats-server",
            plan: Plan::Bus,
        },
        Scenario {
            name: "nats-nodes",
            what: "h. nodes on a nats-server: ask across nodes (against raw async-nats request/reply), durable task pool of 4 on one node, then 2 + 2 on two nodes (against a raw JetStream work queue: publish, pull, reply, ack with async-nats alone)",
            plan: Plan::NatsNodes,
        },
        Scenario {
            name: "photos",
            what: "i. the photo service end to end: 24 photos of 1600x1200 uploaded in one form until the last one's three sizes are stored, with a thumbnail pool of 1 and of 2 processes, against the same decode-orient-resize-encode loop in one plain process (the floor)",
            plan: Plan::Photos,
        },
        Scenario {
            name: "startup-reload",
            what: "g. start-up of master + 4 workers, and a full reload under churn: wall time and failed requests; then HTTP keep-alive clients (a new connection after `Connection: close`) through 2 reloads: every response must be a whole 200",
            plan: Plan::Reload,
        },
    ]
}

/// How hard to push: the full run, or the smoke run that only proves every scenario works.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    pub reps: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_connections: usize,
    pub idle_connections: Option<usize>,
    /// Overrides of the scenarios' own connection count, depth and message size.
    pub connections: Option<usize>,
    pub depth: Option<usize>,
    pub size: Option<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn median_row(rows: &[Row]) -> Row {
    let pick = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
    let mut extra = BTreeMap::new();
    if let Some(first) = rows.first() {
        for k in first.extra.keys() {
            extra.insert(
                k.clone(),
                median(
                    rows.iter()
                        .filter_map(|r| r.extra.get(k).copied())
                        .collect(),
                ),
            );
        }
    }
    Row {
        scenario: rows.first().map(|r| r.scenario.clone()).unwrap_or_default(),
        server: rows.first().map(|r| r.server.clone()).unwrap_or_default(),
        rps: pick(|r| r.rps),
        p50_us: pick(|r| r.p50_us),
        p90_us: pick(|r| r.p90_us),
        p99_us: pick(|r| r.p99_us),
        p999_us: pick(|r| r.p999_us),
        errors: pick(|r| r.errors),
        user_us_per_req: pick(|r| r.user_us_per_req),
        sys_us_per_req: pick(|r| r.sys_us_per_req),
        syscalls_per_req: pick(|r| r.syscalls_per_req),
        peak_rss_mb: pick(|r| r.peak_rss_mb),
        extra,
    }
}

/// Runs one scenario: every server, `reps` times, alternating; returns the median per server.
pub fn run(s: &Scenario, effort: Effort) -> Result<Vec<Row>, String> {
    match &s.plan {
        Plan::Throughput {
            proto,
            connections,
            depth,
            size,
            servers,
            pinned,
        } => {
            let spec = Spec {
                proto: *proto,
                connections: effort
                    .connections
                    .unwrap_or(*connections)
                    .min(effort.max_connections),
                depth: effort.depth.unwrap_or(*depth).max(1),
                size: effort.size.unwrap_or(*size),
                warmup: effort.warmup,
                duration: effort.duration,
            };
            let mut per_server: BTreeMap<String, Vec<Row>> = BTreeMap::new();
            for _ in 0..effort.reps {
                for kind in servers {
                    let row = throughput(s.name, *kind, spec, *pinned)?;
                    per_server.entry(row.server.clone()).or_default().push(row);
                }
            }
            Ok(servers
                .iter()
                .filter_map(|k| per_server.get(&k.label()).map(|r| median_row(r)))
                .collect())
        }
        Plan::Idle {
            connections,
            servers,
        } => {
            let n = effort.idle_connections.unwrap_or(*connections);
            let mut per_server: BTreeMap<String, Vec<Row>> = BTreeMap::new();
            for _ in 0..effort.reps {
                for kind in servers {
                    let row = idle(s.name, *kind, n)?;
                    per_server.entry(row.server.clone()).or_default().push(row);
                }
            }
            Ok(servers
                .iter()
                .filter_map(|k| per_server.get(&k.label()).map(|r| median_row(r)))
                .collect())
        }
        Plan::Bus => {
            let mut rows = Vec::new();
            for _ in 0..effort.reps {
                rows.extend(bus_rows(s.name, effort)?);
            }
            let mut by: BTreeMap<String, Vec<Row>> = BTreeMap::new();
            for r in rows {
                by.entry(r.server.clone()).or_default().push(r);
            }
            Ok(by.values().map(|r| median_row(r)).collect())
        }
        Plan::Reload => {
            let (mut rows, mut http) = (Vec::new(), Vec::new());
            for _ in 0..effort.reps {
                rows.push(reload(s.name, effort)?);
                http.push(reload_under_keep_alive(s.name, effort)?);
            }
            Ok(vec![median_row(&rows), median_row(&http)])
        }
        Plan::Photos => {
            let smoke = effort.reps == 1 && effort.duration < Duration::from_secs(1);
            let mut rows = Vec::new();
            for _ in 0..effort.reps {
                rows.push(photo_row(s.name, smoke)?);
            }
            Ok(vec![median_row(&rows)])
        }
        Plan::NatsNodes => {
            let mut by: BTreeMap<String, Vec<Row>> = BTreeMap::new();
            for _ in 0..effort.reps {
                for r in nats_node_rows(s.name, effort)? {
                    by.entry(r.server.clone()).or_default().push(r);
                }
            }
            Ok(by.values().map(|r| median_row(r)).collect())
        }
    }
}

fn latency_row(
    scenario: &str,
    server: &str,
    n: u64,
    h: &hdrhistogram::Histogram<u64>,
    effort: Effort,
) -> Row {
    Row {
        scenario: scenario.into(),
        server: server.into(),
        rps: n as f64 / effort.duration.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5) as f64,
        p90_us: h.value_at_quantile(0.9) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        p999_us: h.value_at_quantile(0.999) as f64,
        syscalls_per_req: -1.0,
        ..Row::default()
    }
}

fn photo_row(scenario: &str, smoke: bool) -> Result<Row, String> {
    let f = crate::photo_service::measure(smoke)?;
    let mut extra = BTreeMap::new();
    extra.insert("floor_photos_per_sec".into(), f.floor);
    extra.insert("pool_1_photos_per_sec".into(), f.pool_1);
    extra.insert("pool_2_photos_per_sec".into(), f.pool_2);
    // What the plumbing costs (1 process against the floor), and what a second one buys.
    extra.insert("pool_1_vs_floor".into(), f.pool_1 / f.floor);
    extra.insert("pool_2_vs_floor".into(), f.pool_2 / f.floor);
    // The crate choice: three sizes from a decoded photo, SIMD against the image crate's own.
    extra.insert("decode_ms".into(), f.decode_ms);
    extra.insert("resize_ms_fast_image_resize".into(), f.resize_ms_simd);
    extra.insert("resize_ms_image_crate".into(), f.resize_ms_image);
    Ok(Row {
        scenario: scenario.into(),
        server: "oxwork photo service".into(),
        rps: f.pool_2,
        errors: f.failed as f64,
        syscalls_per_req: -1.0,
        extra,
        ..Row::default()
    })
}

fn nats_node_rows(scenario: &str, effort: Effort) -> Result<Vec<Row>, String> {
    let f = crate::nats_nodes::measure(effort.warmup, effort.duration)?;
    let mut ask = latency_row(
        scenario,
        "oxwork ask across nodes via NATS",
        f.asks,
        &f.ask_hist,
        effort,
    );
    ask.errors = f.task_errors as f64;
    ask.extra
        .insert("pool_tasks_per_sec_1_node".into(), f.tasks_one_node);
    ask.extra
        .insert("pool_tasks_per_sec_2_nodes".into(), f.tasks_two_nodes);
    // The target: oxwork's durable pool at >= 0.8x what JetStream gives a raw client.
    ask.extra.insert(
        "pool_vs_raw_jetstream".into(),
        f.tasks_one_node / f.jetstream_tasks.max(1.0),
    );
    let mut jetstream = Row {
        scenario: scenario.into(),
        server: "JetStream work queue, async-nats alone (durable tasks)".into(),
        rps: f.jetstream_tasks,
        syscalls_per_req: -1.0,
        ..Row::default()
    };
    jetstream
        .extra
        .insert("tasks_per_sec".into(), f.jetstream_tasks);
    let raw = latency_row(
        scenario,
        "async-nats request/reply (raw)",
        f.raw_requests,
        &f.raw_hist,
        effort,
    );
    Ok(vec![ask, raw, jetstream])
}

fn throughput(scenario: &str, kind: Kind, spec: Spec, pinned: bool) -> Result<Row, String> {
    let server = Running::start(kind, spec.proto.scheme(), pinned)?;
    let pids = server.pids.clone();
    let before = std::cell::Cell::new(procstat::Sample::default());
    let before_each = std::cell::RefCell::new(Vec::new());
    let allocations_before = std::cell::Cell::new(None);
    let connections_each = std::cell::RefCell::new(Vec::new());
    let counter = std::cell::RefCell::new(None);
    let outcome = load::run(spec, server.addr(), || {
        *counter.borrow_mut() = procstat::SyscallCounter::start(&pids);
        *before_each.borrow_mut() = pids.iter().map(|p| procstat::sample(&[*p])).collect();
        allocations_before.set(crate::allocations::published(&pids));
        before.set(procstat::sample(&pids));
        if pids.len() > 1 {
            *connections_each.borrow_mut() = server.connections_per_process();
        }
    });
    let used = procstat::sample(&pids) - before.get();
    let allocations = crate::allocations::published(&pids)
        .zip(allocations_before.get())
        .map(|(after, before)| after.saturating_sub(before));
    let cpu_each: Vec<f64> = pids
        .iter()
        .zip(before_each.borrow().iter())
        .map(|(p, b)| {
            let d = procstat::sample(&[*p]) - *b;
            d.user_secs + d.sys_secs
        })
        .collect();
    let syscalls = counter.into_inner().and_then(|c| c.finish());
    let mut extra = BTreeMap::new();
    if let Some(n) = allocations {
        extra.insert(
            "allocations_per_req".into(),
            n as f64 / outcome.requests.max(1) as f64,
        );
    }
    if pids.len() > 1 {
        let connections: Vec<f64> = connections_each
            .borrow()
            .iter()
            .map(|&c| c as f64)
            .collect();
        for (what, each) in [("conns", &connections), ("cpu", &cpu_each)] {
            let (least, most) = shares(each);
            extra.insert(format!("{what}_share_least_pct"), least);
            extra.insert(format!("{what}_share_most_pct"), most);
        }
    }
    if matches!(spec.proto, Proto::WebSocketJson | Proto::WebSocketDeflate) {
        let bytes = load::wire_bytes_per_message(server.addr(), spec.proto, spec.size)?;
        extra.insert("wire_bytes_per_msg".into(), bytes as f64);
    }
    if spec.proto == Proto::Http && spec.depth == 1 {
        if let Some(rps) = wrk(server.addr(), spec.connections, spec.duration) {
            extra.insert("wrk_rps".into(), rps);
        }
    }
    let peak = procstat::peak_rss_bytes(&pids);
    drop(server);
    let reqs = outcome.requests.max(1) as f64;
    let h = &outcome.latency;
    Ok(Row {
        scenario: scenario.into(),
        server: kind.label(),
        rps: outcome.requests as f64 / outcome.elapsed.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5) as f64,
        p90_us: h.value_at_quantile(0.9) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        p999_us: h.value_at_quantile(0.999) as f64,
        errors: outcome.errors as f64,
        user_us_per_req: used.user_secs * 1e6 / reqs,
        sys_us_per_req: used.sys_secs * 1e6 / reqs,
        syscalls_per_req: syscalls.map(|n| n as f64 / reqs).unwrap_or(-1.0),
        peak_rss_mb: peak as f64 / 1048576.0,
        extra,
    })
}

/// The least and the largest share of a total, in percent (0 and 0 for nothing).
fn shares(each: &[f64]) -> (f64, f64) {
    let total: f64 = each.iter().sum();
    if total <= 0.0 || each.is_empty() {
        return (0.0, 0.0);
    }
    let pct = |v: f64| v * 100.0 / total;
    let least = each.iter().copied().fold(f64::INFINITY, f64::min);
    let most = each.iter().copied().fold(0.0, f64::max);
    (pct(least), pct(most))
}

/// Requests per second `wrk` (an outside client) measures, when it is installed.
fn wrk(addr: std::net::SocketAddr, connections: usize, duration: Duration) -> Option<f64> {
    let secs = duration.as_secs().max(1).to_string();
    let url = format!("http://{addr}/");
    let conns = connections.to_string();
    let mut cmd = match crate::pin::server_cpu() {
        Some(_) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "1", "wrk"]);
            c
        }
        None => std::process::Command::new("wrk"),
    };
    let out = cmd
        .args(["-t1", "-c", &conns, "-d", &secs, &url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

fn idle(scenario: &str, kind: Kind, n: usize) -> Result<Row, String> {
    let server = Running::start(kind, "websocket", true)?;
    let pids = server.pids.clone();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = procstat::rss_bytes(&pids);
    let (conns, took, errors) = load::open_idle(server.addr(), n, 256, Proto::WebSocket);
    std::thread::sleep(Duration::from_millis(300));
    let held = procstat::rss_bytes(&pids);
    let opened = conns.len();
    drop(conns);
    drop(server);
    let mut extra = BTreeMap::new();
    extra.insert("connections".into(), opened as f64);
    extra.insert("accept_secs".into(), took.as_secs_f64());
    extra.insert("rss_total_mb".into(), held as f64 / 1048576.0);
    extra.insert("idle_rss_mb".into(), baseline as f64 / 1048576.0);
    extra.insert(
        "bytes_per_conn".into(),
        held.saturating_sub(baseline) as f64 / opened.max(1) as f64,
    );
    Ok(Row {
        scenario: scenario.into(),
        server: kind.label(),
        errors: errors as f64,
        peak_rss_mb: held as f64 / 1048576.0,
        extra,
        ..Row::default()
    })
}

fn bus_rows(scenario: &str, effort: Effort) -> Result<Vec<Row>, String> {
    // The floor: one TCP connection ping-ponging 16-byte frames with the tokio server.
    let floor_spec = Spec {
        proto: Proto::Frame,
        connections: 1,
        depth: 1,
        size: 16,
        warmup: effort.warmup,
        duration: effort.duration,
    };
    let mut floor = throughput(scenario, Kind::Tokio, floor_spec, true)?;
    floor.server = "raw TCP ping-pong (floor)".into();

    let tree = Running::start(Kind::OxworkBus, "text", true)?;
    let hub = crate::bus::Via::Hub(tree.hub_path().ok_or("no hub path")?);
    let (asks, h) = crate::bus::ask_latency(&hub, "bench", effort.warmup, effort.duration)?;
    let count = if effort.max_connections < 50 {
        20_000
    } else {
        2_000_000
    };
    let one_way = crate::bus::one_way(&hub, count)?;
    // CPU per task, of the tree (hub and pool processes) and of the submitting side (this
    // process): steadier than the rate on a noisy machine.
    let own = [std::process::id()];
    let (tree_before, load_before) = (procstat::sample(&tree.pids), procstat::sample(&own));
    let (tasks, task_errors) = crate::bus::pool_throughput(&hub, 128, effort.duration)?;
    let (tree_cpu, load_cpu) = (
        procstat::sample(&tree.pids) - tree_before,
        procstat::sample(&own) - load_before,
    );
    let done = tasks * effort.duration.as_secs_f64();
    let us_per_task = |s: procstat::Sample| (s.user_secs + s.sys_secs) * 1e6 / done.max(1.0);
    let peak = procstat::peak_rss_bytes(&tree.pids);
    drop(tree);
    let mut extra = BTreeMap::new();
    extra.insert("one_way_msgs_per_sec".into(), one_way);
    extra.insert("pool_tasks_per_sec".into(), tasks);
    extra.insert("pool_tree_cpu_us_per_task".into(), us_per_task(tree_cpu));
    extra.insert(
        "pool_submitter_cpu_us_per_task".into(),
        us_per_task(load_cpu),
    );
    extra.insert(
        "task_errors".into(),
        task_errors.values().sum::<u64>() as f64,
    );
    let ask = Row {
        errors: task_errors.values().sum::<u64>() as f64,
        peak_rss_mb: peak as f64 / 1048576.0,
        extra,
        ..latency_row(scenario, "oxwork ask_worker via hub", asks, &h, effort)
    };
    let mut rows = vec![floor, ask];
    match nats_row(scenario, effort, count) {
        Ok(r) => rows.push(r),
        Err(e) => eprintln!("nats-server comparison skipped: {e}"),
    }
    Ok(rows)
}

/// The same three patterns through nats-server with async-nats.
fn nats_row(scenario: &str, effort: Effort, count: u64) -> Result<Row, String> {
    let tree = crate::nats::NatsTree::start()?;
    let (n, h) = crate::nats::request_latency(&tree.url, effort.warmup, effort.duration)?;
    let (one_way, dropped) = crate::nats::one_way(&tree.url, count)?;
    let queue = crate::nats::queue_throughput(&tree.url, 128, effort.duration)?;
    let mut extra = BTreeMap::new();
    extra.insert("one_way_msgs_per_sec".into(), one_way);
    extra.insert("queue_group_msgs_per_sec".into(), queue);
    extra.insert("one_way_dropped".into(), dropped as f64);
    Ok(Row {
        extra,
        ..latency_row(scenario, "nats-server request/reply", n, &h, effort)
    })
}

/// Two reloads of 4 HTTP processes under 16 keep-alive clients that parse every response:
/// a failed request is a client-visible error.
fn reload_under_keep_alive(scenario: &str, effort: Effort) -> Result<Row, String> {
    let server = Running::start(Kind::Oxwork(4), "http", true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || load::keep_alive_http(addr, 16, stop))
    };
    let pause = effort.warmup.max(Duration::from_millis(300));
    std::thread::sleep(pause);
    for _ in 0..2 {
        let out = server.oxwork_command(&["reload"])?;
        if !out.status.success() {
            stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "reload failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::thread::sleep(pause);
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, why) = load.join().map_err(|_| "load thread panicked")?;
    if failed > 0 {
        eprintln!("HTTP failures during reloads: {why:?}");
    }
    let mut extra = BTreeMap::new();
    extra.insert("responses".into(), ok as f64);
    extra.insert("failed_requests".into(), failed as f64);
    extra.insert("reloads".into(), 2.0);
    Ok(Row {
        scenario: scenario.into(),
        server: format!("{} http keep-alive", Kind::Oxwork(4).label()),
        errors: failed as f64,
        extra,
        ..Row::default()
    })
}

fn reload(scenario: &str, effort: Effort) -> Result<Row, String> {
    let server = Running::start(Kind::Oxwork(4), "text", true)?;
    let startup = server.started_in;
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr();
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || load::churn(addr, 2, stop))
    };
    std::thread::sleep(effort.warmup.max(Duration::from_millis(200)));
    let t0 = Instant::now();
    let out = server.oxwork_command(&["reload"])?;
    let reload_took = t0.elapsed();
    std::thread::sleep(effort.warmup.max(Duration::from_millis(200)));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, why) = churn.join().map_err(|_| "churn thread panicked")?;
    if !out.status.success() {
        return Err(format!(
            "reload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if failed > 0 {
        eprintln!("failures during reload: {why:?}");
    }
    let workers: Vec<u32> = server.worker_pids();
    let idle_worker_rss = procstat::rss_bytes(&workers) as f64 / 4.0 / 1048576.0;
    let idle_worker_pss = procstat::pss_bytes(&workers) as f64 / 4.0 / 1048576.0;
    let idle_worker_private = procstat::private_bytes(&workers) as f64 / 4.0 / 1048576.0;
    let mut extra = BTreeMap::new();
    extra.insert("startup_ms".into(), startup.as_secs_f64() * 1000.0);
    extra.insert("reload_ms".into(), reload_took.as_secs_f64() * 1000.0);
    extra.insert("exchanges".into(), ok as f64);
    extra.insert("failed_requests".into(), failed as f64);
    extra.insert("worker_rss_mb".into(), idle_worker_rss);
    extra.insert("worker_pss_mb".into(), idle_worker_pss);
    extra.insert("worker_private_mb".into(), idle_worker_private);
    Ok(Row {
        scenario: scenario.into(),
        server: Kind::Oxwork(4).label(),
        errors: failed as f64,
        extra,
        ..Row::default()
    })
}
