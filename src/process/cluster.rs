//! The master's view of the bus: the check that NATS is reachable before anything starts, the
//! master's own NATS connection (for `status` and `cluster`), and the node census behind
//! `cluster`.
//!
//! The census knows which nodes exist from a registry in the shared-state bucket: every master
//! writes `oxwork.nodes.<node>` when it starts and every [`HEARTBEAT_EVERY`] after, and deletes
//! it when it stops. `cluster` then asks each registered node on its own subject, with a
//! deadline, and shows a node that does not answer as unreachable (with when it was last heard
//! of) instead of leaving it out; a record not renewed for [`HEARTBEAT_TTL`] is forgotten. A
//! broadcast on `ox.sys.nodes` adds nodes that could not register (NATS without JetStream).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::config::{BusChoice, NatsSettings};
use crate::bus::{Bus, Headers, PoolStats};
use crate::error::{Error, ErrorKind, Result};

/// The subject every master of a cluster answers with its [`NodeInfo`].
pub(crate) const NODES_SUBJECT: &str = "ox.sys.nodes";
/// How long `cluster` and the start check wait.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the registry's records live in the shared-state bucket.
const REGISTRY_PREFIX: &str = "oxwork.nodes.";
/// How often a master renews its record.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How long a record lives unrenewed: a node silent this long (killed, or cut off) is forgotten;
/// until then `cluster` lists it as unreachable.
const HEARTBEAT_TTL: Duration = Duration::from_secs(120);

/// One worker group of a node, in `cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub(crate) name: String,
    pub(crate) processes: u32,
}

/// One node (a running tree), in `cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    pub(crate) node: String,
    pub(crate) master_pid: u32,
    pub(crate) host: String,
    pub(crate) bus: String,
    pub(crate) uptime_secs: u64,
    pub(crate) groups: Vec<GroupInfo>,
    /// Its processes as its `status` lists them (empty for a node that did not answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) processes: Vec<crate::process::status::ProcessRow>,
    /// False for a registered node that did not answer the census in time.
    #[serde(default = "answered")]
    pub(crate) reachable: bool,
    /// For an unreachable node: seconds since its master last renewed its record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_heard_secs: Option<u64>,
}

fn answered() -> bool {
    true
}

/// A node's record in the registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NodeRecord {
    pub(crate) node: String,
    pub(crate) master_pid: u32,
    pub(crate) host: String,
    pub(crate) bus: String,
    /// When the master started, milliseconds since the Unix epoch.
    pub(crate) started_ms: u64,
    /// When the record was last written, milliseconds since the Unix epoch.
    #[serde(default)]
    pub(crate) written_ms: u64,
}

