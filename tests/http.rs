//! HTTP/1.1 against real clients: curl, a Rust client (ureq), and raw sockets for pipelining
//! and hostile input.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn http_server(extra: &[(&str, String)]) -> (Server, String) {
    let port = free_port();
    let mut env = vec![("HTTP_LISTEN", format!("http://127.0.0.1:{port}"))];
    env.extend(extra.iter().cloned());
    let mut s = Server::start("http_hello", &env, 2);
    s.port = port;
    (s, format!("http://127.0.0.1:{port}"))
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn raw_exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn curl_gets_hello_world_as_text_plain() {
    let (_s, base) = http_server(&[]);
    let (out, _) = curl(&["-i", &format!("{base}/")]);
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("Content-Type: text/plain"), "{out}");
    assert!(out.ends_with("Hello World"), "{out}");
}

#[test]
fn curl_reuses_one_keep_alive_connection() {
    let (_s, base) = http_server(&[]);
    let (_, err) = curl(&["-v", &format!("{base}/"), &format!("{base}/echo")]);
    assert!(err.contains("Re-using existing connection"), "{err}");
}

#[test]
fn curl_head_gets_headers_only() {
    let (_s, base) = http_server(&[]);
    let (out, _) = curl(&["-I", &format!("{base}/")]);
    assert!(out.contains("Content-Length: 11"), "{out}");
    assert!(!out.contains("Hello World"), "{out}");
}

#[test]
fn curl_range_request_gets_206_with_the_slice() {
    let (_s, base) = http_server(&[]);
    let (out, _) = curl(&["-i", "-r", "4-9", &format!("{base}/file")]);
    assert!(out.starts_with("HTTP/1.1 206"), "{out}");
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/http_hello.rs"
    ))
    .expect("source");
    assert!(out.ends_with(&src[4..10]), "{out}");
    assert!(
        out.contains(&format!("Content-Range: bytes 4-9/{}", src.len())),
        "{out}"
    );
    let (out, _) = curl(&["-i", "-r", "999999-", &format!("{base}/file")]);
    assert!(out.starts_with("HTTP/1.1 416"), "{out}");
}

#[test]
fn curl_chunked_upload_and_multipart_upload() {
    let (_s, base) = http_server(&[]);
    let (out, _) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "streamed body",
        &format!("{base}/echo"),
    ]);
    assert!(out.contains(r#""body":"streamed body""#), "{out}");
    let dir = tempfile::tempdir().expect("tmp");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 600_000]).expect("write");
    let (out, _) = curl(&[
        "-F",
        "title=holiday",
        "-F",
        &format!("photo=@{}", big.display()),
        &format!("{base}/upload"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["fields"][0], serde_json::json!(["title", "holiday"]));
    assert_eq!(v["files"][0]["size"], 600_000);
    assert_eq!(
        v["files"][0]["on_disk"], true,
        "a large upload should spill to a temporary file"
    );
}

#[test]
fn a_rust_client_gets_json_and_cookies() {
    let (_s, base) = http_server(&[]);
    let mut resp = ureq::get(&format!("{base}/echo?x=1&y=two%20words"))
        .header("Cookie", "session=abc")
        .call()
        .expect("request");
    assert_eq!(resp.status(), 200);
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(set_cookie.starts_with("visited=yes"), "{set_cookie}");
    let text = resp.body_mut().read_to_string().expect("body");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v["query"],
        serde_json::json!([["x", "1"], ["y", "two words"]])
    );
    assert_eq!(v["cookies"], serde_json::json!([["session", "abc"]]));
}

