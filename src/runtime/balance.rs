//! Accept balancing: how the processes of a group that share one listening socket split its
//! connections evenly.
//!
//! A connection arriving on a shared socket wakes every process waiting on it, and the one
//! already running takes it, and the next, and the rest of a burst: with nothing else, one
//! process of two took 89% of a burst of 50 connections. nginx's answer is to stop accepting
//! in a process holding more than its share; so it is here. Each process publishes how many
//! connections it serves in a board the master shares with the group (one counter per process
//! id), and takes a connection only while it serves no more than the least loaded sibling plus
//! one. Otherwise it leaves the connection queued for `BALANCE_WAIT`, for a sibling (woken by
//! the same arrival) to take. If it is still there after that, the process takes it itself (no
//! client waits longer than that on a sibling), and if the least loaded sibling has not moved
//! at all for `STUCK_AFTER` of such waits, it is busy or stuck (a long callback): it is left out
//! of the reckoning for `STUCK_FOR`, so that one process running a ten-second callback does not
//! slow its siblings' accepting to one connection per wait.
//!
//! A counter holds the process's generation in its high half, so that a process replaced
//! during a reload, or the master clearing the counter of one that died, never wipes its
//! successor's figure. Zero means "not accepting".

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::os::SharedCounters;

/// How long a process holding more than its share leaves a queued connection to its siblings.
pub(crate) const BALANCE_WAIT: Duration = Duration::from_millis(2);

/// How long a sibling may let connections wait, not moving, before it counts as stuck (a
/// process woken on a busy machine may take a few milliseconds to be scheduled).
const STUCK_AFTER: Duration = Duration::from_millis(20);

/// How long a stuck sibling is left out of the reckoning.
const STUCK_FOR: Duration = Duration::from_millis(100);

/// The most connections taken per wake before the loop lets the connections it already
/// serves run (a burst's first clients are answered while the rest are being accepted).
pub(crate) const ACCEPT_BATCH: usize = 16;

/// A group's board of connection counts, one per process id.
#[derive(Debug)]
pub(crate) struct Board {
    counters: SharedCounters,
}

impl Board {
    /// A new board for `processes` processes (the master makes one per group that shares a
    /// listening socket).
    pub(crate) fn create(group: &str, processes: usize) -> std::io::Result<Board> {
        Ok(Board {
            counters: SharedCounters::create(&format!("oxwork-accept-{group}"), processes)?,
        })
    }

    /// The board a worker inherited.
    pub(crate) fn inherit(fd: OwnedFd) -> std::io::Result<Board> {
        Ok(Board {
            counters: SharedCounters::map(fd)?,
        })
    }

    /// The descriptor a worker inherits.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.counters.raw_fd()
    }

    /// Process `id` of generation `tag` is gone: its counter no longer holds its siblings
    /// back (unless its successor already wrote its own).
    pub(crate) fn clear(&self, id: u32, tag: u32) {
        if let Some(c) = self.counters.counters().get(id as usize) {
            let mut now = c.load(Ordering::Relaxed);
            while (now >> 32) as u32 == tag {
                match c.compare_exchange(now, 0, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(seen) => now = seen,
                }
            }
        }
    }
}

/// One process's place on its group's board.
#[derive(Debug)]
pub(crate) struct Seat {
    board: Board,
    id: u32,
    tag: u32,
    serving: Cell<u32>,
    accepting: Cell<bool>,
    /// Per sibling: since when (and at which counter) it has let connections wait, and until
    /// when it is left out of the reckoning.
    vain: std::cell::RefCell<Vec<Vain>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Vain {
    since: Option<(std::time::Instant, u64)>,
    left_out_until: Option<std::time::Instant>,
}

/// The sibling a process leaves a connection to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiting {
    sibling: usize,
}

impl Seat {
    /// Process `id`, generation `tag` (never 0); it counts for its siblings once it starts
    /// accepting (`take_seat`), not while its `on_worker_start` may still be running.
    pub(crate) fn new(board: Board, id: u32, tag: u32) -> Seat {
        Seat {
            board,
            id,
            tag: tag.max(1),
            serving: Cell::new(0),
            accepting: Cell::new(true),
            vain: Default::default(),
        }
    }

    fn publish(&self) {
        if !self.accepting.get() {
            return;
        }
        if let Some(c) = self.board.counters.counters().get(self.id as usize) {
            c.store(
                (u64::from(self.tag) << 32) | u64::from(self.serving.get()),
                Ordering::Relaxed,
            );
        }
    }

    /// A connection accepted.
    pub(crate) fn opened(&self) {
        self.serving.set(self.serving.get().saturating_add(1));
        self.publish();
    }

    /// A connection ended.
    pub(crate) fn closed(&self) {
        self.serving.set(self.serving.get().saturating_sub(1));
        self.publish();
    }

    /// The process stopped accepting: siblings no longer wait for it.
    pub(crate) fn leave(&self) {
        self.accepting.set(false);
        self.board.clear(self.id, self.tag);
    }

