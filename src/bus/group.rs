//! What the bus adds to a worker group: `on_worker_message`, `on_task` and `gateway`. Each
//! marks the group as a bus user (so the hub starts with the tree) and sets what its processes
//! do at start, before `on_worker_start`: subscribe to their worker subjects, join their pool,
//! make their connections reachable, and connect the bus at once so nothing sent is missed.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;

use super::pool_member::{TaskFn, TaskFuture};
use super::transport::PoolSpec;
use super::{local, Task, WorkerMessage};
use crate::protocol::Protocol;
use crate::runtime::worker::Worker;

impl<P: Protocol> Worker<P> {
    /// Runs in a process of this group for every message sent to it with
    /// [`bus::send_to_worker`](crate::bus::send_to_worker) (or `ask_worker`, or a group
    /// broadcast). `msg.reply(..)` answers an ask.
    pub fn on_worker_message(
        &mut self,
        f: impl Fn(&Worker<P>, WorkerMessage) + 'static,
    ) -> &mut Self {
        self.config_mut().uses_bus = true;
        let f = Rc::new(f);
        self.set_start_hook(
            "bus: worker messages",
            Some(Box::new(move |w: &Worker<P>| {
                let Some(me) = local::identity() else { return };
                let own = super::worker_subject(&me.node, &me.group, me.id);
                let group = super::group_subject(&me.group);
                let (worker, f) = (w.clone(), f.clone());
                local::when_connected(move |b| {
                    for subject in [&own, &group] {
                        let (worker, f) = (worker.clone(), f.clone());
                        let subscribed = b.subscribe(subject, None, move |msg| {
                            f(&worker, WorkerMessage::new(msg))
                        });
                        if let Err(e) = subscribed {
                            tracing::error!("cannot receive worker messages: {e}");
                        }
                    }
                });
                connect_now();
            })),
        );
        self
    }

    /// Makes this group a task pool named after the group: tasks submitted with
    /// [`bus::submit`](crate::bus::submit) run `f` in the least busy process; its `Ok` value
    /// is the result, its `Err` a failure reported to the submitter.
    pub fn on_task<R, E>(&mut self, f: impl Fn(Task) -> Result<R, E> + 'static) -> &mut Self
    where
        R: Into<Bytes>,
        E: std::fmt::Display,
    {
        let f = move |t: Task| f(t).map(Into::into).map_err(|e| e.to_string());
        self.serve_tasks(TaskFn::Sync(Rc::new(f)))
    }

    /// [`on_task`](Self::on_task) with an async handler; up to `task_concurrency` tasks run at
    /// once in each process.
    pub fn on_task_async<F, Fut, R, E>(&mut self, f: F) -> &mut Self
    where
        F: Fn(Task) -> Fut + 'static,
        Fut: Future<Output = Result<R, E>> + 'static,
        R: Into<Bytes>,
        E: std::fmt::Display,
    {
        let f = move |t: Task| -> TaskFuture {
            let fut = f(t);
            Box::pin(async move { fut.await.map(Into::into).map_err(|e| e.to_string()) })
        };
        self.serve_tasks(TaskFn::Async(Rc::new(f)))
    }

    /// A task handler makes this group a pool, and pools live on the bus.
    fn serve_tasks(&mut self, handler: TaskFn) -> &mut Self {
        {
            let mut c = self.config_mut();
            (c.uses_bus, c.is_pool) = (true, true);
        }
        self.set_start_hook(
            "bus: task pool",
            Some(Box::new(move |w: &Worker<P>| {
                let Some(me) = local::identity() else { return };
                let c = w.config();
                let spec = PoolSpec {
                    pool: me.group,
                    concurrency: c.task_concurrency,
                    max_queue: c.task_queue_limit,
                    lease: c.task_lease,
                };
                super::pool_member::serve(spec, handler.clone());
                connect_now();
            })),
        );
        self
    }

    /// Makes this worker's client connections reachable from every process (GatewayWorker's
    /// gateway): by id with `bus::send_to_client`, by uid, group, or broadcast. The hub starts
    /// with the tree. (Connections of other workers become reachable once one of them binds a
    /// uid or joins a group.)
    pub fn gateway(&mut self, on: bool) -> &mut Self {
        {
            let mut c = self.config_mut();
            c.gateway = on;
            c.uses_bus |= on;
        }
        let activate = move |_: &Worker<P>| {
            if local::identity().is_none() {
                return;
            }
            if let Err(e) = super::routing::activate() {
                tracing::error!("cannot make connections reachable: {e}");
            }
            connect_now();
        };
        self.set_start_hook(
            "bus: gateway",
            on.then(|| Box::new(activate) as Box<dyn Fn(&Worker<P>)>),
        );
        self
    }
}

/// Connects this process's bus now rather than on first use.
fn connect_now() {
    if let Err(e) = super::bus() {
        tracing::error!("cannot use the bus: {e}");
    }
}
