//! The NATS transport of the bus, on the official `async-nats` client: core publish/subscribe
//! with the same semantics as the hub, shared state on JetStream KV (`state`) and durable task
//! pools on JetStream work-queue streams (`tasks`).
//!
//! Publishing stays synchronous and ordered: every publish and subscribe is queued here, in
//! order, and one task hands them to the client, so a subscription made before a request is in
//! place at the server before the request is. The queue is bounded like the hub's outbox
//! (16 MiB); while NATS is away the client stops taking commands, the queue fills, and further
//! publishes are refused with [`BusError::Backpressure`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{oneshot, Notify};
use tokio::task::{spawn_local, AbortHandle};

use futures_util::future::LocalBoxFuture;

use super::tasks::PoolMember;
use crate::bus::config::NatsSettings;
use crate::bus::transport::{
    next_id, Capabilities, Handler, Interest, KvOp, KvResult, Outgoing, PoolSpec, PoolStats,
    Submission, TaskHandler, TaskOutcome, Transport, MAX_OUTBOUND, MAX_PAYLOAD,
};
use crate::bus::{BusError, BusMessage, Headers, STATUS_HEADER};
use crate::runtime::guard::guarded;

/// Messages a subscription holds before NATS counts this process as a slow consumer.
const SUBSCRIPTION_CAPACITY: usize = 16 * 1024;

enum Command {
    Publish(Outgoing),
    /// A publish whose headers are already in the client's form.
    Prepared {
        subject: String,
        reply: Option<String>,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    },
    Subscribe {
        sid: u32,
        interest: Interest,
    },
}

impl Command {
    fn size(&self) -> usize {
        match self {
            Command::Publish(m) => m.subject.len() + m.payload.len() + 64,
            Command::Prepared {
                subject, payload, ..
            } => subject.len() + payload.len() + 256,
            Command::Subscribe { interest, .. } => interest.subject.len() + 64,
        }
    }
}

struct SubEntry {
    handler: Handler,
    reader: Option<AbortHandle>,
}

pub(super) struct Inner {
    settings: NatsSettings,
    name: String,
    client: RefCell<Option<async_nats::Client>>,
    client_ready: Notify,
    out: RefCell<VecDeque<Command>>,
    out_bytes: Cell<usize>,
    wake: Notify,
    subs: RefCell<HashMap<u32, SubEntry>>,
    next_sid: Cell<u32>,
    pub(super) pool: RefCell<Option<Rc<PoolMember>>>,
    pub(super) kv_stream: RefCell<Option<jetstream::stream::Stream>>,
    /// The replica count for streams, once worked out.
    replicas: Cell<Option<usize>>,
    /// Where JetStream acknowledges our stream publishes (a subscription on `<inbox>.*` made
    /// on first use).
    store_inbox: tokio::sync::OnceCell<String>,
    /// Stream publishes awaiting their acknowledgement, by the token ending its reply subject.
    store_waiting: RefCell<HashMap<u64, oneshot::Sender<Stored>>>,
    store_next: Cell<u64>,
    /// When the connection was found lost (milliseconds since the epoch; 0: it is not). Set
    /// from the client's event callback, which runs on the client's own tasks.
    lost_at_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A connection to NATS. Cheap to clone; every clone is the same connection.
#[derive(Clone)]
pub(crate) struct NatsLink {
    pub(super) inner: Rc<Inner>,
}

impl NatsLink {
    /// Starts connecting in the background; commands queue until the connection is made.
    pub(crate) fn connect(settings: NatsSettings, name: &str) -> NatsLink {
        let link = NatsLink {
            inner: Rc::new(Inner {
                settings,
                name: name.to_string(),
                client: RefCell::new(None),
                client_ready: Notify::new(),
                out: RefCell::new(VecDeque::new()),
                out_bytes: Cell::new(0),
                wake: Notify::new(),
                subs: RefCell::new(HashMap::new()),
                next_sid: Cell::new(0),
                pool: RefCell::new(None),
                kv_stream: RefCell::new(None),
                replicas: Cell::new(None),
                store_inbox: tokio::sync::OnceCell::new(),
                store_waiting: RefCell::new(HashMap::new()),
                store_next: Cell::new(0),
                lost_at_ms: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(now_ms())),
            }),
        };
        let l = link.clone();
        spawn_local(async move { l.run().await });
        link
    }

