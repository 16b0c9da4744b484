//! Photos: the seed article's upload pipeline as a real service. A `web` group serves a page
//! where people drop images; each upload becomes a task of the `thumbs` pool, whose processes
//! decode, orient, resize and encode three sizes; every step is pushed to the uploader's tab
//! over its WebSocket by client routing.
//!
//! Run: `cargo run --release -p photos -- start`, then open http://127.0.0.1:8080/.
//!
//! Settings (environment): `PHOTOS_LISTEN` (default `http://127.0.0.1:8080`), `PHOTOS_DATA`
//! (where photos are kept; default `./photos-data`), `PHOTOS_PUBLIC_URL` (the web group's
//! address as other nodes reach it; default the listen address), `PHOTOS_WEB_PROCS` (2),
//! `PHOTOS_THUMB_PROCS` (2), `PHOTOS_MAX_FILE_MB` (25), `PHOTOS_MAX_FILES` (20).

fn main() -> oxwork::Result<()> {
    photos::app::run()
}
