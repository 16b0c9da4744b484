//! The embedded hub transport: one machine's bus, served by a process the master supervises.
//!
//! - `wire`: the hub's framing, I/O-free and total (docs/wire.md);
//! - `server`: the hub process's socket server, routing, task pools and shared state;
//! - `link`: a worker process's connection to the hub, the [`Transport`](super::transport::Transport).

mod link;
pub(crate) mod server;
pub(crate) mod wire;

pub(crate) use link::HubLink;
pub(crate) use server::start;
pub use server::HubStats;
