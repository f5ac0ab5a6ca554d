//! The shared cap on record bytes held in memory. Ingest reserves before it journals; the
//! reservation then travels with the records (open buffer, sealed batch, partition buffer,
//! upload) and is given back when the value holding it is dropped, once the records' object
//! has landed or been given up. Past the cap, ingest is throttled.
//!
//! A [`Reservation`] is the only way to hold budget: nothing releases by hand, so a release
//! cannot happen twice or be forgotten.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio::time::Instant;

pub struct MemoryBudget {
    used: AtomicU64,
    cap: u64,
    /// Mirrors `used` after every change, so the metric cannot drift from the accounting.
    gauge: IntGauge,
    /// Woken whenever bytes come back, for ingest waiting for room ([`MemoryBudget::wait_for_room`]).
    released: Notify,
}

impl MemoryBudget {
    pub fn new(cap: u64, gauge: IntGauge) -> Self {
        MemoryBudget {
            used: AtomicU64::new(0),
            cap,
            gauge,
            released: Notify::new(),
        }
    }

    /// Waits until `bytes` more would fit under the cap, or until `deadline`: false if the
    /// deadline came first. Nothing is reserved; the caller tries again (and may lose the
    /// room to another caller, then waits again until its deadline).
    pub async fn wait_for_room(&self, bytes: u64, deadline: Instant) -> bool {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between the check and the wait wakes it.
            released.as_mut().enable();
            if self.used().saturating_add(bytes) <= self.cap {
                return true;
            }
            tokio::select! {
                _ = &mut released => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Reserves `bytes` if they fit under the cap.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        self.add_if_fits(bytes).then(|| Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Reserves regardless of the cap: replayed records are already acknowledged, and a
    /// transform may return more than it was given.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        self.force_add(bytes);
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// Nothing reserved yet, to gather into.
    pub fn none(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn add_if_fits(&self, bytes: u64) -> bool {
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

    fn force_add(&self, bytes: u64) {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        self.gauge.set((before + bytes) as i64);
    }

    fn release(&self, bytes: u64) {
        if let Ok(before) = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            })
        {
            self.gauge.set(before.saturating_sub(bytes) as i64);
        }
        self.released.notify_waiters();
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
impl MemoryBudget {
    /// A budget for unit tests, its gauge registered nowhere.
    pub fn for_tests(cap: u64) -> Arc<MemoryBudget> {
        let gauge = IntGauge::new("memory_for_tests", "unit tests").expect("a valid name");
        Arc::new(MemoryBudget::new(cap, gauge))
    }
}

/// Budget held by some records; given back when dropped.
#[must_use = "dropping a reservation gives its bytes back at once"]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes over `other`'s bytes.
    pub fn merge(&mut self, mut other: Reservation) {
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Moves up to `bytes` of this reservation into a new one.
    pub fn split(&mut self, bytes: u64) -> Reservation {
        let moved = bytes.min(self.bytes);
        self.bytes -= moved;
        Reservation {
            budget: self.budget.clone(),
            bytes: moved,
        }
    }

    /// Holds exactly `bytes` from now on: the difference is reserved (regardless of the cap)
    /// or given back.
    pub fn resize(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.budget.force_add(bytes - self.bytes);
        } else {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_up_to_the_cap_exactly() {
        let gauge = IntGauge::new("t", "t").unwrap();
        let b = Arc::new(MemoryBudget::new(10, gauge.clone()));
        let six = b.try_reserve(6).unwrap();
        let four = b.try_reserve(4).unwrap();
        assert!(b.try_reserve(1).is_none());
        drop(four);
        let one = b.try_reserve(1).unwrap();
        assert_eq!(b.used(), 7);
        let ten = b.reserve(10);
        assert_eq!(b.used(), 17);
        assert_eq!(gauge.get(), 17);
        assert!(b.under_pressure());
        drop((six, one, ten));
        assert_eq!((b.used(), gauge.get()), (0, 0));
    }

    #[test]
    fn reservations_move_between_owners_and_give_back_once() {
        let b = MemoryBudget::for_tests(100);
        let mut batch = b.none();
        batch.merge(b.try_reserve(30).unwrap());
        batch.merge(b.try_reserve(20).unwrap());
        assert_eq!((batch.bytes(), b.used()), (50, 50));
        // A transform made one part larger than its share and dropped the rest.
        let mut part = batch.split(10);
        part.resize(25);
        assert_eq!((part.bytes(), batch.bytes(), b.used()), (25, 40, 65));
        let too_much = batch.split(1000);
        assert_eq!((too_much.bytes(), batch.bytes()), (40, 0));
        drop(too_much);
        drop(batch);
        assert_eq!(b.used(), 25);
        part.resize(5);
        assert_eq!(b.used(), 5);
        drop(part);
        assert_eq!(b.used(), 0);
    }
}
