//! The workers declared in this process, in declaration order.
//!
//! Every process runs the same `main`, so the n-th declared worker is the same group in the
//! master and in each worker process; that order is how a worker process finds its group.

use std::cell::RefCell;
use std::rc::Rc;

use crate::worker::AnyWorker;

thread_local! {
    static WORKERS: RefCell<Vec<Rc<dyn AnyWorker>>> = const { RefCell::new(Vec::new()) };
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
