//! The journal's write buffer: a growable byte buffer whose contents always start at a
//! [`BLOCK`]-aligned address, as `O_DIRECT` requires of the memory it writes from.
//!
//! Safe code only. It over-allocates a `Vec<u8>` by up to one block and keeps the contents from
//! the first aligned byte on. A `Vec` that reallocated by itself could land the contents off
//! alignment, so every operation that adds bytes reserves first: growth always goes through
//! [`AlignedBuf::realloc`], which takes a fresh allocation and copies the contents to its
//! aligned start, and the inner `Vec` never exceeds its capacity.

use std::ops::{Deref, DerefMut};

/// Alignment of the buffer's start, and the block size of direct writes (file offsets and
/// write lengths are multiples of it too). 4096 is a multiple of every common logical block
/// size.
pub(super) const BLOCK: usize = 4096;

/// Smallest capacity allocated, so a handful of small appends does not reallocate each time.
const MIN_CAPACITY: usize = BLOCK;

pub(super) struct AlignedBuf {
    /// `vec[..start]` is filler (zeros) before the aligned start; `vec[start..]` is the
    /// contents. `vec.len()` never exceeds `vec.capacity()` (see the module doc), so the
    /// allocation, and with it the alignment of `vec[start..]`, never changes behind our back.
    vec: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    /// An empty buffer; allocates nothing until bytes are added.
    pub(super) fn new() -> Self {
        AlignedBuf {
            vec: Vec::new(),
            start: 0,
        }
    }

    /// Bytes the buffer can hold before it has to reallocate.
    pub(super) fn capacity(&self) -> usize {
        self.vec.capacity() - self.start
    }

    /// Empties the buffer, keeping its allocation.
    pub(super) fn clear(&mut self) {
        self.vec.truncate(self.start);
    }

    /// Makes room for at least `additional` more bytes, at least doubling the capacity when it
    /// has to grow (amortized O(1) appends, like `Vec`).
    pub(super) fn reserve(&mut self, additional: usize) {
        if self.vec.capacity() - self.vec.len() >= additional {
            return;
        }
        let needed = self
            .len()
            .checked_add(additional)
            .expect("journal buffer capacity overflows usize");
        self.realloc(needed.max(2 * self.capacity()).max(MIN_CAPACITY));
    }

    pub(super) fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.vec.extend_from_slice(bytes);
    }

    pub(super) fn push(&mut self, byte: u8) {
        self.reserve(1);
        self.vec.push(byte);
    }

    /// Appends `n` zero bytes.
    pub(super) fn extend_zeros(&mut self, n: usize) {
        self.reserve(n);
        self.vec.resize(self.vec.len() + n, 0);
    }

    /// Reallocates to hold about `capacity` bytes (never fewer than the contents) if the buffer
    /// is larger than that.
    pub(super) fn shrink_to(&mut self, capacity: usize) {
        let capacity = capacity.max(self.len());
        if self.capacity() > capacity {
            self.realloc(capacity);
        }
    }

    /// Moves the contents into a fresh allocation with room for `capacity` bytes.
    fn realloc(&mut self, capacity: usize) {
        debug_assert!(capacity >= self.len());
        // One block minus one extra, so an aligned byte exists wherever the allocation lands.
        let total = capacity
            .checked_add(BLOCK - 1)
            .expect("journal buffer capacity overflows usize");
        let mut vec: Vec<u8> = Vec::with_capacity(total);
        debug_assert!(vec.capacity() >= total);
        // Bytes from the allocation's start to the next multiple of BLOCK: at most BLOCK - 1,
        // so filler plus contents fit in `total` and neither push below reallocates.
        let start = vec.as_ptr().addr().wrapping_neg() % BLOCK;
        vec.resize(start, 0);
        vec.extend_from_slice(self);
        self.vec = vec;
        self.start = start;
        debug_assert!(self.is_aligned());
    }

    /// Whether the contents start at a [`BLOCK`]-aligned address (always, once allocated).
    pub(super) fn is_aligned(&self) -> bool {
        self.vec[self.start..].as_ptr().addr().is_multiple_of(BLOCK)
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf::new()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.vec[self.start..]
    }
}

/// Mutable access to the bytes already in the buffer; it cannot change their number (that
/// goes through the methods above, which keep the alignment).
impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(buf: &AlignedBuf, expected: &[u8]) {
        assert_eq!(&buf[..], expected);
        assert!(buf.capacity() >= buf.len());
        if buf.capacity() > 0 {
            assert!(buf.is_aligned());
            assert_eq!(buf.as_ptr().addr() % BLOCK, 0);
        }
    }

    #[test]
    fn stays_aligned_while_growing_and_shrinking() {
        let mut buf = AlignedBuf::new();
        let mut expected = Vec::new();
        check(&buf, &expected);
        assert!(buf.is_empty());

        buf.push(7);
        expected.push(7);
        check(&buf, &expected);
        assert!(buf.capacity() >= MIN_CAPACITY);

        // Grow through many reallocations with appends of assorted sizes, checking the contents
        // survive every move and the start stays aligned.
        let mut moves = 0;
        let mut last_ptr = buf.as_ptr();
        for i in 0..200usize {
            let chunk: Vec<u8> = (0..i * 97 % 5000).map(|j| (i + j) as u8).collect();
            buf.extend_from_slice(&chunk);
            expected.extend_from_slice(&chunk);
            if i % 7 == 0 {
                buf.extend_zeros(i * 13);
                expected.resize(expected.len() + i * 13, 0);
            }
            check(&buf, &expected);
            if buf.as_ptr() != last_ptr {
                moves += 1;
                last_ptr = buf.as_ptr();
            }
        }
        assert!(moves >= 3, "{moves} reallocations");
        // Amortized growth: far fewer moves than appends.
        assert!(moves < 30, "{moves} reallocations");

        // An explicit reserve never moves the contents afterwards until it is used up.
        buf.reserve(1 << 20);
        let ptr = buf.as_ptr();
        buf.extend_zeros(1 << 20);
        expected.resize(expected.len() + (1 << 20), 0);
        assert_eq!(buf.as_ptr(), ptr);
        check(&buf, &expected);

        // Writable in place.
        buf[3] = 0xaa;
        expected[3] = 0xaa;
        check(&buf, &expected);

        // Shrinking never drops contents; clear keeps the (aligned) allocation.
        buf.shrink_to(10);
        check(&buf, &expected);
        let capacity = buf.capacity();
        buf.clear();
        check(&buf, &[]);
        assert_eq!(buf.capacity(), capacity);
        assert!(buf.is_aligned());
        buf.shrink_to(2 * BLOCK);
        assert!(buf.capacity() >= 2 * BLOCK && buf.capacity() < capacity);
        buf.extend_from_slice(b"again");
        check(&buf, b"again");
    }

    #[test]
    fn many_buffers_are_all_aligned() {
        // Allocations of assorted sizes land at assorted addresses; every one is aligned.
        let bufs: Vec<AlignedBuf> = (0..64)
            .map(|i| {
                let mut buf = AlignedBuf::new();
                buf.extend_from_slice(&vec![i as u8; 1 + i * 37]);
                buf
            })
            .collect();
        for (i, buf) in bufs.iter().enumerate() {
            check(buf, &vec![i as u8; 1 + i * 37]);
        }
    }
}
