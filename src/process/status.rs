//! What `status` and `connections` report, and how they print.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::runtime::stats::ConnectionRow;
use crate::runtime::stats::Snapshot;

/// One worker process in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProcessRow {
    pub(crate) pid: u32,
    pub(crate) worker: String,
    pub(crate) id: u32,
    pub(crate) listen: String,
    pub(crate) memory_bytes: u64,
    pub(crate) uptime_secs: f64,
    /// Did not answer within the status deadline: running a long callback, or stuck.
    pub(crate) busy: bool,
    /// Being replaced by a reload; still finishing its connections.
    pub(crate) retiring: bool,
    pub(crate) stats: Snapshot,
    /// The CPUs it may run on, in Linux's list form ("0-3", "2"); one CPU with
    /// `Worker::cpu_affinity`.
    #[serde(default)]
    pub(crate) cpus: String,
}

/// A worker group's exits, in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExitRow {
    pub(crate) worker: String,
    pub(crate) status: String,
    pub(crate) count: u64,
}

/// The whole `status` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusReport {
    pub(crate) master_pid: u32,
    pub(crate) started_unix: u64,
    pub(crate) uptime_secs: f64,
    pub(crate) load_average: [f64; 3],
    pub(crate) master_memory_bytes: u64,
    /// The CPUs the master may run on, as [`ProcessRow::cpus`].
    #[serde(default)]
    pub(crate) master_cpus: String,
    /// The node name of this tree.
    pub(crate) node: String,
    /// Which bus, and whether the master can reach it.
    #[serde(default)]
    pub(crate) bus: crate::process::cluster::BusStatus,
    /// The hub's figures, when it runs.
    pub(crate) hub: Option<crate::bus::HubStats>,
    pub(crate) processes: Vec<ProcessRow>,
    pub(crate) exits: Vec<ExitRow>,
}

/// One connection in `connections`, with the process holding it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectionListing {
    pub(crate) pid: u32,
    pub(crate) worker: String,
    pub(crate) worker_id: u32,
    #[serde(flatten)]
    pub(crate) conn: ConnectionRow,
}

/// Resident memory of a process, from the `VmRSS` line of `/proc/PID/status` (in kB there,
/// whatever the page size).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The CPUs process `pid` may run on, as `/proc/PID/status` lists them (`0-3,6`).
pub(crate) fn cpus_allowed(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(line.split_whitespace().nth(1)?.to_string())
}

pub(crate) fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn human_bytes(b: u64) -> String {
    if b >= 1024 * 1024 {
        format!("{:.1}M", b as f64 / 1024.0 / 1024.0)
    } else {
        format!("{}K", b / 1024)
    }
}

