//! Every transport and protocol of the core, end to end; timers, idle timeouts, recycling and
//! outbound connections.

mod support;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use support::*;

fn echo_at(url: String, count: usize, extra: &[(&str, String)]) -> Server {
    let mut env = vec![("ECHO_LISTEN", url), ("ECHO_COUNT", count.to_string())];
    env.extend(extra.iter().cloned());
    Server::start("echo", &env, count)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn read_frame(s: &mut impl Read) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("header");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    s.read_exact(&mut body).expect("body");
    body
}

#[test]
fn frame_protocol_echoes_binary_messages_split_and_batched() {
    let port = free_port();
    let _s = echo_at(format!("frame://127.0.0.1:{port}"), 1, &[]);
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let body: Vec<u8> = (0..=255u8).collect();
    let bytes = frame(&body);
    let (a, b) = bytes.split_at(3);
    c.write_all(a).expect("write");
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b).expect("write");
    assert_eq!(read_frame(&mut c), body);
    let mut batch = frame(b"one");
    batch.extend(frame(b""));
    batch.extend(frame(b"three"));
    c.write_all(&batch).expect("write");
    assert_eq!(read_frame(&mut c), b"one");
    assert_eq!(read_frame(&mut c), b"");
    assert_eq!(read_frame(&mut c), b"three");
}

#[test]
fn frame_with_an_impossible_length_closes_the_connection() {
    let port = free_port();
    let s = echo_at(format!("frame://127.0.0.1:{port}"), 1, &[]);
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(&[0, 0, 0, 3, 1, 2, 3]).expect("write");
    let mut buf = [0u8; 8];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    assert!(eventually(SETTLE, || s.stderr().contains("frame length 3")));
}

#[test]
fn udp_replies_to_each_datagram_sender() {
    let port = free_port();
    let _s = echo_at(format!("udp://127.0.0.1:{port}"), 2, &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for i in 0..5 {
        let msg = format!("datagram {i}");
        sock.send_to(msg.as_bytes(), ("127.0.0.1", port))
            .expect("send");
        let mut buf = [0u8; 256];
        let (n, from) = sock.recv_from(&mut buf).expect("reply");
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from.port(), port);
    }
}

#[test]
fn a_unix_listener_socket_file_is_removed_at_stop() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("echo.sock");
    let mut s = echo_at(format!("text+unix://{}", path.display()), 1, &[]);
    assert!(path.exists());
    assert!(s.run(&["stop"]).status.success());
    assert!(s.wait_exit(SETTLE));
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn text_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("echo.sock");
    let _s = echo_at(format!("text+unix://{}", path.display()), 2, &[]);
    let mut c = UnixStream::connect(&path).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(b"over unix\r\n").expect("write");
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"over unix\n");
}

#[test]
fn timers_run_in_every_worker_process() {
    let port = free_port();
    let s = echo_at(format!("text://127.0.0.1:{port}"), 1, &[]);
    let mut c = LineClient::connect(port).expect("connect");
    assert!(eventually(SETTLE, || {
        c.ask("ticks").expect("reply").parse::<u64>().expect("n") >= 3
    }));
    assert_eq!(s.status()["processes"][0]["stats"]["timers"], 1);
}

#[test]
fn idle_timeout_closes_silent_connections_only() {
    let port = free_port();
    let _s = echo_at(
        format!("text://127.0.0.1:{port}"),
        1,
        &[("ECHO_IDLE_TIMEOUT", "0.5".into())],
    );
    let mut silent = LineClient::connect(port).expect("connect");
    let mut chatty = LineClient::connect(port).expect("connect");
    for i in 0..10 {
        assert_eq!(chatty.ask(&format!("{i}")).expect("reply"), format!("{i}"));
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        silent.is_closed_by_peer(),
        "silent connection survived its idle timeout"
    );
}

