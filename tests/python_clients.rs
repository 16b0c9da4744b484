//! Clients in another language: Python's `websockets` against the chat example. The Python
//! interpreter comes from `OXWORK_PYTHON` (`.ci/run` makes a virtual environment with the
//! library and sets it); without it the test says so loudly and does nothing.

mod support;

use std::process::Command;

use support::*;

#[test]
fn python_websockets_client_chats_through_ws_chat() {
    let Ok(python) = std::env::var("OXWORK_PYTHON") else {
        eprintln!("SKIPPED: OXWORK_PYTHON is not set (bash .ci/run sets it up); the Python client test did not run");
        return;
    };
    let port = free_port();
    let _s = Server::start(
        "ws_chat",
        &[("WS_CHAT_LISTEN", format!("websocket://127.0.0.1:{port}"))],
        5,
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/ws_chat_client.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python websockets: ok"));
}
