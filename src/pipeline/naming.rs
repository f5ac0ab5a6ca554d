//! Object names. Every name is a function of the stream's settings, the journal position of
//! the batch it is named after and the time of its oldest record, so a replay after a crash
//! names each object exactly as the first attempt did and overwrites rather than duplicates.
//! Nothing here does I/O or reads the clock.

use crate::definition::prefix;
use crate::definition::{ObjectNaming, StreamDefinition};
use crate::encode;
use crate::journal::Position;
use crate::sink::{Layout, ObjectPlan, SealedSettings};

use super::partitions::PartKey;

/// Error objects get ids of their own, so one never shares a key with a data object even if
/// a partition value renders the data prefix equal to an error prefix.
pub const ERROR_OBJECT_BASE: u64 = 1 << 32;
/// Partition buffers' objects: named after their first contributing batch, tagged apart.
pub const PARTITION_OBJECT_BASE: u64 = 2 << 32;
/// Added to the incarnation for a batch's backup object (`S3BackupMode`), so its id differs
/// from the batch's data objects even in the same bucket and prefix.
pub const BACKUP_OBJECT_BASE: u64 = 3 << 32;

/// Who names objects: the stream and its journal's incarnation.
#[derive(Clone, Copy)]
pub struct Namer<'a> {
    pub stream: &'a str,
    pub incarnation: u64,
}

impl Namer<'_> {
    /// Names a sealed batch's object (the start of its records at `start`, the oldest
    /// arrived at `oldest_ms`). The name is recorded in the seal, so a replay reuses it
    /// exactly. A processed batch becomes several objects: its plan records their common layout.
    pub fn plan(&self, def: &StreamDefinition, start: Position, oldest_ms: u64) -> ObjectPlan {
        let dest = &def.destination;
        let at = dest.naming.local_time(oldest_ms);
        let unique = unique_id(self.incarnation, start);
        // A whole key: a prefix rendered now, Firehose's name, the extension.
        let key_with = |template: &prefix::PrefixTemplate, unique: &str, suffix: &str| {
            let rendered = template.render(at, None, &mut rand::rng());
            let name = prefix::object_name(&rendered, def.name.as_str(), def.version, at, unique);
            format!("{name}{suffix}")
        };
        let backup = dest.backup.as_ref().map(|b| {
            let unique = unique_id(self.incarnation.wrapping_add(BACKUP_OBJECT_BASE), start);
            Box::new(ObjectPlan {
                bucket: b.bucket.as_str().to_owned(),
                key: key_with(&b.prefix, &unique, b.compression.suffix()),
                compression: b.compression,
                layout: None,
                format: None,
                backup: None,
            })
        });
        if dest.processing.is_some()
            || dest.dynamic_partitioning
            || dest.conversion.is_some()
            || dest.iceberg.is_some()
        {
            let rng = &mut rand::rng();
            let buffered = dest.dynamic_partitioning;
            return ObjectPlan {
                bucket: dest.bucket.as_str().to_owned(),
                key: prefix::object_name("", def.name.as_str(), def.version, at, &unique),
                compression: dest.compression,
                layout: Some(Layout {
                    // Partition buffers draw their random strings when they are written.
                    prefix: if buffered {
                        dest.prefix.partition_pieces(at)
                    } else {
                        dest.prefix.render_pieces(at, rng)
                    },
                    buffered,
                    error_prefix: dest.error_output_prefix.render_pieces(at, rng),
                    at_ms: oldest_ms,
                    version: def.version,
                    settings: SealedSettings {
                        processing: dest.processing.clone(),
                        dynamic_partitioning: dest.dynamic_partitioning,
                        transform_sha256: def.transform.as_ref().map(|m| m.sha256().to_owned()),
                        conversion: dest.conversion.clone(),
                        naming: dest.naming.clone(),
                    },
                }),
                format: None,
                backup,
            };
        }
        let key = key_with(
            &dest.prefix,
            &unique,
            dest.naming.data_suffix(dest.compression.suffix()),
        );
        ObjectPlan {
            bucket: dest.bucket.as_str().to_owned(),
            key,
            compression: dest.compression,
            layout: None,
            format: None,
            backup,
        }
    }

    /// Names a partition buffer's object: after its first contributor (a batch adds records to
    /// a partition's buffer once, so that names each object of the partition uniquely), with
    /// its random strings drawn now.
    pub fn partition_object(&self, key: &PartKey, oldest_ms: u64, first: Position) -> ObjectPlan {
        let prefix = prefix::fill_random(&key.prefix, &mut rand::rng());
        let name = self.object_key(
            key.version,
            oldest_ms,
            first,
            &prefix,
            PARTITION_OBJECT_BASE,
            &key.naming,
        );
        ObjectPlan {
            bucket: key.bucket.clone(),
            key: format!(
                "{name}{}",
                key.naming
                    .data_suffix(encode::data_suffix(key.compression, key.format.as_ref()))
            ),
            compression: key.compression,
            layout: None,
            format: key.format.clone(),
            backup: None,
        }
    }

    /// The key of an object of processed records, without its suffix: its prefix, then
    /// Firehose's name (stream `version`, the oldest record's time `at_ms`) with an id from the
    /// position of the batch it is named after and `index` (which object of that batch).
    pub fn object_key(
        &self,
        version: u64,
        at_ms: u64,
        start: Position,
        prefix: &str,
        index: u64,
        naming: &ObjectNaming,
    ) -> String {
        let unique = unique_id(self.incarnation.wrapping_add(index), start);
        prefix::object_name(
            prefix,
            self.stream,
            version,
            naming.local_time(at_ms),
            &unique,
        )
    }
}

/// A partition's rendered prefix; the stream's prefix for the one partition of a stream
/// without dynamic partitioning.
pub fn partition_prefix(rendered: Option<String>, layout: &Layout) -> String {
    rendered.unwrap_or_else(|| prefix::fill(&layout.prefix, &[], &[], ""))
}

/// UUID-shaped and derived from the journal position, so a replayed batch gets the same name.
fn unique_id(incarnation: u64, start: Position) -> String {
    let v = ((incarnation as u128) << 64) | start.0 as u128;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (v >> 96) as u32,
        (v >> 80) as u16,
        (v >> 64) as u16,
        (v >> 48) as u16,
        v & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_are_uuid_shaped_and_positional() {
        let a = unique_id(0x0123_4567_89ab_cdef, Position(1));
        assert_eq!(a, "01234567-89ab-cdef-0000-000000000001");
        assert_ne!(a, unique_id(0x0123_4567_89ab_cdef, Position(2)));
    }

    #[test]
    fn object_keys_depend_only_on_their_inputs() {
        let namer = Namer {
            stream: "s",
            incarnation: 7,
        };
        let utc = ObjectNaming::default();
        let a = namer.object_key(1, 1_700_000_000_000, Position(5), "p/", 0, &utc);
        assert_eq!(
            a,
            namer.object_key(1, 1_700_000_000_000, Position(5), "p/", 0, &utc)
        );
        assert!(a.starts_with("p/s-1-2023-11-14-22-13-20-"), "{a}");
        assert_ne!(
            a,
            namer.object_key(
                1,
                1_700_000_000_000,
                Position(5),
                "p/",
                ERROR_OBJECT_BASE,
                &utc
            )
        );
    }
}
