//! Client routing (GatewayWorker's Gateway API): reach any client connection, by its
//! cluster-wide id, its bound uid or its groups, from any process.
//!
//! Nothing is stored centrally. A process that routes subscribes to `ox.c.TAG` (its own
//! clients, by connection id) and `ox.bc` (broadcast), and to `ox.uid.UID` / `ox.grp.GROUP`
//! for each uid and group that one of its connections belongs to. Sends are publications on
//! those subjects; counts and listings are scatter-gather requests answered by every process
//! that has members. When a connection closes its memberships go; when a process dies the hub
//! drops its subscriptions, so its clients vanish from every answer.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::local::{self, bus};
use super::{subject, BusError, BusMessage, Headers, Subscription};
use crate::protocol::Payload;
use crate::runtime::registry;

const OP: &str = "op";
const CLIENT: &str = "client";
const EXCLUDE: &str = "exclude";
/// How long counts and listings wait for every process's answer.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// A client connection's cluster-wide id: the process it lives in, then its connection id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(String);

impl ClientId {
    fn new(tag: &str, conn: u64) -> ClientId {
        ClientId(format!("{tag}-{conn}"))
    }

    fn parts(&self) -> Option<(&str, u64)> {
        let (tag, conn) = self.0.rsplit_once('-')?;
        let ok = !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then_some(())?;
        Some((tag, conn.parse().ok()?))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClientId {
    type Err = BusError;
    fn from_str(s: &str) -> Result<ClientId, BusError> {
        let id = ClientId(s.to_string());
        match id.parts() {
            Some(_) => Ok(id),
            None => Err(BusError::Decode(format!("{s:?} is not a client id"))),
        }
    }
}

#[derive(Default)]
struct Router {
    tag: String,
    active: bool,
    uids: HashMap<String, BTreeSet<u64>>,
    groups: HashMap<String, BTreeSet<u64>>,
    member_of: HashMap<u64, (BTreeSet<String>, BTreeSet<String>)>,
    subs: HashMap<String, Subscription>,
}

thread_local! {
    static ROUTER: RefCell<Router> = RefCell::new(Router::default());
    static ANY_MEMBERSHIP: Cell<bool> = const { Cell::new(false) };
}

fn tag() -> String {
    ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        if r.tag.is_empty() {
            let node = local::identity().map(|i| i.node).unwrap_or_default();
            let node_hash = node.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            r.tag = format!(
                "{node_hash:08x}{:x}{:x}",
                std::process::id(),
                started & 0xff_ffff
            );
        }
        r.tag.clone()
    })
}

/// The cluster-wide id of connection `conn` of this process.
pub(crate) fn client_id(conn: u64) -> ClientId {
    ClientId::new(&tag(), conn)
}

fn uid_subject(uid: &str) -> String {
    format!("ox.uid.{}", subject::token(uid))
}

fn group_subject(group: &str) -> String {
    format!("ox.grp.{}", subject::token(group))
}

const BROADCAST: &str = "ox.bc";

/// Makes this process's connections reachable: subscribes to its own subject and broadcasts.
/// Idempotent; the subscriptions come back by themselves after a hub restart.
pub(crate) fn activate() -> Result<(), BusError> {
    if ROUTER.with(|r| r.borrow().active) {
        return Ok(());
    }
    let b = bus()?;
    let own = format!("ox.c.{}", tag());
    b.subscribe(&own, None, on_client_op)?;
    b.subscribe(BROADCAST, None, on_broadcast)?;
    ROUTER.with(|r| r.borrow_mut().active = true);
    Ok(())
}

fn local_ids() -> Vec<u64> {
    registry::running()
        .iter()
        .flat_map(|w| w.connection_ids())
        .collect()
}

fn deliver(conn: u64, payload: &Bytes) -> bool {
    registry::running()
        .iter()
        .any(|w| w.send_payload(conn, Payload(payload.clone())))
}

fn excluded(msg: &BusMessage) -> BTreeSet<u64> {
    let me = tag();
    msg.headers
        .get(EXCLUDE)
        .map(|list| {
            list.split(',')
                .filter_map(|c| c.parse::<ClientId>().ok())
                .filter_map(|c| c.parts().filter(|(t, _)| *t == me).map(|(_, n)| n))
                .collect()
        })
        .unwrap_or_default()
}

fn answer(msg: &BusMessage, payload: Vec<u8>) {
    if let (Some(reply), Ok(b)) = (&msg.reply, bus()) {
        let _ = b.publish_with(reply, Headers::new(), payload, None);
    }
}

