//! `Worker`: a group of identical processes, declared in `main` before [`run_all`](crate::run_all).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::protocol::{Dynamic, Protocol};
use crate::runtime::connection::{Connection, ConnectionError, Handlers};
use crate::runtime::guard::guarded;
use crate::runtime::listener::Listener;
use crate::runtime::server::{self, AcceptControl};
use crate::runtime::timer::IntoInterval;
use crate::runtime::url::SocketUrl;

/// Defaults, in one place.
pub(crate) mod defaults {
    use std::time::Duration;
    /// Workerman's default: 10 MiB.
    pub(crate) const MAX_PACKAGE_SIZE: usize = 10 * 1024 * 1024;
    /// Workerman's default: 1 MiB.
    pub(crate) const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;
    /// How long a plain stop or reload keeps serving requests already under way (Workerman's
    /// `$stopTimeout`).
    pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(2);
    /// How long `stop -g` and `reload -g` keep serving open connections before saying goodbye.
    pub(crate) const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(3600);
}

/// A worker group's settings, as the master and its processes see them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerConfig {
    pub(crate) name: String,
    pub(crate) count: u32,
    pub(crate) listen: Option<String>,
    pub(crate) reuse_port: bool,
    pub(crate) max_package_size: usize,
    pub(crate) max_send_buffer_size: usize,
    pub(crate) stop_timeout: Duration,
    pub(crate) graceful_timeout: Duration,
    /// On reload, hand open connections to the new process instead of closing them.
    pub(crate) hand_off: bool,
    pub(crate) reloadable: bool,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_requests: Option<u64>,
    pub(crate) max_memory_mb: Option<u64>,
    /// Has bus handlers (`on_worker_message`, `on_task`): the hub is started with the tree.
    pub(crate) uses_bus: bool,
    /// Tasks one process of a pool handles at once.
    pub(crate) task_concurrency: u32,
    /// Its connections are reachable from other processes from the start.
    pub(crate) gateway: bool,
    /// Tasks the pool queues before refusing more.
    pub(crate) task_queue_limit: u32,
    /// On NATS: how long a task may go without a sign of life from its process before it is
    /// given to another.
    pub(crate) task_lease: Duration,
    /// Has a task handler: the group is a task pool.
    pub(crate) is_pool: bool,
    /// TLS on this worker's listener.
    pub(crate) tls: Option<crate::runtime::tls::TlsFiles>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), required.
    #[serde(default)]
    pub(crate) proxy_protocol: bool,
    /// The user (and group) this group's processes run as, switched to before they start.
    #[serde(default)]
    pub(crate) user: Option<String>,
    #[serde(default)]
    pub(crate) group: Option<String>,
    /// Each process runs on one CPU of those the master may use, chosen by its id.
    #[serde(default)]
    pub(crate) cpu_affinity: bool,
}

impl WorkerConfig {
    pub(crate) fn url(&self) -> Option<SocketUrl> {
        // Validated when the worker was declared.
        self.listen
            .as_deref()
            .and_then(|u| SocketUrl::parse(u).ok())
    }
}

pub(crate) type WorkerFn<P> = Box<dyn Fn(&Worker<P>)>;

