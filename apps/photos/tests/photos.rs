//! The photo service as its users meet it: a real process tree, uploads over HTTP as a
//! browser's form sends them, the gallery's JSON, and a thumbnail process killed mid-batch.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use image::ImageFormat;
use photos::samples::{
    bomb_png, detailed as picture, encode, noise_png, upload_form as form, visitor_cookie,
};
use serde_json::Value;
use support::{eventually, free_port, kill9, Nats, Server};

const TAB: &str = "tab-test-0001";

struct Photos {
    server: Server,
    port: u16,
    data: tempfile::TempDir,
    /// The processes' temporary directory, where large uploads are spilled while parsed.
    spill: tempfile::TempDir,
}

fn start(thumb_procs: usize) -> Photos {
    start_with(thumb_procs, &[])
}

/// [`start`] with more settings (environment variables) for the service.
fn start_with(thumb_procs: usize, more: &[(&str, &str)]) -> Photos {
    let port = free_port();
    let data = tempfile::tempdir().expect("data dir");
    let spill = tempfile::tempdir().expect("spill dir");
    let mut env = vec![
        ("TMPDIR", spill.path().display().to_string()),
        ("PHOTOS_LISTEN", format!("http://127.0.0.1:{port}")),
        ("PHOTOS_DATA", data.path().display().to_string()),
        ("PHOTOS_WEB_PROCS", "1".to_string()),
        ("PHOTOS_THUMB_PROCS", thumb_procs.to_string()),
        ("PHOTOS_MAX_FILES", "40".to_string()),
    ];
    env.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    // The web process, the thumbnail processes and the hub.
    let server = Server::start_program(
        env!("CARGO_BIN_EXE_photos").into(),
        &[],
        &env,
        2 + thumb_procs,
    )
    .with_port(port);
    Photos {
        server,
        port,
        data,
        spill,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Posts raw bytes to /upload as a browser that loaded the page; the status and the JSON answer.
fn post(port: u16, content_type: &str, body: &[u8]) -> (u16, Value) {
    post_with_cookie(port, content_type, body, Some(&visitor_cookie()))
}

fn post_with_cookie(
    port: u16,
    content_type: &str,
    body: &[u8],
    cookie: Option<&str>,
) -> (u16, Value) {
    let mut request = agent()
        .post(&format!("http://127.0.0.1:{port}/upload"))
        .header("Content-Type", content_type);
    if let Some(cookie) = cookie {
        request = request.header("Cookie", cookie);
    }
    let mut r = request.send(body).expect("an answer");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn upload(port: u16, files: &[(&str, &[u8])]) -> (u16, Value) {
    let (ct, body) = form(TAB, files);
    post(port, &ct, &body)
}

fn gallery(port: u16) -> Vec<Value> {
    agent()
        .get(&format!("http://127.0.0.1:{port}/api/photos"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_json::<Vec<Value>>().ok())
        .unwrap_or_default()
}

fn settled(port: u16, n: usize) -> bool {
    let g = gallery(port);
    g.len() == n && g.iter().all(|p| p["state"] != "queued")
}

fn stored_ids(data: &Path) -> usize {
    std::fs::read_dir(data).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn uploads_become_three_sizes_each_with_the_right_dimensions() {
    let p = start(2);
    let jpeg = encode(&picture(1600, 1200, 1), ImageFormat::Jpeg);
    let png = encode(&picture(900, 1400, 2), ImageFormat::Png);
    let webp = encode(&picture(300, 200, 3), ImageFormat::WebP);
    let (status, answer) = upload(
        p.port,
        &[("a.jpg", &jpeg), ("b.png", &png), ("c.webp", &webp)],
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"].as_array().map(Vec::len), Some(3));
    assert!(
        eventually(Duration::from_secs(60), || settled(p.port, 3)),
        "not processed: {:?}",
        gallery(p.port)
    );
    let g = gallery(p.port);
    let dims = |name: &str| -> Vec<(u64, u64)> {
        let photo = g.iter().find(|x| x["name"] == name).expect(name);
        assert_eq!(photo["state"], "done", "{photo}");
        photo["sizes"]
            .as_array()
            .expect("sizes")
            .iter()
            .map(|s| {
                (
                    s["width"].as_u64().unwrap_or(0),
                    s["height"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(dims("a.jpg"), [(160, 120), (480, 360), (1200, 900)]);
    assert_eq!(dims("b.png"), [(103, 160), (309, 480), (771, 1200)]);
    assert_eq!(dims("c.webp"), [(160, 107), (300, 200), (300, 200)]);
    // The status panel's figures come from the tree's own report.
    let status: Value = agent()
        .get(&format!("http://127.0.0.1:{}/api/status", p.port))
        .call()
        .expect("status")
        .body_mut()
        .read_json()
        .expect("json");
    let pool = status["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|x| x["name"] == "thumbs"))
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(pool["done"], 3, "{status}");
    let workers: Vec<&str> = status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|x| x["worker"].as_str())
        .collect();
    assert_eq!(
        workers.iter().filter(|w| **w == "thumbs").count(),
        2,
        "{status}"
    );
    assert!(workers.contains(&"web"), "{status}");
    // The files are served and are the JPEGs the sizes say.
    let photo = g.iter().find(|x| x["name"] == "a.jpg").expect("a.jpg");
    let url = photo["sizes"][1]["url"].as_str().expect("url");
    let mut r = agent()
        .get(&format!("http://127.0.0.1:{}{url}", p.port))
        .call()
        .expect("the medium size");
    let bytes = r.body_mut().read_to_vec().expect("body");
    let img = image::load_from_memory(&bytes).expect("a JPEG");
    assert_eq!((img.width(), img.height()), (480, 360));
    drop(p.server);
}

#[test]
fn hostile_uploads_get_clear_answers_and_leave_nothing_behind() {
    let p = start_with(1, &[("PHOTOS_MAX_FILE_MB", "2")]);
    let good = encode(&picture(640, 480, 9), ImageFormat::Jpeg);
    // A PNG whose header says 20000x20000 (400 megapixels).
    let bomb = bomb_png(20_000, 20_000);
    // Large enough to be spilled to disk while the form is parsed.
    let not_jpeg = b"\xFF\xD8\xFF\xE0 this is not really a JPEG at all".repeat(8000);

    // Truncated multipart: cut in the middle of a file, no closing boundary.
    let (ct, body) = form(TAB, &[("a.jpg", &good)]);
    let (status, _) = post(p.port, &ct, &body[..body.len() / 2]);
    assert!((400..500).contains(&status), "truncated form: {status}");

    let (status, answer) = upload(p.port, &[("empty.jpg", b"")]);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["rejected"][0]["error"]
        .as_str()
        .unwrap_or("")
        .contains("empty"));

    let (status, answer) = upload(p.port, &[("text.jpg", b"hello there, not an image")]);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["rejected"][0]["error"]
        .as_str()
        .unwrap_or("")
        .contains("not a JPEG"));

    let many: Vec<(&str, &[u8])> = (0..41).map(|_| ("x.jpg", &good[..])).collect();
    let (status, answer) = upload(p.port, &many);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap_or("")
        .contains("at most 40"));

    // Over the size limit (2 MiB here): 413, saying so; spilled to disk, and removed.
    let big = noise_png(1000, 1000, 3);
    let (status, answer) = upload(p.port, &[("big.png", &big)]);
    assert_eq!(status, 413, "{answer}");
    assert!(answer["rejected"][0]["error"]
        .as_str()
        .unwrap_or("")
        .contains("over the 2 MiB limit"));

    let (status, answer) = upload(p.port, &[("bad.jpg", &not_jpeg), ("bomb.png", &bomb)]);
    assert_eq!(status, 202, "{answer}");
    assert!(
        eventually(Duration::from_secs(60), || settled(p.port, 2)),
        "{:?}",
        gallery(p.port)
    );
    for photo in gallery(p.port) {
        assert_eq!(photo["state"], "failed", "{photo}");
        let why = photo["error"].as_str().unwrap_or("");
        match photo["name"].as_str() {
            Some("bomb.png") => assert!(why.contains("megapixels"), "{why}"),
            _ => assert!(why.to_lowercase().contains("jpeg"), "{why}"),
        }
    }
    // Only the two that were taken have a record, and neither keeps its file; no upload
    // is left in the temporary directory; the process keeps serving.
    assert_eq!(stored_ids(p.data.path()), 2);
    for photo in gallery(p.port) {
        let id = photo["id"].as_str().expect("id");
        assert!(!p.data.path().join(id).join("original").exists(), "{id}");
    }
    let spilled: Vec<_> = std::fs::read_dir(p.spill.path())
        .expect("spill dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert!(spilled.is_empty(), "left behind: {spilled:?}");
    let (status, _) = upload(p.port, &[("fine.jpg", &good)]);
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(60), || settled(p.port, 3)));
    assert!(gallery(p.port)
        .iter()
        .any(|x| x["name"] == "fine.jpg" && x["state"] == "done"));
    drop(p.server);
}

#[test]
fn a_thumbnail_process_killed_mid_batch_loses_no_photo() {
    let p = start(2);
    let images: Vec<Vec<u8>> = (0..30)
        .map(|i| encode(&picture(1800, 1200, i as u8), ImageFormat::Jpeg))
        .collect();
    let files: Vec<(String, &[u8])> = images
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("p{i:02}.jpg"), &b[..]))
        .collect();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let (status, answer) = upload(p.port, &files);
    assert_eq!(status, 202, "{answer}");
    // Once some are done, kill a thumbnail process in the middle of its work.
    assert!(eventually(Duration::from_secs(60), || gallery(p.port)
        .iter()
        .filter(|x| x["state"] == "done")
        .count()
        >= 3));
    let victim = p.server.group_pids("thumbs")[0];
    kill9(victim);
    assert!(
        eventually(Duration::from_secs(120), || settled(p.port, 30)),
        "{:?}",
        gallery(p.port)
            .iter()
            .map(|x| x["state"].clone())
            .collect::<Vec<_>>()
    );
    let g = gallery(p.port);
    let failed: Vec<&Value> = g.iter().filter(|x| x["state"] != "done").collect();
    assert!(failed.is_empty(), "{failed:?}");
    drop(p.server);
}

/// The page's WebSocket handshake, as a browser holding `cookie` sends it.
fn socket_request(
    port: u16,
    cookie: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .expect("a request");
    request
        .headers_mut()
        .insert("Cookie", cookie.parse().expect("a header value"));
    request
}

#[test]
fn the_page_sets_the_visitor_cookie_and_uploads_or_sockets_without_it_are_refused() {
    let p = start(1);
    let r = agent()
        .get(&format!("http://127.0.0.1:{}/", p.port))
        .call()
        .expect("the page");
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let value = set
        .strip_prefix("photos_visitor=")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or("");
    assert!(photos::web::valid_visitor(value), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );

    let good = encode(&picture(320, 240, 1), ImageFormat::Jpeg);
    let (ct, body) = form(TAB, &[("a.jpg", &good)]);
    let (status, answer) = post_with_cookie(p.port, &ct, &body, None);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap_or("").contains("cookie"));
    let (status, _) = post_with_cookie(p.port, &ct, &body, Some("photos_visitor=guess"));
    assert_eq!(status, 400);

    let port = p.port;
    let refused = support::local_runtime().block_on(async move {
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await
    });
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a socket without the cookie: {other:?}"),
    }
    assert!(gallery(p.port).is_empty());
}

#[test]
fn progress_goes_to_the_uploading_browser_only_not_to_another_with_the_same_tab_id() {
    use futures_util::{SinkExt, StreamExt};
    let p = start(1);
    let port = p.port;
    let (mine, theirs) = support::local_runtime().block_on(async move {
        let other = format!("photos_visitor={}", "f".repeat(32));
        let mut sockets = Vec::new();
        for cookie in [visitor_cookie(), other] {
            let (mut ws, _) = tokio_tungstenite::connect_async(socket_request(port, &cookie))
                .await
                .expect("ws");
            let hello = serde_json::json!({ "tab": TAB }).to_string();
            ws.send(hello.into()).await.expect("hello");
            ws.next().await.expect("an answer").expect("hello back");
            sockets.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let jpeg = encode(&picture(800, 600, 4), ImageFormat::Jpeg);
        let upload = tokio::task::spawn_blocking(move || upload(port, &[("mine.jpg", &jpeg)]));
        let (mut theirs_ws, mut mine_ws) = (sockets.pop().expect("2"), sockets.pop().expect("1"));
        let mut mine = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, mine_ws.next()).await {
            let text = msg.to_text().unwrap_or("").to_string();
            let end = text.contains("\"done\"") || text.contains("\"failed\"");
            mine.push(text);
            if end {
                break;
            }
        }
        assert_eq!(upload.await.expect("upload").0, 202);
        // Whatever was meant for the other browser has arrived by now.
        let mut theirs = Vec::new();
        let quiet = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(quiet, theirs_ws.next()).await {
            theirs.push(msg.to_text().unwrap_or("").to_string());
        }
        (mine, theirs)
    });
    assert!(
        mine.last().is_some_and(|m| m.contains("\"done\"")),
        "{mine:?}"
    );
    assert!(theirs.is_empty(), "{theirs:?}");
}

#[test]
fn a_decoder_panic_fails_that_photo_only_and_the_panel_counts_it() {
    let p = start_with(1, &[("PHOTOS_PANIC_ON", "boom.jpg")]);
    let before = p.server.group_pids("thumbs");
    let jpeg = encode(&picture(640, 480, 6), ImageFormat::Jpeg);
    let (status, answer) = upload(p.port, &[("boom.jpg", &jpeg), ("fine.jpg", &jpeg)]);
    assert_eq!(status, 202, "{answer}");
    assert!(
        eventually(Duration::from_secs(60), || settled(p.port, 2)),
        "{:?}",
        gallery(p.port)
    );
    for photo in gallery(p.port) {
        match photo["name"].as_str() {
            Some("boom.jpg") => {
                assert_eq!(photo["state"], "failed", "{photo}");
                let why = photo["error"].as_str().unwrap_or("");
                assert!(why.contains("decoder crashed"), "{why}");
            }
            _ => assert_eq!(photo["state"], "done", "{photo}"),
        }
    }
    // The same process made both, and the panel counts the panic against it.
    assert_eq!(p.server.group_pids("thumbs"), before);
    let status: Value = agent()
        .get(&format!("http://127.0.0.1:{}/api/status", p.port))
        .call()
        .expect("status")
        .body_mut()
        .read_json()
        .expect("json");
    let panics: u64 = status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|x| x["worker"] == "thumbs")
        .filter_map(|x| x["panics"].as_u64())
        .sum();
    assert_eq!(panics, 1, "{status}");
}

#[test]
fn the_uploading_tab_hears_queued_started_each_size_and_done_over_its_websocket() {
    use futures_util::StreamExt;
    let p = start(1);
    let tab = "tab-live-progress-1";
    let port = p.port;
    let events: Vec<Value> = support::local_runtime().block_on(async move {
        use futures_util::SinkExt;
        let (mut ws, _) = tokio_tungstenite::connect_async(socket_request(port, &visitor_cookie()))
            .await
            .expect("ws");
        let hello = serde_json::json!({ "tab": tab }).to_string();
        ws.send(hello.into()).await.expect("hello");
        let answer = ws.next().await.expect("an answer").expect("a message");
        assert!(
            answer.to_text().unwrap_or("").contains("hello"),
            "{answer:?}"
        );
        // The binding reaches the hub a moment after the answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let jpeg = encode(&picture(1000, 800, 5), ImageFormat::Jpeg);
        let upload = tokio::task::spawn_blocking(move || {
            let (ct, body) = form(tab, &[("live.jpg", &jpeg)]);
            post(port, &ct, &body)
        });
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
            let Ok(text) = msg.to_text() else { continue };
            let Ok(event) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            let end = event["type"] == "done" || event["type"] == "failed";
            events.push(event);
            if end {
                break;
            }
        }
        assert_eq!(upload.await.expect("upload").0, 202);
        events
    });
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("size") => format!("size {}", e["size"].as_str().unwrap_or("")),
            other => other.unwrap_or("?").to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "queued",
            "started",
            "size small",
            "size medium",
            "size large",
            "done"
        ],
        "{events:?}"
    );
    let started = &events[1];
    assert!(
        started["by"].as_str().unwrap_or("").contains("pid"),
        "{started}"
    );
    assert_eq!(events[5]["photo"]["sizes"][2]["width"], 1000);
    drop(p.server);
}

