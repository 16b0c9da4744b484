//! Live connection hand-off on reload, as clients live it: 50 WebSocket and 50 text clients
//! each send a numbered message every 10 ms through 10 reloads of examples/handoff_lab, with
//! the program replaced by a new build (handoff_lab_v2) between the fifth and the sixth, while
//! a pusher sends numbered messages to a group and to uids. Every client must see every
//! answer once and in order, on the same TCP connection, and every pushed message once and in
//! order; the new build must answer after the swap. Once on the embedded hub, once on NATS.

mod support;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const TEXT_CLIENTS: usize = 50;
const WS_CLIENTS: usize = 50;
const RELOADS: usize = 10;
/// The reload after which the program is the new build.
const SWAP_AFTER: usize = 5;

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    name: String,
    local_port: u16,
    sent: u64,
    answered: u64,
    errors: Vec<String>,
    client_ids: BTreeSet<String>,
    pids: BTreeSet<u32>,
    versions: Vec<String>,
    last_moves: u64,
    group_pushes: u64,
    uid_pushes: u64,
    last_group: Option<u64>,
    last_uid: Option<u64>,
    /// When each unanswered message was sent, oldest first.
    sent_at: std::collections::VecDeque<Instant>,
    /// The longest a message waited for its answer.
    slowest: Duration,
    /// The same, before the first reload.
    slowest_steady: Duration,
}

