//! Record format conversion: JSON records to Parquet, as Firehose's OpenX / Hive JSON SerDe and
//! ParquetSerDe do.
//!
//! [`Converter::normalize`] reads a record against the stream's columns (keys matched without
//! case, dots as underscores, timestamps from ISO-8601 text or epoch seconds / milliseconds,
//! decimals rounded to their scale) and rewrites it as JSON that fits them exactly, or refuses
//! it with the reason. It runs twice per record:
//! 1. while the batch is processed, to send the records that do not fit to the
//!    `format-conversion-failed` error output, so one bad record never fails an object;
//! 2. in [`encode_to`], a row group at a time: the rows are decoded into Arrow and written as
//!    Parquet, so memory holds one row group of converted data, never the whole object.
//!
//! Without declared columns, the object's schema is inferred from its converted records first
//! ([`infer`]): nested objects become structs and arrays lists, as engines infer them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_json::ReaderBuilder;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as Codec, GzipLevel, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};
use serde_json::{Map, Value};

use super::Body;
use crate::definition::conversion::{Conversion, JsonInput, ParquetCompression};
use crate::definition::hive_type;

/// Input JSON per row group, at most: memory stays bounded by this, not by the object size
/// (`BlockSizeBytes` is larger than any buffer; it is the bound only when smaller).
pub const ROW_GROUP_INPUT_BYTES: u64 = 16 << 20;
/// Epoch numbers at or above this are milliseconds (year 5138 in seconds), below it seconds.
const MILLIS_FROM: f64 = 1e11;
/// Nesting deeper than this is refused before it reaches the recursive conversion.
const MAX_DEPTH: usize = 64;

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in microseconds since the epoch.
const MIN_ZONED_MICROS: i64 = -62_135_596_800_000_000;
const MAX_ZONED_MICROS: i64 = 253_402_300_799_999_999;

/// Reads records against one stream's conversion settings.
pub struct Converter {
    input: JsonInput,
    /// Declared columns; `None` when each object's schema is inferred.
    schema: Option<SchemaRef>,
}

/// Why a record does not fit a stream's Parquet columns: data, not a failure of spillway's;
/// its text becomes the error record's `errorMessage`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DoesNotFit(pub String);

impl From<String> for DoesNotFit {
    fn from(reason: String) -> Self {
        DoesNotFit(reason)
    }
}

impl From<&str> for DoesNotFit {
    fn from(reason: &str) -> Self {
        DoesNotFit(reason.to_owned())
    }
}

impl Converter {
    /// The column types were checked when the stream was defined; one that no longer parses
    /// (it cannot happen) leaves the schema to inference.
    pub fn new(conversion: &Conversion) -> Converter {
        let schema = conversion.columns.as_ref().and_then(|cols| {
            let fields: Result<Vec<Field>, _> = cols
                .iter()
                .map(|(name, ty)| hive_type::parse(ty).map(|t| Field::new(name, t, true)))
                .collect();
            fields.ok().map(|f| Arc::new(Schema::new(f)))
        });
        Converter {
            input: conversion.input.clone(),
            schema,
        }
    }

    /// A converter without columns: [`Converter::normalize`] applies the key rules only (what
    /// schema inference reads).
    pub fn inferring(input: JsonInput) -> Converter {
        Converter {
            input,
            schema: None,
        }
    }

    /// A converter for columns given as an Arrow schema (an Iceberg table's).
    pub fn with_schema(input: JsonInput, schema: SchemaRef) -> Converter {
        Converter {
            input,
            schema: Some(schema),
        }
    }

    /// The record as a JSON value fitted to the columns (what Arrow's JSON decoder takes), or
    /// why it does not fit.
    pub fn fit(&self, data: &[u8]) -> Result<Value, DoesNotFit> {
        self.fitted(data)
    }

    /// The record as JSON that fits the columns (one line, no newline), or why it does not.
    pub fn normalize(&self, data: &[u8]) -> Result<Bytes, DoesNotFit> {
        let out = self.fitted(data)?;
        // Serializing a JSON value cannot fail.
        Ok(Bytes::from(serde_json::to_vec(&out).unwrap_or_default()))
    }

    /// Whether the record fits the columns, as [`Converter::normalize`] decides, without
    /// writing the normalized JSON out (what processing needs; encoding converts again).
    pub fn check(&self, data: &[u8]) -> Result<(), DoesNotFit> {
        self.fitted(data).map(drop)
    }

