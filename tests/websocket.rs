//! WebSocket against a client crate we do not serve with (tokio-tungstenite) and raw sockets.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn chat(extra: &[(&str, String)]) -> Server {
    let port = free_port();
    let mut env = vec![("WS_CHAT_LISTEN", format!("websocket://127.0.0.1:{port}"))];
    env.extend(extra.iter().cloned());
    let mut s = Server::start("ws_chat", &env, 5);
    s.port = port;
    s
}

const HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw client past its handshake.
fn raw_open(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(HANDSHAKE).expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("handshake reply");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    s
}

fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}

/// Reads until the server's close frame; returns its status code.
fn close_code(s: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let i = all.iter().position(|&b| b == 0x88)?;
    Some(u16::from_be_bytes([*all.get(i + 2)?, *all.get(i + 3)?]))
}

#[test]
fn every_message_reaches_every_client_across_processes() {
    let s = chat(&[]);
    let url = format!("ws://127.0.0.1:{}/ws", s.port);
    let rt = local_runtime();
    let _clients = rt.block_on(async move {
        let mut clients = Vec::new();
        for _ in 0..6 {
            let (ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("connect");
            clients.push(ws);
        }
        // Every process must have subscribed its routing before the first broadcast.
        tokio::time::sleep(Duration::from_millis(300)).await;
        clients[0]
            .send(Message::Text("hello everyone".into()))
            .await
            .expect("send");
        for (i, c) in clients.iter_mut().enumerate() {
            let got = tokio::time::timeout(Duration::from_secs(5), c.next())
                .await
                .unwrap_or_else(|_| panic!("client {i} got nothing"))
                .expect("message")
                .expect("ok");
            assert!(
                got.to_text().expect("text").ends_with(": hello everyone"),
                "{got:?}"
            );
        }
        clients
    });
    let conns = s.connections();
    let mut pids: Vec<u64> = conns
        .iter()
        .map(|c| c["pid"].as_u64().expect("pid"))
        .collect();
    pids.sort();
    pids.dedup();
    assert!(
        pids.len() > 1,
        "all clients on one process; the relay was not tested: {pids:?}"
    );
}

#[test]
fn the_chat_page_is_served_on_the_same_port_and_other_paths_are_refused() {
    let s = chat(&[]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut page = String::new();
    c.read_to_string(&mut page).expect("read");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("new WebSocket"),
        "{page}"
    );
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.write_all(&HANDSHAKE.to_vec().replace_path())
        .expect("write");
    let mut reply = String::new();
    c.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
}

trait ReplacePath {
    fn replace_path(self) -> Vec<u8>;
}

impl ReplacePath for Vec<u8> {
    fn replace_path(self) -> Vec<u8> {
        String::from_utf8_lossy(&self)
            .replacen("GET /ws ", "GET /elsewhere ", 1)
            .into_bytes()
    }
}

#[test]
fn pings_are_answered_with_pongs() {
    let s = chat(&[]);
    let mut c = raw_open(s.port);
    c.write_all(&masked(0x9, true, b"are you there"))
        .expect("ping");
    let mut head = [0u8; 2];
    c.read_exact(&mut head).expect("pong");
    assert_eq!(head, [0x8A, 13]);
    let mut body = [0u8; 13];
    c.read_exact(&mut body).expect("pong body");
    assert_eq!(&body, b"are you there");
}

#[test]
fn an_unmasked_client_frame_is_closed_with_1002() {
    let s = chat(&[]);
    let mut c = raw_open(s.port);
    c.write_all(&[0x81, 0x02, b'h', b'i']).expect("write");
    assert_eq!(close_code(&mut c), Some(1002));
}

#[test]
fn invalid_utf8_in_a_text_frame_is_closed_with_1007() {
    let s = chat(&[]);
    let mut c = raw_open(s.port);
    c.write_all(&masked(0x1, true, b"\xc3\x28")).expect("write");
    assert_eq!(close_code(&mut c), Some(1007));
}

#[test]
fn a_control_frame_over_125_bytes_is_closed_with_1002() {
    let s = chat(&[]);
    let mut c = raw_open(s.port);
    c.write_all(&masked(0x9, true, &[0u8; 200])).expect("write");
    assert_eq!(close_code(&mut c), Some(1002));
}

#[test]
fn a_fragmented_message_over_the_limit_is_closed_with_1009() {
    let s = chat(&[("WS_CHAT_MAX_MESSAGE", "4096".into())]);
    let mut c = raw_open(s.port);
    let mut frames = masked(0x2, false, &[1u8; 1000]);
    for _ in 0..10 {
        frames.extend(masked(0x0, false, &[1u8; 1000]));
    }
    let _ = c.write_all(&frames);
    assert_eq!(close_code(&mut c), Some(1009));
}

#[test]
fn a_handshake_sent_one_byte_per_100_ms_is_cut_at_the_deadline() {
    let s = chat(&[("WS_CHAT_HANDSHAKE_TIMEOUT", "1".into())]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let started = Instant::now();
    let mut closed = false;
    for b in HANDSHAKE {
        if c.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(closed, "the slow handshake was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut late: {:?}",
        started.elapsed()
    );
    assert!(eventually(SETTLE, || s
        .stderr()
        .contains("handshake not completed in time")));
}

fn bridge(upstream: String, extra: &[(&str, String)]) -> (Server, u16) {
    let port = free_port();
    let mut env = vec![
        ("WS_BRIDGE_LISTEN", format!("text://127.0.0.1:{port}")),
        ("WS_BRIDGE_UPSTREAM", upstream),
    ];
    env.extend(extra.iter().cloned());
    (Server::start("ws_bridge", &env, 1), port)
}

#[test]
fn an_outbound_ws_connection_relays_both_ways_and_reconnects() {
    let chat_server = chat(&[]);
    let (b, port) = bridge(format!("ws://127.0.0.1:{}/ws", chat_server.port), &[]);
    let mut c = LineClient::connect(port).expect("connect");
    assert!(
        eventually(SETTLE, || c
            .ask("over the bridge")
            .map(|r| r.ends_with(": over the bridge"))
            .unwrap_or(false)),
        "bridge stderr:\n{}",
        b.stderr()
    );
    // The chat process holding the bridge's socket dies; the bridge reconnects by itself.
    let holder = chat_server.connections()[0]["pid"].as_u64().expect("pid") as u32;
    kill9(holder);
    // Each try waits briefly: a line sent into the dead connection is lost, not late.
    assert!(
        eventually(SETTLE, || {
            c.send("after reconnect").is_ok()
                && c.recv_timeout(Duration::from_millis(500))
                    .is_some_and(|r| r.ends_with(": after reconnect"))
        }),
        "bridge stderr:\n{}",
        b.stderr()
    );
}

#[test]
fn an_outbound_ws_connection_offers_a_subprotocol_and_learns_the_servers_choice() {
    let chat_server = chat(&[]);
    let (b, port) = bridge(format!("ws://127.0.0.1:{}/ws", chat_server.port), &[]);
    let mut c = LineClient::connect(port).expect("connect");
    assert!(
        eventually(SETTLE, || c
            .ask("/subprotocol")
            .is_ok_and(|r| r == "subprotocol: chat")),
        "bridge stderr:\n{}",
        b.stderr()
    );
}

#[test]
fn an_http_worker_accepts_websocket_upgrades_on_its_chosen_path() {
    let port = free_port();
    let _s = Server::start(
        "http_hello",
        &[("HTTP_LISTEN", format!("http://127.0.0.1:{port}"))],
        2,
    );
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut page = String::new();
    c.read_to_string(&mut page).expect("read");
    assert!(page.ends_with("Hello World"), "{page}");
    local_runtime().block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .expect("upgrade on /ws");
        ws.send(Message::Text("echo me".into()))
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("in time")
            .expect("msg")
            .expect("ok");
        assert_eq!(got.to_text().expect("text"), "echo me");
        // An upgrade on a path without a route stays HTTP.
        let refused =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/not-a-socket")).await;
        assert!(refused.is_err(), "upgraded on a path without a route");
    });
}

#[test]
fn a_silent_client_is_pinged_and_closed_when_it_does_not_answer() {
    let s = chat(&[
        ("WS_CHAT_PING", "1".into()),
        ("WS_CHAT_PONG_TIMEOUT", "1".into()),
    ]);
    let mut c = raw_open(s.port);
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut ping = [0u8; 2];
    c.read_exact(&mut ping).expect("a ping");
    assert_eq!(ping, [0x89, 0], "an empty ping");
    let pinged_after = started.elapsed();
    // No answer: the connection is closed about a second later.
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let closed_after = started.elapsed();
    assert!(
        pinged_after >= Duration::from_millis(900) && pinged_after < Duration::from_secs(3),
        "pinged after {pinged_after:?}"
    );
    assert!(
        closed_after >= pinged_after + Duration::from_millis(900)
            && closed_after < pinged_after + Duration::from_secs(3),
        "closed {closed_after:?} after the start, pinged at {pinged_after:?}"
    );
}

#[test]
fn a_quiet_client_that_answers_pings_stays_connected() {
    let s = chat(&[
        ("WS_CHAT_PING", "0.5".into()),
        ("WS_CHAT_PONG_TIMEOUT", "0.5".into()),
    ]);
    let url = format!("ws://127.0.0.1:{}/ws", s.port);
    local_runtime().block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        // Silent for 4 s, 8 ping intervals: tungstenite answers each ping as it reads.
        let mut pings = 0;
        let quiet_until = tokio::time::Instant::now() + Duration::from_secs(4);
        while let Ok(Some(frame)) = tokio::time::timeout_at(quiet_until, ws.next()).await {
            match frame.expect("still open") {
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pings >= 4, "{pings} pings in 4 s");
        ws.send(Message::Text("still here".into()))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return t.to_string(),
                    Some(Ok(_)) => continue,
                    other => panic!("closed: {other:?}"),
                }
            }
        })
        .await
        .expect("the chat line");
        assert!(echoed.ends_with("still here"), "{echoed}");
    });
}