pub(crate) struct WorkerShared<P: Protocol> {
    config: RefCell<WorkerConfig>,
    url: Option<SocketUrl>,
    proto: P,
    handlers: RefCell<Handlers<P>>,
    on_worker_start: RefCell<Option<WorkerFn<P>>>,
    on_worker_stop: RefCell<Option<WorkerFn<P>>>,
    on_worker_reload: RefCell<Option<WorkerFn<P>>>,
    /// Set-up oxwork itself runs in each process at start (a WebSocket ping timer).
    /// What other layers run at the start of each process, before `on_worker_start` (the bus
    /// subscribes and joins pools; a WebSocket route starts), each under a key that a later
    /// setting of the same kind replaces (`None`: never replaced).
    internal_start: RefCell<Vec<(Option<&'static str>, WorkerFn<P>)>>,
    id: Cell<u32>,
    running: RefCell<Option<Running<P>>>,
}

struct Running<P: Protocol> {
    connections: Rc<RefCell<BTreeMap<u64, Connection<P>>>>,
    accept: Option<AcceptControl>,
    handlers: Rc<Handlers<P>>,
}

/// A group of `count` identical processes serving one address (Workerman's `Worker`).
///
/// Declare workers in `main`, set their callbacks, then call [`run_all`](crate::run_all). The
/// same `main` runs again in every worker process (workers are started by re-executing the
/// program), so everything before `run_all` runs in the master and in each worker: keep it to
/// declarations.
///
/// ```no_run
/// use oxwork::{run_all, Worker};
///
/// fn main() -> oxwork::Result<()> {
///     let mut w = Worker::new("text://0.0.0.0:8888")?;
///     w.name("hello").count(4);
///     w.on_message(|c, data| {
///         c.send(format!("Hello, {data}!"));
///     });
///     run_all()
/// }
/// ```
pub struct Worker<P: Protocol = Dynamic> {
    shared: Rc<WorkerShared<P>>,
}

impl<P: Protocol> Clone for Worker<P> {
    fn clone(&self) -> Self {
        Worker {
            shared: self.shared.clone(),
        }
    }
}

impl<P: Protocol> fmt::Debug for Worker<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.shared.config.borrow())
            .field("id", &self.shared.id.get())
            .finish()
    }
}

impl Worker<Dynamic> {
    /// A worker listening on `url`, with the protocol its scheme names: `text://`, `frame://`,
    /// `tcp://` (raw), `udp://`, `unix:///path`, or `PROTOCOL+unix:///path`.
    pub fn new(url: &str) -> Result<Worker<Dynamic>> {
        let parsed = SocketUrl::parse(url)?;
        let proto = Dynamic::by_name(&parsed.protocol)?;
        Ok(Worker::declare(Some(parsed), proto))
    }

    /// A worker with no listening address: its processes run code only (timers, outbound
    /// connections, bus messages), like Workerman's `new Worker()`.
    pub fn without_address() -> Worker<Dynamic> {
        Worker::declare(
            None,
            Dynamic::by_name("tcp").unwrap_or_else(|_| unreachable!()),
        )
    }
}

impl<P: Protocol + Clone> Worker<P> {
    /// A worker speaking a protocol of your own on `url`'s transport (the scheme's protocol
    /// part is then only a label): `Worker::with_protocol("tcp://0.0.0.0:9000", MyProto)`.
    pub fn with_protocol(url: &str, proto: P) -> Result<Worker<P>> {
        Ok(Worker::declare(Some(SocketUrl::parse(url)?), proto))
    }

    pub(crate) fn declare(url: Option<SocketUrl>, proto: P) -> Worker<P> {
        let w = Worker::unregistered(url, proto);
        crate::runtime::registry::register(w.shared.clone());
        w
    }

    /// A worker that runs inside others' processes (a WebSocket route of an HTTP worker),
    /// so the master starts no processes for it.
    pub(crate) fn unregistered(url: Option<SocketUrl>, proto: P) -> Worker<P> {
        let n = crate::runtime::registry::len();
        let config = WorkerConfig {
            name: format!("worker{n}"),
            count: 1,
            listen: url.as_ref().map(|u| u.to_string()),
            reuse_port: false,
            max_package_size: defaults::MAX_PACKAGE_SIZE,
            max_send_buffer_size: defaults::MAX_SEND_BUFFER_SIZE,
            stop_timeout: defaults::STOP_TIMEOUT,
            graceful_timeout: defaults::GRACEFUL_TIMEOUT,
            hand_off: false,
            reloadable: true,
            idle_timeout: None,
            max_requests: None,
            max_memory_mb: None,
            uses_bus: false,
            task_concurrency: 1,
            gateway: false,
            task_queue_limit: 100_000,
            task_lease: Duration::from_secs(10),
            is_pool: false,
            tls: None,
            proxy_protocol: false,
            cpu_affinity: false,
            user: None,
            group: None,
        };
        let shared = Rc::new(WorkerShared {
            config: RefCell::new(config),
            url,
            proto,
            handlers: RefCell::new(Handlers::default()),
            on_worker_start: RefCell::new(None),
            on_worker_stop: RefCell::new(None),
            on_worker_reload: RefCell::new(None),
            internal_start: RefCell::new(Vec::new()),
            id: Cell::new(0),
            running: RefCell::new(None),
        });
        Worker { shared }
    }
}