    /// The client, once the first connection attempt has been set up.
    pub(super) async fn client(&self) -> async_nats::Client {
        loop {
            let notified = self.inner.client_ready.notified();
            if let Some(c) = self.inner.client.borrow().as_ref() {
                return c.clone();
            }
            notified.await;
        }
    }

    /// Whether the client exists (the first connection attempt has been set up).
    pub(super) fn has_client(&self) -> bool {
        self.inner.client.borrow().is_some()
    }

    /// How many replicas every stream gets: the operator's choice, else the size of the
    /// cluster the server belongs to (its INFO lists every server's client address) up to 3,
    /// else 1.
    pub(super) async fn replicas(&self) -> usize {
        if let Some(n) = self.inner.replicas.get() {
            return n;
        }
        let n = match self.inner.settings.replicas {
            Some(n) => n,
            None => {
                let client = self.client().await;
                // The server's INFO arrives with the connection (the client exists before).
                while client.connection_state() != async_nats::connection::State::Connected
                    || client.server_info().server_id.is_empty()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let info = client.server_info();
                let n = if info.cluster.is_some() {
                    info.connect_urls.len().clamp(1, 3)
                } else {
                    1
                };
                tracing::debug!(
                    "streams get {n} replica(s): server {} in cluster {:?} of {} servers",
                    info.server_name,
                    info.cluster,
                    info.connect_urls.len()
                );
                n
            }
        };
        self.inner.replicas.set(Some(n));
        n
    }

    /// Publishes `payload` into the stream listening on `subject` and waits until `until` for
    /// JetStream's answer (`None`: no answer in time). Every such publish of the connection
    /// shares one acknowledgement subscription and a token per publish, rather than the
    /// client's per-request machinery: a submission is one small future and a map entry.
    pub(super) async fn store(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Bytes,
        until: tokio::time::Instant,
    ) -> Result<Option<Stored>, String> {
        let token = self.inner.store_next.get() + 1;
        self.inner.store_next.set(token);
        let (tx, rx) = oneshot::channel();
        self.inner.store_waiting.borrow_mut().insert(token, tx);
        // Removes the entry however this ends: answered, timed out, or the caller gave up.
        let _waiting = StoreWaiting {
            inner: &self.inner,
            token,
        };
        // One timer for the whole attempt: the first use's subscription and the answer. The
        // publish itself goes through the link's queue, in order with every other.
        let attempt = async {
            let prefix = match self.inner.store_inbox.get() {
                Some(made) => made,
                // Boxed, as a rare path: its large future would otherwise make every
                // submission's future (boxed per call) large.
                None => {
                    Box::pin(
                        self.inner
                            .store_inbox
                            .get_or_try_init(|| self.subscribe_store_inbox()),
                    )
                    .await?
                }
            };
            let reply = format!("{prefix}.{token}");
            self.publish_prepared(subject, Some(reply), headers, payload)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(rx.await.ok())
        };
        match tokio::time::timeout_at(until, attempt).await {
            Ok(answer) => answer,
            Err(_) => Ok(None),
        }
    }

    /// Queues a publish whose headers are already in the client's form (no conversion from
    /// [`Headers`]), in order with every other publish.
    pub(super) fn publish_prepared(
        &self,
        subject: String,
        reply: Option<String>,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.queue(Command::Prepared {
            subject,
            reply,
            headers,
            payload,
        })
    }

