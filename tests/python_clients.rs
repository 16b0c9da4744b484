//! Clients in another language: Python's `websockets` against the chat example, and `nats-py`
//! publishing to a channel and submitting a task over NATS. The interpreter is `OXWORK_PYTHON`
//! if set (`.ci/run` sets it); otherwise the tests make a virtual environment of their own in
//! the target directory with `python3 -m venv` and pip (once; later runs reuse it), and fail
//! with what to install when they cannot.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

/// The Python libraries the scripts use.
const PACKAGES: [&str; 3] = ["websockets", "nats-py", "prometheus-client"];

fn python() -> String {
    if let Ok(python) = std::env::var("OXWORK_PYTHON") {
        return python;
    }
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let venv = VENV.get_or_init(make_venv);
    venv.join("bin/python").display().to_string()
}

/// `target/tmp/python-clients-venv-PACKAGES` with [`PACKAGES`], made if missing. Made in a directory of
/// its own and renamed into place, so two test runs at once never see a half-made one.
fn make_venv() -> PathBuf {
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Named by its packages, so that a list that grew makes a new environment.
    let venv = home.join(format!("python-clients-venv-{}", PACKAGES.join("-")));
    if venv.join("ready").exists() {
        return venv;
    }
    let building = tempfile::tempdir_in(&home).expect("tempdir");
    let fresh = building.path().join("venv");
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!(
                "{what}: cannot run it ({e}). Install Python 3 with venv (`apt-get install \
                 python3 python3-venv`) or set OXWORK_PYTHON to an interpreter that has {PACKAGES:?}"
            )
        });
        assert!(
            out.status.success(),
            "{what} failed: {}\nInstall Python 3 with venv (`apt-get install python3 \
             python3-venv`) and make PyPI reachable, or set OXWORK_PYTHON to an interpreter \
             that has {PACKAGES:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&fresh),
        "python3 -m venv",
    );
    run(
        Command::new(fresh.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PACKAGES),
        "pip install (the Python clients)",
    );
    std::fs::write(fresh.join("ready"), b"").expect("mark the venv ready");
    // Its `bin/python` finds the environment from its own path, so it works once moved (only
    // pip's scripts name the old path, and they are not used again).
    if std::fs::rename(&fresh, &venv).is_err() && !venv.join("ready").exists() {
        panic!("cannot put the Python environment at {}", venv.display());
    }
    venv
}

fn run_script(python: &str, script: &str, args: &[String], expect: &str) {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .arg(path)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(expect));
}

/// Runs `script PORT` against a fresh ws_chat and expects `expect` in what it prints.
fn against_ws_chat(script: &str, expect: &str) {
    let python = python();
    let port = free_port();
    let _s = Server::start(
        "ws_chat",
        &[("WS_CHAT_LISTEN", format!("websocket://127.0.0.1:{port}"))],
        5,
    );
    run_script(&python, script, &[port.to_string()], expect);
}

#[test]
fn python_websockets_client_chats_through_ws_chat() {
    against_ws_chat("ws_chat_client.py", "python websockets: ok");
}

#[test]
fn python_websockets_clients_are_answered_with_the_chat_subprotocol_they_offer() {
    against_ws_chat("ws_subprotocols.py", "python websockets subprotocols: ok");
}

#[test]
fn python_websockets_clients_chat_compressed_and_a_deflate_bomb_closes_with_1009() {
    let python = python();
    let port = free_port();
    let limit = 100_000;
    let _s = Server::start(
        "ws_chat",
        &[
            ("WS_CHAT_LISTEN", format!("websocket://127.0.0.1:{port}")),
            ("WS_CHAT_MAX_MESSAGE", limit.to_string()),
        ],
        5,
    );
    run_script(
        &python,
        "ws_deflate.py",
        &[port.to_string(), limit.to_string()],
        "python websockets deflate: ok",
    );
}

