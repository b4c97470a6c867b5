//! The answer cache: the engine's answers to requests that depend only on the index's
//! state (counts, suggestions), kept for a short time, by the exact request body, for one
//! physical index at a time. Generic: a key is a request body, a value is the engine's
//! answer as bytes; nothing here knows what was asked.
//!
//! - **For one index.** Entries belong to the physical index the alias named when they
//!   were fetched. The first lookup or insert that names another index (the alias moved:
//!   a reindex or a rollback) drops every entry at once; an insert for an index the cache
//!   has already moved past is not kept. So an answer is only ever reused for a request
//!   whose own look-up of the alias named the index that answered it.
//! - **For at most `max_age`.** An entry older than that is a miss (and is dropped). The
//!   caller chooses `max_age` per lookup (no more than the index's refresh interval: see
//!   `super::reuse`).
//! - **Within a size in bytes.** Each entry weighs its key and answer bytes plus a fixed
//!   overhead; inserting past the budget evicts the least recently used entries first.
//!   An answer larger than a quarter of the budget is not kept at all.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use lru::LruCache;

/// Bookkeeping per entry beyond its key and answer bytes (the entry, the map's slot, the
/// LRU links), counted in the budget.
pub const ENTRY_OVERHEAD: usize = 128;

/// A reused answer: its bytes and how long ago the engine gave it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub body: Bytes,
    pub age: Duration,
}

struct Entry {
    body: Bytes,
    at: Instant,
    weight: usize,
}

struct Inner {
    /// The physical index the entries belong to, and the number of the alias look-up that
    /// named it (a later look-up wins; an earlier one cannot switch back).
    index: Option<(String, u64)>,
    entries: LruCache<String, Entry>,
    bytes: usize,
}

/// What the cache holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub entries: usize,
    pub bytes: usize,
    pub budget: usize,
}

pub struct AnswerCache {
    inner: Mutex<Inner>,
    budget: usize,
}

impl AnswerCache {
    /// A cache of at most `budget` bytes (0: keeps nothing).
    pub fn new(budget: usize) -> AnswerCache {
        AnswerCache { inner: Mutex::new(Inner { index: None, entries: LruCache::unbounded(), bytes: 0 }), budget }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("answer cache")
    }

    /// Moves the cache to `index` as named by alias look-up number `lookup`; returns
    /// whether entries may be read or written for it (false: a later look-up already named
    /// another index).
    fn switch(inner: &mut Inner, index: &str, lookup: u64) -> bool {
        match &inner.index {
            Some((i, _)) if i == index => {
                if let Some((_, n)) = &mut inner.index {
                    *n = (*n).max(lookup);
                }
                true
            }
            Some((_, n)) if *n > lookup => false,
            _ => {
                // The alias moved: nothing fetched from the other index is reused.
                inner.entries.clear();
                inner.bytes = 0;
                inner.index = Some((index.to_string(), lookup));
                true
            }
        }
    }

    /// The answer to `key` fetched from `index` less than `max_age` ago, if any.
    pub fn get(&self, index: &str, lookup: u64, key: &str, max_age: Duration) -> Option<Hit> {
        let mut inner = self.lock();
        if !Self::switch(&mut inner, index, lookup) {
            return None;
        }
        let (body, at) = match inner.entries.get(key) {
            Some(e) => (e.body.clone(), e.at),
            None => return None,
        };
        let age = at.elapsed();
        if age >= max_age {
            if let Some(e) = inner.entries.pop(key) {
                inner.bytes -= e.weight;
            }
            return None;
        }
        Some(Hit { body, age })
    }

    /// Keeps `body`, the answer to `key` that `index` gave at `at`.
    pub fn insert(&self, index: &str, lookup: u64, key: String, body: Bytes, at: Instant) {
        let weight = key.len() + body.len() + ENTRY_OVERHEAD;
        if weight > self.budget / 4 {
            return;
        }
        let mut inner = self.lock();
        if !Self::switch(&mut inner, index, lookup) {
            return;
        }
        if let Some(old) = inner.entries.push(key, Entry { body, at, weight }) {
            inner.bytes -= old.1.weight;
        }
        inner.bytes += weight;
        while inner.bytes > self.budget {
            match inner.entries.pop_lru() {
                Some((_, e)) => inner.bytes -= e.weight,
                None => break,
            }
        }
    }

    pub fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage { entries: inner.entries.len(), bytes: inner.bytes, budget: self.budget }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn the_byte_budget_holds_and_the_least_recently_used_go_first() {
        let cache = AnswerCache::new(4096);
        let body = Bytes::from(vec![b'x'; 300]);
        for i in 0..100 {
            cache.insert("a", 1, format!("key {i}"), body.clone(), Instant::now());
            // Key 0 stays in use: never the least recently used.
            assert!(cache.get("a", 1, "key 0", LONG).is_some(), "key 0 evicted at {i}");
            let u = cache.usage();
            assert!(u.bytes <= 4096, "{u:?}");
        }
        let u = cache.usage();
        let per_entry = "key 10".len() + 300 + ENTRY_OVERHEAD;
        assert_eq!(u.entries, 4096 / per_entry, "{u:?}");
        assert!(cache.get("a", 1, "key 98", LONG).is_some());
        assert!(cache.get("a", 1, "key 50", LONG).is_none());
        // Too large for the budget: not kept.
        cache.insert("a", 1, "big".into(), Bytes::from(vec![0; 2000]), Instant::now());
        assert!(cache.get("a", 1, "big", LONG).is_none());
    }

    #[test]
    fn another_index_drops_everything_and_an_older_look_up_cannot_switch_back() {
        let cache = AnswerCache::new(1 << 20);
        cache.insert("a", 1, "k".into(), Bytes::from_static(b"from a"), Instant::now());
        assert_eq!(cache.get("a", 2, "k", LONG).unwrap().body, Bytes::from_static(b"from a"));
        // The alias moved to b (look-up 3): a's answers are gone.
        assert!(cache.get("b", 3, "k", LONG).is_none());
        assert_eq!(cache.usage().entries, 0);
        // A request that looked the alias up before the move (2) neither reads nor writes.
        cache.insert("a", 2, "k".into(), Bytes::from_static(b"late a"), Instant::now());
        assert!(cache.get("a", 2, "k", LONG).is_none());
        cache.insert("b", 3, "k".into(), Bytes::from_static(b"from b"), Instant::now());
        assert_eq!(cache.get("b", 4, "k", LONG).unwrap().body, Bytes::from_static(b"from b"));
        // A rollback to a (look-up 5) drops b's.
        assert!(cache.get("a", 5, "k", LONG).is_none());
        assert_eq!(cache.usage(), Usage { entries: 0, bytes: 0, budget: 1 << 20 });
    }

    #[test]
    fn an_answer_is_reused_only_while_younger_than_max_age() {
        let cache = AnswerCache::new(1 << 20);
        let at = Instant::now() - Duration::from_millis(500);
        cache.insert("a", 1, "k".into(), Bytes::from_static(b"x"), at);
        let hit = cache.get("a", 1, "k", Duration::from_secs(1)).unwrap();
        assert!(hit.age >= Duration::from_millis(500));
        assert!(cache.get("a", 1, "k", Duration::from_millis(400)).is_none());
        // Dropped once too old.
        assert!(cache.get("a", 1, "k", LONG).is_none());
        assert_eq!(cache.usage().bytes, 0);
    }
}
