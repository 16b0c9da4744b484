//! The load generator: N connections, each keeping `depth` requests in flight, recording the
//! round-trip latency of every batch in an HDR histogram.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Proto {
    Text,
    Frame,
    Http,
    WebSocket,
    /// WebSocket carrying a JSON chat message (text that compresses as chat does).
    WebSocketJson,
    /// The same message with permessage-deflate (compressed once: without context takeover
    /// every copy compresses the same).
    WebSocketDeflate,
}

/// A JSON chat message of exactly `size` bytes (at least 48).
pub fn chat_message(size: usize) -> Vec<u8> {
    let words =
        "the quick brown fox jumps over the lazy dog and says hello to everyone in the room ";
    let mut text = String::new();
    while text.len() + 48 < size {
        text.push_str(words);
    }
    let mut m = format!(r#"{{"user":"user0042","room":"lobby","text":"{text}"}}"#).into_bytes();
    m.truncate(size.saturating_sub(2));
    m.extend_from_slice(b"\"}");
    m
}

/// `message` as permessage-deflate sends it: raw deflate, sync flush, its last four bytes
/// left off (RFC 7692 7.2.1).
fn deflated(message: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::new(1), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    c.compress_vec(message, &mut out, FlushCompress::Sync)
        .expect("deflate");
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    out
}

/// A masked client frame; `first` is its first byte (FIN, RSV1, opcode).
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut v = vec![first];
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

impl Proto {
    pub fn scheme(&self) -> &'static str {
        match self {
            Proto::Text => "text",
            Proto::Frame => "frame",
            Proto::Http => "http",
            Proto::WebSocket | Proto::WebSocketJson | Proto::WebSocketDeflate => "websocket",
        }
    }

    fn request(&self, size: usize) -> Vec<u8> {
        match self {
            Proto::Text => {
                let mut v = vec![b'x'; size];
                v.push(b'\n');
                v
            }
            Proto::Frame => {
                let mut v = ((size + 4) as u32).to_be_bytes().to_vec();
                v.extend(std::iter::repeat_n(b'x', size));
                v
            }
            Proto::Http => b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
            Proto::WebSocket => masked_frame(0x81, &vec![b'x'; size]),
            Proto::WebSocketJson => masked_frame(0x81, &chat_message(size)),
            Proto::WebSocketDeflate => masked_frame(0xC1, &deflated(&chat_message(size))),
        }
    }

    /// What a connection sends once before its requests (a WebSocket upgrade), and how the
    /// answer to it ends.
    fn opening(&self) -> Option<&'static [u8]> {
        match self {
            Proto::WebSocket | Proto::WebSocketJson => Some(b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            Proto::WebSocketDeflate => Some(b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"),
            _ => None,
        }
    }

    /// How many whole replies `buf` starts with, and how many bytes they take.
    fn replies(&self, buf: &[u8]) -> Result<(usize, usize), String> {
        let mut used = 0;
        let mut n = 0;
        loop {
            let rest = &buf[used..];
            let len = match self {
                Proto::Text => rest.iter().position(|&b| b == b'\n').map(|i| i + 1),
                Proto::Frame => {
                    if rest.len() < 4 {
                        None
                    } else {
                        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                        (rest.len() >= len).then_some(len)
                    }
                }
                Proto::WebSocket | Proto::WebSocketJson | Proto::WebSocketDeflate => {
                    if rest.len() < 2 {
                        None
                    } else {
                        match rest[1] & 0x7F {
                            126 if rest.len() >= 4 => {
                                let len = 4 + u16::from_be_bytes([rest[2], rest[3]]) as usize;
                                (rest.len() >= len).then_some(len)
                            }
                            126 | 127 => None,
                            n => (rest.len() >= 2 + n as usize).then_some(2 + n as usize),
                        }
                    }
                }
                Proto::Http => {
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(rest).map_err(|e| format!("bad response: {e}"))? {
                        httparse::Status::Partial => None,
                        httparse::Status::Complete(head) => {
                            let body: usize = resp
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .and_then(|h| {
                                    std::str::from_utf8(h.value).ok()?.trim().parse().ok()
                                })
                                .unwrap_or(0);
                            (rest.len() >= head + body).then_some(head + body)
                        }
                    }
                }
            };
            match len {
                Some(l) => {
                    used += l;
                    n += 1;
                }
                None => return Ok((n, used)),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub proto: Proto,
    pub connections: usize,
    pub depth: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

/// Runs the load; `on_measure_start` is called when the warm-up ends (to sample the server).
pub fn run(spec: Spec, addr: SocketAddr, on_measure_start: impl FnOnce()) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let hist = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        ));
        let counters = Rc::new(RefCell::new((0u64, 0u64)));
        let start = Instant::now();
        let measure_from = start + spec.warmup;
        let end = measure_from + spec.duration;
        let mut tasks = Vec::new();
        for _ in 0..spec.connections {
            let (hist, counters) = (hist.clone(), counters.clone());
            tasks.push(tokio::task::spawn_local(async move {
                if let Err(e) =
                    one_connection(spec, addr, measure_from, end, &hist, &counters).await
                {
                    counters.borrow_mut().1 += 1;
                    eprintln!("connection error: {e}");
                }
            }));
        }
        tokio::time::sleep_until(measure_from.into()).await;
        on_measure_start();
        for t in tasks {
            let _ = t.await;
        }
        let (requests, errors) = *counters.borrow();
        let latency = hist.borrow().clone();
        Outcome {
            requests,
            errors,
            elapsed: spec.duration,
            latency,
        }
    })
}

