//! Dead workers are replaced; the others carry on.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

#[test]
fn killed_worker_is_replaced_within_a_second_and_other_clients_notice_nothing() {
    let s = echo(4, &[]);
    let mut clients = Vec::new();
    let mut by_pid: HashMap<u32, usize> = HashMap::new();
    for _ in 0..12 {
        let mut c = LineClient::connect(s.port).expect("connect");
        let pid: u32 = c.ask("pid").expect("pid").parse().expect("number");
        *by_pid.entry(pid).or_default() += 1;
        clients.push((pid, c));
    }
    let victim = clients[0].0;
    let before = s.worker_pids();
    kill9(victim);

    let replaced = eventually(SETTLE, || {
        s.try_status().is_some_and(|st| {
            let live: Vec<u64> = st["processes"]
                .as_array()
                .expect("processes")
                .iter()
                .filter(|p| p["busy"] == false)
                .map(|p| p["pid"].as_u64().expect("pid"))
                .collect();
            live.len() == 4 && !live.contains(&u64::from(victim))
        })
    });
    assert!(replaced, "no replacement after kill -9");
    let after = s.worker_pids();
    let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 1, "before {before:?} after {after:?}");

    // The replacement accepts connections: some new connection lands on it.
    let new_pid = *new[0];
    let served = eventually(SETTLE, || {
        LineClient::connect(s.port)
            .and_then(|mut c| c.ask("pid"))
            .map(|p| p == new_pid.to_string())
            .unwrap_or(false)
    });
    assert!(served, "the replacement never served a connection");

    for (pid, c) in clients.iter_mut().filter(|(pid, _)| *pid != victim) {
        assert_eq!(
            c.ask("still here").expect("reply"),
            "still here",
            "client of {pid}"
        );
    }
    assert!(s.stderr().contains("killed by signal 9"), "{}", s.stderr());
}

#[test]
fn a_worker_that_crashes_at_start_is_restarted_with_backoff() {
    let port = free_port();
    let run = private_tempdir();
    let mut child = std::process::Command::new(example_bin("echo"))
        .arg("start")
        .env("OXWORK_RUN_DIR", run.path())
        .env("ECHO_LISTEN", format!("text://127.0.0.1:{port}"))
        .env("ECHO_COUNT", "1")
        .env("ECHO_EXIT_AT_START", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(3500));
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    let exits = log.matches("exited: exit code 3").count();
    // Immediate restarts would give hundreds; backing off 1 s, 2 s, ... gives a handful.
    assert!((2..=5).contains(&exits), "{exits} exits in 3.5 s:\n{log}");
    assert!(log.contains("keeps crashing"), "{log}");
}
