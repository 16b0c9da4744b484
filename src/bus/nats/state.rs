//! Shared state on NATS: a JetStream key-value bucket (`oxwork`, history 1), read and written
//! through its stream so that every operation is atomic by the stream's per-key sequence
//! (`Nats-Expected-Last-Subject-Sequence`): compare-and-set, increment and delete re-read and
//! retry when another process wrote the key in between.
//!
//! Any NATS KV client sees the values. An expiry is the header `Ox-Expires` (milliseconds since
//! the Unix epoch); a key past it reads as absent (server 2.9 has no per-key TTL), and it stays
//! stored until it is written or deleted again.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishErrorKind, stream::LastRawMessageErrorKind};
use bytes::Bytes;

use super::link::NatsLink;
use crate::bus::transport::{KvOp, KvResult};
use crate::bus::BusError;

/// The bucket's name; its stream is `KV_oxwork`.
pub(crate) const BUCKET: &str = "oxwork";
const EXPIRES_HEADER: &str = "Ox-Expires";
const OPERATION_HEADER: &str = "KV-Operation";
const EXPECTED_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// Attempts of one read-modify-write before giving up under contention.
const MAX_ATTEMPTS: usize = 1000;

/// A key as a KV key (`[-/_=.A-Za-z0-9]`, no leading or trailing dot); any other key, and any
/// key starting with `=`, becomes `=` followed by its bytes in hex.
pub(crate) fn kv_key(key: &str) -> String {
    let plain = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.starts_with('=')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b));
    if plain {
        return key.to_string();
    }
    crate::bus::subject::hex_escaped('=', key)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The stored entry of a key: its sequence (0: never written) and its live value and expiry.
struct Current {
    sequence: u64,
    value: Option<Bytes>,
    expires_ms: Option<u64>,
}

fn state_error(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::State(format!("{what}: {e}"))
}

async fn bucket(link: &NatsLink) -> Result<jetstream::stream::Stream, BusError> {
    if let Some(s) = link.inner.kv_stream.borrow().clone() {
        return Ok(s);
    }
    let js = jetstream::new(link.client().await);
    // The stream a KV bucket is made of (as `nats kv add oxwork --history 1` makes it),
    // created directly: the client's bucket call expects a newer server's answer.
    let config = jetstream::stream::Config {
        name: format!("KV_{BUCKET}"),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        storage: jetstream::stream::StorageType::File,
        num_replicas: link.replicas().await,
        ..Default::default()
    };
    let stream = super::replicated_stream(&js, config)
        .await
        .map_err(|e| state_error("cannot set up the shared-state bucket", e))?;
    *link.inner.kv_stream.borrow_mut() = Some(stream.clone());
    Ok(stream)
}

fn subject(key: &str) -> String {
    format!("$KV.{BUCKET}.{}", kv_key(key))
}

async fn current(stream: &jetstream::stream::Stream, key: &str) -> Result<Current, BusError> {
    current_at(stream, &subject(key), key).await
}

/// The stored entry at the bucket's subject `at` (of `key`, named in errors).
async fn current_at(
    stream: &jetstream::stream::Stream,
    at: &str,
    key: &str,
) -> Result<Current, BusError> {
    match stream.get_last_raw_message_by_subject(at).await {
        Ok(m) => {
            let deleted = m
                .headers
                .get(OPERATION_HEADER)
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            let expires_ms = m
                .headers
                .get(EXPIRES_HEADER)
                .and_then(|v| v.as_str().parse::<u64>().ok());
            let expired = expires_ms.is_some_and(|t| t <= now_ms());
            Ok(Current {
                sequence: m.sequence,
                value: (!deleted && !expired).then_some(m.payload),
                expires_ms: expires_ms.filter(|_| !deleted && !expired),
            })
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Current {
            sequence: 0,
            value: None,
            expires_ms: None,
        }),
        Err(e) => Err(state_error(&format!("cannot read {key}"), e)),
    }
}

/// The integer at `key`, read with any JetStream context (for `status`).
pub(crate) async fn read_number(js: &jetstream::Context, key: &str) -> Option<i64> {
    let stream = js.get_stream(format!("KV_{BUCKET}")).await.ok()?;
    let value = current(&stream, key).await.ok()?.value?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Writes `value` to `key`; with `expected`, only if the key's last sequence is still that.
/// `Ok(false)`: somebody else wrote it first.
async fn write(
    link: &NatsLink,
    key: &str,
    value: Bytes,
    expires_ms: Option<u64>,
    delete: bool,
    expected: Option<u64>,
) -> Result<bool, BusError> {
    let js = jetstream::new(link.client().await);
    let mut headers = async_nats::HeaderMap::new();
    if let Some(t) = expires_ms {
        headers.insert(EXPIRES_HEADER, t.to_string().as_str());
    }
    if delete {
        headers.insert(OPERATION_HEADER, "DEL");
    }
    if let Some(seq) = expected {
        headers.insert(EXPECTED_SEQUENCE, seq.to_string().as_str());
    }
    let ack = js
        .publish_with_headers(subject(key), headers, value)
        .await
        .map_err(|e| state_error(&format!("cannot write {key}"), e))?;
    match ack.await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
        Err(e) => Err(state_error(&format!("cannot write {key}"), e)),
    }
}

