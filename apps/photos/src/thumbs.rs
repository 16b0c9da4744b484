//! The thumbnail pool's handler: decode, orient, resize and encode on a blocking thread (the
//! process's event loop stays free to renew the task's lease and answer `status`), telling the
//! uploader's tab when it starts and as each size is made.

use std::time::Instant;

use bytes::Bytes;
use oxwork::bus::{self, Task};
use serde_json::json;

use crate::imaging;
use crate::job::{self, Made, SizeMade};

/// Who this process is, as the page shows it: "NODE/pid PID".
pub fn me() -> String {
    let node = std::env::var("OXWORK_NODE").unwrap_or_else(|_| "local".into());
    format!("{node}/pid {}", std::process::id())
}

fn tell(tab: &str, event: serde_json::Value) {
    if let Err(e) = bus::send_to_uid(tab, event.to_string()) {
        // The tab may have closed; the photo's record still says how it ended.
        eprintln!("progress for tab {tab} not sent: {e}");
    }
}

/// What a task fails with when the decoder panicked.
const PANICKED: &str = "the image decoder crashed on this file";

/// Whether decoding the photo called `name` is to panic (`PHOTOS_PANIC_ON`, for tests: no
/// decoder we use is known to panic on any input, and the guard must still be shown to work).
fn panic_wanted(name: &str) -> bool {
    std::env::var("PHOTOS_PANIC_ON").is_ok_and(|n| !n.is_empty() && n == name)
}

/// The largest original fetched (the web group's own limit is lower).
const MAX_FETCH: u64 = 256 * 1024 * 1024;

/// Fetches an original too large for its task from the web node that holds it. An error is
/// worth a retry (the web node restarting, say): the task fails, and its submitter sees why.
fn fetch_original(url: &str) -> Result<Bytes, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let mut answer = agent
        .get(url)
        .call()
        .map_err(|e| format!("could not fetch the original from the web node: {e}"))?;
    let bytes = answer
        .body_mut()
        .with_config()
        .limit(MAX_FETCH)
        .read_to_vec()
        .map_err(|e| format!("could not read the original from the web node: {e}"))?;
    Ok(Bytes::from(bytes))
}

/// Runs one task.
pub async fn run(task: Task) -> Result<Bytes, String> {
    let (job, image) = job::decode_job(&task.payload)?;
    let by = me();
    tell(
        &job.tab,
        json!({"type": "started", "id": job.id, "by": by, "attempt": task.attempt}),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u32, u32)>();
    let started = Instant::now();
    let fetch = job.fetch.clone();
    let panic_on_purpose = panic_wanted(&job.name);
    let work = tokio::task::spawn_blocking(move || {
        let image = match fetch {
            Some(url) => fetch_original(&url)?,
            None => image,
        };
        if panic_on_purpose {
            panic!("decoding panicked on purpose (PHOTOS_PANIC_ON)");
        }
        imaging::process(&image, |t| {
            let _ = tx.send((t.size.to_string(), t.width, t.height));
        })
    });
    let forward = {
        let (tab, id) = (job.tab.clone(), job.id.clone());
        async move {
            while let Some((size, w, h)) = rx.recv().await {
                tell(
                    &tab,
                    json!({"type": "size", "id": id, "size": size, "width": w, "height": h}),
                );
            }
        }
    };
    let (outcome, ()) = tokio::join!(work, forward);
    let processed = match outcome {
        Ok(result) => result?,
        // The decoder's thread panicked: the panic goes on to oxwork's guard around this
        // handler, which counts it (`panics` in `status` and on the page) and fails this task
        // with the message; the process and its other tasks carry on.
        Err(e) => match e.try_into_panic() {
            Ok(payload) => {
                let detail = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                std::panic::resume_unwind(Box::new(format!("{PANICKED} ({detail})")));
            }
            Err(e) => return Err(format!("the image work was stopped: {e}")),
        },
    };
    let made = Made {
        format: processed.format.into(),
        width: processed.width,
        height: processed.height,
        sizes: processed
            .thumbnails
            .iter()
            .map(|t| SizeMade {
                size: t.size.into(),
                width: t.width,
                height: t.height,
                len: t.jpeg.len(),
            })
            .collect(),
        by,
        millis: started.elapsed().as_millis() as u64,
    };
    let jpegs: Vec<&[u8]> = processed.thumbnails.iter().map(|t| &t.jpeg[..]).collect();
    Ok(job::encode_made(&made, &jpegs))
}
