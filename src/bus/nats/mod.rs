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

use async_nats::jetstream;

/// The stream `config.name`, made with `config` when missing. Many processes start at once on a
/// fresh server and race to make the same stream; the loser's create fails ("subjects overlap",
/// "already in use") although the stream now exists, so a failed create looks again before it
/// gives up.
pub(super) async fn stream_made(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, String> {
    let mut pause = std::time::Duration::from_millis(20);
    let mut last = String::new();
    for _ in 0..6 {
        if let Ok(s) = js.get_stream(&config.name).await {
            return Ok(s);
        }
        match js.create_stream(config.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    Err(last)
}
