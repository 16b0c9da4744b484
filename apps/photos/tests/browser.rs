//! The photo page in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! as a person would use it: pick files, watch the thumbnails and the status panel, see a
//! corrupt file's failure. Saves a screenshot; with `PHOTOS_SCREENSHOT=docs/photos.png` it
//! refreshes the one README shows.
//!
//! Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them). The WebDriver calls
//! are plain JSON over HTTP (W3C WebDriver), a dozen of them, made with ureq: a client crate
//! would bring an async HTTP stack for that.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::ImageFormat;
use photos::samples::{detailed, encode, jpeg_with_orientation, marked};
use serde_json::{json, Value};
use support::{eventually, free_port, Server};

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let bin = find(&["chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver not found: install Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver)"
            )
        });
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let d = Driver { child, url };
        assert!(
            eventually(Duration::from_secs(20), || d.get("/status").is_some()),
            "chromedriver did not start"
        );
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let answer = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            (_, body) => agent.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let mut answer = answer.ok()?;
        let v: Value = answer.body_mut().read_json().ok()?;
        Some(v["value"].clone())
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.call("GET", path, None)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl<'a> Browser<'a> {
    fn open(driver: &'a Driver) -> Browser<'a> {
        let chrome = find(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("chromium not found: apt-get install chromium chromium-driver")
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1500"]
            }
        }}});
        let v = driver
            .call("POST", "/session", Some(caps))
            .expect("a session");
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser { driver, session }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.driver
            .call(method, &path, body)
            .unwrap_or_else(|| panic!("WebDriver {method} {path} failed"))
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns its value.
    fn run(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Picks `files` in the page's file input, as a person choosing them would.
    fn pick(&self, files: &[PathBuf]) {
        let input = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": "#picker"})),
        );
        let id = input
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("the file input")
            .to_string();
        let text = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn screenshot(&self, to: &Path) {
        use base64::Engine;
        let png = self.cmd("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .expect("a PNG");
        std::fs::write(to, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.session), None);
    }
}

fn wait_for(browser: &Browser, limit: Duration, script: &str) -> Value {
    let end = Instant::now() + limit;
    loop {
        let v = browser.run(script);
        if v != Value::Null && v != json!(false) {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for: {script}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn in_chromium_three_photos_become_nine_thumbnails_and_a_corrupt_one_shows_its_failure() {
    let driver = Driver::start();
    let port = free_port();
    let data = tempfile::tempdir().expect("data");
    let env = [
        ("PHOTOS_LISTEN", format!("http://127.0.0.1:{port}")),
        ("PHOTOS_DATA", data.path().display().to_string()),
        ("PHOTOS_WEB_PROCS", "1".to_string()),
        ("PHOTOS_THUMB_PROCS", "2".to_string()),
    ];
    let _server = Server::start_program(env!("CARGO_BIN_EXE_photos").into(), &[], &env, 4);

    let files = tempfile::tempdir().expect("files");
    let write = |name: &str, bytes: Vec<u8>| {
        let p = files.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let jpeg = write(
        "harbour.jpg",
        encode(&detailed(1600, 1000, 4), ImageFormat::Jpeg),
    );
    let png = write("plan.png", encode(&detailed(800, 800, 8), ImageFormat::Png));
    let webp = write(
        "street.webp",
        encode(&detailed(1200, 900, 2), ImageFormat::WebP),
    );
    // Stored 800x400 with "rotate 90 clockwise to view": a portrait 400x800 on the page, its
    // red quarter (stored top-left) at the top right.
    let turned = write("turned.jpg", jpeg_with_orientation(&marked(800, 400), 6));
    let corrupt = write(
        "broken.jpg",
        b"\xFF\xD8\xFF\xE0 not really a JPEG".repeat(50),
    );

    let browser = Browser::open(&driver);
    browser.go(&format!("http://127.0.0.1:{port}/"));
    wait_for(
        &browser,
        Duration::from_secs(20),
        "return document.getElementById('link').textContent === 'live';",
    );
    browser.pick(&[jpeg, png, webp]);
    browser.pick(&[turned]);
    // 4 photos with 3 sizes each in the gallery; their sizes as the page lists them.
    let sizes = wait_for(
        &browser,
        Duration::from_secs(60),
        "const figs = document.querySelectorAll('#gallery .photo:not(.failed)');
         if (figs.length < 4) return null;
         const out = {};
         for (const f of figs) {
           const name = f.querySelector('figcaption span').textContent;
           out[name] = [...f.querySelectorAll('a.size')].map(a => [+a.dataset.width, +a.dataset.height]);
         }
         return out;",
    );
    assert_eq!(
        sizes["harbour.jpg"],
        json!([[160, 100], [480, 300], [1200, 750]])
    );
    assert_eq!(
        sizes["plan.png"],
        json!([[160, 160], [480, 480], [800, 800]])
    );
    assert_eq!(
        sizes["street.webp"],
        json!([[160, 120], [480, 360], [1200, 900]])
    );
    assert_eq!(
        sizes["turned.jpg"],
        json!([[80, 160], [240, 480], [400, 800]])
    );
    // The turned photo as the browser draws it: portrait, red at the top right.
    let drawn = wait_for(
        &browser,
        Duration::from_secs(20),
        "const f = [...document.querySelectorAll('#gallery .photo')]
           .find(f => f.querySelector('figcaption span').textContent === 'turned.jpg');
         const img = f && f.querySelector('img');
         if (!img || !img.complete || !img.naturalWidth) return null;
         const c = document.createElement('canvas');
         c.width = img.naturalWidth; c.height = img.naturalHeight;
         const g = c.getContext('2d'); g.drawImage(img, 0, 0);
         const at = (x, y) => [...g.getImageData(x, y, 1, 1).data].slice(0, 3);
         return {w: img.naturalWidth, h: img.naturalHeight,
                 topRight: at(c.width * 3 / 4, c.height / 8), topLeft: at(c.width / 4, c.height / 8)};",
    );
    assert_eq!(
        (drawn["w"].as_u64(), drawn["h"].as_u64()),
        (Some(240), Some(480))
    );
    let red = |v: &Value| v[0].as_u64().unwrap_or(0) > 200 && v[2].as_u64().unwrap_or(255) < 60;
    assert!(red(&drawn["topRight"]), "{drawn}");
    assert!(!red(&drawn["topLeft"]), "{drawn}");
    // The status panel counts them (it reads every 2 s).
    wait_for(
        &browser,
        Duration::from_secs(20),
        "const d = document.querySelector('[data-figure=\"done\"] b');
         return d && d.textContent === '4';",
    );
    // A corrupt file: its failure, with the reason, on the page.
    browser.pick(&[corrupt]);
    let failure = wait_for(
        &browser,
        Duration::from_secs(30),
        "const f = document.querySelector('#gallery .photo.failed');
         return f && f.querySelector('.meta').textContent;",
    );
    assert!(failure.as_str().unwrap_or("").contains("JPEG"), "{failure}");
    wait_for(
        &browser,
        Duration::from_secs(20),
        "const d = document.querySelector('[data-figure=\"failed\"] b');
         return d && d.textContent === '1';",
    );
    // The screenshot README shows is refreshed only when asked.
    let shot = std::env::var("PHOTOS_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("oxwork-photos.png"));
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 10_000);
    eprintln!("screenshot: {}", shot.display());
}
