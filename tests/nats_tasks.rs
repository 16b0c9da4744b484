//! Durable task pools on NATS JetStream: a node killed mid-run loses no task and reports none
//! twice; a NATS restart mid-run is ridden out by every process; a task out of retries is
//! kept for an operator.

mod support;

use std::time::Duration;

use oxwork::bus::Bus;
use serde_json::{json, Value};
use support::*;

/// A `pool_lab` node on `nats` running only `group`.
fn lab_node(
    nats: &Nats,
    node: &str,
    group: &str,
    env: &[(&str, String)],
    expected: usize,
) -> Server {
    let mut all = vec![
        ("OXWORK_BUS", nats.url.clone()),
        ("OXWORK_NODE", node.to_string()),
    ];
    all.extend(env.iter().cloned());
    Server::start_with_args("pool_lab", &["--group", group], &all, expected)
}

fn squares(nats: &Nats, node: &str, extra: &[(&str, String)]) -> Server {
    let mut env = vec![
        ("POOL_PROCS", "2".to_string()),
        ("POOL_CONCURRENCY", "8".to_string()),
        ("POOL_TASK_MS", "20".to_string()),
        ("POOL_LEASE_MS", "1500".to_string()),
    ];
    env.extend(extra.iter().cloned());
    lab_node(nats, node, "square", &env, 2)
}

fn submit_over_nats(nats: &Nats, count: u64, during: impl FnOnce() + Send + 'static) -> Vec<Value> {
    let url = nats.url.clone();
    ask_pool_lab_submitters(
        move || Bus::connect_nats(&url, "test").expect("settings"),
        "a",
        count,
        200,
        60_000,
        during,
    )
}

