//! The hub's shared state (GlobalData): a map of keys to values with optional expiry, each
//! operation atomic because the hub runs one at a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::bus::transport::{KvOp, KvResult};

struct Entry {
    value: Bytes,
    expires: Option<Instant>,
}

/// Every key the hub holds.
#[derive(Default)]
pub(super) struct Store {
    map: HashMap<String, Entry>,
}

impl Store {
    /// Carries out `op` as of `now`.
    pub(super) fn apply(&mut self, op: KvOp, now: Instant) -> KvResult {
        let expiry = |ttl_ms: u64| (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms));
        let live = |map: &HashMap<String, Entry>, key: &str| -> Option<Bytes> {
            map.get(key)
                .filter(|e| e.expires.is_none_or(|t| t > now))
                .map(|e| e.value.clone())
        };
        let map = &mut self.map;
        match op {
            KvOp::Get { key } => KvResult::Value(live(map, &key)),
            KvOp::Set { key, value, ttl_ms } => {
                let expires = expiry(ttl_ms);
                map.insert(key, Entry { value, expires });
                KvResult::Done(true)
            }
            KvOp::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => {
                let written = live(map, &key) == expected;
                if written {
                    let expires = expiry(ttl_ms);
                    map.insert(key, Entry { value, expires });
                }
                KvResult::Done(written)
            }
            KvOp::Incr { key, by, ttl_ms } => {
                let current = match live(map, &key) {
                    None => 0,
                    Some(v) => match std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return KvResult::Error(format!("{key} does not hold an integer")),
                    },
                };
                let Some(next) = current.checked_add(by) else {
                    return KvResult::Error(format!("{key} would overflow"));
                };
                // Without a new expiry an increment keeps the key's.
                let expires = match map.get(&key) {
                    Some(e) if ttl_ms == 0 && e.expires.is_none_or(|t| t > now) => e.expires,
                    _ => expiry(ttl_ms),
                };
                map.insert(
                    key,
                    Entry {
                        value: Bytes::from(next.to_string()),
                        expires,
                    },
                );
                KvResult::Number(next)
            }
            KvOp::Delete { key } => {
                let was_live = live(map, &key).is_some();
                map.remove(&key);
                KvResult::Done(was_live)
            }
        }
    }

    /// Forgets keys past their expiry.
    pub(super) fn sweep(&mut self, now: Instant) {
        self.map.retain(|_, e| e.expires.is_none_or(|t| t > now));
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(s: &mut Store, key: &str, now: Instant) -> Option<Bytes> {
        match s.apply(KvOp::Get { key: key.into() }, now) {
            KvResult::Value(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn set(key: &str, value: &'static str, ttl_ms: u64) -> KvOp {
        KvOp::Set {
            key: key.into(),
            value: Bytes::from_static(value.as_bytes()),
            ttl_ms,
        }
    }

    #[test]
    fn set_get_and_delete() {
        let (mut s, now) = (Store::default(), Instant::now());
        assert_eq!(get(&mut s, "k", now), None);
        assert_eq!(s.apply(set("k", "v", 0), now), KvResult::Done(true));
        assert_eq!(get(&mut s, "k", now).as_deref(), Some(&b"v"[..]));
        assert_eq!(
            s.apply(KvOp::Delete { key: "k".into() }, now),
            KvResult::Done(true)
        );
        assert_eq!(
            s.apply(KvOp::Delete { key: "k".into() }, now),
            KvResult::Done(false)
        );
    }

    #[test]
    fn compare_and_set_writes_only_over_the_expected_value() {
        let (mut s, now) = (Store::default(), Instant::now());
        let cas = |expected: Option<&'static str>, value: &'static str| KvOp::Cas {
            key: "k".into(),
            expected: expected.map(|e| Bytes::from_static(e.as_bytes())),
            value: Bytes::from_static(value.as_bytes()),
            ttl_ms: 0,
        };
        assert_eq!(s.apply(cas(None, "a"), now), KvResult::Done(true));
        assert_eq!(s.apply(cas(None, "b"), now), KvResult::Done(false));
        assert_eq!(s.apply(cas(Some("x"), "b"), now), KvResult::Done(false));
        assert_eq!(s.apply(cas(Some("a"), "b"), now), KvResult::Done(true));
        assert_eq!(get(&mut s, "k", now).as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn increments_count_refuse_text_and_overflow_and_keep_the_expiry() {
        let (mut s, now) = (Store::default(), Instant::now());
        let incr = |by: i64, ttl_ms: u64| KvOp::Incr {
            key: "n".into(),
            by,
            ttl_ms,
        };
        assert_eq!(s.apply(incr(2, 1000), now), KvResult::Number(2));
        assert_eq!(s.apply(incr(3, 0), now), KvResult::Number(5));
        let later = now + Duration::from_millis(1500);
        assert_eq!(get(&mut s, "n", later), None, "the first expiry held");
        assert_eq!(
            s.apply(incr(i64::MAX - 5, 0), now),
            KvResult::Number(i64::MAX)
        );
        assert!(matches!(s.apply(incr(1, 0), now), KvResult::Error(_)));
        s.apply(set("t", "text", 0), now);
        assert!(matches!(
            s.apply(
                KvOp::Incr {
                    key: "t".into(),
                    by: 1,
                    ttl_ms: 0
                },
                now
            ),
            KvResult::Error(_)
        ));
    }

    #[test]
    fn expired_keys_read_as_absent_and_are_swept() {
        let (mut s, now) = (Store::default(), Instant::now());
        s.apply(set("short", "v", 100), now);
        s.apply(set("long", "v", 0), now);
        let later = now + Duration::from_millis(200);
        assert_eq!(get(&mut s, "short", later), None);
        assert_eq!(s.len(), 2);
        s.sweep(later);
        assert_eq!(s.len(), 1);
    }
}
