//! A worker process: becomes one process of one group, serves, and obeys the master.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::BufReader;

use super::control::{read_msg, write_msg, FromWorker, ToWorker};
use super::{env, sys};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::listener::Listener;
use crate::runtime::worker::AnyWorker;
use crate::runtime::{registry, stats};

/// How long a non-graceful retirement keeps serving, so that what clients already sent (or
/// are sending right now) is answered before the connections close.
const RETIRE_GRACE: Duration = Duration::from_millis(200);
/// How long closing connections get to flush before the process exits anyway.
const FLUSH_LIMIT: Duration = Duration::from_secs(3);

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

    let control = sys::inherited_fd(env::CONTROL_FD)?
        .ok_or_else(|| Error::new(ErrorKind::Control, "worker has no control socket"))?;
    let inherited = sys::inherited_fd(env::LISTEN_FD)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(Default::default())
        .map_err(|e| Error::io("cannot start the event loop", e))?;
    rt.block_on(async move {
        let (to_master, mut outbox) =
            tokio::sync::mpsc::channel::<FromWorker>(super::control::CONTROL_QUEUE);
        init_bus(role, &config.name, to_master.clone());
        let url = config.url();
        let listener = match (inherited, &url) {
            (Some(fd), Some(url)) => Some(Listener::from_owned_fd(url.transport, fd)),
            _ => None,
        };
        crate::runtime::registry::set_running(worker.clone(), role.id);
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

async fn serve_master(
    worker: Rc<dyn AnyWorker>,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::sync::mpsc::Sender<FromWorker>,
    config: &crate::runtime::worker::WorkerConfig,
) {
    let mut line = Vec::new();
    let mut recycle_check = tokio::time::interval(Duration::from_secs(1));
    let mut recycle_asked = false;
    loop {
        let msg = tokio::select! {
            msg = read_msg::<_, ToWorker>(&mut reader, &mut line) => msg,
            _ = recycle_check.tick(), if !recycle_asked => {
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
            ToWorker::ReloadNotice => {
                worker.clone().worker_reload();
                None
            }
            ToWorker::Stop => {
                finish(&worker, Finish::Now).await;
                return;
            }
            ToWorker::GracefulStop { timeout_ms } => {
                finish(&worker, Finish::Graceful(Duration::from_millis(timeout_ms))).await;
                return;
            }
            ToWorker::Retire {
                graceful,
                timeout_ms,
            } => {
                worker.clone().worker_reload();
                let how = if graceful {
                    Finish::Graceful(Duration::from_millis(timeout_ms))
                } else {
                    Finish::AfterGrace
                };
                finish(&worker, how).await;
                return;
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

enum Finish {
    /// Close every connection now (after flushing).
    Now,
    /// Keep serving briefly, then close every connection.
    AfterGrace,
    /// Keep serving until the connections close by themselves or the time is up.
    Graceful(Duration),
}

async fn finish(worker: &Rc<dyn AnyWorker>, how: Finish) {
    let all = registry::running();
    for w in &all {
        w.stop_accepting();
    }
    worker.clone().worker_stop();
    let budget = match how {
        Finish::Now => Duration::ZERO,
        Finish::AfterGrace => RETIRE_GRACE,
        Finish::Graceful(limit) => limit,
    };
    let connections = async {
        match how {
            Finish::Now => {}
            Finish::AfterGrace => tokio::time::sleep(RETIRE_GRACE).await,
            Finish::Graceful(limit) => wait_for_connections(&all, limit).await,
        }
    };
    tokio::join!(connections, crate::bus::local::wind_down(budget));
    for w in &all {
        w.close_connections();
    }
    wait_for_connections(&all, FLUSH_LIMIT).await;
}

async fn wait_for_connections(all: &[Rc<dyn AnyWorker>], limit: Duration) {
    let deadline = Instant::now() + limit;
    while all.iter().map(|w| w.connection_count()).sum::<usize>() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
