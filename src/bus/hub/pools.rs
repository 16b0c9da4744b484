//! The hub's task pools: a queue per pool, its member processes (consumers) with their
//! concurrency, least-busy dispatch, and requeueing when a member goes. I/O-free: the server
//! hands each task [`Pools::assign`] gives out to a send function and learns whether it went.
//!
//! Bounds: a pool queues at most its `task_queue_limit` tasks (at most [`MAX_POOL_QUEUE`]) and
//! [`MAX_POOL_BYTES`] of payload; past either, a submission is refused as full. A pool nobody
//! serves (no member process has joined it, or all have gone) keeps its tasks
//! [`ORPHAN_TTL`]; then each is answered "no process serves this pool", and a pool left with no
//! member, no task and nothing running is forgotten, so a misspelled pool name costs nothing
//! for long.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::peer::Peer;
use super::wire::TaskRef;
use crate::bus::transport::PoolStats;

/// Tasks a pool queues at most before `submit` is refused with "pool full" (a pool may set
/// less with `Worker::task_queue_limit`).
pub(super) const MAX_POOL_QUEUE: usize = 100_000;
/// Payload bytes a pool queues at most before `submit` is refused with "pool full".
pub(super) const MAX_POOL_BYTES: usize = 256 * 1024 * 1024;
/// How long a task waits for a pool that no process serves before it is answered with an
/// error (a pool's processes may still be starting: a tree starts all its groups at once).
pub(super) const ORPHAN_TTL: Duration = Duration::from_secs(30);

struct QueuedTask {
    id: u64,
    reply: Option<String>,
    payload: Bytes,
    attempts: u8,
    max_retries: u8,
    queued_at: Instant,
}

struct Consumer {
    peer: Rc<Peer>,
    concurrency: u32,
    running: u32,
    /// A send to it failed in the current round of [`Pools::assign`].
    refused: bool,
}

struct Pool {
    /// Tasks queued at most; the pool's processes set it when they join.
    max_queue: usize,
    queue: VecDeque<QueuedTask>,
    queued_bytes: usize,
    consumers: Vec<Consumer>,
    /// Running tasks by id, with the peer running each.
    running: FxHashMap<u64, (u64, QueuedTask)>,
    done: u64,
    failed: u64,
    retried: u64,
}

impl Pool {
    fn new() -> Pool {
        Pool {
            max_queue: MAX_POOL_QUEUE,
            queue: VecDeque::new(),
            queued_bytes: 0,
            consumers: Vec::new(),
            running: FxHashMap::default(),
            done: 0,
            failed: 0,
            retried: 0,
        }
    }

    fn push_front(&mut self, t: QueuedTask) {
        self.queued_bytes += t.payload.len();
        self.queue.push_front(t);
    }

    fn pop_front(&mut self) -> Option<QueuedTask> {
        let t = self.queue.pop_front()?;
        self.queued_bytes -= t.payload.len();
        Some(t)
    }
}

/// A submitter to tell something: where, which status, what text.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Notice {
    pub(super) reply: String,
    pub(super) status: &'static str,
    pub(super) detail: String,
}

/// Why a submission was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The queue holds its limit of tasks or bytes.
    Full,
}

/// The pool called `name`, made if new. Looked up before inserting: a pool's name is copied
/// once, not on every submission.
fn pool_named<'a>(pools: &'a mut FxHashMap<Rc<str>, Pool>, name: &str) -> &'a mut Pool {
    if !pools.contains_key(name) {
        pools.insert(Rc::from(name), Pool::new());
    }
    pools.get_mut(name).expect("inserted above")
}

/// Every pool of the hub.
#[derive(Default)]
pub(super) struct Pools {
    pools: FxHashMap<Rc<str>, Pool>,
    next_task: u64,
}

impl Pools {
    /// `peer` takes tasks of `name`, `concurrency` at a time; the pool queues `max_queue`.
    pub(super) fn join(&mut self, name: &str, peer: Rc<Peer>, concurrency: u32, max_queue: u32) {
        let p = pool_named(&mut self.pools, name);
        p.max_queue = (max_queue as usize).clamp(1, MAX_POOL_QUEUE);
        p.consumers.push(Consumer {
            peer,
            concurrency: concurrency.max(1),
            running: 0,
            refused: false,
        });
    }