macro_rules! setting {
    ($(#[$doc:meta])* $name:ident: $ty:ty => |$c:ident, $v:ident| $apply:expr) => {
        $(#[$doc])*
        pub fn $name(&mut self, $v: $ty) -> &mut Self {
            {
                let mut $c = self.shared.config.borrow_mut();
                $apply;
            }
            self
        }
    };
}

impl<P: Protocol> Worker<P> {
    setting!(
        /// The group's name, shown by `status` and used to address its processes.
        name: &str => |c, v| c.name = v.to_string());
    setting!(
        /// How many processes run this worker (default 1); one per core the server may use.
        /// Processes sharing the listening socket split its connections evenly: one takes a
        /// connection only while it serves no more than its least loaded sibling plus one.
        count: u32 => |c, v| c.count = v.max(1));
    setting!(
        /// Gives each process its own `SO_REUSEPORT` socket, so the kernel spreads new
        /// connections among them by a hash of their addresses, instead of sharing the
        /// master's one socket (and its balancing by connection counts).
        reuse_port: bool => |c, v| c.reuse_port = v);
    setting!(
        /// Pins each process of this group to one CPU (as nginx's `worker_cpu_affinity
        /// auto`): process `id` runs on the `id`-th of the CPUs the master may use (its own
        /// affinity, so `taskset` on `start` chooses the set), counting round when there are
        /// more processes than CPUs; a replacement takes its predecessor's CPU. Worth it when
        /// these cores are the server's own: a process keeps its caches and is never moved.
        /// Leave it off (the default) where other busy programs share the cores: a pinned
        /// process must wait for its one CPU while another sits idle (docs/benchmarks.md,
        /// "Choosing `count`").
        cpu_affinity: bool => |c, v| c.cpu_affinity = v);
    setting!(
        /// Runs this group's processes as `user` (Workerman's `$worker->user`): the master,
        /// started as root, binds the ports (80, 443) and starts each process as that user,
        /// with that user's group unless [`group`](Self::group) names another, and no other
        /// groups. A user that does not exist, or a switch without root, is an error at
        /// `start`. The hub then listens in the abstract socket namespace and takes only the
        /// master's and these users' processes (checked by their credentials).
        user: &str => |c, v| c.user = Some(v.to_string()));
    setting!(
        /// The group this group's processes run as (with [`user`](Self::user), or alone).
        group: &str => |c, v| c.group = Some(v.to_string()));
    setting!(
        /// Requires the PROXY protocol (HAProxy's v1 or v2 header, as nginx, HAProxy, AWS and
        /// Google load balancers send it) on every connection of this listener (TCP or Unix;
        /// with TLS the header comes before the handshake): the header's client address becomes the
        /// connection's [`remote_addr`](Connection::remote_addr) everywhere (`connections`,
        /// logs, routing). A connection without a valid header within 5 s is closed with a
        /// logged reason. Off by default; turn it on only behind such a relay, since a client
        /// reaching the port directly could otherwise name any address.
        proxy_protocol: bool => |c, v| c.proxy_protocol = v);
    setting!(
        /// The largest package a connection may send (default 10 MiB); a larger one closes the
        /// connection with a logged reason.
        max_package_size: usize => |c, v| c.max_package_size = v.max(1));
    setting!(
        /// How many unwritten bytes a connection may queue (default 1 MiB) before `send`
        /// calls `on_buffer_full` and starts refusing.
        max_send_buffer_size: usize => |c, v| c.max_send_buffer_size = v.max(1));
    setting!(
        /// Live connection hand-off (default off): on `reload`, `reload -g`, SIGHUP and
        /// recycling, each open connection moves to the new process of its slot at its next
        /// message boundary: the socket itself, the bytes read but not yet decoded, the
        /// protocol's state, its id, client id, uid and groups, and its
        /// [`session`](Connection::session). The client sees nothing: no close, no message
        /// lost or repeated, and the new code answers its next message. The new process runs
        /// [`on_resume`](Worker::on_resume) for it, not `on_connect`. A connection that cannot
        /// move (TLS, an upgraded route, a handler still holding it past 2 s, a session over
        /// 64 KiB) gets the usual farewell. `stop` and `restart` never hand off.
        hand_off: bool => |c, v| c.hand_off = v);
    setting!(
        /// Whether `reload` restarts this group's processes (default true). A group that is
        /// not reloadable only gets `on_worker_reload`.
        reloadable: bool => |c, v| c.reloadable = v);
    setting!(
        /// After this many messages a process is recycled: replaced gracefully, as in a
        /// one-process reload. The usual remedy for slow leaks.
        max_requests: u64 => |c, v| c.max_requests = Some(v.max(1)));
    setting!(
        /// Above this resident memory (MiB) a process is recycled gracefully.
        max_memory_mb: u64 => |c, v| c.max_memory_mb = Some(v.max(1)));

    /// How long a plain `stop` or `reload` keeps serving before it closes connections
    /// (default 2 s, Workerman's `$stopTimeout`): requests already under way are answered
    /// (HTTP with `Connection: close`) within it; long-lived connections (WebSocket, text,
    /// frame) hear their farewell at once. A process that has not exited by then plus a margin
    /// is killed.
    pub fn stop_timeout(&mut self, t: impl IntoInterval) -> &mut Self {
        self.shared.config.borrow_mut().stop_timeout = t.into_interval();
        self
    }

    /// How long `stop -g` and `reload -g` keep serving open connections (default 1 hour): a
    /// retiring process takes no new connection, answers what it is asked, and ends HTTP
    /// keep-alive connections after their next response; long-lived connections stay until the
    /// client leaves or this limit passes, then hear their farewell (`on_goodbye`, WebSocket
    /// close 1001 or 1012). `stop -g --timeout SECS` and `reload -g --timeout SECS` set it for
    /// one command.
    pub fn graceful_timeout(&mut self, t: impl IntoInterval) -> &mut Self {
        self.shared.config.borrow_mut().graceful_timeout = t.into_interval();
        self
    }

    /// Serves this worker's address over TLS with the certificate chain and private key in
    /// these PEM files (any protocol: `https://` is `Worker::http` with this, `wss://` is
    /// `Worker::websocket` with this). The files are checked at `start`; every process reads
    /// them as it starts, so `reload` picks up renewed certificates.
    pub fn tls(
        &mut self,
        cert_pem: impl Into<std::path::PathBuf>,
        key_pem: impl Into<std::path::PathBuf>,
    ) -> &mut Self {
        let alpn = match self.shared.url.as_ref().map(|u| u.protocol.as_str()) {
            Some("http" | "https" | "websocket" | "ws" | "wss") => vec!["http/1.1".to_string()],
            _ => Vec::new(),
        };
        self.shared.config.borrow_mut().tls = Some(crate::runtime::tls::TlsFiles {
            cert: cert_pem.into(),
            key: key_pem.into(),
            alpn,
        });
        self
    }

    /// Closes connections that have sent nothing for this long (heartbeat timeout).
    pub fn idle_timeout(&mut self, t: impl IntoInterval) -> &mut Self {
        self.shared.config.borrow_mut().idle_timeout = Some(t.into_interval());
        self
    }

    /// Runs in each process when it starts, before it accepts connections.
    pub fn on_worker_start(&mut self, f: impl Fn(&Worker<P>) + 'static) -> &mut Self {
        *self.shared.on_worker_start.borrow_mut() = Some(Box::new(f));
        self
    }

    /// Runs in each process when it stops (stop, reload or recycling).
    pub fn on_worker_stop(&mut self, f: impl Fn(&Worker<P>) + 'static) -> &mut Self {
        *self.shared.on_worker_stop.borrow_mut() = Some(Box::new(f));
        self
    }

    /// Runs in each process when a reload is requested, before it is replaced (or, for a
    /// worker that is not reloadable, instead of being replaced).
    pub fn on_worker_reload(&mut self, f: impl Fn(&Worker<P>) + 'static) -> &mut Self {
        *self.shared.on_worker_reload.borrow_mut() = Some(Box::new(f));
        self
    }

    setting!(
        /// How many tasks this pool queues while all its processes are busy (default 100,000;
        /// at most that). Past it, `submit` fails at once with `BusError::PoolFull`.
        task_queue_limit: u32 => |c, v| c.task_queue_limit = v.clamp(1, 100_000));
    setting!(
        /// How many tasks one process of this pool handles at once (default 1).
        task_concurrency: u32 => |c, v| c.task_concurrency = v.max(1));
    setting!(
        /// On NATS, how long a task may go without a sign of life from its process before
        /// JetStream gives it to another process (default 10 s). A running task's lease is
        /// renewed every third of it, so only a dead, frozen or cut-off process loses its
        /// tasks; the default leaves a task stuck on a dead node two thirds of the default
        /// 30 s submit deadline to run elsewhere and be answered.
        task_lease: Duration => |c, v| c.task_lease = v.max(Duration::from_millis(300)));

    /// Runs when a client connects.
    pub fn on_connect(&mut self, f: impl Fn(&Connection<P>) + 'static) -> &mut Self {
        self.shared.handlers.borrow_mut().on_connect = Some(Box::new(f));
        self
    }

    /// Runs for each whole message a client sends.
    pub fn on_message(&mut self, f: impl Fn(&Connection<P>, P::Message) + 'static) -> &mut Self {
        self.shared.handlers.borrow_mut().on_message = Some(Box::new(f));
        self
    }

    /// Runs exactly once per connection, when it has closed.
    pub fn on_close(&mut self, f: impl Fn(&Connection<P>) + 'static) -> &mut Self {
        self.shared.handlers.borrow_mut().on_close = Some(Box::new(f));
        self
    }

    /// Runs when a connection meets an error (refused input, full send buffer, a panic).
    pub fn on_error(
        &mut self,
        f: impl Fn(&Connection<P>, &ConnectionError) + 'static,
    ) -> &mut Self {
        self.shared.handlers.borrow_mut().on_error = Some(Box::new(f));
        self
    }

    /// Runs when a send fills the connection's buffer past `max_send_buffer_size`.
    pub fn on_buffer_full(&mut self, f: impl Fn(&Connection<P>) + 'static) -> &mut Self {
        self.shared.handlers.borrow_mut().on_buffer_full = Some(Box::new(f));
        self
    }

    /// Runs when the process is about to close a connection because it retires (stop,
    /// reload, restart), before the protocol's last words and `on_close`: the place to send a
    /// last message ("server restarting, reconnect"). [`Farewell`](crate::Farewell) says why.
    /// A WebSocket connection then gets a close frame (1001 for a stop, 1012 for a reload or
    /// restart), a text or frame connection is simply closed after what was sent.
    pub fn on_goodbye(
        &mut self,
        f: impl Fn(&Connection<P>, crate::protocol::Farewell) + 'static,
    ) -> &mut Self {
        self.shared.handlers.borrow_mut().on_goodbye = Some(Box::new(f));
        self
    }

    /// Runs in the new process for each connection that a reload handed over to it (see
    /// [`hand_off`](Worker::hand_off)), instead of `on_connect`: the connection, its id,
    /// uid, groups and session are the ones the old process had.
    pub fn on_resume(&mut self, f: impl Fn(&Connection<P>) + 'static) -> &mut Self {
        self.shared.handlers.borrow_mut().on_resume = Some(Box::new(f));
        self
    }

    /// Runs when a full send buffer has been written out.
    pub fn on_buffer_drain(&mut self, f: impl Fn(&Connection<P>) + 'static) -> &mut Self {
        self.shared.handlers.borrow_mut().on_buffer_drain = Some(Box::new(f));
        self
    }

    /// Starts serving this worker's address in the current worker process, now (Workerman's
    /// `$worker->listen()` inside `onWorkerStart`). Sibling processes that do the same share
    /// the address through `SO_REUSEPORT`, the kernel spreading connections among them. Stops
    /// with the process (stop, reload, recycling).
    pub fn listen(&self) -> Result<()>
    where
        P: Clone,
    {
        let Some(id) = crate::runtime::registry::process_id() else {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::Config,
                "Worker::listen works inside a running worker process (call it from on_worker_start); \
                 declare workers in main otherwise",
            ));
        };
        let url = self.shared.url.clone().ok_or_else(|| {
            crate::error::Error::new(
                crate::error::ErrorKind::Config,
                "this worker has no address",
            )
        })?;
        let listener = crate::runtime::listener::bind(&url, true)?;
        self.shared.clone().start(id, Some(listener))?;
        crate::runtime::registry::add_running(self.shared.clone());
        Ok(())
    }

    /// This process's number within its group, `0..count` (Workerman's `$worker->id`).
    pub fn id(&self) -> u32 {
        self.shared.id.get()
    }

    /// The group's name.
    pub fn worker_name(&self) -> String {
        self.shared.config.borrow().name.clone()
    }

    /// The group's number of processes.
    pub fn process_count(&self) -> u32 {
        self.shared.config.borrow().count
    }

    /// The listen URL, if any.
    pub fn listen_url(&self) -> Option<String> {
        self.shared.config.borrow().listen.clone()
    }

    /// The connections open in this process (Workerman's `$worker->connections`).
    pub fn connections(&self) -> Vec<Connection<P>> {
        self.shared
            .running
            .borrow()
            .as_ref()
            .map(|r| r.connections.borrow().values().cloned().collect())
            .unwrap_or_default()
    }

    /// The worker group's protocol (its settings), for protocol-specific builder methods.
    pub(crate) fn protocol(&self) -> &P {
        &self.shared.proto
    }

    /// The group's shared state, for a route served on another worker's port.
    pub(crate) fn shared(&self) -> Rc<WorkerShared<P>> {
        self.shared.clone()
    }

    /// Settings other layers keep for this group (the bus's flags, pool sizes).
    pub(crate) fn config_mut(&mut self) -> std::cell::RefMut<'_, WorkerConfig> {
        self.shared.config.borrow_mut()
    }

    /// This group's settings.
    pub(crate) fn config(&self) -> WorkerConfig {
        self.shared.config.borrow().clone()
    }

    /// Sets what runs at the start of each process under `key`, replacing an earlier one of
    /// that key (`None` removes it).
    pub(crate) fn set_start_hook(&mut self, key: &'static str, f: Option<WorkerFn<P>>) {
        let mut hooks = self.shared.internal_start.borrow_mut();
        hooks.retain(|(k, _)| *k != Some(key));
        if let Some(f) = f {
            hooks.push((Some(key), f));
        }
    }

    pub(crate) fn on_start_internal(&mut self, f: impl Fn(&Worker<P>) + 'static) {
        self.shared
            .internal_start
            .borrow_mut()
            .push((None, Box::new(f)));
    }

    fn call_worker_fn(&self, what: &str, slot: &RefCell<Option<WorkerFn<P>>>) {
        if let Some(f) = slot.borrow().as_ref() {
            let _ = guarded(what, || f(self));
        }
    }
}

