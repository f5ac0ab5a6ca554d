//! The common `MetadataExtractionQuery`, an object of plain paths
//! (`{country: .location, year: .date.year}`), answered in the daemon without jaq and without
//! a worker process: no recursion beyond a JSON parser with a depth limit, no loops, no
//! allocation the record does not already bound. Anything else, a query of another shape or a
//! record whose answer is not a plain string or boolean, goes to the sandbox, so both give the
//! same answer for every record (a replay may take either way).

use serde_json::Value;

/// An object of paths.
#[derive(Debug, PartialEq, Eq)]
pub struct PathQuery {
    keys: Vec<(String, Vec<String>)>,
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
        (p.at == p.s.len()).then_some(PathQuery { keys })
    }

    /// The record's keys, or `None` when the sandboxed query must answer: the record is not
    /// a JSON object, or a path does not end at a string or boolean (a number is printed by
    /// jq's rules, a null or missing value is an error with jq's message), or a value is
    /// longer than a partition key may be.
    pub fn keys(&self, record: &[u8]) -> Option<Vec<(String, String)>> {
        // serde_json refuses nesting deeper than 128 levels instead of recursing further.
        let root: Value = serde_json::from_slice(record).ok()?;
        let mut out = Vec::with_capacity(self.keys.len());
        for (name, path) in &self.keys {
            let mut v = &root;
            for segment in path {
                v = v.as_object()?.get(segment)?;
            }
            let text = match v {
                Value::String(s) if s.len() <= super::MAX_VALUE_BYTES => s.clone(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            out.push((name.clone(), text));
        }
        Some(out)
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
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(201));
        assert_eq!(
            PathQuery::parse("{k: .a}").unwrap().keys(long.as_bytes()),
            None
        );
    }
}
