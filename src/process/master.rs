//! The master: opens the listeners, starts and supervises the worker processes, and carries
//! out stop, reload and status for the CLI and for signals.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::spawn_local;

use super::cli::Paths;
use super::cluster::{BusStatus, GroupInfo, NodeInfo, NodeRecord};
use super::control::{read_msg, write_msg, FromWorker, Request, Response, ToWorker};
use super::env;
use super::status::{self, ConnectionListing, ExitRow, ProcessRow, StatusReport};
use super::sys::{self, SpawnSpec};
use crate::bus::config::BusChoice;
use crate::error::{Error, ErrorKind, Result};
use crate::listener::{self, Listener};
use crate::worker::WorkerConfig;

/// How long a new process may take to start accepting before a reload gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to answer `status` before it is shown as busy.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Extra time, past a stop's own deadline, before a process that has not exited is killed.
const KILL_MARGIN: Duration = Duration::from_secs(5);
/// The longest pause before restarting a process that keeps crashing.
const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// A process that exits sooner than this after starting counts as crashing in a loop.
const CRASH_WINDOW: Duration = Duration::from_secs(1);

/// What the command line chose for this tree beyond the declared workers.
#[derive(Debug, Clone)]
pub(crate) struct TreeOptions {
    /// The bus, parsed.
    pub(crate) bus: BusChoice,
    /// The bus as given (handed to every process through `OXWORK_BUS`).
    pub(crate) bus_spec: String,
    /// This tree's node name.
    pub(crate) node: String,
    /// Run only these worker groups (empty: all).
    pub(crate) groups: Vec<String>,
}

impl TreeOptions {
    /// Whether this node runs worker group `c`.
    fn runs(&self, c: &WorkerConfig) -> bool {
        self.groups.is_empty() || self.groups.contains(&c.name)
    }

    /// On NATS, connects once to prove the bus usable (with JetStream when this node runs a
    /// task pool); one clear error otherwise.
    pub(crate) fn check_bus(&self, configs: &[WorkerConfig]) -> Result<()> {
        match &self.bus {
            BusChoice::Hub => Ok(()),
            BusChoice::Nats(settings) => {
                let pools = configs.iter().any(|c| self.runs(c) && c.is_pool);
                super::cluster::check_nats(settings, pools)
            }
        }
    }
}

struct Slot {
    /// The worker group, or `None` for the hub.
    group: Option<usize>,
    id: u32,
    current: Option<u32>,
    backoff: Duration,
}

struct Proc {
    slot: usize,
    tx: mpsc::Sender<ToWorker>,
    pending: HashMap<u64, oneshot::Sender<FromWorker>>,
    ready_tx: Option<oneshot::Sender<()>>,
    retiring: bool,
    started: Instant,
}

struct State {
    exe: PathBuf,
    args: Vec<OsString>,
    configs: Vec<WorkerConfig>,
    /// One socket per group, shared by its processes.
    group_listeners: Vec<Option<Listener>>,
    /// With `reuse_port`, one socket per slot. The master keeps it open, and whichever process
    /// serves the slot (the old one and its replacement during a reload) inherits it, so the
    /// socket never closes and no queued connection is ever reset.
    slot_listeners: Vec<Option<Listener>>,
    slots: Vec<Slot>,
    procs: BTreeMap<u32, Proc>,
    stopping: bool,
    reloading: bool,
    next_req: u64,
    exits: BTreeMap<(String, String), u64>,
    started: SystemTime,
    started_at: Instant,
    hub_path: PathBuf,
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

