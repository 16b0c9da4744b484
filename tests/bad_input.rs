//! Hostile or broken clients cost their own connection, nothing more.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

#[test]
fn a_line_longer_than_max_package_size_disconnects_only_its_client() {
    let s = echo(1, &[("ECHO_MAX_PACKAGE", "1024".into())]);
    let mut good = LineClient::connect(s.port).expect("connect");
    assert_eq!(good.ask("before").expect("reply"), "before");
    let mut bad = LineClient::connect(s.port).expect("connect");
    let _ = bad.raw().write_all(&vec![b'x'; 4096]);
    assert!(bad.is_closed_by_peer(), "oversized line was not refused");
    assert_eq!(good.ask("after").expect("reply"), "after");
    assert!(
        eventually(SETTLE, || s.stderr().contains("max_package_size")),
        "no logged reason:\n{}",
        s.stderr()
    );
}

#[test]
fn a_client_that_resets_mid_message_causes_no_panic() {
    let s = echo(1, &[]);
    for _ in 0..20 {
        let mut c = LineClient::connect(s.port).expect("connect");
        c.raw().write_all(b"half a mess").expect("write");
        // SO_LINGER 0: close sends a reset instead of a FIN.
        socket2::SockRef::from(&*c.raw())
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(c);
    }
    let mut good = LineClient::connect(s.port).expect("connect");
    assert_eq!(good.ask("fine").expect("reply"), "fine");
    let st = s.status();
    assert_eq!(st["processes"][0]["stats"]["panics"], 0);
    assert!(!s.stderr().contains("panic"), "{}", s.stderr());
}

#[test]
fn a_panicking_handler_closes_its_connection_and_the_others_keep_getting_replies() {
    let s = echo(1, &[]);
    let mut a = LineClient::connect(s.port).expect("connect");
    let mut b = LineClient::connect(s.port).expect("connect");
    assert_eq!(a.ask("a").expect("reply"), "a");
    assert_eq!(b.ask("b").expect("reply"), "b");
    a.send("panic").expect("send");
    assert!(a.is_closed_by_peer(), "panicking connection stayed open");
    for i in 0..5 {
        assert_eq!(b.ask(&format!("b{i}")).expect("reply"), format!("b{i}"));
    }
    let st = s.status();
    assert_eq!(st["processes"][0]["stats"]["panics"], 1, "{st}");
    assert!(s.stderr().contains("asked to panic"), "{}", s.stderr());
    let pid_before = st["processes"][0]["pid"].clone();
    assert_eq!(
        s.status()["processes"][0]["pid"],
        pid_before,
        "the process was lost"
    );
}

#[test]
fn invalid_utf8_on_the_text_protocol_closes_with_a_reason() {
    let s = echo(1, &[]);
    let mut c = LineClient::connect(s.port).expect("connect");
    c.raw().write_all(b"\xff\xfe\n").expect("write");
    assert!(c.is_closed_by_peer());
    assert!(eventually(SETTLE, || s
        .stderr()
        .contains("not valid UTF-8")));
}

#[test]
fn on_close_runs_exactly_once_per_connection() {
    let s = echo(1, &[]);
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut c = LineClient::connect(s.port).expect("connect");
        assert_eq!(c.ask("hi").expect("reply"), "hi");
        match i % 3 {
            0 => drop(c),
            1 => {
                c.send("panic").expect("send");
                assert!(c.is_closed_by_peer());
            }
            _ => {
                c.raw().write_all(b"\xff\n").expect("write");
                assert!(c.is_closed_by_peer());
            }
        }
        ids.push(i);
    }
    assert!(eventually(SETTLE, || {
        s.status()["processes"][0]["stats"]["connections"] == 0
    }));
    let log = s.stderr();
    for id in 1..=6 {
        assert_eq!(
            log.matches(&format!("connection {id} closed\n")).count(),
            1,
            "connection {id}:\n{log}"
        );
    }
}

/// A text client that sends a lot and reads nothing for a while: once its replies fill the send
/// bound the server stops reading it, drops no reply, and when it reads every reply is there.
#[test]
fn a_text_client_that_does_not_read_loses_no_reply() {
    use std::io::Read;
    const LINES: usize = 80_000;
    let s = echo(1, &[]);
    // A small receive buffer, so that the kernel cannot absorb the replies on our side.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], s.port).into();
    sock.connect(&addr.into()).expect("connect");
    let mut c: std::net::TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut w = c.try_clone().expect("clone");
    let line = |n: usize| format!("{n:0>99}\n");
    let writer = std::thread::spawn(move || {
        // 8 MB of replies: more than every kernel buffer between us, and 8 times the send bound.
        for n in 0..LINES {
            if w.write_all(line(n).as_bytes()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let failed: u64 = s.status()["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p["stats"]["failed_sends"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failed, 0, "replies were dropped");
    let expected: Vec<u8> = (0..LINES).flat_map(|n| line(n).into_bytes()).collect();
    let mut got = vec![0u8; expected.len()];
    c.read_exact(&mut got).expect("every reply");
    assert!(got == expected, "the replies differ from the lines sent");
    writer.join().expect("writer");
}
