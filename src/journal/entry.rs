//! Entry layer: what a frame's payload means. All integers are little-endian.
//!
//! | kind | entry   | payload                                                            |
//! |------|---------|--------------------------------------------------------------------|
//! | 0    | header  | magic `SPWYWAL\0`, version u32, first position u64                 |
//! | 1    | records | first position u64, count u32, then per record: arrival_ms u64, len u32, bytes |
//! | 2    | seal    | start u64, end u64, meta (rest of the payload)                     |
//! | 3    | commit  | start u64                                                          |
//! | 4    | padding | zeros (any number); fills a direct-I/O write up to a block boundary |
//! | 5    | flush   | meta (the whole payload): an object written from several seals      |

use std::ops::Range;

use super::aligned::AlignedBuf;
use super::{Position, RecordRef, Seal};

pub(super) const KIND_HEADER: u8 = 0;
pub(super) const KIND_RECORDS: u8 = 1;
pub(super) const KIND_SEAL: u8 = 2;
pub(super) const KIND_COMMIT: u8 = 3;
/// Filler that means nothing; replay skips it wherever it appears after the header.
pub(super) const KIND_PADDING: u8 = 4;
pub(super) const KIND_FLUSH: u8 = 5;

const MAGIC: &[u8; 8] = b"SPWYWAL\0";
const VERSION: u32 = 1;
const HEADER_PAYLOAD_LEN: usize = 8 + 4 + 8;
const RECORDS_PREFIX_LEN: usize = 8 + 4;
const RECORD_PREFIX_LEN: usize = 8 + 4;

/// Payload size of a records entry; `None` on arithmetic overflow.
pub(super) fn records_payload_len(records: &[RecordRef<'_>]) -> Option<u64> {
    records
        .iter()
        .try_fold(RECORDS_PREFIX_LEN as u64, |acc, r| {
            acc.checked_add(RECORD_PREFIX_LEN as u64)?
                .checked_add(r.data.len() as u64)
        })
}

pub(super) fn seal_payload_len(seal: &Seal) -> u64 {
    16 + seal.meta.len() as u64
}

pub(super) fn encode_header(buf: &mut AlignedBuf, first: Position) {
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&first.0.to_le_bytes());
}

/// The caller has checked `records_payload_len` against the frame limit, which also bounds the
/// count and every record length by `u32::MAX`, so the `as u32` casts cannot truncate.
pub(super) fn encode_records(buf: &mut AlignedBuf, first: Position, records: &[RecordRef<'_>]) {
    buf.extend_from_slice(&first.0.to_le_bytes());
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for record in records {
        buf.extend_from_slice(&record.arrival_ms.to_le_bytes());
        buf.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
        buf.extend_from_slice(record.data);
    }
}

pub(super) fn encode_seal(buf: &mut AlignedBuf, seal: &Seal) {
    buf.extend_from_slice(&seal.start.0.to_le_bytes());
    buf.extend_from_slice(&seal.end.0.to_le_bytes());
    buf.extend_from_slice(&seal.meta);
}

pub(super) fn encode_commit(buf: &mut AlignedBuf, start: Position) {
    buf.extend_from_slice(&start.0.to_le_bytes());
}

pub(super) fn encode_padding(buf: &mut AlignedBuf, len: usize) {
    buf.extend_zeros(len);
}

/// A decoded entry. Records are only described here (position range); their bytes are read
/// separately with [`RecordsIter`] so a scan never copies record data.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Entry {
    Header { first: Position },
    Records { first: Position, count: u32 },
    Seal(Seal),
    Commit { start: Position },
    Padding,
    Flush(Vec<u8>),
}

/// Decodes and fully validates a payload (a CRC-valid frame that does not decode means a bug
/// or a foreign file, never a torn write).
pub(super) fn decode(kind: u8, payload: &[u8]) -> Result<Entry, &'static str> {
    let mut d = Decoder(payload);
    let entry = match kind {
        KIND_HEADER => {
            if payload.len() != HEADER_PAYLOAD_LEN {
                return Err("segment header has the wrong size");
            }
            if d.take(MAGIC.len()) != Some(MAGIC.as_slice()) {
                return Err("segment header has the wrong magic");
            }
            if d.u32() != Some(VERSION) {
                return Err("segment header has an unsupported version");
            }
            Entry::Header {
                first: Position(d.u64().ok_or("segment header cut short")?),
            }
        }
        KIND_RECORDS => {
            let (first, iter) = RecordsIter::new(payload)?;
            let count = iter.count;
            for item in iter {
                item?;
            }
            Entry::Records { first, count }
        }
        KIND_SEAL => {
            let start = Position(d.u64().ok_or("seal entry cut short")?);
            let end = Position(d.u64().ok_or("seal entry cut short")?);
            Entry::Seal(Seal {
                start,
                end,
                meta: d.0.to_vec(),
            })
        }
        KIND_COMMIT => {
            let start = Position(d.u64().ok_or("commit entry cut short")?);
            if !d.0.is_empty() {
                return Err("commit entry has trailing bytes");
            }
            Entry::Commit { start }
        }
        KIND_FLUSH => Entry::Flush(payload.to_vec()),
        KIND_PADDING => {
            // Only ever written as zeros: anything else under a valid CRC is not ours.
            if payload.iter().any(|&b| b != 0) {
                return Err("padding entry holds non-zero bytes");
            }
            Entry::Padding
        }
        _ => return Err("unknown entry kind"),
    };
    Ok(entry)
}

/// Walks the records of a records payload, yielding (arrival_ms, byte range in the payload),
/// so callers can slice a shared buffer instead of copying.
pub(super) struct RecordsIter<'a> {
    payload: &'a [u8],
    offset: usize,
    count: u32,
    yielded: u32,
}