impl<P: Protocol> Connection<P> {
    /// Runs `f` with this connection's protocol state (for protocol-specific views).
    pub(crate) fn with_protocol<R>(&self, f: impl FnOnce(&P) -> R) -> R {
        f(&self.inner.proto.borrow())
    }
}

/// What the process runtime needs of a worker, whatever its protocol.
pub(crate) trait AnyWorker {
    fn config(&self) -> WorkerConfig;
    /// Becomes process `id` of the group: calls `on_worker_start`, then serves `listener`.
    fn start(self: Rc<Self>, id: u32, listener: Option<Listener>) -> Result<()>;
    /// Stops taking new connections. With `drain_queue`, connections the kernel already
    /// completed are accepted first (and served), so that closing the socket resets none.
    fn stop_accepting(&self, drain_queue: bool);
    /// Tells every connection that the process retires (HTTP ends after its next response).
    fn retire_connections(&self, why: crate::protocol::Farewell);
    /// Says goodbye on every connection, each at its next rest.
    fn bid_farewell(&self);
    /// Drops every connection still open.
    fn destroy_connections(&self);
    /// Asks every connection to move to the successor at its next boundary; how many.
    fn request_moves(&self) -> usize;
    /// Connections that did not move in time stay (and get the farewell).
    fn cancel_moves(&self);
    /// Keeps connection `id` from moving on until the guard is dropped.
    fn hold_connection(&self, id: u64) -> Option<crate::runtime::connection::Hold>;
    /// Serves a connection that moved here from another process.
    /// `returned`: a move that failed, back where it was (no `on_resume`).
    fn adopt_moved(
        &self,
        state: crate::runtime::moving::ConnectionState,
        socket: std::os::fd::OwnedFd,
        returned: bool,
    ) -> std::result::Result<(), (String, std::os::fd::OwnedFd)>;
    /// Connections asked to move that have not left yet.
    fn moves_pending(&self) -> usize;
    fn connection_count(&self) -> usize;
    fn connection_rows(&self) -> Vec<crate::runtime::stats::ConnectionRow>;
    fn worker_stop(self: Rc<Self>);
    fn worker_reload(self: Rc<Self>);
    fn connection_ids(&self) -> Vec<u64>;
    fn has_connection(&self, id: u64) -> bool;
    /// Sends bytes from another process to connection `id`; false if it is not here or its
    /// protocol cannot take them.
    fn send_payload(&self, id: u64, payload: crate::protocol::Payload) -> bool;
    fn close_connection(&self, id: u64);
}

