//! `reload` replaces every process with no refused connection and no lost reply.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn churn_through_reload(s: &Server, args: &[&str]) {
    let before = s.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for t in 0..2 {
        let (stop, done, failures, port) = (stop.clone(), done.clone(), failures.clone(), s.port);
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let msg = format!("t{t}-{i}");
                match LineClient::connect(port).and_then(|mut c| c.ask(&msg)) {
                    Ok(reply) if reply == msg => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(other) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("{msg}: got {other}")),
                    Err(e) => failures.lock().expect("lock").push(format!("{msg}: {e}")),
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = s.run(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("thread");
    }
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        done.load(Ordering::Relaxed) > 50,
        "too few exchanges to mean anything"
    );
    let after = s.worker_pids();
    assert_eq!(after.len(), before.len());
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "before {before:?} after {after:?}"
    );
}

#[test]
fn reload_under_connection_churn_refuses_nothing_and_loses_no_reply() {
    let s = echo(4, &[]);
    churn_through_reload(&s, &["reload"]);
}

#[test]
fn reload_with_reuse_port_refuses_nothing() {
    let s = echo(2, &[("ECHO_REUSE_PORT", "1".into())]);
    churn_through_reload(&s, &["reload"]);
}

#[test]
fn graceful_reload_serves_long_lived_connections_until_the_graceful_timeout_then_says_goodbye() {
    let s = echo(
        2,
        &[
            ("ECHO_GRACEFUL_TIMEOUT", "3".into()),
            ("ECHO_GOODBYE", "1".into()),
        ],
    );
    let mut clients: Vec<LineClient> = (0..6)
        .map(|_| LineClient::connect(s.port).expect("connect"))
        .collect();
    for c in &mut clients {
        assert_eq!(c.ask("warm").expect("reply"), "warm");
    }
    let reload_at = Instant::now();
    let out = s.run(&["reload", "-g"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every connection keeps working until the retired processes' graceful_timeout.
    let mut seen_retiring = false;
    while reload_at.elapsed() < Duration::from_millis(2300) {
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = format!("c{i}");
            let reply = c.ask(&msg);
            assert!(
                matches!(&reply, Ok(r) if r == &msg),
                "connection {i} cut {:?} after reload -g: {reply:?}",
                reload_at.elapsed()
            );
        }
        if !seen_retiring {
            // `status` shows the retiring processes and the connections each still holds.
            let status = s.status();
            let retiring: Vec<u64> = status["processes"]
                .as_array()
                .expect("processes")
                .iter()
                .filter(|p| p["retiring"] == true)
                .map(|p| p["stats"]["connections"].as_u64().expect("connections"))
                .collect();
            // (A retiring process with no connection left has already exited.)
            assert!(!retiring.is_empty(), "{status}");
            assert_eq!(retiring.iter().sum::<u64>(), 6, "{status}");
            seen_retiring = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // At the limit each connection hears the goodbye, then the close, never a reset.
    for c in &mut clients {
        assert_eq!(c.recv().expect("goodbye"), "bye:restarting");
        let rest = c.read_to_close().expect("a clean close after the goodbye");
        assert_eq!(rest, "");
    }
    assert!(eventually(SETTLE, || {
        s.status()["processes"].as_array().expect("p").len() == 2
    }));
}

#[test]
fn a_worker_marked_not_reloadable_keeps_its_processes_and_hears_on_worker_reload() {
    let s = echo(2, &[("ECHO_RELOADABLE", "0".into())]);
    let before = s.worker_pids();
    let out = s.run(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not reloadable"));
    assert_eq!(s.worker_pids(), before);
    assert!(
        eventually(SETTLE, || { s.stderr().matches("reloading").count() >= 2 }),
        "{}",
        s.stderr()
    );
}

#[test]
fn reload_runs_on_worker_reload_and_on_worker_stop_in_the_old_processes() {
    let s = echo(1, &[]);
    let out = s.run(&["reload"]);
    assert!(out.status.success());
    assert!(
        eventually(SETTLE, || {
            let log = s.stderr();
            log.contains("echo worker 0 reloading") && log.contains("echo worker 0 stopping")
        }),
        "{}",
        s.stderr()
    );
}