#[test]
fn a_photo_larger_than_the_bus_carries_is_fetched_by_the_pool_from_the_web_node() {
    let p = start(1);
    // 2000x1500 of noise: about 9 MB, over the hub's 8 MiB payload limit.
    let big = noise_png(2000, 1500, 7);
    assert!(big.len() > 8 * 1024 * 1024, "{} bytes", big.len());
    let (status, answer) = upload(p.port, &[("big.png", &big)]);
    assert_eq!(status, 202, "{answer}");
    assert!(
        eventually(Duration::from_secs(60), || settled(p.port, 1)),
        "{:?}",
        gallery(p.port)
    );
    let photo = gallery(p.port).remove(0);
    assert_eq!(photo["state"], "done", "{photo}");
    assert_eq!(photo["sizes"][2]["width"], 1200, "{photo}");
    // The original's key never reaches the page, and without it the original is not served.
    assert!(photo.get("key").is_none(), "{photo}");
    let id = photo["id"].as_str().expect("id");
    let status = agent()
        .get(&format!(
            "http://127.0.0.1:{}/originals/{id}?key=00",
            p.port
        ))
        .call()
        .expect("an answer")
        .status()
        .as_u16();
    assert_eq!(status, 404);
    drop(p.server);
}

/// A photos node on `nats` running only `group`.
fn node(nats: &Nats, name: &str, group: &str, port: u16, data: &Path, expected: usize) -> Server {
    let env = [
        ("OXWORK_BUS", nats.url.clone()),
        ("OXWORK_NODE", name.to_string()),
        ("PHOTOS_LISTEN", format!("http://127.0.0.1:{port}")),
        ("PHOTOS_DATA", data.display().to_string()),
        ("PHOTOS_WEB_PROCS", "1".to_string()),
        ("PHOTOS_THUMB_PROCS", "2".to_string()),
        ("PHOTOS_MAX_FILES", "40".to_string()),
    ];
    Server::start_program(
        env!("CARGO_BIN_EXE_photos").into(),
        &["--group", group],
        &env,
        expected,
    )
}

