//! Clients in another language: Python's `websockets` against the chat example, and `nats-py`
//! publishing to a channel and submitting a task over NATS. The Python interpreter comes from
//! `OXWORK_PYTHON` (`.ci/run` makes a virtual environment with the libraries and sets it);
//! without it the tests say so loudly and do nothing.

mod support;

use std::process::Command;

use support::*;

fn python() -> Option<String> {
    let python = std::env::var("OXWORK_PYTHON").ok();
    if python.is_none() {
        eprintln!("SKIPPED: OXWORK_PYTHON is not set (bash .ci/run sets it up); the Python client test did not run");
    }
    python
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

#[test]
fn python_websockets_client_chats_through_ws_chat() {
    let Some(python) = python() else { return };
    let port = free_port();
    let _s = Server::start(
        "ws_chat",
        &[("WS_CHAT_LISTEN", format!("websocket://127.0.0.1:{port}"))],
        5,
    );
    run_script(
        &python,
        "ws_chat_client.py",
        &[port.to_string()],
        "python websockets: ok",
    );
}

#[test]
fn a_python_nats_program_publishes_to_a_channel_and_submits_a_task() {
    let Some(python) = python() else { return };
    let Some(nats) = Nats::start() else { return };
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
