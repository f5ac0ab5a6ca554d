//! When a partitioned batch commits. Its records leave in several objects (its error objects,
//! and the partition objects that its records joined, shared with other batches); it may
//! commit only once every one of them has landed. Pure bookkeeping: no I/O, no clock.

use std::collections::HashMap;

use crate::journal::Position;

/// A partitioned batch between its seal and its commit.
struct Hold {
    /// Its own work (processing, error objects) plus each partition object holding its
    /// records that has not landed yet.
    pending: usize,
    processed: bool,
    /// Something was abandoned: the batch stays pending in the journal.
    abandoned: bool,
}

/// How a batch's last hold ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Every object holding its records landed: commit it.
    Landed,
    /// Something was abandoned: it stays pending in the journal.
    Abandoned,
}

#[derive(Default)]
pub struct Holds {
    open: HashMap<Position, Hold>,
}

impl Holds {
    /// A batch sealed: it holds itself until its own work ends.
    pub fn open(&mut self, start: Position) {
        self.open.insert(
            start,
            Hold {
                pending: 1,
                processed: false,
                abandoned: false,
            },
        );
    }

    pub fn contains(&self, start: Position) -> bool {
        self.open.contains_key(&start)
    }

    /// One more object holds the batch's records.
    pub fn add(&mut self, start: Position) {
        if let Some(h) = self.open.get_mut(&start) {
            h.pending += 1;
        }
    }

    /// The batch's processing ended; true if it had not already.
    pub fn processed(&mut self, start: Position) -> bool {
        self.open
            .get_mut(&start)
            .is_some_and(|h| !std::mem::replace(&mut h.processed, true))
    }

    /// Batches whose processing has not ended.
    pub fn any_unprocessed(&self) -> bool {
        self.open.values().any(|h| !h.processed)
    }

    /// One hold of the batch at `start` is over; the last one settles it.
    pub fn release(&mut self, start: Position, landed: bool) -> Option<Settled> {
        let h = self.open.get_mut(&start)?;
        h.pending -= 1;
        h.abandoned |= !landed;
        if h.pending > 0 {
            return None;
        }
        let abandoned = h.abandoned;
        self.open.remove(&start);
        Some(if abandoned {
            Settled::Abandoned
        } else {
            Settled::Landed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_settles_when_its_last_object_does() {
        let mut h = Holds::default();
        let (a, b) = (Position(0), Position(10));
        h.open(a);
        h.open(b);
        // a's records went to two partition objects, b's to one shared with a.
        h.add(a);
        h.add(a);
        h.add(b);
        assert!(h.processed(a) && h.processed(b));
        assert!(!h.processed(a), "once");
        assert!(!h.any_unprocessed());
        assert_eq!(h.release(a, true), None, "its error objects landed");
        assert_eq!(h.release(a, true), None);
        assert_eq!(h.release(b, false), None, "the shared object was abandoned");
        assert_eq!(h.release(a, false), Some(Settled::Abandoned));
        assert_eq!(h.release(b, true), Some(Settled::Abandoned));
        assert!(!h.contains(a) && !h.contains(b));
        assert_eq!(h.release(a, true), None, "unknown batches are ignored");
        h.open(Position(20));
        assert!(h.any_unprocessed());
        assert_eq!(h.release(Position(20), true), Some(Settled::Landed));
    }
}
