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
/// A routed message's id (`TAG.N`, unique per sending process): a connection moving between
/// processes receives each message once although both processes hear it for a moment.
const MID: &str = "ox-mid";
/// Messages held for one moving connection before further ones are dropped (logged).
const MAX_HELD: usize = 4096;
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
    /// Connections that moved here keep the client id they had: their old process's tag.
    aliases: HashMap<u64, String>,
    /// Subscriptions to the old tags of moved-in connections, with how many use each.
    alias_subs: HashMap<String, (Subscription, usize)>,
    /// Connections that left for another process: what arrives for them until the new
    /// process has their memberships, to be passed on.
    moving_out: HashMap<u64, Vec<Routed>>,
    /// Connections that arrived from another process: what arrives for them until the old
    /// process has passed on what it held, to be delivered after it.
    moving_in: HashMap<u64, Vec<Routed>>,
    next_mid: u64,
    /// With hand-off on: per connection, the last message id delivered from each sender, so
    /// that the process it moves to skips what was already delivered here.
    delivered: Option<HashMap<u64, Seen>>,
}

/// Per sender and subject (`TAG@SUBJECT`), the last message number delivered to one
/// connection. By subject, because only within one subscription does a bus keep a sender's
/// order all the way to the handler (NATS reads each subscription separately).
pub(crate) type Seen = HashMap<String, u64>;

fn parse_mid(mid: &str) -> Option<(&str, u64)> {
    let (tag, n) = mid.rsplit_once('.')?;
    Some((tag, n.parse().ok()?))
}

/// A message's place in its sender's order on its subject: `TAG@SUBJECT.N`.
fn ordered_id(msg: &BusMessage) -> Option<String> {
    let (tag, n) = parse_mid(msg.headers.get(MID)?)?;
    Some(format!("{tag}@{}.{n}", msg.subject))
}

/// Keeps, from now on, what [`begin_move_out`] needs to prevent a message reaching a moving
/// connection twice (a worker with hand-off on).
pub(crate) fn track_delivered() {
    ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        if r.delivered.is_none() {
            r.delivered = Some(HashMap::new());
        }
    });
}

/// A routed message held for a moving connection: its id and payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Routed {
    pub(crate) mid: Option<String>,
    pub(crate) payload: String,
}

impl Routed {
    fn new(mid: Option<&str>, payload: &Bytes) -> Routed {
        Routed {
            mid: mid.map(str::to_string),
            payload: crate::runtime::moving::ConnectionState::encode_bytes(payload),
        }
    }

    fn bytes(&self) -> Bytes {
        crate::runtime::moving::ConnectionState::decode_bytes(&self.payload)
            .map(Bytes::from)
            .unwrap_or_default()
    }
}

/// What a connection's routing is, to move it: its client tag, uids and groups.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Memberships {
    pub(crate) tag: Option<String>,
    pub(crate) uids: Vec<String>,
    pub(crate) groups: Vec<String>,
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
    match ROUTER.with(|r| r.borrow().aliases.get(&conn).cloned()) {
        Some(alias) => ClientId::new(&alias, conn),
        None => ClientId::new(&tag(), conn),
    }
}

/// A fresh message id for a routed send.
fn mid_headers(headers: Headers) -> Headers {
    let t = tag();
    let n = ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        r.next_mid += 1;
        r.next_mid
    });
    headers.with(MID, &format!("{t}.{n}"))
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
    let mut ids: Vec<u64> = registry::running()
        .iter()
        .flat_map(|w| w.connection_ids())
        .collect();
    // A connection on its way out is still this process's to answer for.
    ROUTER.with(|r| ids.extend(r.borrow().moving_out.keys().copied()));
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn deliver(conn: u64, msg: &BusMessage) -> bool {
    let held = ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        let r = &mut *r;
        let moving = r.moving_out.contains_key(&conn) || r.moving_in.contains_key(&conn);
        if r.delivered.is_none() && !moving {
            // The common case, hand-off off: no message id is worked out at all.
            return false;
        }
        let id = ordered_id(msg);
        if let (Some(delivered), Some((tag, n))) =
            (r.delivered.as_mut(), id.as_deref().and_then(parse_mid))
        {
            let seen = delivered.entry(conn).or_default();
            match seen.get_mut(tag) {
                Some(last) if *last >= n => return true,
                Some(last) => *last = n,
                None => {
                    seen.insert(tag.to_string(), n);
                }
            }
        }
        let queue = match r.moving_out.get_mut(&conn) {
            Some(q) => q,
            None => match r.moving_in.get_mut(&conn) {
                Some(q) => q,
                None => return false,
            },
        };
        if queue.len() < MAX_HELD {
            queue.push(Routed::new(id.as_deref(), &msg.payload));
        } else {
            tracing::warn!("connection {conn} is moving and {MAX_HELD} messages wait; one dropped");
        }
        true
    });
    held || deliver_now(conn, &msg.payload)
}

fn deliver_now(conn: u64, payload: &Bytes) -> bool {
    registry::running()
        .iter()
        .any(|w| w.send_payload(conn, Payload(payload.clone())))
}