    fn stop_timeout(&self, slot: usize) -> Duration {
        self.config(slot)
            .map(|c| c.stop_timeout)
            .unwrap_or(Duration::from_secs(1))
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
    let mut group_listeners = Vec::new();
    let mut slot_listeners = Vec::new();
    for (c, &on) in configs.iter().zip(&selected) {
        let url = c.url().filter(|_| on);
        group_listeners.push(match &url {
            Some(url) if !c.reuse_port => Some(listener::bind(url, false)?),
            _ => None,
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
            })
        })
        .chain(std::iter::once(Slot {
            group: None,
            id: 0,
            current: None,
            backoff: Duration::ZERO,
        }))
        .collect();
    slot_listeners.push(None);
    let state = State {
        exe,
        args: std::env::args_os().skip(1).collect(),
        configs,
        group_listeners,
        slot_listeners,
        slots,
        procs: BTreeMap::new(),
        stopping: false,
        reloading: false,
        next_req: 0,
        exits: BTreeMap::new(),
        started: SystemTime::now(),
        started_at: Instant::now(),
        hub_path: paths.run_dir.join("hub.sock"),
        node: options.node.clone(),
        options,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(Default::default())
        .map_err(|e| Error::io("cannot start the master's event loop", e))?;
    let result = rt.block_on(async {
        let bus = super::cluster::master_bus(&state.options.bus, &state.node);
        let master = Master {
            bus,
            state: Rc::new(RefCell::new(state)),
            hub_stats: Rc::new(RefCell::new(None)),
            all_gone: Rc::new(Notify::new()),
            started: Rc::new(tokio::sync::watch::channel(false).0),
        };
        let control = bind_control(&paths.control_socket)?;
        spawn_local(master.clone().serve_cli(control));
        spawn_local(master.clone().handle_signals());
        let registration = match &master.bus {
            Some(bus) => {
                let me = master.clone();
                let node = me.state.borrow().node.clone();
                super::cluster::answer_census(bus, &node, move || me.node_info());
                Some(super::cluster::register(bus, master.node_record()).await)
            }
            None => None,
        };
        master.start_all().await;
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
            (None, Some(sig)) => format!(
                "killed by signal {sig} ({})",
                Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?")
            ),
            _ => "unknown".into(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

impl Master {
    fn spawn_proc(&self, slot_idx: usize) -> Result<(u32, oneshot::Receiver<()>)> {
        let (parent_end, child_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("cannot create a control socket pair", e))?;
        let mut child = {
            let st = self.state.borrow();
            let slot = &st.slots[slot_idx];
            let child_fd = sys::raw(&child_end);
            let mut env = vec![
                (
                    env::ROLE.to_string(),
                    if slot.group.is_some() {
                        "worker"
                    } else {
                        "hub"
                    }
                    .to_string(),
                ),
                (env::GROUP.to_string(), slot.group.unwrap_or(0).to_string()),
                (env::ID.to_string(), slot.id.to_string()),
                (env::MASTER_PID.to_string(), std::process::id().to_string()),
                (env::CONTROL_FD.to_string(), child_fd.to_string()),
                (env::HUB.to_string(), st.hub_path.display().to_string()),
                (env::NODE.to_string(), st.node.clone()),
                (crate::bus::BUS_ENV.to_string(), st.options.bus_spec.clone()),
            ];
            let mut fds = vec![child_fd];
            let listener = st.slot_listeners[slot_idx]
                .as_ref()
                .or(slot.group.and_then(|g| st.group_listeners[g].as_ref()));
            if let Some(l) = listener {
                env.push((env::LISTEN_FD.to_string(), l.raw_fd().to_string()));
                fds.push(l.raw_fd());
            }
            let cmd = sys::command(SpawnSpec {
                exe: &st.exe,
                args: &st.args,
                env,
                inherit_fds: fds,
                stdio_to: None,
                daemon: false,
            })
            .map_err(|e| Error::io("cannot prepare a worker process", e))?;
            tokio::process::Command::from(cmd)
                .spawn()
                .map_err(|e| Error::io(format!("cannot start {}", st.exe.display()), e))?
        };
        drop(child_end);
        let pid = child
            .id()
            .ok_or_else(|| Error::new(ErrorKind::Io, "worker exited at once"))?;
        parent_end
            .set_nonblocking(true)
            .map_err(|e| Error::io("control socket", e))?;
        let stream =
            UnixStream::from_std(parent_end).map_err(|e| Error::io("control socket", e))?;
        let (read_half, mut write_half) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<ToWorker>(super::control::CONTROL_QUEUE);
        spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                if write_msg(&mut write_half, &msg).await.is_err() {
                    break;
                }
            }
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        {
            let mut st = self.state.borrow_mut();
            st.procs.insert(
                pid,
                Proc {
                    slot: slot_idx,
                    tx,
                    pending: HashMap::new(),
                    ready_tx: Some(ready_tx),
                    retiring: false,
                    started: Instant::now(),
                },
            );
            st.slots[slot_idx].current = Some(pid);
        }
        let me = self.clone();
        spawn_local(async move { me.read_worker(pid, BufReader::new(read_half)).await });
        let me = self.clone();
        spawn_local(async move {
            let status = child.wait().await;
            me.on_exit(pid, status);
        });
        Ok((pid, ready_rx))
    }

    async fn read_worker(self, pid: u32, mut reader: BufReader<tokio::net::unix::OwnedReadHalf>) {
        let mut line = Vec::new();
        while let Ok(Some(msg)) = read_msg::<_, FromWorker>(&mut reader, &mut line).await {
            let mut st = self.state.borrow_mut();
            let Some(proc) = st.procs.get_mut(&pid) else {
                break;
            };
            match msg {
                FromWorker::Ready => {
                    if let Some(tx) = proc.ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                FromWorker::NeedHub => {
                    drop(st);
                    self.ensure_hub();
                }
                FromWorker::Status { req, .. }
                | FromWorker::Connections { req, .. }
                | FromWorker::HubStatus { req, .. } => {
                    if let Some(tx) = proc.pending.remove(&req) {
                        let _ = tx.send(msg);
                    }
                }
                FromWorker::Recycle { reason } => {
                    tracing::info!("recycling worker pid {pid}: {reason}");
                    drop(st);
                    let me = self.clone();
                    spawn_local(async move { me.recycle(pid).await });
                }
            }
        }
    }

    fn on_exit(&self, pid: u32, status: std::io::Result<ExitStatus>) {
        let desc = describe(&status);
        let mut st = self.state.borrow_mut();
        let Some(proc) = st.procs.remove(&pid) else {
            return;
        };
        let slot_idx = proc.slot;
        let name = st.name(slot_idx);
        let id = st.slots[slot_idx].id;
        *st.exits.entry((name.clone(), desc.clone())).or_insert(0) += 1;
        let stopping = st.stopping;
        let slot = &mut st.slots[slot_idx];
        if slot.current == Some(pid) {
            slot.current = None;
            if !stopping {
                let delay = if proc.started.elapsed() < CRASH_WINDOW {
                    slot.backoff = (slot.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    slot.backoff
                } else {
                    slot.backoff = Duration::ZERO;
                    Duration::ZERO
                };
                tracing::warn!(
                    "worker {name}#{id} (pid {pid}) exited: {desc}; replacing it{}",
                    if delay.is_zero() {
                        String::new()
                    } else {
                        format!(" in {delay:?} (it keeps crashing)")
                    }
                );
                let me = self.clone();
                spawn_local(async move { me.respawn(slot_idx, delay).await });
            }
        } else {
            tracing::info!("worker {name}#{id} (pid {pid}) finished: {desc}");
        }
        drop(st);
        self.finish_stop_if_done();
    }

    /// During a stop: once every worker has exited, stop the hub; once it has too, the master
    /// is done. (The hub outlives the workers so that they can use the bus while they finish.)
    fn finish_stop_if_done(&self) {
        let st = self.state.borrow();
        if !st.stopping || st.worker_procs() > 0 {
            return;
        }
        match st.slots[st.hub_slot()].current {
            Some(hub) if st.procs.contains_key(&hub) => {
                drop(st);
                self.send(hub, ToWorker::Stop);
                self.kill_later(hub, KILL_MARGIN);
            }
            _ if st.procs.is_empty() => self.all_gone.notify_one(),
            _ => {}
        }
    }

    /// Starts the hub if it is not running or starting.
    fn ensure_hub(&self) {
        let idx = {
            let st = self.state.borrow();
            let idx = st.hub_slot();
            let on_nats = matches!(st.options.bus, BusChoice::Nats(_));
            if on_nats || st.stopping || st.slots[idx].current.is_some() {
                return;
            }
            idx
        };
        tracing::info!("starting the hub");
        if let Err(e) = self.spawn_proc(idx) {
            tracing::error!("cannot start the hub: {e}");
        }
    }

    async fn respawn(self, slot_idx: usize, delay: Duration) {
        tokio::time::sleep(delay).await;
        loop {
            {
                let st = self.state.borrow();
                if st.stopping || st.slots[slot_idx].current.is_some() {
                    return;
                }
            }
            match self.spawn_proc(slot_idx) {
                Ok(_) => return,
                Err(e) => {
                    let wait = {
                        let mut st = self.state.borrow_mut();
                        let slot = &mut st.slots[slot_idx];
                        slot.backoff =
                            (slot.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                        slot.backoff
                    };
                    tracing::error!("cannot start a worker: {e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn start_all(&self) {
        let (count, eager_hub, hub_idx) = {
            let st = self.state.borrow();
            (
                st.slots.len() - 1,
                matches!(st.options.bus, BusChoice::Hub)
                    && st
                        .slots
                        .iter()
                        .filter_map(|s| s.group)
                        .any(|g| st.configs[g].uses_bus),
                st.hub_slot(),
            )
        };
        if eager_hub {
            match self.spawn_proc(hub_idx) {
                Ok((_, ready)) => {
                    let _ = tokio::time::timeout(READY_TIMEOUT, ready).await;
                }
                Err(e) => tracing::error!("cannot start the hub: {e}"),
            }
        }
        let mut waits = Vec::new();
        for idx in 0..count {
            match self.spawn_proc(idx) {
                Ok((_, ready)) => waits.push(ready),
                Err(e) => {
                    tracing::error!("{e}");
                    let me = self.clone();
                    spawn_local(async move { me.respawn(idx, Duration::from_secs(1)).await });
                }
            }
        }
        for ready in waits {
            let _ = tokio::time::timeout(READY_TIMEOUT, ready).await;
        }
        self.started.send_replace(true);
        if count == 0 {
            tracing::warn!("no workers declared");
        }
    }

    fn banner(&self, paths: &Paths) -> String {
        let st = self.state.borrow();
        let mut out = format!(
            "{:-^78}\noxwork {}   master pid {}   run dir {}\n{:<16} {:<40} {:>9}\n",
            " oxwork ",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            paths.run_dir.display(),
            "worker",
            "listen",
            "processes"
        );
        for (g, c) in st.configs.iter().enumerate() {
            if !st.slots.iter().any(|s| s.group == Some(g)) {
                continue;
            }
            out.push_str(&format!(
                "{:<16} {:<40} {:>9}\n",
                c.name,
                c.listen.as_deref().unwrap_or("none"),
                c.count
            ));
        }
        out.push_str(&format!(
            "{:-^78}\nPress Ctrl+C to stop. Start with -d to run in the background.",
            ""
        ));
        out
    }

    fn send(&self, pid: u32, msg: ToWorker) {
        if let Some(p) = self.state.borrow().procs.get(&pid) {
            if let Err(mpsc::error::TrySendError::Full(msg)) = p.tx.try_send(msg) {
                tracing::warn!("process {pid} does not read its control socket; {msg:?} dropped");
            }
        }
    }

    /// Sends `SIGKILL` to `pid` after `after` if it is still one of ours.
    fn kill_later(&self, pid: u32, after: Duration) {
        let me = self.clone();
        spawn_local(async move {
            tokio::time::sleep(after).await;
            if me.state.borrow().procs.contains_key(&pid) {
                tracing::warn!("worker pid {pid} did not exit in time; killing it");
                sys::signal(pid, Signal::SIGKILL);
            }
        });
    }

    fn stop(&self, graceful: bool) {
        let targets: Vec<(u32, Duration)> = {
            let mut st = self.state.borrow_mut();
            if st.stopping {
                return;
            }
            st.stopping = true;
            st.procs
                .iter()
                .filter(|(_, p)| st.slots[p.slot].group.is_some())
                .map(|(pid, p)| (*pid, st.stop_timeout(p.slot)))
                .collect()
        };
        tracing::info!(
            "stopping{} {} worker processes",
            if graceful { " gracefully" } else { "" },
            targets.len()
        );
        for (pid, timeout) in targets {
            if graceful {
                self.send(
                    pid,
                    ToWorker::GracefulStop {
                        timeout_ms: timeout.as_millis() as u64,
                    },
                );
                self.kill_later(pid, timeout + KILL_MARGIN);
            } else {
                self.send(pid, ToWorker::Stop);
                self.kill_later(pid, KILL_MARGIN);
            }
        }
        self.finish_stop_if_done();
    }

    /// Replaces the process in `slot_idx` with a new one: the new one accepts before the old
    /// one is told to retire, so no connection is refused.
    async fn replace(&self, slot_idx: usize, graceful: bool) -> Result<()> {
        let (old, stop_timeout) = {
            let st = self.state.borrow();
            let slot = &st.slots[slot_idx];
            (slot.current, st.stop_timeout(slot_idx))
        };
        let (new_pid, ready) = self.spawn_proc(slot_idx)?;
        if !matches!(tokio::time::timeout(READY_TIMEOUT, ready).await, Ok(Ok(()))) {
            {
                let mut st = self.state.borrow_mut();
                let slot = &mut st.slots[slot_idx];
                if matches!(slot.current, Some(p) if p == new_pid) || slot.current.is_none() {
                    slot.current = old;
                }
                if let Some(p) = st.procs.get_mut(&new_pid) {
                    p.retiring = true;
                }
            }
            sys::signal(new_pid, Signal::SIGKILL);
            return Err(Error::new(
                ErrorKind::Control,
                format!("new worker pid {new_pid} did not become ready; the old one keeps serving"),
            ));
        }
        if let Some(old) = old {
            if let Some(p) = self.state.borrow_mut().procs.get_mut(&old) {
                p.retiring = true;
            }
            self.send(
                old,
                ToWorker::Retire {
                    graceful,
                    timeout_ms: stop_timeout.as_millis() as u64,
                },
            );
            self.kill_later(old, stop_timeout + KILL_MARGIN);
        }
        Ok(())
    }

    async fn reload(&self, graceful: bool) -> Result<String> {
        {
            let mut st = self.state.borrow_mut();
            if st.stopping {
                return Err(Error::new(ErrorKind::Control, "stopping; reload refused"));
            }
            if st.reloading {
                return Err(Error::new(
                    ErrorKind::Control,
                    "a reload is already running",
                ));
            }
            st.reloading = true;
        }
        tracing::info!("reloading{}", if graceful { " gracefully" } else { "" });
        let count = self.state.borrow().slots.len();
        let (mut replaced, mut failed, mut notified) = (0, 0, 0);
        for idx in 0..count {
            let (reloadable, current) = {
                let st = self.state.borrow();
                if st.stopping {
                    break;
                }
                let slot = &st.slots[idx];
                match st.config(idx) {
                    Some(c) => (c.reloadable, slot.current),
                    // The hub keeps its routes, queued tasks and shared state across reloads.
                    None => continue,
                }
            };
            if !reloadable {
                if let Some(pid) = current {
                    self.send(pid, ToWorker::ReloadNotice);
                    notified += 1;
                }
                continue;
            }
            match self.replace(idx, graceful).await {
                Ok(()) => replaced += 1,
                Err(e) => {
                    tracing::error!("reload: {e}");
                    failed += 1;
                }
            }
        }
        self.state.borrow_mut().reloading = false;
        let message = format!(
            "reloaded {replaced} processes{}{}",
            if notified > 0 {
                format!(", notified {notified} that are not reloadable")
            } else {
                String::new()
            },
            if failed > 0 {
                format!(", {failed} failed (see the log)")
            } else {
                String::new()
            }
        );
        tracing::info!("{message}");
        if failed > 0 {
            Err(Error::new(ErrorKind::Control, message))
        } else {
            Ok(message)
        }
    }

    async fn recycle(&self, pid: u32) {
        let slot = {
            let st = self.state.borrow();
            if st.stopping || st.reloading {
                return;
            }
            st.slots.iter().position(|s| s.current == Some(pid))
        };
        if let Some(idx) = slot {
            if let Err(e) = self.replace(idx, true).await {
                tracing::error!("recycle: {e}");
            }
        }
    }

    /// Asks a worker something and waits for the answer, or `None` after `limit`.
    async fn ask(
        &self,
        pid: u32,
        make: impl FnOnce(u64) -> ToWorker,
        limit: Duration,
    ) -> Option<FromWorker> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state.borrow_mut();
            st.next_req += 1;
            let req = st.next_req;
            let proc = st.procs.get_mut(&pid)?;
            if proc.tx.try_send(make(req)).is_err() {
                // Gone, or not reading its control socket: it does not answer.
                return None;
            }
            proc.pending.insert(req, tx);
        }
        tokio::time::timeout(limit, rx).await.ok()?.ok()
    }

    fn process_list(&self) -> Vec<(u32, String, u32, String, bool, Duration)> {
        let st = self.state.borrow();
        st.procs
            .iter()
            .map(|(pid, p)| {
                let slot = &st.slots[p.slot];
                let listen = match st.config(p.slot) {
                    Some(c) => c.listen.clone().unwrap_or_default(),
                    None => format!("unix://{}", st.hub_path.display()),
                };
                (
                    *pid,
                    st.name(p.slot),
                    slot.id,
                    listen,
                    p.retiring,
                    p.started.elapsed(),
                )
            })
            .collect()
    }

    async fn status(&self) -> StatusReport {
        self.hub_stats.borrow_mut().take();
        let mut asks = Vec::new();
        for (pid, worker, id, listen, retiring, age) in self.process_list() {
            let me = self.clone();
            asks.push(spawn_local(async move {
                let answer = me
                    .ask(pid, |req| ToWorker::Status { req }, STATUS_TIMEOUT)
                    .await;
                let (busy, stats, hub) = match answer {
                    Some(FromWorker::Status { stats, .. }) => (false, stats, None),
                    Some(FromWorker::HubStatus { stats, .. }) => {
                        (false, Default::default(), Some(stats))
                    }
                    _ => (true, Default::default(), None),
                };
                if let Some(h) = hub {
                    *me.hub_stats.borrow_mut() = Some(h);
                }
                ProcessRow {
                    pid,
                    worker,
                    id,
                    listen,
                    memory_bytes: status::rss_bytes(pid).unwrap_or(0),
                    uptime_secs: age.as_secs_f64(),
                    busy,
                    retiring,
                    stats,
                }
            }));
        }
        let mut processes = Vec::new();
        for a in asks {
            if let Ok(row) = a.await {
                processes.push(row);
            }
        }
        processes.sort_by(|a, b| (&a.worker, a.id, a.retiring).cmp(&(&b.worker, b.id, b.retiring)));
        let mut bus = self.bus_status().await;
        // JetStream keeps no completion counts: on NATS `done` and `failed` are this node's
        // live processes' own.
        for pool in &mut bus.pools {
            for p in processes.iter().filter(|p| p.worker == pool.name) {
                pool.done += p.stats.tasks_done;
                pool.failed += p.stats.tasks_failed;
            }
        }
        let st = self.state.borrow();
        StatusReport {
            master_pid: std::process::id(),
            started_unix: st
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            uptime_secs: st.started_at.elapsed().as_secs_f64(),
            load_average: status::load_average(),
            master_memory_bytes: status::rss_bytes(std::process::id()).unwrap_or(0),
            hub: self.hub_stats.borrow_mut().take(),
            bus,
            node: st.node.clone(),
            processes,
            exits: st
                .exits
                .iter()
                .map(|((worker, status), count)| ExitRow {
                    worker: worker.clone(),
                    status: status.clone(),
                    count: *count,
                })
                .collect(),
        }
    }

    /// This node as the cluster census shows it.
    fn node_info(&self) -> NodeInfo {
        let st = self.state.borrow();
        let mut groups: Vec<GroupInfo> = Vec::new();
        for p in st.procs.values().filter(|p| !p.retiring) {
            let Some(g) = st.slots[p.slot].group else {
                continue;
            };
            let name = &st.configs[g].name;
            match groups.iter_mut().find(|x| &x.name == name) {
                Some(x) => x.processes += 1,
                None => groups.push(GroupInfo {
                    name: name.clone(),
                    processes: 1,
                }),
            }
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        NodeInfo {
            node: st.node.clone(),
            master_pid: std::process::id(),
            host: sys::hostname(),
            bus: st.options.bus.describe(),
            uptime_secs: st.started_at.elapsed().as_secs(),
            groups,
            reachable: true,
            last_heard_secs: None,
        }
    }

    /// This node's record in the cluster registry.
    fn node_record(&self) -> NodeRecord {
        let st = self.state.borrow();
        NodeRecord {
            node: st.node.clone(),
            master_pid: std::process::id(),
            host: sys::hostname(),
            bus: st.options.bus.describe(),
            started_ms: st
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            written_ms: 0,
        }
    }

    /// Which bus, whether it is reachable, and (NATS) the task pools' figures.
    async fn bus_status(&self) -> BusStatus {
        let (backend, pools) = {
            let st = self.state.borrow();
            let pools: Vec<String> = st
                .slots
                .iter()
                .filter_map(|s| s.group)
                .map(|g| &st.configs[g])
                .filter(|c| c.is_pool)
                .map(|c| c.name.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            (st.options.bus.describe(), pools)
        };
        match &self.bus {
            Some(bus) => BusStatus {
                backend,
                connected: bus.is_connected(),
                pools: super::cluster::nats_pools(bus, &pools).await,
            },
            None => {
                let st = self.state.borrow();
                let hub = st.slots[st.hub_slot()].current;
                BusStatus {
                    backend,
                    connected: hub.is_some_and(|pid| st.procs.contains_key(&pid)),
                    pools: Vec::new(),
                }
            }
        }
    }

    async fn connections(&self) -> Vec<ConnectionListing> {
        let mut asks = Vec::new();
        for (pid, worker, id, ..) in self.process_list() {
            let me = self.clone();
            asks.push(spawn_local(async move {
                match me
                    .ask(pid, |req| ToWorker::Connections { req }, STATUS_TIMEOUT)
                    .await
                {
                    Some(FromWorker::Connections { rows, .. }) => rows
                        .into_iter()
                        .map(|conn| ConnectionListing {
                            pid,
                            worker: worker.clone(),
                            worker_id: id,
                            conn,
                        })
                        .collect(),
                    _ => Vec::new(),
                }
            }));
        }
        let mut all = Vec::new();
        for a in asks {
            all.extend(a.await.unwrap_or_default());
        }
        all
    }

    async fn serve_cli(self, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let me = self.clone();
                    spawn_local(async move { me.handle_cli(stream).await });
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle_cli(&self, stream: UnixStream) {
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half);
        let mut line = Vec::new();
        let request = match read_msg::<_, Request>(&mut reader, &mut line).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = write_msg(
                    &mut write_half,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                )
                .await;
                return;
            }
        };
        let ok = |message: String| Response::Ok {
            master_pid: std::process::id(),
            message,
        };
        let response = match request {
            Request::Ping => {
                let mut rx = self.started.subscribe();
                let _ = rx.wait_for(|s| *s).await;
                ok("running".into())
            }
            Request::Stop { graceful } => {
                self.stop(graceful);
                let _ = write_msg(&mut write_half, &ok("stopping".into())).await;
                // The caller waits for this socket to close: that happens when the master exits.
                std::future::pending::<()>().await;
                return;
            }
            Request::Reload { graceful } => match self.reload(graceful).await {
                Ok(m) => ok(m),
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Request::Status => Response::Status(Box::new(self.status().await)),
            Request::Connections => Response::Connections {
                rows: self.connections().await,
            },
            Request::Cluster => Response::Cluster {
                nodes: match &self.bus {
                    Some(bus) => super::cluster::census(bus).await,
                    None => vec![self.node_info()],
                },
            },
        };
        let _ = write_msg(&mut write_half, &response).await;
    }

    async fn handle_signals(self) {
        let kinds = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
        ];
        let mut streams = Vec::new();
        for k in kinds {
            match signal(k) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    tracing::error!("cannot handle signals: {e}");
                    return;
                }
            }
        }
        let [int, term, quit, usr1, usr2] = &mut streams[..] else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => self.stop(false),
                _ = term.recv() => self.stop(false),
                _ = quit.recv() => self.stop(true),
                _ = usr1.recv() => self.reload_in_background(false),
                _ = usr2.recv() => self.reload_in_background(true),
            }
        }
    }

    fn reload_in_background(&self, graceful: bool) {
        let me = self.clone();
        spawn_local(async move {
            if let Err(e) = me.reload(graceful).await {
                tracing::error!("{e}");
            }
        });
    }
}
