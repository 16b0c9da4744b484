//! The photo page in real browsers, as a person would use it: pick files, watch the thumbnails
//! and the status panel, see a corrupt file's failure. Headless Chromium is driven over W3C
//! WebDriver (chromedriver); headless Firefox over Marionette, the protocol Firefox speaks
//! itself and geckodriver translates WebDriver into (geckodriver has no Debian package and is
//! fetched from GitHub, out of reach here; Marionette's commands are WebDriver's, by name).
//! Saves a screenshot; with `PHOTOS_SCREENSHOT=docs/photos.png` the Chromium test refreshes the
//! one README shows.
//!
//! Needs Debian's `chromium`, `chromium-driver` and `firefox-esr` (.ci/run installs them). The
//! calls are a dozen plain JSON messages (over HTTP with ureq for WebDriver, over TCP for
//! Marionette): a client crate would bring an async HTTP stack for that.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
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

/// What the test does with a browser, whichever protocol drives it.
trait Browser {
    fn go(&self, url: &str);
    /// Runs `script` (a function body) in the page and returns its value.
    fn run(&self, script: &str) -> Value;
    /// Picks `files` in the page's file input, as a person choosing them would.
    fn pick(&self, files: &[PathBuf]);
    /// The window as a PNG.
    fn screenshot(&self) -> Vec<u8>;
}

/// The element id in a WebDriver element reference (`{"element-6066-...": ID}`).
fn element_id(reference: &Value) -> String {
    reference
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("not an element: {reference}"))
        .to_string()
}

/// File paths as a file input's keys: one per line.
fn file_keys(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_png(base64_png: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(base64_png.as_str().unwrap_or(""))
        .expect("a PNG")
}

/// One Chromium session over chromedriver.
struct Chromium<'a> {
    driver: &'a Driver,
    session: String,
}

impl<'a> Chromium<'a> {
    fn open(driver: &'a Driver) -> Chromium<'a> {
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
        Chromium { driver, session }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.driver
            .call(method, &path, body)
            .unwrap_or_else(|| panic!("WebDriver {method} {path} failed"))
    }
}

impl Browser for Chromium<'_> {
    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn run(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn pick(&self, files: &[PathBuf]) {
        let input = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": "#picker"})),
        );
        let id = element_id(&input);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": file_keys(files) })),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        decode_png(&self.cmd("GET", "/screenshot", None))
    }
}

impl Drop for Chromium<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.session), None);
    }
}

/// Headless Firefox with its Marionette server on a port of its choosing, in a profile of its
/// own; the whole process group (Firefox and its content processes) is killed on drop.
struct Firefox {
    _firefox: ProcessGroup,
    _profile: tempfile::TempDir,
    stream: RefCell<BufReader<TcpStream>>,
    next_id: Cell<u64>,
}

impl Firefox {
    fn open() -> Firefox {
        let bin = find(&["firefox-esr", "firefox"])
            .unwrap_or_else(|| panic!("firefox not found: apt-get install firefox-esr"));
        let profile = tempfile::tempdir().expect("a profile");
        // Port 0: Marionette takes a free port and writes it to MarionetteActivePort. The rest
        // keeps a first run quiet (no first-run pages, reports or update checks).
        let prefs = [
            ("marionette.port", "0"),
            ("browser.shell.checkDefaultBrowser", "false"),
            ("browser.startup.homepage_override.mstone", "\"ignore\""),
            ("datareporting.policy.dataSubmissionEnabled", "false"),
            ("toolkit.telemetry.reportingpolicy.firstRun", "false"),
            ("app.update.disabledForTesting", "true"),
            ("browser.aboutwelcome.enabled", "false"),
        ];
        let user_js: String = prefs
            .iter()
            .map(|(k, v)| format!("user_pref(\"{k}\", {v});\n"))
            .collect();
        std::fs::write(profile.path().join("user.js"), user_js).expect("user.js");
        let child = Command::new(bin)
            .args(["--headless", "--marionette", "--no-remote", "--profile"])
            .arg(profile.path())
            .arg("about:blank")
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start firefox");
        let firefox = ProcessGroup(child);
        let port_file = profile.path().join("MarionetteActivePort");
        let mut port = None;
        let connected = eventually(Duration::from_secs(60), || {
            port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok());
            port.is_some_and(|p| TcpStream::connect(("127.0.0.1", p)).is_ok())
        });
        assert!(connected, "Firefox's Marionette server did not start");
        let stream = TcpStream::connect(("127.0.0.1", port.unwrap_or(0))).expect("marionette");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let ff = Firefox {
            _firefox: firefox,
            _profile: profile,
            stream: RefCell::new(BufReader::new(stream)),
            next_id: Cell::new(1),
        };
        let hello = ff.read_message();
        assert_eq!(hello["applicationType"], "gecko", "{hello}");
        ff.cmd(
            "WebDriver:NewSession",
            json!({"strictFileInteractability": false}),
        );
        ff.cmd(
            "WebDriver:SetWindowRect",
            json!({"width": 1280, "height": 1500}),
        );
        ff
    }

    /// One message: its length in decimal, a colon, and that many bytes of JSON.
    fn read_message(&self) -> Value {
        let mut stream = self.stream.borrow_mut();
        let mut len = Vec::new();
        stream.read_until(b':', &mut len).expect("a message");
        let len: usize = std::str::from_utf8(&len[..len.len().saturating_sub(1)])
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("not a Marionette length: {len:?}"));
        let mut body = vec![0; len];
        stream.read_exact(&mut body).expect("the message");
        serde_json::from_slice(&body).expect("JSON")
    }

    /// Sends a command (`[0, id, name, params]`) and returns its result, or panics with the
    /// error Firefox gave (`[1, id, error, result]`).
    fn cmd(&self, name: &str, params: Value) -> Value {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let body = json!([0, id, name, params]).to_string();
        self.stream
            .borrow_mut()
            .get_mut()
            .write_all(format!("{}:{body}", body.len()).as_bytes())
            .expect("send to Marionette");
        loop {
            let answer = self.read_message();
            if answer[0] == 1 && answer[1] == id {
                if !answer[2].is_null() {
                    panic!("Marionette {name}: {}", answer[2]);
                }
                return answer[3].clone();
            }
        }
    }
}