fn human_duration(secs: f64) -> String {
    let s = secs as u64;
    format!(
        "{} days {} hours {} minutes {} seconds",
        s / 86400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// A Unix time as a date ("Wed, 02 Dec 2026 06:30:00 GMT").
fn started_date(unix: u64) -> String {
    httpdate::HttpDate::from(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// The table `status` prints, in the spirit of Workerman's.
pub(crate) fn render_status(r: &StatusReport, program: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:-^100}", " OXWORK STATUS ");
    let _ = writeln!(
        out,
        "oxwork version: {}   program: {program}   node: {}   master pid: {}",
        env!("CARGO_PKG_VERSION"),
        r.node,
        r.master_pid
    );
    let _ = writeln!(
        out,
        "started: {}   run: {}",
        started_date(r.started_unix),
        human_duration(r.uptime_secs)
    );
    let _ = writeln!(
        out,
        "load average: {:.2}, {:.2}, {:.2}   master memory: {}",
        r.load_average[0],
        r.load_average[1],
        r.load_average[2],
        human_bytes(r.master_memory_bytes)
    );
    let groups: std::collections::BTreeSet<_> = r.processes.iter().map(|p| &p.worker).collect();
    let _ = writeln!(
        out,
        "{} workers   {} processes",
        groups.len(),
        r.processes.len()
    );
    if !r.exits.is_empty() {
        let _ = writeln!(out, "{:-^100}", " EXITS ");
        let _ = writeln!(
            out,
            "{:<16} {:<28} {:>10}",
            "worker", "exit status", "count"
        );
        for e in &r.exits {
            let _ = writeln!(out, "{:<16} {:<28} {:>10}", e.worker, e.status, e.count);
        }
    }
    let _ = writeln!(out, "{:-^100}", " PROCESSES ");
    // The CPUs column only when some process is pinned narrower than the master.
    let pinned = r
        .processes
        .iter()
        .any(|p| !p.cpus.is_empty() && p.cpus != r.master_cpus);
    let cpus = |cpus: &str| {
        if pinned {
            format!(" {cpus}")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:<14} {:<26} {:>5} {:>9} {:>11} {:>8} {:>9} {:>6} {:>6} {:<8}{}",
        "pid",
        "memory",
        "worker",
        "listen",
        "conns",
        "total_con",
        "messages",
        "msg/s",
        "send_fail",
        "timers",
        "panics",
        "status",
        cpus("cpus")
    );
    for p in &r.processes {
        let state = match (p.busy, p.retiring) {
            (_, true) => "retiring",
            (true, _) => "[busy]",
            _ => "[idle]",
        };
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:<14} {:<26} {:>5} {:>9} {:>11} {:>8} {:>9} {:>6} {:>6} {:<8}{}",
            p.pid,
            human_bytes(p.memory_bytes),
            format!("{}#{}", p.worker, p.id),
            p.listen,
            p.stats.connections,
            p.stats.total_connections,
            p.stats.messages,
            p.stats.messages_per_sec,
            p.stats.failed_sends,
            p.stats.timers,
            p.stats.panics,
            state,
            cpus(&p.cpus)
        );
    }
    let _ = writeln!(
        out,
        "{:-^100}\nbus: {}   {}",
        " BUS ",
        r.bus.backend,
        match (
            r.bus.connected,
            r.bus.backend.as_str(),
            r.bus.disconnected_for_ms
        ) {
            (true, ..) => "connected".to_string(),
            (false, "hub", _) => "not running (started on first use)".to_string(),
            (false, _, Some(ms)) => format!(
                "NOT CONNECTED for {} (reconnecting; pools pull nothing meanwhile)",
                human_duration(ms as f64 / 1000.0)
            ),
            (false, ..) => "NOT CONNECTED (reconnecting)".to_string(),
        }
    );
    if !r.bus.pools.is_empty() {
        render_pools(&mut out, &r.bus.pools);
    }
    if let Some(h) = &r.hub {
        let _ = writeln!(
            out,
            "clients {}   subscriptions {}   published {}   delivered {}   dropped {}   no responders {}   shared keys {}",
            h.clients, h.subscriptions, h.published, h.delivered, h.dropped, h.no_responders, h.keys
        );
        if !h.pools.is_empty() {
            render_pools(&mut out, &h.pools);
        }
    }
    let _ = writeln!(out, "{:-^100}", "");
    out
}

fn render_pools(out: &mut String, pools: &[crate::bus::PoolStats]) {
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>6}",
        "task pool", "consumers", "queued", "running", "done", "failed", "retried", "dead"
    );
    for p in pools {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>6}",
            p.name, p.consumers, p.queued, p.running, p.done, p.failed, p.retried, p.dead
        );
    }
}

/// The table `connections` prints.
pub(crate) fn render_connections(rows: &[ConnectionListing]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<14} {:>8} {:<40} {:>12} {:>12} {:>10}",
        "pid", "worker", "conn_id", "peer", "bytes_in", "bytes_out", "age_s"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<8} {:<14} {:>8} {:<40} {:>12} {:>12} {:>10.1}",
            r.pid,
            format!("{}#{}", r.worker, r.worker_id),
            r.conn.id,
            r.conn.peer,
            r.conn.bytes_in,
            r.conn.bytes_out,
            r.conn.age_secs
        );
    }
    let _ = writeln!(out, "{} connections", rows.len());
    out
}
