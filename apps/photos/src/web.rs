//! The web group: the page, `POST /upload`, the gallery's JSON and files, and the WebSocket
//! (`/ws`) each tab listens on for its photos' progress.

use std::rc::Rc;
use std::time::Duration;

use oxwork::bus::{self, SubmitOptions};
use oxwork::http::{Request, Response};
use oxwork::websocket::{WebSocket, WsAccept, WsMessage};
use oxwork::Connection;
use serde_json::json;

use crate::job::{self, Job};
use crate::store::{Photo, Size, State, Store};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The pool that makes thumbnails.
pub const POOL: &str = "thumbs";

/// How the web group is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest file taken.
    pub max_file: usize,
    /// Most files in one upload.
    pub max_files: usize,
    /// How long an upload waits for its thumbnails.
    pub task_timeout: Duration,
    /// This web group's address as thumbnail processes reach it (for photos too large for a
    /// task), e.g. `http://10.0.0.5:8080`.
    pub public_url: String,
}

/// A tab id as the page makes them: 8 to 64 letters, digits or dashes.
pub fn valid_tab(tab: &str) -> bool {
    (8..=64).contains(&tab.len()) && tab.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The cookie that identifies a browser: set by the page's first load, sent with every upload
/// and WebSocket handshake. A tab is this id and the tab's own (kept in its `sessionStorage`,
/// since cookies are shared by a browser's tabs): progress goes to the tab that uploaded, and
/// to nobody who merely guesses a tab id.
pub const VISITOR_COOKIE: &str = "photos_visitor";

/// A visitor id as the server makes them: 32 lowercase hex digits.
pub fn valid_visitor(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new visitor id (128 random bits).
pub fn new_visitor() -> String {
    crate::store::new_secret()
}

/// The client-routing uid of one tab of one browser.
pub fn tab_uid(visitor: &str, tab: &str) -> String {
    format!("{visitor}-{tab}")
}

/// The visitor id in a `Cookie` header's value, if it holds a valid one.
pub fn visitor_in(cookie_header: &str) -> Option<String> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == VISITOR_COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| valid_visitor(v))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn tell(tab: &str, event: serde_json::Value) {
    let _ = bus::send_to_uid(tab, event.to_string());
}

/// The status panel's figures: the tree's own report (what `status --json` prints), cut to
/// what the panel shows: each process with its counters, and each pool's queue figures (the
/// hub's, or JetStream's on NATS).
pub async fn status_panel() -> Response {
    let report = match oxwork::status().await {
        Ok(r) => r,
        Err(e) => return Response::json(&json!({"error": e.to_string()})).status(503),
    };
    let processes = panel_rows(&report["processes"]);
    let pools = match report["hub"]["pools"].as_array() {
        Some(p) if !p.is_empty() => report["hub"]["pools"].clone(),
        _ => report["bus"]["pools"].clone(),
    };
    Response::json(&json!({
        "node": report["node"],
        "uptime_secs": report["uptime_secs"],
        "bus": report["bus"],
        "processes": processes,
        "pools": pools,
        "exits": report["exits"],
        "nodes": panel_nodes(&cluster_nodes()),
    }))
}

/// Process rows (as `status --json` has them) cut to what the panel shows.
fn panel_rows(processes: &serde_json::Value) -> Vec<serde_json::Value> {
    processes
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    json!({
                        "worker": p["worker"], "id": p["id"], "pid": p["pid"],
                        "memory_bytes": p["memory_bytes"], "uptime_secs": p["uptime_secs"],
                        "busy": p["busy"], "retiring": p["retiring"],
                        "connections": p["stats"]["connections"],
                        "messages": p["stats"]["messages"],
                        "tasks_done": p["stats"]["tasks_done"],
                        "tasks_failed": p["stats"]["tasks_failed"],
                        "panics": p["stats"]["panics"],
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The cluster's nodes (`oxwork::cluster()`), each with its processes cut like this node's.
fn panel_nodes(nodes: &serde_json::Value) -> serde_json::Value {
    let nodes = nodes.as_array().map(Vec::as_slice).unwrap_or_default();
    nodes
        .iter()
        .map(|n| {
            json!({
                "node": n["node"], "host": n["host"], "reachable": n["reachable"],
                "last_heard_secs": n["last_heard_secs"], "groups": n["groups"],
                "processes": panel_rows(&n["processes"]),
            })
        })
        .collect()
}

thread_local! {
    /// The last census of the cluster's nodes, and when the current one began: a census waits
    /// up to 5 s for silent nodes, so it runs beside the panel's readings, at most every 5 s.
    static NODES: std::cell::RefCell<(Option<std::time::Instant>, serde_json::Value)> =
        const { std::cell::RefCell::new((None, serde_json::Value::Array(Vec::new()))) };
}

/// The cluster's nodes as last counted (`oxwork::cluster()`; empty on the hub), starting a new
/// count when the last began more than 5 s ago.
fn cluster_nodes() -> serde_json::Value {
    NODES.with(|n| {
        let mut n = n.borrow_mut();
        let due = n.0.is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
        if due {
            n.0 = Some(std::time::Instant::now());
            oxwork::spawn(async {
                if let Ok(nodes) = oxwork::cluster().await {
                    NODES.with(|n| n.borrow_mut().1 = nodes);
                }
            });
        }
        n.1.clone()
    })
}

/// Answers one HTTP request.
pub fn handle(store: &Store, settings: &Settings, req: &Request) -> Response {
    let path = req.path();
    match (req.method().as_str(), path) {
        ("GET", "/") => match req.cookie(VISITOR_COOKIE).filter(|v| valid_visitor(v)) {
            Some(_) => Response::html(INDEX),
            None => Response::html(INDEX).cookie_with(
                VISITOR_COOKIE,
                &new_visitor(),
                "Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000",
            ),
        },
        ("GET", "/app.js") => Response::new(200)
            .header("Content-Type", "text/javascript; charset=utf-8")
            .body(APP_JS),
        ("GET", "/app.css") => Response::new(200)
            .header("Content-Type", "text/css; charset=utf-8")
            .body(APP_CSS),
        ("GET", "/api/photos") => {
            let photos: Vec<Photo> = store.list(200).iter().map(Photo::public).collect();
            Response::json(&photos)
        }
        ("GET", p) if p.starts_with("/originals/") => {
            let id = &p["/originals/".len()..];
            let key = req.query("key").unwrap_or_default();
            match store.original(id, &key).filter(|p| p.is_file()) {
                Some(path) => {
                    Response::file(path).header("Content-Type", "application/octet-stream")
                }
                None => Response::new(404).body("no such original\n"),
            }
        }
        ("POST", "/upload") => upload(store, settings, req),
        ("GET", p) if p.starts_with("/photos/") => {
            let mut parts = p["/photos/".len()..].splitn(2, '/');
            let (id, file) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let size = file.strip_suffix(".jpg").unwrap_or("");
            match store.size_path(id, size).filter(|p| p.is_file()) {
                Some(path) => Response::file(path).header("Cache-Control", "max-age=31536000"),
                None => Response::new(404).body("no such photo\n"),
            }
        }
        _ => Response::new(404).body("Not Found\n"),
    }
}

fn refuse(status: u16, error: impl Into<String>) -> Response {
    Response::json(&json!({"accepted": [], "rejected": [], "error": error.into()})).status(status)
}

fn upload(store: &Store, settings: &Settings, req: &Request) -> Response {
    let Some(visitor) = req.cookie(VISITOR_COOKIE).filter(|v| valid_visitor(v)) else {
        return refuse(400, "no visitor cookie: load the page first");
    };
    let Some(tab) = req.form("tab").filter(|t| valid_tab(t)) else {
        return refuse(400, "the form has no valid tab id");
    };
    let tab = tab_uid(&visitor, tab);
    let files: Vec<_> = req.files().iter().filter(|f| f.field == "photos").collect();
    if files.is_empty() {
        return refuse(400, "no photos in the form (field \"photos\")");
    }
    if files.len() > settings.max_files {
        return refuse(
            400,
            format!(
                "{} files; at most {} at once",
                files.len(),
                settings.max_files
            ),
        );
    }
    // What one task can carry: the bus's payload limit less the job's head.
    let carry = bus::bus()
        .map(|b| b.max_payload())
        .unwrap_or(1024 * 1024)
        .saturating_sub(4096);
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut too_large = 0;
    for f in files {
        let name: String = f
            .filename
            .clone()
            .unwrap_or_else(|| "unnamed".into())
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let refused = |why: String| json!({"name": name, "error": why});
        if f.size == 0 {
            rejected.push(refused("an empty file".into()));
            continue;
        }
        if f.size > settings.max_file {
            too_large += 1;
            rejected.push(refused(format!(
                "{:.1} MiB is over the {} MiB limit",
                f.size as f64 / 1048576.0,
                settings.max_file / 1048576
            )));
            continue;
        }
        let bytes = match f.bytes() {
            Ok(b) => b,
            Err(e) => {
                rejected.push(refused(format!("could not read the upload: {e}")));
                continue;
            }
        };
        if crate::imaging::sniff(&bytes).is_none() {
            rejected.push(refused("not a JPEG, PNG or WebP image".into()));
            continue;
        }
        let photo = Photo::queued(name.clone(), bytes.len() as u64, now_ms());
        if let Err(e) = store.add(&photo, &bytes) {
            rejected.push(refused(format!("could not be stored: {e}")));
            continue;
        }
        accepted.push(json!({"id": photo.id, "name": name}));
        // Too large for one task: the thumbnail process fetches it from here.
        let fetch = (bytes.len() > carry).then(|| {
            format!(
                "{}/originals/{}?key={}",
                settings.public_url, photo.id, photo.key
            )
        });
        let job = Job {
            id: photo.id.clone(),
            tab: tab.clone(),
            name,
            fetch,
        };
        let body: &[u8] = if job.fetch.is_some() { &[] } else { &bytes };
        let payload = job::encode_job(&job, body);
        let (store, timeout) = (store.clone(), settings.task_timeout);
        oxwork::spawn(async move {
            tell(
                &job.tab,
                json!({"type": "queued", "id": job.id, "name": job.name}),
            );
            let opts = SubmitOptions {
                timeout,
                ..Default::default()
            };
            let outcome = bus::submit_with(POOL, payload, opts).await;
            finish(&store, &job, outcome);
        });
    }
    // 413 when size alone turned every file away: the answer says what to change.
    let status = match (accepted.is_empty(), too_large == rejected.len()) {
        (false, _) => 202,
        (true, true) => 413,
        (true, false) => 400,
    };
    Response::json(&json!({"accepted": accepted, "rejected": rejected})).status(status)
}

/// Stores what the pool made (or why it could not) and tells the tab.
fn finish(store: &Store, job: &Job, outcome: Result<bytes::Bytes, bus::BusError>) {
    let Some(mut photo) = store.get(&job.id) else {
        return;
    };
    let made = outcome
        .map_err(|e| match e {
            bus::BusError::TaskFailed(why) => why,
            other => other.to_string(),
        })
        .and_then(|payload| job::decode_made(&payload));
    match made {
        Ok((made, jpegs)) => {
            let mut sizes = Vec::new();
            for (s, jpeg) in made.sizes.iter().zip(jpegs) {
                let Some(path) = store.size_path(&job.id, &s.size) else {
                    continue;
                };
                if let Err(e) = Store::write_atomic(&path, &jpeg) {
                    photo.error = Some(format!("could not store the {} size: {e}", s.size));
                    continue;
                }
                sizes.push(Size {
                    size: s.size.clone(),
                    width: s.width,
                    height: s.height,
                    url: format!("/photos/{}/{}.jpg", job.id, s.size),
                });
            }
            photo.state = if photo.error.is_none() {
                State::Done
            } else {
                State::Failed
            };
            photo.format = Some(made.format);
            (photo.width, photo.height) = (made.width, made.height);
            photo.sizes = sizes;
            photo.by = Some(made.by);
        }
        Err(why) => {
            photo.state = State::Failed;
            photo.error = Some(why);
        }
    }
    if photo.state == State::Failed {
        // Nothing will be made of it: only the record (and its reason) stays.
        let _ = std::fs::remove_file(store.dir(&photo.id).join("original"));
    }
    if let Err(e) = store.save(&photo) {
        eprintln!("photo {}: record not saved: {e}", photo.id);
    }
    let kind = if photo.state == State::Done {
        "done"
    } else {
        "failed"
    };
    tell(&job.tab, json!({"type": kind, "photo": photo.public()}));
}

/// The page's socket protocol, versioned so that a page from another release is told apart.
pub const SOCKET_PROTOCOL: &str = "photos.v1";

/// The WebSocket handshake: only a browser that holds a visitor cookie may listen; a page that
/// names the socket protocol gets it back.
pub fn on_socket_handshake(req: &Request) -> Result<WsAccept, Response> {
    if req
        .cookie(VISITOR_COOKIE)
        .filter(|v| valid_visitor(v))
        .is_none()
    {
        return Err(Response::new(403).body("no visitor cookie: load the page first\n"));
    }
    let offered = req.websocket_protocols();
    Ok(match offered.iter().any(|p| p == SOCKET_PROTOCOL) {
        true => WsAccept::new().protocol(SOCKET_PROTOCOL),
        false => WsAccept::new(),
    })
}

/// The WebSocket route: a tab's first message says which tab it is (`{"tab": "ID"}`), and from
/// then on the socket gets the progress of the photos that tab of this browser uploads (client
/// routing by uid). Anything else from the page is ignored.
pub fn on_socket_message(c: &Connection<WebSocket>, msg: WsMessage) {
    let Some(text) = msg.as_str() else { return };
    let tab = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["tab"].as_str().map(str::to_string));
    let visitor = c.handshake().and_then(|h| {
        h.headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
            .find_map(|(_, value)| visitor_in(value))
    });
    match (visitor, tab.filter(|t| valid_tab(t))) {
        (Some(visitor), Some(tab)) => {
            if let Err(e) = c.bind_uid(&tab_uid(&visitor, &tab)) {
                eprintln!("tab {tab}: {e}");
            }
            c.send(json!({"type": "hello", "tab": tab}).to_string());
        }
        _ => {
            c.send(json!({"type": "error", "error": "say {\"tab\": ID} first"}).to_string());
        }
    }
}

/// Shared by the web group's callbacks.
pub type Shared = Rc<(Store, Settings)>;
