//! Shared state (GlobalData's role): atomic operations across processes, with expiry.

mod support;

use std::time::Duration;

use oxwork::bus::Bus;
use oxwork::state;
use support::*;

#[test]
fn state_calls_outside_a_worker_process_say_there_is_no_bus() {
    let r = local_runtime().block_on(state::get("k"));
    assert_eq!(r.err(), Some(oxwork::bus::BusError::NotAvailable));
}

#[test]
fn increments_from_many_connections_are_atomic() {
    let s = gateway_echo(1, &[]);
    let path = s.hub_path();
    let total = local_runtime().block_on(async move {
        // Each connection stands for a process; all increment the same key concurrently.
        let buses: Vec<Bus> = (0..4).map(|_| Bus::connect_hub(&path, "t")).collect();
        let mut tasks = Vec::new();
        for b in buses {
            assert!(b.wait_connected(Duration::from_secs(5)).await);
            tasks.push(tokio::task::spawn_local(async move {
                for _ in 0..250 {
                    b.increment("hits", 1, None).await.expect("increment");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let b = Bus::connect_hub(&path, "t");
        b.get("hits").await.expect("get")
    });
    assert_eq!(total.as_deref(), Some(&b"1000"[..]));
}

#[test]
fn compare_and_set_expiry_and_delete() {
    let s = gateway_echo(1, &[]);
    let path = s.hub_path();
    local_runtime().block_on(async move {
        let b = Bus::connect_hub(&path, "t");
        assert!(b
            .compare_and_set("lock", None, "me", None)
            .await
            .expect("cas"));
        assert!(
            !b.compare_and_set("lock", None, "you", None)
                .await
                .expect("cas"),
            "taken twice"
        );
        assert!(b
            .compare_and_set("lock", Some(b"me"), "you", None)
            .await
            .expect("cas"));
        assert_eq!(
            b.get("lock").await.expect("get").as_deref(),
            Some(&b"you"[..])
        );
        b.set("session", "data", Some(Duration::from_millis(200)))
            .await
            .expect("set");
        assert!(b.get("session").await.expect("get").is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            b.get("session").await.expect("get").is_none(),
            "did not expire"
        );
        assert!(b.delete("lock").await.expect("delete"));
        assert!(!b.delete("lock").await.expect("delete"));
        b.set("text", "not a number", None).await.expect("set");
        assert!(b.increment("text", 1, None).await.is_err());
    });
}