#[test]
fn three_pipelined_requests_in_one_write_get_three_responses_in_order() {
    let (s, _) = http_server(&[]);
    let out = raw_exchange(
        s.port,
        b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    let (a, b, c) = (
        out.find(r#"["n","1"]"#),
        out.find(r#"["n","2"]"#),
        out.find(r#"["n","3"]"#),
    );
    assert!(a < b && b < c && a.is_some(), "out of order: {out}");
}

#[test]
fn server_sent_events_and_chunked_streams_arrive_whole() {
    let (_s, base) = http_server(&[]);
    let (out, _) = curl(&["-N", &format!("{base}/events")]);
    assert_eq!(out.matches("event: tick").count(), 3, "{out}");
    assert!(out.contains("data: tick 3"));
    let (out, _) = curl(&[&format!("{base}/chunked")]);
    assert_eq!(out, "part 0\npart 1\npart 2\n");
}

fn status_of(reply: &str) -> &str {
    reply.get(9..12).unwrap_or("")
}

#[test]
fn hostile_requests_get_their_status_and_only_their_connection_closes() {
    let (s, base) = http_server(&[("HTTP_MAX_BODY", "100000".into())]);
    let huge_header = format!(
        "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    assert_eq!(
        status_of(&raw_exchange(s.port, huge_header.as_bytes())),
        "431"
    );
    let many: String = (0..10_000).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        status_of(&raw_exchange(
            s.port,
            format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()
        )),
        "431"
    );
    assert_eq!(
        status_of(&raw_exchange(
            s.port,
            b"POST /echo HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"
        )),
        "413"
    );
    let mut chunked = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..200 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend(std::iter::repeat_n(b'z', 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    assert_eq!(status_of(&raw_exchange(s.port, &chunked)), "413");
    assert_eq!(
        status_of(&raw_exchange(
            s.port,
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\n"
        )),
        "400"
    );
    assert_eq!(
        status_of(&raw_exchange(
            s.port,
            b"\x00\x01\x02 garbage garbage\r\n\r\n"
        )),
        "400"
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "u".repeat(20_000));
    assert_eq!(status_of(&raw_exchange(s.port, long_uri.as_bytes())), "414");
    assert_eq!(
        status_of(&raw_exchange(s.port, b"GET / HTTP/3.0\r\n\r\n")),
        "505"
    );
    // Everyone else is served as before, and nothing panicked.
    let (out, _) = curl(&[&format!("{base}/")]);
    assert_eq!(out, "Hello World");
    assert_eq!(s.status()["processes"][0]["stats"]["panics"], 0);
}

#[test]
fn request_data_copied_into_a_header_cannot_split_the_response() {
    let (s, _base) = http_server(&[]);
    let answer = raw_exchange(
        s.port,
        b"GET /redirect?to=/x%0d%0aSet-Cookie:%20evil=1%0d%0a%0d%0aHTTP/1.1%20200%20OK HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("\r\nSet-Cookie: evil"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    let fine = raw_exchange(
        s.port,
        b"GET /redirect?to=/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(fine.starts_with("HTTP/1.1 302"), "{fine}");
    assert!(fine.contains("Location: /next\r\n"), "{fine}");
}

/// Slowloris: 2,000 connections each sending a request head one byte every 5 s. Every one is
/// cut off with a 408 once the head timeout (10 s by default) has passed since its first byte,
/// while a normal client keeps being answered.
/// A client that sends `opening`, then one byte every `every`, reading whatever comes, until
/// the server closes or `give_up` passes: how long it lasted, and whether it was told 408.
async fn trickle(
    port: u16,
    opening: &'static [u8],
    every: Duration,
    give_up: Duration,
) -> (Duration, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect (raise `ulimit -n` above 2,100 if this fails)");
    let started = std::time::Instant::now();
    let _ = c.write_all(opening).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            n = c.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => {
                let _ = c.write_all(b"a").await;
            }
            _ = tokio::time::sleep(give_up) => break,
        }
    }
    (started.elapsed(), got.starts_with(b"HTTP/1.1 408"))
}

#[test]
fn slowloris_connections_are_cut_off_at_the_head_timeout_and_normal_requests_carry_on() {
    const ATTACKERS: usize = 2000;
    let (s, _base) = http_server(&[]);
    let port = s.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let normal = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut waits = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                let answer = raw_exchange(
                    port,
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                );
                assert!(
                    answer.starts_with("HTTP/1.1 200"),
                    "normal request failed: {answer:?}"
                );
                waits.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            waits
        })
    };
    let cut_after: Vec<(Duration, bool)> = local_runtime().block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..ATTACKERS {
            tasks.push(tokio::task::spawn_local(trickle(
                port,
                b"GET / HTTP/1.1\r\nX-Slow: ",
                Duration::from_secs(5),
                Duration::from_secs(30),
            )));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("attacker"));
        }
        out
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut waits = normal.join().expect("normal client");
    let slowest_cut = cut_after.iter().map(|(d, _)| *d).max().unwrap_or_default();
    let answered_408 = cut_after.iter().filter(|(_, r)| *r).count();
    assert_eq!(answered_408, ATTACKERS, "not every slow head got a 408");
    assert!(
        cut_after.iter().all(|(d, _)| *d >= Duration::from_secs(9)),
        "a connection was cut before the head timeout"
    );
    assert!(
        slowest_cut < Duration::from_secs(20),
        "the last attacker was cut off only after {slowest_cut:?}"
    );
    waits.sort();
    eprintln!(
        "{ATTACKERS} slowloris connections cut off with 408 by {slowest_cut:?}; {} normal \
         requests meanwhile, median {:?}, slowest {:?}",
        waits.len(),
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
}

/// Bodies trickled below the minimum rate (240 B/s after a 5 s grace, by default) are cut off
/// with 408, while an upload that is slow but above the rate is answered.
#[test]
fn request_bodies_trickled_below_the_minimum_rate_are_cut_off_and_slow_uploads_are_not() {
    const ATTACKERS: usize = 200;
    let (s, _base) = http_server(&[]);
    let port = s.port;
    let honest = std::thread::spawn(move || {
        // 24 KiB at about 3 KiB/s: past the grace, well above the rate.
        let body = vec![b'x'; 24 * 1024];
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).expect("head");
        for chunk in body.chunks(512) {
            c.write_all(chunk).expect("a slow upload was cut off");
            std::thread::sleep(Duration::from_millis(160));
        }
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    });
    let cut_after: Vec<(Duration, bool)> = local_runtime().block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..ATTACKERS {
            tasks.push(tokio::task::spawn_local(trickle(
                port,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
                Duration::from_secs(1),
                Duration::from_secs(20),
            )));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("attacker"));
        }
        out
    });
    let answer = honest.join().expect("honest client");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the slow upload: {answer:?}"
    );
    let refused = cut_after.iter().filter(|(_, r)| *r).count();
    assert_eq!(refused, ATTACKERS, "every trickler gets 408");
    let slowest = cut_after.iter().map(|(d, _)| *d).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(9),
        "the last trickler was cut off after {slowest:?}"
    );
    eprintln!("{ATTACKERS} body tricklers cut off with 408 by {slowest:?}");
}

