//! Sealed batch -> object bytes. JSON lines are the records concatenated as sent (Firehose adds
//! no delimiter); GZIP wraps that in one gzip member. Knows nothing of HTTP, S3 or journals.
//! CPU-heavy: callers run it off the async workers.

pub mod parquet;

use bytes::Bytes;
use flate2::{Compress, Compression as Level, FlushCompress, Status};

use crate::definition::Compression;

/// Object bytes, as chunks. Encoders return one contiguous chunk: writing a thousand 1 KiB
/// slices costs a thousand syscalls (and partial-page work) in the store, one copy costs less.
pub type Body = Vec<Bytes>;

/// Size of the runs of records handed to the compressor at once: it does per-call work
/// (window bookkeeping, block decisions), so 1 KiB records one by one cost more than copying
/// them into runs first; runs that stay in the core's cache beat one large input.
const STAGING: usize = 64 << 10;

/// One gzip member (RFC 1952): a fixed header (no name, no time), raw deflate straight into
/// the output vector, then the CRC-32 and length of the input.
fn gzip(level: u32, records: &[Bytes]) -> std::io::Result<Vec<u8>> {
    let raw: usize = records.iter().map(Bytes::len).sum();
    // Event JSON shrinks 2-10x; start at half so most objects never regrow.
    let mut out = Vec::with_capacity(raw / 2 + 64);
    // Magic, deflate, no flags, no mtime, no extra flags, unknown OS.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let mut deflate = Compress::new(Level::new(level), false);
    let mut crc = crc32fast::Hasher::new();
    let mut feed = |input: &[u8], flush: FlushCompress, out: &mut Vec<u8>| -> std::io::Result<()> {
        crc.update(input);
        let mut rest = input;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(out.len() / 2 + 4096);
            }
            let before = deflate.total_in();
            let status = deflate
                .compress_vec(rest, out, flush)
                .map_err(std::io::Error::other)?;
            rest = &rest[(deflate.total_in() - before) as usize..];
            match status {
                Status::StreamEnd => return Ok(()),
                _ if rest.is_empty() && flush == FlushCompress::None => return Ok(()),
                _ => {}
            }
        }
    };
    let mut run = Vec::with_capacity(STAGING);
    for r in records {
        if run.len() + r.len() > STAGING && !run.is_empty() {
            feed(&run, FlushCompress::None, &mut out)?;
            run.clear();
        }
        if r.len() >= STAGING {
            feed(r, FlushCompress::None, &mut out)?;
        } else {
            run.extend_from_slice(r);
        }
    }
    feed(&run, FlushCompress::Finish, &mut out)?;
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE: the input length modulo 2^32.
    out.extend_from_slice(&(raw as u32).to_le_bytes());
    Ok(out)
}

pub fn encode(
    compression: Compression,
    gzip_level: u32,
    records: Vec<Bytes>,
) -> std::io::Result<Body> {
    match compression {
        Compression::Uncompressed => {
            let mut out = Vec::with_capacity(records.iter().map(Bytes::len).sum());
            for r in &records {
                out.extend_from_slice(r);
            }
            Ok(vec![Bytes::from(out)])
        }
        Compression::Gzip => Ok(vec![Bytes::from(gzip(gzip_level, &records)?)]),
    }
}

/// What ends a data object's name: `.parquet` for converted records, else the compression's.
pub fn data_suffix(
    compression: Compression,
    format: Option<&crate::definition::conversion::Conversion>,
) -> &'static str {
    match format {
        Some(_) => ".parquet",
        None => compression.suffix(),
    }
}

pub fn len(body: &Body) -> u64 {
    body.iter().map(|b| b.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn uncompressed_is_the_records_as_sent() {
        let body = encode(
            Compression::Uncompressed,
            1,
            vec![
                Bytes::from_static(b"{\"a\":1}\n"),
                Bytes::from_static(b"{\"a\":2}"),
            ],
        )
        .unwrap();
        assert_eq!(body.concat(), b"{\"a\":1}\n{\"a\":2}");
    }

    #[test]
    fn gzip_round_trips() {
        let records: Vec<Bytes> = (0..1000)
            .map(|i| Bytes::from(format!("{{\"n\":{i}}}\n")))
            .collect();
        let expected: Vec<u8> = records.concat();
        let body = encode(Compression::Gzip, 6, records).unwrap();
        assert_eq!(body.len(), 1);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[0][..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, expected);
        assert!(len(&body) < expected.len() as u64 / 2);
    }

    #[test]
    fn gzip_round_trips_records_around_the_staging_size_at_every_level() {
        // Empty, small, exactly one run, just over, and several runs long: every path through
        // the staging of runs and the direct feeding of large records.
        let sizes = [
            0,
            1,
            1023,
            STAGING - 1,
            STAGING,
            STAGING + 1,
            3 * STAGING + 7,
            5,
        ];
        let records: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from((0..n).map(|j| (j * 31 + i * 7) as u8).collect::<Vec<u8>>()))
            .collect();
        let expected: Vec<u8> = records.concat();
        for level in 1..=9 {
            let body = encode(Compression::Gzip, level, records.clone()).unwrap();
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[0][..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, expected, "level {level}");
        }
        let empty = encode(Compression::Gzip, 1, Vec::new()).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&empty[0][..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }
}
