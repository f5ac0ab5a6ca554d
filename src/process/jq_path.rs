//! The common `MetadataExtractionQuery`, an object of plain paths
//! (`{country: .location, year: .date.year}`), answered in the daemon without jaq and without
//! a worker process: no recursion beyond a JSON parser with a depth limit, no loops, no
//! allocation the record does not already bound. Anything else, a query of another shape or a
//! record whose answer is not a plain string or boolean, goes to the sandbox, so both give the
//! same answer for every record (a replay may take either way).
//!
//! The record is read in one pass that builds nothing but the answers: fields off the paths
//! are skipped (checked as JSON, within serde_json's nesting limit, never allocated), and
//! names without escapes are borrowed from the record.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// An object of paths.
#[derive(Debug, PartialEq, Eq)]
pub struct PathQuery {
    keys: Vec<(String, Vec<String>)>,
    /// The paths merged into a tree, for the one-pass read.
    tree: Node,
}

/// A field on some path: the query keys whose path ends here, and the fields below it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Node {
    leaves: Vec<usize>,
    children: Vec<(String, Node)>,
}

impl Node {
    fn insert(&mut self, path: &[String], key: usize) {
        match path.split_first() {
            None => self.leaves.push(key),
            Some((first, rest)) => {
                let at = match self.children.iter().position(|(n, _)| n == first) {
                    Some(at) => at,
                    None => {
                        self.children.push((first.clone(), Node::default()));
                        self.children.len() - 1
                    }
                };
                self.children[at].1.insert(rest, key);
            }
        }
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    /// Every key at or below this field.
    fn each_key(&self, f: &mut impl FnMut(usize)) {
        self.leaves.iter().for_each(|&k| f(k));
        for (_, c) in &self.children {
            c.each_key(f);
        }
    }
}

/// What a path's value was: the last occurrence of a duplicated name wins, as in a parsed
/// object, because every visit of a field overwrites everything at and below it.
#[derive(Clone, Debug)]
enum Found {
    Missing,
    Text(String),
    /// Not a string or boolean, or too long: the sandbox answers.
    Other,
}

impl PathQuery {
    /// The query as an object of paths, if that is all it is.
    pub fn parse(text: &str) -> Option<PathQuery> {
        let mut p = Parser {
            s: text.as_bytes(),
            at: 0,
        };
        p.ws();
        p.eat(b'{')?;
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        loop {
            p.ws();
            let name = p.name()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            let path = p.path()?;
            if keys.iter().any(|(k, _)| *k == name)
                || keys.len() >= super::jq::MAX_KEYS
                || name.len() > super::jq::MAX_KEY_NAME_BYTES
            {
                return None;
            }
            keys.push((name, path));
            p.ws();
            match p.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
        p.ws();
        if p.at != p.s.len() {
            return None;
        }
        let mut tree = Node::default();
        for (i, (_, path)) in keys.iter().enumerate() {
            tree.insert(path, i);
        }
        Some(PathQuery { keys, tree })
    }

    /// The record's keys, or `None` when the sandboxed query must answer: the record is not
    /// a JSON object, or a path does not end at a string or boolean (a number is printed by
    /// jq's rules, a null or missing value is an error with jq's message), or a value is
    /// longer than a partition key may be.
    pub fn keys(&self, record: &[u8]) -> Option<Vec<(String, String)>> {
        let mut found = vec![Found::Missing; self.keys.len()];
        // serde_json refuses nesting deeper than 128 levels instead of recursing further,
        // also in the fields it skips.
        let mut de = serde_json::Deserializer::from_slice(record);
        Field {
            node: &self.tree,
            found: &mut found,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        self.keys
            .iter()
            .zip(found)
            .map(|((name, _), f)| match f {
                Found::Text(text) => Some((name.clone(), text)),
                Found::Missing | Found::Other => None,
            })
            .collect()
    }
}

/// Reads one field's value against its node of the tree.
struct Field<'q, 'f> {
    node: &'q Node,
    found: &'f mut [Found],
}

impl Field<'_, '_> {
    /// This field's value is `leaf` for the keys ending here, and has no fields below.
    fn set(self, leaf: Found) {
        let found = self.found;
        self.node
            .leaves
            .iter()
            .for_each(|&k| found[k] = leaf.clone());
        for (_, c) in &self.node.children {
            c.each_key(&mut |k| found[k] = Found::Missing);
        }
    }

    fn text<E>(self, s: &str) -> Result<(), E> {
        self.set(if s.len() <= super::MAX_VALUE_BYTES {
            Found::Text(s.to_owned())
        } else {
            Found::Other
        });
        Ok(())
    }

    fn other<E>(self) -> Result<(), E> {
        self.set(Found::Other);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Field<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        self.text(if b { "true" } else { "false" })
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.text(s)
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.other()
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.other()
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.other()
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.other()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        self.other()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Field { node, found } = self;
        // An object: no key ends here, and what is below is read afresh.
        Field {
            node,
            found: &mut *found,
        }
        .set(Found::Other);
        while let Some(Name(name)) = map.next_key()? {
            match node.child(&name) {
                Some(child) => map.next_value_seed(Field {
                    node: child,
                    found: &mut *found,
                })?,
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(())
    }
}

/// A value off every path, read and dropped. Not serde's `IgnoredAny`: serde_json skips those
/// without its nesting limit, and a record nested deeper than a parsed value may be (128
/// levels) must be refused here as jq refuses it, so both answer the same. Through
/// `deserialize_any` the limit applies, and this recursion stops with it.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// An object's field name, borrowed from the record unless it has escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn next(&mut self) -> Option<u8> {
        let b = *self.s.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// An identifier, or a quoted name without escapes or interpolation.
    fn name(&mut self) -> Option<String> {
        if self.s.get(self.at) == Some(&b'"') {
            self.quoted()
        } else {
            self.ident()
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.at += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.at]).ok()?;
        // A leading digit is not a name; keywords (`if`, `and`, `def`, ...) are left to jq.
        let first = word.as_bytes().first()?;
        if first.is_ascii_digit() || KEYWORDS.contains(&word) {
            return None;
        }
        Some(word.to_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => return None,
                b if b < 0x20 => return None,
                _ => {}
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.at - 1]).ok()?;
        Some(text.to_owned())
    }

    /// `.a.b."c d"`: one or more field names.
    fn path(&mut self) -> Option<Vec<String>> {
        let mut segments = Vec::new();
        while self.s.get(self.at) == Some(&b'.') {
            self.at += 1;
            segments.push(self.name()?);
        }
        (!segments.is_empty()).then_some(segments)
    }
}

/// jq's keywords, which cannot be object keys or field names without quotes.
const KEYWORDS: &[&str] = &[
    "def", "if", "then", "elif", "else", "end", "as", "reduce", "foreach", "try", "catch", "label",
    "import", "include", "and", "or", "not", "__loc__",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::jq::Query;

    #[test]
    fn only_objects_of_plain_paths_are_taken() {
        let p = PathQuery::parse(r#" { country : .location , "the year": .date."y y" } "#).unwrap();
        assert_eq!(
            p.keys,
            [
                ("country".to_string(), vec!["location".to_string()]),
                ("the year".into(), vec!["date".into(), "y y".into()])
            ]
        );
        for other in [
            "{k: .a | tostring}",
            "{k: .a?}",
            "{k: .a[0]}",
            "{k: .[\"a\"]}",
            "{k: .}",
            "{k: .a, k: .b}",
            "{k}",
            "{(.a): .b}",
            "{\"a\\u0041\": .b}",
            "{\"\\(.x)\": .b}",
            "{k: .a} | .",
            "{if: .a}",
            "{k: .if}",
            "{1k: .a}",
            ".a",
            "{}",
            "{k: .a,}",
            "def f: .; {k: .a}",
            &format!("{{{}: .a}}", "k".repeat(257)),
        ] {
            assert!(PathQuery::parse(other).is_none(), "{other}");
        }
    }

    /// Wherever the path query answers, jq (run the way the sandbox runs it) answers the same;
    /// everywhere else it leaves the record to jq.
    #[test]
    fn answers_are_jqs_answers() {
        let queries = [
            "{k: .a}",
            "{k: .a.b, j: .c}",
            r#"{"x y": ."a b"}"#,
            "{k: .a, j: .a}",
            "{k: .a, j: .a.b}",
            "{k: .a.b, j: .a.c, l: .d}",
        ];
        let records: &[&[u8]] = &[
            br#"{"a":"KR","c":true,"a b":"q"}"#,
            br#"{"a":{"b":"deep"},"c":false}"#,
            br#"{"a":7}"#,
            br#"{"a":1.5}"#,
            br#"{"a":null}"#,
            br#"{}"#,
            br#"[1,2]"#,
            br#""str""#,
            b"not json",
            br#"{"a":"\u00e9\n\"q\""}"#,
            br#"{"a":"KR","a":"US"}"#,
            br#"{"a":["x"]}"#,
            br#"{"a":{"b":1}}"#,
            // The last of duplicated names wins, whole: an object replaced by a string and
            // back, and fields of the first object gone with it.
            br#"{"a":{"b":"x","c":"y"},"a":"z","d":"w"}"#,
            br#"{"a":"z","a":{"b":"x","c":"y"},"d":"w"}"#,
            br#"{"a":{"b":"x","c":"y"},"a":{"b":"v"},"d":"w"}"#,
            br#"{"a":{"c":"y","b":"x"},"d":true}"#,
            // Escaped names and values, skipped arrays and numbers.
            br#"{"\u0061":"KR","skip":[1,{"a":"no"}],"n":1e5}"#,
            br#"{"a":{"\u0062":"\ud83d\ude00","c":"q"},"d":"e"}"#,
            // Not one JSON value.
            br#"{"a":"x"} {"a":"y"}"#,
            br#"{"a":"x""#,
        ];
        for q in queries {
            let fast = PathQuery::parse(q).unwrap();
            let jq = Query::compile(q).unwrap();
            for r in records {
                if let Some(keys) = fast.keys(r) {
                    assert_eq!(
                        jq.keys(r),
                        Ok(keys),
                        "{q} on {}",
                        String::from_utf8_lossy(r)
                    );
                }
            }
        }
        // The one-pass read answers these itself (jq agrees, above).
        let q = PathQuery::parse("{k: .a.b, j: .a.c, l: .d}").unwrap();
        let pairs = |v: &[(&str, &str)]| {
            Some(
                v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            q.keys(br#"{"a":"z","a":{"b":"x","c":"y"},"d":"w"}"#),
            pairs(&[("k", "x"), ("j", "y"), ("l", "w")])
        );
        assert_eq!(q.keys(br#"{"a":{"b":"x","c":"y"},"a":"z","d":"w"}"#), None);
        assert_eq!(
            q.keys(br#"{"a":{"b":"x","c":"y"},"a":{"b":"v"},"d":"w"}"#),
            None
        );
        assert_eq!(
            PathQuery::parse("{k: .a}")
                .unwrap()
                .keys(br#"{"\u0061":"KR","skip":[1,{"a":"no"}]}"#),
            pairs(&[("k", "KR")])
        );
        // Deep nesting, on the path or off it, is refused by the parser's depth limit (as a
        // parsed value is, so jq answers these), not followed down the stack.
        for deep in [
            format!(
                r#"{{"skip":{}{},"a":"x"}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            format!(
                r#"{{"a":{}"x"{}}}"#,
                r#"{"a":"#.repeat(100_000),
                "}".repeat(100_000)
            ),
        ] {
            assert_eq!(
                PathQuery::parse("{k: .a}").unwrap().keys(deep.as_bytes()),
                None
            );
        }
        // At the edge of the limit, exactly where a parsed value stops.
        let q = PathQuery::parse("{k: .a}").unwrap();
        for n in 120..136 {
            for record in [
                format!(r#"{{"skip":{}{},"a":"x"}}"#, "[".repeat(n), "]".repeat(n)),
                format!(
                    r#"{{"skip":{}1{},"a":"x"}}"#,
                    r#"{"b":"#.repeat(n),
                    "}".repeat(n)
                ),
            ] {
                let parses = serde_json::from_slice::<serde_json::Value>(record.as_bytes()).is_ok();
                assert_eq!(q.keys(record.as_bytes()).is_some(), parses, "depth {n}");
            }
        }
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(201));
        assert_eq!(
            PathQuery::parse("{k: .a}").unwrap().keys(long.as_bytes()),
            None
        );
    }
}
