//! The shared cap on record bytes held in memory. Ingest reserves before it journals; the
//! pipeline releases once the records' object has landed. Past the cap, ingest is throttled.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct MemoryBudget {
    used: AtomicU64,
    cap: u64,
}

impl MemoryBudget {
    pub fn new(cap: u64) -> Self {
        MemoryBudget {
            used: AtomicU64::new(0),
            cap,
        }
    }

    /// Reserves `bytes` if they fit under the cap.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.cap).then_some(after)
            })
            .is_ok()
    }

    /// Reserves regardless of the cap: replayed records are already acknowledged.
    pub fn force_reserve(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Above half the cap, pipelines seal large open buffers early so a big size hint cannot
    /// hold the budget until its interval expires.
    pub fn under_pressure(&self) -> bool {
        self.used() > self.cap / 2
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_up_to_the_cap_exactly() {
        let b = MemoryBudget::new(10);
        assert!(b.try_reserve(6));
        assert!(b.try_reserve(4));
        assert!(!b.try_reserve(1));
        b.release(4);
        assert!(b.try_reserve(1));
        assert_eq!(b.used(), 7);
        b.force_reserve(10);
        assert_eq!(b.used(), 17);
        assert!(b.under_pressure());
    }
}
