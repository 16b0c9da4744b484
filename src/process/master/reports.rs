//! Reports: the banner, `status`, `connections`, and this node as the cluster census shows it.

use super::*;

impl Master {
    pub(super) fn banner(&self, paths: &Paths) -> String {
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
    pub(super) fn process_list(&self) -> Vec<(u32, String, u32, String, bool, Duration)> {
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
    /// Every process of this tree with its own counters (each asked, at most
    /// `STATUS_TIMEOUT`), sorted by group, id and age.
    pub(super) async fn process_rows(&self) -> Vec<ProcessRow> {
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
                    cpus: status::cpus_allowed(pid).unwrap_or_default(),
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
        processes
    }
    pub(super) async fn status(&self) -> StatusReport {
        self.hub_stats.borrow_mut().take();
        let processes = self.process_rows().await;
        let mut bus = self.bus_status().await; // JetStream keeps no completion counts: on NATS `done` and `failed` are this node's
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
            master_cpus: status::cpus_allowed(std::process::id()).unwrap_or_default(),
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
    /// This node as the cluster census shows it, with its processes' rows as `status` has them.
    pub(super) async fn node_info(&self) -> NodeInfo {
        let processes = self.process_rows().await;
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
            processes,
            reachable: true,
            last_heard_secs: None,
        }
    }
    /// This node's record in the cluster registry.
    pub(super) fn node_record(&self) -> NodeRecord {
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
    pub(super) async fn bus_status(&self) -> BusStatus {
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
                disconnected_for_ms: bus.disconnected_for().map(|d| d.as_millis() as u64),
                // A cut-off node has no figures to give, only a wait.
                pools: if bus.is_connected() {
                    crate::process::cluster::nats_pools(bus, &pools).await
                } else {
                    Vec::new()
                },
            },
            None => {
                let st = self.state.borrow();
                let hub = st.slots[st.hub_slot()].current;
                BusStatus {
                    backend,
                    connected: hub.is_some_and(|pid| st.procs.contains_key(&pid)),
                    disconnected_for_ms: None,
                    pools: Vec::new(),
                }
            }
        }
    }
    pub(super) async fn connections(&self) -> Vec<ConnectionListing> {
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
}
