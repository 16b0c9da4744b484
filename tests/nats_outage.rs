//! NATS going away while a tree runs: local connections keep being served, what is published
//! meanwhile is held up to a bound and then refused with an error, and everything reconnects.

mod support;

use std::time::Duration;

use oxwork::bus::{Bus, BusError, Headers};
use support::*;

#[test]
fn while_nats_is_down_publishes_are_held_to_a_bound_then_refused_and_flow_again_after() {
    let mut nats = Nats::start();
    let url = nats.url.clone();
    let rt = local_runtime();
    let bus = rt.block_on(async {
        let bus = Bus::connect_nats(&url, "outage").expect("settings");
        assert!(bus.wait_connected(Duration::from_secs(5)).await);
        bus
    });
    nats.stop();
    let (accepted, refused) = rt.block_on(async {
        let gone = async {
            while bus.is_connected() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .expect("the loss of NATS was noticed");
        let chunk = vec![7u8; 64 * 1024];
        let mut accepted = 0usize;
        let refused = loop {
            match bus.publish("outage.data", chunk.clone()) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 10_000, "publishes were never refused");
            // Let the bus's own task run, as a worker's loop would between callbacks.
            tokio::task::yield_now().await;
        };
        (accepted, refused)
    });
    assert_eq!(refused, BusError::Backpressure);
    let held = accepted * 64 * 1024;
    assert!(
        (16 << 20..=64 << 20).contains(&held),
        "held {held} bytes before refusing"
    );
    nats.restart();
    rt.block_on(async {
        assert!(
            bus.wait_connected(Duration::from_secs(10)).await,
            "did not reconnect"
        );
        let drained = async {
            while bus.publish("outage.after", "x").is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), drained)
            .await
            .expect("the held messages drained and publishing works again");
        let b = bus.clone();
        bus.subscribe("outage.echo", None, move |m| {
            if let Some(r) = &m.reply {
                let _ = b.publish_with(r, Headers::new(), m.payload.clone(), None);
            }
        })
        .expect("subscribe");
        let answer = bus
            .request(
                "outage.echo",
                Headers::new(),
                "ping",
                Duration::from_secs(10),
            )
            .await
            .expect("request after the outage");
        assert_eq!(answer.text(), "ping");
    });
}

#[test]
fn a_tree_keeps_serving_its_clients_through_a_nats_outage_and_its_bus_comes_back() {
    let mut nats = Nats::start();
    let port = free_port();
    let mut s = Server::start(
        "echo",
        &[
            ("OXWORK_BUS", nats.url.clone()),
            ("OXWORK_NODE", "solo".to_string()),
            ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
            ("ECHO_COUNT", "1".to_string()),
            ("ECHO_GATEWAY", "1".to_string()),
        ],
        1,
    );
    s.port = port;
    let mut c = LineClient::connect(port).expect("connect");
    assert_eq!(c.ask("bind:u1").expect("bind"), "ok");
    nats.stop();
    assert!(eventually(SETTLE, || s.status()["bus"]["connected"] == false));
    assert_eq!(c.ask("hello").expect("echo during the outage"), "hello");
    let mut other = LineClient::connect(port).expect("a new client during the outage");
    assert_eq!(other.ask("still here").expect("echo"), "still here");
    nats.restart();
    assert!(
        eventually(SETTLE, || s.status()["bus"]["connected"] == true),
        "the master did not reconnect"
    );
    assert!(
        eventually(SETTLE, || {
            other.ask("to-uid:u1:back").expect("send") == "sent"
                && c.recv_timeout(Duration::from_millis(500)).as_deref() == Some("back")
        }),
        "routing over the bus did not come back"
    );
}

#[test]
fn with_two_servers_of_a_nats_cluster_a_tree_fails_over_when_one_dies() {
    let (ca, cb) = (free_port(), free_port());
    let cluster = |me: &str, own: u16, other: u16| {
        format!(
            "server_name: {me}\ncluster {{ name: oxc, listen: \"127.0.0.1:{own}\", routes: [\"nats://127.0.0.1:{other}\"] }}"
        )
    };
    let mut first = Nats::start_with(&cluster("s1", ca, cb));
    let mut second = Nats::start_with(&cluster("s2", cb, ca));
    let both = format!("{},{}", first.url, second.url);
    let port = free_port();
    let mut s = Server::start(
        "echo",
        &[
            ("OXWORK_BUS", both),
            ("OXWORK_NODE", "pair".to_string()),
            ("ECHO_LISTEN", format!("text://127.0.0.1:{port}")),
            ("ECHO_COUNT", "2".to_string()),
            ("ECHO_GATEWAY", "1".to_string()),
            ("ECHO_REUSE_PORT", "1".to_string()),
        ],
        2,
    );
    s.port = port;
    let mut alice = LineClient::connect(port).expect("connect");
    assert_eq!(alice.ask("bind:alice").expect("bind"), "ok");
    let mut bob = LineClient::connect(port).expect("connect");
    let works = |bob: &mut LineClient, alice: &mut LineClient, text: &str| {
        eventually(SETTLE, || {
            bob.ask(&format!("to-uid:alice:{text}")).expect("send") == "sent"
                && alice.recv_timeout(Duration::from_millis(300)).as_deref() == Some(text)
        })
    };
    assert!(
        works(&mut bob, &mut alice, "before"),
        "routing never worked"
    );
    // The client picks servers at random: stopping each in turn makes every process fail over
    // at least once.
    first.stop();
    assert!(
        works(&mut bob, &mut alice, "after"),
        "routing did not come back through the second server"
    );
    first.restart();
    second.stop();
    assert!(
        works(&mut bob, &mut alice, "again"),
        "routing did not come back through the first server"
    );
    assert!(eventually(SETTLE, || s.status()["bus"]["connected"] == true));
}
