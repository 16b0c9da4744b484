//! The NATS transport: the bus across machines, on a real NATS server with JetStream.
//!
//! - `link`: the connection, an ordered bounded command queue in front of `async-nats`, the
//!   [`Transport`](super::transport::Transport);
//! - `state`: shared state on the `oxwork` JetStream KV bucket;
//! - `tasks`: durable task pools on JetStream work-queue streams.
//!
//! Every stream (task queues, dead letters, the shared-state bucket) is made with the replica
//! count of [`NatsLink::replicas`]: the operator's `OXWORK_BUS_REPLICAS`, else the cluster's
//! size up to 3. A stream found with fewer replicas is reported and raised.

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

/// [`stream_made`] with `config.num_replicas` honoured on an existing stream too: one made
/// earlier with fewer replicas is reported at the default log level and raised (JetStream
/// places the new copies); if it cannot be raised it is used as it is, and the log says so.
pub(super) async fn replicated_stream(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, String> {
    let mut stream = stream_made(js, config.clone()).await?;
    let wanted = config.num_replicas.max(1);
    let existing = match stream.info().await {
        Ok(info) => info.config.clone(),
        Err(e) => return Err(e.to_string()),
    };
    let has = existing.num_replicas.max(1);
    if has < wanted {
        let name = config.name.clone();
        let raised = jetstream::stream::Config {
            num_replicas: wanted,
            ..existing
        };
        match js.update_stream(raised).await {
            Ok(_) => tracing::warn!(
                "stream {name} had {has} replica(s), {wanted} wanted: raised to {wanted}"
            ),
            Err(e) => tracing::warn!(
                "stream {name} has {has} replica(s), {wanted} wanted, and could not be raised \
                 ({e}): a server loss can stop or lose it"
            ),
        }
        stream = stream_made(js, config).await?;
    }
    Ok(stream)
}
