//! The embedded hub transport: one machine's bus, served by a process the master supervises.
//!
//! - `wire`: the hub's framing, I/O-free and total (docs/wire.md);
//! - `server`: the hub process's socket server and the glue between its parts:
//!   - `peer`: a connected process, its bounded output and subscriptions;
//!   - `router`: subscriptions, wildcard matching, queue groups;
//!   - `pools`: task pools, dispatch, requeueing, bounds;
//!   - `state`: shared state with expiry;
//! - `link`: a worker process's connection to the hub, the [`Transport`](super::transport::Transport).

mod link;
mod peer;
mod pools;
mod router;
pub(crate) mod server;
mod state;
pub(crate) mod wire;

pub(crate) use link::HubLink;
pub(crate) use server::start;
pub(crate) use server::HubStats;