async fn one_connection(
    spec: Spec,
    addr: SocketAddr,
    measure_from: Instant,
    end: Instant,
    hist: &RefCell<Histogram<u64>>,
    counters: &RefCell<(u64, u64)>,
) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    open_session(&mut s, spec.proto).await?;
    let one = spec.proto.request(spec.size);
    let batch: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * spec.depth)
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return Ok(());
        }
        s.write_all(&batch).await.map_err(|e| e.to_string())?;
        let mut got = 0;
        while got < spec.depth {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = s
                .read(&mut buf[filled..])
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            filled += n;
            let (replies, used) = spec.proto.replies(&buf[..filled])?;
            got += replies;
            buf.copy_within(used..filled, 0);
            filled -= used;
        }
        let done = Instant::now();
        if t0 >= measure_from && done <= end {
            let us = (done - t0).as_micros().max(1) as u64;
            let _ = hist.borrow_mut().record_n(us, spec.depth as u64);
            counters.borrow_mut().0 += spec.depth as u64;
        }
    }
}

/// Sends the protocol's opening (a WebSocket upgrade) and reads its answer to the end.
/// Bytes on the wire for one message and its reply (both directions, frame headers included),
/// measured on one connection of its own.
pub fn wire_bytes_per_message(
    addr: SocketAddr,
    proto: Proto,
    size: usize,
) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        open_session(&mut s, proto).await?;
        let request = proto.request(size);
        s.write_all(&request).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let (n, used) = proto.replies(&buf)?;
            if n >= 1 {
                return Ok(request.len() + used);
            }
            let got = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if got == 0 {
                return Err("closed before the reply".into());
            }
            buf.extend_from_slice(&chunk[..got]);
        }
    })
}

async fn open_session(s: &mut TcpStream, proto: Proto) -> Result<(), String> {
    let Some(opening) = proto.opening() else {
        return Ok(());
    };
    s.write_all(opening).await.map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed during the handshake".into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "handshake refused: {}",
            String::from_utf8_lossy(&head)
        ));
    }
    Ok(())
}

/// Opens `n` connections (at most `parallel` connecting at once), has each exchange one
/// message, and keeps them open; returns them and how long that took.
pub fn open_idle(
    addr: SocketAddr,
    n: usize,
    parallel: usize,
    proto: Proto,
) -> (Vec<std::net::TcpStream>, Duration, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let started = Instant::now();
        let sem = Rc::new(tokio::sync::Semaphore::new(parallel));
        let local = tokio::task::LocalSet::new();
        let results = local
            .run_until(async {
                let mut tasks = Vec::new();
                for _ in 0..n {
                    let sem = sem.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        let _permit = sem.acquire().await.ok()?;
                        let mut s = TcpStream::connect(addr).await.ok()?;
                        open_session(&mut s, proto).await.ok()?;
                        let hello = proto.request(2);
                        s.write_all(&hello).await.ok()?;
                        let mut b = vec![0u8; if proto == Proto::WebSocket { 4 } else { 3 }];
                        s.read_exact(&mut b).await.ok()?;
                        s.into_std().ok()
                    }));
                }
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.ok().flatten());
                }
                out
            })
            .await;
        let errors = results.iter().filter(|r| r.is_none()).count() as u64;
        (
            results.into_iter().flatten().collect(),
            started.elapsed(),
            errors,
        )
    })
}