#[test]
fn an_oxwork_client_talks_compressed_to_a_python_websockets_server() {
    use std::io::BufRead;
    let python = python();
    let upstream = free_port();
    let path = format!(
        "{}/tests/python/ws_deflate_server.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = Command::new(&python)
        .arg(path)
        .arg(upstream.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python server");
    let stdout = child.stdout.take().expect("stdout");
    let _server = ChildGuard(child);
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the server's first line");
    assert_eq!(first.trim(), "listening");
    let port = free_port();
    let bridge = Server::start(
        "ws_bridge",
        &[
            ("WS_BRIDGE_LISTEN", format!("text://127.0.0.1:{port}")),
            ("WS_BRIDGE_UPSTREAM", format!("ws://127.0.0.1:{upstream}/")),
        ],
        1,
    );
    let mut c = LineClient::connect(port).expect("connect");
    let long = "compress me please, ".repeat(50);
    assert!(
        eventually(Duration::from_secs(10), || c
            .ask(&long)
            .is_ok_and(|r| r == format!("echo: {long}"))),
        "bridge stderr:\n{}",
        bridge.stderr()
    );
    let answered = c.ask("/extensions").expect("extensions");
    assert!(
        answered.starts_with("extensions: permessage-deflate"),
        "{answered}"
    );
    assert_eq!(
        c.ask("/subprotocol").expect("subprotocol"),
        "subprotocol: chat"
    );
}

#[test]
fn the_masters_metrics_parse_with_prometheus_own_parser_and_count_what_clients_did() {
    let python = python();
    let metrics_port = free_port();
    let port = free_port();
    let s = Server::start_with_args(
        "echo",
        &["--metrics", &format!("127.0.0.1:{metrics_port}")],
        &[
            ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
            ("ECHO_COUNT", "2".to_string()),
        ],
        2,
    )
    .with_port(port);
    let mut c = LineClient::connect(s.port).expect("connect");
    for i in 0..5 {
        c.ask(&format!("line {i}")).expect("reply");
    }
    let path = format!(
        "{}/tests/python/parse_metrics.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(&python)
        .arg(path)
        .arg(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("a JSON list of samples");
    let sum = |name: &str| -> f64 {
        samples
            .iter()
            .filter(|x| x["name"] == name)
            .filter_map(|x| x["value"].as_f64())
            .sum()
    };
    let of_group = |name: &str| -> Vec<&serde_json::Value> {
        samples
            .iter()
            .filter(|x| x["name"] == name && x["labels"]["group"] == "echo")
            .collect()
    };
    assert_eq!(sum("oxwork_process_messages_total"), 5.0, "{samples:?}");
    assert_eq!(sum("oxwork_process_connections"), 1.0);
    assert_eq!(sum("oxwork_process_accepted_connections_total"), 1.0);
    assert!(sum("oxwork_process_received_bytes_total") >= 5.0 * 7.0);
    assert!(sum("oxwork_process_sent_bytes_total") > 0.0);
    assert_eq!(of_group("oxwork_process_up").len(), 2);
    assert!(of_group("oxwork_process_up")
        .iter()
        .all(|x| x["value"] == 1.0));
    assert!(of_group("oxwork_process_resident_memory_bytes")
        .iter()
        .all(|x| x["value"].as_f64().unwrap_or(0.0) > 1e6));
    assert_eq!(of_group("oxwork_group_processes")[0]["value"], 2.0);
    assert_eq!(
        samples
            .iter()
            .find(|x| x["name"] == "oxwork_process_up")
            .map(|x| x["type"].clone()),
        Some("gauge".into())
    );
    // A killed process is counted as an exit, with its status, once replaced.
    let victim = s.group_pids("echo")[0];
    kill9(victim);
    assert!(eventually(Duration::from_secs(10), || s
        .group_pids("echo")
        .len()
        == 2
        && !s.group_pids("echo").contains(&victim)));
    let out = Command::new(&python)
        .arg(format!(
            "{}/tests/python/parse_metrics.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .output()
        .expect("python runs");
    let samples: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("a JSON list of samples");
    let exits: f64 = samples
        .iter()
        .filter(|x| x["name"] == "oxwork_exits_total" && x["labels"]["group"] == "echo")
        .filter_map(|x| x["value"].as_f64())
        .sum();
    assert_eq!(exits, 1.0, "{samples:?}");
}

#[test]
fn a_python_nats_program_publishes_to_a_channel_and_submits_a_task() {
    let python = python();
    let nats = Nats::start();
    let bus = |node: &str| {
        [
            ("OXWORK_BUS", nats.url.clone()),
            ("OXWORK_NODE", node.to_string()),
        ]
    };
    let port = free_port();
    let mut echo_env = bus("gateway").to_vec();
    echo_env.extend([
        ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
        ("ECHO_COUNT", "1".to_string()),
    ]);
    let _echo = Server::start("echo", &echo_env, 1);
    let _pool = Server::start_with_args("pool_lab", &["--group", "square"], &bus("pool"), 3);
    run_script(
        &python,
        "nats_interop.py",
        &[nats.url.clone(), port.to_string()],
        "python nats: ok",
    );
}

/// Runs `ws_close_codes.py` with `clients` clients against ws_chat, runs `deploy` once they are
/// connected, and returns the script's report.
fn close_codes_through(
    deploy: &[&str],
    clients: usize,
    chat_after: bool,
) -> (serde_json::Value, Server) {
    use std::io::BufRead;
    let python = python();
    let port = free_port();
    let s = Server::start(
        "ws_chat",
        &[("WS_CHAT_LISTEN", format!("websocket://127.0.0.1:{port}"))],
        5,
    )
    .with_port(port);
    let script = format!(
        "{}/tests/python/ws_close_codes.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut cmd = Command::new(&python);
    cmd.arg(script)
        .arg(port.to_string())
        .arg(clients.to_string());
    if chat_after {
        cmd.arg("chat-after");
    }
    let mut child = ChildGuard(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python runs"),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(first, "ready", "the clients did not connect");
    let out = s.run(deploy);
    assert!(
        out.status.success(),
        "{deploy:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(report) = lines.next().and_then(|l| l.ok()) else {
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("no report from the clients after {deploy:?}:\n{err}");
    };
    (serde_json::from_str(&report).expect("a JSON report"), s)
}

/// Kills a child process if the test ends early.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn codes(report: &serde_json::Value) -> Vec<Option<u64>> {
    report["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| c["code"].as_u64())
        .collect()
}

#[test]
fn python_websockets_clients_hear_1012_service_restart_on_reload_and_chat_again() {
    // The first clients may hear their close while later slots are still being replaced:
    // the chat is tried once `reload` has returned.
    let (report, s) = close_codes_through(&["reload"], 8, false);
    assert_eq!(codes(&report), vec![Some(1012); 8], "{report}");
    run_script(
        &python(),
        "ws_chat_client.py",
        &[s.port.to_string()],
        "python websockets: ok",
    );
}

#[test]
fn python_websockets_clients_hear_1001_going_away_on_stop() {
    let (report, _s) = close_codes_through(&["stop"], 8, false);
    assert_eq!(codes(&report), vec![Some(1001); 8], "{report}");
}

#[test]
fn python_websockets_clients_hear_1012_on_restart() {
    // The clients may hear the close before the new master listens: the chat is tried once
    // `restart` has returned.
    let (report, s) = close_codes_through(&["restart", "-d"], 8, false);
    assert_eq!(codes(&report), vec![Some(1012); 8], "{report}");
    run_script(
        &python(),
        "ws_chat_client.py",
        &[s.port.to_string()],
        "python websockets: ok",
    );
}

#[test]
fn python_websockets_clients_are_served_through_a_graceful_reload_until_its_timeout() {
    let (report, _s) = close_codes_through(&["reload", "-g", "--timeout", "2"], 8, true);
    assert_eq!(codes(&report), vec![Some(1012); 8], "{report}");
    for c in report["clients"].as_array().expect("clients") {
        let after = c["after_ms"].as_u64().expect("after_ms");
        assert!(
            after >= 1900,
            "closed {after} ms into a 2 s graceful reload: {report}"
        );
    }
    assert_eq!(report["after"], true, "{report}");
}
