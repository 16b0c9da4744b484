//! The core runtime of one process: what Workerman's `Worker.php`, `Connection/` and
//! `Timer.php` are. A worker group's settings and callbacks (`worker`), the declared groups
//! in order (`registry`), accepting (`server`) and connecting out (`outbound`), the one
//! connection loop (`driver`) and the connection handle callbacks get (`connection`), timers,
//! listeners, TLS configuration, URL parsing, per-process counters (`stats`) and the panic
//! guard every callback runs under (`guard`).
//!
//! The runtime knows protocols only through the `Protocol` trait, and the bus only as a
//! user of it: the bus hears of closed connections through `server::on_connection_closed`.

pub(crate) mod balance;
pub(crate) mod connection;
pub(crate) mod cpu_share;
pub(crate) mod driver;
pub(crate) mod guard;
pub(crate) mod listener;
pub(crate) mod moving;
pub(crate) mod outbound;
pub(crate) mod proxy_protocol;
pub(crate) mod registry;
pub(crate) mod server;
pub(crate) mod stats;
pub(crate) mod timer;
pub(crate) mod tls;
pub(crate) mod url;
pub(crate) mod worker;
