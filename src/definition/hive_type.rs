//! Hive / Glue column types (`int`, `decimal(10,2)`, `array<struct<id:bigint,tags:array<string>>>`)
//! to Arrow types and back: the schema language of Firehose's record format conversion, which
//! Parquet output (issue 4) declares its columns in.
//!
//! Keywords are case-insensitive and whitespace is free. Struct field names are identifiers
//! (letters, digits, `_`) or backquoted; duplicates, compared without case as Hive does, are
//! errors. `char(n)` and `varchar(n)` are strings; `uniontype` is refused. Nesting is capped so
//! a hostile type string cannot exhaust the stack.

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};

/// Deepest nesting of `array`, `map` and `struct` accepted.
pub const MAX_DEPTH: usize = 32;
/// Hive's default for a bare `decimal`.
const DEFAULT_DECIMAL: (u8, i8) = (10, 0);
const MAX_DECIMAL_PRECISION: u8 = 38;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    /// Byte offset in the type string where the problem is.
    pub at: usize,
    pub message: String,
}

impl fmt::Display for TypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.at + 1)
    }
}

impl std::error::Error for TypeError {}

/// Parses one Hive type.
pub fn parse(text: &str) -> Result<DataType, TypeError> {
    let mut p = Parser { s: text, at: 0 };
    let ty = p.ty(0)?;
    p.skip_space();
    if p.at < text.len() {
        return Err(p.error(format!("unexpected {:?} after the type", p.rest_token())));
    }
    Ok(ty)
}

