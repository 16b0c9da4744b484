//! Supervision: starting processes, reading what they say, replacing the ones that exit (with
//! a back-off for crash loops), stopping them, and asking them questions.

use super::*;

impl Master {
    pub(super) fn spawn_proc(&self, slot_idx: usize) -> Result<(u32, oneshot::Receiver<()>)> {
        let (parent_end, child_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("cannot create a control socket pair", e))?;
        let (handoff_parent, handoff_child) =
            sys::seqpacket_pair().map_err(|e| Error::io("cannot create a hand-off channel", e))?;
        let (mut child, board_tag) = {
            let mut st = self.state.borrow_mut();
            let generation = st.slots[slot_idx].generation;
            st.slots[slot_idx].generation += 1;
            let slot = &st.slots[slot_idx];
            let child_fd = sys::raw(&child_end);
            let handoff_fd = sys::raw(&handoff_child);
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
                (env::HUB_UIDS.to_string(), {
                    let mut uids: Vec<String> = st
                        .identities
                        .iter()
                        .flatten()
                        .map(|(uid, _)| uid.to_string())
                        .collect();
                    uids.push(sys::uid().to_string());
                    uids.join(",")
                }),
                (env::NODE.to_string(), st.node.clone()),
                (crate::bus::BUS_ENV.to_string(), st.options.bus_spec.clone()),
                (env::HANDOFF_FD.to_string(), handoff_fd.to_string()),
                (env::CONN_BASE.to_string(), (generation << 32).to_string()),
            ];
            let mut fds = vec![child_fd, handoff_fd];
            let listener = st.slot_listeners[slot_idx]
                .as_ref()
                .or(slot.group.and_then(|g| st.group_listeners[g].as_ref()));
            if let Some(l) = listener {
                env.push((env::LISTEN_FD.to_string(), l.raw_fd().to_string()));
                fds.push(l.raw_fd());
            }
            if let Some(board) = slot.group.and_then(|g| st.boards[g].as_ref()) {
                env.push((env::BOARD_FD.to_string(), board.raw_fd().to_string()));
                fds.push(board.raw_fd());
            }
            // `ps` and `top` (its command column) tell the processes apart, as Workerman's
            // titles do: "photos: worker web 0 http://0.0.0.0:8080".
            let program = st
                .exe
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "oxwork".into());
            let title = match (slot.group, st.config(slot_idx)) {
                (Some(_), Some(c)) => format!(
                    "{program}: worker {} {} {}",
                    c.name,
                    slot.id,
                    c.listen.as_deref().unwrap_or("(no address)")
                ),
                _ => format!("{program}: hub {}", st.hub_path.display()),
            };
            let cmd = sys::command(SpawnSpec {
                exe: &st.exe,
                title: Some(title),
                args: &st.args,
                env,
                inherit_fds: fds,
                stdio_to: None,
                daemon: false,
                identity: slot.group.and_then(|g| st.identities[g]),
            })
            .map_err(|e| Error::io("cannot prepare a worker process", e))?;
            let child = tokio::process::Command::from(cmd)
                .spawn()
                .map_err(|e| Error::io(format!("cannot start {}", st.exe.display()), e))?;
            (
                child,
                crate::process::worker_main::board_tag(generation << 32),
            )
        };
        drop(child_end);
        drop(handoff_child);
        let handoff = Rc::new(
            crate::process::handoff::Channel::new(handoff_parent)
                .map_err(|e| Error::io("hand-off channel", e))?,
        );
        let pid = child
            .id()
            .ok_or_else(|| Error::new(ErrorKind::Io, "worker exited at once"))?;
        parent_end
            .set_nonblocking(true)
            .map_err(|e| Error::io("control socket", e))?;
        let stream =
            UnixStream::from_std(parent_end).map_err(|e| Error::io("control socket", e))?;
        let (read_half, mut write_half) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<ToWorker>(crate::process::control::CONTROL_QUEUE);
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
                    handoff: handoff.clone(),
                    board_tag,
                },
            );
            st.slots[slot_idx].current = Some(pid);
        }
        let me = self.clone();
        spawn_local(async move { me.read_worker(pid, BufReader::new(read_half)).await });
        let me = self.clone();
        spawn_local(async move { me.relay_handoff(pid, handoff).await });
        let me = self.clone();
        spawn_local(async move {
            let status = child.wait().await;
            me.on_exit(pid, status);
        });
        Ok((pid, ready_rx))
    }
    /// Passes hand-off messages between the processes of one slot: a `Move` to the sender's
    /// successor (back to the sender, refused, if there is none), the rest to the process they
    /// name, if it serves the same slot.
    pub(super) async fn relay_handoff(
        self,
        pid: u32,
        channel: Rc<crate::process::handoff::Channel>,
    ) {
        use crate::process::handoff::Handoff;
        while let Some((msg, socket)) = channel.recv().await {
            let (target, msg) = {
                let st = self.state.borrow();
                let Some(slot) = st.procs.get(&pid).map(|p| p.slot) else {
                    break;
                };
                let target = match msg.to() {
                    Some(to) => st.procs.get(&to).filter(|p| p.slot == slot).map(|_| to),
                    None => st.slots[slot].current.filter(|c| *c != pid),
                };
                let msg = match msg {
                    Handoff::Move { conn, routing, .. } => Handoff::Move {
                        from: pid,
                        conn,
                        routing,
                    },
                    other => other,
                };
                (target, msg)
            };
            let target_channel =
                target.and_then(|t| self.state.borrow().procs.get(&t).map(|p| p.handoff.clone()));
            let sent = match &target_channel {
                Some(c) => c
                    .send(&msg, socket.as_ref())
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no process to take it".to_string()),
            };
            if let (Err(why), Handoff::Move { conn, .. }) = (sent, &msg) {
                let back = Handoff::Refused {
                    to: pid,
                    id: conn.id,
                    why,
                };
                if let Err(e) = channel.send(&back, socket.as_ref()).await {
                    tracing::warn!("hand-off from pid {pid}: connection {} lost: {e}", conn.id);
                }
            }
        }
    }
    pub(super) async fn read_worker(
        self,
        pid: u32,
        mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    ) {
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
                FromWorker::AskStatus { req } => {
                    let tx = proc.tx.clone();
                    drop(st);
                    let me = self.clone();
                    spawn_local(async move {
                        let report = me.status().await;
                        let report = serde_json::to_value(&report).unwrap_or_default();
                        let _ = tx.send(ToWorker::TreeStatus { req, report }).await;
                    });
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
    pub(super) fn on_exit(&self, pid: u32, status: std::io::Result<ExitStatus>) {
        let desc = describe(&status);
        let mut st = self.state.borrow_mut();
        let Some(proc) = st.procs.remove(&pid) else {
            return;
        };
        let slot_idx = proc.slot;
        let name = st.name(slot_idx);
        let id = st.slots[slot_idx].id;
        if let Some(board) = st.slots[slot_idx].group.and_then(|g| st.boards[g].as_ref()) {
            board.clear(id, proc.board_tag);
        }
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
    pub(super) fn finish_stop_if_done(&self) {
        let st = self.state.borrow();
        if !st.stopping || st.worker_procs() > 0 {
            return;
        }
        match st.slots[st.hub_slot()].current {
            Some(hub) if st.procs.contains_key(&hub) => {
                drop(st);
                self.send(
                    hub,
                    ToWorker::Stop {
                        graceful: false,
                        timeout_ms: 0,
                        restart: false,
                    },
                );
                self.kill_later(hub, KILL_MARGIN);
            }
            _ if st.procs.is_empty() => self.all_gone.notify_one(),
            _ => {}
        }
    }
    /// Starts the hub if it is not running or starting.
    pub(super) fn ensure_hub(&self) {
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
    pub(super) async fn respawn(self, slot_idx: usize, delay: Duration) {
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
    pub(super) async fn start_all(&self) {
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
    pub(super) fn send(&self, pid: u32, msg: ToWorker) {
        if let Some(p) = self.state.borrow().procs.get(&pid) {
            if let Err(mpsc::error::TrySendError::Full(msg)) = p.tx.try_send(msg) {
                tracing::warn!("process {pid} does not read its control socket; {msg:?} dropped");
            }
        }
    }
    /// Sends `SIGKILL` to `pid` after `after` if it is still one of ours.
    pub(super) fn kill_later(&self, pid: u32, after: Duration) {
        let me = self.clone();
        spawn_local(async move {
            tokio::time::sleep(after).await;
            if me.state.borrow().procs.contains_key(&pid) {
                tracing::warn!("worker pid {pid} did not exit in time; killing it");
                sys::kill_now(pid);
            }
        });
    }
    /// Stops every worker process (`restart`: clients are told the server restarts). The
    /// master closes its listening sockets first, so that once the workers have taken what
    /// is queued, a new connection is refused rather than accepted and reset. A plain stop
    /// during a graceful one hurries it.
    pub(super) fn stop(&self, graceful: bool, restart: bool, timeout: Option<Duration>) {
        let targets: Vec<(u32, Duration)> = {
            let mut st = self.state.borrow_mut();
            if st.stopping && (graceful || !st.stopping_gracefully) {
                return;
            }
            st.stopping = true;
            st.stopping_gracefully = graceful;
            sys::notify_systemd("STOPPING=1");
            st.group_listeners.fill_with(|| None);
            st.slot_listeners.fill_with(|| None);
            // A Unix-domain address goes with the listener: a new client finds no socket (its
            // connect is refused) and the next start finds a clean path.
            for url in st.configs.iter().filter_map(|c| c.url()) {
                crate::runtime::listener::remove_socket_file(&url);
            }
            let targets = st
                .procs
                .iter()
                .filter(|(_, p)| st.slots[p.slot].group.is_some())
                .map(|(pid, p)| (*pid, st.finish_limit(p.slot, graceful, timeout)))
                .collect();
            for p in st.procs.values_mut() {
                p.retiring = true;
            }
            targets
        };
        tracing::info!(
            "stopping{} {} worker processes",
            if graceful { " gracefully" } else { "" },
            targets.len()
        );
        for (pid, limit) in targets {
            self.send(
                pid,
                ToWorker::Stop {
                    graceful,
                    timeout_ms: limit.as_millis() as u64,
                    restart,
                },
            );
            self.kill_later(pid, kill_after(limit));
        }
        self.finish_stop_if_done();
    }
    /// Asks a worker something and waits for the answer, or `None` after `limit`.
    pub(super) async fn ask(
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
}