impl NodeRecord {
    /// The census line of a registered node that did not answer.
    fn unreachable(&self) -> NodeInfo {
        let now = now_ms();
        NodeInfo {
            node: self.node.clone(),
            master_pid: self.master_pid,
            host: self.host.clone(),
            bus: self.bus.clone(),
            uptime_secs: now.saturating_sub(self.started_ms) / 1000,
            groups: Vec::new(),
            processes: Vec::new(),
            reachable: false,
            last_heard_secs: Some(now.saturating_sub(self.written_ms) / 1000),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The registry key of `node` (a plain KV key whatever the node's name).
fn registry_key(node: &str) -> String {
    let plain = !node.is_empty()
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{REGISTRY_PREFIX}{node}")
    } else {
        format!(
            "{REGISTRY_PREFIX}{}",
            crate::bus::subject::hex_escaped('=', node)
        )
    }
}

/// The subject on which `node`'s master answers the census alone.
fn node_subject(node: &str) -> String {
    format!("ox.sys.node.{}", crate::bus::subject::token(node))
}

/// How the bus of this tree is doing, in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct BusStatus {
    /// `hub`, or `nats` and the servers (passwords hidden).
    pub(crate) backend: String,
    pub(crate) connected: bool,
    /// How long the bus has been unreachable, while it is (NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) disconnected_for_ms: Option<u64>,
    /// Task pools on NATS (the hub reports its own).
    #[serde(default)]
    pub(crate) pools: Vec<PoolStats>,
}

/// Connects to NATS once, strictly, so that `start` fails at once with one clear line when
/// NATS cannot be used: a wrong address, refused credentials, an unreachable server, or (when
/// this node runs task pools) a server without JetStream.
pub(crate) fn check_nats(settings: &NatsSettings, needs_jetstream: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start a runtime to check NATS", e))?;
    let servers = settings.display_servers();
    let fail = |why: String| {
        Error::new(
            ErrorKind::Config,
            format!("cannot use the NATS bus at {servers}: {why}"),
        )
    };
    let options = settings
        .connect_options("oxwork start check")
        .map_err(|e| fail(e.to_string()))?
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(1);
    let addrs = settings.server_addrs().map_err(|e| fail(e.to_string()))?;
    rt.block_on(async {
        match tokio::time::timeout(CHECK_TIMEOUT, options.connect(addrs)).await {
            Ok(Ok(client)) => {
                let missing = if needs_jetstream {
                    jetstream_missing(&client).await
                } else {
                    None
                };
                let _ = client.drain().await;
                match missing {
                    None => Ok(()),
                    Some(why) => Err(fail(why)),
                }
            }
            Ok(Err(e)) => {
                use async_nats::ConnectErrorKind as K;
                let text = e.to_string();
                let tls_trouble = text.contains("certificate") || text.contains("TLS");
                let why = match e.kind() {
                    K::AuthorizationViolation => {
                        "the server refused our credentials (authorization violation)".into()
                    }
                    K::TimedOut => "no answer in time (is the server up and reachable?)".into(),
                    K::Tls => format!("TLS failed: {e}"),
                    _ if tls_trouble => format!(
                        "TLS failed: {e} (OXWORK_BUS_CA names the authority that signed the \
                         server's certificate)"
                    ),
                    K::ServerParse | K::Dns => format!("bad address: {e}"),
                    _ => format!("{e} (is the server up and reachable?)"),
                };
                Err(fail(why))
            }
            Err(_) => Err(fail(format!(
                "no connection within {}s (is the server up and reachable?)",
                CHECK_TIMEOUT.as_secs()
            ))),
        }
    })
}

/// Why JetStream cannot be used through `client`, if it cannot. Asked with a plain request
/// (the client's account call expects a newer server's answer).
async fn jetstream_missing(client: &async_nats::Client) -> Option<String> {
    let asked = tokio::time::timeout(
        CHECK_TIMEOUT,
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await;
    let why = match asked {
        Err(_) => "JetStream did not answer in time".to_string(),
        Ok(Err(e)) => format!("JetStream does not answer ({e})"),
        Ok(Ok(answer)) => {
            let info: serde_json::Value = serde_json::from_slice(&answer.payload).ok()?;
            let error = info.get("error")?;
            format!(
                "JetStream refuses: {}",
                error["description"].as_str().unwrap_or("unknown error")
            )
        }
    };
    Some(format!(
        "this node runs task pools, which need JetStream: {why} (start nats-server with -js)"
    ))
}

/// The master's own bus connection, on NATS only (the hub serves one machine, whose view the
/// master has already).
pub(crate) fn master_bus(choice: &BusChoice, node: &str) -> Option<Bus> {
    match choice {
        BusChoice::Hub => None,
        BusChoice::Nats(s) => Some(Bus::connect_nats_with(
            (**s).clone(),
            &format!("{node}/master"),
        )),
    }
}

/// What a node answers the census with, made when asked.
pub(crate) type NodeInfoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = NodeInfo>>>;

/// Answers the census, on the broadcast subject and on `node`'s own, with `info()` from now on.
pub(crate) fn answer_census(bus: &Bus, node: &str, info: impl Fn() -> NodeInfoFuture + 'static) {
    let b = bus.clone();
    let info = std::rc::Rc::new(info);
    for subject in [NODES_SUBJECT.to_string(), node_subject(node)] {
        let (b, info) = (b.clone(), info.clone());
        let subscribed = bus.subscribe(&subject, None, move |msg| {
            let Some(reply) = msg.reply.clone() else {
                return;
            };
            let (b, answer) = (b.clone(), info());
            tokio::task::spawn_local(async move {
                if let Ok(body) = serde_json::to_vec(&answer.await) {
                    let _ = b.publish_with(&reply, Headers::new(), body, None);
                }
            });
        });
        if let Err(e) = subscribed {
            tracing::warn!("cannot answer the cluster census on {subject}: {e}");
        }
    }
}

/// This node's place in the registry while its master runs; [`Registration::end`] removes it.
#[derive(Debug)]
pub(crate) struct Registration {
    bus: Bus,
    key: String,
    heartbeat: tokio::task::AbortHandle,
}

/// Writes `record` to the registry (waiting for the bus up to [`CHECK_TIMEOUT`], so that a
/// `cluster` right after `start` finds the node) and renews it every [`HEARTBEAT_EVERY`].
pub(crate) async fn register(bus: &Bus, record: NodeRecord) -> Registration {
    let key = registry_key(&record.node);
    let write = {
        let (bus, key) = (bus.clone(), key.clone());
        move || {
            let (bus, key) = (bus.clone(), key.clone());
            let mut record = record.clone();
            async move {
                record.written_ms = now_ms();
                let body = serde_json::to_vec(&record).unwrap_or_default();
                bus.set(&key, body, Some(HEARTBEAT_TTL)).await
            }
        }
    };
    bus.wait_connected(CHECK_TIMEOUT).await;
    if let Err(e) = tokio::time::timeout(CHECK_TIMEOUT, write())
        .await
        .unwrap_or(Err(crate::bus::BusError::Timeout))
    {
        tracing::warn!(
            "this node is not in the cluster registry yet ({e}); `cluster` finds it only by \
             broadcast until it is"
        );
    }
    let heartbeat = tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            if let Err(e) = write().await {
                tracing::debug!("cluster registry not renewed: {e}");
            }
        }
    })
    .abort_handle();
    Registration {
        bus: bus.clone(),
        key,
        heartbeat,
    }
}