    /// The record as a JSON value that fits the columns.
    fn fitted(&self, data: &[u8]) -> Result<Value, DoesNotFit> {
        let value: Value =
            serde_json::from_slice(trim_line(data)).map_err(|e| format!("not valid JSON: {e}"))?;
        if depth_exceeds(&value, MAX_DEPTH) {
            return Err(DoesNotFit(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let Value::Object(map) = value else {
            return Err("not a JSON object".into());
        };
        Ok(match &self.schema {
            Some(schema) => Value::Object(self.row(&map, schema.fields(), "")?),
            // Inferred per object: the key rules apply at every level; nesting is kept (the
            // schema decides, per object, what becomes a struct, a list or JSON text).
            None => self.rename_keys(Value::Object(map)),
        })
    }

    /// The key rules applied to every object in `v` (its depth was checked).
    fn rename_keys(&self, v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let renamed = match self.key(&k) {
                            Cow::Owned(renamed) => Some(renamed),
                            Cow::Borrowed(_) => None,
                        };
                        (renamed.unwrap_or(k), self.rename_keys(v))
                    })
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.rename_keys(v)).collect())
            }
            v => v,
        }
    }

    /// A JSON key as it is compared with column names; borrowed when the rules change
    /// nothing (the common case: lowercase keys without dots).
    fn key<'k>(&self, key: &'k str) -> Cow<'k, str> {
        let mut key = Cow::Borrowed(key);
        if self.input.dots_to_underscores && key.contains('.') {
            key = Cow::Owned(key.replace('.', "_"));
        }
        let changes_case = |k: &str| match k.is_ascii() {
            true => k.bytes().any(|b| b.is_ascii_uppercase()),
            false => k.chars().any(|c| c.to_lowercase().ne([c])),
        };
        if self.input.case_insensitive && changes_case(&key) {
            key = Cow::Owned(key.to_lowercase());
        }
        key
    }

    /// One object against struct fields (the top-level columns when `path` is empty).
    fn row(
        &self,
        map: &Map<String, Value>,
        fields: &Fields,
        path: &str,
    ) -> Result<Map<String, Value>, DoesNotFit> {
        // The first of the keys that compare equal wins.
        let mut by_key: HashMap<Cow<str>, &Value> = HashMap::with_capacity(map.len());
        for (k, v) in map {
            by_key.entry(self.key(k)).or_insert(v);
        }
        let mut out = Map::with_capacity(fields.len());
        for field in fields {
            let mapped = path
                .is_empty()
                .then(|| {
                    self.input
                        .key_mappings
                        .iter()
                        .find(|(c, _)| c == field.name())
                })
                .flatten();
            let value = match mapped {
                Some((_, json_key)) => map.get(json_key),
                None => by_key.get(&self.key(field.name())).copied(),
            };
            let at = if path.is_empty() {
                Cow::Borrowed(field.name().as_str())
            } else {
                Cow::Owned(format!("{path}.{}", field.name()))
            };
            let v = match value {
                None | Some(Value::Null) if !field.is_nullable() => {
                    return Err(DoesNotFit(format!("{at}: required, got nothing")));
                }
                None | Some(Value::Null) => Value::Null,
                Some(v) => self.convert(v, field.data_type(), &at)?,
            };
            out.insert(field.name().clone(), v);
        }
        Ok(out)
    }

    fn convert(&self, v: &Value, ty: &DataType, at: &str) -> Result<Value, DoesNotFit> {
        let refuse = |what: &str| Err(DoesNotFit(format!("{at}: {what}, got {}", short(v))));
        match ty {
            DataType::Utf8 | DataType::LargeUtf8 => Ok(Value::String(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })),
            DataType::Boolean => match v {
                Value::Bool(_) => Ok(v.clone()),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
                _ => refuse("expected a boolean"),
            },
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                let (lo, hi) = int_range(ty);
                let n = match v {
                    Value::Number(n) => n.as_i64().or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                            .map(|f| f as i64)
                    }),
                    Value::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                match n {
                    Some(n) if (lo..=hi).contains(&n) => Ok(Value::from(n)),
                    Some(_) => refuse(&format!("out of range for {}", hive_name(ty))),
                    None => refuse(&format!("expected an integer ({})", hive_name(ty))),
                }
            }
            DataType::Float32 | DataType::Float64 => {
                let f = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
                    _ => None,
                };
                match f {
                    Some(f) if *ty == DataType::Float64 || f.abs() <= f32::MAX as f64 => {
                        Ok(Value::from(f))
                    }
                    Some(_) => refuse("out of range for float"),
                    None => refuse("expected a number"),
                }
            }
            DataType::Timestamp(TimeUnit::Microsecond, zone) => match self.timestamp_micros(v) {
                // Zoned columns are Iceberg's: years 1 to 9999, what its readers (and its
                // partition transforms) handle.
                Some(us)
                    if zone.is_some() && !(MIN_ZONED_MICROS..=MAX_ZONED_MICROS).contains(&us) =>
                {
                    refuse("a timestamp outside the years 1 to 9999")
                }
                Some(us) => Ok(Value::from(us)),
                None => {
                    refuse("expected a timestamp (ISO-8601 text, or epoch seconds or milliseconds)")
                }
            },
            DataType::Date32 => match date_days(v) {
                Some(d) => Ok(Value::from(d)),
                None => refuse("expected a date (yyyy-MM-dd, or days since 1970-01-01)"),
            },
            DataType::Decimal128(p, s) => match decimal_text(v, *p, *s) {
                Ok(text) => Ok(Value::String(text)),
                Err(m) => refuse(&m.0),
            },
            DataType::List(item) => match v {
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| match x {
                        Value::Null => Ok(Value::Null),
                        x => self.convert(x, item.data_type(), &format!("{at}[{i}]")),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
                _ => refuse("expected an array"),
            },
            DataType::Struct(fields) => match v {
                Value::Object(map) => self.row(map, fields, at).map(Value::Object),
                _ => refuse("expected an object"),
            },
            DataType::Map(entries, _) => {
                let DataType::Struct(kv) = entries.data_type() else {
                    return refuse("unsupported map type");
                };
                let Value::Object(map) = v else {
                    return refuse("expected an object");
                };
                if !matches!(kv[0].data_type(), DataType::Utf8) {
                    return refuse("maps with keys other than string are not supported");
                }
                let value_type = kv[1].data_type();
                let mut out = Map::with_capacity(map.len());
                for (k, x) in map {
                    let x = match x {
                        Value::Null => Value::Null,
                        x => self.convert(x, value_type, &format!("{at}[{k:?}]"))?,
                    };
                    out.insert(k.clone(), x);
                }
                Ok(Value::Object(out))
            }
            other => Err(DoesNotFit(format!("{at}: type {other} is not supported"))),
        }
    }

    fn timestamp_micros(&self, v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => {
                let f = n.as_f64()?;
                let millis = self.input.millis || f.abs() >= MILLIS_FROM;
                let us = if millis { f * 1e3 } else { f * 1e6 };
                (us.is_finite() && us.abs() < 9.2e18).then_some(us.round() as i64)
            }
            Value::String(s) => parse_timestamp(s.trim()),
            _ => None,
        }
    }
}

