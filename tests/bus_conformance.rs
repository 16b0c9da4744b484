//! The bus's behaviour, backend by backend: every case runs against the embedded hub here, and
//! the NATS backend runs the very same cases (`conformance!(nats, ...)`).

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use oxwork::bus::{Bus, BusError, Headers};
use support::*;

/// The cases: each gets a way to open independent connections to one bus.
mod cases {
    use super::*;

    type Inbox = Rc<RefCell<Vec<String>>>;

    fn collector() -> (Inbox, impl Fn(oxwork::bus::BusMessage) + 'static) {
        let inbox: Inbox = Rc::default();
        let i = inbox.clone();
        (inbox, move |m: oxwork::bus::BusMessage| {
            i.borrow_mut().push(m.text().into_owned())
        })
    }

    async fn settle(buses: &[&Bus]) {
        for b in buses {
            assert!(
                b.wait_connected(Duration::from_secs(5)).await,
                "bus did not connect"
            );
        }
        // A request round trip through each connection proves its subscriptions are in place.
        for b in buses {
            let _ = b
                .request(
                    "conformance.flush",
                    Headers::new(),
                    "x",
                    Duration::from_secs(2),
                )
                .await;
        }
    }

    async fn until(limit: Duration, f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    pub(crate) async fn publish_reaches_every_subscriber(connect: &dyn Fn() -> Bus) {
        let (a, b, p) = (connect(), connect(), connect());
        let (ia, ha) = collector();
        let (ib, hb) = collector();
        a.subscribe("news.sport", None, ha).expect("sub");
        b.subscribe("news.sport", None, hb).expect("sub");
        settle(&[&a, &b, &p]).await;
        for i in 0..10 {
            p.publish("news.sport", format!("m{i}")).expect("pub");
        }
        assert!(
            until(Duration::from_secs(3), || ia.borrow().len() == 10
                && ib.borrow().len() == 10)
            .await
        );
        assert_eq!(ia.borrow()[..3], ["m0", "m1", "m2"], "order kept");
    }

    pub(crate) async fn star_matches_exactly_one_token(connect: &dyn Fn() -> Bus) {
        let (s, p) = (connect(), connect());
        let (inbox, h) = collector();
        s.subscribe("a.*.c", None, h).expect("sub");
        settle(&[&s, &p]).await;
        for subject in ["a.b.c", "a.x.c", "a.b.d", "a.b.c.d", "a.c"] {
            p.publish(subject, subject.to_string()).expect("pub");
        }
        assert!(until(Duration::from_secs(3), || inbox.borrow().len() >= 2).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*inbox.borrow(), ["a.b.c", "a.x.c"]);
    }

    pub(crate) async fn greater_than_matches_the_rest(connect: &dyn Fn() -> Bus) {
        let (s, p) = (connect(), connect());
        let (inbox, h) = collector();
        s.subscribe("a.>", None, h).expect("sub");
        settle(&[&s, &p]).await;
        for subject in ["a.b", "a.b.c.d", "a", "b.a"] {
            p.publish(subject, subject.to_string()).expect("pub");
        }
        assert!(until(Duration::from_secs(3), || inbox.borrow().len() >= 2).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*inbox.borrow(), ["a.b", "a.b.c.d"]);
    }

    pub(crate) async fn queue_group_shares_work_each_message_to_exactly_one_member(
        connect: &dyn Fn() -> Bus,
    ) {
        let members: Vec<Bus> = (0..3).map(|_| connect()).collect();
        let plain = connect();
        let p = connect();
        let mut inboxes = Vec::new();
        for m in &members {
            let (inbox, h) = collector();
            m.subscribe("jobs", Some("workers"), h).expect("sub");
            inboxes.push(inbox);
        }
        let (all, h) = collector();
        plain.subscribe("jobs", None, h).expect("sub");
        let refs: Vec<&Bus> = members.iter().chain([&plain, &p]).collect();
        settle(&refs).await;
        for i in 0..300 {
            p.publish("jobs", format!("{i}")).expect("pub");
        }
        assert!(
            until(Duration::from_secs(5), || {
                inboxes.iter().map(|i| i.borrow().len()).sum::<usize>() == 300
                    && all.borrow().len() == 300
            })
            .await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut seen: Vec<String> = inboxes.iter().flat_map(|i| i.borrow().clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 300, "a message reached two members or none");
        for i in &inboxes {
            assert!(!i.borrow().is_empty(), "a member got no share");
        }
    }

    pub(crate) async fn request_gets_the_reply(connect: &dyn Fn() -> Bus) {
        let (server, client) = (connect(), connect());
        let s2 = server.clone();
        server
            .subscribe("math.double", None, move |m| {
                let n: u64 = m.text().parse().unwrap_or(0);
                if let Some(r) = &m.reply {
                    let _ = s2.publish(r, (n * 2).to_string());
                }
            })
            .expect("sub");
        settle(&[&server, &client]).await;
        let answer = client
            .request("math.double", Headers::new(), "21", Duration::from_secs(2))
            .await
            .expect("reply");
        assert_eq!(answer.text(), "42");
    }

    pub(crate) async fn request_without_subscribers_fails_fast(connect: &dyn Fn() -> Bus) {
        let client = connect();
        settle(&[&client]).await;
        let started = Instant::now();
        let r = client
            .request("nobody.home", Headers::new(), "?", Duration::from_secs(5))
            .await;
        assert!(matches!(r, Err(BusError::NoResponders(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited for the deadline"
        );
    }

    pub(crate) async fn request_deadline_expires(connect: &dyn Fn() -> Bus) {
        let (silent, client) = (connect(), connect());
        silent.subscribe("slow.service", None, |_| {}).expect("sub");
        settle(&[&silent, &client]).await;
        let started = Instant::now();
        let r = client
            .request(
                "slow.service",
                Headers::new(),
                "?",
                Duration::from_millis(300),
            )
            .await;
        assert_eq!(r.err(), Some(BusError::Timeout));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    pub(crate) async fn headers_arrive_intact(connect: &dyn Fn() -> Bus) {
        let (s, p) = (connect(), connect());
        let got = Rc::new(RefCell::new(None));
        let g = got.clone();
        s.subscribe("with.headers", None, move |m| {
            *g.borrow_mut() = Some(m.headers)
        })
        .expect("sub");
        settle(&[&s, &p]).await;
        let headers = Headers::new()
            .with("trace-id", "abc123")
            .with("Kind", "test value");
        p.publish_with("with.headers", headers, "body", None)
            .expect("pub");
        assert!(until(Duration::from_secs(3), || got.borrow().is_some()).await);
        let h = got.borrow().clone().expect("headers");
        assert_eq!(h.get("trace-id"), Some("abc123"));
        assert_eq!(
            h.get("kind"),
            Some("test value"),
            "names are case-insensitive"
        );
    }

    pub(crate) async fn unsubscribe_stops_delivery(connect: &dyn Fn() -> Bus) {
        let (s, p) = (connect(), connect());
        let (inbox, h) = collector();
        let sub = s.subscribe("topic.x", None, h).expect("sub");
        settle(&[&s, &p]).await;
        p.publish("topic.x", "before").expect("pub");
        assert!(until(Duration::from_secs(3), || inbox.borrow().len() == 1).await);
        s.unsubscribe(sub).expect("unsub");
        settle(&[&s, &p]).await;
        p.publish("topic.x", "after").expect("pub");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(*inbox.borrow(), ["before"]);
    }

    pub(crate) async fn gather_collects_one_answer_per_subscriber(connect: &dyn Fn() -> Bus) {
        let responders: Vec<Bus> = (0..3).map(|_| connect()).collect();
        for (i, r) in responders.iter().enumerate() {
            let me = r.clone();
            r.subscribe("census", None, move |m| {
                if let Some(reply) = &m.reply {
                    let _ = me.publish(reply, format!("r{i}"));
                }
            })
            .expect("sub");
        }
        let asker = connect();
        let refs: Vec<&Bus> = responders.iter().chain([&asker]).collect();
        settle(&refs).await;
        let started = Instant::now();
        let mut answers: Vec<String> = asker
            .gather("census", Headers::new(), "?", Duration::from_secs(5))
            .await
            .expect("gather")
            .iter()
            .map(|m| m.text().into_owned())
            .collect();
        answers.sort();
        assert_eq!(answers, ["r0", "r1", "r2"]);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "waited for the deadline instead of the count"
        );
        let none = asker
            .gather("census.nobody", Headers::new(), "?", Duration::from_secs(5))
            .await
            .expect("gather");
        assert!(none.is_empty());
    }

    pub(crate) async fn shared_state_reads_writes_and_compares_atomically(
        connect: &dyn Fn() -> Bus,
    ) {
        let (a, b) = (connect(), connect());
        settle(&[&a, &b]).await;
        let key = format!("conf.{}", std::process::id());
        assert_eq!(a.get(&key).await.expect("get"), None);
        a.set(&key, "one", None).await.expect("set");
        assert_eq!(
            b.get(&key).await.expect("get").as_deref(),
            Some(&b"one"[..])
        );
        assert!(!b
            .compare_and_set(&key, Some(b"nope"), "two", None)
            .await
            .expect("cas"));
        assert!(b
            .compare_and_set(&key, Some(b"one"), "two", None)
            .await
            .expect("cas"));
        assert!(!a
            .compare_and_set(&key, None, "three", None)
            .await
            .expect("cas"));
        assert!(a.delete(&key).await.expect("delete"));
        assert!(!a.delete(&key).await.expect("delete again"));
        assert!(a
            .compare_and_set(&key, None, "three", None)
            .await
            .expect("cas absent"));
        let odd = "a key with spaces/and:colons";
        a.set(odd, "x", None).await.expect("odd key");
        assert_eq!(b.get(odd).await.expect("get").as_deref(), Some(&b"x"[..]));
    }

    pub(crate) async fn concurrent_increments_are_never_lost(connect: &dyn Fn() -> Bus) {
        let buses: Vec<Bus> = (0..4).map(|_| connect()).collect();
        settle(&buses.iter().collect::<Vec<_>>()).await;
        let key = format!("counter.{}", std::process::id());
        let mut all = Vec::new();
        for b in &buses {
            for _ in 0..25 {
                let (b, key) = (b.clone(), key.clone());
                all.push(tokio::task::spawn_local(async move {
                    b.increment(&key, 1, None).await.expect("increment")
                }));
            }
        }
        let mut seen = Vec::new();
        for h in all {
            seen.push(h.await.expect("join"));
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=100).collect::<Vec<i64>>(),
            "each increment saw its own value"
        );
        assert_eq!(
            buses[0].get(&key).await.expect("get").as_deref(),
            Some(&b"100"[..])
        );
        buses[0].set(&key, "text", None).await.expect("set");
        assert!(matches!(
            buses[1].increment(&key, 1, None).await,
            Err(BusError::State(_))
        ));
    }

    pub(crate) async fn expired_state_reads_as_absent(connect: &dyn Fn() -> Bus) {
        let b = connect();
        settle(&[&b]).await;
        let key = format!("ttl.{}", std::process::id());
        b.set(&key, "soon gone", Some(Duration::from_millis(300)))
            .await
            .expect("set");
        assert!(b.get(&key).await.expect("get").is_some());
        assert_eq!(
            b.increment(&format!("{key}.n"), 5, Some(Duration::from_millis(300)))
                .await,
            Ok(5)
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(b.get(&key).await.expect("get"), None);
        assert_eq!(b.increment(&format!("{key}.n"), 1, None).await, Ok(1));
        assert!(b
            .compare_and_set(&key, None, "again", None)
            .await
            .expect("cas"));
    }

    pub(crate) async fn bad_subjects_and_oversized_payloads_are_refused_at_the_sender(
        connect: &dyn Fn() -> Bus,
    ) {
        let b = connect();
        assert!(matches!(
            b.publish("a..b", "x"),
            Err(BusError::InvalidSubject(_))
        ));
        assert!(matches!(
            b.publish("a.*", "x"),
            Err(BusError::InvalidSubject(_))
        ));
        assert!(matches!(
            b.subscribe("a.>.b", None, |_| {}),
            Err(BusError::InvalidSubject(_))
        ));
        let big = vec![0u8; 9 * 1024 * 1024];
        match b.publish("big", big) {
            Err(e @ BusError::PayloadTooLarge { .. }) => {
                assert!(e.to_string().contains("exceeds the bus limit"))
            }
            other => panic!("oversized payload: {other:?}"),
        }
    }

    pub(crate) async fn oversized_keys_values_and_headers_are_refused_alike_and_the_bus_carries_on(
        connect: &dyn Fn() -> Bus,
    ) {
        let (s, p) = (connect(), connect());
        let big = vec![7u8; 9 * 1024 * 1024];
        assert!(
            matches!(
                p.set("conformance.big", big.clone(), None).await,
                Err(BusError::PayloadTooLarge { .. })
            ),
            "a shared-state value over the limit"
        );
        assert!(
            matches!(
                p.compare_and_set("conformance.big", Some(&big[..]), "x", None)
                    .await,
                Err(BusError::PayloadTooLarge { .. })
            ),
            "an expected value over the limit"
        );
        let long_key = "k".repeat(70_000);
        assert!(
            matches!(
                p.set(&long_key, "x", None).await,
                Err(BusError::TooLong {
                    what: "shared-state key",
                    ..
                })
            ),
            "a key over the limit"
        );
        assert!(matches!(
            p.publish(&"s".repeat(2000), "x"),
            Err(BusError::TooLong {
                what: "subject",
                ..
            })
        ));
        let refused = [
            Headers::new().with("a b", "x"),
            Headers::new().with("a:b", "x"),
            Headers::new().with("name", "line\r\nbreak"),
        ];
        for h in refused {
            assert!(
                matches!(
                    p.publish_with("x", h.clone(), "x", None),
                    Err(BusError::InvalidHeader(_))
                ),
                "{h:?}"
            );
        }
        assert!(matches!(
            p.publish_with(
                "x",
                Headers::new().with("v", &"v".repeat(70_000)),
                "x",
                None
            ),
            Err(BusError::TooLong {
                what: "header value",
                ..
            })
        ));
        // Nothing was queued: the connection still works.
        let (inbox, h) = collector();
        s.subscribe("conformance.after", None, h).expect("sub");
        settle(&[&s, &p]).await;
        p.publish("conformance.after", "fine").expect("pub");
        assert!(until(Duration::from_secs(5), || inbox.borrow().len() == 1).await);
        p.set("conformance.small", "v", None).await.expect("set");
        assert_eq!(
            p.get("conformance.small").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
    }

    pub(crate) async fn scatter_gathers_beyond_their_bound_are_refused_at_once(
        connect: &dyn Fn() -> Bus,
    ) {
        let (silent, asker) = (connect(), connect());
        silent
            .subscribe("conformance.silent", None, |_| {})
            .expect("sub");
        settle(&[&silent, &asker]).await;
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut waiting = Vec::new();
                for _ in 0..1024 {
                    let a = asker.clone();
                    waiting.push(tokio::task::spawn_local(async move {
                        a.gather(
                            "conformance.silent",
                            Headers::new(),
                            "",
                            Duration::from_secs(3),
                        )
                        .await
                    }));
                }
                // Every spawned gather is under way once each has run up to its first wait.
                for _ in 0..200 {
                    tokio::task::yield_now().await;
                }
                let started = Instant::now();
                let refused = asker
                    .gather(
                        "conformance.silent",
                        Headers::new(),
                        "",
                        Duration::from_secs(3),
                    )
                    .await;
                assert!(
                    matches!(refused, Err(BusError::Backpressure)),
                    "{refused:?}"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "refused at once"
                );
                for w in waiting {
                    assert!(w.await.expect("joined").is_ok());
                }
            })
            .await;
    }

    pub(crate) async fn first_use_of_shared_state_from_many_connections_at_once_succeeds(
        connect: &dyn Fn() -> Bus,
    ) {
        // As when a whole tree starts on a fresh server: every process makes the store at once.
        let buses: Vec<Bus> = (0..16).map(|_| connect()).collect();
        settle(&buses.iter().collect::<Vec<_>>()).await;
        let mut all = Vec::new();
        for (i, b) in buses.iter().enumerate() {
            let b = b.clone();
            all.push(tokio::task::spawn_local(async move {
                b.set(&format!("first.{i}"), "v", None).await
            }));
        }
        for h in all {
            h.await.expect("join").expect("set on first use");
        }
    }
}

fn with_hub(case: impl for<'a> AsyncCase<'a>) {
    let server = gateway_echo(1, &[]);
    let path = server.hub_path();
    let connect = move || Bus::connect_hub(&path, "conformance");
    local_runtime().block_on(case.call(&connect));
}

fn with_nats(case: impl for<'a> AsyncCase<'a>) {
    let nats = Nats::start();
    let url = nats.url.clone();
    let connect = move || Bus::connect_nats(&url, "conformance").expect("NATS settings");
    local_runtime().block_on(case.call(&connect));
}

/// An async case taking the connect function by reference.
trait AsyncCase<'a> {
    type Fut: std::future::Future<Output = ()> + 'a;
    fn call(self, connect: &'a dyn Fn() -> Bus) -> Self::Fut;
}

impl<'a, F, Fut> AsyncCase<'a> for F
where
    F: FnOnce(&'a dyn Fn() -> Bus) -> Fut,
    Fut: std::future::Future<Output = ()> + 'a,
{
    type Fut = Fut;
    fn call(self, connect: &'a dyn Fn() -> Bus) -> Fut {
        self(connect)
    }
}

macro_rules! conformance {
    ($backend:ident, $runner:path) => {
        mod $backend {
            use super::*;
            #[test]
            fn publish_reaches_every_subscriber() {
                $runner(cases::publish_reaches_every_subscriber)
            }
            #[test]
            fn star_matches_exactly_one_token() {
                $runner(cases::star_matches_exactly_one_token)
            }
            #[test]
            fn greater_than_matches_the_rest() {
                $runner(cases::greater_than_matches_the_rest)
            }
            #[test]
            fn queue_group_shares_work_each_message_to_exactly_one_member() {
                $runner(cases::queue_group_shares_work_each_message_to_exactly_one_member)
            }
            #[test]
            fn request_gets_the_reply() {
                $runner(cases::request_gets_the_reply)
            }
            #[test]
            fn request_without_subscribers_fails_fast() {
                $runner(cases::request_without_subscribers_fails_fast)
            }
            #[test]
            fn request_deadline_expires() {
                $runner(cases::request_deadline_expires)
            }
            #[test]
            fn headers_arrive_intact() {
                $runner(cases::headers_arrive_intact)
            }
            #[test]
            fn unsubscribe_stops_delivery() {
                $runner(cases::unsubscribe_stops_delivery)
            }
            #[test]
            fn gather_collects_one_answer_per_subscriber() {
                $runner(cases::gather_collects_one_answer_per_subscriber)
            }
            #[test]
            fn shared_state_reads_writes_and_compares_atomically() {
                $runner(cases::shared_state_reads_writes_and_compares_atomically)
            }
            #[test]
            fn concurrent_increments_are_never_lost() {
                $runner(cases::concurrent_increments_are_never_lost)
            }
            #[test]
            fn expired_state_reads_as_absent() {
                $runner(cases::expired_state_reads_as_absent)
            }
            #[test]
            fn bad_subjects_and_oversized_payloads_are_refused_at_the_sender() {
                $runner(cases::bad_subjects_and_oversized_payloads_are_refused_at_the_sender)
            }
            #[test]
            fn first_use_of_shared_state_from_many_connections_at_once_succeeds() {
                $runner(cases::first_use_of_shared_state_from_many_connections_at_once_succeeds)
            }
            #[test]
            fn scatter_gathers_beyond_their_bound_are_refused_at_once() {
                $runner(cases::scatter_gathers_beyond_their_bound_are_refused_at_once)
            }
            #[test]
            fn oversized_keys_values_and_headers_are_refused_alike_and_the_bus_carries_on() {
                $runner(
                    cases::oversized_keys_values_and_headers_are_refused_alike_and_the_bus_carries_on,
                )
            }
        }
    };
}

conformance!(hub, with_hub);
conformance!(nats, with_nats);
