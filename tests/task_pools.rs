//! Task pools: complete and correct under load, nothing lost when a pool process dies, and a
//! bounded queue that refuses instead of growing.

mod support;

use std::time::Duration;

use oxwork::bus::Bus;
use serde_json::{json, Value};
use support::*;

fn pool(extra: &[(&str, String)], expected: usize) -> Server {
    let mut env = vec![("OXWORK_NODE", "testnode".to_string())];
    env.extend(extra.iter().cloned());
    Server::start("pool_lab", &env, expected)
}

/// Asks both submitter processes to run `count` tasks each (disjoint ranges) and returns their
/// summaries; `during` runs while they work.
fn run_submitters(
    s: &Server,
    count: u64,
    in_flight: usize,
    during: impl FnOnce() + Send + 'static,
) -> Vec<Value> {
    let path = s.hub_path();
    ask_pool_lab_submitters(
        move || Bus::connect_hub(path, "test"),
        "testnode",
        count,
        in_flight,
        60_000,
        during,
    )
}

fn pool_stats(s: &Server, name: &str) -> Value {
    s.status()["hub"]["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no pool {name} in status"))
}

#[test]
fn ten_thousand_tasks_from_two_processes_come_back_complete_and_correct() {
    let s = pool(&[], 6);
    let summaries = run_submitters(&s, 5_000, 200, || {});
    for sum in &summaries {
        assert_eq!(sum["ok"], 5_000, "{sum}");
        assert_eq!(sum["wrong"], 0, "{sum}");
        assert_eq!(sum["errors"], json!({}), "{sum}");
    }
    let st = pool_stats(&s, "square");
    assert_eq!(st["done"], 10_000, "each task completed exactly once: {st}");
    assert_eq!(st["failed"], 0);
}

#[test]
fn killing_a_pool_process_mid_run_loses_no_task() {
    let s = pool(&[("POOL_TASK_MS", "3".into())], 6);
    let victims = s.group_pids("square");
    let victim = victims[0];
    let status = s.status_probe();
    let summaries = run_submitters(&s, 5_000, 100, move || {
        // Mid-run: once tasks are being handed out, not after a guessed delay.
        let running = || {
            status().is_some_and(|st| {
                st["hub"]["pools"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p["name"] == "square" && p["running"].as_u64() > Some(0))
                })
            })
        };
        assert!(eventually(Duration::from_secs(30), running), "no task ran");
        kill9(victim);
    });
    for sum in &summaries {
        assert_eq!(sum["ok"], 5_000, "{sum}");
        assert_eq!(sum["errors"], json!({}), "{sum}");
    }
    let st = pool_stats(&s, "square");
    assert!(
        st["retried"].as_u64().expect("retried") > 0,
        "no task was retried: {st}"
    );
    assert_eq!(st["done"], 10_000, "{st}");
    assert!(eventually(SETTLE, || s.group_pids("square").len() == 3));
}

#[test]
fn a_full_queue_refuses_at_once_and_memory_stays_flat() {
    let s = pool(
        &[
            ("POOL_PROCS", "1".into()),
            ("POOL_CONCURRENCY", "1".into()),
            ("POOL_QUEUE", "20".into()),
            ("POOL_TASK_MS", "50".into()),
        ],
        4,
    );
    let hub_rss = |s: &Server| -> u64 {
        s.status()["processes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["worker"] == "hub").cloned())
            .and_then(|h| h["memory_bytes"].as_u64())
            .expect("hub row")
    };
    let before = hub_rss(&s);
    let summaries = run_submitters(&s, 20_000, 2_000, || {});
    let full: u64 = summaries
        .iter()
        .map(|s| s["errors"]["pool full"].as_u64().unwrap_or(0))
        .sum();
    let ok: u64 = summaries
        .iter()
        .map(|s| s["ok"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        full > 35_000,
        "expected most submissions refused as full: {summaries:?}"
    );
    assert_eq!(
        ok + full,
        40_000,
        "every task was either done or refused: {summaries:?}"
    );
    let after = hub_rss(&s);
    assert!(
        after < before + 16 * 1024 * 1024,
        "hub memory grew from {before} to {after}"
    );
}

#[test]
fn a_result_too_large_for_the_hub_reaches_its_submitter_as_a_failure_and_the_pool_carries_on() {
    let s = pool(&[], 6);
    let path = s.hub_path();
    let (big, after) = local_runtime().block_on(async move {
        let bus = Bus::connect_hub(path, "test");
        let opts = oxwork::bus::SubmitOptions {
            timeout: Duration::from_secs(20),
            max_retries: 0,
        };
        let big = bus
            .submit("square", format!("big:{}", 9 * 1024 * 1024), opts)
            .await;
        let after = bus.submit("square", "7", opts).await;
        (big, after)
    });
    match big {
        Err(oxwork::bus::BusError::TaskFailed(why)) => {
            assert!(why.contains("too large"), "{why}")
        }
        other => panic!("a 9 MiB result: {:?}", other.map(|b| b.len())),
    }
    assert_eq!(after.as_deref().ok(), Some(&b"49"[..]), "the pool stopped");
}