    async fn subscribe_store_inbox(&self) -> Result<String, String> {
        let client = self.client().await;
        let prefix = client.new_inbox();
        let mut answers = client
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(|e| format!("cannot subscribe for JetStream acknowledgements: {e}"))?;
        let inner = Rc::downgrade(&self.inner);
        spawn_local(async move {
            while let Some(m) = answers.next().await {
                let Some(inner) = inner.upgrade() else { return };
                let token = m
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok());
                let waiting = token.and_then(|t| inner.store_waiting.borrow_mut().remove(&t));
                if let Some(tx) = waiting {
                    let _ = tx.send(Stored::from_answer(&m));
                }
            }
        });
        Ok(prefix)
    }

    fn queue(&self, cmd: Command) -> Result<(), BusError> {
        if self.inner.out_bytes.get() >= MAX_OUTBOUND {
            return Err(BusError::Backpressure);
        }
        self.inner
            .out_bytes
            .set(self.inner.out_bytes.get() + cmd.size());
        self.inner.out.borrow_mut().push_back(cmd);
        self.inner.wake.notify_one();
        Ok(())
    }

    async fn run(self) {
        let options = match self.inner.settings.connect_options(&self.inner.name) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("cannot use NATS: {e}");
                return;
            }
        };
        let addrs = match self.inner.settings.server_addrs() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot use NATS: {e}");
                return;
            }
        };
        let servers = self.describe();
        let lost_at = self.inner.lost_at_ms.clone();
        let options = options
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((20u64 << attempts.min(5)).min(500))
            })
            .event_callback(move |event| {
                let servers = servers.clone();
                let lost_at = lost_at.clone();
                async move {
                    use std::sync::atomic::Ordering;
                    match event {
                        async_nats::Event::Connected => {
                            let since = lost_at.swap(0, Ordering::Relaxed);
                            let gone = now_ms().saturating_sub(since);
                            // Said once per loss, at the level the loss was said.
                            if since > 0 && gone > 2_000 {
                                tracing::warn!(
                                    "bus connection to NATS {servers} back after {:.1} s",
                                    gone as f64 / 1000.0
                                )
                            } else {
                                tracing::info!("bus connected to NATS {servers}")
                            }
                        }
                        async_nats::Event::Disconnected => {
                            let _ = lost_at.compare_exchange(
                                0,
                                now_ms(),
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                            tracing::warn!(
                                "bus connection to NATS {servers} lost (or stopped answering \
                                 pings); reconnecting"
                            )
                        }
                        other => tracing::warn!("NATS {servers}: {other}"),
                    }
                }
            });
        let client = match options.connect(addrs).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot connect to NATS {}: {e}", self.describe());
                return;
            }
        };
        *self.inner.client.borrow_mut() = Some(client.clone());
        self.inner.client_ready.notify_waiters();
        loop {
            if self.inner.out.borrow().is_empty() {
                self.inner.wake.notified().await;
                continue;
            }
            // While NATS is away, commands stay here, under this queue's bound, instead of
            // piling up unbounded-by-bytes in the client's command channel.
            while client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let Some(cmd) = self.inner.out.borrow_mut().pop_front() else {
                continue;
            };
            self.inner
                .out_bytes
                .set(self.inner.out_bytes.get().saturating_sub(cmd.size()));
            match cmd {
                Command::Publish(m) => {
                    // No headers: a plain PUB, not an HPUB with an empty header block (which
                    // costs the server a parse, and which JetStream does not take as an ack).
                    let sent = match (m.reply, m.headers.is_empty()) {
                        (Some(r), true) => client.publish_with_reply(m.subject, r, m.payload).await,
                        (None, true) => client.publish(m.subject, m.payload).await,
                        (Some(r), false) => {
                            let map = to_header_map(&m.headers);
                            client
                                .publish_with_reply_and_headers(m.subject, r, map, m.payload)
                                .await
                        }
                        (None, false) => {
                            let map = to_header_map(&m.headers);
                            client.publish_with_headers(m.subject, map, m.payload).await
                        }
                    };
                    if let Err(e) = sent {
                        tracing::warn!("NATS publish failed: {e}");
                    }
                }
                Command::Prepared {
                    subject,
                    reply,
                    headers,
                    payload,
                } => {
                    let sent = match reply {
                        Some(r) => {
                            client
                                .publish_with_reply_and_headers(subject, r, headers, payload)
                                .await
                        }
                        None => client.publish_with_headers(subject, headers, payload).await,
                    };
                    if let Err(e) = sent {
                        tracing::warn!("NATS publish failed: {e}");
                    }
                }
                Command::Subscribe { sid, interest } => {
                    if !self.inner.subs.borrow().contains_key(&sid) {
                        continue;
                    }
                    let subject = interest.subject;
                    let made = match interest.queue {
                        Some(q) => client.queue_subscribe(subject.clone(), q).await,
                        None => client.subscribe(subject.clone()).await,
                    };
                    match made {
                        Ok(subscriber) => self.start_reader(sid, subscriber),
                        Err(e) => tracing::error!("cannot subscribe to {subject}: {e}"),
                    }
                }
            }
        }
    }

    fn start_reader(&self, sid: u32, mut subscriber: async_nats::Subscriber) {
        let mut subs = self.inner.subs.borrow_mut();
        // Unsubscribed while the subscription was being made: dropping it unsubscribes.
        let Some(entry) = subs.get_mut(&sid) else {
            return;
        };
        let handler = entry.handler.clone();
        let reader = spawn_local(async move {
            while let Some(m) = subscriber.next().await {
                let msg = from_nats(m);
                let _ = guarded("bus subscription handler", || handler(msg));
            }
        });
        entry.reader = Some(reader.abort_handle());
    }
}