fn excluded(msg: &BusMessage) -> BTreeSet<u64> {
    let me = tag();
    let aliases = ROUTER.with(|r| r.borrow().aliases.clone());
    msg.headers
        .get(EXCLUDE)
        .map(|list| {
            list.split(',')
                .filter_map(|c| c.parse::<ClientId>().ok())
                .filter_map(|c| {
                    c.parts()
                        .filter(|(t, n)| *t == me || aliases.get(n).is_some_and(|a| a == t))
                        .map(|(_, n)| n)
                })
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
            deliver(conn, &msg);
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
                deliver(id, &msg);
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
                    deliver(id, &msg);
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
    drop_alias(conn);
    ROUTER.with(|r| r.borrow_mut().delivered.as_mut().map(|d| d.remove(&conn)));
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
    bus()?.publish_with(&subject, mid_headers(headers), payload, None)
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
        mid_headers(Headers::new().with(OP, "send")),
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
        mid_headers(exclude_header(exclude)),
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
    bus()?.publish_with(
        BROADCAST,
        mid_headers(exclude_header(exclude)),
        payload,
        None,
    )
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

/// A moved-in connection is gone: its old tag is unsubscribed once no connection uses it.
fn drop_alias(conn: u64) {
    let sub = ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        let alias = r.aliases.remove(&conn)?;
        let (_, users) = r.alias_subs.get_mut(&alias)?;
        *users -= 1;
        if *users == 0 {
            r.alias_subs.remove(&alias).map(|(s, _)| s)
        } else {
            None
        }
    });
    if let (Some(sub), Ok(b)) = (sub, bus()) {
        let _ = b.unsubscribe(sub);
    }
}

/// What moves with connection `conn`: the tag of its client id (if anyone could have learnt
/// it), its uids and groups. From now until [`finish_move_out`], what arrives for it is held.
pub(crate) fn begin_move_out(conn: u64) -> Memberships {
    ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        let tag = match r.aliases.get(&conn) {
            Some(alias) => Some(alias.clone()),
            None if r.active => Some(r.tag.clone()),
            None => None,
        };
        let (uids, groups) = r
            .member_of
            .get(&conn)
            .map(|(u, g)| (u.iter().cloned().collect(), g.iter().cloned().collect()))
            .unwrap_or_default();
        r.moving_out.insert(conn, Vec::new());
        Memberships { tag, uids, groups }
    })
}

/// The new process has `conn`'s memberships: it leaves them here, and gets what was held and
/// which messages were delivered.
pub(crate) fn finish_move_out(conn: u64) -> (Vec<Routed>, Seen) {
    let (held, seen) = ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        let held = r.moving_out.remove(&conn).unwrap_or_default();
        let seen = r
            .delivered
            .as_mut()
            .and_then(|d| d.remove(&conn))
            .unwrap_or_default();
        (held, seen)
    });
    crate::runtime::server::run_closed_hooks(conn);
    (held, seen)
}

/// The move failed and `conn` comes back: what was held is delivered again, here.
pub(crate) fn cancel_move_out(conn: u64) {
    let held = ROUTER.with(|r| r.borrow_mut().moving_out.remove(&conn).unwrap_or_default());
    for m in held {
        deliver_now(conn, &m.bytes());
    }
}

/// Connection `conn` arrived: it takes its memberships here, keeps its client id, and holds
/// what arrives for it until [`finish_move_in`].
pub(crate) fn begin_move_in(conn: u64, m: &Memberships) -> Result<(), BusError> {
    ROUTER.with(|r| r.borrow_mut().moving_in.insert(conn, Vec::new()));
    if let Some(alias) = &m.tag {
        activate()?;
        if *alias != tag() {
            let need_sub = ROUTER.with(|r| {
                let mut r = r.borrow_mut();
                r.aliases.insert(conn, alias.clone());
                match r.alias_subs.get_mut(alias) {
                    Some((_, users)) => {
                        *users += 1;
                        false
                    }
                    None => true,
                }
            });
            if need_sub {
                let sub = bus()?.subscribe(&format!("ox.c.{alias}"), None, on_client_op)?;
                ROUTER.with(|r| r.borrow_mut().alias_subs.insert(alias.clone(), (sub, 1)));
            }
            if !ANY_MEMBERSHIP.with(|a| a.replace(true)) {
                crate::runtime::server::on_connection_closed(forget);
            }
        }
    }
    for uid in &m.uids {
        bind_uid(conn, uid)?;
    }
    for group in &m.groups {
        join_group(conn, group)?;
    }
    Ok(())
}

/// The old process passed on what it held for `conn` and what it had delivered (`seen`, the
/// held included): the held messages are delivered first, then what arrived here meanwhile
/// that the old process had not (each sender's messages arrive in order, so a number at or
/// below the sender's last one there was delivered there).
pub(crate) fn finish_move_in(conn: u64, from_old: Vec<Routed>, seen: Seen) {
    let here = ROUTER.with(|r| {
        let mut r = r.borrow_mut();
        if let Some(delivered) = r.delivered.as_mut() {
            let mine = delivered.entry(conn).or_default();
            for (tag, n) in &seen {
                let last = mine.entry(tag.clone()).or_insert(0);
                *last = (*last).max(*n);
            }
        }
        r.moving_in.remove(&conn).unwrap_or_default()
    });
    for m in from_old {
        deliver_now(conn, &m.bytes());
    }
    for m in here {
        let done_there = m
            .mid
            .as_deref()
            .and_then(parse_mid)
            .is_some_and(|(tag, n)| seen.get(tag).is_some_and(|last| n <= *last));
        if !done_there {
            deliver_now(conn, &m.bytes());
        }
    }
}

/// Whether this process's connections are reachable over the bus at all.
pub(crate) fn is_active() -> bool {
    ROUTER.with(|r| r.borrow().active)
}

/// Waits until the bus has everything this process sent before (subscriptions included), and
/// this process has received what the bus routed to it before that.
pub(crate) async fn sync() -> Result<(), BusError> {
    let b = bus()?;
    let subject = format!("ox.sys.sync.{}", super::handle::unique_token());
    match b
        .request(
            &subject,
            Headers::new(),
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
    {
        Ok(_) | Err(BusError::NoResponders(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