#[test]
fn over_nats_a_thumbnail_node_killed_whole_mid_batch_loses_no_photo() {
    let nats = Nats::start();
    let port = free_port();
    let data = tempfile::tempdir().expect("data");
    let _web = node(&nats, "web", "web", port, data.path(), 1);
    let _b = node(&nats, "b", "thumbs", free_port(), data.path(), 2);
    let doomed = node(&nats, "c", "thumbs", free_port(), data.path(), 2);
    let images: Vec<Vec<u8>> = (0..30)
        .map(|i| encode(&picture(1800, 1200, i as u8), ImageFormat::Jpeg))
        .collect();
    let names: Vec<String> = (0..30).map(|i| format!("n{i:02}.jpg")).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&images)
        .map(|(n, b)| (n.as_str(), &b[..]))
        .collect();
    let (status, answer) = upload(port, &files);
    assert_eq!(status, 202, "{answer}");
    assert!(eventually(Duration::from_secs(60), || gallery(port)
        .iter()
        .filter(|x| x["state"] == "done")
        .count()
        >= 3));
    // The status panel lists every node with its groups.
    let nodes = |port: u16| -> Vec<Value> {
        agent()
            .get(&format!("http://127.0.0.1:{port}/api/status"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
            .and_then(|v| v["nodes"].as_array().cloned())
            .unwrap_or_default()
    };
    let described = |n: &Value| format!("{}:{}:{}", n["node"], n["reachable"], n["groups"]);
    assert!(
        eventually(Duration::from_secs(20), || {
            let n = nodes(port);
            n.len() == 3 && n.iter().all(|x| x["reachable"] == true)
        }),
        "{:?}",
        nodes(port).iter().map(described).collect::<Vec<_>>()
    );
    // ... and each node's processes, with their own counters: node c's two thumbnail processes.
    let c_pids: std::collections::BTreeSet<u64> = nodes(port)
        .iter()
        .filter(|n| n["node"] == "c")
        .flat_map(|n| n["processes"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["worker"] == "thumbs" && p["tasks_done"].is_u64())
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    let expected: std::collections::BTreeSet<u64> = doomed
        .group_pids("thumbs")
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(c_pids, expected);
    // Node c dies whole: its master and every process, mid-batch.
    let mut victims = doomed.group_pids("thumbs");
    victims.push(doomed.master_pid());
    for pid in victims {
        kill9(pid);
    }
    // Its tasks come back when their lease (10 s) runs out, and node b makes them.
    assert!(
        eventually(Duration::from_secs(120), || settled(port, 30)),
        "{:?}",
        gallery(port)
            .iter()
            .map(|x| x["state"].clone())
            .collect::<Vec<_>>()
    );
    let g = gallery(port);
    let failed: Vec<&Value> = g.iter().filter(|x| x["state"] != "done").collect();
    assert!(failed.is_empty(), "{failed:?}");
    // The panel says node c does not answer (its record stays until it expires).
    assert!(
        eventually(Duration::from_secs(30), || nodes(port)
            .iter()
            .any(|x| x["node"] == "c" && x["reachable"] == false)),
        "{:?}",
        nodes(port).iter().map(described).collect::<Vec<_>>()
    );
    // Both thumbnail nodes took part (the page says which process made each photo).
    let makers: std::collections::BTreeSet<String> = g
        .iter()
        .filter_map(|x| x["by"].as_str())
        .map(|b| b.split('/').next().unwrap_or("").to_string())
        .collect();
    assert!(makers.contains("b"), "{makers:?}");
}
