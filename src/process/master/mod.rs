//! The master: opens the listeners, starts and supervises the worker processes, and carries
//! out stop, reload and status for the CLI and for signals.
//!
//! This file holds the master's state and its life (`run`); the jobs are in files of their
//! own: `supervise` (start, replace, stop, ask), `reload`, `reports` (status, connections, the
//! census line) and `commands` (control socket and signals).

mod commands;
mod metrics;
mod reload;
mod reports;
mod supervise;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::spawn_local;

use crate::bus::config::BusChoice;
use crate::error::{Error, ErrorKind, Result};
use crate::process::cluster::{BusStatus, GroupInfo, NodeInfo, NodeRecord};
use crate::process::control::{read_msg, write_msg, FromWorker, Request, Response, ToWorker};
use crate::process::env;
use crate::process::status::{self, ConnectionListing, ExitRow, ProcessRow, StatusReport};
use crate::process::sys::{self, SpawnSpec};
use crate::process::tree::{Paths, TreeOptions};
use crate::runtime::listener::{self, Listener};
use crate::runtime::worker::WorkerConfig;

/// How long a new process may take to start accepting before a reload gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to answer `status` before it is shown as busy.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Extra time, past a stop's own deadline, before a process that has not exited is killed.
const KILL_MARGIN: Duration = Duration::from_secs(5);

/// When a process told to finish with `limit` is killed if it has not exited: its serving
/// time, its connections' farewell and flush, and a margin.
fn kill_after(limit: Duration) -> Duration {
    limit + crate::process::worker_main::FLUSH_LIMIT + KILL_MARGIN
}
/// The longest pause before restarting a process that keeps crashing.
const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// A process that exits sooner than this after starting counts as crashing in a loop.
const CRASH_WINDOW: Duration = Duration::from_secs(1);

struct Slot {
    /// The worker group, or `None` for the hub.
    group: Option<usize>,
    id: u32,
    current: Option<u32>,
    backoff: Duration,
    /// Processes started for this slot so far: each gets its own range of connection ids,
    /// so that a connection handed from one to the next keeps its id.
    generation: u64,
}

struct Proc {
    slot: usize,
    tx: mpsc::Sender<ToWorker>,
    pending: HashMap<u64, oneshot::Sender<FromWorker>>,
    ready_tx: Option<oneshot::Sender<()>>,
    retiring: bool,
    started: Instant,
    /// The master's end of the process's hand-off channel.
    handoff: Rc<crate::process::handoff::Channel>,
    /// Its generation's tag on its group's board.
    board_tag: u32,
}

struct State {
    exe: PathBuf,
    args: Vec<OsString>,
    configs: Vec<WorkerConfig>,
    /// One socket per group, shared by its processes.
    group_listeners: Vec<Option<Listener>>,
    /// Per group sharing a stream socket among several processes, their board of connection
    /// counts, by which they split the connections evenly (`runtime::balance`).
    boards: Vec<Option<crate::runtime::balance::Board>>,
    /// With `reuse_port`, one socket per slot. The master keeps it open, and whichever process
    /// serves the slot (the old one and its replacement during a reload) inherits it, so the
    /// socket never closes and no queued connection is ever reset.
    slot_listeners: Vec<Option<Listener>>,
    slots: Vec<Slot>,
    procs: BTreeMap<u32, Proc>,
    stopping: bool,
    /// The stop under way is graceful: a plain `stop` may still hurry it.
    stopping_gracefully: bool,
    reloading: bool,
    next_req: u64,
    exits: BTreeMap<(String, String), u64>,
    started: SystemTime,
    started_at: Instant,
    hub_path: PathBuf,
    /// Per group, the user and group its processes run as (`Worker::user`).
    identities: Vec<Option<(u32, u32)>>,
    node: String,
    options: TreeOptions,
}

impl State {
    fn config(&self, slot: usize) -> Option<&WorkerConfig> {
        self.slots[slot].group.map(|g| &self.configs[g])
    }

    fn name(&self, slot: usize) -> String {
        self.config(slot)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "hub".into())
    }

    /// How long the process in `slot` serves on when told to finish: its `graceful_timeout`
    /// (or the command's `--timeout`) when graceful, its `stop_timeout` otherwise.
    fn finish_limit(&self, slot: usize, graceful: bool, timeout: Option<Duration>) -> Duration {
        match (self.config(slot), graceful) {
            (Some(c), true) => timeout.unwrap_or(c.graceful_timeout),
            (Some(c), false) => c.stop_timeout,
            (None, _) => Duration::from_secs(1),
        }
    }

    fn hub_slot(&self) -> usize {
        self.slots.len() - 1
    }

    fn worker_procs(&self) -> usize {
        self.procs
            .values()
            .filter(|p| self.slots[p.slot].group.is_some())
            .count()
    }
}

#[derive(Clone)]
struct Master {
    state: Rc<RefCell<State>>,
    /// The master's own NATS connection (status, cluster census); none on the hub.
    bus: Option<crate::bus::Bus>,
    hub_stats: Rc<RefCell<Option<crate::bus::HubStats>>>,
    all_gone: Rc<Notify>,
    started: Rc<tokio::sync::watch::Sender<bool>>,
}

