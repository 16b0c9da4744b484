//! `start --metrics ADDR`: the master serves Prometheus metrics at `http://ADDR/metrics`, made
//! at each scrape from the same report `status --json` prints (each process asked, at most
//! 1 s), in the OpenMetrics text format (prometheus-client encodes it).

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Master;
use crate::bus::PoolStats;
use crate::process::status::{ProcessRow, StatusReport};

/// The longest request head taken, and how long a scraper has to send it.
const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(String, String)>;

fn process_labels(worker: &str, id: u32, pid: u32) -> Labels {
    vec![
        ("group".into(), worker.to_string()),
        ("id".into(), id.to_string()),
        ("pid".into(), pid.to_string()),
    ]
}

/// One metric family per figure, registered under `name` with `help`.
struct Families {
    registry: Registry,
}

impl Families {
    fn gauge(&mut self, name: &str, help: &str) -> Family<Labels, Gauge> {
        let f = Family::<Labels, Gauge>::default();
        self.registry.register(name, help, f.clone());
        f
    }

    fn counter(&mut self, name: &str, help: &str) -> Family<Labels, Counter> {
        let f = Family::<Labels, Counter>::default();
        self.registry.register(name, help, f.clone());
        f
    }
}

fn set(f: &Family<Labels, Gauge>, labels: &Labels, v: u64) {
    f.get_or_create(labels)
        .set(i64::try_from(v).unwrap_or(i64::MAX));
}

fn count(f: &Family<Labels, Counter>, labels: &Labels, v: u64) {
    f.get_or_create(labels).inc_by(v);
}

/// A figure of a row of the report.
type Figure<T> = fn(&T) -> u64;

/// Per-process gauges: name, help, figure.
const PROCESS_GAUGES: &[(&str, &str, Figure<ProcessRow>)] = &[
    (
        "process_up",
        "1 for a process that answered, 0 for one that was busy",
        |p| u64::from(!p.busy),
    ),
    ("process_connections", "Connections open now", |p| {
        p.stats.connections
    }),
    ("process_resident_memory_bytes", "Resident memory", |p| {
        p.memory_bytes
    }),
    ("process_timers", "Timers active now", |p| p.stats.timers),
    (
        "process_retiring",
        "1 while the process is being replaced",
        |p| u64::from(p.retiring),
    ),
];

/// Per-process counters (`_total` is added to their names).
const PROCESS_COUNTERS: &[(&str, &str, Figure<ProcessRow>)] = &[
    (
        "process_accepted_connections",
        "Connections accepted or opened",
        |p| p.stats.total_connections,
    ),
    ("process_messages", "Messages received", |p| {
        p.stats.messages
    }),
    (
        "process_received_bytes",
        "Bytes read from connections",
        |p| p.stats.bytes_in,
    ),
    ("process_sent_bytes", "Bytes written to connections", |p| {
        p.stats.bytes_out
    }),
    (
        "process_send_failures",
        "Sends refused: buffer full or closed",
        |p| p.stats.failed_sends,
    ),
    ("process_panics", "Panics caught in callbacks", |p| {
        p.stats.panics
    }),
    (
        "process_rejected_connections",
        "Connections closed for bad input",
        |p| p.stats.rejected,
    ),
    ("process_tasks_done", "Tasks this process completed", |p| {
        p.stats.tasks_done
    }),
    ("process_tasks_failed", "Tasks this process failed", |p| {
        p.stats.tasks_failed
    }),
];

/// Per-pool gauges.
const POOL_GAUGES: &[(&str, &str, Figure<PoolStats>)] = &[
    ("pool_queued", "Tasks waiting for a process", |p| p.queued),
    ("pool_running", "Tasks being handled", |p| p.running),
    (
        "pool_done",
        "Tasks completed (on NATS: by this node's processes)",
        |p| p.done,
    ),
    (
        "pool_failed",
        "Tasks failed, refused or out of retries",
        |p| p.failed,
    ),
    (
        "pool_retried",
        "Tasks given to another process after theirs died",
        |p| p.retried,
    ),
    (
        "pool_dead",
        "Tasks out of retries, kept for an operator",
        |p| p.dead,
    ),
    ("pool_consumers", "Processes taking tasks", |p| p.consumers),
];