#[test]
fn a_process_is_recycled_after_max_requests() {
    let port = free_port();
    let s = echo_at(
        format!("text://127.0.0.1:{port}"),
        1,
        &[("ECHO_MAX_REQUESTS", "5".into())],
    );
    let first = s.worker_pids();
    let mut c = LineClient::connect(port).expect("connect");
    for i in 0..5 {
        c.ask(&format!("{i}")).expect("reply");
    }
    assert!(
        eventually(SETTLE, || {
            let now = s.worker_pids();
            now.len() == 1 && now != first
        }),
        "not recycled:\n{}",
        s.stderr()
    );
    assert!(s.stderr().contains("max_requests 5"));
    let mut fresh = LineClient::connect(port).expect("connect");
    assert_eq!(fresh.ask("new").expect("reply"), "new");
}

#[test]
fn outbound_connections_relay_to_an_upstream_and_reconnect() {
    let up_port = free_port();
    let upstream = echo_at(format!("text://127.0.0.1:{up_port}"), 1, &[]);
    let relay_port = free_port();
    let relay = Server::start(
        "relay",
        &[
            ("RELAY_LISTEN", format!("text://127.0.0.1:{relay_port}")),
            ("RELAY_UPSTREAM", format!("text://127.0.0.1:{up_port}")),
        ],
        2,
    );
    let mut c = LineClient::connect(relay_port).expect("connect");
    assert!(eventually(SETTLE, || {
        c.ask("via relay")
            .map(|r| r == "via relay")
            .unwrap_or(false)
    }));
    // The upstream is replaced (kill -9 of its worker); the relay reconnects by itself.
    let victim = upstream.worker_pids()[0];
    kill9(victim);
    assert!(
        eventually(SETTLE, || {
            c.ask("after reconnect")
                .map(|r| r == "after reconnect")
                .unwrap_or(false)
        }),
        "relay stderr:\n{}",
        relay.stderr()
    );
}

#[test]
fn a_full_send_buffer_refuses_and_counts_sends_then_drains() {
    let port = free_port();
    let s = echo_at(format!("text://127.0.0.1:{port}"), 1, &[]);
    let mut c = LineClient::connect(port).expect("connect");
    // 64 x 64 KiB = 4 MiB against a 1 MiB bound, queued while the client reads nothing.
    c.send("flood:64").expect("send");
    assert!(eventually(SETTLE, || s.stderr().contains("buffer full")));
    let st = s.status();
    let failed = st["processes"][0]["stats"]["failed_sends"]
        .as_u64()
        .expect("n");
    assert!(failed > 0, "{st}");
    let queued = 64 - failed as usize;
    for _ in 0..queued {
        assert_eq!(c.recv().expect("line").len(), 64 * 1024);
    }
    assert!(eventually(SETTLE, || s.stderr().contains("buffer drained")));
    assert_eq!(c.ask("after").expect("reply"), "after");
    assert!(s
        .stderr()
        .contains(&format!("flood: {queued} of 64 queued")));
}

#[test]
fn pause_recv_holds_input_until_resume() {
    let port = free_port();
    let _s = echo_at(format!("text://127.0.0.1:{port}"), 1, &[]);
    let mut c = LineClient::connect(port).expect("connect");
    let started = std::time::Instant::now();
    c.send("pause:300").expect("send");
    assert_eq!(c.ask("held").expect("reply"), "held");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered while paused"
    );
}

#[test]
fn a_custom_protocol_and_a_code_only_worker_talk_typed_messages() {
    let port = free_port();
    let s = Server::start(
        "json_lines",
        &[("JSON_LISTEN", format!("tcp://127.0.0.1:{port}"))],
        3,
    );
    assert!(
        eventually(SETTLE, || s
            .stdout()
            .contains(r#"ticker got {"echo":{"tick":2}"#)),
        "stdout:\n{}\nstderr:\n{}",
        s.stdout(),
        s.stderr()
    );
    // Bad JSON is refused by the protocol's decode step: that connection closes with a reason.
    let mut c = LineClient::connect(port).expect("connect");
    c.send("{not json").expect("send");
    assert!(c.is_closed_by_peer());
    assert!(eventually(SETTLE, || s.stderr().contains("bad JSON")));
}
