//! Sealed batch -> object bytes. JSON lines are the records concatenated as sent (Firehose adds
//! no delimiter); GZIP wraps that in one gzip member. Knows nothing of HTTP, S3 or journals.
//! CPU-heavy: callers run it off the async workers.

pub mod parquet;

use std::io::Write;

use bytes::Bytes;
use flate2::Compression as Level;
use flate2::write::GzEncoder;

use crate::definition::Compression;

/// Object bytes, as chunks. Encoders return one contiguous chunk: writing a thousand 1 KiB
/// slices costs a thousand syscalls (and partial-page work) in the store, one copy costs less.
pub type Body = Vec<Bytes>;

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
        Compression::Gzip => {
            let raw: usize = records.iter().map(Bytes::len).sum();
            // JSON usually shrinks 5-10x; start at a quarter to avoid most regrowth.
            let mut gz = GzEncoder::new(Vec::with_capacity(raw / 4 + 64), Level::new(gzip_level));
            for r in &records {
                gz.write_all(r)?;
            }
            Ok(vec![Bytes::from(gz.finish()?)])
        }
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
}
