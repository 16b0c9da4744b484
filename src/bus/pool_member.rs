//! This process as a member of its task pool: once the bus is connected it joins the pool, runs
//! the group's `on_task` handler on every task the transport hands it (under a panic guard),
//! counts the outcome for `status`, and reports it.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;

use super::transport::{PoolSpec, TaskDelivery};
use super::{local, Bus, Task};
use crate::runtime::guard::{guarded_with_message, GuardedFuture};

/// What an async task handler returns.
pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = Result<Bytes, String>>>>;

/// A pool group's task handler.
#[derive(Clone)]
pub(crate) enum TaskFn {
    Sync(Rc<dyn Fn(Task) -> Result<Bytes, String>>),
    Async(Rc<dyn Fn(Task) -> TaskFuture>),
}

/// Joins `spec.pool` once this process's bus is connected, running `handler` on each task.
pub(crate) fn serve(spec: PoolSpec, handler: TaskFn) {
    local::when_connected(move |b| {
        let (bus, f) = (b.clone(), handler.clone());
        let run = Rc::new(move |d: TaskDelivery| run_task(&bus, &f, d));
        if let Err(e) = b.join_pool(spec.clone(), run) {
            tracing::error!("cannot join task pool {}: {e}", spec.pool);
        }
    });
}

fn run_task(bus: &Bus, f: &TaskFn, d: TaskDelivery) {
    let task = Task {
        pool: d.pool,
        attempt: d.attempt,
        payload: d.payload,
    };
    let id = d.task;
    // A handler's panic fails its task, with the panic's message for the submitter.
    let finish = move |bus: &Bus, r: Result<Result<Bytes, String>, String>| {
        let (ok, payload) = match r {
            Ok(Ok(b)) => (true, b),
            Ok(Err(e)) => (false, Bytes::from(e)),
            Err(panic) => (
                false,
                Bytes::from(format!("the task handler panicked: {panic}")),
            ),
        };
        crate::runtime::stats::with(|c| {
            crate::runtime::stats::bump(if ok { &c.tasks_done } else { &c.tasks_failed })
        });
        if let Err(e) = bus.task_done(id, ok, payload) {
            tracing::error!("cannot report task {id} done: {e}");
        }
    };
    match f {
        TaskFn::Sync(f) => finish(bus, guarded_with_message("on_task", || f(task))),
        TaskFn::Async(f) => {
            let fut = guarded_with_message("on_task", || f(task));
            let bus = bus.clone();
            tokio::task::spawn_local(async move {
                let r = match fut {
                    Ok(fut) => GuardedFuture::new("on_task", fut).await,
                    Err(panic) => Err(panic),
                };
                finish(&bus, r);
            });
        }
    }
}