impl<P: Protocol + Clone> WorkerShared<P> {
    /// Starts this group as a route of process `id` (served on another worker's port), once.
    pub(crate) fn start_as_route(self: &Rc<Self>, id: u32) {
        if self.running.borrow().is_some() {
            return;
        }
        if let Err(e) = self.clone().start(id, None) {
            tracing::error!("cannot start the route: {e}");
        }
        crate::runtime::registry::add_running(self.clone());
    }

    /// Serves a connection another worker accepted (an HTTP upgrade to this route).
    pub(crate) fn adopt(
        &self,
        stream: Box<dyn crate::protocol::Stream>,
        unread: bytes::BytesMut,
        peer: crate::runtime::connection::PeerAddr,
        local: Option<std::net::SocketAddr>,
    ) {
        let running = self.running.borrow();
        let Some(r) = running.as_ref() else {
            tracing::error!("a connection was handed to a route that has not started");
            return;
        };
        let config = self.config.borrow();
        server::adopt(
            self.proto.clone(),
            r.handlers.clone(),
            r.connections.clone(),
            &config,
            stream,
            unread,
            peer,
            local,
        );
    }

    fn all_connections(&self) -> Vec<Connection<P>> {
        self.running
            .borrow()
            .as_ref()
            .map(|r| r.connections.borrow().values().cloned().collect())
            .unwrap_or_default()
    }