    /// Queues a task on `name` as of `now`.
    pub(super) fn submit(
        &mut self,
        name: &str,
        reply: Option<String>,
        max_retries: u8,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), Refused> {
        let p = pool_named(&mut self.pools, name);
        if p.queue.len() >= p.max_queue || p.queued_bytes + payload.len() > MAX_POOL_BYTES {
            p.failed += 1;
            return Err(Refused::Full);
        }
        self.next_task += 1;
        p.queued_bytes += payload.len();
        p.queue.push_back(QueuedTask {
            id: self.next_task,
            reply,
            payload,
            attempts: 0,
            max_retries,
            queued_at: now,
        });
        Ok(())
    }

    /// Hands queued tasks of `name` to its least busy members with room, one `send` each. A
    /// task `send` could not deliver goes back to the front of the queue, not counted as an
    /// attempt, and that member gets no more this round (it is never left "running" on a
    /// process that did not get it).
    pub(super) fn assign(
        &mut self,
        name: &str,
        mut send: impl FnMut(&Rc<Peer>, &TaskRef<'_>) -> bool,
    ) {
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        pool.consumers.retain(|c| !c.peer.closed.get());
        for c in &mut pool.consumers {
            c.refused = false;
        }
        while !pool.queue.is_empty() {
            // The least busy process with room, relative to its concurrency.
            let Some(best_idx) = pool
                .consumers
                .iter()
                .enumerate()
                .filter(|(_, c)| c.running < c.concurrency && !c.refused)
                .min_by(|(_, a), (_, b)| {
                    (u64::from(a.running) * u64::from(b.concurrency))
                        .cmp(&(u64::from(b.running) * u64::from(a.concurrency)))
                })
                .map(|(i, _)| i)
            else {
                break;
            };
            // Ties go round robin: the chosen process moves to the back of the line.
            let chosen = pool.consumers.remove(best_idx);
            pool.consumers.push(chosen);
            let Some(task) = pool.pop_front() else {
                break;
            };
            let Some(best) = pool.consumers.last_mut() else {
                pool.push_front(task);
                break;
            };
            let attempt = task.attempts.saturating_add(1);
            let sent = send(
                &best.peer,
                &TaskRef {
                    pool: name,
                    task: task.id,
                    attempt,
                    reply: task.reply.as_deref(),
                    payload: &task.payload,
                },
            );
            if sent {
                best.running += 1;
                let running = QueuedTask {
                    attempts: attempt,
                    ..task
                };
                pool.running.insert(running.id, (best.peer.id, running));
            } else {
                best.refused = true;
                pool.push_front(task);
            }
        }
    }

    /// `peer` finished `task`: the pool's name and where the result goes, unless the task is
    /// no longer that peer's (a late answer after it was given to another).
    pub(super) fn done(
        &mut self,
        peer: u64,
        task: u64,
        ok: bool,
    ) -> Option<(Rc<str>, Option<String>)> {
        let (name, pool) = self.pools.iter_mut().find(|(_, p)| {
            p.running
                .get(&task)
                .is_some_and(|(owner, _)| *owner == peer)
        })?;
        let (_, t) = pool.running.remove(&task)?;
        if let Some(c) = pool.consumers.iter_mut().find(|c| c.peer.id == peer) {
            c.running = c.running.saturating_sub(1);
        }
        if ok {
            pool.done += 1;
        } else {
            pool.failed += 1;
        }
        Some((name.clone(), t.reply))
    }

    /// `peer` went away: its memberships end; its running tasks go back to their queues, or,
    /// out of retries, fail. Returns the submitters to tell and the pools to dispatch again.
    pub(super) fn forget(&mut self, peer: u64) -> (Vec<Notice>, Vec<Rc<str>>) {
        let mut notices = Vec::new();
        for pool in self.pools.values_mut() {
            pool.consumers.retain(|c| c.peer.id != peer);
            let orphaned: Vec<u64> = pool
                .running
                .iter()
                .filter(|(_, (owner, _))| *owner == peer)
                .map(|(id, _)| *id)
                .collect();
            for id in orphaned {
                let Some((_, t)) = pool.running.remove(&id) else {
                    continue;
                };
                if t.attempts > t.max_retries {
                    pool.failed += 1;
                    if let Some(reply) = t.reply {
                        notices.push(Notice {
                            reply,
                            status: "retries-exhausted",
                            detail: format!("{} attempts", t.attempts),
                        });
                    }
                } else {
                    pool.retried += 1;
                    pool.push_front(t);
                }
            }
        }
        (notices, self.pools.keys().cloned().collect())
    }

    /// Answers the tasks that waited [`ORPHAN_TTL`] for a pool no process serves, and forgets
    /// pools with no member, no task and nothing running.
    pub(super) fn expire_orphans(&mut self, now: Instant) -> Vec<Notice> {
        let mut notices = Vec::new();
        for (name, pool) in self.pools.iter_mut() {
            if pool.consumers.iter().any(|c| !c.peer.closed.get()) {
                continue;
            }
            while pool
                .queue
                .front()
                .is_some_and(|t| now.duration_since(t.queued_at) >= ORPHAN_TTL)
            {
                let Some(t) = pool.pop_front() else { break };
                pool.failed += 1;
                if let Some(reply) = t.reply {
                    notices.push(Notice {
                        reply,
                        status: "no-consumer",
                        detail: name.to_string(),
                    });
                }
            }
        }
        self.pools
            .retain(|_, p| !p.consumers.is_empty() || !p.queue.is_empty() || !p.running.is_empty());
        notices
    }

    /// Every pool's figures, by name.
    pub(super) fn stats(&self) -> Vec<PoolStats> {
        let mut pools: Vec<PoolStats> = self
            .pools
            .iter()
            .map(|(name, p)| PoolStats {
                name: name.to_string(),
                consumers: p.consumers.len() as u64,
                queued: p.queue.len() as u64,
                running: p.running.len() as u64,
                done: p.done,
                failed: p.failed,
                retried: p.retried,
                dead: 0,
            })
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> Rc<Peer> {
        Rc::new(Peer::new(id))
    }

    fn submit(p: &mut Pools, name: &str, reply: &str, now: Instant) -> Result<(), Refused> {
        p.submit(name, Some(reply.into()), 1, Bytes::from_static(b"t"), now)
    }

    /// What one member got in a round: its id, the task and the attempt.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Given {
        peer: u64,
        task: u64,
        attempt: u8,
    }

    /// One round of dispatch in which every send succeeds.
    fn assign(p: &mut Pools, name: &str) -> Vec<Given> {
        assign_refusing(p, name, &[])
    }

    /// One round of dispatch in which sends to the members in `refusing` fail.
    fn assign_refusing(p: &mut Pools, name: &str, refusing: &[u64]) -> Vec<Given> {
        let mut given = Vec::new();
        p.assign(name, |peer, t| {
            if refusing.contains(&peer.id) {
                return false;
            }
            given.push(Given {
                peer: peer.id,
                task: t.task,
                attempt: t.attempt,
            });
            true
        });
        given
    }

    fn stats(p: &Pools, name: &str) -> PoolStats {
        p.stats()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_default()
    }

    #[test]
    fn tasks_go_to_the_least_busy_member_within_its_concurrency() {
        let (mut p, now) = (Pools::default(), Instant::now());
        p.join("sq", peer(1), 2, 100);
        p.join("sq", peer(2), 2, 100);
        for i in 0..5 {
            submit(&mut p, "sq", &format!("r{i}"), now).expect("queued");
        }
        let given = assign(&mut p, "sq");
        assert_eq!(given.len(), 4, "two each, one left queued");
        let to_1 = given.iter().filter(|a| a.peer == 1).count();
        assert_eq!(to_1, 2);
        assert_eq!(stats(&p, "sq").queued, 1);
        let (name, reply) = p.done(1, given[0].task, true).expect("its task");
        assert_eq!(&*name, "sq");
        assert!(reply.is_some());
        assert_eq!(
            assign(&mut p, "sq").len(),
            1,
            "the freed slot takes the last task"
        );
    }

    #[test]
    fn a_full_queue_refuses_by_count_and_by_bytes() {
        let (mut p, now) = (Pools::default(), Instant::now());
        p.join("sq", peer(1), 1, 2);
        submit(&mut p, "sq", "a", now).expect("1");
        submit(&mut p, "sq", "b", now).expect("2");
        assert_eq!(submit(&mut p, "sq", "c", now), Err(Refused::Full));
        let big = Bytes::from(vec![0u8; MAX_POOL_BYTES / 2 + 1]);
        p.join("big", peer(2), 1, 100);
        p.submit("big", None, 1, big.clone(), now)
            .expect("one fits");
        assert_eq!(p.submit("big", None, 1, big, now), Err(Refused::Full));
    }

    #[test]
    fn a_task_that_could_not_be_sent_goes_back_first_and_is_not_an_attempt() {
        let (mut p, now) = (Pools::default(), Instant::now());
        p.join("sq", peer(1), 1, 100);
        p.join("sq", peer(2), 1, 100);
        submit(&mut p, "sq", "first", now).expect("queued");
        submit(&mut p, "sq", "second", now).expect("queued");
        submit(&mut p, "sq", "third", now).expect("queued");
        let given = assign_refusing(&mut p, "sq", &[1]);
        assert_eq!(
            given.len(),
            1,
            "member 2 took one; member 1 got no second try"
        );
        assert_eq!(given[0].peer, 2);
        assert_eq!(stats(&p, "sq").queued, 2);
        let again = assign(&mut p, "sq");
        assert_eq!(again.len(), 1, "member 2 is full");
        assert_eq!(again[0].peer, 1);
        assert_ne!(again[0].task, given[0].task);
        assert_eq!(again[0].attempt, 1, "the refused send was not an attempt");
    }

    #[test]
    fn a_departed_member_hands_its_tasks_on_until_retries_run_out() {
        let (mut p, now) = (Pools::default(), Instant::now());
        p.join("sq", peer(1), 1, 100);
        submit(&mut p, "sq", "r", now).expect("queued");
        let task = assign(&mut p, "sq")[0].task;
        let (notices, _) = p.forget(1);
        assert!(notices.is_empty(), "one retry is allowed");
        assert_eq!(stats(&p, "sq").retried, 1);
        p.join("sq", peer(2), 1, 100);
        assert_eq!(assign(&mut p, "sq")[0].task, task);
        let (notices, _) = p.forget(2);
        assert_eq!(
            notices,
            [Notice {
                reply: "r".into(),
                status: "retries-exhausted",
                detail: "2 attempts".into()
            }]
        );
        assert!(p.done(2, task, true).is_none(), "a late answer is ignored");
    }

    #[test]
    fn tasks_for_a_pool_nobody_serves_are_answered_after_a_while_and_the_pool_forgotten() {
        let (mut p, now) = (Pools::default(), Instant::now());
        submit(&mut p, "misspelled", "r", now).expect("queued while its processes may start");
        assert!(p.expire_orphans(now + ORPHAN_TTL / 2).is_empty());
        let notices = p.expire_orphans(now + ORPHAN_TTL);
        assert_eq!(
            notices,
            [Notice {
                reply: "r".into(),
                status: "no-consumer",
                detail: "misspelled".into()
            }]
        );
        assert!(p.stats().is_empty(), "the empty pool is forgotten");
    }

    #[test]
    fn a_served_pool_keeps_its_queue_however_long() {
        let (mut p, now) = (Pools::default(), Instant::now());
        p.join("sq", peer(1), 1, 100);
        submit(&mut p, "sq", "a", now).expect("queued");
        submit(&mut p, "sq", "b", now).expect("queued");
        assign(&mut p, "sq");
        assert!(p.expire_orphans(now + ORPHAN_TTL * 10).is_empty());
        assert_eq!(stats(&p, "sq").queued, 1);
    }
}
