//! Scenario i: the photo service (apps/photos) end to end. A batch of photos is uploaded in one
//! form, as a person dropping them would, and timed until the last one's sizes are stored;
//! with a thumbnail pool of 1 process, then 2. The floor is the very same decode, orient,
//! resize and encode loop run in one plain process, one photo after another: the ratio is
//! what oxwork's plumbing (upload, task, bus, result, store, progress) costs, and what a
//! second process buys.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use image::ImageFormat;
use photos::samples::{detailed, encode, upload_form, visitor_cookie};

use crate::pin;

/// Photos per batch, and their size (a phone photo's 12 MP would make the run long on 2 cores).
const BATCH: usize = 24;
const SIDE: (u32, u32) = (1600, 1200);

/// What the scenario measured, in photos per second.
pub struct Figures {
    pub floor: f64,
    pub pool_1: f64,
    pub pool_2: f64,
    /// Photos that did not end done.
    pub failed: u64,
    /// Milliseconds per photo: decoding, and making the three sizes with fast_image_resize
    /// and with the image crate's resize.
    pub decode_ms: f64,
    pub resize_ms_simd: f64,
    pub resize_ms_image: f64,
}

fn batch(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| encode(&detailed(SIDE.0, SIDE.1, i as u8), ImageFormat::Jpeg))
        .collect()
}

/// The floor: one process, one photo after another.
fn floor(images: &[Vec<u8>]) -> Result<f64, String> {
    let start = Instant::now();
    for p in images {
        photos::imaging::process(p, |_| {})?;
    }
    Ok(images.len() as f64 / start.elapsed().as_secs_f64())
}

/// The resize crate, chosen by measure: milliseconds per photo to make the three sizes from a
/// decoded photo with `fast_image_resize` (what the service uses: SIMD convolution) and with
/// the `image` crate's own resize, the same Lanczos3 filter; and to decode one (zune-jpeg
/// through `image`).
fn crate_figures(images: &[Vec<u8>]) -> Result<(f64, f64, f64), String> {
    use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions};
    let start = Instant::now();
    let decoded: Vec<image::RgbaImage> = images
        .iter()
        .map(|b| image::load_from_memory(b).map(|i| i.into_rgba8()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let decode_ms = start.elapsed().as_secs_f64() * 1000.0 / images.len() as f64;
    let sizes =
        |w: u32, h: u32| photos::imaging::SIZES.map(|(_, side)| photos::imaging::fit(w, h, side));
    let start = Instant::now();
    let mut resizer = fast_image_resize::Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    for img in &decoded {
        let (w, h) = img.dimensions();
        let source = Image::from_vec_u8(w, h, img.as_raw().clone(), PixelType::U8x4)
            .map_err(|e| e.to_string())?;
        for (tw, th) in sizes(w, h) {
            let mut target = Image::new(tw, th, PixelType::U8x4);
            resizer
                .resize(&source, &mut target, &options)
                .map_err(|e| e.to_string())?;
        }
    }
    let simd_ms = start.elapsed().as_secs_f64() * 1000.0 / images.len() as f64;
    let start = Instant::now();
    for img in &decoded {
        let (w, h) = img.dimensions();
        for (tw, th) in sizes(w, h) {
            let _ = image::imageops::resize(img, tw, th, image::imageops::FilterType::Lanczos3);
        }
    }
    let plain_ms = start.elapsed().as_secs_f64() * 1000.0 / images.len() as f64;
    Ok((decode_ms, simd_ms, plain_ms))
}

/// The service, as `__serve-photos start`, with a pool of `procs`.
struct Service {
    child: Child,
    run_dir: tempfile::TempDir,
    _data: tempfile::TempDir,
    port: u16,
}

impl Service {
    fn start(procs: usize) -> Result<Service, String> {
        let run_dir = crate::private_tempdir().map_err(|e| e.to_string())?;
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())?;
        // On every core: a pool of 2 is there to use both.
        let child = pin::self_command_on_all_cores(&["__serve-photos".into(), "start".into()])
            .env("OXWORK_RUN_DIR", run_dir.path())
            .env("OXWORK_LOG", "warn")
            .env("PHOTOS_LISTEN", format!("http://127.0.0.1:{port}"))
            .env("PHOTOS_DATA", data.path())
            .env("PHOTOS_WEB_PROCS", "1")
            .env("PHOTOS_THUMB_PROCS", procs.to_string())
            .env("PHOTOS_MAX_FILES", BATCH.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the photo service: {e}"))?;
        let s = Service {
            child,
            run_dir,
            _data: data,
            port,
        };
        // The web process, the pool's and the hub, all answering.
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.ready() != procs + 2 {
            if Instant::now() > deadline {
                return Err("the photo service did not become ready".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    fn ready(&self) -> usize {
        pin::self_command(&["__serve-photos".into(), "status".into()], false)
            .arg("--json")
            .env("OXWORK_RUN_DIR", self.run_dir.path())
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| {
                v["processes"]
                    .as_array()
                    .map(|a| a.iter().filter(|p| p["busy"] == false).count())
            })
            .unwrap_or(0)
    }

    /// One HTTP/1.1 exchange on a new connection; the response's body.
    fn exchange(&self, head: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        c.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
        c.write_all(body).map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).map_err(|e| e.to_string())?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no response head")?;
        Ok(answer[split + 4..].to_vec())
    }

    /// Uploads `photos` in one form and waits until every one has ended: photos per second
    /// from the upload's start to the last one stored, and how many did not end done.
    fn end_to_end(&self, photos: &[Vec<u8>]) -> Result<(f64, u64), String> {
        let names: Vec<String> = (0..photos.len()).map(|i| format!("p{i}.jpg")).collect();
        let files: Vec<(&str, &[u8])> = names
            .iter()
            .zip(photos)
            .map(|(n, p)| (n.as_str(), &p[..]))
            .collect();
        let (content_type, body) = upload_form("tab-oxbench-0001", &files);
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            visitor_cookie(),
            body.len()
        );
        let start = Instant::now();
        self.exchange(&head, &body)?;
        let deadline = start + Duration::from_secs(300);
        loop {
            let list = self.exchange(
                "GET /api/photos HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                b"",
            )?;
            let list: Vec<serde_json::Value> =
                serde_json::from_slice(&list).map_err(|e| e.to_string())?;
            if list.len() == photos.len() && list.iter().all(|p| p["state"] != "queued") {
                let failed = list.iter().filter(|p| p["state"] != "done").count() as u64;
                return Ok((photos.len() as f64 / start.elapsed().as_secs_f64(), failed));
            }
            if Instant::now() > deadline {
                return Err("photos not processed within 300 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = pin::self_command(&["__serve-photos".into(), "stop".into()], false)
            .env("OXWORK_RUN_DIR", self.run_dir.path())
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `smoke`: a small batch, only to prove the scenario runs.
pub fn measure(smoke: bool) -> Result<Figures, String> {
    let photos = batch(if smoke { 4 } else { BATCH });
    let floor = floor(&photos)?;
    let (decode_ms, resize_ms_simd, resize_ms_image) = crate_figures(&photos)?;
    let mut failed = 0;
    let mut rate = |procs: usize| -> Result<f64, String> {
        let service = Service::start(procs)?;
        let (r, f) = service.end_to_end(&photos)?;
        failed += f;
        Ok(r)
    };
    let pool_1 = rate(1)?;
    let pool_2 = rate(2)?;
    Ok(Figures {
        floor,
        pool_1,
        pool_2,
        failed,
        decode_ms,
        resize_ms_simd,
        resize_ms_image,
    })
}
