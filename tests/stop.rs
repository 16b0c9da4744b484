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
    // The open connection is still served: a graceful stop waits for its client to leave.
    assert_eq!(c.ask("still here").expect("reply"), "still here");
    drop(c);
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
    let dir = private_tempdir();
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
    let dir = private_tempdir();
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

fn http_server() -> Server {
    let port = free_port();
    Server::start(
        "http_hello",
        &[("HTTP_LISTEN", format!("http://127.0.0.1:{port}"))],
        2,
    )
    .with_port(port)
}

#[test]
fn graceful_stop_answers_the_request_under_way_and_refuses_new_connections_at_once() {
    use std::io::{Read, Write};
    let mut s = http_server();
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    slow.set_read_timeout(Some(SETTLE)).expect("timeout");
    slow.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    std::thread::sleep(Duration::from_millis(200));
    let stopper = s.command(&["stop", "-g"]).spawn().expect("stop -g");
    std::thread::sleep(Duration::from_millis(400));
    // A new client is refused at once: never accepted and then reset.
    let late = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], s.port)),
        Duration::from_secs(2),
    );
    match late {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut c) => {
            c.set_read_timeout(Some(SETTLE)).expect("timeout");
            let sent = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut answer = String::new();
            let read = c.read_to_string(&mut answer);
            panic!(
                "a stopping server accepted a connection: write {sent:?}, read {read:?} {answer:?}"
            );
        }
    }
    // The request under way is answered in full, and the connection then closed.
    let mut answer = String::new();
    slow.read_to_string(&mut answer)
        .expect("the slow response, then a clean close");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert!(answer.ends_with("slept 1500 ms"), "{answer}");
    assert!(stopper.wait_with_output().expect("stop").status.success());
    assert!(s.wait_exit(SETTLE), "master did not exit");
}

#[test]
fn stop_says_goodbye_on_each_text_connection_before_a_clean_close() {
    let mut s = echo(2, &[("ECHO_GOODBYE", "1".into())]);
    let mut clients: Vec<LineClient> = (0..4)
        .map(|_| LineClient::connect(s.port).expect("connect"))
        .collect();
    for c in &mut clients {
        assert_eq!(c.ask("hi").expect("reply"), "hi");
    }
    let out = s.run(&["stop"]);
    assert!(out.status.success());
    for c in &mut clients {
        assert_eq!(c.recv().expect("goodbye"), "bye:stopping");
        assert_eq!(c.read_to_close().expect("a clean close"), "");
    }
    assert!(s.wait_exit(SETTLE));
}

#[test]
fn sighup_reloads_the_workers_and_leaves_the_master_running() {
    let mut s = echo(2, &[]);
    let master = s.master_pid();
    let before = s.worker_pids();
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &master.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(
        eventually(SETTLE, || {
            let now = s.worker_pids();
            now.len() == 2 && now.iter().all(|p| !before.contains(p))
        }),
        "SIGHUP did not replace the workers: {before:?} -> {:?}",
        s.worker_pids()
    );
    assert!(alive(master), "SIGHUP killed the master");
    let state = std::fs::read_to_string(format!("/proc/{master}/stat")).expect("stat");
    let after_name = state.rsplit(')').next().unwrap_or("");
    assert!(!after_name.trim_start().starts_with('Z'), "{state}");
    let mut c = LineClient::connect(s.port).expect("connect");
    assert_eq!(c.ask("after").expect("reply"), "after");
    let out = s.run(&["stop"]);
    assert!(out.status.success());
    assert!(s.wait_exit(SETTLE));
    assert!(!s.run_dir.path().join("master.pid").exists());
    assert!(!s.run_dir.path().join("master.sock").exists());
}