impl Browser for Firefox {
    fn go(&self, url: &str) {
        self.cmd("WebDriver:Navigate", json!({ "url": url }));
    }

    fn run(&self, script: &str) -> Value {
        self.cmd(
            "WebDriver:ExecuteScript",
            json!({"script": script, "args": []}),
        )["value"]
            .clone()
    }

    fn pick(&self, files: &[PathBuf]) {
        let input = self.cmd(
            "WebDriver:FindElement",
            json!({"using": "css selector", "value": "#picker"}),
        );
        let id = element_id(&input["value"]);
        self.cmd(
            "WebDriver:ElementSendKeys",
            json!({"id": id, "text": file_keys(files)}),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        decode_png(&self.cmd("WebDriver:TakeScreenshot", json!({"full": false}))["value"])
    }
}

/// A child started as the leader of its own process group; the group is killed on drop.
struct ProcessGroup(Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let pgid = self.0.id();
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pgid}")])
            .status();
        let _ = self.0.wait();
    }
}

fn wait_for(browser: &dyn Browser, limit: Duration, script: &str) -> Value {
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

/// One browser at a time: each is heavy, and the machine may have two cores.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

#[test]
fn in_chromium_three_photos_become_nine_thumbnails_and_a_corrupt_one_shows_its_failure() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let driver = Driver::start();
    let browser = Chromium::open(&driver);
    // The screenshot README shows is refreshed only when asked.
    let shot = std::env::var("PHOTOS_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("oxwork-photos.png"));
    the_photo_page_works_in(&browser, &shot);
}

#[test]
fn in_firefox_three_photos_become_nine_thumbnails_and_a_corrupt_one_shows_its_failure() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let browser = Firefox::open();
    the_photo_page_works_in(
        &browser,
        &std::env::temp_dir().join("oxwork-photos-firefox.png"),
    );
}

/// The page as a person uses it: four photos (JPEG, PNG, WebP, and one turned by EXIF) picked,
/// their twelve thumbnails at the right sizes and the right way up, the panel's done count; a
/// corrupt file's failure on the page. Ends with a screenshot saved at `shot`.
fn the_photo_page_works_in(browser: &dyn Browser, shot: &Path) {
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

    browser.go(&format!("http://127.0.0.1:{port}/"));
    wait_for(
        browser,
        Duration::from_secs(20),
        "return document.getElementById('link').textContent === 'live';",
    );
    // The socket's subprotocol, as the browser agreed it with the server.
    assert_eq!(
        browser.run("return document.getElementById('link').dataset.protocol;"),
        json!("photos.v1")
    );
    // ... and the compression it agreed (the progress below then comes compressed).
    let extensions = browser.run("return document.getElementById('link').dataset.extensions;");
    assert!(
        extensions
            .as_str()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "{extensions}"
    );
    browser.pick(&[jpeg, png, webp]);
    browser.pick(&[turned]);
    // 4 photos with 3 sizes each in the gallery; their sizes as the page lists them.
    let sizes = wait_for(
        browser,
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
        browser,
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
        browser,
        Duration::from_secs(20),
        "const d = document.querySelector('[data-figure=\"done\"] b');
         return d && d.textContent === '4';",
    );
    // A corrupt file: its failure, with the reason, on the page.
    browser.pick(&[corrupt]);
    let failure = wait_for(
        browser,
        Duration::from_secs(30),
        "const f = document.querySelector('#gallery .photo.failed');
         return f && f.querySelector('.meta').textContent;",
    );
    assert!(failure.as_str().unwrap_or("").contains("JPEG"), "{failure}");
    wait_for(
        browser,
        Duration::from_secs(20),
        "const d = document.querySelector('[data-figure=\"failed\"] b');
         return d && d.textContent === '1';",
    );
    let png = browser.screenshot();
    assert!(png.len() > 10_000, "a screenshot of {} bytes", png.len());
    std::fs::write(shot, png).expect("write the screenshot");
    eprintln!("screenshot: {}", shot.display());
}