fn nats_pool(s: &Server) -> Value {
    s.status()["bus"]["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "square").cloned())
        .unwrap_or_else(|| panic!("no pool figures in status: {}", s.status()))
}

#[test]
fn five_thousand_tasks_survive_a_node_killed_mid_run_each_reported_once() {
    let nats = Nats::start();
    let _submitters = lab_node(&nats, "a", "submitter", &[], 2);
    let survivor = squares(&nats, "b", &[]);
    let doomed = squares(&nats, "c", &[]);
    let mut victims = doomed.group_pids("square");
    victims.push(doomed.master_pid());
    let summaries = submit_over_nats(&nats, 2_500, move || {
        std::thread::sleep(Duration::from_millis(1_200));
        for pid in victims {
            kill9(pid);
        }
    });
    let mut ok = 0;
    for sum in &summaries {
        assert_eq!(sum["wrong"], 0, "{sum}");
        assert_eq!(sum["errors"], json!({}), "{sum}");
        ok += sum["ok"].as_u64().expect("ok");
    }
    assert_eq!(
        ok, 5_000,
        "every task's result arrived exactly once: {summaries:?}"
    );
    let pool = nats_pool(&survivor);
    assert!(
        pool["retried"].as_u64().expect("retried") > 0,
        "the dead node's tasks were not redelivered: {pool}"
    );
    assert_eq!(pool["queued"], 0, "{pool}");
    let done_here = pool["done"].as_u64().expect("done");
    assert!(
        done_here > 0 && done_here <= 5_000 + pool["retried"].as_u64().unwrap_or(0),
        "node b's processes report what they completed: {pool}"
    );
    eprintln!(
        "redelivered after the kill: {}; done on node b: {done_here}",
        pool["retried"]
    );
    let shown = String::from_utf8_lossy(&survivor.run(&["status"]).stdout).into_owned();
    assert!(shown.contains("retried"), "{shown}");
}

#[test]
fn a_nats_restart_mid_run_is_ridden_out_and_durable_tasks_all_complete() {
    let nats = Nats::start();
    let nats = std::sync::Arc::new(std::sync::Mutex::new(nats));
    let (url, shared) = {
        let n = nats.lock().expect("nats");
        (n.url.clone(), nats.clone())
    };
    let guard = nats.lock().expect("nats");
    let _submitters = lab_node(&guard, "a", "submitter", &[], 2);
    let workers = squares(&guard, "b", &[("POOL_TASK_MS", "5".to_string())]);
    drop(guard);
    let summaries = ask_pool_lab_submitters(
        move || Bus::connect_nats(&url, "test").expect("settings"),
        "a",
        1_500,
        100,
        60_000,
        move || {
            std::thread::sleep(Duration::from_millis(700));
            shared.lock().expect("nats").restart();
        },
    );
    for sum in &summaries {
        assert_eq!(sum["ok"], 1_500, "{sum}");
        assert_eq!(sum["errors"], json!({}), "{sum}");
    }
    // Subscriptions came back: a fresh round works end to end.
    let url = nats.lock().expect("nats").url.clone();
    let again = ask_pool_lab_submitters(
        move || Bus::connect_nats(&url, "test").expect("settings"),
        "a",
        50,
        10,
        60_000,
        || {},
    );
    assert!(again.iter().all(|s| s["ok"] == 50), "{again:?}");
    assert!(eventually(SETTLE, || workers.status()["bus"]["connected"] == true));
}

#[test]
fn a_task_that_kills_every_process_ends_as_retries_exhausted_and_is_kept_dead() {
    let nats = Nats::start();
    let workers = squares(
        &nats,
        "b",
        &[
            ("POOL_POISON", "13".to_string()),
            ("POOL_LEASE_MS", "600".to_string()),
        ],
    );
    let url = nats.url.clone();
    let outcome = local_runtime().block_on(async move {
        let bus = Bus::connect_nats(&url, "test").expect("settings");
        let opts = oxwork::bus::SubmitOptions {
            timeout: Duration::from_secs(30),
            max_retries: 1,
        };
        let fine = bus.submit("square", "12", opts).await;
        let poison = bus.submit("square", "13", opts).await;
        (fine, poison)
    });
    assert_eq!(outcome.0.as_deref().ok(), Some(&b"144"[..]));
    match outcome.1 {
        Err(oxwork::bus::BusError::RetriesExhausted(why)) => {
            assert!(why.contains("2 deliveries"), "{why}")
        }
        other => panic!("poison task: {other:?}"),
    }
    assert!(
        eventually(SETTLE, || nats_pool(&workers)["dead"] == 1),
        "the dead task is not kept: {}",
        nats_pool(&workers)
    );
}

#[test]
fn a_reload_of_the_pool_hands_unfinished_tasks_back_instead_of_waiting_out_their_lease() {
    let nats = Nats::start();
    let _submitters = lab_node(&nats, "a", "submitter", &[], 2);
    // A lease far longer than the submitters wait: a task left to its lease would time out.
    let pool = squares(
        &nats,
        "b",
        &[
            ("POOL_LEASE_MS", "120000".to_string()),
            ("POOL_TASK_MS", "30".to_string()),
        ],
    );
    let run_dir = pool.run_dir.path().to_path_buf();
    let bin = pool.bin.clone();
    let url = nats.url.clone();
    let summaries = ask_pool_lab_submitters(
        move || Bus::connect_nats(&url, "test").expect("settings"),
        "a",
        600,
        50,
        20_000,
        move || {
            std::thread::sleep(Duration::from_millis(500));
            let out = std::process::Command::new(bin)
                .arg("reload")
                .env("OXWORK_RUN_DIR", run_dir)
                .output()
                .expect("reload");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        },
    );
    for sum in &summaries {
        assert_eq!(sum["ok"], 600, "{sum}");
        assert_eq!(sum["errors"], json!({}), "{sum}");
    }
}

#[test]
fn a_full_durable_queue_refuses_with_pool_full_and_loses_nothing_it_took() {
    let nats = Nats::start();
    let _pool = lab_node(
        &nats,
        "b",
        "square",
        &[
            ("POOL_PROCS", "1".to_string()),
            ("POOL_CONCURRENCY", "1".to_string()),
            ("POOL_QUEUE", "20".to_string()),
            ("POOL_TASK_MS", "20".to_string()),
        ],
        1,
    );
    let url = nats.url.clone();
    let (ok, full, other) = local_runtime().block_on(async move {
        let bus = Bus::connect_nats(&url, "test").expect("settings");
        assert!(bus.wait_connected(Duration::from_secs(5)).await);
        // The pool's process sets its queue limit on the stream as it joins.
        let probe = oxwork::bus::SubmitOptions {
            timeout: Duration::from_secs(10),
            ..Default::default()
        };
        bus.submit("square", "2", probe).await.expect("first task");
        let all: Vec<_> = (0..300u64)
            .map(|n| {
                let b = bus.clone();
                tokio::task::spawn_local(async move {
                    let opts = oxwork::bus::SubmitOptions {
                        timeout: Duration::from_secs(30),
                        ..Default::default()
                    };
                    b.submit("square", n.to_string(), opts).await
                })
            })
            .collect();
        let (mut ok, mut full, mut other) = (0, 0, Vec::new());
        for h in all {
            match h.await.expect("join") {
                Ok(_) => ok += 1,
                Err(oxwork::bus::BusError::PoolFull(_)) => full += 1,
                Err(e) => other.push(e.to_string()),
            }
        }
        (ok, full, other)
    });
    assert!(other.is_empty(), "{other:?}");
    assert!(
        full > 200,
        "expected most refused as full: ok {ok}, full {full}"
    );
    assert_eq!(ok + full, 300);
}

#[test]
fn a_task_running_longer_than_its_lease_keeps_it_and_is_not_redelivered() {
    let nats = Nats::start();
    let pool = squares(
        &nats,
        "b",
        &[
            ("POOL_LEASE_MS", "600".to_string()),
            ("POOL_TASK_MS", "2000".to_string()),
        ],
    );
    let url = nats.url.clone();
    let results = local_runtime().block_on(async move {
        let bus = Bus::connect_nats(&url, "test").expect("settings");
        let all: Vec<_> = (1..=4u64)
            .map(|n| {
                let b = bus.clone();
                tokio::task::spawn_local(async move {
                    let opts = oxwork::bus::SubmitOptions {
                        timeout: Duration::from_secs(20),
                        max_retries: 0,
                    };
                    b.submit("square", n.to_string(), opts).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in all {
            out.push(
                h.await
                    .expect("join")
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
            );
        }
        out
    });
    assert_eq!(
        results,
        ["1", "4", "9", "16"].map(|s| Ok(s.to_string())).to_vec(),
        "with no retries allowed, a lost lease would have failed a task"
    );
    let figures = nats_pool(&pool);
    assert_eq!(figures["retried"], 0, "{figures}");
    assert_eq!(figures["done"], 4, "{figures}");
}

#[test]
fn hostile_task_messages_from_a_foreign_client_cost_nothing_but_themselves() {
    let nats = Nats::start();
    let pool = squares(&nats, "b", &[]);
    let url = nats.url.clone();
    let answer = local_runtime().block_on(async move {
        let client = async_nats::connect(&url).await.expect("raw client");
        let js = async_nats::jetstream::new(client.clone());
        let bus = Bus::connect_nats(&url, "test").expect("settings");
        // The pool's stream exists once a normal task went through.
        let opts = oxwork::bus::SubmitOptions::default();
        assert_eq!(
            bus.submit("square", "3", opts)
                .await
                .expect("warm-up")
                .as_ref(),
            b"9"
        );
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let hostile: [(Headers, &[u8]); 4] = [
            (&[("ox-reply", "not a subject")], b"4"),
            (&[("ox-reply", "a.*.wild")], b"5"),
            (&[("ox-max-retries", "lots")], b"6"),
            (&[], b"\xff\xfe not a number"),
        ];
        for (headers, body) in hostile {
            let mut map = async_nats::HeaderMap::new();
            for (k, v) in headers {
                map.insert(*k, *v);
            }
            js.publish_with_headers("ox.task.square", map, body.to_vec().into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
        bus.submit("square", "7", opts).await
    });
    assert_eq!(
        answer
            .expect("a normal task after the hostile ones")
            .as_ref(),
        b"49"
    );
    assert!(eventually(SETTLE, || nats_pool(&pool)["queued"] == 0));
    assert_eq!(pool.group_pids("square").len(), 2, "no pool process died");
}

#[test]
fn a_redelivered_task_whose_result_already_reached_its_submitter_is_not_run_again() {
    use futures_util::StreamExt as _;
    let nats = Nats::start();
    // The pool's queue and consumer exist once a node of it has run; then the node stops.
    let mut first = squares(&nats, "b", &[]);
    assert!(
        eventually(SETTLE, || first.status()["bus"]["pools"]
            .as_array()
            .is_some_and(|p| !p.is_empty())),
        "the pool's queue was not made"
    );
    assert!(first.run(&["stop"]).status.success());
    assert!(
        first.wait_exit(Duration::from_secs(20)),
        "the pool did not stop"
    );
    drop(first);

    // A submitter on a thread of its own, alive (answering questions) until told to end.
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let url = nats.url.clone();
    let submitter = std::thread::spawn(move || {
        local_runtime().block_on(async move {
            let bus = Bus::connect_nats(&url, "test").expect("settings");
            let opts = oxwork::bus::SubmitOptions {
                timeout: Duration::from_secs(60),
                max_retries: 3,
            };
            let answer = bus.submit("square", "7", opts).await;
            let _ = result_tx.send(answer.map(|b| b.to_vec()).map_err(|e| e.to_string()));
            while end_rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });

    // A pool process that answers the task and dies before acknowledging it: played by a
    // plain NATS client pulling from the pool's consumer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(&nats.url).await.expect("connect");
        let js = async_nats::jetstream::new(client.clone());
        let stream = js
            .get_stream("OX_TASKS_square")
            .await
            .expect("the pool's stream");
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer("workers")
            .await
            .expect("the pool's consumer");
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(15))
            .messages()
            .await
            .expect("pull");
        let task = batch
            .next()
            .await
            .expect("the task is delivered")
            .expect("a task");
        let reply = task
            .headers
            .as_ref()
            .and_then(|h| h.get("ox-reply"))
            .expect("a reply subject")
            .to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("status", "ok");
        headers.insert("ox-receipt", "1");
        // Retried while nobody listens yet, as a pool process does.
        let mut confirmed = false;
        for _ in 0..100 {
            let sent = client
                .request_with_headers(reply.clone(), headers.clone(), "49 from the first".into())
                .await;
            if sent.is_ok() {
                confirmed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(confirmed, "the submitter did not confirm the result");
        // No acknowledgement: the task comes back when its lease runs out.
    });
    let answer = result_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the submitter got an answer");
    assert_eq!(answer, Ok(b"49 from the first".to_vec()));

    // The pool comes back and is handed the task again: it asks the submitter, which has the
    // result, and acknowledges the task instead of running it.
    let second = squares(&nats, "b", &[]);
    // Gone from the work queue: acknowledged by the pool.
    let drained = rt.block_on(async {
        let client = async_nats::connect(&nats.url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let mut stream = js.get_stream("OX_TASKS_square").await.expect("stream");
            let info = stream.info().await.expect("info");
            if info.state.messages == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let figures = nats_pool(&second);
    let _ = end_tx.send(());
    submitter.join().expect("submitter thread");
    assert!(drained, "the redelivered task stayed queued: {figures}");
    assert_eq!(figures["done"], 0, "the task ran a second time: {figures}");
    assert_eq!(figures["dead"], 0, "{figures}");
}