fn ids_payload(ids: impl Iterator<Item = u64>) -> Vec<u8> {
    let t = tag();
    let list: Vec<String> = ids.map(|n| ClientId::new(&t, n).0).collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

fn on_client_op(msg: BusMessage) {
    let conn = msg.headers.get(CLIENT).and_then(|c| c.parse::<u64>().ok());
    let Some(conn) = conn else { return };
    match msg.headers.get(OP) {
        Some("send") => {
            deliver(conn, &msg.payload);
        }
        Some("close") => {
            for w in registry::running() {
                w.close_connection(conn);
            }
        }
        Some("online") => {
            let online = registry::running().iter().any(|w| w.has_connection(conn));
            answer(&msg, if online { b"1".to_vec() } else { b"0".to_vec() });
        }
        _ => {}
    }
}

fn on_broadcast(msg: BusMessage) {
    match msg.headers.get(OP) {
        Some("count") => answer(&msg, local_ids().len().to_string().into_bytes()),
        _ => {
            let skip = excluded(&msg);
            for id in local_ids().into_iter().filter(|id| !skip.contains(id)) {
                deliver(id, &msg.payload);
            }
        }
    }
}

fn members_of(uid_or_group: &str, is_uid: bool) -> Vec<u64> {
    ROUTER.with(|r| {
        let r = r.borrow();
        let map = if is_uid { &r.uids } else { &r.groups };
        map.get(uid_or_group)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    })
}

fn on_member_op(name: String, is_uid: bool) -> impl Fn(BusMessage) {
    move |msg: BusMessage| {
        let members = members_of(&name, is_uid);
        match msg.headers.get(OP) {
            Some("list") => answer(&msg, ids_payload(members.into_iter())),
            _ => {
                let skip = excluded(&msg);
                for id in members.into_iter().filter(|id| !skip.contains(id)) {
                    deliver(id, &msg.payload);
                }
            }
        }
    }
}

fn join(conn: u64, name: &str, is_uid: bool) -> Result<(), BusError> {
    activate()?;
    let subject = if is_uid {
        uid_subject(name)
    } else {
        group_subject(name)
    };
    let need_sub = ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        let map = if is_uid { &mut r.uids } else { &mut r.groups };
        let members = map.entry(name.to_string()).or_default();
        let first = members.is_empty();
        members.insert(conn);
        let m = r.member_of.entry(conn).or_default();
        if is_uid {
            m.0.insert(name.to_string());
        } else {
            m.1.insert(name.to_string());
        }
        first && !r.subs.contains_key(&subject)
    });
    if !ANY_MEMBERSHIP.with(|a| a.replace(true)) {
        // From now on a closing connection leaves its uids and groups.
        crate::runtime::server::on_connection_closed(forget);
    }
    if need_sub {
        let sub = bus()?.subscribe(&subject, None, on_member_op(name.to_string(), is_uid))?;
        ROUTER.with(|r| r.borrow_mut().subs.insert(subject, sub));
    }
    Ok(())
}

fn leave(conn: u64, name: &str, is_uid: bool) {
    let subject = if is_uid {
        uid_subject(name)
    } else {
        group_subject(name)
    };
    let drop_sub = ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        if let Some(m) = r.member_of.get_mut(&conn) {
            if is_uid {
                m.0.remove(name);
            } else {
                m.1.remove(name);
            }
        }
        let map = if is_uid { &mut r.uids } else { &mut r.groups };
        let empty = map.get_mut(name).map(|s| {
            s.remove(&conn);
            s.is_empty()
        });
        if empty == Some(true) {
            map.remove(name);
            r.subs.remove(&subject)
        } else {
            None
        }
    });
    if let (Some(sub), Ok(b)) = (drop_sub, bus()) {
        let _ = b.unsubscribe(sub);
    }
}

/// A connection closed: it leaves every uid and group it belonged to.
fn forget(conn: u64) {
    let Some((uids, groups)) = ROUTER.with(|r| r.borrow_mut().member_of.remove(&conn)) else {
        return;
    };
    for uid in uids {
        leave(conn, &uid, true);
    }
    for group in groups {
        leave(conn, &group, false);
    }
}

pub(crate) fn bind_uid(conn: u64, uid: &str) -> Result<(), BusError> {
    join(conn, uid, true)
}
pub(crate) fn unbind_uid(conn: u64, uid: &str) {
    leave(conn, uid, true)
}
pub(crate) fn join_group(conn: u64, group: &str) -> Result<(), BusError> {
    join(conn, group, false)
}
pub(crate) fn leave_group(conn: u64, group: &str) {
    leave(conn, group, false)
}

fn client_op(client: &ClientId, op: &str) -> Result<(String, Headers), BusError> {
    let (tag, conn) = client
        .parts()
        .ok_or_else(|| BusError::Decode(format!("{client} is not a client id")))?;
    Ok((
        format!("ox.c.{tag}"),
        Headers::new().with(OP, op).with(CLIENT, &conn.to_string()),
    ))
}

/// Sends `payload` to one client connection, wherever it lives.
pub fn send_to_client(client: &ClientId, payload: impl Into<Bytes>) -> Result<(), BusError> {
    let (subject, headers) = client_op(client, "send")?;
    bus()?.publish_with(&subject, headers, payload, None)
}

