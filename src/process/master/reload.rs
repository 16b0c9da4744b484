//! Reload: replacing each process slot by slot, gracefully or not, and recycling one process.

use super::*;

impl Master {
    /// Replaces the process in `slot_idx` with a new one: the new one accepts before the old
    /// one is told to retire, so no connection is refused.
    pub(super) async fn replace(
        &self,
        slot_idx: usize,
        graceful: bool,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let (old, limit) = {
            let st = self.state.borrow();
            let slot = &st.slots[slot_idx];
            (slot.current, st.finish_limit(slot_idx, graceful, timeout))
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
            sys::kill_now(new_pid);
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
                    timeout_ms: limit.as_millis() as u64,
                },
            );
            self.kill_later(old, kill_after(limit));
        }
        Ok(())
    }
    pub(super) async fn reload(&self, graceful: bool, timeout: Option<Duration>) -> Result<String> {
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
        sys::notify_systemd("RELOADING=1");
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
            match self.replace(idx, graceful, timeout).await {
                Ok(()) => replaced += 1,
                Err(e) => {
                    tracing::error!("reload: {e}");
                    failed += 1;
                }
            }
        }
        self.state.borrow_mut().reloading = false;
        sys::notify_systemd("READY=1");
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
    pub(super) async fn recycle(&self, pid: u32) {
        let slot = {
            let st = self.state.borrow();
            if st.stopping || st.reloading {
                return;
            }
            st.slots.iter().position(|s| s.current == Some(pid))
        };
        if let Some(idx) = slot {
            if let Err(e) = self.replace(idx, true, None).await {
                tracing::error!("recycle: {e}");
            }
        }
    }
    pub(super) fn reload_in_background(&self, graceful: bool) {
        let me = self.clone();
        spawn_local(async move {
            if let Err(e) = me.reload(graceful, None).await {
                tracing::error!("{e}");
            }
        });
    }
}