fn trim_line(data: &[u8]) -> &[u8] {
    let end = data
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &data[..end]
}

fn depth_exceeds(v: &Value, max: usize) -> bool {
    // Iterative, so a deep record cannot overflow the stack here either.
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if d > max {
            return true;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    false
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 60 {
        let mut cut = 57;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &text[..cut])
    } else {
        text
    }
}

fn int_range(ty: &DataType) -> (i64, i64) {
    match ty {
        DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
        DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
        DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

fn hive_name(ty: &DataType) -> String {
    hive_type::render(ty).unwrap_or_else(|| ty.to_string())
}

/// ISO-8601 / RFC 3339 with an offset, or a local date-time (`T` or a space, optional
/// fraction) read as UTC, or a bare date (midnight UTC).
fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

fn date_days(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().filter(|d| d.abs() <= i32::MAX as i64),
        Value::String(s) => {
            let d = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
            Some((d - epoch).num_days())
        }
        _ => None,
    }
}

/// The value as decimal text with exactly `scale` fraction digits, rounded half away from
/// zero (as Hive does); refused if its integer part needs more than `precision - scale` digits.
fn decimal_text(v: &Value, precision: u8, scale: i8) -> Result<String, DoesNotFit> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err("expected a decimal".into()),
    };
    let invalid = || format!("expected a decimal({precision},{scale})");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(&text)),
    };
    // Exponents (1e3) in the text are spelled out first.
    let (mantissa, exp) = match digits.find(['e', 'E']) {
        Some(i) => (
            &digits[..i],
            digits[i + 1..].parse::<i32>().map_err(|_| invalid())?,
        ),
        None => (digits, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .chars()
            .chain(frac_part.chars())
            .all(|c| c.is_ascii_digit())
        || exp.abs() > 100
    {
        return Err(invalid().into());
    }
    // All digits, and where the point goes (from the left).
    let all: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = int_part.len() as i64 + exp as i64;
    let scale = scale.max(0) as i64;
    // Digits kept: up to `point + scale`, rounding on the next one.
    let keep = point + scale;
    let mut kept: Vec<u8> = (0..keep.max(0))
        .map(|i| {
            if i < 0 {
                0
            } else {
                all.get(i as usize).copied().unwrap_or(0)
            }
        })
        .collect();
    let next = if keep >= 0 {
        all.get(keep as usize).copied().unwrap_or(0)
    } else {
        0
    };
    if next >= 5 {
        // Round half away from zero: carry from the last kept digit.
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let int_len = kept.len() as i64 - scale;
    let (ints, fracs) = if int_len > 0 {
        kept.split_at(int_len as usize)
    } else {
        (&[][..], &kept[..])
    };
    let ints: Vec<u8> = ints.iter().copied().skip_while(|d| *d == 0).collect();
    let max_int_digits = precision as i64 - scale;
    if ints.len() as i64 > max_int_digits {
        return Err(DoesNotFit(format!(
            "does not fit decimal({precision},{scale})"
        )));
    }
    let mut frac_digits: Vec<u8> = vec![0; (scale - fracs.len() as i64).max(0) as usize];
    frac_digits.extend_from_slice(fracs);
    let zero = ints.is_empty() && frac_digits.iter().all(|d| *d == 0);
    let mut out = String::new();
    if negative && !zero {
        out.push('-');
    }
    if ints.is_empty() {
        out.push('0');
    }
    out.extend(ints.iter().map(|d| char::from(b'0' + d)));
    if scale > 0 {
        out.push('.');
        out.extend(frac_digits.iter().map(|d| char::from(b'0' + d)));
    }
    Ok(out)
}

/// Distinct keys a nested object may have across an object's records before it is kept as
/// JSON text instead of a struct: records with ever-new keys cannot make a schema of thousands
/// of columns.
pub const MAX_INFERRED_STRUCT_FIELDS: usize = 1000;
/// Columns an inferred schema has at most, [`OVERFLOW_COLUMN`] included: the keys past the
/// first 999 (in name order) of an object's records go, as a JSON object, into that column.
pub const MAX_INFERRED_COLUMNS: usize = 1000;
/// Leaf columns (values inside structs and lists counted one by one) an inferred schema has at
/// most; past it, every nested column is kept as JSON text.
pub const MAX_INFERRED_LEAVES: usize = 10_000;
/// Where the keys past [`MAX_INFERRED_COLUMNS`] go (a key of this name goes there too).
pub const OVERFLOW_COLUMN: &str = "_spillway_overflow";
/// Rows per Arrow batch times leaf columns, at most: the JSON decoder's buffers grow with both.
const DECODE_CELLS: usize = 1 << 20;

/// What the values of one key (or one list's items) are across an object's records.
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    Null,
    Bool,
    Int,
    Float,
    Text,
    List(Box<Shape>),
    Struct(std::collections::BTreeMap<String, Shape>),
}

impl Shape {
    fn of(v: &Value) -> Shape {
        match v {
            Value::Null => Shape::Null,
            Value::Bool(_) => Shape::Bool,
            Value::Number(n) if n.is_i64() => Shape::Int,
            Value::Number(_) => Shape::Float,
            Value::String(_) => Shape::Text,
            Value::Array(items) => Shape::List(Box::new(
                items
                    .iter()
                    .fold(Shape::Null, |acc, item| acc.merge(Shape::of(item))),
            )),
            Value::Object(map) => {
                let mut fields = std::collections::BTreeMap::new();
                for (k, v) in map {
                    fields.insert(k.clone(), Shape::of(v));
                }
                Shape::Struct(fields).capped()
            }
        }
    }

    /// Integers and floats widen to floats; lists merge their items, structs their fields;
    /// nulls take the other side's shape; any other disagreement is text.
    fn merge(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Null, b) => b,
            (a, Shape::Null) => a,
            (Shape::Int, Shape::Float) | (Shape::Float, Shape::Int) => Shape::Float,
            (Shape::List(a), Shape::List(b)) => Shape::List(Box::new(a.merge(*b))),
            (Shape::Struct(mut a), Shape::Struct(b)) => {
                for (k, shape) in b {
                    let merged = match a.remove(&k) {
                        Some(existing) => existing.merge(shape),
                        None => shape,
                    };
                    a.insert(k, merged);
                }
                Shape::Struct(a).capped()
            }
            (a, b) if a == b => a,
            _ => Shape::Text,
        }
    }

    fn capped(self) -> Shape {
        match self {
            Shape::Struct(fields) if fields.len() > MAX_INFERRED_STRUCT_FIELDS => Shape::Text,
            s => s,
        }
    }

    /// The Arrow type: lists of their items' type, structs of their fields in name order;
    /// text, keys only ever null, lists only ever empty and objects only ever empty as strings.
    fn data_type(&self) -> DataType {
        match self {
            Shape::Bool => DataType::Boolean,
            Shape::Int => DataType::Int64,
            Shape::Float => DataType::Float64,
            Shape::Null | Shape::Text => DataType::Utf8,
            Shape::List(item) => {
                DataType::List(Arc::new(Field::new("item", item.data_type(), true)))
            }
            Shape::Struct(fields) if fields.is_empty() => DataType::Utf8,
            Shape::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|(k, s)| Field::new(k, s.data_type(), true))
                    .collect::<Fields>(),
            ),
        }
    }
}

