//! The hub as a process: replaced when it dies, with everything re-subscribed; strict with
//! clients that speak garbage.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use support::*;

fn gateway() -> Server {
    let port = free_port();
    let mut s = Server::start(
        "echo",
        &[
            ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
            ("ECHO_COUNT", "2".into()),
            ("ECHO_GATEWAY", "1".into()),
        ],
        3,
    );
    s.port = port;
    s
}

#[test]
fn a_killed_hub_is_replaced_and_workers_resubscribe_and_requests_meanwhile_fail_not_hang() {
    let s = gateway();
    let mut a = LineClient::connect(s.port).expect("connect");
    let mut b = LineClient::connect(s.port).expect("connect");
    assert_eq!(a.ask("bind:dave").expect("bind"), "ok");
    let hub = s.group_pids("hub");
    assert_eq!(hub.len(), 1);
    kill9(hub[0]);
    // Meanwhile: an ask through the bus ends, with an answer or an error, never hangs.
    let started = Instant::now();
    let answer = b.ask("uid-online:dave").expect("an answer");
    // "false" too: a replacement hub may answer before a's process has re-subscribed.
    assert!(
        ["true", "false"].contains(&answer.as_str()) || answer.starts_with("error:"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The hub is back, with a new pid, and a's uid subscription came back with it.
    assert!(eventually(SETTLE, || {
        let now = s.group_pids("hub");
        now.len() == 1 && now[0] != hub[0]
    }));
    assert!(eventually(SETTLE, || b
        .ask("uid-online:dave")
        .expect("answer")
        == "true"));
    assert_eq!(
        b.ask("to-uid:dave:after the hub died").expect("sent"),
        "sent"
    );
    assert_eq!(a.recv().expect("delivered"), "after the hub died");
}

#[test]
fn a_hub_client_sending_garbage_is_disconnected_and_others_are_unharmed() {
    let s = gateway();
    let mut a = LineClient::connect(s.port).expect("connect");
    assert_eq!(a.ask("bind:erin").expect("bind"), "ok");
    let mut rogue = UnixStream::connect(s.hub_path()).expect("hub socket");
    rogue
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    rogue
        .write_all(b"\x00\x00\x00\x05\xffgarbage")
        .expect("write");
    let mut sink = Vec::new();
    let _ = rogue.read_to_end(&mut sink);
    assert!(
        String::from_utf8_lossy(&sink).contains("unknown operation"),
        "{sink:?}"
    );
    let mut huge = UnixStream::connect(s.hub_path()).expect("hub socket");
    huge.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    huge.write_all(&u32::MAX.to_be_bytes()).expect("write");
    let mut sink = Vec::new();
    let _ = huge.read_to_end(&mut sink);
    assert!(
        String::from_utf8_lossy(&sink).contains("exceeds the limit"),
        "{sink:?}"
    );

    let mut b = LineClient::connect(s.port).expect("connect");
    // Binding subscribes a's process at the hub; b's send may race ahead of it by a moment.
    assert!(eventually(SETTLE, || b
        .ask("uid-online:erin")
        .expect("answer")
        == "true"));
    assert_eq!(b.ask("to-uid:erin:still routed").expect("sent"), "sent");
    assert_eq!(a.recv().expect("delivered"), "still routed");
    assert!(s.stderr().contains("bad frame"), "{}", s.stderr());
}

#[test]
fn the_hub_socket_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let s = gateway();
    let mode = std::fs::metadata(s.hub_path())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "hub socket mode {mode:o}");
}

#[test]
fn a_hub_that_drops_every_connection_is_retried_with_growing_pauses_not_in_a_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    // A "hub" that takes each connection and drops it at once, as one refusing a frame does.
    let hub = std::thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(conn);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    local_runtime().block_on(async {
        let bus = oxwork::bus::Bus::connect_hub(&path, "backoff");
        bus.publish("x", "queued while the hub misbehaves")
            .expect("queued");
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hub.join().expect("hub thread");
    let n = accepted.load(std::sync::atomic::Ordering::Relaxed);
    // 20 ms doubling to 500 ms: about 8 attempts in 2 s; a hot loop makes thousands.
    assert!((2..=20).contains(&n), "{n} connections in 2 s");
}
