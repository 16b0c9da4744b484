//! Behind load balancers: the PROXY protocol (v1 and v2) and trusted `X-Forwarded-For` /
//! `Forwarded` give the client's address to `remote_ip()` and `connections`; hostile or missing
//! headers are refused or ignored, and the server carries on.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::*;

fn hello(extra: &[(&str, &str)]) -> Server {
    let port = free_port();
    let mut env = vec![("HTTP_LISTEN", format!("http://127.0.0.1:{port}"))];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Server::start("http_hello", &env, 2).with_port(port)
}

/// Sends `bytes` on a new connection and reads until the server closes it.
fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const GET_IP: &[u8] = b"GET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

fn body(response: &str) -> &str {
    response.split("\r\n\r\n").nth(1).unwrap_or("")
}

fn v2_header(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[test]
fn the_proxy_protocol_gives_the_client_address_and_a_connection_without_it_is_refused() {
    let s = hello(&[("HTTP_PROXY_PROTOCOL", "1")]);
    let v1 = [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".as_slice(),
        GET_IP,
    ]
    .concat();
    assert_eq!(body(&exchange(s.port, &v1)), "203.0.113.7");
    let v2 = [v2_header([198, 51, 100, 20], 40000).as_slice(), GET_IP].concat();
    assert_eq!(body(&exchange(s.port, &v2)), "198.51.100.20");
    // curl speaks it too (v1, its own address).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--haproxy-protocol"])
        .arg(format!("http://127.0.0.1:{}/ip", s.port))
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "127.0.0.1");
    // `connections` lists the relayed address of an open connection.
    let mut held = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    held.write_all(b"PROXY TCP4 192.0.2.33 127.0.0.1 6000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 64];
    let _ = held.read(&mut first).expect("a response");
    assert!(
        eventually(Duration::from_secs(5), || s
            .connections()
            .iter()
            .any(|c| c["peer"] == "192.0.2.33:6000")),
        "{:?}",
        s.connections()
    );
    // No header, a forged one, a truncated one that never completes: closed, no answer.
    assert_eq!(exchange(s.port, GET_IP), "");
    assert_eq!(
        exchange(
            s.port,
            &[b"PROXY TCP4 1.2.3.999 1.2.3.4 1 2\r\n".as_slice(), GET_IP].concat()
        ),
        ""
    );
    let started = std::time::Instant::now();
    assert_eq!(exchange(s.port, b"PROXY TCP4 1.2.3.4 "), "");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The server carries on.
    assert_eq!(body(&exchange(s.port, &v1)), "203.0.113.7");
}

#[test]
fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let trusting = hello(&[("HTTP_TRUSTED_PROXIES", "127.0.0.1")]);
    let ip = |s: &Server, header: &str| -> String {
        let request =
            format!("GET /ip HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n");
        body(&exchange(s.port, request.as_bytes())).to_string()
    };
    assert_eq!(
        ip(&trusting, "X-Forwarded-For: 6.6.6.6, 198.51.100.4"),
        "198.51.100.4"
    );
    assert_eq!(
        ip(
            &trusting,
            "Forwarded: for=\"[2001:db8::5]:4711\";proto=https"
        ),
        "2001:db8::5"
    );
    // Garbage in the chain: nothing in it is believed.
    assert_eq!(
        ip(&trusting, "X-Forwarded-For: <script>, 1.2.3.4"),
        "127.0.0.1"
    );
    // curl, as a client behind the proxy would be relayed.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-H",
            "X-Forwarded-For: 203.0.113.99",
        ])
        .arg(format!("http://127.0.0.1:{}/ip", trusting.port))
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "203.0.113.99");
    // A server that trusts only 10.0.0.0/8 ignores the header from us: a client cannot
    // name itself.
    let wary = hello(&[("HTTP_TRUSTED_PROXIES", "10.0.0.0/8")]);
    assert_eq!(ip(&wary, "X-Forwarded-For: 6.6.6.6"), "127.0.0.1");
}

#[test]
fn the_proxy_protocol_works_on_a_unix_listener_too() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("echo.sock");
    let _s = Server::start(
        "echo",
        &[
            ("ECHO_LISTEN", format!("text+unix://{}", path.display())),
            ("ECHO_COUNT", "1".to_string()),
            ("ECHO_PROXY_PROTOCOL", "1".to_string()),
        ],
        1,
    );
    let ask = |bytes: &[u8]| -> String {
        let mut c = UnixStream::connect(&path).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(bytes).expect("write");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while c.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    };
    // The line right behind the header is read whole: nothing of it went with the header.
    assert_eq!(
        ask(b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 80\r\nip\n"),
        "2001:db8::9"
    );
    assert_eq!(
        ask(&[v2_header([192, 0, 2, 77], 999).as_slice(), b"ip\n"].concat()),
        "192.0.2.77"
    );
    assert_eq!(ask(b"ip\n"), "", "no header: closed without an answer");
}
