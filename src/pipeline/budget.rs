//! The shared cap on record bytes held in memory. Ingest reserves before it journals; the
//! pipeline releases once the records' object has landed. Past the cap, ingest is throttled.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;

pub struct MemoryBudget {
    used: AtomicU64,
    cap: u64,
    /// Mirrors `used` after every change, so the metric cannot drift from the accounting.
    gauge: IntGauge,
}

impl MemoryBudget {
    pub fn new(cap: u64, gauge: IntGauge) -> Self {
        MemoryBudget {
            used: AtomicU64::new(0),
            cap,
            gauge,
        }
    }

    /// Reserves `bytes` if they fit under the cap.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.cap).then_some(after)
            });
        if let Ok(before) = reserved {
            self.gauge.set((before + bytes) as i64);
        }
        reserved.is_ok()
    }

    /// Reserves regardless of the cap: replayed records are already acknowledged.
    pub fn force_reserve(&self, bytes: u64) {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        self.gauge.set((before + bytes) as i64);
    }

    pub fn release(&self, bytes: u64) {
        if let Ok(before) = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            })
        {
            self.gauge.set(before.saturating_sub(bytes) as i64);
        }
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
        let gauge = IntGauge::new("t", "t").unwrap();
        let b = MemoryBudget::new(10, gauge.clone());
        assert!(b.try_reserve(6));
        assert!(b.try_reserve(4));
        assert!(!b.try_reserve(1));
        b.release(4);
        assert!(b.try_reserve(1));
        assert_eq!(b.used(), 7);
        b.force_reserve(10);
        assert_eq!(b.used(), 17);
        assert_eq!(gauge.get(), 17);
        assert!(b.under_pressure());
    }
}
