//! Numeric ids for things the maps name by number (reverse-NAT ids,
//! backends, identities, CIDRs, policies): one allocator for every writer.
//!
//! An id is held while its key exists and handed back when it goes; the
//! lowest free id is handed out first, so ids stay small and dense. An
//! allocator can start from what the maps already hold, so that a restarted
//! writer gives every key the id it had.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct IdAllocator<K: Ord + Clone> {
    ids: BTreeMap<K, u32>,
    /// Released ids below `next`.
    free: BTreeSet<u32>,
    next: u32,
}

impl<K: Ord + Clone> IdAllocator<K> {
    /// An allocator handing out ids from `first` up.
    pub fn new(first: u32) -> Self {
        IdAllocator {
            ids: BTreeMap::new(),
            free: BTreeSet::new(),
            next: first,
        }
    }

    /// An allocator that knows `held` (key, id) pairs already: the gaps
    /// below the highest one are free.
    pub fn with_held(first: u32, held: impl IntoIterator<Item = (K, u32)>) -> Self {
        let mut a = IdAllocator::new(first);
        for (k, id) in held {
            a.ids.insert(k, id);
        }
        let used: BTreeSet<u32> = a.ids.values().copied().collect();
        a.next = used.last().map_or(first, |m| (m + 1).max(first));
        a.free = (first..a.next).filter(|i| !used.contains(i)).collect();
        a
    }

    /// The id of `k`, if it has one.
    pub fn get(&self, k: &K) -> Option<u32> {
        self.ids.get(k).copied()
    }

    /// The id of `k`, given one if it has none.
    pub fn id(&mut self, k: &K) -> u32 {
        if let Some(id) = self.ids.get(k) {
            return *id;
        }
        let id = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.ids.insert(k.clone(), id);
        id
    }

    /// `k` goes; its id may be handed out again.
    pub fn release(&mut self, k: &K) -> Option<u32> {
        let id = self.ids.remove(k)?;
        self.free.insert(id);
        Some(id)
    }

    /// Release every key not in `live`.
    pub fn retain(&mut self, live: &BTreeSet<K>) {
        let dead: Vec<K> = self.ids.keys().filter(|k| !live.contains(*k)).cloned().collect();
        for k in dead {
            self.release(&k);
        }
    }

    /// Every (key, id) held.
    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.ids.iter().map(|(k, id)| (k, *id))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lowest_free_first_and_stable() {
        let mut a = IdAllocator::new(1);
        assert_eq!((a.id(&"x"), a.id(&"y"), a.id(&"z")), (1, 2, 3));
        assert_eq!(a.id(&"y"), 2, "a key keeps its id");
        a.release(&"x");
        a.release(&"y");
        assert_eq!(a.id(&"w"), 1, "the lowest released id first");
        let b = IdAllocator::with_held(256, [("a", 256), ("b", 259)]);
        assert_eq!(b.clone().id(&"c"), 257, "a gap below the highest held id");
        assert_eq!(b.get(&"b"), Some(259));
        assert_eq!(IdAllocator::<u8>::with_held(256, []).id(&1), 256);
    }

    proptest! {
        /// However keys come and go, no two live keys share an id and every
        /// id is at least `first`.
        #[test]
        fn ids_are_unique(ops in proptest::collection::vec((any::<bool>(), 0u8..20), 0..200)) {
            let mut a = IdAllocator::new(10);
            for (add, k) in ops {
                if add { a.id(&k); } else { a.release(&k); }
                let ids: BTreeSet<u32> = a.iter().map(|(_, id)| id).collect();
                prop_assert_eq!(ids.len(), a.len());
                prop_assert!(ids.iter().all(|i| *i >= 10));
            }
        }
    }
}
