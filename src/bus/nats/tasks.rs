//! Durable task pools on NATS: one JetStream work-queue stream per pool (`OX_TASKS_<pool>`,
//! subject `ox.task.<pool>`) and one durable pull consumer (`workers`) shared by the pool's
//! processes on every node.
//!
//! A process pulls only as many tasks as it has free slots, keeps each one's lease alive while
//! its handler runs, and sends the result to the submitter with the task's acknowledgement
//! subject; the submitter acknowledges the task once the result is in its hands (as few
//! messages per task as a plain JetStream reply and ack). So a result is never lost to a
//! restart or a lost message: a task whose result did not arrive stays unacknowledged, its
//! lease runs out and it is delivered again; at worst it runs again and the submitter, which
//! takes the first result only, acknowledges and ignores the second. A task whose process dies is redelivered when its lease runs out; one delivered
//! more often than its retry limit allows is moved to the `OX_DEAD` stream (subject
//! `ox.dead.<pool>.<task id>`, one message per task) for an operator, and its submitter gets
//! `RetriesExhausted`. Before a redelivered task runs again its submitter is asked whether the
//! result already reached it (its acknowledgement may have been lost); if so, the task is
//! acknowledged instead of run twice. A submitter with no inbox any more (stopped, or
//! reconnecting) gets its task held back until the task's deadline, then dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::spawn_local;

use super::link::{to_header_map, NatsLink, Stored};
use crate::bus::transport::{
    KvOp, Outgoing, PoolSpec, PoolStats, Submission, TaskDelivery, TaskHandler, TaskOutcome,
    Transport,
};
use crate::bus::{
    subject, BusError, Headers, ACK_HEADER, ANSWERS_PROBE_HEADER, PROBE_ANSWERED, PROBE_HEADER,
    RECEIPT_HEADER, STATUS_HEADER,
};

/// Header of a task message: where its result goes.
pub(crate) const REPLY_HEADER: &str = "ox-reply";
/// Header of a task message: how many more deliveries it may have after a failure to finish.
pub(crate) const RETRIES_HEADER: &str = "ox-max-retries";
/// Header of a dead task: why.
const REASON_HEADER: &str = "ox-dead-reason";
/// The durable consumer every process of a pool shares.
const CONSUMER: &str = "workers";
/// The stream keeping tasks that ran out of retries.
pub(crate) const DEAD_STREAM: &str = "OX_DEAD";
/// How long a redelivered task waits for its submitter to say whether it has the result.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a submission waits for JetStream's acknowledgement before publishing again.
pub(super) const PUBLISH_ACK_WAIT: Duration = Duration::from_millis(1500);
/// How long one pull request waits for tasks before asking again.
const PULL_WAIT: Duration = Duration::from_secs(2);
/// How long after a pull request expires at the server its tasks stop being expected.
const PULL_GRACE: Duration = Duration::from_millis(500);
/// How long a task whose submitter is away (no inbox at the server) is held back before it is
/// delivered again, until its deadline passes.
const ORPHAN_RETRY: Duration = Duration::from_secs(2);
/// Header of a task message: when its submitter stops waiting (milliseconds since the epoch).
pub(crate) const DEADLINE_HEADER: &str = "ox-deadline";
/// Header of a task message published again after an attempt whose outcome was unknown (no
/// acknowledgement in time): an earlier copy may be queued too, so its submitter is asked
/// whether the result reached it before the task runs, as for a redelivery.
pub(crate) const RESENT_HEADER: &str = "ox-resent";

/// The shared-state key counting `pool`'s redelivered tasks.
fn redelivered_key(pool: &str) -> String {
    format!("oxwork.pools.{}.redelivered", subject::token(pool))
}

/// The dead-letter subject of `task`: `ox.dead.<pool>.<task id>`, the id being the message id
/// its submitter gave it (else its sequence in the pool's stream).
fn dead_subject(pool: &str, task: &jetstream::Message) -> String {
    let id = match header(task.headers.as_ref(), "Nats-Msg-Id") {
        Some(id) => subject::token(id),
        None => format!("seq{}", task.info().map(|i| i.stream_sequence).unwrap_or(0)),
    };
    format!("ox.dead.{}.{id}", subject::token(pool))
}

/// The subject tasks of `pool` are published to.
pub(crate) fn task_subject(pool: &str) -> String {
    format!("ox.task.{}", subject::token(pool))
}