    /// `None` when this process may take another connection now: it serves no more than the
    /// least loaded sibling that accepts, plus one. Otherwise the sibling to leave it to.
    pub(crate) fn holding_back(&self) -> Option<Waiting> {
        let counters = self.board.counters.counters();
        let vain = self.vain.borrow();
        let now = (!vain.is_empty()).then(std::time::Instant::now);
        let (sibling, counter) = counters
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.id as usize)
            .filter(|(i, _)| {
                let until = vain.get(*i).and_then(|v| v.left_out_until);
                until.is_none_or(|t| now.is_some_and(|now| now >= t))
            })
            .map(|(i, c)| (i, c.load(Ordering::Relaxed)))
            .filter(|&(_, v)| v != 0)
            .min_by_key(|&(_, v)| v as u32)?;
        let least = counter as u32;
        (self.serving.get() > least.saturating_add(1)).then_some(Waiting { sibling })
    }

    /// A connection stayed queued through a wait for `w.sibling`: if that sibling's counter
    /// has not moved for `STUCK_AFTER` of such waits, it is busy or stuck, and left out of the
    /// reckoning for `STUCK_FOR`.
    pub(crate) fn waited_in_vain(&self, w: Waiting) {
        let counters = self.board.counters.counters();
        let Some(now_counter) = counters.get(w.sibling).map(|c| c.load(Ordering::Relaxed)) else {
            return;
        };
        let mut vain = self.vain.borrow_mut();
        if vain.len() < counters.len() {
            vain.resize(counters.len(), Vain::default());
        }
        let v = &mut vain[w.sibling];
        let now = std::time::Instant::now();
        match v.since {
            Some((since, counter)) if counter == now_counter => {
                if now.duration_since(since) >= STUCK_AFTER {
                    v.left_out_until = Some(now + STUCK_FOR);
                    v.since = None;
                    tracing::debug!(
                        "process {} of the group lets connections wait; accepting without it \
                         for {STUCK_FOR:?}",
                        w.sibling
                    );
                }
            }
            _ => v.since = Some((now, now_counter)),
        }
    }
}

thread_local! {
    /// The seat this process was given at start, until its listener takes it.
    static SEAT: Cell<Option<Seat>> = const { Cell::new(None) };
}

/// Gives this process its seat on its group's board (the worker's start-up).
pub(crate) fn install(seat: Seat) {
    SEAT.with(|s| s.set(Some(seat)));
}

/// The seat, once: the process's own listener takes it (a route served on another port
/// does not).
pub(crate) fn take_seat() -> Option<Seat> {
    let seat = SEAT.with(|s| s.take())?;
    // From now on it accepts: its siblings reckon with it.
    seat.publish();
    Some(seat)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Board {
        /// The same board mapped again, as another process maps it.
        fn another_mapping(&self) -> Board {
            let fd = self.counters.duplicate_fd().expect("dup");
            Board::inherit(fd).expect("map")
        }
    }

    fn seats(n: u32) -> Vec<Seat> {
        let board = Board::create("test", n as usize).expect("board");
        (0..n)
            .map(|id| {
                let seat = Seat::new(board.another_mapping(), id, 1);
                seat.publish();
                seat
            })
            .collect()
    }

    #[test]
    fn a_process_ahead_of_its_least_loaded_sibling_by_more_than_one_waits() {
        let s = seats(2);
        assert!(s[0].holding_back().is_none());
        s[0].opened();
        assert!(
            s[0].holding_back().is_none(),
            "one ahead may still take one"
        );
        s[0].opened();
        assert!(s[0].holding_back().is_some(), "two ahead waits");
        assert!(s[1].holding_back().is_none());
        s[1].opened();
        assert!(s[0].holding_back().is_none());
    }

    #[test]
    fn a_sibling_that_left_or_died_holds_nobody_back() {
        let s = seats(3);
        for _ in 0..5 {
            s[0].opened();
        }
        s[1].opened();
        assert!(s[0].holding_back().is_some());
        s[1].leave();
        s[2].board.clear(2, 1);
        assert!(
            s[0].holding_back().is_none(),
            "no sibling accepts: take everything"
        );
    }

    #[test]
    fn a_sibling_that_let_a_connection_wait_is_left_out_and_one_that_moved_is_not() {
        let s = seats(3);
        for _ in 0..4 {
            s[0].opened();
        }
        s[1].opened();
        s[2].opened();
        s[2].opened();
        let w = s[0].holding_back().expect("4 against 1");
        assert_eq!(w.sibling, 1);
        s[0].waited_in_vain(w);
        s[1].opened();
        std::thread::sleep(STUCK_AFTER);
        s[0].waited_in_vain(w);
        assert_eq!(s[0].holding_back().map(|w| w.sibling), Some(1), "it moved");
        let w = s[0].holding_back().expect("4 against 2");
        s[0].waited_in_vain(w);
        assert_eq!(
            s[0].holding_back().map(|w| w.sibling),
            Some(1),
            "not for long yet"
        );
        std::thread::sleep(STUCK_AFTER);
        s[0].waited_in_vain(w);
        // Sibling 1 is left out; sibling 2 (2 connections) is the least now.
        assert_eq!(s[0].holding_back().map(|w| w.sibling), Some(2));
        s[0].closed();
        assert!(s[0].holding_back().is_none(), "3 is one more than 2");
    }

    #[test]
    fn clearing_an_old_generation_keeps_its_successors_count() {
        let board = Board::create("gen", 2).expect("board");
        let successor = Seat::new(board.another_mapping(), 1, 7);
        assert_eq!(
            board.counters.counters()[1].load(Ordering::Relaxed),
            0,
            "not reckoned with before it accepts"
        );
        successor.opened();
        board.clear(1, 6);
        let v = board.counters.counters()[1].load(Ordering::Relaxed);
        assert_eq!(v, (7 << 32) | 1);
    }
}
