//! The seed's first listing, run as a real process tree.

mod support;

use support::*;

fn seed_server() -> Server {
    let port = free_port();
    let mut s = Server::start(
        "seed_tcp",
        &[("SEED_TCP_LISTEN", format!("text://127.0.0.1:{port}"))],
        4,
    );
    s.port = port;
    s
}

#[test]
fn four_worker_processes_run_under_one_master() {
    let s = seed_server();
    let pids = s.worker_pids();
    assert_eq!(pids.len(), 4);
    for pid in &pids {
        assert_eq!(
            parent_of(*pid),
            s.master_pid(),
            "worker {pid} is not the master's child"
        );
    }
    assert!(
        eventually(SETTLE, || {
            let out = s.stdout();
            (0..4).all(|i| out.contains(&format!("Worker {i} started")))
        }),
        "stdout:\n{}",
        s.stdout()
    );
}

#[test]
fn eight_clients_get_replies_from_more_than_one_process() {
    let s = seed_server();
    let mut clients: Vec<LineClient> = (0..8)
        .map(|_| LineClient::connect(s.port).expect("connect"))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.ask(&format!("client{i}")).expect("reply"),
            format!("Hello, client{i}!")
        );
    }
    let conns = s.connections();
    assert_eq!(conns.len(), 8, "{conns:?}");
    let mut serving: Vec<u64> = conns
        .iter()
        .map(|c| c["pid"].as_u64().expect("pid"))
        .collect();
    serving.sort();
    serving.dedup();
    assert!(
        serving.len() > 1,
        "all 8 connections landed on one process: {serving:?}"
    );
    let out = s.stdout();
    assert!(out.contains("Received message: client3"), "{out}");
    assert!(out.contains("New connection from 127.0.0.1:"), "{out}");
}
