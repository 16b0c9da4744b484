//! Timers on the process's own loop: Workerman's `Timer::add` and `Timer::del`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::runtime::guard::guarded;
use crate::runtime::stats;

/// Identifies a timer for [`Timer::del`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

/// A time span given the way Workerman users write it: seconds as `1`, `0.5`, or a `Duration`.
pub trait IntoInterval {
    /// The span as a `Duration`.
    fn into_interval(self) -> Duration;
}

impl IntoInterval for Duration {
    fn into_interval(self) -> Duration {
        self
    }
}
impl IntoInterval for f64 {
    fn into_interval(self) -> Duration {
        Duration::try_from_secs_f64(self.max(0.0)).unwrap_or(Duration::MAX)
    }
}
impl IntoInterval for u64 {
    fn into_interval(self) -> Duration {
        Duration::from_secs(self)
    }
}
impl IntoInterval for u32 {
    fn into_interval(self) -> Duration {
        Duration::from_secs(self.into())
    }
}
impl IntoInterval for i32 {
    fn into_interval(self) -> Duration {
        Duration::from_secs(self.max(0) as u64)
    }
}

#[derive(Default)]
struct Registry {
    next: u64,
    active: HashMap<u64, AbortHandle>,
}

thread_local! {
    static TIMERS: RefCell<Registry> = RefCell::new(Registry::default());
}

/// The smallest interval a timer runs at; a zero interval would spin the loop.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Timers of the current process (Workerman's `Timer`).
///
/// Timers run on the process's own thread, between other callbacks, so a timer callback may
/// touch the same `Rc`/`RefCell` state as connection callbacks. They exist only inside a
/// running worker process: call them from `on_worker_start` or any later callback.
#[derive(Debug)]
pub struct Timer;

impl Timer {
    /// Runs `f` after `interval`, and again every `interval` if `repeat` is true.
    ///
    /// A panic in `f` is caught and logged; a repeating timer keeps running.
    ///
    /// # Panics
    /// Outside a running worker process (there is no loop to run the timer on).
    pub fn add(
        interval: impl IntoInterval,
        repeat: bool,
        mut f: impl FnMut() + 'static,
    ) -> TimerId {
        let period = interval.into_interval().max(MIN_INTERVAL);
        let id = TIMERS.with(|t| {
            let mut t = t.borrow_mut();
            t.next += 1;
            t.next
        });
        let task = tokio::task::spawn_local(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let _ = guarded("timer callback", &mut f);
                if !repeat {
                    break;
                }
            }
            forget(id);
        });
        TIMERS.with(|t| t.borrow_mut().active.insert(id, task.abort_handle()));
        stats::with(|c| stats::bump(&c.timers));
        TimerId(id)
    }

    /// Runs `f` once after `delay`.
    pub fn once(delay: impl IntoInterval, f: impl FnOnce() + 'static) -> TimerId {
        let mut f = Some(f);
        Timer::add(delay, false, move || {
            if let Some(f) = f.take() {
                f()
            }
        })
    }

    /// Cancels a timer. Returns false if it had already finished or been cancelled.
    pub fn del(id: TimerId) -> bool {
        match TIMERS.with(|t| t.borrow_mut().active.remove(&id.0)) {
            Some(handle) => {
                handle.abort();
                stats::with(|c| stats::drop_one(&c.timers));
                true
            }
            None => false,
        }
    }

    /// Cancels every timer of this process.
    pub fn del_all() {
        let all: Vec<_> = TIMERS.with(|t| t.borrow_mut().active.drain().collect());
        for (_, handle) in all {
            handle.abort();
            stats::with(|c| stats::drop_one(&c.timers));
        }
    }

    /// How many timers are active in this process.
    pub fn count() -> usize {
        TIMERS.with(|t| t.borrow().active.len())
    }
}

fn forget(id: u64) {
    if TIMERS.with(|t| t.borrow_mut().active.remove(&id)).is_some() {
        stats::with(|c| stats::drop_one(&c.timers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn run_local(f: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build_local(Default::default())
            .expect("runtime")
            .block_on(f);
    }

    #[test]
    fn repeating_timer_fires_until_deleted() {
        run_local(async {
            let hits = Rc::new(Cell::new(0));
            let h = hits.clone();
            let id = Timer::add(1, true, move || h.set(h.get() + 1));
            tokio::time::sleep(Duration::from_millis(3500)).await;
            assert_eq!(hits.get(), 3);
            assert!(Timer::del(id));
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(hits.get(), 3);
            assert_eq!(Timer::count(), 0);
        });
    }

    #[test]
    fn one_shot_timer_fires_once_and_unregisters() {
        run_local(async {
            let hits = Rc::new(Cell::new(0));
            let h = hits.clone();
            Timer::once(0.5, move || h.set(h.get() + 1));
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(hits.get(), 1);
            assert_eq!(Timer::count(), 0);
        });
    }

    #[test]
    fn panicking_repeating_timer_keeps_running() {
        run_local(async {
            let hits = Rc::new(Cell::new(0));
            let h = hits.clone();
            let id = Timer::add(1, true, move || {
                h.set(h.get() + 1);
                panic!("boom");
            });
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert_eq!(hits.get(), 2);
            Timer::del(id);
        });
    }
}