fn worker_connections_and_memory(s: &Server) -> (u64, u64) {
    let st = s.status();
    let workers: Vec<Value> = st["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["worker"] == "http_hello")
        .cloned()
        .collect();
    (
        workers
            .iter()
            .map(|p| p["stats"]["connections"].as_u64().unwrap_or(0))
            .sum(),
        workers
            .iter()
            .map(|p| p["memory_bytes"].as_u64().unwrap_or(0))
            .sum(),
    )
}

/// A response with `Connection: close` to a client that reads nothing: once the peer has taken
/// nothing for 10 s the connection is dropped, not held with its send buffer forever.
#[test]
fn a_closing_connection_whose_peer_reads_nothing_is_dropped_after_the_stall_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 64 * 1024 * 1024]).expect("big file");
    let (s, _base) = http_server(&[("HTTP_FILE", big.display().to_string())]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.write_all(b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || worker_connections_and_memory(&s)
            .0
            == 1),
        "the connection was not counted"
    );
    assert!(
        eventually(Duration::from_secs(30), || worker_connections_and_memory(
            &s
        )
        .0 == 0),
        "a closing connection whose peer reads nothing was held for 30 s"
    );
    let dropped_after = started.elapsed();
    assert!(
        dropped_after >= Duration::from_secs(9),
        "dropped before the stall limit: {dropped_after:?}"
    );
    eprintln!("a never-reading client's closing connection was dropped after {dropped_after:?}");
    drop(c);
}

