//! # oxwork
//!
//! Workerman's multi-process server model, in Rust. Declare [`Worker`]s (a listen URL, a
//! process count, callbacks), call [`run_all`], and get a master process supervising `count`
//! single-threaded worker processes per worker, operated with Workerman's commands:
//! `start`, `start -d`, `stop`, `stop -g`, `restart`, `reload`, `reload -g`, `status`,
//! `connections`.
//!
//! ```no_run
//! use oxwork::{run_all, Worker};
//!
//! fn main() -> oxwork::Result<()> {
//!     let mut w = Worker::new("text://0.0.0.0:8888")?;
//!     w.name("hello").count(4);
//!     w.on_worker_start(|w| println!("Worker {} started", w.id()));
//!     w.on_connect(|c| println!("New connection from {}:{}", c.remote_ip(), c.remote_port()));
//!     w.on_message(|c, data| {
//!         println!("Received message: {data}");
//!         c.send(format!("Hello, {data}!"));
//!     });
//!     run_all()
//! }
//! ```
//!
//! Callbacks run on their process's one thread, so they may share `Rc<RefCell<..>>` state and
//! need not be `Send`. A panic in a callback closes only the connection it was handling.

pub mod bus;
mod error;
/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not part of the API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod os;
mod process;
mod protocol;
mod runtime;
pub mod websocket;

pub use bus::state;
/// The `bytes` crate, re-exported so a custom [`Protocol`] can name `BytesMut` without
/// depending on it separately.
pub use bytes;
pub use error::{Error, ErrorKind, Result};
pub use process::tree_status::{cluster, status};
pub use protocol::{
    BodySource, Deadline, Dynamic, Farewell, Frame, Input, Message, Payload, PeerAddr, Protocol,
    Raw, Rejection, Text, Wire,
};
pub use runtime::connection::{Connection, ConnectionError, Hold};
pub use runtime::outbound::AsyncConnection;
pub use runtime::timer::{IntoInterval, Timer, TimerId};
pub use runtime::worker::Worker;

/// Runs a future on the current process's event loop, beside its connections and timers: for
/// async work (`bus::ask_worker`, `bus::submit`, any tokio-based crate) started from a
/// synchronous callback. The future may hold `Rc` state; it need not be `Send`.
pub fn spawn<F: std::future::Future<Output = ()> + 'static>(fut: F) {
    tokio::task::spawn_local(fut);
}

/// Runs the program: parses the command line (`start`, `stop`, `reload`, `status`, ...) in
/// the process you launched, or becomes the worker process the master started.
///
/// Every process of the tree runs your `main` up to this call, so declare workers before it
/// and do nothing else there that should happen only once. In a worker process this call never
/// returns; in the master it returns when the master stops.
pub fn run_all() -> Result<()> {
    run_all_from(std::env::args_os().skip(1))
}

/// [`run_all`] with the command given explicitly (`["start", "-d"]`), for a program whose own
/// command line has more in it than oxwork's commands.
///
/// Worker processes are started with the program's full original arguments, so the program
/// must reach this call again with them (as it did the first time).
pub fn run_all_from<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    init_logging();
    match std::env::var(process::env::ROLE).as_deref() {
        Ok("worker") => process::worker_main::run(process::worker_main::Role::from_env()?),
        Ok("hub") => process::hub_main::run(),
        _ => process::cli::main(args),
    }
}

/// Logs go to stderr (the log file for a daemon). `OXWORK_LOG` sets the level: error, warn,
/// info (default), debug, trace. A subscriber the program installed itself is left alone.
fn init_logging() {
    let level = std::env::var("OXWORK_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The NATS client narrates every (re)connection and error itself; the bus reports what
    // matters once, in its own words (its event callback, `start`'s check), so the client's
    // own lines show only when debugging.
    let nats_level = if level >= tracing::Level::DEBUG {
        tracing_subscriber::filter::LevelFilter::from_level(level)
    } else {
        tracing_subscriber::filter::LevelFilter::OFF
    };
    let quiet_nats = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("async_nats", nats_level);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .finish()
        .with(quiet_nats)
        .try_init();
}
