//! `oxbench`: oxwork's benchmark harness. See `docs/benchmarks.md`.
//!
//! `cargo run --release --bin oxbench -- [SCENARIO...]` runs the named scenarios (all by
//! default) against oxwork and the reference servers, alternating, pinned to separate cores,
//! and prints a Markdown table; `oxbench smoke` runs every scenario briefly and only checks that
//! each runs and reports; `oxbench list` names them.

mod allocations;
mod bus;
mod load;
mod nats;
mod nats_nodes;
mod photo_service;
mod pin;
mod procstat;
mod report;
mod scenarios;
mod servers;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: allocations::Counting = allocations::Counting;

/// A temporary directory only this user may enter (0700): oxwork refuses a run directory that
/// other users could plant files in.
pub(crate) fn private_tempdir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
}

#[derive(Parser, Debug)]
#[command(about = "Measures oxwork against reference servers in one run")]
struct Args {
    /// Scenarios to run (`list` names them, `smoke` runs all briefly); all when none given.
    scenarios: Vec<String>,
    /// Repetitions per server and scenario; the table shows medians.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds measured per repetition (after a one-second warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Connections per throughput scenario, instead of the scenario's own.
    #[arg(long)]
    connections: Option<usize>,
    /// Requests in flight per connection (pipelining depth), instead of the scenario's own.
    #[arg(long)]
    depth: Option<usize>,
    /// Message size in bytes (text, frame, websocket), instead of the scenario's own.
    #[arg(long)]
    size: Option<usize>,
    /// Directory for results.json, results.md and latency.svg.
    #[arg(long, default_value = "target/oxbench")]
    out: PathBuf,
    /// Also copy the table and chart into docs/ (docs/benchmarks.md between its markers).
    #[arg(long)]
    write_docs: bool,
    /// Pins nothing: servers and the load generator share every core, as on a machine where
    /// nobody set affinities.
    #[arg(long)]
    unpinned: bool,
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    match raw.first().map(String::as_str) {
        Some("__serve-oxwork") => {
            if let Err(e) = servers::serve_oxwork(&raw[1..]) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            return;
        }
        Some("__serve-oxwork-bus") => {
            if let Err(e) = bus::serve(&raw[1..]) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            return;
        }
        Some(role @ ("__nats-responder" | "__nats-sink" | "__nats-queue" | "__js-worker")) => {
            return nats::helper(role, raw.get(1).map(String::as_str).unwrap_or(""));
        }
        Some("__serve-photos") => {
            if let Err(e) = photos::app::run_from(raw[1..].iter().cloned()) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            return;
        }
        Some("__serve-tokio") => return servers::serve_tokio(&raw[1..]),
        Some("__serve-hyper") => return servers::serve_hyper(&raw[1..]),
        _ => {}
    }
    let args = Args::parse();
    raise_fd_limit();
    let all = scenarios::all();
    if args.scenarios.iter().any(|s| s == "list") {
        for s in &all {
            println!("{:<16} {}", s.name, s.what);
        }
        return;
    }
    let smoke = args.scenarios.iter().any(|s| s == "smoke");
    let effort = if smoke {
        scenarios::Effort {
            reps: 1,
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(500),
            max_connections: 8,
            idle_connections: Some(200),
            connections: None,
            depth: None,
            size: None,
        }
    } else {
        scenarios::Effort {
            reps: args.reps.max(1),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs_f64(args.duration),
            max_connections: usize::MAX,
            idle_connections: None,
            connections: None,
            depth: None,
            size: None,
        }
    };
    let effort = scenarios::Effort {
        connections: args.connections,
        depth: args.depth,
        size: args.size,
        ..effort
    };
    let selected: Vec<_> = all
        .iter()
        .filter(|s| {
            smoke || args.scenarios.is_empty() || args.scenarios.iter().any(|n| n == s.name)
        })
        .collect();
    if selected.is_empty() {
        eprintln!("no such scenario; `oxbench list` names them");
        std::process::exit(2);
    }
    if args.unpinned {
        pin::pin_nothing();
    }
    let pinned = pin::pin_self_to_load_cpu();
    eprintln!(
        "oxbench: {} scenarios, {} reps, {}",
        selected.len(),
        effort.reps,
        if pinned {
            "server on cpu 0, load on cpu 1"
        } else {
            "not pinned (needs 2 cpus and taskset)"
        }
    );
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for s in selected {
        eprintln!("== {}: {}", s.name, s.what);
        match scenarios::run(s, effort) {
            Ok(r) if r.is_empty() => failed.push(format!("{}: no results", s.name)),
            Ok(r) => {
                for row in &r {
                    if smoke && row.errors > 0.0 {
                        failed.push(format!(
                            "{} / {}: {} errors",
                            row.scenario, row.server, row.errors
                        ));
                    }
                }
                rows.extend(r);
            }
            Err(e) => failed.push(format!("{}: {e}", s.name)),
        }
    }
    let table = report::markdown(&rows);
    println!("{table}");
    if let Err(e) = write_outputs(&args, &rows, &table) {
        eprintln!("cannot write results: {e}");
    }
    if !failed.is_empty() {
        eprintln!("FAILED:\n  {}", failed.join("\n  "));
        std::process::exit(1);
    }
    if smoke {
        println!("smoke: every scenario ran and reported");
    }
}

fn write_outputs(args: &Args, rows: &[scenarios::Row], table: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(rows).unwrap_or_default(),
    )?;
    std::fs::write(args.out.join("results.md"), table)?;
    let svg = report::svg(rows);
    std::fs::write(args.out.join("latency.svg"), &svg)?;
    if args.write_docs {
        std::fs::write("docs/bench-latency.svg", &svg)?;
        let doc = std::fs::read_to_string("docs/benchmarks.md")?;
        let (begin, end) = ("<!-- results:begin -->", "<!-- results:end -->");
        if let (Some(a), Some(b)) = (doc.find(begin), doc.find(end)) {
            let updated = format!("{}{begin}\n{table}\n{}", &doc[..a], &doc[b..]);
            std::fs::write("docs/benchmarks.md", updated)?;
        }
    }
    Ok(())
}