    fn find(&self, id: u64) -> Option<Connection<P>> {
        self.running
            .borrow()
            .as_ref()
            .and_then(|r| r.connections.borrow().get(&id).cloned())
    }
}

impl<P: Protocol + Clone> AnyWorker for WorkerShared<P> {
    fn connection_ids(&self) -> Vec<u64> {
        self.running
            .borrow()
            .as_ref()
            .map(|r| r.connections.borrow().keys().copied().collect())
            .unwrap_or_default()
    }

    fn has_connection(&self, id: u64) -> bool {
        self.find(id).is_some()
    }

    fn send_payload(&self, id: u64, payload: crate::protocol::Payload) -> bool {
        let Some(c) = self.find(id) else { return false };
        match P::output_from_payload(payload) {
            Some(out) => c.send(out),
            None => {
                tracing::warn!("connection {id}: its protocol cannot take bytes from the bus");
                false
            }
        }
    }

    fn close_connection(&self, id: u64) {
        if let Some(c) = self.find(id) {
            c.close();
        }
    }

    fn config(&self) -> WorkerConfig {
        self.config.borrow().clone()
    }

    fn start(self: Rc<Self>, id: u32, listener: Option<Listener>) -> Result<()> {
        self.id.set(id);
        let handlers = Rc::new(std::mem::take(&mut *self.handlers.borrow_mut()));
        let connections = Rc::new(RefCell::new(BTreeMap::new()));
        *self.running.borrow_mut() = Some(Running {
            connections: connections.clone(),
            accept: None,
            handlers: handlers.clone(),
        });
        let worker = Worker {
            shared: self.clone(),
        };
        for (_, f) in self.internal_start.borrow().iter() {
            f(&worker);
        }
        worker.call_worker_fn("on_worker_start", &self.on_worker_start);
        if let Some(listener) = listener {
            let config = self.config.borrow().clone();
            let accept = server::serve(
                listener,
                self.url.as_ref().map(|u| u.transport),
                self.proto.clone(),
                handlers,
                connections,
                &config,
            )?;
            if let Some(running) = self.running.borrow_mut().as_mut() {
                running.accept = Some(accept);
            }
        }
        Ok(())
    }

