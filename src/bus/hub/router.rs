//! The hub's routing table, NATS's rules: literal subjects in a map, wildcard subscriptions
//! matched token by token, the result per subject cached until subscriptions change; in each
//! queue group one member gets each message, in turn.

use std::collections::HashMap;
use std::rc::Rc;

use super::peer::Peer;
use crate::bus::subject;

/// Subjects whose routing result is cached at most, and queue-group turns remembered at most;
/// past either, the table is emptied and rebuilt as messages come (a turn restarts at the
/// first member, which only shifts whose turn it is).
pub(super) const MAX_CACHE: usize = 10_000;

/// One subscription of a peer.
pub(super) struct SubEntry {
    pub(super) peer: Rc<Peer>,
    pub(super) sid: u32,
    pub(super) pattern: String,
    pub(super) queue: Option<String>,
}

/// Every subscription of the hub, and whose turn it is in each queue group.
#[derive(Default)]
pub(super) struct Router {
    literal: HashMap<String, Vec<Rc<SubEntry>>>,
    wildcard: Vec<Rc<SubEntry>>,
    cache: HashMap<String, Rc<Vec<Rc<SubEntry>>>>,
    turns: HashMap<(String, String), usize>,
}

impl Router {
    pub(super) fn add(&mut self, e: Rc<SubEntry>) {
        self.cache.clear();
        if subject::has_wildcard(&e.pattern) {
            self.wildcard.push(e);
        } else {
            self.literal.entry(e.pattern.clone()).or_default().push(e);
        }
    }

    pub(super) fn remove(&mut self, e: &Rc<SubEntry>) {
        self.cache.clear();
        if subject::has_wildcard(&e.pattern) {
            self.wildcard.retain(|x| !Rc::ptr_eq(x, e));
        } else if let Some(v) = self.literal.get_mut(&e.pattern) {
            v.retain(|x| !Rc::ptr_eq(x, e));
            if v.is_empty() {
                self.literal.remove(&e.pattern);
            }
        }
    }

    /// Subscriptions in the table.
    pub(super) fn len(&self) -> usize {
        self.literal.values().map(Vec::len).sum::<usize>() + self.wildcard.len()
    }

    fn lookup(&mut self, subject: &str) -> Rc<Vec<Rc<SubEntry>>> {
        if let Some(hit) = self.cache.get(subject) {
            return hit.clone();
        }
        let mut found: Vec<Rc<SubEntry>> = self.literal.get(subject).cloned().unwrap_or_default();
        found.extend(
            self.wildcard
                .iter()
                .filter(|e| subject::matches(&e.pattern, subject))
                .cloned(),
        );
        let found = Rc::new(found);
        if self.cache.len() >= MAX_CACHE {
            self.cache.clear();
        }
        self.cache.insert(subject.to_string(), found.clone());
        found
    }

    /// Everyone who gets a message on `subject`: every plain subscriber, one per queue group.
    pub(super) fn recipients(&mut self, subject: &str) -> Vec<Rc<SubEntry>> {
        let all = self.lookup(subject);
        let mut out = Vec::with_capacity(all.len());
        let mut groups: Vec<(&str, Vec<&Rc<SubEntry>>)> = Vec::new();
        for e in all.iter().filter(|e| !e.peer.closed.get()) {
            match &e.queue {
                None => out.push(e.clone()),
                Some(q) => match groups.iter_mut().find(|(name, _)| *name == q.as_str()) {
                    Some((_, members)) => members.push(e),
                    None => groups.push((q.as_str(), vec![e])),
                },
            }
        }
        for (name, members) in groups {
            let key = (name.to_string(), subject.to_string());
            if !self.turns.contains_key(&key) && self.turns.len() >= MAX_CACHE {
                self.turns.clear();
            }
            let turn = self.turns.entry(key).or_insert(0);
            out.push(members[*turn % members.len()].clone());
            *turn = turn.wrapping_add(1);
        }
        out
    }

    /// Queue-group turns remembered now (bounded by [`MAX_CACHE`]).
    #[cfg(test)]
    fn turns_remembered(&self) -> usize {
        self.turns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(peer: u64, pattern: &str, queue: Option<&str>) -> Rc<SubEntry> {
        Rc::new(SubEntry {
            peer: Rc::new(Peer::new(peer)),
            sid: 1,
            pattern: pattern.into(),
            queue: queue.map(Into::into),
        })
    }

    fn peers(r: &mut Router, subject: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = r.recipients(subject).iter().map(|e| e.peer.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn literal_and_wildcard_subscriptions_are_matched_like_nats() {
        let mut r = Router::default();
        r.add(sub(1, "a.b", None));
        r.add(sub(2, "a.*", None));
        r.add(sub(3, "a.>", None));
        r.add(sub(4, "b.>", None));
        assert_eq!(peers(&mut r, "a.b"), [1, 2, 3]);
        assert_eq!(peers(&mut r, "a.c"), [2, 3]);
        assert_eq!(peers(&mut r, "a.b.c"), [3]);
        assert_eq!(peers(&mut r, "c"), Vec::<u64>::new());
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn a_removed_subscription_gets_nothing_even_from_the_cache() {
        let mut r = Router::default();
        let e = sub(1, "a.*", None);
        r.add(e.clone());
        assert_eq!(peers(&mut r, "a.x"), [1]);
        r.remove(&e);
        assert_eq!(peers(&mut r, "a.x"), Vec::<u64>::new());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_queue_group_takes_turns_and_plain_subscribers_get_everything() {
        let mut r = Router::default();
        for p in 1..=3 {
            r.add(sub(p, "jobs", Some("workers")));
        }
        r.add(sub(9, "jobs", None));
        let mut counts = HashMap::new();
        for _ in 0..30 {
            let got = peers(&mut r, "jobs");
            assert_eq!(got.len(), 2, "one member and the plain subscriber");
            assert!(got.contains(&9));
            for p in got.into_iter().filter(|p| *p != 9) {
                *counts.entry(p).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
    }

    #[test]
    fn closed_peers_are_skipped() {
        let mut r = Router::default();
        let gone = sub(1, "s", Some("q"));
        r.add(gone.clone());
        r.add(sub(2, "s", Some("q")));
        gone.peer.closed.set(true);
        for _ in 0..4 {
            assert_eq!(peers(&mut r, "s"), [2]);
        }
    }

    #[test]
    fn queue_turns_for_many_subjects_stay_bounded() {
        let mut r = Router::default();
        r.add(sub(1, "t.*", Some("q")));
        for i in 0..(MAX_CACHE * 3) {
            assert_eq!(peers(&mut r, &format!("t.{i}")), [1]);
        }
        assert!(r.turns_remembered() <= MAX_CACHE);
    }
}
