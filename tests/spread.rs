//! Processes sharing one listening socket split its connections evenly (`runtime/balance.rs`),
//! a process stuck in a long callback never strands a connection its siblings could take, and
//! with `cpu_affinity` each process keeps to a CPU of its own.

mod support;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// Opens `n` connections at once (every connect sent before any is answered), then asks each
/// which process serves it.
fn burst(port: u16, n: usize) -> Vec<(LineClient, u32)> {
    let pending: Vec<_> = (0..n)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            match s.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
                Err(e) => panic!("connect: {e}"),
            }
            s
        })
        .collect();
    pending
        .into_iter()
        .map(|s| {
            s.set_nonblocking(false).expect("blocking");
            let stream: TcpStream = s.into();
            // Waits for the handshake to complete (the socket becomes writable).
            let mut c = LineClient::from_stream(stream).expect("client");
            let pid: u32 = c.ask("pid").expect("pid").parse().expect("a pid");
            (c, pid)
        })
        .collect()
}

#[test]
fn a_burst_of_connections_is_split_evenly_over_the_processes_sharing_the_socket() {
    let s = echo(4, &[]);
    let clients = burst(s.port, 48);
    let mut per_process: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, pid) in &clients {
        *per_process.entry(*pid).or_default() += 1;
    }
    // Each takes no more than the least loaded plus one while its siblings keep up; a sibling
    // the machine does not schedule for 20 ms is left out for a while, hence the margin.
    assert_eq!(
        per_process.len(),
        4,
        "every process serves some: {per_process:?}"
    );
    for (pid, n) in &per_process {
        assert!(
            (6..=18).contains(n),
            "process {pid} serves {n} of 48 (mean 12): {per_process:?}"
        );
    }
    // `status` shows the same spread to the operator.
    let status = s.status();
    let shown: BTreeMap<u32, u64> = status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().expect("pid") as u32,
                p["stats"]["connections"].as_u64().expect("connections"),
            )
        })
        .collect();
    for (pid, n) in &per_process {
        assert_eq!(shown.get(pid).copied(), Some(*n as u64), "{shown:?}");
    }
}

#[test]
fn a_process_stuck_in_a_long_callback_does_not_keep_new_connections_waiting() {
    let s = echo(2, &[]);
    let mut blocker = LineClient::connect(s.port).expect("connect");
    let stuck: u32 = blocker.ask("pid").expect("pid").parse().expect("a pid");
    blocker.send("block:4000").expect("send");
    // The other process soon serves more than the stuck one plus one; the connections after
    // that are left to the stuck one for a moment, then taken anyway.
    let clients = burst(s.port, 40);
    assert!(
        clients.iter().all(|(_, pid)| *pid != stuck),
        "only the free process can have answered"
    );
    // Every one of them was answered while the stuck process still slept.
    assert_eq!(
        blocker.recv_timeout(Duration::from_millis(50)),
        None,
        "the stuck process woke before the burst was served"
    );
    assert_eq!(
        blocker.recv_timeout(Duration::from_secs(10)).as_deref(),
        Some("unblocked")
    );
}

/// The CPUs process `pid` may run on, from `/proc/PID/status` (`Cpus_allowed_list: 0-1,4`).
fn cpus_allowed(pid: u32) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    list.split(',')
        .flat_map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
            a..=b
        })
        .collect()
}

#[test]
fn with_cpu_affinity_each_process_keeps_to_the_cpu_its_id_chooses() {
    let allowed = cpus_allowed(std::process::id());
    let s = echo(3, &[("ECHO_CPU_AFFINITY", "1".into())]);
    let status = s.status();
    let rows = status["processes"].as_array().expect("processes");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in rows {
        let pid = row["pid"].as_u64().expect("pid") as u32;
        let id = row["id"].as_u64().expect("id") as usize;
        let cpu = allowed[id % allowed.len()];
        assert_eq!(
            cpus_allowed(pid),
            [cpu],
            "process {id} (pid {pid}) of a tree allowed {allowed:?}"
        );
        // `status` tells the operator where each process runs.
        assert_eq!(row["cpus"], cpu.to_string(), "{row}");
    }
    let text = String::from_utf8_lossy(&s.run(&["status"]).stdout).into_owned();
    if allowed.len() > 1 {
        assert!(text.contains(" cpus"), "a cpus column:\n{text}");
    }
    // A replacement takes its predecessor's CPU.
    let victim = rows[0]["pid"].as_u64().expect("pid") as u32;
    let id = rows[0]["id"].as_u64().expect("id") as usize;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let successor = || -> Option<u32> {
        s.try_status()?["processes"]
            .as_array()?
            .iter()
            .find(|p| {
                p["id"].as_u64() == Some(id as u64) && p["pid"].as_u64() != Some(victim as u64)
            })
            .and_then(|p| p["pid"].as_u64())
            .map(|pid| pid as u32)
    };
    assert!(
        eventually(Duration::from_secs(10), || successor().is_some()),
        "process {id} was not replaced"
    );
    let replacement = successor().expect("replaced");
    assert_eq!(cpus_allowed(replacement), [allowed[id % allowed.len()]]);
    // Without the setting nothing is pinned, and `status` has no cpus column.
    let plain = echo(1, &[]);
    let pid = plain.status()["processes"][0]["pid"].as_u64().expect("pid") as u32;
    assert_eq!(cpus_allowed(pid), allowed);
    let text = String::from_utf8_lossy(&plain.run(&["status"]).stdout).into_owned();
    assert!(!text.contains(" cpus"), "no cpus column:\n{text}");
}
