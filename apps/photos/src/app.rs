//! The service's workers: the `web` group and the `thumbs` pool, set up from the environment.
//!
//! Settings (environment): `PHOTOS_LISTEN` (default `http://127.0.0.1:8080`), `PHOTOS_DATA`
//! (where photos are kept; default `./photos-data`), `PHOTOS_PUBLIC_URL` (the web group's
//! address as other nodes reach it; default the listen address), `PHOTOS_WEB_PROCS` (2),
//! `PHOTOS_THUMB_PROCS` (2), `PHOTOS_MAX_FILE_MB` (25), `PHOTOS_MAX_FILES` (20).
//! For tests only: `PHOTOS_PANIC_ON` (a file name whose decoding panics, to show that a
//! decoder's panic costs its task and nothing else).

use std::rc::Rc;
use std::time::Duration;

use crate::{store, thumbs, web};
use oxwork::{run_all_from, Worker};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Declares the service's workers from the environment and runs the program's command line
/// (`start`, `stop`, `status`, ...), as [`oxwork::run_all`] does.
pub fn run() -> oxwork::Result<()> {
    run_from(std::env::args_os().skip(1))
}

/// [`run`] with the command line given (the benchmark harness runs the service as a role of
/// its own binary).
pub fn run_from<I, T>(args: I) -> oxwork::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let listen = std::env::var("PHOTOS_LISTEN").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let data = std::env::var("PHOTOS_DATA").unwrap_or_else(|_| "photos-data".into());
    let settings = web::Settings {
        max_file: env_num("PHOTOS_MAX_FILE_MB", 25) * 1024 * 1024,
        max_files: env_num("PHOTOS_MAX_FILES", 20),
        task_timeout: Duration::from_secs(120),
        public_url: std::env::var("PHOTOS_PUBLIC_URL")
            .unwrap_or_else(|_| listen.replace("0.0.0.0", "127.0.0.1"))
            .trim_end_matches('/')
            .to_string(),
    };

    let mut web = Worker::http(&listen)?;
    web.name("web")
        .count(env_num("PHOTOS_WEB_PROCS", 2) as u32)
        .gateway(true)
        // The whole form: every file at its limit, and room for the boundaries.
        .max_package_size(settings.max_files * settings.max_file + 1024 * 1024);
    let mut socket = Worker::websocket_route();
    // Browsers offer permessage-deflate; the progress messages are JSON and shrink with it.
    socket
        .deflate(oxwork::websocket::DeflateSettings::default())
        .on_websocket_connect(web::on_socket_handshake)
        .on_message(web::on_socket_message);
    web.websocket_path("/ws", &socket);
    let shared: Option<web::Shared> = match store::Store::open(&data) {
        Ok(store) => Some(Rc::new((store, settings))),
        Err(e) => {
            eprintln!("cannot use {data} for photos: {e}");
            None
        }
    };
    let Some(shared) = shared else {
        std::process::exit(1);
    };
    web.on_message(move |c, req| {
        if req.path() == "/api/status" {
            let c = c.clone();
            oxwork::spawn(async move {
                c.send(web::status_panel().await);
            });
            return;
        }
        let (store, settings) = &*shared;
        c.send(web::handle(store, settings, &req));
    });

    let mut pool = Worker::without_address();
    pool.name(web::POOL)
        .count(env_num("PHOTOS_THUMB_PROCS", 2) as u32)
        .task_concurrency(1);
    pool.on_task_async(thumbs::run);

    run_all_from(args)
}
