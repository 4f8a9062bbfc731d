//! The ids of the notes a sink worker handed on lately, so that a copy is not sent again.
//!
//! A note reaches a sink's queue more than once when a store write timed out but was
//! carried out later (a paused or overloaded Redis runs it when it resumes, and the
//! writer or the dispatcher has retried it meanwhile), or when the dispatcher retried a
//! batch after an error. Every copy has the note's id. The journal keeps one note per id;
//! amoCRM does not deduplicate, so a copy leased in a later batch would be a second note
//! on the contact.
//!
//! Copies sit close together in the queue (the retried writes run one after another),
//! so the last [`RecentlyDelivered::KEPT`] ids are enough. In memory, per worker: a copy
//! leased by another node's worker, or after a restart, is sent again.

use std::collections::{HashSet, VecDeque};

/// Note ids in the order they were handed on, the oldest forgotten first.
#[derive(Default)]
pub(crate) struct RecentlyDelivered {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl RecentlyDelivered {
    /// Ids kept: about 3 MB, over a minute of amoCRM's paced maximum.
    pub(crate) const KEPT: usize = 1 << 17;

    /// Remembers a note being handed on (to be taken, or set aside for good); false if
    /// it was already, so this one is a copy.
    pub(crate) fn insert(&mut self, id: u64) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        true
    }

    /// Forgets a note set aside for good: if an operator replays it, it is no copy.
    pub(crate) fn forget(&mut self, id: u64) {
        self.ids.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_latest_ids_and_forgets_the_oldest_first() {
        let mut delivered = RecentlyDelivered::default();
        let extra = 10u64;
        for id in 0..RecentlyDelivered::KEPT as u64 + extra {
            assert!(delivered.insert(id));
            assert!(!delivered.insert(id), "a copy: no second place in line");
        }
        assert!((0..extra).all(|id| !delivered.ids.contains(&id)), "the oldest went");
        assert!((extra..RecentlyDelivered::KEPT as u64 + extra).all(|id| delivered.ids.contains(&id)));
        assert_eq!(delivered.order.len(), RecentlyDelivered::KEPT);
        assert_eq!(delivered.ids.len(), RecentlyDelivered::KEPT);
        delivered.forget(extra);
        assert!(delivered.insert(extra), "a forgotten id is no copy");
    }
}