/// The stream holding `pool`'s queue: the pool's name where it is a valid stream name,
/// otherwise its escaped token.
pub(crate) fn stream_name(pool: &str) -> String {
    let t = subject::token(pool).replace('~', "_x");
    format!("OX_TASKS_{t}")
}

fn header<'a>(headers: Option<&'a async_nats::HeaderMap>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

fn stream_config(pool: &str, max_queue: u32, replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: stream_name(pool),
        num_replicas: replicas,
        subjects: vec![task_subject(pool)],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        max_messages: i64::from(max_queue.max(1)),
        discard: jetstream::stream::DiscardPolicy::New,
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Makes sure the pool's stream exists with `replicas` copies; the pool's own processes set its
/// queue limit. Errors are JetStream's words (a leader election, a server down, a timeout):
/// callers retry.
async fn ensure_stream(
    js: &jetstream::Context,
    pool: &str,
    max_queue: Option<u32>,
    replicas: usize,
) -> Result<jetstream::stream::Stream, String> {
    let config = stream_config(pool, max_queue.unwrap_or(100_000), replicas);
    let mut stream = super::replicated_stream(js, config.clone()).await?;
    if max_queue.is_some() {
        let current = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .config
            .clone();
        if current.max_messages != config.max_messages {
            let updated = jetstream::stream::Config {
                max_messages: config.max_messages,
                ..current
            };
            js.update_stream(updated).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(stream)
}

async fn ensure_dead_stream(js: &jetstream::Context, replicas: usize) -> Result<(), String> {
    let config = jetstream::stream::Config {
        name: DEAD_STREAM.into(),
        subjects: vec!["ox.dead.>".into()],
        max_messages: 100_000,
        max_messages_per_subject: 1,
        discard: jetstream::stream::DiscardPolicy::Old,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let mut stream = super::replicated_stream(js, config.clone()).await?;
    let existing = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .config
        .clone();
    if existing.max_messages_per_subject != 1 {
        // Made by an earlier version, which kept every copy of a task retired twice.
        let fixed = jetstream::stream::Config {
            max_messages_per_subject: 1,
            ..existing
        };
        js.update_stream(fixed).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What a delivery's metadata says, read once.
#[derive(Clone, Copy)]
struct Start {
    /// 1 for the first delivery.
    delivered: i64,
    /// The task's sequence in its stream (its id in this process).
    sequence: u64,
    /// Whether the task may have run already: a redelivery, or a copy published again.
    again: bool,
}

struct Running {
    message: Rc<jetstream::Message>,
    reply: Option<String>,
    /// When it began, for lease renewal.
    started: tokio::time::Instant,
}

/// This process's membership of its pool.
pub(crate) struct PoolMember {
    pool: String,
    concurrency: u32,
    lease: Duration,
    running: RefCell<HashMap<u64, Running>>,
    busy: Cell<u32>,
    room: Notify,
    handler: TaskHandler,
    /// Set when the process is stopping: take no more tasks.
    stopping: Cell<bool>,
    /// Set once no pull request of ours can deliver any more (after a stop began).
    pulls_closed: Cell<bool>,
}

impl PoolMember {
    pub(crate) fn start(link: &NatsLink, spec: PoolSpec, handler: TaskHandler) -> Rc<PoolMember> {
        let max_queue = spec.max_queue;
        let member = Rc::new(PoolMember {
            pool: spec.pool,
            concurrency: spec.concurrency.max(1),
            lease: spec.lease.max(Duration::from_millis(300)),
            running: RefCell::new(HashMap::new()),
            busy: Cell::new(0),
            room: Notify::new(),
            handler,
            stopping: Cell::new(false),
            pulls_closed: Cell::new(false),
        });
        let (m, link2) = (member.clone(), link.clone());
        spawn_local(async move { m.pull_loop(link2, max_queue).await });
        let (m, link) = (member.clone(), link.clone());
        spawn_local(async move { m.sweep_loop(link).await });
        let m = member.clone();
        spawn_local(async move { m.renew_loop().await });
        member
    }

    async fn consumer(
        &self,
        js: &jetstream::Context,
        max_queue: u32,
        replicas: usize,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        let fail = |e: String| {
            BusError::Unavailable(format!(
                "task pool {}: cannot set up its stream: {e}",
                self.pool
            ))
        };
        let stream = ensure_stream(js, &self.pool, Some(max_queue), replicas)
            .await
            .map_err(fail)?;
        ensure_dead_stream(js, replicas)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot set up {DEAD_STREAM}: {e}")))?;
        let config = pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.lease,
            max_ack_pending: 100_000,
            ..Default::default()
        };
        let consumer = match stream.get_consumer::<pull::Config>(CONSUMER).await {
            Ok(c) if c.cached_info().config.ack_wait == self.lease => c,
            Ok(existing) => match stream.create_consumer(config).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("task pool {}: lease not changed: {e}", self.pool);
                    existing
                }
            },
            Err(_) => stream
                .get_or_create_consumer(CONSUMER, config)
                .await
                .map_err(|e| BusError::State(format!("task pool {}: {e}", self.pool)))?,
        };
        Ok(consumer)
    }

    /// Renews the lease of every task running longer than a third of it, every third of it:
    /// one timer for the process rather than one per task.
    async fn renew_loop(self: Rc<Self>) {
        let every = self.lease / 3;
        while !self.stopping.get() {
            tokio::time::sleep(every).await;
            let now = tokio::time::Instant::now();
            let long: Vec<Rc<jetstream::Message>> = self
                .running
                .borrow()
                .values()
                .filter(|r| now.duration_since(r.started) >= every)
                .map(|r| r.message.clone())
                .collect();
            for m in long {
                spawn_local(async move {
                    let _ = m.ack_with(AckKind::Progress).await;
                });
            }
        }
    }

    async fn sweep_loop(self: Rc<Self>, link: NatsLink) {
        let js = jetstream::new(link.client().await);
        while !self.stopping.get() {
            tokio::time::sleep(SWEEP_EVERY).await;
            if !link.is_connected() {
                continue;
            }
            match sweep_replayed(&js, &self.pool).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "task pool {}: {n} completed tasks a server replayed after a crash removed",
                    self.pool
                ),
                Err(e) => tracing::debug!("task pool {}: replay sweep: {e}", self.pool),
            }
        }
    }

    /// Pulls tasks as slots free, on one delivery inbox for the process's whole life: pull
    /// requests (`CONSUMER.MSG.NEXT`, each for at most [`PULL_WAIT`]) ask for no more than the
    /// free slots minus what earlier requests may still deliver, and are topped up as slots free
    /// rather than when a batch ends. A delivery that arrives with no free slot (a request that
    /// outlived our count of it: after a partition, a reconnection) is handed back at once
    /// (nak), never left to its lease.
    async fn pull_loop(self: Rc<Self>, link: NatsLink, max_queue: u32) {
        let client = link.client().await;
        let js = jetstream::new(client.clone());
        let replicas = link.replicas().await;
        let mut pause = Duration::from_millis(50);
        // Top-ups smaller than this wait for more slots to free (a pull is a request to the
        // server), unless nothing at all is on its way: half the slots, as async-nats's own
        // pull stream refills at half its batch.
        let top_up = (self.concurrency / 4).max(1) as usize;
        loop {
            if self.stopping.get() {
                self.pulls_closed.set(true);
                return;
            }
            let consumer = match self.consumer(&js, max_queue, replicas).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("{e}; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let inbox = client.new_inbox();
            let mut deliveries = match client.subscribe(inbox.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("task pool {}: no delivery inbox: {e}", self.pool);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            pause = Duration::from_millis(50);
            // Tasks our live pull requests may still deliver, and when the last of those
            // requests has surely expired at the server.
            let mut on_the_way: usize = 0;
            let mut requests_end = tokio::time::Instant::now();
            loop {
                if self.stopping.get() {
                    // Requests still open would deliver into an inbox that is gone, and those
                    // tasks would wait out their lease: take what comes until they expire and
                    // hand it back at once.
                    while on_the_way > 0 {
                        match tokio::time::timeout_at(requests_end, deliveries.next()).await {
                            Ok(Some(m)) => on_the_way = self.delivered(&js, &link, m, on_the_way),
                            _ => break,
                        }
                    }
                    self.pulls_closed.set(true);
                    return;
                }
                if on_the_way > 0 && tokio::time::Instant::now() >= requests_end {
                    // Every request has expired and its end notice did not come (lost with a
                    // connection, or with the server leading the consumer): count nothing on
                    // its way.
                    on_the_way = 0;
                }
                let free = (self.concurrency - self.busy.get().min(self.concurrency)) as usize;
                let want = free.saturating_sub(on_the_way);
                if link.is_connected() && want > 0 && (want >= top_up || on_the_way == 0) {
                    let request = pull::BatchConfig {
                        batch: want,
                        expires: Some(PULL_WAIT),
                        ..Default::default()
                    };
                    if let Err(e) = consumer.request_batch(request, inbox.clone().into()).await {
                        tracing::debug!("task pool {}: pull failed: {e}", self.pool);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    on_the_way += want;
                    requests_end = tokio::time::Instant::now() + PULL_WAIT + PULL_GRACE;
                }
                let notified = self.room.notified();
                tokio::select! {
                    m = deliveries.next() => {
                        let Some(m) = m else { break };
                        on_the_way = self.delivered(&js, &link, m, on_the_way);
                    }
                    _ = notified => {}
                    _ = tokio::time::sleep_until(requests_end), if on_the_way > 0 => {}
                    _ = tokio::time::sleep(PULL_WAIT), if on_the_way == 0 => {}
                }
            }
        }
    }

    /// One message on the delivery inbox: a task (run, or handed back when there is no free
    /// slot), or the server's notice that a pull request ended with some of it undelivered.
    /// Returns how many tasks are still on their way.
    fn delivered(
        self: &Rc<Self>,
        js: &jetstream::Context,
        link: &NatsLink,
        m: async_nats::Message,
        on_the_way: usize,
    ) -> usize {
        use async_nats::StatusCode;
        match m.status {
            None | Some(StatusCode::OK) => {
                let message = jetstream::Message {
                    message: m,
                    context: js.clone(),
                };
                if self.busy.get() >= self.concurrency || !link.is_connected() {
                    tracing::debug!("task pool {}: a task arrived with no free slot", self.pool);
                    spawn_local(async move {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    });
                } else {
                    self.take(js, link, message);
                }
                on_the_way.saturating_sub(1)
            }
            Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                let undelivered = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse::<usize>().ok());
                match undelivered {
                    Some(n) => on_the_way.saturating_sub(n),
                    // Refused whole without a count (too many waiting pulls): start afresh.
                    None => 0,
                }
            }
            _ => on_the_way,
        }
    }

    /// Takes one delivered task. A redelivery whose submitter already has the result (the
    /// process that ran it died between the result and its acknowledgement) is acknowledged
    /// without running again; any other is started, or retired when delivered too often.
    fn take(
        self: &Rc<Self>,
        js: &jetstream::Context,
        link: &NatsLink,
        message: jetstream::Message,
    ) {
        if self.stopping.get() {
            // Pulled just as the process began to stop: straight back to the queue.
            spawn_local(async move {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            });
            return;
        }
        let (delivered, sequence) = match message.info() {
            Ok(i) => (i.delivered.max(1), i.stream_sequence),
            Err(e) => {
                tracing::warn!("task pool {}: a delivery without metadata: {e}", self.pool);
                return;
            }
        };
        let headers = message.headers.as_ref();
        let reply = header(headers, REPLY_HEADER).map(str::to_string);
        // A second copy may exist (a redelivery, or a publish sent again): ask first.
        let again = delivered > 1 || header(headers, RESENT_HEADER).is_some();
        let probe = again && header(headers, ANSWERS_PROBE_HEADER).is_some();
        let start = Start {
            delivered,
            sequence,
            again,
        };
        match reply {
            Some(reply) if probe => {
                // The slot is held while the submitter is asked, so no more is pulled.
                self.busy.set(self.busy.get() + 1);
                let (me, js, link) = (self.clone(), js.clone(), link.clone());
                spawn_local(async move {
                    let asked = ask_submitter(&link, &reply).await;
                    me.busy.set(me.busy.get().saturating_sub(1));
                    me.room.notify_one();
                    match asked {
                        Submitter::HasResult => {
                            tracing::debug!(
                                "task pool {}: a redelivered task was answered",
                                me.pool
                            );
                            let _ = message.ack().await;
                        }
                        Submitter::Gone if past_deadline(&message) => {
                            tracing::debug!(
                                "task pool {}: a task whose submitter is gone is dropped",
                                me.pool
                            );
                            let _ = message.ack().await;
                        }
                        Submitter::Gone => {
                            let _ = message.ack_with(AckKind::Nak(Some(ORPHAN_RETRY))).await;
                        }
                        Submitter::Waiting if me.stopping.get() => {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                        }
                        Submitter::Waiting => me.begin(&js, &link, message, start, Some(reply)),
                    }
                });
            }
            reply => self.begin(js, link, message, start, reply),
        }
    }

    /// Starts a task, or retires it when it has been delivered too often.
    fn begin(
        self: &Rc<Self>,
        js: &jetstream::Context,
        link: &NatsLink,
        message: jetstream::Message,
        start: Start,
        reply: Option<String>,
    ) {
        let Start {
            delivered,
            sequence,
            again,
        } = start;
        let max_retries = header(message.headers.as_ref(), RETRIES_HEADER)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(i64::from(crate::bus::DEFAULT_TASK_RETRIES));
        if delivered > max_retries + 1 {
            self.retire(js, link, message, reply, delivered);
            return;
        }
        if again {
            // Counted cluster-wide, in shared state, for `status` (JetStream's own figure
            // counts only redeliveries still unacknowledged). A resent copy that runs counts:
            // its task may have run already.
            let (link, key) = (link.clone(), redelivered_key(&self.pool));
            spawn_local(async move {
                let counted = super::state::run(
                    &link,
                    KvOp::Incr {
                        key,
                        by: 1,
                        ttl_ms: 0,
                    },
                );
                if let Err(e) = counted.await {
                    tracing::debug!("redelivery not counted: {e}");
                }
            });
        }
        let message = Rc::new(message);
        let payload = message.payload.clone();
        self.running.borrow_mut().insert(
            sequence,
            Running {
                message,
                reply,
                started: tokio::time::Instant::now(),
            },
        );
        self.busy.set(self.busy.get() + 1);
        (self.handler)(TaskDelivery {
            pool: self.pool.clone(),
            task: sequence,
            attempt: delivered.clamp(1, i64::from(u8::MAX)) as u8,
            payload,
        });
    }

    /// Moves a task out of retries to the dead-letter stream and tells its submitter.
    fn retire(
        &self,
        js: &jetstream::Context,
        link: &NatsLink,
        message: jetstream::Message,
        reply: Option<String>,
        delivered: i64,
    ) {
        let (js, link, pool) = (js.clone(), link.clone(), self.pool.clone());
        spawn_local(async move {
            // A sign of life first: keeping the task while it is copied to OX_DEAD spares a
            // redelivery racing this one (which the per-task subject would absorb anyway).
            let _ = message.ack_with(AckKind::Progress).await;
            let reason = format!("{} deliveries, none finished", delivered - 1);
            tracing::warn!("task pool {pool}: a task is dead after {reason}");
            let mut headers = message.headers.clone().unwrap_or_default();
            headers.insert(REASON_HEADER, reason.as_str());
            // One subject per task in a stream keeping one message per subject: a task retired
            // twice (a delivery that raced the lease's end) is still one dead task.
            let dead = dead_subject(&pool, &message);
            let kept = match js
                .publish_with_headers(dead, headers, message.payload.clone())
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !kept {
                // Leave it queued; the next delivery tries again.
                return;
            }
            if let Some(r) = reply {
                let h = Headers::new().with(STATUS_HEADER, "retries-exhausted");
                if subject::check_publish(&r).is_ok() {
                    let _ = link.publish(Outgoing {
                        subject: r,
                        reply: None,
                        headers: h,
                        payload: Bytes::from(reason),
                    });
                }
            }
            let _ = message.ack_with(AckKind::Term).await;
        });
    }

    /// The process is stopping: take nothing more, let running tasks finish for up to `limit`,
    /// then hand the rest back to the queue at once (rather than when their lease runs out).
    pub(crate) async fn wind_down(&self, limit: Duration) {
        self.stopping.set(true);
        self.room.notify_one();
        let deadline = tokio::time::Instant::now() + limit;
        while self.busy.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What open pull requests still deliver is handed back by the pull loop meanwhile.
        let pulls_end = tokio::time::Instant::now() + PULL_WAIT + Duration::from_secs(1);
        while !self.pulls_closed.get() && tokio::time::Instant::now() < pulls_end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left: Vec<Running> = self.running.borrow_mut().drain().map(|(_, r)| r).collect();
        if !left.is_empty() {
            tracing::info!(
                "task pool {}: {} unfinished tasks handed back",
                self.pool,
                left.len()
            );
        }
        for run in left {
            let _ = run.message.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// A task's handler finished: deliver the result, then acknowledge.
    pub(crate) fn done(&self, link: &NatsLink, outcome: TaskOutcome) {
        let task = outcome.task;
        let Some(run) = self.running.borrow_mut().remove(&task) else {
            tracing::warn!("task pool {}: task {task} finished twice", self.pool);
            return;
        };
        self.busy.set(self.busy.get().saturating_sub(1));
        self.room.notify_one();
        let ack_subject = run.message.reply.as_ref().map(|s| s.to_string());
        match (&run.reply, ack_subject) {
            (Some(reply), Some(ack)) if subject::check_publish(reply).is_ok() => {
                use async_nats::HeaderName;
                let mut headers = async_nats::HeaderMap::new();
                let status = if outcome.ok { "ok" } else { "failed" };
                headers.insert(HeaderName::from_static(STATUS_HEADER), status);
                headers.insert(HeaderName::from_static(RECEIPT_HEADER), "1");
                headers.insert(HeaderName::from_static(ACK_HEADER), ack);
                let sent = link.publish_prepared(reply.clone(), None, headers, outcome.payload);
                if let Err(e) = sent {
                    tracing::warn!("task {task}: result not sent ({e}); it will run again");
                }
            }
            _ => {
                spawn_local(async move {
                    if let Err(e) = run.message.ack().await {
                        tracing::warn!(
                            "task {task}: acknowledgement not sent ({e}); it may run again"
                        );
                    }
                });
            }
        }
    }
}

/// How often a pool process looks for completed tasks a server replayed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Replayed tasks removed per sweep, at most.
const SWEEP_MAX: u64 = 10_000;

/// Removes tasks that are back in `pool`'s stream although completed: a server that crashes
/// (kill -9) after acknowledging may replay them from its log when it restarts, behind the
/// consumer's acknowledgement floor, where they are never delivered again and would only eat
/// the queue's limit. Every message at or below the floor was acknowledged (a work queue deletes
/// acknowledged messages), so any found there is one of those and is deleted. Returns how many.
pub(crate) async fn sweep_replayed(js: &jetstream::Context, pool: &str) -> Result<u64, String> {
    let mut stream = js
        .get_stream(stream_name(pool))
        .await
        .map_err(|e| e.to_string())?;
    let first = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .first_sequence;
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_consumer(CONSUMER)
        .await
        .map_err(|e| e.to_string())?;
    let floor = consumer
        .info()
        .await
        .map_err(|e| e.to_string())?
        .ack_floor
        .stream_sequence;
    let mut removed = 0;
    if first == 0 || first > floor {
        return Ok(0);
    }
    for seq in first..=floor.min(first + SWEEP_MAX - 1) {
        if let Ok(true) = stream.delete_message(seq).await {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sends a request straight through the client (its own inbox), at most `limit`.
async fn request(
    link: &NatsLink,
    subject: &str,
    headers: &Headers,
    payload: Bytes,
    limit: Duration,
) -> Result<async_nats::Message, String> {
    let asked = tokio::time::timeout(limit, async {
        let client = link.client().await;
        client
            .request_with_headers(subject.to_string(), to_header_map(headers), payload)
            .await
    })
    .await;
    match asked {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in time".into()),
    }
}

/// What a task's submitter says when asked about a redelivered task.
enum Submitter {
    /// The result reached it: the task is done.
    HasResult,
    /// It is waiting (or did not answer in time): run the task.
    Waiting,
    /// Nobody listens at its reply subject (it stopped, or is reconnecting).
    Gone,
}

/// Asks the submitter listening at `reply` whether the task's result has reached it. Anything
/// but a clear answer (no answer in time, no usable subject) counts as waiting: the task runs.
async fn ask_submitter(link: &NatsLink, reply: &str) -> Submitter {
    if subject::check_publish(reply).is_err() {
        return Submitter::Waiting;
    }
    let probe = Headers::new().with(PROBE_HEADER, "1");
    match request(link, reply, &probe, Bytes::new(), PROBE_TIMEOUT).await {
        Ok(answer) if answer.payload == PROBE_ANSWERED.as_bytes() => Submitter::HasResult,
        Ok(answer) if answer.status == Some(async_nats::StatusCode::NO_RESPONDERS) => {
            Submitter::Gone
        }
        Err(e) if e.to_ascii_lowercase().contains("no responders") => Submitter::Gone,
        _ => Submitter::Waiting,
    }
}

/// Whether the task's submitter has stopped waiting for it (its `ox-deadline` has passed; a
/// task without one is given 60 s from its publication).
fn past_deadline(message: &jetstream::Message) -> bool {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0);
    let deadline_ms = header(message.headers.as_ref(), DEADLINE_HEADER)
        .and_then(|v| v.parse::<i128>().ok())
        .or_else(|| {
            let info = message.info().ok()?;
            Some(info.published.unix_timestamp_nanos() / 1_000_000 + 60_000)
        });
    deadline_ms.is_some_and(|d| now_ms >= d)
}

/// Queues a task on `pool`'s stream, retrying until `deadline` whatever JetStream says short
/// of a refusal (no stream yet, a leader election, a server of the stream down, a timeout);
/// the message id makes a retried publish that did arrive count once. A full queue is
/// [`BusError::PoolFull`] at once; a deadline passed while connected is
/// [`BusError::Unavailable`] with JetStream's last words; never connected, `Disconnected`.
pub(crate) async fn submit(link: &NatsLink, task: Submission) -> Result<(), BusError> {
    if !link.has_client() {
        return Box::pin(submit_retrying(link, task, None)).await;
    }
    let left = task
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    let until = tokio::time::Instant::now() + PUBLISH_ACK_WAIT.min(left);
    let subject = task_subject(&task.pool);
    let first = link
        .store(
            subject,
            task_headers(&task, None),
            task.payload.clone(),
            until,
        )
        .await;
    match first {
        Ok(Some(Stored::Kept)) => Ok(()),
        // Boxed: the slow path's large future would otherwise make every submission's future
        // large (it is boxed and moved per call, and a large allocation costs glibc a
        // consolidation of its free lists).
        other => Box::pin(submit_retrying(link, task, Some(other))).await,
    }
}

/// The headers of a task message; made again for each attempt (the map is moved into the
/// publish). `resend_id`: the message id of a task published again after an attempt whose
/// outcome is unknown (JetStream keeps one copy of a message id within its duplicate window;
/// the first attempt carries none, which spares the server a deduplication entry per task).
fn task_headers(task: &Submission, resend_id: Option<&str>) -> async_nats::HeaderMap {
    use async_nats::HeaderName;
    let mut h = async_nats::HeaderMap::new();
    if let Some(r) = &task.reply {
        h.insert(HeaderName::from_static(REPLY_HEADER), &**r);
        h.insert(HeaderName::from_static(ANSWERS_PROBE_HEADER), "1");
        let left = task
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let until = std::time::SystemTime::now() + left;
        if let Ok(ms) = until.duration_since(std::time::UNIX_EPOCH) {
            h.insert(
                HeaderName::from_static(DEADLINE_HEADER),
                ms.as_millis().to_string(),
            );
        }
    }
    // The default goes without saying (one header less for the server and the pool to parse).
    if task.max_retries != crate::bus::DEFAULT_TASK_RETRIES {
        h.insert(
            HeaderName::from_static(RETRIES_HEADER),
            task.max_retries.to_string(),
        );
    }
    if let Some(id) = resend_id {
        h.insert(HeaderName::from_static("Nats-Msg-Id"), id);
        h.insert(HeaderName::from_static(RESENT_HEADER), "1");
    }
    h
}

/// [`submit`] past its first attempt (or before the client exists): `first` is what that
/// attempt got.
async fn submit_retrying(
    link: &NatsLink,
    task: Submission,
    mut first: Option<Result<Option<Stored>, String>>,
) -> Result<(), BusError> {
    let deadline = task.deadline;
    let pool = &*task.pool;
    if !link.has_client() {
        tokio::time::timeout_at(deadline, link.client())
            .await
            .map_err(|_| BusError::Disconnected)?;
    }
    let mut pause = Duration::from_millis(50);
    let mut last_words;
    // Set once an attempt ended without JetStream's word: a copy may be queued already.
    let mut resend_id: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = match first.take() {
            Some(outcome) => outcome,
            None => {
                let until = tokio::time::Instant::now() + PUBLISH_ACK_WAIT.min(left);
                let headers = task_headers(&task, resend_id.as_deref());
                link.store(task_subject(pool), headers, task.payload.clone(), until)
                    .await
            }
        };
        let unknown = matches!(outcome, Ok(None) | Err(_));
        match outcome {
            Ok(Some(Stored::Kept)) => return Ok(()),
            Ok(Some(Stored::Refused(why))) if why.contains("maximum messages") => {
                return Err(BusError::PoolFull(pool.to_string()))
            }
            Ok(Some(Stored::NoStream)) => {
                // Nobody of the pool has started yet (or the stream is electing a leader):
                // make its queue so the task waits there. JetStream requests are given no more
                // than a publish attempt, so that an election is retried, not waited out.
                let made = tokio::time::timeout(left, async {
                    let js = jetstream::ContextBuilder::new()
                        .timeout(PUBLISH_ACK_WAIT)
                        .build(link.client().await);
                    let replicas = link.replicas().await;
                    ensure_stream(&js, pool, None, replicas).await
                });
                match made.await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => last_words = format!("cannot set up its stream: {e}"),
                    Err(_) => last_words = "no stream for the pool yet".into(),
                }
            }
            Ok(Some(Stored::Refused(why))) => last_words = why,
            Ok(None) => last_words = "no acknowledgement in time".into(),
            Err(why) => last_words = why,
        }
        if unknown && resend_id.is_none() {
            resend_id = Some(next_submission_id());
        }
        if tokio::time::Instant::now() + pause >= deadline {
            tracing::warn!("task for pool {pool} not queued before its deadline: {last_words}");
            return Err(BusError::Unavailable(format!(
                "task pool {pool}: JetStream did not take the task before its deadline \
                 ({last_words})"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// A message id for the next submission: this process's random token (made once) and a count.
fn next_submission_id() -> String {
    thread_local! {
        static TOKEN: String = crate::bus::handle::unique_token();
        static N: Cell<u64> = const { Cell::new(0) };
    }
    let n = N.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    TOKEN.with(|t| format!("{t}-{n}"))
}

/// The figures of `pool`'s queue for `status`, from the consumer: queued is what it has not
/// delivered yet, running what it delivered and awaits an acknowledgement for. (The stream's
/// message count would also count completed tasks a server replayed after a crash, until
/// [`sweep_replayed`] removes them.)
pub(crate) async fn pool_stats(js: &jetstream::Context, pool: &str) -> Option<PoolStats> {
    let stream = js.get_stream(stream_name(pool)).await.ok()?;
    let mut consumer: jetstream::consumer::Consumer<pull::Config> =
        stream.get_consumer(CONSUMER).await.ok()?;
    let info = consumer.info().await.ok()?;
    let mut dead = 0u64;
    if let Ok(s) = js.get_stream(DEAD_STREAM).await {
        if let Ok(mut subjects) = s
            .info_with_subjects(format!("ox.dead.{}.>", subject::token(pool)))
            .await
        {
            while let Some(Ok((_, n))) = subjects.next().await {
                dead += n as u64;
            }
        }
    }
    Some(PoolStats {
        name: pool.to_string(),
        consumers: info.num_waiting as u64,
        queued: info.num_pending,
        running: info.num_ack_pending as u64,
        retried: super::state::read_number(js, &redelivered_key(pool))
            .await
            .unwrap_or(0)
            .max(0) as u64,
        dead,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(max_retries: u8) -> Submission {
        Submission {
            pool: "square".into(),
            reply: Some("_INBOX.abc.7".into()),
            max_retries,
            payload: Bytes::from_static(b"x"),
            deadline: tokio::time::Instant::now() + Duration::from_secs(30),
        }
    }

    fn names(h: &async_nats::HeaderMap) -> Vec<String> {
        let mut n: Vec<String> = h
            .iter()
            .map(|(k, _)| AsRef::<str>::as_ref(k).to_string())
            .collect();
        n.sort();
        n
    }

    #[tokio::test]
    async fn a_first_publish_carries_no_message_id() {
        let h = task_headers(&submission(crate::bus::DEFAULT_TASK_RETRIES), None);
        assert_eq!(
            names(&h),
            [ANSWERS_PROBE_HEADER, DEADLINE_HEADER, REPLY_HEADER]
        );
        assert_eq!(header(Some(&h), REPLY_HEADER), Some("_INBOX.abc.7"));
    }

    #[tokio::test]
    async fn a_resent_publish_carries_its_id_and_says_it_was_resent() {
        let h = task_headers(&submission(5), Some("tok-9"));
        assert_eq!(header(Some(&h), "Nats-Msg-Id"), Some("tok-9"));
        assert_eq!(header(Some(&h), RESENT_HEADER), Some("1"));
        assert_eq!(header(Some(&h), RETRIES_HEADER), Some("5"));
    }
}
