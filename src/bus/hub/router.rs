//! The hub's routing table, NATS's rules: literal subjects in a map, `prefix.*` subscriptions
//! (every request inbox has that shape) in a map by prefix, other wildcard subscriptions
//! matched token by token with the result per subject cached until subscriptions change; in
//! each queue group one member gets each message, in turn.
use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::peer::Peer;
use crate::bus::subject;

/// Subjects whose routing result is cached at most, and subjects whose queue-group turns are
/// remembered at most; past either, the table is emptied and rebuilt as messages come (a turn
/// restarts at the first member, which only shifts whose turn it is).
pub(super) const MAX_CACHE: usize = 10_000;

/// One subscription of a peer.
pub(super) struct SubEntry {
    pub(super) peer: Rc<Peer>,
    pub(super) sid: u32,
    pub(super) pattern: String,
    pub(super) queue: Option<String>,
}

/// Where a subscription is kept, by the shape of its pattern.
enum Shape<'a> {
    Literal,
    /// `prefix.*` with a literal prefix.
    LastTokenAny(&'a str),
    Wildcard,
}

fn shape(pattern: &str) -> Shape<'_> {
    if !subject::has_wildcard(pattern) {
        return Shape::Literal;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) if !subject::has_wildcard(prefix) => Shape::LastTokenAny(prefix),
        _ => Shape::Wildcard,
    }
}

/// Every subscription of the hub, and whose turn it is in each queue group.
#[derive(Default)]
pub(super) struct Router {
    literal: FxHashMap<String, Vec<Rc<SubEntry>>>,
    last_token_any: FxHashMap<String, Vec<Rc<SubEntry>>>,
    wildcard: Vec<Rc<SubEntry>>,
    /// Results of matching `wildcard`, by subject (only kept while there are such patterns:
    /// the two maps need no cache).
    cache: FxHashMap<String, Rc<Vec<Rc<SubEntry>>>>,
    /// Per subject, each queue group's next turn.
    turns: FxHashMap<String, Vec<(String, usize)>>,
}

fn add_to(map: &mut FxHashMap<String, Vec<Rc<SubEntry>>>, key: &str, e: Rc<SubEntry>) {
    match map.get_mut(key) {
        Some(v) => v.push(e),
        None => {
            map.insert(key.to_string(), vec![e]);
        }
    }
}

fn remove_from(map: &mut FxHashMap<String, Vec<Rc<SubEntry>>>, key: &str, e: &Rc<SubEntry>) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|x| !Rc::ptr_eq(x, e));
        if v.is_empty() {
            map.remove(key);
        }
    }
}

impl Router {
    pub(super) fn add(&mut self, e: Rc<SubEntry>) {
        self.cache.clear();
        let pattern = e.pattern.clone();
        match shape(&pattern) {
            Shape::Literal => add_to(&mut self.literal, &pattern, e),
            Shape::LastTokenAny(prefix) => add_to(&mut self.last_token_any, prefix, e),
            Shape::Wildcard => self.wildcard.push(e),
        }
    }

    pub(super) fn remove(&mut self, e: &Rc<SubEntry>) {
        self.cache.clear();
        match shape(&e.pattern) {
            Shape::Literal => remove_from(&mut self.literal, &e.pattern, e),
            Shape::LastTokenAny(prefix) => remove_from(&mut self.last_token_any, prefix, e),
            Shape::Wildcard => self.wildcard.retain(|x| !Rc::ptr_eq(x, e)),
        }
    }

    /// Subscriptions in the table.
    pub(super) fn len(&self) -> usize {
        self.literal.values().map(Vec::len).sum::<usize>()
            + self.last_token_any.values().map(Vec::len).sum::<usize>()
            + self.wildcard.len()
    }

    /// The subscriptions matching `subject` through the general wildcard patterns.
    fn wildcard_matches(&mut self, subject: &str) -> Option<Rc<Vec<Rc<SubEntry>>>> {
        if self.wildcard.is_empty() {
            return None;
        }
        if let Some(hit) = self.cache.get(subject) {
            return Some(hit.clone());
        }
        let found: Vec<Rc<SubEntry>> = self
            .wildcard
            .iter()
            .filter(|e| subject::matches(&e.pattern, subject))
            .cloned()
            .collect();
        let found = Rc::new(found);
        if self.cache.len() >= MAX_CACHE {
            self.cache.clear();
        }
        self.cache.insert(subject.to_string(), found.clone());
        Some(found)
    }