impl Registration {
    /// Stops renewing and deletes the record: the node has stopped, it is not unreachable.
    pub(crate) async fn end(self) {
        self.heartbeat.abort();
        let deleted = tokio::time::timeout(Duration::from_secs(2), self.bus.delete(&self.key));
        if let Ok(Err(e)) | Err(e) = deleted.await.map_err(|_| crate::bus::BusError::Timeout) {
            tracing::debug!("cluster registry record not removed: {e}");
        }
    }
}

/// Asks one registered node for its line, until it answers or the deadline passes. "No
/// responders" is retried: its master may be reconnecting, or still subscribing at start.
async fn ask_node(bus: &Bus, record: &NodeRecord, deadline: tokio::time::Instant) -> NodeInfo {
    let subject = node_subject(&record.node);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return record.unreachable();
        }
        match bus.request(&subject, Headers::new(), "", left).await {
            Ok(answer) => match serde_json::from_slice(&answer.payload) {
                Ok(info) => return info,
                Err(_) => return record.unreachable(),
            },
            Err(crate::bus::BusError::Timeout) => return record.unreachable(),
            Err(_) => tokio::time::sleep(Duration::from_millis(100).min(left)).await,
        }
    }
}

/// Every registered node (each asked on its own subject; one that does not answer within
/// [`CHECK_TIMEOUT`] is listed as unreachable) and every node that answers the broadcast,
/// sorted by name.
pub(crate) async fn census(bus: &Bus) -> Vec<NodeInfo> {
    let registered: Vec<NodeRecord> = match bus.kv_entries(REGISTRY_PREFIX, CHECK_TIMEOUT).await {
        Ok(entries) => entries
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect(),
        Err(e) => {
            tracing::debug!("cluster registry not readable ({e}); census by broadcast only");
            Vec::new()
        }
    };
    let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
    let asks = futures_util::future::join_all(
        registered
            .iter()
            .map(|record| ask_node(bus, record, deadline)),
    );
    let broadcast = bus.gather(NODES_SUBJECT, Headers::new(), "", CHECK_TIMEOUT);
    let (mut nodes, broadcast) = tokio::join!(asks, broadcast);
    for info in broadcast
        .unwrap_or_default()
        .iter()
        .filter_map(|m| serde_json::from_slice::<NodeInfo>(&m.payload).ok())
    {
        match nodes.iter_mut().find(|n| n.node == info.node) {
            Some(known) if !known.reachable => *known = info,
            Some(known) if known.master_pid == info.master_pid => {}
            _ => nodes.push(info),
        }
    }
    nodes.sort_by(|a, b| (&a.node, a.master_pid).cmp(&(&b.node, b.master_pid)));
    nodes
}

/// Task-pool figures from JetStream for the pools this node runs.
pub(crate) async fn nats_pools(bus: &Bus, pools: &[String]) -> Vec<PoolStats> {
    bus.pool_stats(pools.to_vec()).await
}

/// The `cluster` table.
pub(crate) fn render(nodes: &[NodeInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<10} {:<20} {:>9}  groups (processes)",
        "node", "master", "host", "uptime_s"
    );
    for n in nodes {
        let groups = if n.reachable {
            n.groups
                .iter()
                .map(|g| format!("{} ({})", g.name, g.processes))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            format!(
                "UNREACHABLE (last heard of {} s ago)",
                n.last_heard_secs.unwrap_or(0)
            )
        };
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:<20} {:>9}  {}",
            n.node, n.master_pid, n.host, n.uptime_secs, groups
        );
    }
    let total: u32 = nodes
        .iter()
        .flat_map(|n| n.groups.iter().map(|g| g.processes))
        .sum();
    let unreachable = nodes.iter().filter(|n| !n.reachable).count();
    let _ = write!(out, "{} nodes, {} worker processes", nodes.len(), total);
    if unreachable > 0 {
        let _ = write!(out, ", {unreachable} unreachable");
    }
    let _ = writeln!(out);
    out
}