/// Connect, send one line, read the echo, close: repeated by `workers` loops until `stop`.
/// Returns (exchanges, failures, first failures).
pub fn churn(
    addr: SocketAddr,
    workers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64, Vec<String>) {
    use std::io::{BufRead, BufReader, Write};
    let mut threads = Vec::new();
    for w in 0..workers {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let (mut ok, mut bad, mut why) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let msg = format!("w{w}-{i}\n");
                let r = (|| -> std::io::Result<String> {
                    let mut s = std::net::TcpStream::connect(addr)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(msg.as_bytes())?;
                    let mut line = String::new();
                    BufReader::new(s).read_line(&mut line)?;
                    Ok(line)
                })();
                match r {
                    Ok(line) if line == msg => ok += 1,
                    Ok(line) => {
                        bad += 1;
                        why.push(format!("wrong reply {line:?}"));
                    }
                    Err(e) => {
                        bad += 1;
                        why.push(e.to_string());
                    }
                }
            }
            (ok, bad, why)
        }));
    }
    tally(threads)
}

/// Keep-alive HTTP clients as a careful one behaves: each of `workers` loops sends `GET /` on
/// its connection and reads the whole response (status, headers, `Content-Length` body); after
/// a response with `Connection: close` it opens a new connection. Anything else (a reset, a
/// close before the response, a malformed or non-200 response) is a failure. Runs until
/// `stop`; returns (responses, failures, first failures).
pub fn keep_alive_http(
    addr: SocketAddr,
    workers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64, Vec<String>) {
    use std::io::{Read, Write};
    let mut threads = Vec::new();
    for _ in 0..workers {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let (mut ok, mut bad, mut why) = (0u64, 0u64, Vec::new());
            let mut conn: Option<std::net::TcpStream> = None;
            let mut buf = vec![0u8; 16 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let outcome = (|| -> Result<bool, String> {
                    if conn.is_none() {
                        let s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))
                            .map_err(|e| e.to_string())?;
                        conn = Some(s);
                    }
                    let s = conn.as_mut().ok_or("no connection")?;
                    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                        .map_err(|e| format!("write: {e}"))?;
                    let mut filled = 0;
                    loop {
                        let n = s
                            .read(&mut buf[filled..])
                            .map_err(|e| format!("read: {e}"))?;
                        if n == 0 {
                            return Err("closed before the response".into());
                        }
                        filled += n;
                        let mut headers = [httparse::EMPTY_HEADER; 32];
                        let mut resp = httparse::Response::new(&mut headers);
                        match resp.parse(&buf[..filled]).map_err(|e| e.to_string())? {
                            httparse::Status::Partial => continue,
                            httparse::Status::Complete(head) => {
                                let header = |name: &str| {
                                    resp.headers
                                        .iter()
                                        .find(|h| h.name.eq_ignore_ascii_case(name))
                                        .and_then(|h| std::str::from_utf8(h.value).ok())
                                        .map(str::trim)
                                };
                                let len: usize = header("content-length")
                                    .and_then(|v| v.parse().ok())
                                    .ok_or("no Content-Length")?;
                                if filled < head + len {
                                    continue;
                                }
                                if resp.code != Some(200) {
                                    return Err(format!("status {:?}", resp.code));
                                }
                                if filled > head + len {
                                    return Err("bytes after the response".into());
                                }
                                let close = header("connection")
                                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                                return Ok(close);
                            }
                        }
                    }
                })();
                match outcome {
                    Ok(close) => {
                        ok += 1;
                        if close {
                            conn = None;
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        if why.len() < 3 {
                            why.push(e);
                        }
                        conn = None;
                    }
                }
            }
            (ok, bad, why)
        }));
    }
    tally(threads)
}

/// Adds up what client threads counted: (successes, failures, their first failures).
fn tally(
    threads: Vec<std::thread::JoinHandle<(u64, u64, Vec<String>)>>,
) -> (u64, u64, Vec<String>) {
    threads.into_iter().filter_map(|t| t.join().ok()).fold(
        (0, 0, Vec::new()),
        |mut acc, (o, b, w)| {
            acc.0 += o;
            acc.1 += b;
            acc.2.extend(w.into_iter().take(3));
            acc
        },
    )
}
