//! Sealed batch -> object bytes. JSON lines are the records concatenated as sent (Firehose adds
//! no delimiter); GZIP wraps that in one gzip member, ZIP in an archive of one entry, Snappy in
//! snappy's framing format, HADOOP_SNAPPY in Hadoop's block framing. Knows nothing of HTTP, S3
//! or journals.
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

/// Raw deflate of the records, appended to `out`; returns the CRC-32 and length of the input.
fn deflate_records(
    level: u32,
    records: &[Bytes],
    out: &mut Vec<u8>,
) -> std::io::Result<(u32, u64)> {
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
            feed(&run, FlushCompress::None, out)?;
            run.clear();
        }
        if r.len() >= STAGING {
            feed(r, FlushCompress::None, out)?;
        } else {
            run.extend_from_slice(r);
        }
    }
    feed(&run, FlushCompress::Finish, out)?;
    Ok((crc.finalize(), records.iter().map(|r| r.len() as u64).sum()))
}

/// One gzip member (RFC 1952): a fixed header (no name, no time), raw deflate straight into
/// the output vector, then the CRC-32 and length of the input.
fn gzip(level: u32, records: &[Bytes]) -> std::io::Result<Vec<u8>> {
    let raw: usize = records.iter().map(Bytes::len).sum();
    // Event JSON shrinks 2-10x; start at half so most objects never regrow.
    let mut out = Vec::with_capacity(raw / 2 + 64);
    // Magic, deflate, no flags, no mtime, no extra flags, unknown OS.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let (crc, len) = deflate_records(level, records, &mut out)?;
    out.extend_from_slice(&crc.to_le_bytes());
    // ISIZE: the input length modulo 2^32.
    out.extend_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// A ZIP archive (APPNOTE 6.3) of one deflated entry named `name`: local header, data, central
/// directory, end record. Its time is fixed (1980-01-01 00:00, ZIP's first instant), so a
/// replay writes the same bytes. No ZIP64: an entry and its deflated form must stay under
/// 4 GiB, far above the largest buffer (128 MiB).
fn zip(level: u32, records: &[Bytes], name: &str) -> std::io::Result<Vec<u8>> {
    const LOCAL: u32 = 0x0403_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const END: u32 = 0x0605_4b50;
    // Version 2.0 (deflate); flag bit 11: the name is UTF-8; method 8: deflate.
    const VERSION: u16 = 20;
    const UTF8_NAME: u16 = 1 << 11;
    const DEFLATE: u16 = 8;
    // MS-DOS date of 1980-01-01: day 1, month 1, year 0; time 00:00:00.
    const DOS_TIME: u16 = 0;
    const DOS_DATE: u16 = (1 << 5) | 1;
    let name = name.as_bytes();
    let too_large = || std::io::Error::other("a ZIP entry must stay under 4 GiB (no ZIP64)");
    let name_len = u16::try_from(name.len()).map_err(|_| too_large())?;
    let raw: usize = records.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(raw / 2 + 2 * name.len() + 128);
    let put16 = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_le_bytes());
    let put32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
    put32(&mut out, LOCAL);
    for v in [VERSION, UTF8_NAME, DEFLATE, DOS_TIME, DOS_DATE] {
        put16(&mut out, v);
    }
    // CRC-32 and sizes, filled in once the data is written (the whole archive is in memory,
    // so no data descriptor is needed).
    let sizes_at = out.len();
    out.extend_from_slice(&[0; 12]);
    put16(&mut out, name_len);
    put16(&mut out, 0);
    out.extend_from_slice(name);
    let data_at = out.len();
    let (crc, len) = deflate_records(level, records, &mut out)?;
    let compressed = u32::try_from(out.len() - data_at).map_err(|_| too_large())?;
    let len = u32::try_from(len).map_err(|_| too_large())?;
    let mut sizes = Vec::with_capacity(12);
    for v in [crc, compressed, len] {
        put32(&mut sizes, v);
    }
    out[sizes_at..sizes_at + 12].copy_from_slice(&sizes);
    let central_at = u32::try_from(out.len()).map_err(|_| too_large())?;
    put32(&mut out, CENTRAL);
    for v in [VERSION, VERSION, UTF8_NAME, DEFLATE, DOS_TIME, DOS_DATE] {
        put16(&mut out, v);
    }
    out.extend_from_slice(&sizes);
    // Name length, no extra field, no comment, disk 0, no internal attributes.
    for v in [name_len, 0, 0, 0, 0] {
        put16(&mut out, v);
    }
    // No external attributes; the local header is at offset 0.
    put32(&mut out, 0);
    put32(&mut out, 0);
    out.extend_from_slice(name);
    let central_len = out.len() as u32 - central_at;
    put32(&mut out, END);
    // This disk, the central directory's disk, one entry on it, one in all.
    for v in [0, 0, 1, 1] {
        put16(&mut out, v);
    }
    put32(&mut out, central_len);
    put32(&mut out, central_at);
    put16(&mut out, 0);
    Ok(out)
}