/// The schema of normalized records without declared columns, columns in name order: each
/// key's non-null values decide, recursively. Booleans, integers as bigint, numbers as double,
/// strings; objects are structs and arrays lists; integers mixed with other numbers are
/// doubles, other disagreements strings (a value of another shape there is written as its JSON
/// text); keys only ever null, lists only ever empty and objects only ever empty are strings.
/// At most [`MAX_INFERRED_COLUMNS`] columns and [`MAX_INFERRED_LEAVES`] leaves (see there).
pub fn infer(records: impl IntoIterator<Item = Bytes>) -> SchemaRef {
    let mut columns: std::collections::BTreeMap<String, Shape> = Default::default();
    for r in records {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&r) else {
            continue;
        };
        for (k, v) in map {
            let shape = Shape::of(&v);
            let merged = match columns.remove(&k) {
                Some(existing) => existing.merge(shape),
                None => shape,
            };
            columns.insert(k, merged);
        }
    }
    let mut overflow = columns.remove(OVERFLOW_COLUMN).is_some();
    if columns.len() >= MAX_INFERRED_COLUMNS {
        // Kept in name order; the rest go to the overflow column.
        while columns.len() >= MAX_INFERRED_COLUMNS {
            columns.pop_last();
        }
        overflow = true;
    }
    let mut fields: Vec<Field> = columns
        .iter()
        .map(|(k, s)| Field::new(k, s.data_type(), true))
        .collect();
    if fields.iter().map(|f| leaves(f.data_type())).sum::<usize>() > MAX_INFERRED_LEAVES {
        for f in &mut fields {
            if matches!(f.data_type(), DataType::Struct(_) | DataType::List(_)) {
                *f = Field::new(f.name(), DataType::Utf8, true);
            }
        }
    }
    if overflow {
        fields.push(Field::new(OVERFLOW_COLUMN, DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

/// Leaf columns of a type: a struct's fields' leaves, a list's item's.
fn leaves(ty: &DataType) -> usize {
    match ty {
        DataType::Struct(fields) => fields
            .iter()
            .map(|f| leaves(f.data_type()))
            .sum::<usize>()
            .max(1),
        DataType::List(item) => leaves(item.data_type()),
        _ => 1,
    }
}

/// A normalized record made to fit its inferred schema: each key's value fitted to its column
/// ([`conform`]), and the keys without a column (past [`MAX_INFERRED_COLUMNS`]) as one JSON
/// object in [`OVERFLOW_COLUMN`]. A key with no column and no overflow column cannot happen
/// (the schema was inferred from these records); it is an error rather than a dropped value.
fn conform_row(row: Value, schema: &Schema) -> Result<Value, String> {
    let Value::Object(map) = row else {
        return Err("a normalized record that is not an object".into());
    };
    let mut out = Map::new();
    let mut extra = Map::new();
    for (k, v) in map {
        match schema.fields().find(&k) {
            Some((_, f)) if k != OVERFLOW_COLUMN => {
                out.insert(k, conform(v, f.data_type()));
            }
            _ => {
                extra.insert(k, v);
            }
        }
    }
    if !extra.is_empty() {
        if schema.fields().find(OVERFLOW_COLUMN).is_none() {
            return Err("a key without a column in the inferred schema".into());
        }
        out.insert(
            OVERFLOW_COLUMN.to_owned(),
            Value::String(Value::Object(extra).to_string()),
        );
    }
    Ok(Value::Object(out))
}

/// A value made to fit an inferred type: objects and arrays where the type is a string become
/// their JSON text (a disagreement within the object); lists and structs are fitted item by
/// item and field by field.
fn conform(v: Value, ty: &DataType) -> Value {
    match (ty, v) {
        (DataType::Utf8, v @ (Value::Object(_) | Value::Array(_))) => Value::String(v.to_string()),
        (DataType::List(item), Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .map(|v| conform(v, item.data_type()))
                .collect(),
        ),
        (DataType::Struct(fields), Value::Object(map)) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match fields.find(&k) {
                        Some((_, f)) => conform(v, f.data_type()),
                        None => v,
                    };
                    (k, v)
                })
                .collect(),
        ),
        (_, v) => v,
    }
}