    fn stop_accepting(&self, drain_queue: bool) {
        if let Some(running) = self.running.borrow_mut().as_mut() {
            if let Some(accept) = running.accept.take() {
                accept.stop(drain_queue);
            }
        }
    }

    fn retire_connections(&self, why: crate::protocol::Farewell) {
        for c in self.all_connections() {
            c.retire(why);
        }
    }

    fn bid_farewell(&self) {
        for c in self.all_connections() {
            c.bid_farewell();
        }
    }

    fn destroy_connections(&self) {
        for c in self.all_connections() {
            c.destroy();
        }
    }

    fn request_moves(&self) -> usize {
        let all = self.all_connections();
        for c in &all {
            c.request_move();
        }
        all.len()
    }

    fn hold_connection(&self, id: u64) -> Option<crate::runtime::connection::Hold> {
        self.find(id).map(|c| c.hold())
    }

    fn cancel_moves(&self) {
        for c in self.all_connections() {
            c.cancel_move();
        }
    }

    fn adopt_moved(
        &self,
        mut state: crate::runtime::moving::ConnectionState,
        socket: std::os::fd::OwnedFd,
        returned: bool,
    ) -> std::result::Result<(), (String, std::os::fd::OwnedFd)> {
        let running = self.running.borrow();
        let Some(r) = running.as_ref() else {
            return Err(("the worker is not running here".into(), socket));
        };
        let config = self.config.borrow();
        state.worker = config.name.clone();
        server::adopt_moved(
            self.proto.clone(),
            r.handlers.clone(),
            r.connections.clone(),
            &config,
            state,
            socket,
            if returned {
                crate::runtime::driver::Start::Returned
            } else {
                crate::runtime::driver::Start::Resumed
            },
        )
    }