thread_local! {
    /// Set when the reloads begin.
    static RELOADING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Seen {
    fn fail(&mut self, what: String) {
        if self.errors.len() < 5 {
            self.errors.push(what);
        }
    }

    /// One line from the server: an answer or a push.
    fn line(&mut self, line: &str) {
        // The pusher numbers every push; a group member hears each, a uid every tenth.
        for (prefix, step) in [("g:", 1), ("u:", 10)] {
            let Some(n) = line
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let (last, count) = if step == 1 {
                (&mut self.last_group, &mut self.group_pushes)
            } else {
                (&mut self.last_uid, &mut self.uid_pushes)
            };
            let previous = last.replace(n);
            *count += 1;
            if let Some(previous) = previous.filter(|p| n != p + step) {
                self.fail(format!("push {prefix}{n} after {prefix}{previous}"));
            }
            return;
        }
        if line == "ok" {
            return;
        }
        let parts: Vec<&str> = line.split(':').collect();
        let [version, seq, port, client, pid, moves] = parts[..] else {
            self.fail(format!("unexpected line {line:?}"));
            return;
        };
        let seq: u64 = seq.parse().unwrap_or(u64::MAX);
        if seq != self.answered {
            self.fail(format!("answer {seq} when {} was due", self.answered));
        }
        self.answered = seq + 1;
        if let Some(at) = self.sent_at.pop_front() {
            self.slowest = self.slowest.max(at.elapsed());
            if !RELOADING.with(|r| r.get()) {
                self.slowest_steady = self.slowest_steady.max(at.elapsed());
            }
        }
        if port.parse::<u16>().ok() != Some(self.local_port) {
            self.fail(format!(
                "served as peer port {port}, but this connection's port is {}",
                self.local_port
            ));
        }
        self.client_ids.insert(client.to_string());
        self.pids.insert(pid.parse().unwrap_or(0));
        if self.versions.last().map(String::as_str) != Some(version) {
            self.versions.push(version.to_string());
        }
        self.last_moves = moves.parse().unwrap_or(0);
    }
}

type Shared = Rc<RefCell<Seen>>;

async fn text_client(port: u16, i: usize, seen: Shared, stop: Rc<std::cell::Cell<bool>>) {
    let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return seen.borrow_mut().fail(format!("connect: {e}")),
    };
    seen.borrow_mut().local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let reader_seen = seen.clone();
    let reader = tokio::task::spawn_local(async move {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => reader_seen.borrow_mut().line(&line),
                Ok(None) => return reader_seen.borrow_mut().fail("closed by the server".into()),
                Err(e) => return reader_seen.borrow_mut().fail(format!("read: {e}")),
            }
        }
    });
    if let Err(e) = write
        .write_all(format!("join:u{}\n", i % 10).as_bytes())
        .await
    {
        seen.borrow_mut().fail(format!("write: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.get() {
        tick.tick().await;
        let seq = seen.borrow().sent;
        if let Err(e) = write.write_all(format!("n:{seq}\n").as_bytes()).await {
            seen.borrow_mut().fail(format!("write: {e}"));
            break;
        }
        let mut seen = seen.borrow_mut();
        seen.sent += 1;
        seen.sent_at.push_back(Instant::now());
    }
    wait_answers(&seen).await;
    reader.abort();
}

async fn ws_client(port: u16, i: usize, seen: Shared, stop: Rc<std::cell::Cell<bool>>) {
    let (ws, _) = match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await {
        Ok(ws) => ws,
        Err(e) => return seen.borrow_mut().fail(format!("connect: {e}")),
    };
    let local = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().map(|a| a.port()).ok(),
        _ => None,
    };
    seen.borrow_mut().local_port = local.unwrap_or(0);
    let (mut write, mut read) = ws.split();
    let reader_seen = seen.clone();
    let reader = tokio::task::spawn_local(async move {
        loop {
            match read.next().await {
                Some(Ok(Message::Text(t))) => reader_seen.borrow_mut().line(t.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    return reader_seen
                        .borrow_mut()
                        .fail(format!("close frame from the server: {frame:?}"))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return reader_seen.borrow_mut().fail(format!("read: {e}")),
                None => return reader_seen.borrow_mut().fail("closed by the server".into()),
            }
        }
    });
    if let Err(e) = write.send(Message::text(format!("join:u{}", i % 10))).await {
        seen.borrow_mut().fail(format!("write: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.get() {
        tick.tick().await;
        let seq = seen.borrow().sent;
        if let Err(e) = write.send(Message::text(format!("n:{seq}"))).await {
            seen.borrow_mut().fail(format!("write: {e}"));
            break;
        }
        let mut seen = seen.borrow_mut();
        seen.sent += 1;
        seen.sent_at.push_back(Instant::now());
    }
    wait_answers(&seen).await;
    reader.abort();
}

async fn wait_answers(seen: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.borrow().answered < seen.borrow().sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A copy of the lab program in a directory of the test's own, so that it can be replaced.
fn program_copy(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("handoff_lab");
    std::fs::copy(example_bin("handoff_lab"), &path).expect("copy the program");
    path
}

/// Replaces the program at `path` by the new build, as a deploy does (a rename, so that the
/// running processes keep their own file).
async fn swap_in_new_build(path: &std::path::Path) {
    let staged = path.with_extension("new");
    std::fs::copy(example_bin("handoff_lab_v2"), &staged).expect("copy the new build");
    // A child another test forked while the copy was open for writing holds it open until
    // its exec; the master's next exec of the program would fail with ETXTBSY meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::rename(&staged, path).expect("swap the program");
}

fn reloads_hand_every_connection_over(bus: &[(&str, String)]) {
    let dir = tempfile::tempdir().expect("tmp");
    let program = program_copy(dir.path());
    let (s, text_port, ws_port) = handoff_lab_program(program.clone(), bus);
    let served = |s: &Server| {
        let mut pids = s.group_pids("text");
        pids.extend(s.group_pids("ws"));
        pids
    };
    let first_pids = served(&s);

    let rt = local_runtime();
    let seen: Vec<Shared> = rt.block_on(async {
        let stop = Rc::new(std::cell::Cell::new(false));
        let mut all = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..TEXT_CLIENTS + WS_CLIENTS {
            let seen: Shared = Rc::new(RefCell::new(Seen::default()));
            let (stop, seen2) = (stop.clone(), seen.clone());
            if i < TEXT_CLIENTS {
                seen.borrow_mut().name = format!("text client {i}");
                tasks.push(tokio::task::spawn_local(text_client(
                    text_port, i, seen2, stop,
                )));
            } else {
                seen.borrow_mut().name = format!("websocket client {i}");
                tasks.push(tokio::task::spawn_local(ws_client(ws_port, i, seen2, stop)));
            }
            all.push(seen);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        RELOADING.with(|r| r.set(true));
        for r in 1..=RELOADS {
            let out = tokio::process::Command::from(s.command(&["reload"]))
                .output()
                .await
                .expect("reload");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if r == SWAP_AFTER {
                swap_in_new_build(&program).await;
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.set(true);
        for t in tasks {
            let _ = t.await;
        }
        all
    });

    let mut failures = Vec::new();
    for s in &seen {
        let s = s.borrow();
        let mut problems = s.errors.clone();
        if s.answered != s.sent {
            problems.push(format!("{} answers for {} messages", s.answered, s.sent));
        }
        if s.client_ids.len() != 1 {
            problems.push(format!("client id changed: {:?}", s.client_ids));
        }
        if s.versions != ["v1", "v2"] {
            problems.push(format!("versions answered: {:?}", s.versions));
        }
        if s.last_moves != RELOADS as u64 {
            problems.push(format!("moved {} times, not {RELOADS}", s.last_moves));
        }
        // The session's move count says it moved at every reload; the answers say new
        // processes served it (not necessarily all 11: one may hold it while no message
        // of this client arrived, when the machine is busy).
        if s.pids.len() < 2 {
            problems.push(format!("served by {} processes", s.pids.len()));
        }
        if s.group_pushes < 50 || s.uid_pushes < 5 {
            problems.push(format!(
                "only {} group and {} uid pushes",
                s.group_pushes, s.uid_pushes
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", s.name, problems.join("; ")));
        }
    }
    let total: u64 = seen.iter().map(|s| s.borrow().answered).sum();
    assert!(
        failures.is_empty(),
        "{} of {} clients saw a problem ({total} answers in all):\n{}\n--- server log:\n{}",
        failures.len(),
        seen.len(),
        failures[..failures.len().min(10)].join("\n"),
        tail(&s.stderr(), 60)
    );
    // The last processes measured their hand-off: how long from a connection's departure in
    // the old process to being served in the new one.
    let status = s.status();
    let (mut moved, mut total_us, mut max_us) = (0, 0, 0);
    for p in status["processes"].as_array().expect("processes") {
        moved += p["stats"]["moved_in"].as_u64().unwrap_or(0);
        total_us += p["stats"]["handoff_total_us"].as_u64().unwrap_or(0);
        max_us = max_us.max(p["stats"]["handoff_max_us"].as_u64().unwrap_or(0));
    }
    assert_eq!(moved, (TEXT_CLIENTS + WS_CLIENTS) as u64, "{status}");
    eprintln!(
        "last reload: {moved} connections moved, {} us each on average, {max_us} us at most",
        total_us / moved.max(1)
    );
    let last_pids = served(&s);
    assert_eq!(last_pids.len(), 4);
    assert!(
        first_pids.iter().all(|p| !last_pids.contains(p)),
        "{first_pids:?} -> {last_pids:?}"
    );
    let spread = |f: fn(&Seen) -> Duration| {
        let mut all: Vec<Duration> = seen.iter().map(|s| f(&s.borrow())).collect();
        all.sort();
        (all[all.len() / 2], all[all.len() - 1])
    };
    let (median, worst) = spread(|s| s.slowest);
    let (steady_median, steady_worst) = spread(|s| s.slowest_steady);
    eprintln!(
        "{} clients, {RELOADS} reloads: {total} answers, every one once and in order; the \
         longest wait for an answer through the reloads: median client {median:?}, worst \
         {worst:?}; before them: median client {steady_median:?}, worst {steady_worst:?}",
        seen.len(),
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn reloads_on_the_hub_hand_100_live_connections_to_new_code_without_a_client_noticing() {
    reloads_hand_every_connection_over(&[]);
}

#[test]
fn reloads_on_nats_hand_100_live_connections_to_new_code_without_a_client_noticing() {
    let nats = Nats::start();
    reloads_hand_every_connection_over(&[("OXWORK_BUS", nats.url.clone())]);
}

#[test]
fn a_connection_that_cannot_move_gets_a_clean_close_and_the_others_still_move() {
    let (s, text_port, _ws_port) = handoff_lab(&[]);
    let mut heavy = LineClient::connect(text_port).expect("connect");
    let mut light = LineClient::connect(text_port).expect("connect");
    assert_eq!(heavy.ask("pad:70000").expect("reply"), "ok");
    let before = light.ask("n:0").expect("reply");
    let out = s.run(&["reload"]);
    assert!(out.status.success());
    // A session over 64 KiB stays behind: its connection ends cleanly (no reset).
    let rest = heavy.read_to_close().expect("a clean close");
    assert!(!rest.contains("n:"), "{rest}");
    // The other connection moved: same connection, a new process, one move in its session.
    let after = light.ask("n:1").expect("still served");
    let pid = |line: &str| line.split(':').nth(4).map(str::to_string);
    assert_ne!(pid(&before), pid(&after), "{before} / {after}");
    assert!(after.ends_with(":1"), "{after}");
}