fn properties(conversion: &Conversion) -> WriterProperties {
    let p = &conversion.parquet;
    let codec = match p.compression {
        ParquetCompression::Uncompressed => Codec::UNCOMPRESSED,
        ParquetCompression::Snappy => Codec::SNAPPY,
        ParquetCompression::Gzip => Codec::GZIP(GzipLevel::default()),
        ParquetCompression::Zstd => Codec::ZSTD(ZstdLevel::default()),
    };
    WriterProperties::builder()
        .set_compression(codec)
        .set_data_page_size_limit(p.page_size_bytes as usize)
        .set_dictionary_enabled(p.dictionary)
        .set_writer_version(if p.writer_v2 {
            WriterVersion::PARQUET_2_0
        } else {
            WriterVersion::PARQUET_1_0
        })
        .set_created_by(format!("spillway {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Records that passed [`Converter::normalize`] as one Parquet file, in chunks of about a row
/// group each.
pub fn encode(conversion: &Conversion, records: Vec<Bytes>) -> std::io::Result<Body> {
    let mut chunks = Vec::new();
    encode_to(conversion, &records, |chunk| {
        chunks.push(chunk);
        Ok(())
    })?;
    Ok(chunks)
}

/// Converts records (each passed [`Converter::normalize`] when its batch was processed) and
/// encodes them as one Parquet file, handing each row group's bytes to `emit` as soon as it is
/// written: converted rows, Arrow and encoded pages exist for one row group at a time.
pub fn encode_to(
    conversion: &Conversion,
    records: &[Bytes],
    mut emit: impl FnMut(Bytes) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let io = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let converter = Converter::new(conversion);
    // Deterministic, so it cannot fail here after passing before; if it did, the object is
    // not written rather than written without the record.
    let row = |r: &Bytes| {
        converter.fitted(r).map_err(|m| {
            std::io::Error::other(format!("a record that converted before does not now: {m}"))
        })
    };
    let schema = match &converter.schema {
        Some(s) => s.clone(),
        None => infer(records.iter().filter_map(|r| converter.normalize(r).ok())),
    };
    let inferred = conversion.columns.is_none();
    let row = |r: &Bytes| -> std::io::Result<Value> {
        let v = row(r)?;
        match inferred {
            true => conform_row(v, &schema).map_err(std::io::Error::other),
            false => Ok(v),
        }
    };
    // The decoder's buffers are rows times columns: wide schemas decode fewer rows at a time.
    let leaf_count = schema
        .fields()
        .iter()
        .map(|f| leaves(f.data_type()))
        .sum::<usize>()
        .max(1);
    let batch_rows = (DECODE_CELLS / leaf_count).clamp(16, 8192);
    let row_group_bytes = ROW_GROUP_INPUT_BYTES.min(conversion.parquet.block_size_bytes);
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties(conversion)))
        .map_err(|e| io(&e))?;
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < records.len() && (end == start || bytes < row_group_bytes) {
            bytes += records[end].len() as u64;
            end += 1;
        }
        let mut decoder = ReaderBuilder::new(schema.clone())
            .with_batch_size(batch_rows)
            .with_coerce_primitive(inferred)
            .build_decoder()
            .map_err(|e| io(&e))?;
        for r in &records[start..end] {
            // The converted value goes into Arrow's decoder as it is, not written out as JSON
            // text and read back.
            decoder
                .serialize(std::slice::from_ref(&row(r)?))
                .map_err(|e| io(&e))?;
            if decoder.len() >= batch_rows
                && let Some(batch) = decoder.flush().map_err(|e| io(&e))?
            {
                writer.write(&batch).map_err(|e| io(&e))?;
            }
        }
        if let Some(batch) = decoder.flush().map_err(|e| io(&e))? {
            writer.write(&batch).map_err(|e| io(&e))?;
        }
        writer.flush().map_err(|e| io(&e))?;
        let written = std::mem::take(writer.inner_mut());
        // An encoder crash between row groups: the upload must not mistake it for the end.
        fail::fail_point!("parquet-row-group");
        if !written.is_empty() {
            emit(Bytes::from(written))?;
        }
        start = end;
    }
    let tail = writer.into_inner().map_err(|e| io(&e))?;
    emit(Bytes::from(tail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::conversion::{ParquetOptions, SerDe};

    fn conversion(columns: Option<&[(&str, &str)]>) -> Conversion {
        Conversion {
            input: JsonInput {
                serde: SerDe::OpenX,
                case_insensitive: true,
                dots_to_underscores: true,
                key_mappings: vec![("ts".into(), "@timestamp".into())],
                millis: false,
            },
            parquet: ParquetOptions {
                compression: ParquetCompression::Zstd,
                block_size_bytes: 64 << 20,
                page_size_bytes: 1 << 20,
                dictionary: true,
                max_padding_bytes: 0,
                writer_v2: false,
            },
            columns: columns.map(|c| {
                c.iter()
                    .map(|(n, t)| (n.to_string(), t.to_string()))
                    .collect()
            }),
        }
    }

    #[test]
    fn keys_are_compared_as_the_serde_rules_say_and_borrowed_when_unchanged() {
        let c = Converter::new(&conversion(None));
        for key in [
            "user_id", "a.b", "User_ID", "ÀB.c", "ΟΔΟΣ", "straße", "İx", "日本", "",
        ] {
            let expected = key.replace('.', "_").to_lowercase();
            let got = c.key(key);
            assert_eq!(got, expected, "{key}");
            assert_eq!(matches!(got, Cow::Borrowed(_)), expected == key, "{key}");
        }
    }

    #[test]
    fn records_are_read_against_the_columns() {
        let c = Converter::new(&conversion(Some(&[
            ("user_id", "bigint"),
            ("geo_city", "string"),
            ("ts", "timestamp"),
            ("day", "date"),
            ("price", "decimal(5,2)"),
            ("tags", "array<int>"),
            ("inner", "struct<a:int,b:map<string,double>>"),
        ])));
        let out = c
            .normalize(br#"{"USER_ID":"7","geo.city":12,"@timestamp":"2026-11-29T10:00:00+01:00","day":"2026-11-29","price":1.005,"tags":[1,null,3],"Inner":{"A":1,"b":{"x":2}},"extra":true}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user_id"], 7);
        assert_eq!(v["geo_city"], "12");
        assert_eq!(v["ts"], 1_795_942_800_000_000i64);
        assert_eq!(v["day"], 20_786);
        assert_eq!(v["price"], "1.01");
        assert_eq!(v["tags"], serde_json::json!([1, null, 3]));
        assert_eq!(v["inner"], serde_json::json!({"a": 1, "b": {"x": 2.0}}));
        assert!(v.get("extra").is_none());
        // Epoch seconds and milliseconds.
        let secs = c.normalize(br#"{"ts":1795942800}"#).unwrap();
        let millis = c.normalize(br#"{"ts":1795942800000}"#).unwrap();
        assert_eq!(secs, millis);
    }

    #[test]
    fn records_that_do_not_fit_are_refused_with_the_reason() {
        let c = Converter::new(&conversion(Some(&[
            ("n", "tinyint"),
            ("p", "decimal(3,1)"),
            ("t", "timestamp"),
            ("l", "array<int>"),
        ])));
        for (record, reason) in [
            (&b"not json"[..], "not valid JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"n":128}"#, "n: out of range for tinyint"),
            (br#"{"n":1.5}"#, "n: expected an integer"),
            (br#"{"p":100}"#, "p: does not fit decimal(3,1)"),
            (br#"{"t":"yesterday"}"#, "t: expected a timestamp"),
            (br#"{"l":[1,"x"]}"#, "l[1]: expected an integer"),
        ] {
            let e = c.normalize(record).unwrap_err();
            assert!(e.0.contains(reason), "{e} / {reason}");
        }
        let deep = format!("{{\"n\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(
            c.normalize(deep.as_bytes())
                .unwrap_err()
                .0
                .contains("nested")
        );
    }

    #[test]
    fn limits_at_their_edges() {
        let c = Converter::new(&conversion(Some(&[("n", "tinyint"), ("d", "string")])));
        for ok in [127, -128] {
            assert!(
                c.normalize(format!(r#"{{"n":{ok}}}"#).as_bytes()).is_ok(),
                "{ok}"
            );
        }
        for bad in [128, -129] {
            assert!(
                c.normalize(format!(r#"{{"n":{bad}}}"#).as_bytes()).is_err(),
                "{bad}"
            );
        }
        // The record object is level 0: 64 levels below it pass, 65 do not.
        let nested = |levels: usize| {
            format!(
                r#"{{"d":{}1{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(c.normalize(nested(64).as_bytes()).is_ok());
        assert!(
            c.normalize(nested(65).as_bytes())
                .unwrap_err()
                .0
                .contains("nested deeper than 64")
        );
    }

    #[test]
    fn timestamps_in_every_documented_form() {
        let at = 1_795_946_400_000_000i64; // 2026-11-29T10:00:00Z
        for text in [
            "2026-11-29T10:00:00Z",
            "2026-11-29T11:00:00+01:00",
            "2026-11-29T10:00:00",
            "2026-11-29 10:00:00",
            "2026-11-29T10:00",
            "2026-11-29 10:00",
            "2026-11-29T10:00:00.000",
        ] {
            assert_eq!(parse_timestamp(text), Some(at), "{text}");
        }
        assert_eq!(parse_timestamp("2026-11-29"), Some(at - 10 * 3_600_000_000));
        assert_eq!(parse_timestamp("2026-11-29 10:00:00.5"), Some(at + 500_000));
        assert_eq!(parse_timestamp("29/11/2026"), None);
    }

    #[test]
    fn decimals_round_half_away_from_zero() {
        for (input, p, s, out) in [
            ("1.005", 5, 2, "1.01"),
            ("-1.005", 5, 2, "-1.01"),
            ("0.004", 5, 2, "0.00"),
            ("-0.004", 5, 2, "0.00"),
            ("999.995", 5, 2, "Err"),
            ("999.994", 5, 2, "999.99"),
            ("12", 4, 0, "12"),
            ("1e3", 6, 2, "1000.00"),
            ("1.5e-1", 3, 2, "0.15"),
            (".5", 2, 0, "1"),
        ] {
            let got =
                decimal_text(&Value::String(input.into()), p, s).unwrap_or_else(|_| "Err".into());
            assert_eq!(got, out, "{input} as decimal({p},{s})");
        }
    }

    #[test]
    fn encodes_row_groups_readable_by_the_parquet_crate() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let conv = conversion(Some(&[("n", "int"), ("s", "string"), ("t", "timestamp")]));
        let records: Vec<Bytes> = (0..3000)
            .map(|i| {
                Bytes::from(format!(
                    r#"{{"n":{i},"s":"x{i}","t":{}}}"#,
                    1_700_000_000 + i
                ))
            })
            .collect();
        let body = encode(&conv, records).unwrap();
        let file: Vec<u8> = body.concat();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(file)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 3000);
        assert_eq!(
            reader.schema().field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 3000);
    }

    #[test]
    fn inferred_schemas_widen_and_keep_nested_values_as_text() {
        let conv = conversion(None);
        let c = Converter::new(&conv);
        let records: Vec<Bytes> = [
            r#"{"A":1,"b":1,"c":{"x":1},"d":null}"#,
            r#"{"a":2,"b":1.5,"c":"s","e":true}"#,
        ]
        .iter()
        .map(|r| Bytes::from_static(r.as_bytes()))
        .collect();
        let schema = infer(records.iter().map(|r| c.normalize(r).unwrap()));
        let types: Vec<(String, DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            types,
            [
                ("a".to_string(), DataType::Int64),
                ("b".into(), DataType::Float64),
                ("c".into(), DataType::Utf8),
                ("d".into(), DataType::Utf8),
                ("e".into(), DataType::Boolean),
            ]
        );
        let body = encode(&conv, records).unwrap();
        assert!(body.concat().starts_with(b"PAR1"));
    }

    #[test]
    fn nested_objects_are_inferred_as_structs_and_arrays_as_lists() {
        use arrow_array::{Array, ListArray, StructArray};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let conv = conversion(None);
        let records: Vec<Bytes> = [
            r#"{"id":1,"Geo":{"Lat":1.5,"lon":2,"city":"Oslo"},"tags":["a","b"],"mixed":{"x":1},"empty":[],"nothing":null,"deep":{"a":{"b":[{"c":1}]}},"nums":[1,2]}"#,
            r#"{"id":2,"geo":{"lat":3,"lon":4.25},"tags":[],"mixed":[1],"empty":[],"nothing":null,"deep":{"a":{"b":[{"c":2.5,"d":"x"}]}},"nums":[1.5]}"#,
            r#"{"id":3,"geo":null,"tags":["c"],"mixed":"text","obj":{}}"#,
        ]
        .iter()
        .map(|r| Bytes::from_static(r.as_bytes()))
        .collect();
        let c = Converter::new(&conv);
        let schema = infer(records.iter().map(|r| c.normalize(r).unwrap()));
        let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
        let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
        let strukt = |fields: Vec<(&str, DataType)>| {
            DataType::Struct(
                fields
                    .into_iter()
                    .map(|(n, t)| Field::new(n, t, true))
                    .collect::<Fields>(),
            )
        };
        // Keys are lowercased at every level (case-insensitive by default); integers and
        // floats widen to double inside structs and lists too.
        assert_eq!(
            ty("geo"),
            strukt(vec![
                ("city", DataType::Utf8),
                ("lat", DataType::Float64),
                ("lon", DataType::Float64)
            ])
        );
        assert_eq!(ty("tags"), list(DataType::Utf8));
        assert_eq!(ty("nums"), list(DataType::Float64));
        // An object in one record and an array or a string in others: text.
        assert_eq!(ty("mixed"), DataType::Utf8);
        // Only ever empty, only ever null: strings.
        assert_eq!(ty("empty"), list(DataType::Utf8));
        assert_eq!(ty("nothing"), DataType::Utf8);
        assert_eq!(ty("obj"), DataType::Utf8);
        assert_eq!(
            ty("deep"),
            strukt(vec![(
                "a",
                strukt(vec![(
                    "b",
                    list(strukt(vec![
                        ("c", DataType::Float64),
                        ("d", DataType::Utf8)
                    ]))
                )])
            )])
        );

        let body = encode(&conv, records).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(body.concat())).unwrap();
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let geo = batch
            .column_by_name("geo")
            .unwrap()
            .as_any()
            .downcast_ref::<StructArray>()
            .unwrap();
        let lat = geo
            .column_by_name("lat")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .unwrap();
        assert_eq!((lat.value(0), lat.value(1)), (1.5, 3.0));
        assert!(geo.is_null(2));
        let tags = batch
            .column_by_name("tags")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        assert_eq!(tags.value_length(0), 2);
        assert_eq!(tags.value_length(1), 0);
        let mixed = batch
            .column_by_name("mixed")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        assert_eq!(
            (mixed.value(0), mixed.value(1), mixed.value(2)),
            (r#"{"x":1}"#, "[1]", "text")
        );
    }

    #[test]
    fn a_nested_object_with_too_many_keys_is_kept_as_text() {
        let conv = conversion(None);
        let c = Converter::new(&conv);
        let wide = |n: usize| {
            let fields: Vec<String> = (0..n).map(|i| format!(r#""k{i}":{i}"#)).collect();
            Bytes::from(format!(r#"{{"m":{{{}}}}}"#, fields.join(",")))
        };
        let at_limit = infer([c.normalize(&wide(MAX_INFERRED_STRUCT_FIELDS)).unwrap()]);
        assert!(matches!(
            at_limit.field(0).data_type(),
            DataType::Struct(f) if f.len() == MAX_INFERRED_STRUCT_FIELDS
        ));
        let over = infer([c.normalize(&wide(MAX_INFERRED_STRUCT_FIELDS + 1)).unwrap()]);
        assert_eq!(over.field(0).data_type(), &DataType::Utf8);
        // Over the limit across records, not within one.
        let a = Bytes::from(format!(
            r#"{{"m":{{{}}}}}"#,
            (0..600)
                .map(|i| format!(r#""a{i}":1"#))
                .collect::<Vec<_>>()
                .join(",")
        ));
        let b = Bytes::from(format!(
            r#"{{"m":{{{}}}}}"#,
            (0..600)
                .map(|i| format!(r#""b{i}":1"#))
                .collect::<Vec<_>>()
                .join(",")
        ));
        let records = vec![a, b];
        let schema = infer(records.iter().map(|r| c.normalize(r).unwrap()));
        assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
        assert!(
            encode(&conv, records)
                .unwrap()
                .concat()
                .starts_with(b"PAR1")
        );
    }

    #[test]
    fn keys_past_the_column_limit_go_to_the_overflow_column_and_wide_nesting_to_text() {
        use arrow_array::{Array, StringArray};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let conv = conversion(None);
        let c = Converter::new(&conv);
        // Two records of 600 keys each, none shared: 1,200 keys in all.
        let record = |tag: &str| {
            let fields: Vec<String> = (0..600).map(|i| format!(r#""{tag}{i:03}":{i}"#)).collect();
            Bytes::from(format!("{{{}}}", fields.join(",")))
        };
        let records = vec![record("a"), record("b")];
        let schema = infer(records.iter().map(|r| c.normalize(r).unwrap()));
        assert_eq!(schema.fields().len(), MAX_INFERRED_COLUMNS);
        assert_eq!(
            schema.field(MAX_INFERRED_COLUMNS - 1).name(),
            OVERFLOW_COLUMN
        );
        // In name order: all of a000-a599, then b000-b398.
        assert_eq!(schema.field(MAX_INFERRED_COLUMNS - 2).name(), "b398");
        let body = encode(&conv, records).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(body.concat())).unwrap();
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let overflow = batch
            .column_by_name(OVERFLOW_COLUMN)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(overflow.is_null(0));
        let extra: Map<String, Value> = serde_json::from_str(overflow.value(1)).unwrap();
        assert_eq!(extra.len(), 201);
        assert_eq!(extra["b599"], 599);

        // 20 columns of 600-field structs: 12,000 leaves, past the limit; all kept as text.
        let wide: Vec<Bytes> = (0..20)
            .map(|col| {
                let fields: Vec<String> = (0..600).map(|i| format!(r#""f{i}":{i}"#)).collect();
                Bytes::from(format!(r#"{{"c{col:02}":{{{}}}}}"#, fields.join(",")))
            })
            .collect();
        let schema = infer(wide.iter().map(|r| c.normalize(r).unwrap()));
        assert!(
            schema
                .fields()
                .iter()
                .all(|f| f.data_type() == &DataType::Utf8)
        );
        assert!(encode(&conv, wide).unwrap().concat().starts_with(b"PAR1"));
        // A record's own key named like the overflow column goes into it.
        let named = vec![Bytes::from(format!(r#"{{"{OVERFLOW_COLUMN}":1,"a":2}}"#))];
        let schema = infer(named.iter().map(|r| c.normalize(r).unwrap()));
        assert_eq!(
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["a", OVERFLOW_COLUMN]
        );
        assert!(encode(&conv, named).unwrap().concat().starts_with(b"PAR1"));
    }
}