impl<'a> RecordsIter<'a> {
    pub(super) fn new(payload: &'a [u8]) -> Result<(Position, Self), &'static str> {
        let mut d = Decoder(payload);
        let first = d.u64().ok_or("records entry cut short")?;
        let count = d.u32().ok_or("records entry cut short")?;
        if first.checked_add(u64::from(count)).is_none() {
            return Err("records entry position overflows");
        }
        let iter = RecordsIter {
            payload,
            offset: RECORDS_PREFIX_LEN,
            count,
            yielded: 0,
        };
        Ok((Position(first), iter))
    }
}

impl Iterator for RecordsIter<'_> {
    type Item = Result<(u64, Range<usize>), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.yielded == self.count {
            return if self.offset == self.payload.len() {
                None
            } else {
                self.yielded = self.count;
                self.offset = self.payload.len();
                Some(Err("records entry has trailing bytes"))
            };
        }
        let mut d = Decoder(&self.payload[self.offset..]);
        let item = (|| {
            let arrival = d.u64()?;
            let len = d.u32()? as usize;
            d.take(len)?;
            Some((arrival, len))
        })();
        let Some((arrival, len)) = item else {
            // Stop after reporting, so a caller that keeps iterating ends.
            self.yielded = self.count;
            self.offset = self.payload.len();
            return Some(Err("records entry cut short"));
        };
        let start = self.offset + RECORD_PREFIX_LEN;
        self.offset = start + len;
        self.yielded += 1;
        Some(Ok((arrival, start..start + len)))
    }
}

/// Minimal little-endian cursor; every read is bounds-checked.
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, tail) = self.0.split_first_chunk::<8>()?;
        self.0 = tail;
        Some(u64::from_le_bytes(*head))
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, tail) = self.0.split_first_chunk::<4>()?;
        self.0 = tail;
        Some(u32::from_le_bytes(*head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip() {
        let mut buf = AlignedBuf::new();
        encode_header(&mut buf, Position(42));
        assert_eq!(
            decode(KIND_HEADER, &buf),
            Ok(Entry::Header {
                first: Position(42)
            })
        );

        let records = [
            RecordRef {
                arrival_ms: 5,
                data: b"abc",
            },
            RecordRef {
                arrival_ms: 6,
                data: b"",
            },
            RecordRef {
                arrival_ms: 7,
                data: b"zz",
            },
        ];
        buf.clear();
        encode_records(&mut buf, Position(9), &records);
        assert_eq!(records_payload_len(&records), Some(buf.len() as u64));
        assert_eq!(
            decode(KIND_RECORDS, &buf),
            Ok(Entry::Records {
                first: Position(9),
                count: 3
            })
        );
        let (first, iter) = RecordsIter::new(&buf).expect("valid records entry");
        assert_eq!(first, Position(9));
        let decoded: Vec<(u64, &[u8])> = iter
            .map(|item| item.map(|(arrival, range)| (arrival, &buf[range])))
            .collect::<Result<_, _>>()
            .expect("valid records entry");
        assert_eq!(
            decoded,
            vec![(5, &b"abc"[..]), (6, &b""[..]), (7, &b"zz"[..])]
        );
        assert!(decode(KIND_RECORDS, &buf[..buf.len() - 1]).is_err());
        let mut longer = buf.to_vec();
        longer.push(0);
        assert!(decode(KIND_RECORDS, &longer).is_err());

        let seal = Seal {
            start: Position(1),
            end: Position(4),
            meta: b"key".to_vec(),
        };
        buf.clear();
        encode_seal(&mut buf, &seal);
        assert_eq!(seal_payload_len(&seal), buf.len() as u64);
        assert_eq!(decode(KIND_SEAL, &buf), Ok(Entry::Seal(seal)));

        buf.clear();
        encode_commit(&mut buf, Position(77));
        assert_eq!(
            decode(KIND_COMMIT, &buf),
            Ok(Entry::Commit {
                start: Position(77)
            })
        );
        assert!(decode(9, &buf).is_err());

        for len in [0, 1, 4087] {
            buf.clear();
            encode_padding(&mut buf, len);
            assert_eq!(buf.len(), len);
            assert_eq!(decode(KIND_PADDING, &buf), Ok(Entry::Padding));
            if len > 0 {
                buf[len / 2] = 1;
                assert!(decode(KIND_PADDING, &buf).is_err());
            }
        }
    }

    #[test]
    fn padding_frame_roundtrip() {
        use super::super::frame::{self, Next};

        // A commit, a padding frame, a commit: the padding reads back as a whole, CRC-valid
        // frame of its kind that decodes to nothing, and the frames around it are intact.
        let mut buf = AlignedBuf::new();
        for (kind, len) in [(KIND_COMMIT, 0), (KIND_PADDING, 300), (KIND_COMMIT, 0)] {
            let start = frame::begin(&mut buf, kind);
            if kind == KIND_PADDING {
                encode_padding(&mut buf, len);
            } else {
                let at = Position(buf.len() as u64);
                encode_commit(&mut buf, at);
            }
            frame::finish(&mut buf, start);
        }
        let mut reader = frame::Reader::new(&buf[..], buf.len() as u64);
        let mut payload = Vec::new();
        let mut entries = Vec::new();
        while let Next::Frame { kind } = reader.next(&mut payload).expect("read") {
            entries.push(decode(kind, &payload));
        }
        assert_eq!(reader.offset(), buf.len() as u64);
        assert_eq!(
            entries,
            vec![
                Ok(Entry::Commit { start: Position(9) }),
                Ok(Entry::Padding),
                Ok(Entry::Commit {
                    start: Position((9 + 8 + 9 + 300 + 9) as u64)
                }),
            ]
        );
    }
}