/// The report as Prometheus text.
pub(super) fn render(r: &StatusReport) -> String {
    let mut m = Families {
        registry: Registry::with_prefix("oxwork"),
    };
    for (name, help, of) in PROCESS_GAUGES {
        let family = m.gauge(name, help);
        for p in &r.processes {
            set(&family, &process_labels(&p.worker, p.id, p.pid), of(p));
        }
    }
    for (name, help, of) in PROCESS_COUNTERS {
        let family = m.counter(name, help);
        for p in &r.processes {
            count(&family, &process_labels(&p.worker, p.id, p.pid), of(p));
        }
    }
    // Per group: the sums a dashboard wants without a query.
    let group_conns = m.gauge(
        "group_connections",
        "Connections open now, per worker group",
    );
    let group_messages = m.counter("group_messages", "Messages received, per worker group");
    let group_processes = m.gauge("group_processes", "Processes running, per worker group");
    let mut groups: Vec<&str> = r.processes.iter().map(|p| p.worker.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        let l: Labels = vec![("group".into(), g.to_string())];
        let of = || r.processes.iter().filter(move |p| p.worker == g);
        set(&group_conns, &l, of().map(|p| p.stats.connections).sum());
        count(&group_messages, &l, of().map(|p| p.stats.messages).sum());
        set(
            &group_processes,
            &l,
            of().filter(|p| !p.retiring).count() as u64,
        );
    }
    let exits = m.counter(
        "exits",
        "Processes that exited, per group and exit status (a restart follows each unplanned one)",
    );
    for e in &r.exits {
        let l: Labels = vec![
            ("group".into(), e.worker.clone()),
            ("status".into(), e.status.clone()),
        ];
        count(&exits, &l, e.count);
    }
    let master_memory = m.gauge(
        "master_resident_memory_bytes",
        "The master's resident memory",
    );
    set(&master_memory, &Vec::new(), r.master_memory_bytes);
    let uptime = m.gauge("master_uptime_seconds", "Seconds since the master started");
    set(&uptime, &Vec::new(), r.uptime_secs as u64);
    let bus = m.gauge("bus_connected", "1 while the master's bus connection is up");
    set(
        &bus,
        &vec![("backend".into(), r.bus.backend.clone())],
        u64::from(r.bus.connected),
    );
    let pools = r
        .hub
        .as_ref()
        .filter(|h| !h.pools.is_empty())
        .map_or(&r.bus.pools, |h| &h.pools);
    for (name, help, of) in POOL_GAUGES {
        let family = m.gauge(name, help);
        for p in pools {
            set(&family, &vec![("pool".into(), p.name.clone())], of(p));
        }
    }
    if let Some(h) = &r.hub {
        let delivered = m.gauge("hub_delivered", "Messages the hub delivered");
        let dropped = m.gauge(
            "hub_dropped",
            "Messages the hub dropped: a subscriber's backlog full",
        );
        let clients = m.gauge("hub_clients", "Processes connected to the hub");
        set(&delivered, &Vec::new(), h.delivered);
        set(&dropped, &Vec::new(), h.dropped);
        set(&clients, &Vec::new(), h.clients);
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &m.registry) {
        tracing::error!("cannot encode the metrics: {e}");
    }
    out
}

/// Binds the metrics address (at `start`, so a taken port is an error there).
pub(super) async fn bind(addr: std::net::SocketAddr) -> crate::error::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| crate::error::Error::io(format!("cannot serve metrics on {addr}"), e))
}

/// Serves scrapes until the master ends.
pub(super) async fn serve(master: Master, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::task::spawn_local(answer(master.clone(), stream));
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request, one response, then the connection closes.
async fn answer(master: Master, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_HEAD {
                return false;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if read != Ok(true) {
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let target = match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => (req.method, req.path),
        _ => (None, None),
    };
    let (status, content_type, body) = match target {
        (Some("GET"), Some(path)) if path.split('?').next() == Some("/metrics") => (
            "200 OK",
            // What prometheus-client writes: OpenMetrics 1.0 (Prometheus reads it natively).
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(&master.status().await),
        ),
        (Some(_), Some(_)) => (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
        _ => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
