//! The NATS transport: the bus across machines, on a real NATS server with JetStream.
//!
//! - `link`: the connection, an ordered bounded command queue in front of `async-nats`, the
//!   [`Transport`](super::transport::Transport);
//! - `state`: shared state on the `oxwork` JetStream KV bucket;
//! - `tasks`: durable task pools on JetStream work-queue streams.

mod link;
mod state;
mod tasks;

pub(crate) use link::NatsLink;
