//! Frame layer: turns byte payloads into self-checking, length-prefixed frames and back.
//!
//! Layout: `[len: u32 LE][crc32: u32 LE][kind: u8][payload: len bytes]`, where the CRC covers
//! `kind` and `payload`. A frame says nothing about what its payload means; that is the entry
//! layer's job.

use std::io::{self, Read};

use super::aligned::AlignedBuf;

/// Bytes before the payload: length, CRC and kind.
pub(super) const HEADER_LEN: usize = 9;

/// Largest payload a frame can carry (the length field is a u32).
pub(super) const MAX_PAYLOAD: u64 = u32::MAX as u64;

/// Starts a frame of `kind` at the end of `buf`; the caller appends the payload, then calls
/// [`finish`] with the returned offset. Length and CRC are filled in afterwards so the payload
/// can be serialized straight into `buf` without an intermediate copy.
pub(super) fn begin(buf: &mut AlignedBuf, kind: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER_LEN - 1]);
    buf.push(kind);
    start
}

/// Completes the frame started at `start`. The caller has checked the payload against
/// [`MAX_PAYLOAD`] before serializing it.
pub(super) fn finish(buf: &mut [u8], start: usize) {
    let payload_len = buf.len() - start - HEADER_LEN;
    debug_assert!(payload_len as u64 <= MAX_PAYLOAD);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a frame could not be read. At the end of the last segment this is what an interrupted
/// write looks like; anywhere else it is corruption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Damage {
    TruncatedHeader,
    TruncatedPayload,
    CrcMismatch,
}

impl Damage {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Damage::TruncatedHeader => "frame header cut short",
            Damage::TruncatedPayload => "frame payload cut short",
            Damage::CrcMismatch => "frame CRC mismatch",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// A whole, CRC-valid frame; its payload is in the caller's buffer.
    Frame { kind: u8 },
    /// Clean end of the file.
    End,
    /// The bytes at the current offset are not a valid frame.
    Damaged(Damage),
}

/// Reads frames sequentially from a file of known length.
pub(super) struct Reader<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    pub(super) fn new(inner: R, len: u64) -> Self {
        Reader {
            inner,
            offset: 0,
            len,
        }
    }

    /// Offset of the next frame, i.e. the end of the last good one.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next frame's payload into `payload` (reused across calls). After a
    /// `Damaged` or `End` result the reader must not be used again.
    pub(super) fn next(&mut self, payload: &mut Vec<u8>) -> io::Result<Next> {
        let remaining = self.len - self.offset;
        if remaining == 0 {
            return Ok(Next::End);
        }
        if remaining < HEADER_LEN as u64 {
            return Ok(Next::Damaged(Damage::TruncatedHeader));
        }
        let mut header = [0u8; HEADER_LEN];
        self.inner.read_exact(&mut header)?;
        let (len, crc, kind) = parse_header(&header);
        // Checking against the file length first means a garbage length never makes us
        // allocate more than the file holds.
        if u64::from(len) > remaining - HEADER_LEN as u64 {
            return Ok(Next::Damaged(Damage::TruncatedPayload));
        }
        payload.clear();
        payload.resize(len as usize, 0);
        self.inner.read_exact(payload)?;
        if checksum(kind, payload) != crc {
            return Ok(Next::Damaged(Damage::CrcMismatch));
        }
        self.offset += HEADER_LEN as u64 + u64::from(len);
        Ok(Next::Frame { kind })
    }
}

/// Splits a frame header into (payload length, CRC, kind).
pub(super) fn parse_header(header: &[u8; HEADER_LEN]) -> (u32, u32, u8) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc, header[8])
}

pub(super) fn checksum(kind: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = AlignedBuf::new();
        let start = begin(&mut buf, kind);
        buf.extend_from_slice(payload);
        finish(&mut buf, start);
        buf.to_vec()
    }

    fn read_all(bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, Next, u64) {
        let mut reader = Reader::new(bytes, bytes.len() as u64);
        let mut payload = Vec::new();
        let mut frames = Vec::new();
        loop {
            match reader.next(&mut payload).expect("reading from a slice") {
                Next::Frame { kind } => frames.push((kind, payload.clone())),
                other => return (frames, other, reader.offset()),
            }
        }
    }

    #[test]
    fn roundtrip_and_damage() {
        let mut bytes = frame(1, b"hello");
        bytes.extend(frame(2, b""));
        bytes.extend(frame(3, &[7u8; 300]));
        let (frames, end, offset) = read_all(&bytes);
        assert_eq!(end, Next::End);
        assert_eq!(offset, bytes.len() as u64);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], (1, b"hello".to_vec()));
        assert_eq!(frames[1], (2, Vec::new()));

        let first_two = (2 * HEADER_LEN + 5) as u64;
        let (frames, end, offset) = read_all(&bytes[..bytes.len() - 1]);
        assert_eq!(
            (frames.len(), end, offset),
            (2, Next::Damaged(Damage::TruncatedPayload), first_two)
        );
        let (_, end, _) = read_all(&bytes[..first_two as usize + 3]);
        assert_eq!(end, Next::Damaged(Damage::TruncatedHeader));

        let mut flipped = bytes.clone();
        flipped[first_two as usize + HEADER_LEN + 10] ^= 0x40;
        let (frames, end, offset) = read_all(&flipped);
        assert_eq!(
            (frames.len(), end, offset),
            (2, Next::Damaged(Damage::CrcMismatch), first_two)
        );

        // A zero-filled tail (what some file systems leave after a crash) is not a valid frame.
        let mut zeroed = bytes.clone();
        zeroed.extend([0u8; 64]);
        let (frames, end, _) = read_all(&zeroed);
        assert_eq!((frames.len(), end), (3, Next::Damaged(Damage::CrcMismatch)));
    }
}
