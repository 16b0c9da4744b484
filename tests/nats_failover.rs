//! On a three-server JetStream cluster: every stream is kept on three servers, killing the
//! stream's leader mid-run loses no task and answers none twice, tasks a restarted server
//! replays are swept away, and submit waits out a leader election or says the bus is
//! unavailable when its deadline passes.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxwork::bus::{Bus, BusError, SubmitOptions};
use serde_json::Value;
use support::*;

fn square_node(cluster: &NatsCluster, node: &str) -> Server {
    Server::start_with_args(
        "pool_lab",
        &["--group", "square"],
        &[
            ("OXWORK_BUS", cluster.urls.clone()),
            ("OXWORK_NODE", node.to_string()),
            ("POOL_PROCS", "2".to_string()),
            ("POOL_CONCURRENCY", "8".to_string()),
            ("POOL_TASK_MS", "5".to_string()),
        ],
        2,
    )
}

fn pool_figures(s: &Server) -> Option<Value> {
    s.try_status()?["bus"]["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "square")
        .cloned()
}

#[test]
fn a_killed_stream_leader_of_an_r3_cluster_loses_no_task_and_leaves_no_ghost() {
    const TASKS: usize = 5_000;
    let mut cluster = NatsCluster::start(3);
    let a = square_node(&cluster, "a");
    let _b = square_node(&cluster, "b");
    for stream in ["OX_TASKS_square", "OX_DEAD", "KV_oxwork"] {
        assert!(
            eventually(Duration::from_secs(30), || cluster
                .stream_info(stream)
                .is_some_and(|i| i.config.num_replicas == 3)),
            "stream {stream} is not kept on 3 servers: {:?}\n{}",
            cluster.stream_info(stream).map(|i| i.config.num_replicas),
            a.stderr()
        );
    }
    let done = Arc::new(AtomicUsize::new(0));
    let urls = cluster.urls.clone();
    let (completions, killed_at, killed) = std::thread::scope(|scope| {
        let counted = done.clone();
        let cluster = &mut cluster;
        let killer = scope.spawn(move || {
            while counted.load(Ordering::Relaxed) < TASKS / 5 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let leader = cluster
                .stream_leader("OX_TASKS_square")
                .expect("the stream has a leader");
            cluster.servers[leader].stop();
            (Instant::now(), leader)
        });
        let completions = local_runtime().block_on(async move {
            let bus = Bus::connect_nats(&urls, "test").expect("settings");
            assert!(bus.wait_connected(Duration::from_secs(10)).await);
            let slots = Arc::new(tokio::sync::Semaphore::new(200));
            let mut tasks = Vec::new();
            for n in 0..TASKS as u64 {
                let permit = slots.clone().acquire_owned().await.expect("permit");
                let (bus, done) = (bus.clone(), done.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    // Long enough for a failover; a task whose acknowledgement was lost with the
                    // leader is dropped once this passes and this submitter has gone.
                    let opts = SubmitOptions {
                        timeout: Duration::from_secs(20),
                        ..Default::default()
                    };
                    let result = bus.submit("square", n.to_string(), opts).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    (n, result, Instant::now())
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("join"));
            }
            out
        });
        let (killed_at, killed) = killer.join().expect("killer");
        (completions, killed_at, killed)
    });
    let mut wrong = Vec::new();
    for (n, result, _) in &completions {
        match result {
            Ok(r) if r == (n * n).to_string().as_bytes() => {}
            other => wrong.push(format!("{n}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {TASKS} tasks not answered right: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let mut times: Vec<Instant> = completions.iter().map(|(_, _, t)| *t).collect();
    times.sort();
    let stall = times
        .windows(2)
        .filter(|w| w[1] > killed_at)
        .map(|w| w[1] - w[0].max(killed_at))
        .max()
        .unwrap_or_default();
    let after = times.iter().filter(|t| **t > killed_at).count();
    // The killed server comes back with its store: whatever it replays must not linger.
    cluster.servers[killed].restart();
    let at_rest = || {
        pool_figures(&a).is_some_and(|p| p["queued"] == 0 && p["running"] == 0)
            && cluster
                .stream_info("OX_TASKS_square")
                .is_some_and(|i| i.state.messages == 0)
    };
    assert!(
        eventually(Duration::from_secs(45), at_rest),
        "tasks left behind after the restart: pool {:?}, stream {:?}",
        pool_figures(&a),
        cluster.stream_info("OX_TASKS_square").map(|i| i.state)
    );
    let retried = pool_figures(&a)
        .and_then(|p| p["retried"].as_u64())
        .unwrap_or(0);
    eprintln!(
        "stream leader s{killed} killed at {} of {TASKS} tasks: longest stall {stall:?}, {after} \
         answered after, {retried} re-run, every task answered once",
        TASKS / 5
    );
    assert!(
        stall < Duration::from_secs(20),
        "tasks stopped for {stall:?} after the leader died"
    );
}

#[test]
fn submit_waits_out_a_leader_election_and_says_unavailable_without_a_quorum() {
    let mut cluster = NatsCluster::start(3);
    let _a = square_node(&cluster, "a");
    assert!(
        eventually(Duration::from_secs(30), || cluster
            .stream_leader("OX_TASKS_square")
            .is_some()),
        "the pool's stream was not made"
    );
    let leader = cluster.stream_leader("OX_TASKS_square").expect("a leader");
    let urls = cluster.urls.clone();
    let submit = move |n: u64, timeout: Duration| {
        let urls = urls.clone();
        local_runtime().block_on(async move {
            let bus = Bus::connect_nats(&urls, "test").expect("settings");
            assert!(bus.wait_connected(Duration::from_secs(10)).await);
            let opts = SubmitOptions {
                timeout,
                ..Default::default()
            };
            let started = Instant::now();
            (
                bus.submit("square", n.to_string(), opts).await,
                started.elapsed(),
            )
        })
    };
    assert_eq!(
        submit(7, Duration::from_secs(20)).0.as_deref().ok(),
        Some(&b"49"[..])
    );
    // The stream's leader dies: the next submission waits for the election and succeeds.
    cluster.servers[leader].stop();
    let (during_election, took) = submit(8, Duration::from_secs(20));
    assert_eq!(
        during_election.as_deref().ok(),
        Some(&b"64"[..]),
        "a submission during the election: {during_election:?}"
    );
    eprintln!("a submission made as the stream leader died took {took:?}");
    // A second server dies: no quorum, nothing can be queued; the deadline brings the right
    // error, not a hang and not a false "pool full" or "state" error.
    let second = (0..3)
        .find(|i| *i != leader && cluster.servers[*i].is_running())
        .expect("a live server");
    cluster.servers[second].stop();
    let (no_quorum, took) = submit(9, Duration::from_secs(4));
    assert!(
        matches!(no_quorum, Err(BusError::Unavailable(_))),
        "without a quorum: {no_quorum:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    eprintln!("without a quorum: {:?}", no_quorum.err());
}
