//! Sharing a core with sibling processes: a process gives the core away (`sched_yield`) once
//! per `SHARE_AFTER` of work.
//!
//! Two busy processes on one core are switched by the kernel at its timer tick (4 ms at
//! 250 Hz), a process woken by input rarely preempting the one running: a connection of the
//! process that is not running waits that long, and that was the whole p99 of two processes
//! sharing a core (4.1 ms against 0.3 ms for two runtime threads, which take each other's work).
//! Yielding every half millisecond of work brings it to 0.7-0.8 ms at the same throughput
//! (250 us gave 0.67 ms, 1 ms gave 1.4 ms). On a core of its own the yield returns at once:
//! one system call per half millisecond of work, at most.
//!
//! The clock is read only every `CHECK_EVERY` pieces of work. The event loop's own wake-ups
//! say nothing about idleness here: tokio's unpark hook runs on its routine polls of the
//! reactor too, so "busy since the last wake" never grew past a few pieces of work.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How much work a process does before letting a sibling on its core run.
const SHARE_AFTER: Duration = Duration::from_micros(500);

/// Pieces of work between two looks at the clock.
const CHECK_EVERY: u32 = 8;

thread_local! {
    /// When this process last gave the core away (or first worked).
    static LAST_SHARED: Cell<Option<Instant>> = const { Cell::new(None) };
    static UNCHECKED: Cell<u32> = const { Cell::new(0) };
}

/// A piece of work was done (a read dispatched): every `SHARE_AFTER`, the core goes to
/// whoever else wants it.
pub(crate) fn worked() {
    let due = UNCHECKED.with(|u| {
        let n = u.get() + 1;
        u.set(n % CHECK_EVERY);
        n == CHECK_EVERY
    });
    if !due {
        return;
    }
    let now = Instant::now();
    LAST_SHARED.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < SHARE_AFTER => {}
        Some(_) => {
            crate::os::yield_core();
            last.set(Some(Instant::now()));
        }
        None => last.set(Some(now)),
    });
}