fn expiry(ttl_ms: u64) -> Option<u64> {
    (ttl_ms > 0).then(|| now_ms().saturating_add(ttl_ms))
}

/// Carries out one shared-state operation with the hub's semantics.
pub(crate) async fn run(link: &NatsLink, op: KvOp) -> Result<KvResult, BusError> {
    let stream = bucket(link).await?;
    match op {
        KvOp::Get { key } => Ok(KvResult::Value(current(&stream, &key).await?.value)),
        KvOp::Set { key, value, ttl_ms } => {
            write(link, &key, value, expiry(ttl_ms), false, None).await?;
            Ok(KvResult::Done(true))
        }
        KvOp::Cas {
            key,
            expected,
            value,
            ttl_ms,
        } => {
            for _ in 0..MAX_ATTEMPTS {
                let now = current(&stream, &key).await?;
                if now.value != expected {
                    return Ok(KvResult::Done(false));
                }
                let written = write(
                    link,
                    &key,
                    value.clone(),
                    expiry(ttl_ms),
                    false,
                    Some(now.sequence),
                )
                .await?;
                if written {
                    return Ok(KvResult::Done(true));
                }
            }
            Err(contended(&key))
        }
        KvOp::Incr { key, by, ttl_ms } => {
            for _ in 0..MAX_ATTEMPTS {
                let now = current(&stream, &key).await?;
                let n = match &now.value {
                    None => 0,
                    Some(v) => match std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => {
                            return Ok(KvResult::Error(format!("{key} does not hold an integer")))
                        }
                    },
                };
                let Some(next) = n.checked_add(by) else {
                    return Ok(KvResult::Error(format!("{key} would overflow")));
                };
                let expires = if ttl_ms == 0 {
                    now.expires_ms
                } else {
                    expiry(ttl_ms)
                };
                let value = Bytes::from(next.to_string());
                if write(link, &key, value, expires, false, Some(now.sequence)).await? {
                    return Ok(KvResult::Number(next));
                }
            }
            Err(contended(&key))
        }
        KvOp::Delete { key } => {
            for _ in 0..MAX_ATTEMPTS {
                let now = current(&stream, &key).await?;
                if now.value.is_none() {
                    return Ok(KvResult::Done(false));
                }
                if write(link, &key, Bytes::new(), None, true, Some(now.sequence)).await? {
                    return Ok(KvResult::Done(true));
                }
            }
            Err(contended(&key))
        }
    }
}

/// Every live entry whose key starts with `prefix` (which must end with `.`), as key and value:
/// the bucket's subjects under the prefix, each read as `get` would.
pub(crate) async fn entries_under(
    link: &NatsLink,
    prefix: &str,
) -> Result<Vec<(String, Bytes)>, BusError> {
    use futures_util::StreamExt as _;
    let stream = bucket(link).await?;
    let head = format!("$KV.{BUCKET}.");
    let mut subjects = stream
        .info_with_subjects(format!("{head}{prefix}>"))
        .await
        .map_err(|e| state_error(&format!("cannot list {prefix}"), e))?;
    let mut found = Vec::new();
    while let Some(entry) = subjects.next().await {
        let (subject, _) = entry.map_err(|e| state_error(&format!("cannot list {prefix}"), e))?;
        found.push(subject);
    }
    let mut out = Vec::with_capacity(found.len());
    for subject in found {
        let Some(key) = subject.strip_prefix(&head) else {
            continue;
        };
        if let Some(value) = current_at(&stream, &subject, key).await?.value {
            out.push((key.to_string(), value));
        }
    }
    Ok(out)
}

fn contended(key: &str) -> BusError {
    BusError::State(format!(
        "{key}: written by others {MAX_ATTEMPTS} times in a row; gave up"
    ))
}

#[cfg(test)]
mod tests {
    use super::kv_key;

    #[test]
    fn plain_keys_stay_and_others_are_escaped() {
        assert_eq!(kv_key("users.42"), "users.42");
        assert_eq!(kv_key("a b"), "=612062");
        assert_eq!(kv_key("=x"), "=3d78");
        assert_eq!(kv_key(".a"), "=2e61");
        assert_eq!(kv_key(""), "=");
    }
}
