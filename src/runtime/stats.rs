//! Per-process counters that `status` reports. One set per process, on its one thread.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

/// Live counters of this process.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: Cell<u64>,
    pub(crate) total_connections: Cell<u64>,
    pub(crate) messages: Cell<u64>,
    pub(crate) failed_sends: Cell<u64>,
    pub(crate) panics: Cell<u64>,
    pub(crate) timers: Cell<u64>,
    pub(crate) rejected: Cell<u64>,
    pub(crate) tasks_done: Cell<u64>,
    pub(crate) tasks_failed: Cell<u64>,
    pub(crate) moved_in: Cell<u64>,
    pub(crate) handoff_max_us: Cell<u64>,
    pub(crate) handoff_total_us: Cell<u64>,
    pub(crate) bytes_in: Cell<u64>,
    pub(crate) bytes_out: Cell<u64>,
    /// Messages per second as last worked out, and the reading it was worked out from.
    pub(crate) rate: Cell<u64>,
    pub(crate) rate_mark: Cell<Option<(std::time::Instant, u64)>>,
}

/// Starts the messages-per-second reckoning at the process's start (call once, early).
pub(crate) fn start_rate() {
    with(|c| {
        c.rate_mark
            .set(Some((std::time::Instant::now(), c.messages.get())))
    });
}

/// Messages per second since the last reading at least a second old (since the start for the
/// first reading): a `status -d` refreshing every second sees the last second's rate.
fn messages_per_sec(c: &Counters) -> u64 {
    let now = std::time::Instant::now();
    let messages = c.messages.get();
    match c.rate_mark.get() {
        Some((at, then)) => {
            let elapsed = now.duration_since(at).as_secs_f64();
            if elapsed >= 1.0 {
                c.rate
                    .set((messages.saturating_sub(then) as f64 / elapsed).round() as u64);
                c.rate_mark.set(Some((now, messages)));
            }
        }
        None => c.rate_mark.set(Some((now, messages))),
    }
    c.rate.get()
}

/// A connection moved in after `took` from its departure in the old process.
pub(crate) fn moved_in(took: std::time::Duration) {
    let us = took.as_micros() as u64;
    with(|c| {
        bump(&c.moved_in);
        c.handoff_max_us.set(c.handoff_max_us.get().max(us));
        c.handoff_total_us
            .set(c.handoff_total_us.get().saturating_add(us));
    });
}

thread_local! {
    static COUNTERS: Counters = Counters::default();
}

/// Runs `f` with this process's counters.
pub(crate) fn with<R>(f: impl FnOnce(&Counters) -> R) -> R {
    COUNTERS.with(f)
}

/// Adds `n` bytes read (`input`) or written to the process's totals.
pub(crate) fn add_bytes(input: bool, n: usize) {
    with(|c| {
        let cell = if input { &c.bytes_in } else { &c.bytes_out };
        cell.set(cell.get().wrapping_add(n as u64));
    });
}

pub(crate) fn bump(cell: &Cell<u64>) {
    cell.set(cell.get().wrapping_add(1));
}

pub(crate) fn drop_one(cell: &Cell<u64>) {
    cell.set(cell.get().saturating_sub(1));
}

/// A copy of the counters, as sent to the master for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted or opened since the process started.
    pub total_connections: u64,
    /// Messages received and handed to `on_message`.
    pub messages: u64,
    /// `send` calls refused because the send buffer was full or the connection closed.
    pub failed_sends: u64,
    /// Panics caught in callbacks.
    pub panics: u64,
    /// Timers active now.
    pub timers: u64,
    /// Connections closed because their input was refused (bad or oversized packages).
    pub rejected: u64,
    /// Tasks this process completed successfully (a pool process).
    #[serde(default)]
    pub tasks_done: u64,
    /// Tasks this process completed with an error.
    #[serde(default)]
    pub tasks_failed: u64,
    /// Connections handed to this process by the one it replaced (live hand-off).
    #[serde(default)]
    pub moved_in: u64,
    /// The longest a connection took from leaving the old process to being served here (us).
    #[serde(default)]
    pub handoff_max_us: u64,
    /// The same, summed over `moved_in` connections (us).
    #[serde(default)]
    pub handoff_total_us: u64,
    /// Messages per second, over the last second or more (see `status`).
    #[serde(default)]
    pub messages_per_sec: u64,
    /// Bytes read from connections since the process started.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes written to connections since the process started.
    #[serde(default)]
    pub bytes_out: u64,
}

pub(crate) fn snapshot() -> Snapshot {
    with(|c| Snapshot {
        connections: c.connections.get(),
        total_connections: c.total_connections.get(),
        messages: c.messages.get(),
        failed_sends: c.failed_sends.get(),
        panics: c.panics.get(),
        timers: c.timers.get(),
        rejected: c.rejected.get(),
        tasks_done: c.tasks_done.get(),
        tasks_failed: c.tasks_failed.get(),
        moved_in: c.moved_in.get(),
        handoff_max_us: c.handoff_max_us.get(),
        handoff_total_us: c.handoff_total_us.get(),
        messages_per_sec: messages_per_sec(c),
        bytes_in: c.bytes_in.get(),
        bytes_out: c.bytes_out.get(),
    })
}

/// One open connection, as `connections` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct ConnectionRow {
    /// Connection id within its process.
    pub(crate) id: u64,
    /// Peer address.
    pub(crate) peer: String,
    /// Bytes received.
    pub(crate) bytes_in: u64,
    /// Bytes sent.
    pub(crate) bytes_out: u64,
    /// Seconds since it was established.
    pub(crate) age_secs: f64,
}
