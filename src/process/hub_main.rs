//! The hub process: serves the bus on its socket and answers the master.

use std::time::Duration;

use tokio::io::BufReader;

use super::control::{read_msg, write_msg, FromWorker, ToWorker};
use super::{env, sys};
use crate::error::{Error, ErrorKind, Result};

/// Runs this process as the hub; never returns.
pub(crate) fn run() -> ! {
    let code = match run_inner() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("hub failed: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn run_inner() -> Result<()> {
    let master: u32 = std::env::var(env::MASTER_PID)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::Control, "hub needs OXWORK_MASTER_PID"))?;
    sys::exit_if_orphaned(master);
    let path = std::env::var(env::HUB)
        .map_err(|_| Error::new(ErrorKind::Control, "hub needs OXWORK_HUB"))?;
    let control = sys::inherited_fd(env::CONTROL_FD)?
        .ok_or_else(|| Error::new(ErrorKind::Control, "hub has no control socket"))?;
    let span = tracing::info_span!("hub");
    let _entered = span.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(Default::default())
        .map_err(|e| Error::io("cannot start the hub's event loop", e))?;
    rt.block_on(async move {
        // Peers let in on an abstract socket: the master's user and the groups' users.
        let uids: Vec<u32> = std::env::var(env::HUB_UIDS)
            .unwrap_or_default()
            .split(',')
            .filter_map(|u| u.trim().parse().ok())
            .collect();
        let hub = crate::bus::hub::start(std::path::Path::new(&path), uids)
            .map_err(|e| Error::io(format!("cannot listen on {path}"), e))?;
        let control = super::control_stream(control)?;
        let (rd, mut wr) = control.into_split();
        let mut reader = BufReader::new(rd);
        write_msg(&mut wr, &FromWorker::Ready)
            .await
            .map_err(|e| Error::io("cannot reach the master", e))?;
        tracing::info!("hub listening on {path}");
        let mut line = Vec::new();
        loop {
            match read_msg::<_, ToWorker>(&mut reader, &mut line).await {
                Ok(Some(ToWorker::Status { req })) => {
                    let reply = FromWorker::HubStatus {
                        req,
                        stats: hub.stats(),
                    };
                    if write_msg(&mut wr, &reply).await.is_err() {
                        break;
                    }
                }
                Ok(Some(ToWorker::Stop { .. } | ToWorker::Retire { .. })) => {
                    // Give replies already queued to clients a moment to leave.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    })
}
