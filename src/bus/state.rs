//! Shared state across every process (Workerman's GlobalData): get, set, compare-and-set,
//! increment and delete, each atomic, with an optional expiry. Held by the hub.

use std::time::Duration;

use bytes::Bytes;

use super::local::bus;
use super::wire::{KvOp, KvResult};
use super::BusError;

/// How long a shared-state call waits for the hub.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map(|t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

fn unexpected(r: KvResult) -> BusError {
    BusError::State(format!("unexpected answer {r:?}"))
}

/// The value of `key`, if set and not expired.
pub async fn get(key: &str) -> Result<Option<Bytes>, BusError> {
    match bus()?
        .kv(KvOp::Get { key: key.into() }, STATE_TIMEOUT)
        .await?
    {
        KvResult::Value(v) => Ok(v),
        r => Err(unexpected(r)),
    }
}

/// Sets `key` to `value`, expiring after `ttl` if given.
pub async fn set(
    key: &str,
    value: impl Into<Bytes>,
    ttl: Option<Duration>,
) -> Result<(), BusError> {
    let op = KvOp::Set {
        key: key.into(),
        value: value.into(),
        ttl_ms: ttl_ms(ttl),
    };
    match bus()?.kv(op, STATE_TIMEOUT).await? {
        KvResult::Done(_) => Ok(()),
        r => Err(unexpected(r)),
    }
}

/// Sets `key` to `value` only if it currently holds `expected` (`None`: only if absent).
/// Returns whether it did.
pub async fn compare_and_set(
    key: &str,
    expected: Option<&[u8]>,
    value: impl Into<Bytes>,
    ttl: Option<Duration>,
) -> Result<bool, BusError> {
    let op = KvOp::Cas {
        key: key.into(),
        expected: expected.map(Bytes::copy_from_slice),
        value: value.into(),
        ttl_ms: ttl_ms(ttl),
    };
    match bus()?.kv(op, STATE_TIMEOUT).await? {
        KvResult::Done(b) => Ok(b),
        r => Err(unexpected(r)),
    }
}

/// Adds `by` to the integer at `key` (absent counts as 0) and returns the new value. A `ttl`
/// sets the expiry; without one, an existing expiry is kept.
pub async fn increment(key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, BusError> {
    let op = KvOp::Incr {
        key: key.into(),
        by,
        ttl_ms: ttl_ms(ttl),
    };
    match bus()?.kv(op, STATE_TIMEOUT).await? {
        KvResult::Number(n) => Ok(n),
        r => Err(unexpected(r)),
    }
}

/// Removes `key`; returns whether it existed.
pub async fn delete(key: &str) -> Result<bool, BusError> {
    match bus()?
        .kv(KvOp::Delete { key: key.into() }, STATE_TIMEOUT)
        .await?
    {
        KvResult::Done(b) => Ok(b),
        r => Err(unexpected(r)),
    }
}