impl Transport for NatsLink {
    fn describe(&self) -> String {
        self.inner.settings.display_servers()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            counted_gather: false,
            lists_state: true,
            // JetStream keeps the tasks.
            resubmits_tasks: false,
            spans_nodes: true,
        }
    }

    fn is_connected(&self) -> bool {
        self.inner
            .client
            .borrow()
            .as_ref()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    fn wait_connected(&self, limit: Duration) -> LocalBoxFuture<'_, bool> {
        Box::pin(async move {
            let end = tokio::time::Instant::now() + limit;
            while !self.is_connected() && tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.is_connected()
        })
    }

    /// The server's limit once known (and never more than the hub's, so that one program
    /// behaves the same on both).
    fn max_payload(&self) -> usize {
        match self.inner.client.borrow().as_ref() {
            Some(c) if c.max_payload() > 0 => c.max_payload().min(MAX_PAYLOAD),
            _ => MAX_PAYLOAD,
        }
    }

    fn publish(&self, m: Outgoing) -> Result<(), BusError> {
        self.queue(Command::Publish(m))
    }

    fn subscribe(&self, interest: Interest, handler: Handler) -> Result<u32, BusError> {
        let sid = next_id(&self.inner.next_sid);
        self.queue(Command::Subscribe { sid, interest })?;
        let entry = SubEntry {
            handler,
            reader: None,
        };
        self.inner.subs.borrow_mut().insert(sid, entry);
        Ok(sid)
    }

    /// Ends a subscription at once: its reader stops (dropping the client's subscriber sends
    /// the server an unsubscribe).
    fn unsubscribe(&self, sid: u32) -> Result<(), BusError> {
        if let Some(entry) = self.inner.subs.borrow_mut().remove(&sid) {
            if let Some(r) = entry.reader {
                r.abort();
            }
        }
        Ok(())
    }

    fn state(&self, op: KvOp, timeout: Duration) -> LocalBoxFuture<'_, Result<KvResult, BusError>> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, super::state::run(self, op)).await {
                Ok(r) => r,
                Err(_) => Err(BusError::Timeout),
            }
        })
    }

    fn state_entries(
        &self,
        prefix: &str,
        timeout: Duration,
    ) -> LocalBoxFuture<'_, Result<Vec<(String, Bytes)>, BusError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            match tokio::time::timeout(timeout, super::state::entries_under(self, &prefix)).await {
                Ok(r) => r,
                Err(_) => Err(BusError::Timeout),
            }
        })
    }

    fn join_pool(&self, spec: PoolSpec, handler: TaskHandler) -> Result<(), BusError> {
        let member = PoolMember::start(self, spec, handler);
        *self.inner.pool.borrow_mut() = Some(member);
        Ok(())
    }

    fn task_done(&self, outcome: TaskOutcome) -> Result<(), BusError> {
        let member = self.inner.pool.borrow().clone();
        match member {
            Some(m) => {
                m.done(self, outcome);
                Ok(())
            }
            None => Err(BusError::State(format!(
                "task {} is not running here",
                outcome.task
            ))),
        }
    }

    fn submit(&self, task: Submission) -> LocalBoxFuture<'static, Result<(), BusError>> {
        let link = self.clone();
        Box::pin(async move { super::tasks::submit(&link, task).await })
    }

    fn pool_stats(&self, pools: Vec<String>) -> LocalBoxFuture<'_, Vec<PoolStats>> {
        Box::pin(async move {
            let Ok(client) = tokio::time::timeout(Duration::from_secs(1), self.client()).await
            else {
                return Vec::new();
            };
            let js = jetstream::new(client);
            let mut out = Vec::new();
            for p in &pools {
                let stats = super::tasks::pool_stats(&js, p);
                if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), stats).await {
                    out.push(s);
                }
            }
            out
        })
    }

    /// Hands back unfinished tasks (after up to `limit` for them to finish) and sends what is
    /// queued.
    fn wind_down(&self, limit: Duration) -> LocalBoxFuture<'_, ()> {
        Box::pin(async move {
            let member = self.inner.pool.borrow().clone();
            if let Some(m) = member {
                m.wind_down(limit).await;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while !self.inner.out.borrow().is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let client = self.inner.client.borrow().clone();
            if let Some(c) = client {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.flush()).await;
            }
        })
    }

    /// Requests on NATS are answered or time out; a lost connection needs no hook.
    fn set_on_lost(&self, _f: Rc<dyn Fn()>) {}

    /// The NATS servers are not ours to start.
    fn set_on_unreachable(&self, _f: Rc<dyn Fn()>) {}

    fn disconnected_for(&self) -> Option<Duration> {
        if self.is_connected() {
            return None;
        }
        let since = self
            .inner
            .lost_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        Some(Duration::from_millis(now_ms().saturating_sub(since)))
    }
}