/// Closes a client connection, wherever it lives.
pub fn close_client(client: &ClientId) -> Result<(), BusError> {
    let (subject, headers) = client_op(client, "close")?;
    bus()?.publish_with(&subject, headers, Bytes::new(), None)
}

/// Whether a client connection is open, wherever it lives.
pub async fn is_online(client: &ClientId) -> Result<bool, BusError> {
    let (subject, headers) = client_op(client, "online")?;
    match bus()?
        .request(&subject, headers, Bytes::new(), GATHER_TIMEOUT)
        .await
    {
        Ok(answer) => Ok(&answer.payload[..] == b"1"),
        Err(BusError::NoResponders(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn exclude_header(exclude: &[ClientId]) -> Headers {
    let list: Vec<&str> = exclude.iter().map(ClientId::as_str).collect();
    Headers::new()
        .with(OP, "send")
        .with(EXCLUDE, &list.join(","))
}

/// Sends `payload` to every connection bound to `uid`.
pub fn send_to_uid(uid: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
    bus()?.publish_with(
        &uid_subject(uid),
        Headers::new().with(OP, "send"),
        payload,
        None,
    )
}

/// The connections bound to `uid`, across all processes.
pub async fn uid_client_ids(uid: &str) -> Result<Vec<ClientId>, BusError> {
    list(&uid_subject(uid)).await
}

/// Whether any connection is bound to `uid`.
pub async fn uid_is_online(uid: &str) -> Result<bool, BusError> {
    Ok(!uid_client_ids(uid).await?.is_empty())
}

/// Sends `payload` to every connection in `group` except those in `exclude`.
pub fn send_to_group(
    group: &str,
    payload: impl Into<Bytes>,
    exclude: &[ClientId],
) -> Result<(), BusError> {
    bus()?.publish_with(
        &group_subject(group),
        exclude_header(exclude),
        payload,
        None,
    )
}

/// The connections in `group`, across all processes.
pub async fn group_client_ids(group: &str) -> Result<Vec<ClientId>, BusError> {
    list(&group_subject(group)).await
}

/// How many connections are in `group`.
pub async fn group_count(group: &str) -> Result<usize, BusError> {
    Ok(group_client_ids(group).await?.len())
}

/// Sends `payload` to every client connection of every routing process, except `exclude`.
pub fn broadcast(payload: impl Into<Bytes>, exclude: &[ClientId]) -> Result<(), BusError> {
    bus()?.publish_with(BROADCAST, exclude_header(exclude), payload, None)
}

/// How many client connections the routing processes hold in all.
pub async fn client_count() -> Result<usize, BusError> {
    let answers = bus()?
        .gather(
            BROADCAST,
            Headers::new().with(OP, "count"),
            Bytes::new(),
            GATHER_TIMEOUT,
        )
        .await?;
    Ok(answers
        .iter()
        .filter_map(|a| a.text().parse::<usize>().ok())
        .sum())
}

async fn list(subject: &str) -> Result<Vec<ClientId>, BusError> {
    let answers = bus()?
        .gather(
            subject,
            Headers::new().with(OP, "list"),
            Bytes::new(),
            GATHER_TIMEOUT,
        )
        .await?;
    let mut ids: Vec<ClientId> = answers
        .iter()
        .filter_map(|a| serde_json::from_slice::<Vec<ClientId>>(&a.payload).ok())
        .flatten()
        .collect();
    ids.sort();
    Ok(ids)
}

/// What client routing adds to every connection (GatewayWorker's `Gateway::bindUid`,
/// `joinGroup`, client ids).
impl<P: crate::protocol::Protocol> crate::runtime::connection::Connection<P> {
    /// This connection's cluster-wide id, for [`bus::send_to_client`](crate::bus::send_to_client)
    /// from any process. Asking for it makes this process's connections reachable.
    pub fn client_id(&self) -> ClientId {
        if let Err(e) = activate() {
            tracing::warn!("client ids need the bus: {e}");
        }
        client_id(self.id())
    }

    /// Binds this connection to `uid` (one uid may have many connections), for
    /// `bus::send_to_uid`. Ends when the connection closes. It takes effect once the hub has
    /// the subscription, a moment later: a send from another process in that moment misses it.
    pub fn bind_uid(&self, uid: &str) -> Result<(), BusError> {
        bind_uid(self.id(), uid)
    }

    /// Undoes [`bind_uid`](Self::bind_uid).
    pub fn unbind_uid(&self, uid: &str) {
        unbind_uid(self.id(), uid)
    }

    /// Adds this connection to `group`, for `bus::send_to_group`. Ends when it closes. Like
    /// [`bind_uid`](Self::bind_uid), it takes effect a moment later, once the hub has it.
    pub fn join_group(&self, group: &str) -> Result<(), BusError> {
        join_group(self.id(), group)
    }

    /// Removes this connection from `group`.
    pub fn leave_group(&self, group: &str) {
        leave_group(self.id(), group)
    }
}