    /// Everyone who gets a message on `subject`, put in `out` (emptied first): every plain
    /// subscriber, one member per queue group.
    pub(super) fn recipients(&mut self, subject: &str, out: &mut Vec<Rc<SubEntry>>) {
        out.clear();
        let wild = self.wildcard_matches(subject);
        let by_prefix = subject
            .rsplit_once('.')
            .and_then(|(prefix, _)| self.last_token_any.get(prefix));
        let all = [
            self.literal.get(subject).map(Vec::as_slice),
            by_prefix.map(Vec::as_slice),
            wild.as_deref().map(Vec::as_slice),
        ];
        let matching = all
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.peer.closed.get());
        let mut grouped = false;
        for e in matching.clone() {
            match &e.queue {
                None => out.push(e.clone()),
                Some(_) => grouped = true,
            }
        }
        if !grouped {
            return;
        }
        // Queue groups are rare next to plain subscribers and inboxes: a second pass picks
        // one member of each, in turn.
        let mut groups: Vec<(&str, Vec<&Rc<SubEntry>>)> = Vec::new();
        for e in matching {
            if let Some(q) = &e.queue {
                match groups.iter_mut().find(|(name, _)| *name == q.as_str()) {
                    Some((_, members)) => members.push(e),
                    None => groups.push((q.as_str(), vec![e])),
                }
            }
        }
        if !self.turns.contains_key(subject) && self.turns.len() >= MAX_CACHE {
            self.turns.clear();
        }
        let turns = match self.turns.get_mut(subject) {
            Some(t) => t,
            None => self.turns.entry(subject.to_string()).or_default(),
        };
        for (name, members) in groups {
            let turn = match turns.iter().position(|(q, _)| q == name) {
                Some(i) => &mut turns[i].1,
                None => {
                    turns.push((name.to_string(), 0));
                    &mut turns.last_mut().expect("just pushed").1
                }
            };
            out.push(members[*turn % members.len()].clone());
            *turn = turn.wrapping_add(1);
        }
    }

    /// Subjects whose queue-group turns are remembered now (bounded by [`MAX_CACHE`]).
    #[cfg(test)]
    fn turns_remembered(&self) -> usize {
        self.turns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sub(peer: u64, pattern: &str, queue: Option<&str>) -> Rc<SubEntry> {
        Rc::new(SubEntry {
            peer: Rc::new(Peer::new(peer)),
            sid: 1,
            pattern: pattern.into(),
            queue: queue.map(Into::into),
        })
    }

    fn peers(r: &mut Router, subject: &str) -> Vec<u64> {
        let mut out = Vec::new();
        r.recipients(subject, &mut out);
        let mut ids: Vec<u64> = out.iter().map(|e| e.peer.id).collect();
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
    fn inbox_shaped_patterns_match_exactly_one_last_token() {
        let mut r = Router::default();
        let inbox = sub(1, "_INBOX.abc.*", None);
        r.add(inbox.clone());
        r.add(sub(2, "_INBOX.abc.7", None));
        r.add(sub(3, "_INBOX.*.*", None));
        assert_eq!(peers(&mut r, "_INBOX.abc.7"), [1, 2, 3]);
        assert_eq!(peers(&mut r, "_INBOX.abc.8"), [1, 3]);
        assert_eq!(peers(&mut r, "_INBOX.abc"), Vec::<u64>::new());
        assert_eq!(peers(&mut r, "_INBOX.abc.8.9"), Vec::<u64>::new());
        assert_eq!(peers(&mut r, "_INBOX.abd.8"), [3]);
        assert_eq!(r.len(), 3);
        r.remove(&inbox);
        assert_eq!(peers(&mut r, "_INBOX.abc.8"), [3]);
        assert_eq!(r.len(), 2);
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
        let general = sub(2, "a.>", None);
        r.add(general.clone());
        assert_eq!(peers(&mut r, "a.x.y"), [2]);
        r.remove(&general);
        assert_eq!(peers(&mut r, "a.x.y"), Vec::<u64>::new());
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