/// Runs the master in this process until it is stopped.
pub(crate) fn run(
    paths: &Paths,
    configs: Vec<WorkerConfig>,
    daemon: bool,
    options: TreeOptions,
) -> Result<()> {
    let _pid_lock = sys::PidLock::acquire(&paths.pid_file)?;
    for g in &options.groups {
        if !configs.iter().any(|c| &c.name == g) {
            let names: Vec<_> = configs.iter().map(|c| c.name.as_str()).collect();
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "--group {g}: no such worker group (this program declares {})",
                    names.join(", ")
                ),
            ));
        }
    }
    let selected: Vec<bool> = configs.iter().map(|c| options.runs(c)).collect();
    options.check_bus(&configs)?;
    sys::raise_fd_limit();
    let span = tracing::info_span!("master");
    let _entered = span.enter();

    for c in &configs {
        let url = c.url();
        let secure_scheme = url
            .as_ref()
            .is_some_and(|u| matches!(u.protocol.as_str(), "https" | "wss"));
        match &c.tls {
            Some(files) => {
                files.load().map_err(|e| {
                    Error::new(ErrorKind::Config, format!("worker {}: {e}", c.name))
                })?;
            }
            None if secure_scheme => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "worker {}: {} needs a certificate: call .tls(cert, key)",
                        c.name,
                        c.listen.as_deref().unwrap_or("")
                    ),
                ))
            }
            None => {}
        }
    }
    let identities = configs
        .iter()
        .map(|c| {
            sys::identity(c.user.as_deref(), c.group.as_deref())
                .map_err(|e| Error::new(ErrorKind::Config, format!("worker {}: {e}", c.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    // Processes running as other users cannot reach a socket in the private run directory:
    // the hub then listens in the abstract namespace, and lets in only the master's user and
    // theirs (checked by the peer's credentials).
    let hub_path = if identities.iter().any(Option::is_some) {
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        PathBuf::from(format!("@oxwork-hub-{}-{nonce:08x}", std::process::id()))
    } else {
        paths.run_dir.join("hub.sock")
    };
    let mut group_listeners = Vec::new();
    let mut slot_listeners = Vec::new();
    let mut boards = Vec::new();
    for (c, &on) in configs.iter().zip(&selected) {
        let url = c.url().filter(|_| on);
        group_listeners.push(match &url {
            Some(url) if !c.reuse_port => Some(listener::bind(url, false)?),
            _ => None,
        });
        let shares_a_stream_socket = url.as_ref().is_some_and(|u| {
            !c.reuse_port && c.count > 1 && u.transport != crate::runtime::url::Transport::Udp
        });
        boards.push(if shares_a_stream_socket {
            match crate::runtime::balance::Board::create(&c.name, c.count as usize) {
                Ok(board) => Some(board),
                Err(e) => {
                    tracing::warn!("worker {}: accepting without balancing: {e}", c.name);
                    None
                }
            }
        } else {
            None
        });
        if !on {
            continue;
        }
        for _ in 0..c.count {
            slot_listeners.push(match &url {
                Some(url) if c.reuse_port => Some(listener::bind(url, true)?),
                _ => None,
            });
        }
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("cannot find this program's executable", e))?;
    let slots = configs
        .iter()
        .enumerate()
        .filter(|(group, _)| selected[*group])
        .flat_map(|(group, c)| {
            (0..c.count).map(move |id| Slot {
                group: Some(group),
                id,
                current: None,
                backoff: Duration::ZERO,
                generation: 0,
            })
        })
        .chain(std::iter::once(Slot {
            group: None,
            id: 0,
            current: None,
            backoff: Duration::ZERO,
            generation: 0,
        }))
        .collect();
    slot_listeners.push(None);
    let state = State {
        exe,
        args: std::env::args_os().skip(1).collect(),
        configs,
        group_listeners,
        boards,
        slot_listeners,
        slots,
        procs: BTreeMap::new(),
        stopping: false,
        stopping_gracefully: false,
        reloading: false,
        next_req: 0,
        exits: BTreeMap::new(),
        started: SystemTime::now(),
        started_at: Instant::now(),
        hub_path,
        identities,
        node: options.node.clone(),
        options,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(Default::default())
        .map_err(|e| Error::io("cannot start the master's event loop", e))?;
    let result = rt.block_on(async {
        let bus = crate::process::cluster::master_bus(&state.options.bus, &state.node);
        let master = Master {
            bus,
            state: Rc::new(RefCell::new(state)),
            hub_stats: Rc::new(RefCell::new(None)),
            all_gone: Rc::new(Notify::new()),
            started: Rc::new(tokio::sync::watch::channel(false).0),
        };
        let control = bind_control(&paths.control_socket)?;
        let metrics_at = master.state.borrow().options.metrics;
        if let Some(addr) = metrics_at {
            let listener = metrics::bind(addr).await?;
            tracing::info!("metrics at http://{addr}/metrics");
            spawn_local(metrics::serve(master.clone(), listener));
        }
        spawn_local(master.clone().serve_cli(control));
        spawn_local(master.clone().handle_signals());
        let registration = match &master.bus {
            Some(bus) => {
                let me = master.clone();
                let node = me.state.borrow().node.clone();
                crate::process::cluster::answer_census(bus, &node, move || {
                    let me = me.clone();
                    Box::pin(async move { me.node_info().await })
                });
                Some(crate::process::cluster::register(bus, master.node_record()).await)
            }
            None => None,
        };
        master.start_all().await;
        sys::notify_systemd("READY=1");
        if !daemon {
            println!("{}", master.banner(paths));
        }
        master.all_gone.notified().await;
        tracing::info!("all workers have exited; master stops");
        if let Some(registration) = registration {
            registration.end().await;
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&paths.control_socket);
    result
}

fn bind_control(path: &std::path::Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("cannot open control socket {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("cannot restrict the control socket", e))?;
    Ok(listener)
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("killed by signal {sig} ({})", sys::signal_name(sig)),
            _ => "unknown".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}