/// 20 clients that pipeline requests and never read cost a worker at most about their send
/// bound (1 MiB) and a read buffer each, and the memory is given back when they go.
#[test]
fn twenty_never_reading_clients_hold_at_most_their_bounds() {
    const CLIENTS: usize = 20;
    let (s, _base) = http_server(&[]);
    let (_, before) = worker_connections_and_memory(&s);
    let mut clients = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..CLIENTS {
        let c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
        let mut w = c.try_clone().expect("clone");
        writers.push(std::thread::spawn(move || {
            let many = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
            // Blocks once the server stops reading; ends when the test shuts the socket.
            while w.write_all(&many).is_ok() {}
        }));
        clients.push(c);
    }
    // Until every client's connection has stopped being served (its send bound reached):
    // all of them counted and the memory steady. On a loaded machine a worker still busy
    // answering pipelined requests misses a status deadline (and counts nothing), so this
    // waits rather than reading once after a fixed pause.
    let (mut conns, mut during) = (0, 0);
    let steady = eventually(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(300));
        let (n, memory) = worker_connections_and_memory(&s);
        let was = std::mem::replace(&mut during, memory);
        conns = n;
        n == CLIENTS as u64 && memory.abs_diff(was) < 256 * 1024
    });
    assert!(
        steady,
        "{conns} of {CLIENTS} connections counted, memory not steady"
    );
    let per_client = during.saturating_sub(before) / CLIENTS as u64;
    for c in &clients {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    for w in writers {
        let _ = w.join();
    }
    drop(clients);
    assert!(
        eventually(Duration::from_secs(10), || worker_connections_and_memory(
            &s
        )
        .0 == 0),
        "the clients' connections were not closed"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, after) = worker_connections_and_memory(&s);
    eprintln!(
        "{CLIENTS} never-reading clients: workers {} MiB before, {} MiB with them ({} KiB each), \
         {} MiB after they left",
        before >> 20,
        during >> 20,
        per_client >> 10,
        after >> 20
    );
    assert!(
        per_client <= 2 * 1024 * 1024,
        "each never-reading client held {} KiB, over its bound",
        per_client >> 10
    );
    assert!(
        after <= before + (during - before) / 2 + 4 * 1024 * 1024,
        "the memory was not given back: {} MiB before, {} MiB with the clients, {} MiB after",
        before >> 20,
        during >> 20,
        after >> 20
    );
}

/// A client that pipelines thousands of requests and reads nothing for a while: the server stops
/// reading it once the send buffer is full, drops no response, never answers 413, and when the
/// client reads, every response is there, in order.
#[test]
fn a_pipelining_client_that_does_not_read_is_paused_not_dropped() {
    const REQUESTS: usize = 200_000;
    let (s, _base) = http_server(&[]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let writer = {
        let mut w = c.try_clone().expect("clone");
        std::thread::spawn(move || {
            let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            for _ in 0..REQUESTS {
                if w.write_all(one).is_err() {
                    break;
                }
            }
        })
    };
    // Not reading for a while: the server must hold, not drop.
    std::thread::sleep(Duration::from_secs(2));
    let stats = s.status();
    let failed: u64 = stats["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p["stats"]["failed_sends"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failed, 0, "responses were dropped: {stats}");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut responses, mut scanned) = (0usize, 0usize);
    while responses < REQUESTS {
        let n = c.read(&mut buf).expect("responses keep coming");
        assert!(n > 0, "closed after {responses} responses");
        got.extend_from_slice(&buf[..n]);
        // Count status lines in what arrived, overlapping the last one's tail.
        let from = scanned.saturating_sub(11);
        for w in got[from..].windows(12) {
            assert_ne!(w, b"HTTP/1.1 413", "a 413 came back");
            if w == b"HTTP/1.1 200" {
                responses += 1;
            }
        }
        scanned = got.len();
        got.drain(..from);
        scanned -= from;
    }
    assert_eq!(responses, REQUESTS);
    writer.join().expect("writer");
}
