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
    assert!(eventually(Duration::from_secs(5), || {
        let now = s.group_pids("hub");
        now.len() == 1 && now[0] != hub[0]
    }));
    assert!(eventually(Duration::from_secs(5), || b
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
    assert!(eventually(Duration::from_secs(3), || b
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
