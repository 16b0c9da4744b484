//! Client routing: what one process sends reaches a client connected to another, by id, uid,
//! group and broadcast; membership ends with the connection or its process.

mod support;

use support::*;

fn gateway(count: usize) -> Server {
    let port = free_port();
    let mut s = Server::start(
        "echo",
        &[
            ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
            ("ECHO_COUNT", count.to_string()),
            ("ECHO_GATEWAY", "1".into()),
            ("ECHO_REUSE_PORT", "1".into()),
        ],
        count + 1,
    );
    s.port = port;
    s
}

/// Two clients served by two different processes.
fn clients_on_two_processes(s: &Server) -> (LineClient, LineClient, String, String) {
    let mut a = LineClient::connect(s.port).expect("connect");
    let pid_a = a.ask("pid").expect("pid");
    for _ in 0..200 {
        let mut b = LineClient::connect(s.port).expect("connect");
        let pid_b = b.ask("pid").expect("pid");
        if pid_b != pid_a {
            return (a, b, pid_a, pid_b);
        }
    }
    panic!("every connection landed on one process");
}

#[test]
fn a_client_on_one_process_receives_what_another_process_sends_to_its_id_uid_and_group() {
    let s = gateway(2);
    let (mut a, mut b, _, _) = clients_on_two_processes(&s);
    let id = a.ask("id").expect("id");
    assert_eq!(a.ask("bind:alice").expect("bind"), "ok");
    assert_eq!(a.ask("join:room-1").expect("join"), "ok");
    assert!(eventually(SETTLE, || b
        .ask("group-count:room-1")
        .expect("count")
        == "1"));

    assert_eq!(
        b.ask(&format!("to-client:{id}:by id")).expect("sent"),
        "sent"
    );
    assert_eq!(a.recv().expect("by id"), "by id");
    assert_eq!(b.ask("to-uid:alice:by uid").expect("sent"), "sent");
    assert_eq!(a.recv().expect("by uid"), "by uid");
    assert_eq!(b.ask("to-group:room-1:by group").expect("sent"), "sent");
    assert_eq!(a.recv().expect("by group"), "by group");

    assert_eq!(b.ask(&format!("online:{id}")).expect("online"), "true");
    assert_eq!(b.ask("uid-online:alice").expect("uid"), "true");
    assert_eq!(b.ask("group-count:room-1").expect("count"), "1");
    assert_eq!(b.ask("group-ids:room-1").expect("ids"), id);
    // The probe connections clients_on_two_processes dropped are counted until their
    // processes have seen them close (a moment, on a loaded machine).
    assert!(eventually(SETTLE, || b.ask("count").expect("count") == "2"));
}

#[test]
fn group_sends_skip_excluded_clients_and_broadcast_reaches_everyone() {
    let s = gateway(2);
    let (mut a, mut b, _, _) = clients_on_two_processes(&s);
    assert_eq!(a.ask("join:chat").expect("join"), "ok");
    assert_eq!(b.ask("join:chat").expect("join"), "ok");
    assert!(eventually(SETTLE, || b
        .ask("group-count:chat")
        .expect("count")
        == "2"));
    assert_eq!(b.ask("to-group-but-me:chat:hi all").expect("sent"), "sent");
    assert_eq!(a.recv().expect("group"), "hi all");
    assert_eq!(b.ask("broadcast:to everyone").expect("sent"), "sent");
    assert_eq!(a.recv().expect("broadcast"), "to everyone");
    // b's own copy of the broadcast arrives too; the excluded group send did not.
    assert_eq!(b.recv().expect("broadcast to self"), "to everyone");
}

#[test]
fn after_a_client_disconnects_it_is_offline_and_group_counts_drop() {
    let s = gateway(2);
    let (mut a, mut b, _, _) = clients_on_two_processes(&s);
    let id = a.ask("id").expect("id");
    a.ask("bind:bob").expect("bind");
    a.ask("join:lobby").expect("join");
    // Joining subscribes a's process at the hub; b's count may race ahead of it by a moment.
    assert!(eventually(SETTLE, || b
        .ask("group-count:lobby")
        .expect("count")
        == "1"));
    drop(a);
    assert!(eventually(SETTLE, || b
        .ask(&format!("online:{id}"))
        .expect("online")
        == "false"));
    assert_eq!(b.ask("uid-online:bob").expect("uid"), "false");
    assert_eq!(b.ask("group-count:lobby").expect("count"), "0");
}

#[test]
fn after_the_clients_process_is_killed_it_is_offline_and_group_counts_drop() {
    let s = gateway(2);
    let (mut a, mut b, pid_a, _) = clients_on_two_processes(&s);
    let id = a.ask("id").expect("id");
    a.ask("bind:carol").expect("bind");
    a.ask("join:lobby").expect("join");
    // Joining subscribes a's process at the hub; b's count may race ahead of it by a moment.
    assert!(eventually(SETTLE, || b
        .ask("group-count:lobby")
        .expect("count")
        == "1"));
    kill9(pid_a.parse().expect("pid"));
    assert!(eventually(SETTLE, || b
        .ask(&format!("online:{id}"))
        .expect("online")
        == "false"));
    assert_eq!(b.ask("uid-online:carol").expect("uid"), "false");
    assert_eq!(b.ask("group-count:lobby").expect("count"), "0");
}

#[test]
fn close_client_closes_a_connection_of_another_process() {
    let s = gateway(2);
    let (mut a, mut b, _, _) = clients_on_two_processes(&s);
    let id = a.ask("id").expect("id");
    assert_eq!(b.ask(&format!("close:{id}")).expect("sent"), "sent");
    assert!(a.is_closed_by_peer());
}
