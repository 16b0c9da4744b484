//! Shared state across every process (Workerman's GlobalData): get, set, compare-and-set,
//! increment and delete, each atomic, with an optional expiry. Held by the hub, or on NATS in
//! the `oxwork` JetStream KV bucket.
//!
//! The free functions use the current worker process's bus; the same operations are methods
//! of any [`Bus`] connection.

use std::time::Duration;

use bytes::Bytes;

use super::local::bus;
use super::transport::{KvOp, KvResult};
use super::Bus;
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
    bus()?.get(key).await
}

/// Sets `key` to `value`, expiring after `ttl` if given.
pub async fn set(
    key: &str,
    value: impl Into<Bytes>,
    ttl: Option<Duration>,
) -> Result<(), BusError> {
    bus()?.set(key, value, ttl).await
}

/// Sets `key` to `value` only if it currently holds `expected` (`None`: only if absent).
/// Returns whether it did.
pub async fn compare_and_set(
    key: &str,
    expected: Option<&[u8]>,
    value: impl Into<Bytes>,
    ttl: Option<Duration>,
) -> Result<bool, BusError> {
    bus()?.compare_and_set(key, expected, value, ttl).await
}

/// Adds `by` to the integer at `key` (absent counts as 0) and returns the new value. A `ttl`
/// sets the expiry; without one, an existing expiry is kept.
pub async fn increment(key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, BusError> {
    bus()?.increment(key, by, ttl).await
}

/// Removes `key`; returns whether it existed.
pub async fn delete(key: &str) -> Result<bool, BusError> {
    bus()?.delete(key).await
}

impl Bus {
    /// Shared state: the value of `key`, if set and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BusError> {
        match self
            .kv(KvOp::Get { key: key.into() }, STATE_TIMEOUT)
            .await?
        {
            KvResult::Value(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    /// Shared state: sets `key`, expiring after `ttl` if given.
    pub async fn set(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<(), BusError> {
        let op = KvOp::Set {
            key: key.into(),
            value: value.into(),
            ttl_ms: ttl_ms(ttl),
        };
        match self.kv(op, STATE_TIMEOUT).await? {
            KvResult::Done(_) => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Shared state: sets `key` only if it holds `expected` (`None`: only if absent).
    pub async fn compare_and_set(
        &self,
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
        match self.kv(op, STATE_TIMEOUT).await? {
            KvResult::Done(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    /// Shared state: adds `by` to the integer at `key` and returns the new value.
    pub async fn increment(
        &self,
        key: &str,
        by: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, BusError> {
        let op = KvOp::Incr {
            key: key.into(),
            by,
            ttl_ms: ttl_ms(ttl),
        };
        match self.kv(op, STATE_TIMEOUT).await? {
            KvResult::Number(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    /// Shared state: removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, BusError> {
        match self
            .kv(KvOp::Delete { key: key.into() }, STATE_TIMEOUT)
            .await?
        {
            KvResult::Done(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }
}
