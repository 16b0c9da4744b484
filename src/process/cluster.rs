//! The master's view of the bus: the check that NATS is reachable before anything starts, the
//! master's own NATS connection (for `status` and `cluster`), and the node census behind
//! `cluster`: every master answers `ox.sys.nodes` with its node, groups and processes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::config::{BusChoice, NatsSettings};
use crate::bus::{Bus, Headers, PoolStats};
use crate::error::{Error, ErrorKind, Result};

/// The subject every master of a cluster answers with its [`NodeInfo`].
pub(crate) const NODES_SUBJECT: &str = "ox.sys.nodes";
/// How long `cluster` and the start check wait.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One worker group of a node, in `cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub(crate) name: String,
    pub(crate) processes: u32,
}

/// One node (a running tree), in `cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    pub(crate) node: String,
    pub(crate) master_pid: u32,
    pub(crate) host: String,
    pub(crate) bus: String,
    pub(crate) uptime_secs: u64,
    pub(crate) groups: Vec<GroupInfo>,
}

/// How the bus of this tree is doing, in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct BusStatus {
    /// `hub`, or `nats` and the servers (passwords hidden).
    pub(crate) backend: String,
    pub(crate) connected: bool,
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

/// Answers the census with `info()` from now on.
pub(crate) fn answer_census(bus: &Bus, info: impl Fn() -> NodeInfo + 'static) {
    let b = bus.clone();
    let subscribed = bus.subscribe(NODES_SUBJECT, None, move |msg| {
        if let Some(reply) = &msg.reply {
            if let Ok(body) = serde_json::to_vec(&info()) {
                let _ = b.publish_with(reply, Headers::new(), body, None);
            }
        }
    });
    if let Err(e) = subscribed {
        tracing::warn!("cannot answer the cluster census: {e}");
    }
}

/// Every node that answers the census, sorted by name.
pub(crate) async fn census(bus: &Bus) -> Vec<NodeInfo> {
    let answers = bus
        .gather(NODES_SUBJECT, Headers::new(), "", CHECK_TIMEOUT)
        .await
        .unwrap_or_default();
    let mut nodes: Vec<NodeInfo> = answers
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect();
    nodes.sort_by(|a, b| (&a.node, a.master_pid).cmp(&(&b.node, b.master_pid)));
    nodes
}

/// Task-pool figures from JetStream for the pools this node runs.
pub(crate) async fn nats_pools(bus: &Bus, pools: &[String]) -> Vec<PoolStats> {
    let Some(js) = bus.jetstream().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in pools {
        if let Ok(Some(s)) = tokio::time::timeout(
            Duration::from_secs(1),
            crate::bus::nats_tasks::pool_stats(&js, p),
        )
        .await
        {
            out.push(s);
        }
    }
    out
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
        let groups = n
            .groups
            .iter()
            .map(|g| format!("{} ({})", g.name, g.processes))
            .collect::<Vec<_>>()
            .join(", ");
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
    let _ = writeln!(out, "{} nodes, {} worker processes", nodes.len(), total);
    out
}