/// Snappy's framing format: stream identifier, then chunks of at most 64 KiB of input, each
/// compressed (or stored, where that is smaller) with a masked CRC-32C.
fn snappy_framed(records: &[Bytes]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let raw: usize = records.iter().map(Bytes::len).sum();
    let mut writer = snap::write::FrameEncoder::new(Vec::with_capacity(raw / 2 + 64));
    for r in records {
        writer.write_all(r)?;
    }
    writer.into_inner().map_err(|e| e.into_error())
}

/// Input bytes per block of Hadoop's snappy framing: `SnappyCodec`'s default buffer
/// (`io.compression.codec.snappy.buffersize`, 256 KiB).
const HADOOP_BLOCK: usize = 256 << 10;

/// Hadoop's `BlockCompressorStream` framing of raw snappy: each block of at most 256 KiB of
/// input is its length (4 bytes, big-endian), then one chunk: the compressed length (4 bytes,
/// big-endian) and the raw snappy bytes.
fn hadoop_snappy(records: &[Bytes]) -> std::io::Result<Vec<u8>> {
    let raw: usize = records.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(raw / 2 + 64);
    let mut encoder = snap::raw::Encoder::new();
    let mut block = Vec::with_capacity(HADOOP_BLOCK);
    let mut compressed = vec![0; snap::raw::max_compress_len(HADOOP_BLOCK)];
    let mut emit = |block: &[u8], out: &mut Vec<u8>| -> std::io::Result<()> {
        let n = encoder
            .compress(block, &mut compressed)
            .map_err(std::io::Error::other)?;
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.extend_from_slice(&compressed[..n]);
        Ok(())
    };
    for r in records {
        let mut rest = &r[..];
        while !rest.is_empty() {
            let take = rest.len().min(HADOOP_BLOCK - block.len());
            block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if block.len() == HADOOP_BLOCK {
                emit(&block, &mut out)?;
                block.clear();
            }
        }
    }
    if !block.is_empty() {
        emit(&block, &mut out)?;
    }
    Ok(out)
}

/// The object's bytes. `name` is the object's key: a ZIP archive names its one entry after it
/// (its last segment, without `.zip`).
pub fn encode(
    compression: Compression,
    gzip_level: u32,
    records: Vec<Bytes>,
    name: &str,
) -> std::io::Result<Body> {
    let bytes = match compression {
        Compression::Uncompressed => {
            let mut out = Vec::with_capacity(records.iter().map(Bytes::len).sum());
            for r in &records {
                out.extend_from_slice(r);
            }
            out
        }
        Compression::Gzip => gzip(gzip_level, &records)?,
        Compression::Zip => zip(gzip_level, &records, zip_entry_name(name))?,
        Compression::Snappy => snappy_framed(&records)?,
        Compression::HadoopSnappy => hadoop_snappy(&records)?,
    };
    Ok(vec![Bytes::from(bytes)])
}

