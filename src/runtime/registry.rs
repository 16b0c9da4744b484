//! The workers declared in this process, in declaration order.
//!
//! Every process runs the same `main`, so the n-th declared worker is the same group in the
//! master and in each worker process; that order is how a worker process finds its group.

use std::cell::RefCell;
use std::rc::Rc;

use crate::runtime::worker::AnyWorker;

thread_local! {
    static WORKERS: RefCell<Vec<Rc<dyn AnyWorker>>> = const { RefCell::new(Vec::new()) };
    /// Workers running in this process: its own group's, and any a callback started with
    /// `Worker::listen`.
    static RUNNING: RefCell<Vec<Rc<dyn AnyWorker>>> = const { RefCell::new(Vec::new()) };
    /// This process's id within its group, once it runs as a worker process.
    static PROCESS_ID: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

pub(crate) fn set_running(w: Rc<dyn AnyWorker>, id: u32) {
    PROCESS_ID.with(|p| p.set(Some(id)));
    RUNNING.with(|r| r.borrow_mut().push(w));
}

pub(crate) fn add_running(w: Rc<dyn AnyWorker>) {
    RUNNING.with(|r| r.borrow_mut().push(w));
}

pub(crate) fn running() -> Vec<Rc<dyn AnyWorker>> {
    RUNNING.with(|r| r.borrow().clone())
}

pub(crate) fn process_id() -> Option<u32> {
    PROCESS_ID.with(|p| p.get())
}

pub(crate) fn register(w: Rc<dyn AnyWorker>) {
    WORKERS.with(|ws| ws.borrow_mut().push(w));
}

pub(crate) fn len() -> usize {
    WORKERS.with(|ws| ws.borrow().len())
}

pub(crate) fn all() -> Vec<Rc<dyn AnyWorker>> {
    WORKERS.with(|ws| ws.borrow().clone())
}
