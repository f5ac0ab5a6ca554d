//! The open buffer: durable records in position order, until it is sealed into a [`Batch`]
//! by size (the caller's threshold) or by age (its deadline: the interval after its oldest
//! record arrived, however long that record waited before reaching it). Pure: the clock is
//! passed in, nothing here does I/O.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::journal::Position;

use super::budget::Reservation;

/// A sealed run of records: positions `start..end`, all held in memory.
pub struct Batch {
    pub start: Position,
    pub end: Position,
    pub records: Vec<Bytes>,
    /// Each record's arrival, ms since the epoch (for transforms and error records).
    pub arrivals: Vec<u64>,
    /// The records' bytes in the memory budget.
    pub memory: Reservation,
    pub oldest_ms: u64,
}

impl Batch {
    pub fn bytes(&self) -> u64 {
        self.memory.bytes()
    }
}

/// What the clock says, read once by the caller: wall time for arrivals, the runtime's
/// instant for deadlines.
#[derive(Clone, Copy)]
pub struct Now {
    pub ms: u64,
    pub instant: Instant,
}

impl Now {
    pub fn read() -> Now {
        Now {
            ms: super::now_ms(),
            instant: Instant::now(),
        }
    }

    /// When something that started waiting at `since_ms` has waited `interval`.
    pub fn deadline(&self, since_ms: u64, interval: Duration) -> Instant {
        let waited = Duration::from_millis(self.ms.saturating_sub(since_ms));
        self.instant + interval.saturating_sub(waited)
    }
}

pub struct OpenBuffer {
    start: Option<Position>,
    records: Vec<Bytes>,
    arrivals: Vec<u64>,
    memory: Reservation,
    oldest_ms: u64,
    deadline: Option<Instant>,
}

impl OpenBuffer {
    pub fn new(memory: Reservation) -> OpenBuffer {
        OpenBuffer {
            start: None,
            records: Vec::new(),
            arrivals: Vec::new(),
            memory,
            oldest_ms: 0,
            deadline: None,
        }
    }

    /// Adds one record; the first one starts the buffer's `interval`, counted from its arrival.
    /// `now` reads the clock, only for that first record (this runs for every record).
    pub fn push(
        &mut self,
        position: Position,
        arrival_ms: u64,
        data: Bytes,
        memory: Reservation,
        now: impl FnOnce() -> Now,
        interval: Duration,
    ) {
        if self.start.is_none() {
            self.start = Some(position);
            self.oldest_ms = arrival_ms;
            self.deadline = Some(now().deadline(arrival_ms, interval));
        }
        self.memory.merge(memory);
        self.records.push(data);
        self.arrivals.push(arrival_ms);
    }

    /// Seals what is open as the batch of positions up to `end`; None when empty.
    pub fn seal(&mut self, end: Position) -> Option<Batch> {
        let start = self.start.take()?;
        self.deadline = None;
        Some(Batch {
            start,
            end,
            records: std::mem::take(&mut self.records),
            arrivals: std::mem::take(&mut self.arrivals),
            memory: self.memory.split(u64::MAX),
            oldest_ms: self.oldest_ms,
        })
    }

    pub fn start(&self) -> Option<Position> {
        self.start
    }

    pub fn bytes(&self) -> u64 {
        self.memory.bytes()
    }

    /// Arrival of the oldest record, if any.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.start.map(|_| self.oldest_ms)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::MemoryBudget;

    fn budget() -> Arc<MemoryBudget> {
        MemoryBudget::for_tests(1 << 20)
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_oldest_arrival() {
        let memory = budget();
        let mut open = OpenBuffer::new(memory.none());
        let interval = Duration::from_secs(60);
        let now = Now {
            ms: 1_000_000,
            instant: Instant::now(),
        };
        // The first record waited 15 s (a replay, a slow journal) before reaching the buffer.
        open.push(
            Position(7),
            985_000,
            Bytes::from_static(b"a"),
            memory.reserve(1),
            || now,
            interval,
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        let later = Now {
            ms: 1_030_000,
            instant: Instant::now(),
        };
        open.push(
            Position(8),
            1_030_000,
            Bytes::from_static(b"bc"),
            memory.reserve(2),
            || later,
            interval,
        );
        assert_eq!(open.deadline(), Some(now.instant + Duration::from_secs(45)));
        assert_eq!((open.bytes(), open.oldest_ms()), (3, Some(985_000)));
        tokio::time::sleep_until(open.deadline().unwrap()).await;
        assert_eq!(Instant::now() - now.instant, Duration::from_secs(45));
        let batch = open.seal(Position(9)).unwrap();
        assert_eq!(
            (batch.start, batch.end, batch.bytes()),
            (Position(7), Position(9), 3)
        );
        assert_eq!(batch.arrivals, [985_000, 1_030_000]);
        assert!(open.seal(Position(9)).is_none());
        assert_eq!((open.bytes(), open.deadline(), memory.used()), (0, None, 3));
        drop(batch);
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_older_than_the_interval_is_due_at_once() {
        let memory = budget();
        let mut open = OpenBuffer::new(memory.none());
        let now = Now::read();
        open.push(
            Position(0),
            now.ms - 120_000,
            Bytes::new(),
            memory.none(),
            || now,
            Duration::from_secs(60),
        );
        assert_eq!(open.deadline(), Some(now.instant));
    }
}