/// JetStream's answer to a publish into a stream.
#[derive(Debug, PartialEq)]
pub(super) enum Stored {
    /// The stream keeps the message.
    Kept,
    /// No stream listens on the subject.
    NoStream,
    /// Refused, in JetStream's words (a full stream, a leader election, ...).
    Refused(String),
}

impl Stored {
    fn from_answer(m: &async_nats::Message) -> Stored {
        #[derive(serde::Deserialize)]
        struct Answer {
            stream: Option<serde::de::IgnoredAny>,
            error: Option<ApiError>,
        }
        #[derive(serde::Deserialize)]
        struct ApiError {
            #[serde(default)]
            code: u64,
            #[serde(default)]
            description: String,
        }
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Stored::NoStream;
        }
        match serde_json::from_slice::<Answer>(&m.payload) {
            Ok(Answer { error: Some(e), .. }) => {
                Stored::Refused(format!("{} (code {})", e.description, e.code))
            }
            Ok(Answer {
                stream: Some(_), ..
            }) => Stored::Kept,
            _ => Stored::Refused(format!(
                "unexpected answer {:?}",
                String::from_utf8_lossy(&m.payload[..m.payload.len().min(200)])
            )),
        }
    }
}

/// A stream publish awaiting its acknowledgement; dropping it forgets the wait.
struct StoreWaiting<'a> {
    inner: &'a Inner,
    token: u64,
}

impl Drop for StoreWaiting<'_> {
    fn drop(&mut self) {
        self.inner.store_waiting.borrow_mut().remove(&self.token);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Our headers as NATS headers; names or values NATS cannot carry are left out with a warning.
pub(crate) fn to_header_map(headers: &Headers) -> async_nats::HeaderMap {
    use std::str::FromStr;
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers.pairs() {
        match (
            async_nats::HeaderName::from_str(name),
            async_nats::HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => map.append(n, v),
            _ => tracing::warn!("header {name:?} cannot travel over NATS; left out"),
        }
    }
    map
}

/// A NATS message as the bus's own; "no responders" becomes status 503 as on the hub.
pub(crate) fn from_nats(m: async_nats::Message) -> BusMessage {
    let mut headers = Headers::new();
    if let Some(h) = &m.headers {
        for (name, values) in h.iter() {
            for v in values {
                headers.push(
                    AsRef::<str>::as_ref(name).to_string(),
                    v.as_str().to_string(),
                );
            }
        }
    }
    if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        headers.push(STATUS_HEADER.to_string(), "503".to_string());
    }
    BusMessage {
        subject: m.subject.to_string(),
        reply: m.reply.map(|r| r.to_string()),
        headers,
        payload: m.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::Stored;

    fn answer(payload: &str, status: Option<async_nats::StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn a_stream_acknowledgement_is_kept() {
        let m = answer(r#"{"stream":"OX_TASKS_square","seq":42}"#, None);
        assert_eq!(Stored::from_answer(&m), Stored::Kept);
        let deduplicated = r#"{"stream":"OX_TASKS_square","seq":42,"duplicate":true}"#;
        assert_eq!(
            Stored::from_answer(&answer(deduplicated, None)),
            Stored::Kept
        );
    }

    #[test]
    fn a_jetstream_error_is_a_refusal_in_its_words() {
        let m = answer(
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
            None,
        );
        match Stored::from_answer(&m) {
            Stored::Refused(why) => assert!(why.contains("maximum messages exceeded"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_responders_means_no_stream() {
        let m = answer("", Some(async_nats::StatusCode::NO_RESPONDERS));
        assert_eq!(Stored::from_answer(&m), Stored::NoStream);
    }

    #[test]
    fn garbage_is_a_refusal_not_a_success() {
        for junk in ["", "not json", "{}", r#"{"seq":1}"#, "\u{0}\u{1}"] {
            assert!(
                matches!(Stored::from_answer(&answer(junk, None)), Stored::Refused(_)),
                "{junk:?}"
            );
        }
    }
}