/// The Hive spelling of an Arrow type that [`parse`] can produce; `None` for any other.
pub fn render(ty: &DataType) -> Option<String> {
    Some(match ty {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Utf8 => "string".into(),
        DataType::Binary => "binary".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::List(item) => format!("array<{}>", render(item.data_type())?),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                render(kv[0].data_type())?,
                render(kv[1].data_type())?
            ),
            _ => return None,
        },
        DataType::Struct(fields) => {
            let mut out = String::from("struct<");
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let name = f.name();
                if !name.is_empty() && name.chars().all(is_ident_char) {
                    out.push_str(name);
                } else if !name.contains('`') {
                    out.push('`');
                    out.push_str(name);
                    out.push('`');
                } else {
                    return None;
                }
                out.push(':');
                out.push_str(&render(f.data_type())?);
            }
            out.push('>');
            out
        }
        _ => return None,
    })
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The Arrow type of a list of `item`.
pub fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// The Arrow type of a map from `key` (never null) to `value`.
pub fn map_of(key: DataType, value: DataType) -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", key, false),
            Field::new("value", value, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, message: String) -> TypeError {
        TypeError {
            at: self.at,
            message,
        }
    }

    fn skip_space(&mut self) {
        let rest = &self.s[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.s[self.at..].chars().next()
    }

    fn rest_token(&self) -> String {
        self.s[self.at..].chars().take(16).collect()
    }

    fn expect(&mut self, c: char) -> Result<(), TypeError> {
        match self.peek() {
            Some(got) if got == c => {
                self.at += c.len_utf8();
                Ok(())
            }
            Some(got) => Err(self.error(format!("expected '{c}', found '{got}'"))),
            None => Err(self.error(format!("expected '{c}', found the end"))),
        }
    }

    fn word(&mut self) -> &str {
        self.skip_space();
        let start = self.at;
        let len = self.s[start..]
            .find(|c: char| !is_ident_char(c))
            .unwrap_or(self.s.len() - start);
        self.at += len;
        &self.s[start..start + len]
    }

    fn number(&mut self) -> Result<u32, TypeError> {
        self.skip_space();
        let start = self.at;
        let digits = self.word().to_owned();
        match digits.parse::<u32>() {
            Ok(n) if digits.chars().all(|c| c.is_ascii_digit()) => Ok(n),
            _ => {
                self.at = start;
                Err(self.error(format!("expected a number, found {:?}", self.rest_token())))
            }
        }
    }

    fn ty(&mut self, depth: usize) -> Result<DataType, TypeError> {
        let start = {
            self.skip_space();
            self.at
        };
        let word = self.word().to_ascii_lowercase();
        let nested = || {
            if depth >= MAX_DEPTH {
                Err(TypeError {
                    at: start,
                    message: format!("types nest deeper than {MAX_DEPTH} levels"),
                })
            } else {
                Ok(())
            }
        };
        Ok(match word.as_str() {
            "boolean" => DataType::Boolean,
            "tinyint" => DataType::Int8,
            "smallint" => DataType::Int16,
            "int" | "integer" => DataType::Int32,
            "bigint" => DataType::Int64,
            "float" => DataType::Float32,
            "double" => DataType::Float64,
            "string" => DataType::Utf8,
            "char" | "varchar" => {
                self.expect('(')?;
                let at = self.at;
                let n = self.number()?;
                if n == 0 {
                    return Err(TypeError {
                        at,
                        message: format!("{word} length must be at least 1"),
                    });
                }
                self.expect(')')?;
                DataType::Utf8
            }
            "binary" => DataType::Binary,
            "date" => DataType::Date32,
            "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "decimal" | "numeric" => self.decimal()?,
            "array" => {
                nested()?;
                self.expect('<')?;
                let item = self.ty(depth + 1)?;
                self.expect('>')?;
                list_of(item)
            }
            "map" => {
                nested()?;
                self.expect('<')?;
                let key_at = {
                    self.skip_space();
                    self.at
                };
                let key = self.ty(depth + 1)?;
                if key.is_nested() {
                    return Err(TypeError {
                        at: key_at,
                        message: "map keys must be a primitive type".into(),
                    });
                }
                self.expect(',')?;
                let value = self.ty(depth + 1)?;
                self.expect('>')?;
                map_of(key, value)
            }
            "struct" => {
                nested()?;
                self.strukt(depth)?
            }
            "uniontype" => {
                return Err(TypeError {
                    at: start,
                    message: "uniontype is not supported".into(),
                });
            }
            "" => {
                return Err(TypeError {
                    at: start,
                    message: match self.s[start..].chars().next() {
                        None => "expected a type, found the end".into(),
                        Some(c) => format!("expected a type, found '{c}'"),
                    },
                });
            }
            other => {
                return Err(TypeError {
                    at: start,
                    message: format!("unknown type {other:?}"),
                });
            }
        })
    }

    fn decimal(&mut self) -> Result<DataType, TypeError> {
        let (mut precision, mut scale) = DEFAULT_DECIMAL;
        if self.peek() == Some('(') {
            self.at += 1;
            let at = {
                self.skip_space();
                self.at
            };
            let p = self.number()?;
            if !(1..=u32::from(MAX_DECIMAL_PRECISION)).contains(&p) {
                return Err(TypeError {
                    at,
                    message: format!(
                        "decimal precision must be between 1 and {MAX_DECIMAL_PRECISION}, got {p}"
                    ),
                });
            }
            precision = p as u8;
            scale = 0;
            if self.peek() == Some(',') {
                self.at += 1;
                let at = {
                    self.skip_space();
                    self.at
                };
                let s = self.number()?;
                if s > p {
                    return Err(TypeError {
                        at,
                        message: format!(
                            "decimal scale must be between 0 and the precision {p}, got {s}"
                        ),
                    });
                }
                scale = s as i8;
            }
            self.expect(')')?;
        }
        Ok(DataType::Decimal128(precision, scale))
    }

    fn strukt(&mut self, depth: usize) -> Result<DataType, TypeError> {
        self.expect('<')?;
        let mut fields: Vec<Field> = Vec::new();
        loop {
            let at = {
                self.skip_space();
                self.at
            };
            let name = self.field_name()?;
            if fields.iter().any(|f| f.name().eq_ignore_ascii_case(&name)) {
                return Err(TypeError {
                    at,
                    message: format!("struct field {name:?} appears twice"),
                });
            }
            self.expect(':')?;
            let ty = self.ty(depth + 1)?;
            fields.push(Field::new(name, ty, true));
            match self.peek() {
                Some(',') => self.at += 1,
                Some('>') => {
                    self.at += 1;
                    return Ok(DataType::Struct(Fields::from(fields)));
                }
                Some(c) => return Err(self.error(format!("expected ',' or '>', found '{c}'"))),
                None => return Err(self.error("expected ',' or '>', found the end".into())),
            }
        }
    }

    fn field_name(&mut self) -> Result<String, TypeError> {
        if self.peek() == Some('`') {
            let start = self.at;
            let Some(len) = self.s[start + 1..].find('`') else {
                return Err(self.error("unterminated `name`".into()));
            };
            let name = &self.s[start + 1..start + 1 + len];
            if name.is_empty() {
                return Err(self.error("empty field name".into()));
            }
            self.at = start + len + 2;
            return Ok(name.to_owned());
        }
        let name = self.word().to_owned();
        if name.is_empty() {
            return Err(self.error(format!(
                "expected a field name, found {:?}",
                self.rest_token()
            )));
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(fields: &[(&str, DataType)]) -> DataType {
        DataType::Struct(Fields::from(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn primitives_in_any_case() {
        for (text, ty) in [
            ("boolean", DataType::Boolean),
            ("TINYINT", DataType::Int8),
            ("smallint", DataType::Int16),
            ("Int", DataType::Int32),
            ("integer", DataType::Int32),
            ("bigint", DataType::Int64),
            ("float", DataType::Float32),
            ("double", DataType::Float64),
            ("string", DataType::Utf8),
            ("varchar(20)", DataType::Utf8),
            ("char( 3 )", DataType::Utf8),
            ("binary", DataType::Binary),
            ("date", DataType::Date32),
            (
                " timestamp ",
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            ("decimal", DataType::Decimal128(10, 0)),
            ("decimal(12)", DataType::Decimal128(12, 0)),
            ("decimal(38, 38)", DataType::Decimal128(38, 38)),
            ("DECIMAL(1,0)", DataType::Decimal128(1, 0)),
        ] {
            assert_eq!(parse(text), Ok(ty), "{text}");
        }
    }

    #[test]
    fn nested_types() {
        assert_eq!(parse("array<string>"), Ok(list_of(DataType::Utf8)));
        assert_eq!(
            parse("map<string, array<int>>"),
            Ok(map_of(DataType::Utf8, list_of(DataType::Int32)))
        );
        assert_eq!(
            parse("struct<user_id:bigint, `play time`:string, loc:struct<country:string>>"),
            Ok(s(&[
                ("user_id", DataType::Int64),
                ("play time", DataType::Utf8),
                ("loc", s(&[("country", DataType::Utf8)])),
            ]))
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        for (text, at, message) in [
            ("", 0, "expected a type, found the end"),
            ("strng", 0, "unknown type \"strng\""),
            ("array<int", 9, "expected '>', found the end"),
            ("array<int>>", 10, "unexpected \">\" after the type"),
            (
                "decimal(0,0)",
                8,
                "decimal precision must be between 1 and 38, got 0",
            ),
            (
                "decimal(39)",
                8,
                "decimal precision must be between 1 and 38, got 39",
            ),
            (
                "decimal(5,6)",
                10,
                "decimal scale must be between 0 and the precision 5, got 6",
            ),
            ("decimal(x)", 8, "expected a number, found \"x)\""),
            ("varchar(0)", 8, "varchar length must be at least 1"),
            (
                "map<array<int>,int>",
                4,
                "map keys must be a primitive type",
            ),
            (
                "struct<a:int,A:int>",
                13,
                "struct field \"A\" appears twice",
            ),
            ("struct<a int>", 9, "expected ':', found 'i'"),
            ("struct<>", 7, "expected a field name, found \">\""),
            ("struct<`a:int>", 7, "unterminated `name`"),
            ("uniontype<int,string>", 0, "uniontype is not supported"),
            ("struct<a:int;b:int>", 12, "expected ',' or '>', found ';'"),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!((err.at, err.message.as_str()), (at, message), "{text}");
        }
        assert_eq!(
            parse("strng").unwrap_err().to_string(),
            "unknown type \"strng\" (at character 1)"
        );
    }

    #[test]
    fn nesting_is_capped() {
        let ok = format!("{}int{}", "array<".repeat(MAX_DEPTH), ">".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let deep = format!(
            "{}int{}",
            "array<".repeat(MAX_DEPTH + 1),
            ">".repeat(MAX_DEPTH + 1)
        );
        let err = parse(&deep).unwrap_err();
        assert!(err.message.contains("deeper than 32"), "{err}");
        // Far deeper than any stack would allow without the cap.
        let hostile = "array<".repeat(100_000);
        assert!(parse(&hostile).is_err());
    }

    fn arb_type() -> impl Strategy<Value = DataType> {
        let leaf = prop_oneof![
            Just(DataType::Boolean),
            Just(DataType::Int8),
            Just(DataType::Int16),
            Just(DataType::Int32),
            Just(DataType::Int64),
            Just(DataType::Float32),
            Just(DataType::Float64),
            Just(DataType::Utf8),
            Just(DataType::Binary),
            Just(DataType::Date32),
            Just(DataType::Timestamp(TimeUnit::Microsecond, None)),
            (1u8..=38)
                .prop_flat_map(|p| (Just(p), 0..=p as i8))
                .prop_map(|(p, s)| DataType::Decimal128(p, s)),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(list_of),
                (
                    prop_oneof![Just(DataType::Utf8), Just(DataType::Int64)],
                    inner.clone()
                )
                    .prop_map(|(k, v)| map_of(k, v)),
                proptest::collection::vec(("[a-z_][a-z0-9_ ]{0,6}", inner), 1..4).prop_map(
                    |fields| {
                        let mut seen = std::collections::HashSet::new();
                        DataType::Struct(Fields::from(
                            fields
                                .into_iter()
                                .filter(|(n, _)| seen.insert(n.to_ascii_lowercase()))
                                .map(|(n, t)| Field::new(n, t, true))
                                .collect::<Vec<_>>(),
                        ))
                    }
                ),
            ]
        })
    }

    proptest! {
        #[test]
        fn render_then_parse_is_the_identity(ty in arb_type()) {
            let text = render(&ty).expect("renderable");
            prop_assert_eq!(parse(&text), Ok(ty.clone()));
            // Whitespace and case do not matter.
            let loud = text.replace(',', " , ").replace('<', " < ").to_ascii_uppercase();
            if !text.contains('`') {
                let reparsed = parse(&loud).map(|t| render(&t).map(|r| r.to_ascii_lowercase()));
                prop_assert_eq!(reparsed, Ok(Some(text.to_ascii_lowercase())));
            }
        }
    }
}
