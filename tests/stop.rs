//! stop, stop -g, daemon mode, and commands against nothing running.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn graceful_stop_lets_an_in_flight_exchange_finish_then_the_master_exits() {
    let mut s = echo(2, &[]);
    let mut c = LineClient::connect(s.port).expect("connect");
    assert_eq!(c.ask("ready").expect("reply"), "ready");
    c.send("slow:800").expect("send");
    std::thread::sleep(Duration::from_millis(100));
    let stopper = s.command(&["stop", "-g"]).spawn().expect("stop -g");
    assert_eq!(c.recv().expect("in-flight reply"), "done:800");
    let out = stopper.wait_with_output().expect("stop output");
    assert!(out.status.success());
    assert!(s.wait_exit(Duration::from_secs(10)), "master did not exit");
}

#[test]
fn stop_closes_connections_and_the_whole_tree_exits() {
    let mut s = echo(2, &[]);
    let pids = s.worker_pids();
    let mut c = LineClient::connect(s.port).expect("connect");
    assert_eq!(c.ask("x").expect("reply"), "x");
    let out = s.run(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.is_closed_by_peer());
    assert!(s.wait_exit(Duration::from_secs(5)));
    assert!(eventually(SETTLE, || pids.iter().all(|p| !alive(*p))));
}

#[test]
fn a_second_start_says_already_running_and_fails() {
    let s = echo(1, &[]);
    let out = s.run(&["start"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(s.worker_pids().len(), 1, "the running tree was disturbed");
}

#[test]
fn commands_against_nothing_running_say_so() {
    let dir = tempfile::tempdir().expect("tmp");
    for cmd in [&["status"][..], &["stop"], &["reload"], &["connections"]] {
        let out = std::process::Command::new(example_bin("echo"))
            .args(cmd)
            .env("OXWORK_RUN_DIR", dir.path())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{cmd:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not running"), "{cmd:?}: {err}");
    }
}

/// Kills a daemon master (found through its pid file) if a test leaves it running.
struct DaemonGuard(std::path::PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
    }
}

#[test]
fn daemon_starts_in_the_background_restarts_and_stops() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let run = |args: &[&str]| {
        std::process::Command::new(example_bin("echo"))
            .args(args)
            .env("OXWORK_RUN_DIR", dir.path())
            .env("ECHO_LISTEN", format!("text://127.0.0.1:{port}"))
            .env("ECHO_COUNT", "2")
            .output()
            .expect("run")
    };
    let _guard = DaemonGuard(dir.path().join("master.pid"));
    let out = run(&["start", "-d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("started as a daemon"));
    let first = std::fs::read_to_string(dir.path().join("master.pid")).expect("pid file");
    let mut c = LineClient::connect(port).expect("connect");
    assert_eq!(c.ask("daemon").expect("reply"), "daemon");

    let out = run(&["restart", "-d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = std::fs::read_to_string(dir.path().join("master.pid")).expect("pid file");
    assert_ne!(first.trim(), second.trim(), "restart kept the same master");
    let mut c = LineClient::connect(port).expect("connect");
    assert_eq!(c.ask("again").expect("reply"), "again");

    let out = run(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join("master.pid").exists(),
        "pid file left behind"
    );
    let pid: u32 = second.trim().parse().expect("pid");
    assert!(
        eventually(SETTLE, || !alive(pid)),
        "master {pid} still alive"
    );
    assert!(std::fs::read_to_string(dir.path().join("oxwork.log"))
        .expect("log")
        .contains("echo worker 0 started"));
}