    fn moves_pending(&self) -> usize {
        self.all_connections()
            .iter()
            .filter(|c| c.inner.move_requested.get())
            .count()
    }

    fn connection_count(&self) -> usize {
        self.running
            .borrow()
            .as_ref()
            .map(|r| r.connections.borrow().len())
            .unwrap_or(0)
    }

    fn connection_rows(&self) -> Vec<crate::runtime::stats::ConnectionRow> {
        let running = self.running.borrow();
        let Some(r) = running.as_ref() else {
            return Vec::new();
        };
        let rows = r
            .connections
            .borrow()
            .values()
            .map(|c| crate::runtime::stats::ConnectionRow {
                id: c.id(),
                peer: c.peer_label(),
                bytes_in: c.bytes_read(),
                bytes_out: c.bytes_written(),
                age_secs: c.age().as_secs_f64(),
            })
            .collect();
        rows
    }

    fn worker_stop(self: Rc<Self>) {
        let worker = Worker {
            shared: self.clone(),
        };
        worker.call_worker_fn("on_worker_stop", &self.on_worker_stop);
    }

    fn worker_reload(self: Rc<Self>) {
        let worker = Worker {
            shared: self.clone(),
        };
        worker.call_worker_fn("on_worker_reload", &self.on_worker_reload);
    }
}
