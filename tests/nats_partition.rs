//! A node cut off from NATS by a partition (a frozen TCP proxy: no byte moves, nothing closes):
//! the tasks it had pulled run elsewhere and are answered before the default submit deadline,
//! its `status` and `cluster` say it is cut off within the ping window, and it recovers by
//! itself after the heal.

mod support;

use std::time::{Duration, Instant};

use oxwork::bus::{Bus, SubmitOptions};
use support::*;

fn square_node(bus: &str, node: &str) -> Server {
    Server::start_with_args(
        "pool_lab",
        &["--group", "square"],
        &[
            ("OXWORK_BUS", bus.to_string()),
            ("OXWORK_NODE", node.to_string()),
            ("POOL_PROCS", "2".to_string()),
            ("POOL_CONCURRENCY", "8".to_string()),
            ("POOL_TASK_MS", "100".to_string()),
        ],
        2,
    )
}

fn bus_connected(s: &Server) -> Option<bool> {
    s.try_status()?["bus"]["connected"].as_bool()
}

#[test]
fn a_partitioned_node_is_seen_cut_off_its_tasks_run_elsewhere_and_it_recovers() {
    const TASKS: u64 = 600;
    let nats = Nats::start();
    let proxy = FreezableProxy::start(nats.port);
    let cut = square_node(&format!("nats://127.0.0.1:{}", proxy.port), "cut");
    let whole = square_node(&nats.url, "whole");
    let url = nats.url.clone();
    let (results, cut_seen_after, cluster_said) = std::thread::scope(|scope| {
        let proxy = &proxy;
        let cut = &cut;
        let watcher = scope.spawn(move || {
            // Mid-run, with tasks on both nodes.
            std::thread::sleep(Duration::from_millis(1500));
            proxy.freeze();
            let frozen_at = Instant::now();
            let seen = eventually(Duration::from_secs(20), || {
                bus_connected(cut) == Some(false)
            });
            let seen_after = frozen_at.elapsed();
            let cluster = cut.run(&["cluster"]);
            (seen.then_some(seen_after), cluster)
        });
        let results = local_runtime().block_on(async move {
            let bus = Bus::connect_nats(&url, "test").expect("settings");
            assert!(bus.wait_connected(Duration::from_secs(10)).await);
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::new();
            for n in 0..TASKS {
                let permit = slots.clone().acquire_owned().await.expect("permit");
                let bus = bus.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    // The default deadline: what an application gets.
                    let r = bus
                        .submit("square", n.to_string(), SubmitOptions::default())
                        .await;
                    drop(permit);
                    (n, r)
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("join"));
            }
            out
        });
        let (seen, cluster) = watcher.join().expect("watcher");
        (results, seen, cluster)
    });
    let wrong: Vec<_> = results
        .iter()
        .filter(|(n, r)| r.as_deref().ok() != Some((n * n).to_string().as_bytes()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {TASKS} tasks not answered right within the default deadline: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let seen_after = cut_seen_after.unwrap_or_else(|| {
        panic!(
            "status on the cut node never said so: {:?}",
            cut.try_status().map(|s| s["bus"].clone())
        )
    });
    assert!(
        !cluster_said.status.success(),
        "cluster on a cut-off node exited 0: {}",
        String::from_utf8_lossy(&cluster_said.stdout)
    );
    let said = String::from_utf8_lossy(&cluster_said.stderr);
    assert!(said.contains("cannot see the bus"), "{said}");
    let status = cut.try_status().expect("status");
    assert!(
        status["bus"]["disconnected_for_ms"].as_u64().is_some(),
        "{}",
        status["bus"]
    );
    proxy.heal();
    let healed_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || bus_connected(&cut)
            == Some(true)),
        "the cut node did not come back after the heal"
    );
    let back_after = healed_at.elapsed();
    assert!(
        eventually(Duration::from_secs(10), || cut
            .run(&["cluster"])
            .status
            .success()),
        "cluster still fails after the heal"
    );
    let retried = whole.try_status().and_then(|st| {
        st["bus"]["pools"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "square")?["retried"]
            .as_u64()
    });
    eprintln!(
        "partition seen by status after {seen_after:?}; back {back_after:?} after the heal; all \
         {TASKS} tasks answered within the default deadline, {retried:?} re-run after the cut"
    );
    assert!(
        retried.is_some_and(|r| r > 0),
        "the cut node held no task when it was cut: the test proved nothing"
    );
    assert!(
        cut.stderr().contains("lost (or stopped answering pings)"),
        "no warning at the default level:\n{}",
        cut.stderr()
    );
}