/// The name of a ZIP object's one entry: the key's last segment without `.zip`.
fn zip_entry_name(key: &str) -> &str {
    let file = key.rsplit('/').next().unwrap_or(key);
    match file.strip_suffix(".zip") {
        Some(stem) if !stem.is_empty() => stem,
        _ => file,
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
            "k",
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
        let body = encode(Compression::Gzip, 6, records, "k").unwrap();
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
            let body = encode(Compression::Gzip, level, records.clone(), "k").unwrap();
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[0][..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, expected, "level {level}");
        }
        let empty = encode(Compression::Gzip, 1, Vec::new(), "k").unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&empty[0][..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    fn records_of(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from((0..n).map(|j| (j % 251 + i) as u8).collect::<Vec<u8>>()))
            .collect()
    }

    #[test]
    fn snappy_framed_round_trips() {
        for sizes in [&[][..], &[0], &[1, 70_000, 3], &[65_536, 65_537]] {
            let records = records_of(sizes);
            let body = encode(Compression::Snappy, 1, records.clone(), "k").unwrap();
            let mut out = Vec::new();
            snap::read::FrameDecoder::new(&body[0][..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, records.concat(), "{sizes:?}");
        }
    }

    /// Reads Hadoop's block framing as `BlockDecompressorStream` does.
    fn hadoop_unsnappy(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let be32 = |d: &mut &[u8]| {
            let v = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
            *d = &d[4..];
            v
        };
        while !data.is_empty() {
            let block = be32(&mut data);
            assert!(block <= HADOOP_BLOCK);
            let mut got = 0;
            while got < block {
                let n = be32(&mut data);
                let chunk = snap::raw::Decoder::new()
                    .decompress_vec(&data[..n])
                    .unwrap();
                data = &data[n..];
                got += chunk.len();
                out.extend_from_slice(&chunk);
            }
            assert_eq!(got, block);
        }
        out
    }

    #[test]
    fn hadoop_snappy_blocks_round_trip() {
        let sizes = [0, 5, HADOOP_BLOCK - 5, 5, 1, 2 * HADOOP_BLOCK + 3];
        let records = records_of(&sizes);
        let body = encode(Compression::HadoopSnappy, 1, records.clone(), "k").unwrap();
        assert_eq!(hadoop_unsnappy(&body[0]), records.concat());
        let empty = encode(Compression::HadoopSnappy, 1, Vec::new(), "k").unwrap();
        assert!(empty[0].is_empty());
    }

    #[test]
    fn zip_holds_one_entry_named_after_the_object() {
        let records = records_of(&[10, STAGING + 3, 0, 7]);
        let key = "p/2026/s-1-2026-12-06-10-00-00-id.zip";
        let body = encode(Compression::Zip, 1, records.clone(), key).unwrap();
        let z = &body[0][..];
        let u16_at = |i: usize| u16::from_le_bytes(z[i..i + 2].try_into().unwrap()) as usize;
        let u32_at = |i: usize| u32::from_le_bytes(z[i..i + 4].try_into().unwrap()) as usize;
        assert_eq!(u32_at(0), 0x0403_4b50);
        let name_len = u16_at(26);
        let name = std::str::from_utf8(&z[30..30 + name_len]).unwrap();
        assert_eq!(name, "s-1-2026-12-06-10-00-00-id");
        let (crc, compressed, size) = (u32_at(14), u32_at(18), u32_at(22));
        let data = &z[30 + name_len..30 + name_len + compressed];
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, records.concat());
        assert_eq!(size, out.len());
        assert_eq!(crc as u32, crc32fast::hash(&out));
        // The end record points at the central directory, which repeats the entry.
        let end = z.len() - 22;
        assert_eq!(u32_at(end), 0x0605_4b50);
        let central = u32_at(end + 16);
        assert_eq!(u32_at(central), 0x0201_4b50);
        assert_eq!(u32_at(central + 16), crc);
        assert_eq!(u16_at(end + 10), 1);
        // Deterministic: a replay writes the same bytes.
        assert_eq!(
            encode(Compression::Zip, 1, records, key).unwrap()[0],
            body[0]
        );
        assert_eq!(zip_entry_name("a.zip"), "a");
        assert_eq!(zip_entry_name(".zip"), ".zip");
        assert_eq!(zip_entry_name("x/y.json"), "y.json");
    }
}
