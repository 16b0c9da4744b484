//! A worker process: becomes one process of one group, serves, and obeys the master.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::BufReader;

use super::control::{read_msg, write_msg, FromWorker, ToWorker};
use super::{env, sys};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::Farewell;
use crate::runtime::listener::Listener;
use crate::runtime::worker::AnyWorker;
use crate::runtime::{registry, stats};

/// The longest a plain (not graceful) stop or reload serves on before the farewell: HTTP
/// connections end after their next response within it (it ends as soon as every connection
/// has), long-lived ones answer what is on the wire.
const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// How long connections get for their farewell and flush before the process drops them.
pub(crate) const FLUSH_LIMIT: Duration = Duration::from_secs(3);

/// Identity of this worker process, from the environment the master set.
pub(crate) struct Role {
    pub(crate) group: usize,
    pub(crate) id: u32,
    pub(crate) master_pid: u32,
}

impl Role {
    pub(crate) fn from_env() -> Result<Role> {
        let num = |var: &str| -> Result<u64> {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::new(ErrorKind::Control, format!("worker needs {var}")))
        };
        Ok(Role {
            group: num(env::GROUP)? as usize,
            id: num(env::ID)? as u32,
            master_pid: num(env::MASTER_PID)? as u32,
        })
    }
}

/// Runs this process as the worker `role` names; never returns.
pub(crate) fn run(role: Role) -> ! {
    sys::exit_if_orphaned(role.master_pid);
    sys::give_large_blocks_back();
    crate::runtime::stats::start_rate();
    let code = match run_inner(&role) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("worker failed: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn run_inner(role: &Role) -> Result<()> {
    let workers = registry::all();
    let worker = workers.get(role.group).cloned().ok_or_else(|| {
        Error::new(
            ErrorKind::Control,
            format!(
                "worker group {} is not declared in this binary (it declares {}); was the binary \
                 replaced by a different program?",
                role.group,
                workers.len()
            ),
        )
    })?;
    let config = worker.config();
    let span = tracing::info_span!("worker", name = %config.name, id = role.id);
    let _entered = span.enter();
    if config.cpu_affinity {
        match crate::os::pin_to_allowed_cpu(role.id) {
            Ok(cpu) => tracing::debug!("pinned to CPU {cpu}"),
            Err(e) => {
                tracing::warn!("cpu_affinity: could not pin this process ({e}); it runs unpinned")
            }
        }
    }

    let control = sys::inherited_fd(env::CONTROL_FD)?
        .ok_or_else(|| Error::new(ErrorKind::Control, "worker has no control socket"))?;
    let inherited = sys::inherited_fd(env::LISTEN_FD)?;
    let handoff = sys::inherited_fd(env::HANDOFF_FD)?;
    let conn_base: Option<u64> = std::env::var(env::CONN_BASE)
        .ok()
        .and_then(|b| b.parse().ok());
    if let Some(base) = conn_base {
        crate::runtime::connection::set_id_base(base);
    }
    if let Some(fd) = sys::inherited_fd(env::BOARD_FD)? {
        use crate::runtime::balance;
        match balance::Board::inherit(fd) {
            // The generation, as the master counts it (connection ids carry it too).
            Ok(board) => balance::install(balance::Seat::new(
                board,
                role.id,
                board_tag(conn_base.unwrap_or(0)),
            )),
            Err(e) => tracing::warn!("accepting without balancing: {e}"),
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(Default::default())
        .map_err(|e| Error::io("cannot start the event loop", e))?;
    rt.block_on(async move {
        let (to_master, mut outbox) =
            tokio::sync::mpsc::channel::<FromWorker>(super::control::CONTROL_QUEUE);
        init_bus(role, &config.name, to_master.clone());
        super::tree_status::init(to_master.clone());
        let url = config.url();
        let listener = match (inherited, &url) {
            (Some(fd), Some(url)) => Some(Listener::from_owned_fd(url.transport, fd)),
            _ => None,
        };
        crate::runtime::registry::set_running(worker.clone(), role.id);
        if let Some(fd) = handoff {
            super::handoff::init(fd, &config.name, config.hand_off);
        }
        worker.clone().start(role.id, listener)?;

        let control = super::control_stream(control)?;
        let (read_half, mut write_half) = control.into_split();
        tokio::task::spawn_local(async move {
            while let Some(msg) = outbox.recv().await {
                if write_msg(&mut write_half, &msg).await.is_err() {
                    break;
                }
            }
        });
        let _ = to_master.try_send(FromWorker::Ready);
        serve_master(worker, BufReader::new(read_half), to_master, &config).await;
        Ok(())
    })
}

/// The generation tag on the group's board of the process whose connection ids start at
/// `conn_base` (never 0, which means "not accepting").
pub(crate) fn board_tag(conn_base: u64) -> u32 {
    ((conn_base >> 32) as u32).wrapping_add(1).max(1)
}

async fn serve_master(
    worker: Rc<dyn AnyWorker>,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::sync::mpsc::Sender<FromWorker>,
    config: &crate::runtime::worker::WorkerConfig,
) {
    let mut line = Vec::new();
    let mut recycle_check = tokio::time::interval(Duration::from_secs(1));
    let mut recycle_asked = false;
    // The way out, once the master asked for it. The process keeps answering `status` and
    // `connections` while its connections finish.
    let mut finishing: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> = None;
    let hurry = Rc::new(tokio::sync::Notify::new());
    loop {
        let msg = tokio::select! {
            msg = read_msg::<_, ToWorker>(&mut reader, &mut line) => msg,
            _ = async { finishing.as_mut().expect("checked").await }, if finishing.is_some() => return,
            _ = recycle_check.tick(), if !recycle_asked && finishing.is_none() => {
                if let Some(reason) = recycle_reason(config) {
                    tracing::info!("asking to be recycled: {reason}");
                    recycle_asked = true;
                    let _ = writer.try_send(FromWorker::Recycle { reason });
                }
                continue;
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => {
                // The master is gone; its death signal will follow, or already has.
                tracing::warn!("master closed the control socket; exiting");
                return;
            }
        };
        let reply = match msg {
            ToWorker::Status { req } => Some(FromWorker::Status {
                req,
                stats: stats::snapshot(),
            }),
            ToWorker::Connections { req } => Some(FromWorker::Connections {
                req,
                rows: registry::running()
                    .iter()
                    .flat_map(|w| w.connection_rows())
                    .collect(),
            }),
            ToWorker::TreeStatus { req, report } => {
                super::tree_status::answered(req, report);
                None
            }
            ToWorker::ReloadNotice => {
                worker.clone().worker_reload();
                None
            }
            ToWorker::Stop {
                graceful,
                timeout_ms,
                restart,
            } => {
                let how = Finish {
                    why: if restart {
                        Farewell::Restarting
                    } else {
                        Farewell::Stopping
                    },
                    graceful,
                    limit: Duration::from_millis(timeout_ms),
                    drain_queue: true,
                    hand_off: false,
                };
                begin_finish(&mut finishing, &worker, how, &hurry);
                None
            }
            ToWorker::Retire {
                graceful,
                timeout_ms,
            } => {
                if finishing.is_none() {
                    worker.clone().worker_reload();
                }
                let how = Finish {
                    why: Farewell::Restarting,
                    graceful,
                    limit: Duration::from_millis(timeout_ms),
                    drain_queue: false,
                    hand_off: config.hand_off,
                };
                begin_finish(&mut finishing, &worker, how, &hurry);
                None
            }
        };
        if let Some(reply) = reply {
            use tokio::sync::mpsc::error::TrySendError;
            match writer.try_send(reply) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        "the master does not read its control socket; an answer dropped"
                    );
                }
                Err(TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// Starts the way out, or hurries one under way: a plain stop after a graceful one cuts the
/// graceful wait short (as Workerman's `stop` after `stop -g`).
fn begin_finish(
    finishing: &mut Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>,
    worker: &Rc<dyn AnyWorker>,
    how: Finish,
    hurry: &Rc<tokio::sync::Notify>,
) {
    if finishing.is_some() {
        if !how.graceful {
            tracing::info!("asked to stop now; ending the graceful wait");
            hurry.notify_one();
        }
        return;
    }
    *finishing = Some(Box::pin(finish(worker.clone(), how, hurry.clone())));
}

/// Tells the process's bus who it is, where the hub listens, and how to ask the master to
/// start the hub (at most every 200 ms).
fn init_bus(role: &Role, group: &str, to_master: tokio::sync::mpsc::Sender<FromWorker>) {
    let identity = crate::bus::local::Identity {
        node: std::env::var(env::NODE).unwrap_or_else(|_| sys::hostname()),
        group: group.to_string(),
        id: role.id,
    };
    let hub = std::env::var(env::HUB).unwrap_or_default();
    let last_ask = std::cell::Cell::new(None::<Instant>);
    let need_hub = move || {
        if last_ask
            .get()
            .is_none_or(|t| t.elapsed() > Duration::from_millis(200))
        {
            last_ask.set(Some(Instant::now()));
            let _ = to_master.try_send(FromWorker::NeedHub);
        }
    };
    let choice = crate::bus::config::BusChoice::from_env().unwrap_or_else(|e| {
        tracing::error!("{e}; using the hub");
        crate::bus::config::BusChoice::Hub
    });
    crate::bus::local::init(identity, choice, hub.into(), Rc::new(need_hub));
}

fn recycle_reason(config: &crate::runtime::worker::WorkerConfig) -> Option<String> {
    if let Some(max) = config.max_requests {
        let done = stats::with(|c| c.messages.get());
        if done >= max {
            return Some(format!("{done} messages handled (max_requests {max})"));
        }
    }
    if let Some(max_mb) = config.max_memory_mb {
        let rss = super::status::rss_bytes(std::process::id()).unwrap_or(0);
        if rss >= max_mb * 1024 * 1024 {
            return Some(format!(
                "{} MiB resident (max_memory_mb {max_mb})",
                rss / 1024 / 1024
            ));
        }
    }
    None
}

/// How a process ends.
struct Finish {
    why: Farewell,
    /// Serve open connections until they end or `limit` passes; otherwise serve requests under
    /// way for at most `limit`, and say farewell to long-lived connections at once.
    graceful: bool,
    limit: Duration,
    /// Accept what the kernel already queued before closing the listener (stopping, as the
    /// socket closes for good; a reload leaves the queue to the successor).
    drain_queue: bool,
    /// Hand open connections to the successor first (a reload of a worker with `hand_off`).
    hand_off: bool,
}

/// Ends the process's service without a client seeing an error: no new connections, the
/// connections told that the process retires (HTTP ends each after its next response),
/// requests under way answered, then every connection's farewell (`on_goodbye`, WebSocket
/// close 1001 or 1012), a flush, and only then the cut.
async fn finish(worker: Rc<dyn AnyWorker>, how: Finish, hurry: Rc<tokio::sync::Notify>) {
    let all = registry::running();
    for w in &all {
        w.stop_accepting(how.drain_queue);
    }
    worker.clone().worker_stop();
    if how.hand_off {
        super::handoff::move_connections(&worker).await;
    }
    crate::runtime::connection::set_process_retiring(how.why, false);
    for w in &all {
        w.retire_connections(how.why);
    }
    // Even a plain stop or reload serves on for a moment: a client that has just connected
    // (or just sent) has its message on the wire, and a farewell said now, at what looks like
    // rest, would close the connection under it.
    let serve_for = if how.graceful {
        how.limit
    } else {
        how.limit.min(RETIRE_GRACE)
    };
    let connections = async {
        tokio::select! {
            _ = wait_for_connections(&all, serve_for) => {}
            _ = hurry.notified() => {}
        }
    };
    tokio::join!(connections, crate::bus::local::wind_down(serve_for));
    crate::runtime::connection::set_process_retiring(how.why, true);
    for w in &all {
        w.bid_farewell();
    }
    wait_for_connections(&all, FLUSH_LIMIT).await;
    let left: usize = all.iter().map(|w| w.connection_count()).sum();
    if left > 0 {
        tracing::warn!("{left} connections did not close in time; dropping them");
        for w in &all {
            w.destroy_connections();
        }
        // Their drivers run once more, so that each connection's on_close runs.
        wait_for_connections(&all, Duration::from_millis(200)).await;
    }
}
async fn wait_for_connections(all: &[Rc<dyn AnyWorker>], limit: Duration) {
    let deadline = Instant::now() + limit;
    while all.iter().map(|w| w.connection_count()).sum::<usize>() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
