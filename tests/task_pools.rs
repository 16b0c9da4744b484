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

#[test]
fn killing_the_hub_mid_run_answers_every_task_with_its_result() {
    const COUNT: u64 = 20_000;
    let s = pool(&[("POOL_TASK_MS", "1".into())], 6);
    let hub = s.group_pids("hub");
    assert_eq!(hub.len(), 1);
    let status = s.status_probe();
    let killer = std::thread::spawn(move || {
        // Mid-run: once a fifth of the tasks are done and more are running and queued.
        let mid_run = || {
            status().is_some_and(|st| {
                st["hub"]["pools"].as_array().is_some_and(|p| {
                    p.iter().any(|p| {
                        p["name"] == "square"
                            && p["running"].as_u64() > Some(0)
                            && p["done"].as_u64() >= Some(2 * COUNT / 5)
                    })
                })
            })
        };
        let reached = eventually(Duration::from_secs(60), mid_run);
        kill9(hub[0]);
        reached
    });
    let path = s.hub_path();
    let (summaries, executions) = local_runtime().block_on(async move {
        use oxwork::bus::Headers;
        let bus = Bus::connect_hub(path, "test");
        assert!(bus.wait_connected(Duration::from_secs(5)).await);
        let ask = |subject: String, body: String, limit: Duration| {
            let b = bus.clone();
            async move { b.request(&subject, Headers::new(), body, limit).await }
        };
        let runs: Vec<_> = (0..2u64)
            .map(|id| {
                let body = json!({"from": id * 1_000_000, "count": COUNT, "in_flight": 200, "timeout_ms": 60_000});
                tokio::task::spawn_local(ask(
                    format!("ox.w.testnode.submitter.{id}"),
                    body.to_string(),
                    Duration::from_secs(120),
                ))
            })
            .collect();
        let mut summaries = Vec::new();
        for (id, run) in runs.into_iter().enumerate() {
            // This client's own request may go down with the hub: then it asks for the summary
            // the submitter kept.
            let mut answer = run.await.expect("join").ok();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while answer.is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let asked = ask(
                    format!("ox.w.testnode.submitter.{id}"),
                    json!({"summary_of": id as u64 * 1_000_000}).to_string(),
                    Duration::from_secs(5),
                )
                .await;
                answer = asked.ok().filter(|a| !a.payload.starts_with(b"{\"running\""));
            }
            let answer = answer.expect("the submitter's summary within 2 minutes");
            summaries.push(serde_json::from_slice::<Value>(&answer.payload).expect("json"));
        }
        let mut executions = 0u64;
        for id in 0..3 {
            let ran = ask(
                format!("ox.w.testnode.square.{id}"),
                String::new(),
                Duration::from_secs(5),
            )
            .await
            .expect("a square process says how many tasks it ran");
            executions += ran.text().parse::<u64>().expect("a count");
        }
        (summaries, executions)
    });
    assert!(
        killer.join().expect("killer"),
        "the run never reached its middle"
    );
    for sum in &summaries {
        assert_eq!(sum["ok"], COUNT, "{sum}");
        assert_eq!(sum["wrong"], 0, "{sum}");
        assert_eq!(sum["errors"], json!({}), "{sum}");
    }
    assert!(executions >= 2 * COUNT, "{executions} executions");
    eprintln!(
        "hub killed mid-run: {} tasks answered, {executions} executions, {} ran twice",
        2 * COUNT,
        executions - 2 * COUNT
    );
    assert!(eventually(SETTLE, || s.group_pids("hub").len() == 1));
}
