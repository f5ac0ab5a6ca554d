//! Replays every kept fuzz input with a plain `cargo test`: the crash and hang inputs found by
//! the fuzz targets (`fuzz/regressions/<target>/`) and the seed corpus (`fuzz/seeds/<target>/`),
//! each through the same library function its cargo-fuzz target calls. See docs/fuzzing.md.

use std::path::Path;
use std::time::{Duration, Instant};

use spillway::fuzzing;

/// Far above what any kept input takes; a hang found by the fuzzer that comes back fails here.
const PER_INPUT: Duration = Duration::from_secs(20);

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["regressions", "seeds"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let data = std::fs::read(path).unwrap();
            let started = Instant::now();
            // A panic names the input through this message.
            eprintln!("{target}: {}", path.display());
            run(&data);
            assert!(
                started.elapsed() < PER_INPUT,
                "{} took {:?}",
                path.display(),
                started.elapsed()
            );
            count += 1;
        }
    }
    assert!(count > 0, "no inputs kept for {target}");
}

#[test]
fn request_parser() {
    replay("request_parser", fuzzing::request_parser);
}

#[test]
fn sigv4() {
    replay("sigv4", fuzzing::sigv4);
}

#[test]
fn prefix_template() {
    replay("prefix_template", fuzzing::prefix_template);
}

#[test]
fn config_toml() {
    replay("config_toml", fuzzing::config_toml);
}

#[test]
fn hive_type() {
    replay("hive_type", fuzzing::hive_type);
}

#[test]
fn parquet_rows() {
    replay("parquet_rows", fuzzing::parquet_rows);
}

#[test]
fn journal_replay() {
    replay("journal_replay", fuzzing::journal_replay);
}

#[test]
fn journal_entries() {
    replay("journal_entries", fuzzing::journal_entries);
}

#[test]
fn partition_query() {
    replay("partition_query", fuzzing::partition_query);
}

#[test]
fn preprocess() {
    replay("preprocess", fuzzing::preprocess);
}
